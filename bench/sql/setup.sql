-- Benchmark fixture: a realistic store in event_store.events and a plain
-- table of the same shape, constraints and indexes holding the same rows.
-- Run by run.sh with psql -v ON_ERROR_STOP=1 in a fresh database.

CREATE EXTENSION event_store;

CREATE SCHEMA bench;

-- The baseline: event_store.events without the extension around it.
-- Columns, collations, NOT NULLs, CHECKs, keys and the category index mirror
-- the install script; keep them in step with it.
CREATE TABLE bench.plain_events (
    global_position bigint      NOT NULL,
    stream_id       text COLLATE "C" NOT NULL CHECK (stream_id <> ''),
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL,
    event_type      text COLLATE "C" NOT NULL CHECK (event_type <> ''),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL CHECK (jsonb_typeof(metadata) = 'object'),
    schema_version  int         NOT NULL CHECK (schema_version > 0),
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE (stream_id, stream_version),
    UNIQUE (event_id)
);
CREATE INDEX plain_events_category_position_idx
    ON bench.plain_events ((split_part(stream_id, '-', 1)), global_position);

-- Positions of the baseline's inserts.  A new row's stream_version is its
-- own position: unique, above every loaded version (so the
-- (stream_id, stream_version) key holds) and free of any per-stream lookup
-- or lock, which makes the baseline as cheap as it can be.
CREATE SEQUENCE bench.plain_position;

-- The store: :streams streams "bench-<n>" of :per_stream events each,
-- appended with event_store.append() in batches of :per_stream, 500 streams
-- per transaction (an append holds its stream's lock until commit, so one
-- transaction over every stream would need a huge lock table) ...
\o /dev/null
SELECT format($q$
SELECT count(event_store.append(
           'bench-' || s,
           (SELECT jsonb_agg(jsonb_build_object(
                       'type', 'BenchEvent',
                       'data', jsonb_build_object('n', i),
                       'metadata', jsonb_build_object('loaded', true)))
              FROM generate_series(1, %s) AS i)))
  FROM generate_series(%s, %s) AS s$q$,
              :per_stream, lo, least(lo + 499, :streams))
  FROM generate_series(1, :streams, 500) AS lo
\gexec

-- ... plus the stream read by the read_stream case.
SELECT event_store.append(
           'reader-1',
           (SELECT jsonb_agg(jsonb_build_object(
                       'type', 'BenchEvent',
                       'data', jsonb_build_object('n', i),
                       'metadata', '{}'::jsonb))
              FROM generate_series(1, :reader_events) AS i));
\o

-- The same rows in the baseline table.
INSERT INTO bench.plain_events SELECT * FROM event_store.events ORDER BY global_position;
SELECT setval('bench.plain_position', max(global_position)) FROM bench.plain_events \gset

VACUUM ANALYZE event_store.events;
VACUUM ANALYZE bench.plain_events;

-- Both tables must hold the same rows, or the read comparisons mean nothing.
-- (read_stream is counted on its own: these counts get parallel plans.)
SELECT count(*) AS reader_rows FROM event_store.read_stream('reader-1') \gset
SELECT (SELECT count(*) FROM event_store.events) AS store_rows,
       (SELECT count(*) FROM bench.plain_events) AS plain_rows,
       pg_size_pretty(pg_total_relation_size('event_store.events')) AS store_size,
       pg_size_pretty(pg_total_relation_size('bench.plain_events')) AS plain_size
\gset
\echo loaded :store_rows events (:store_size), baseline :plain_rows rows (:plain_size), reader-1 has :reader_rows
SELECT :store_rows = :plain_rows AND :reader_rows = :reader_events AS fixture_ok \gset
\if :fixture_ok
\else
\echo fixture mismatch
SELECT 1/0;
\endif
