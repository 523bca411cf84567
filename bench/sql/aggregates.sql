-- aggregate, upcast and snapshot_hook cases.  Run with -v agg_events, upcast_events.
-- PL/pgSQL, like the other per-event callbacks of the benchmark
CREATE OR REPLACE FUNCTION bench.agg_reduce(state jsonb, e event_store.event)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_build_object(
               'count', coalesce((state->>'count')::bigint, 0) + 1,
               'sum', coalesce((state->>'sum')::numeric, 0) + coalesce((e.data->>'n')::numeric, 0));
END
$$;

-- the same stream content in a category with snapshots every 100 versions and
-- in one whose aggregate takes none; loaded in batches of 100 through append
-- so that the snapshot hook fires
SELECT event_store.define_aggregate('aggsnap', 'bench.agg_reduce(jsonb, event_store.event)', '{}', 100);
SELECT event_store.define_aggregate('aggfull', 'bench.agg_reduce(jsonb, event_store.event)', '{}', NULL);
\o /dev/null
SELECT format($q$SELECT event_store.append(%L,
                  (SELECT jsonb_agg(jsonb_build_object('type', 'AggEvent', 'data', jsonb_build_object('n', i)))
                     FROM generate_series(%s, %s) AS i))$q$, s, lo, lo + 99)
  FROM unnest(ARRAY['aggsnap-1', 'aggfull-1']) AS s,
       generate_series(1, :agg_events, 100) AS lo
 ORDER BY s, lo
\gexec
\o
SELECT (SELECT count(*) FROM event_store.load_snapshot('aggsnap-1')) AS snap_rows,
       (SELECT stream_version FROM event_store.load_snapshot('aggsnap-1')) AS snap_version,
       (SELECT count(*) FROM event_store.load_snapshot('aggfull-1')) AS full_snaps,
       (SELECT state FROM event_store.load_aggregate('aggsnap-1')) =
       (SELECT state FROM event_store.load_aggregate('aggfull-1')) AS same_state
\gset
\echo aggregate fixture: aggsnap-1 newest snapshot at :snap_version, aggfull-1 snapshots :full_snaps, same state :same_state
SELECT :snap_version = :agg_events AND :full_snaps = 0 AND :'same_state'::boolean AS agg_ok \gset
\if :agg_ok
\else
\echo 'aggregate fixture is not as expected (snapshot at the last version, none for aggfull-1, same state)'
SELECT 1/0;
\endif

-- upcast: one stream whose events all need one upcast
-- PL/pgSQL evaluates a simple expression without an executor run per call
CREATE OR REPLACE FUNCTION bench.upcast_v2(data jsonb, metadata jsonb)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN data || '{"v2":true}'; END $$;
SELECT event_store.register_upcaster('UpcastMe', 1, 'bench.upcast_v2(jsonb, jsonb)');
\o /dev/null
SELECT event_store.append('upc-1',
           (SELECT jsonb_agg(jsonb_build_object('type', 'UpcastMe', 'data', jsonb_build_object('n', i)))
              FROM generate_series(1, :upcast_events) AS i));
\o
-- the same upcaster as a LANGUAGE sql function, on stream upcsql-1 (for information)
CREATE OR REPLACE FUNCTION bench.upcast_v2_sql(data jsonb, metadata jsonb)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT data || '{"v2":true}' $$;
SELECT event_store.register_upcaster('UpcastMeSql', 1, 'bench.upcast_v2_sql(jsonb, jsonb)');
\o /dev/null
SELECT event_store.append('upcsql-1',
           (SELECT jsonb_agg(jsonb_build_object('type', 'UpcastMeSql', 'data', jsonb_build_object('n', i)))
              FROM generate_series(1, :upcast_events) AS i));
\o
SELECT (SELECT count(*) FROM event_store.read_stream('upc-1') WHERE data ? 'v2' AND schema_version = 2) AS upcast_n,
       (SELECT count(*) FROM event_store.read_stream('upc-1', raw => true) WHERE NOT data ? 'v2') AS raw_n,
       (SELECT count(*) FROM event_store.read_stream('upcsql-1') WHERE data ? 'v2' AND schema_version = 2) AS upcast_sql_n
\gset
SELECT :upcast_n = :upcast_events AND :raw_n = :upcast_events AND :upcast_sql_n = :upcast_events AS upcast_ok \gset
\if :upcast_ok
\else
\echo 'upcast fixture: upcast reads' :upcast_n ', raw reads' :raw_n
SELECT 1/0;
\endif

-- snapshot_hook: 100 streams per category, pre-loaded to version 90 so that
-- versions cross multiples of 100 during the runs
SELECT event_store.define_aggregate('snap', 'bench.agg_reduce(jsonb, event_store.event)', '{}', 100);
\o /dev/null
SELECT event_store.append(c || '-' || s,
           (SELECT jsonb_agg(jsonb_build_object('type', 'BenchEvent', 'data', jsonb_build_object('n', i)))
              FROM generate_series(1, 90) AS i))
  FROM unnest(ARRAY['snap', 'nosnap']) AS c, generate_series(1, 100) AS s;
\o
