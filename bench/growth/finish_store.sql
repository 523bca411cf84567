-- growth.sh: after the loaders: the read stream, the aggregate stream,
-- VACUUM ANALYZE and the store's checks.  Then finish.sql makes the
-- baseline (in the same database, or in its own when the sides are measured
-- apart).
\o /dev/null
SELECT event_store.append('reader-1',
           (SELECT jsonb_agg(bench.event_doc('ReaderEvent', i)) FROM generate_series(1, 1000) AS i));
SELECT format($q$SELECT event_store.append('aggsnap-1',
                  (SELECT jsonb_agg(bench.event_doc('AggEvent', i)) FROM generate_series(%s, %s) AS i))$q$,
              lo, least(lo + 99, 10037))
  FROM generate_series(1, 10037, 100) AS lo
\gexec
\o

VACUUM ANALYZE event_store.events;
VACUUM ANALYZE event_store.snapshots;
SELECT (SELECT stream_version FROM event_store.load_snapshot('aggsnap-1')) = 10000 AS snap_ok \gset
\if :snap_ok
\else
\echo 'aggsnap-1 has no snapshot at version 10000'
SELECT 1/0;
\endif
