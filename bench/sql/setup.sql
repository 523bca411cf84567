-- Benchmark fixture: a realistic store in event_store.events and a plain
-- table of the same shape, constraints and indexes holding the same rows.
-- Run by run.sh with psql -v ON_ERROR_STOP=1 in a fresh database.

CREATE EXTENSION event_store;

CREATE SCHEMA bench;

-- The baseline: event_store.events without the extension around it.
-- Columns, collations, NOT NULLs, CHECKs (none at present), keys and indexes
-- mirror the install script; keep them in step with it (checked below).
CREATE TABLE bench.plain_events (
    global_position bigint      NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    schema_version  int         NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE (event_id)
);
-- stream ids are compared as bytes by these two indexes, as in the store
CREATE UNIQUE INDEX plain_events_stream_id_stream_version_key
    ON bench.plain_events (stream_id COLLATE "C", stream_version);
CREATE INDEX plain_events_category_position_idx
    ON bench.plain_events ((split_part(stream_id, '-', 1) COLLATE "C"), global_position);

-- Refuse to compare against a baseline that drifted from the store: same
-- columns (type, collation, NOT NULL), CHECKs and indexes (method, keys,
-- uniqueness), whatever the names.
CREATE FUNCTION pg_temp.table_shape(rel regclass) RETURNS text
LANGUAGE sql AS $$
    SELECT concat_ws(E'\n',
        (SELECT string_agg(format('column %s %s %s%s', a.attname,
                                  format_type(a.atttypid, a.atttypmod),
                                  coalesce('collate ' || c.collname, ''),
                                  CASE WHEN a.attnotnull THEN ' not null' END),
                           E'\n' ORDER BY a.attnum)
           FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation
          WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT string_agg('check ' || pg_get_constraintdef(oid), E'\n' ORDER BY 1)
           FROM pg_constraint WHERE conrelid = rel AND contype = 'c'),
        (SELECT string_agg(CASE WHEN indisunique THEN 'unique ' ELSE '' END ||
                           regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', ''),
                           E'\n' ORDER BY 1)
           FROM pg_index WHERE indrelid = rel))
$$;
SELECT pg_temp.table_shape('event_store.events') AS store_shape,
       pg_temp.table_shape('bench.plain_events') AS plain_shape,
       pg_temp.table_shape('event_store.events') = pg_temp.table_shape('bench.plain_events') AS same_shape
\gset
\if :same_shape
\else
\echo 'bench.plain_events does not mirror event_store.events any more; update bench/sql/setup.sql.'
\echo 'event_store.events:'
\echo :store_shape
\echo 'bench.plain_events:'
\echo :plain_shape
SELECT 1/0;
\endif

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

-- The baseline reads must be the index scans they claim to be.
CREATE FUNCTION pg_temp.plan_of(query text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    line text;
    plan text := '';
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || query LOOP
        plan := plan || line || E'\n';
    END LOOP;
    RETURN plan;
END
$$;
SELECT position('Index Scan using plain_events_stream_id_stream_version_key' IN
                pg_temp.plan_of($q$SELECT * FROM bench.plain_events WHERE stream_id COLLATE "C" = 'reader-1' ORDER BY stream_version$q$)) > 0
       AND position('Index Scan using plain_events_pkey' IN
                pg_temp.plan_of('SELECT * FROM bench.plain_events WHERE global_position > 1000 ORDER BY global_position LIMIT 1000')) > 0
       AS plans_ok \gset
\if :plans_ok
\else
\echo 'the baseline reads do not use the indexes they should'
SELECT 1/0;
\endif

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
