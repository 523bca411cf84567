-- inline_projection, async_catchup and lag cases: read models and handlers.
-- The read model is a counter per stream (one row per key, upserted).
CREATE TABLE IF NOT EXISTS bench.rm_inline (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_hand   (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_async  (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_bare   (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_batch  (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.rm_table  (key text PRIMARY KEY, n bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench.lag_samples (delay interval NOT NULL);

-- PL/pgSQL keeps the statement's plan for the session; a LANGUAGE sql
-- function would be parsed and planned again in every appending transaction.
CREATE OR REPLACE FUNCTION bench.count_inline(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_inline AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
CREATE OR REPLACE FUNCTION bench.count_async(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_async AS r VALUES (e.stream_id, 1)
    ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
END
$$;
-- the same read model from a batch handler: one set-based upsert per call
CREATE OR REPLACE FUNCTION bench.count_batch(events event_store.event[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_batch AS r
    SELECT e.stream_id, count(*) FROM unnest(events) e GROUP BY e.stream_id
    ON CONFLICT (key) DO UPDATE SET n = r.n + EXCLUDED.n;
END
$$;
-- and from a trigger function, reading the batch as the transition table new_events
CREATE OR REPLACE FUNCTION bench.count_table() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.rm_table AS r
    SELECT stream_id, count(*) FROM new_events GROUP BY stream_id
    ON CONFLICT (key) DO UPDATE SET n = r.n + EXCLUDED.n;
    RETURN NULL;
END
$$;
-- lag: when (relative to the event's recorded_at) the handler applied it
CREATE OR REPLACE FUNCTION bench.record_lag(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.lag_samples VALUES (clock_timestamp() - e.recorded_at);
END
$$;
