-- growth.sh: the baseline, after finish_store.sql: the bare table's copy of
-- the store's rows and snapshots, VACUUM ANALYZE, checks.  Variables:
-- apart (1: the rows were copied into bench.plain_events and
-- bench.plain_snapshots of this database from an export of the store's;
-- 0: the store is in this database, copy them here), store_rows (the
-- store's events) and es_state (load_aggregate('aggsnap-1') of the store).
\if :apart
\else
INSERT INTO bench.plain_events SELECT * FROM event_store.events ORDER BY global_position;
INSERT INTO bench.plain_snapshots SELECT * FROM event_store.snapshots;
\endif
SELECT setval('bench.plain_position', max(global_position)) FROM bench.plain_events;

VACUUM ANALYZE bench.plain_events;
VACUUM ANALYZE bench.plain_snapshots;

SELECT (SELECT count(*) FROM bench.plain_events) AS plain_rows,
       (SELECT avg(octet_length(data::text) + octet_length(metadata::text))::int
          FROM bench.plain_events TABLESAMPLE SYSTEM (1)) AS json_bytes
\gset
\echo store :store_rows events, baseline :plain_rows rows, about :json_bytes bytes of JSON per event
SELECT :store_rows = :plain_rows AS fixture_ok \gset
\if :fixture_ok
\else
\echo fixture mismatch
SELECT 1/0;
\endif

-- same state both ways, and the baseline reads are the index scans they claim
SELECT :'es_state'::jsonb = bench.bare_load('aggsnap-1') AS same_state \gset
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
