-- consume, parallel_projections, append_with_consumers and read_your_writes
-- cases: checkpoints of the baseline consumers, consumer loops, read models
-- and handlers.  Every per-event handler is PL/pgSQL and upserts a counter
-- per stream, like the async_catchup case's.

-- consume, baseline: one checkpoint row per client (pgbench's client_id)
CREATE TABLE IF NOT EXISTS bench.consume_ckpt (consumer int PRIMARY KEY, pos bigint NOT NULL);

-- parallel_projections
CREATE TABLE IF NOT EXISTS bench.rm_par (key text PRIMARY KEY, n bigint NOT NULL);
CREATE OR REPLACE FUNCTION bench.count_par(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_par AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;

-- append_with_consumers: two partitioned async projections, and consumer
-- loops on three subscriptions
CREATE TABLE IF NOT EXISTS bench.rm_cons_1 (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_cons_2 (key text PRIMARY KEY, n bigint NOT NULL);
CREATE OR REPLACE FUNCTION bench.count_cons_1(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_cons_1 AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
CREATE OR REPLACE FUNCTION bench.count_cons_2(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_cons_2 AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;

CREATE TABLE IF NOT EXISTS bench.consume_ctl (stop boolean NOT NULL);
-- what each consumer loop got (events, claims that returned something)
CREATE TABLE IF NOT EXISTS bench.consumed (
    subscription text PRIMARY KEY, events bigint NOT NULL, claims bigint NOT NULL);

-- A consumer: claim up to 100 events (waiting up to 100 ms for some), commit,
-- acknowledge up to the last one, commit; once the harness set the stop flag,
-- it leaves at the first claim that comes back empty (drained), giving its
-- partitions back.
CREATE OR REPLACE PROCEDURE bench.consume_loop(sub text, consumer text)
LANGUAGE plpgsql AS $$
DECLARE
    upto bigint;
    n bigint;
    total bigint := 0;
    claims bigint := 0;
BEGIN
    LOOP
        SELECT max(global_position), count(*) INTO upto, n
          FROM event_store.claim_events(sub, consumer, 100, wait => '100 milliseconds');
        COMMIT;
        IF n > 0 THEN
            PERFORM event_store.ack_events(sub, consumer, upto);
            COMMIT;
            total := total + n;
            claims := claims + 1;
        ELSIF (SELECT stop FROM bench.consume_ctl) THEN
            EXIT;
        END IF;
    END LOOP;
    PERFORM event_store.release_events(sub, consumer);
    INSERT INTO bench.consumed AS c VALUES (sub, total, claims)
    ON CONFLICT (subscription) DO UPDATE SET events = c.events + EXCLUDED.events, claims = c.claims + EXCLUDED.claims;
    COMMIT;
END
$$;

-- read_your_writes: the projection waited for, and the waits' latencies
CREATE TABLE IF NOT EXISTS bench.rm_ryw (key text PRIMARY KEY, n bigint NOT NULL);
CREATE OR REPLACE FUNCTION bench.count_ryw(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_ryw AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
CREATE TABLE IF NOT EXISTS bench.ryw_waits (partitions int NOT NULL, ok boolean NOT NULL, wait interval NOT NULL);
