-- growth.sh: after the loaders: the read stream, the aggregate stream, the
-- baseline's copy of the rows and snapshots, VACUUM ANALYZE, checks.
\o /dev/null
SELECT event_store.append('reader-1',
           (SELECT jsonb_agg(bench.event_doc('ReaderEvent', i)) FROM generate_series(1, 1000) AS i));
SELECT format($q$SELECT event_store.append('aggsnap-1',
                  (SELECT jsonb_agg(bench.event_doc('AggEvent', i)) FROM generate_series(%s, %s) AS i))$q$,
              lo, least(lo + 99, 10037))
  FROM generate_series(1, 10037, 100) AS lo
\gexec
\o

INSERT INTO bench.plain_events SELECT * FROM event_store.events ORDER BY global_position;
SELECT setval('bench.plain_position', max(global_position)) FROM bench.plain_events;
CREATE TABLE bench.plain_snapshots (LIKE event_store.snapshots INCLUDING ALL);
INSERT INTO bench.plain_snapshots SELECT * FROM event_store.snapshots;

VACUUM ANALYZE event_store.events;
VACUUM ANALYZE event_store.snapshots;
VACUUM ANALYZE bench.plain_events;
VACUUM ANALYZE bench.plain_snapshots;

SELECT (SELECT count(*) FROM event_store.events) AS store_rows,
       (SELECT count(*) FROM bench.plain_events) AS plain_rows,
       (SELECT stream_version FROM event_store.load_snapshot('aggsnap-1')) AS snap_version,
       (SELECT avg(octet_length(data::text) + octet_length(metadata::text))::int
          FROM event_store.events TABLESAMPLE SYSTEM (1)) AS json_bytes
\gset
\echo store :store_rows events, baseline :plain_rows rows, aggsnap-1 snapshot at :snap_version, about :json_bytes bytes of JSON per event
SELECT :store_rows = :plain_rows AND :snap_version = 10000 AS fixture_ok \gset
\if :fixture_ok
\else
\echo fixture mismatch
SELECT 1/0;
\endif

-- same state both ways, and the baseline reads are the index scans they claim
SELECT (SELECT state FROM event_store.load_aggregate('aggsnap-1')) = bench.bare_load('aggsnap-1') AS same_state \gset
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
SELECT position('plain_events_stream_id_stream_version_key' IN
                pg_temp.plan_of($q$SELECT * FROM bench.plain_events WHERE stream_id COLLATE "C" = 'reader-1' ORDER BY stream_version$q$)) > 0
       AND position('Index Scan using plain_events_pkey' IN
                pg_temp.plan_of('SELECT * FROM bench.plain_events WHERE global_position > 1000 ORDER BY global_position LIMIT 1000')) > 0
       AND position('Index Scan using plain_events_category_position_idx' IN
                pg_temp.plan_of($q$SELECT * FROM bench.plain_events WHERE (split_part(stream_id, '-', 1) COLLATE "C", global_position) > ('order', 1000) AND split_part(stream_id, '-', 1) COLLATE "C" <= 'order' ORDER BY split_part(stream_id, '-', 1) COLLATE "C", global_position LIMIT 1000$q$)) > 0
       AS plans_ok \gset
\if :same_state
\else
\echo 'load_aggregate and the bare fold disagree'
SELECT 1/0;
\endif
\if :plans_ok
\else
\echo 'the baseline reads do not use the indexes they should:'
SELECT pg_temp.plan_of($q$SELECT * FROM bench.plain_events WHERE stream_id COLLATE "C" = 'reader-1' ORDER BY stream_version$q$) AS stream_plan,
       pg_temp.plan_of('SELECT * FROM bench.plain_events WHERE global_position > 1000 ORDER BY global_position LIMIT 1000') AS all_plan \gset
\echo :stream_plan
\echo :all_plan
SELECT 1/0;
\endif
