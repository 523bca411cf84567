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

-- A consumer inside the database, as DESIGN's exactly-once pattern has it:
-- claim up to 100 events (waiting up to 100 ms for some), handle them (here:
-- nothing), acknowledge up to the last one and commit, one transaction per
-- claim (as the consume case's transactions and the floor's loops); once
-- the harness set the stop flag, it leaves at the first claim that comes back
-- empty (drained), giving its partitions back.
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
        IF n > 0 THEN
            PERFORM event_store.ack_events(sub, consumer, upto);
            COMMIT;
            total := total + n;
            claims := claims + 1;
        ELSE
            COMMIT;
            EXIT WHEN (SELECT stop FROM bench.consume_ctl);
        END IF;
    END LOOP;
    PERFORM event_store.release_events(sub, consumer);
    INSERT INTO bench.consumed AS c VALUES (sub, total, claims)
    ON CONFLICT (subscription) DO UPDATE SET events = c.events + EXCLUDED.events, claims = c.claims + EXCLUDED.claims;
    COMMIT;
END
$$;

-- append_with_consumers, its floor side (bench/README.md): the same handler
-- work and the least a consumer must do, by plain means, with none of the
-- store's subscription or projection machinery.  The appends are of type
-- FloorEvent (the es side's subscriptions and projections never see them);
-- each loop keeps its checkpoint in bench.floor_ckpt and reads the events
-- after it up to event_store.head_position(), the horizon below which no
-- commit can still appear (without it a plain reader would pass over an
-- event that commits after a later one).
CREATE TABLE IF NOT EXISTS bench.rm_floor_1 (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_floor_2 (key text PRIMARY KEY, n bigint NOT NULL);
-- the handlers: bench.count_cons_1 and _2 with their own read models
CREATE OR REPLACE FUNCTION bench.count_floor_1(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_floor_1 AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
CREATE OR REPLACE FUNCTION bench.count_floor_2(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_floor_2 AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
-- a checkpoint per loop, and the events it went through
CREATE TABLE IF NOT EXISTS bench.floor_ckpt (
    name text PRIMARY KEY, pos bigint NOT NULL, events bigint NOT NULL DEFAULT 0);

-- A floor projection's page: the (up to 1,000) FloorEvents after a position,
-- up to the head, as handlers take them (inlined into the caller's query:
-- STABLE, not STRICT)
CREATE OR REPLACE FUNCTION bench.floor_page(after bigint, head bigint)
RETURNS TABLE (global_position bigint, e event_store.event)
LANGUAGE sql STABLE AS $$
    SELECT global_position,
           ROW(global_position, stream_id, stream_version, event_id, event_type,
               data, metadata, schema_version, recorded_at)::event_store.event
      FROM event_store.events
     WHERE global_position > after AND global_position <= head
       AND event_type = 'FloorEvent'
     ORDER BY global_position LIMIT 1000
$$;

-- A floor loop, named me: which = 0 is a consumer, which reads the (up to
-- 100) events after its checkpoint, whole rows; which = 1 or 2 is a
-- projection, one statement calling the handler count_floor_<which> for each
-- of the (up to 1,000) events after its checkpoint, in position order.  Either
-- moves the checkpoint past them in the same transaction and commits.  When
-- there is nothing to read: leave once the harness set the stop flag (set
-- when the appends ended) and none is left beyond the checkpoint, else look
-- again 10 ms later (the head may not have reached the last ones yet).  The
-- head is read first: the next statement's snapshot sees every commit below
-- it.
CREATE OR REPLACE PROCEDURE bench.floor_loop(me text, which int)
LANGUAGE plpgsql AS $$
DECLARE
    ckpt bigint;
    head bigint;
    upto bigint;
    n bigint;
BEGIN
    SELECT pos INTO STRICT ckpt FROM bench.floor_ckpt WHERE name = me;
    LOOP
        head := event_store.head_position();
        IF which = 0 THEN
            SELECT max(x.global_position), count(x.*) INTO upto, n
              FROM (SELECT * FROM event_store.events
                     WHERE global_position > ckpt AND global_position <= head
                       AND event_type = 'FloorEvent'
                     ORDER BY global_position LIMIT 100) x;
        ELSIF which = 1 THEN
            SELECT max(x.global_position), count(bench.count_floor_1(x.e)) INTO upto, n
              FROM bench.floor_page(ckpt, head) x;
        ELSE
            SELECT max(x.global_position), count(bench.count_floor_2(x.e)) INTO upto, n
              FROM bench.floor_page(ckpt, head) x;
        END IF;
        IF n > 0 THEN
            UPDATE bench.floor_ckpt SET pos = upto, events = events + n WHERE name = me;
            COMMIT;
            ckpt := upto;
        ELSIF (SELECT stop FROM bench.consume_ctl) AND NOT EXISTS (
                  SELECT FROM event_store.events
                   WHERE global_position > ckpt AND event_type = 'FloorEvent') THEN
            EXIT;
        ELSE
            COMMIT;
            PERFORM pg_sleep(0.01);
        END IF;
    END LOOP;
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
