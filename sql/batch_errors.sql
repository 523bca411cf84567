--
-- batch_errors: a batch refused by append() leaves nothing behind.  A batch
-- goes into the heap as one multi-row insertion, then into each index, an
-- index at a time; a refusal found in a later index, in a later chunk of
-- 1,000 rows, or by the id checks before the insertion must leave every
-- index with entries for exactly the stored rows (amcheck's heapallindexed
-- check), nothing readable of the batch, and the transaction usable after
-- ROLLBACK TO SAVEPOINT.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
CREATE EXTENSION IF NOT EXISTS amcheck;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- every index of the hot table and of the archived ranges, checked with
-- heapallindexed; returns the number of indexes checked
CREATE FUNCTION regress.check_event_indexes() RETURNS bigint
LANGUAGE sql AS $$
    SELECT count(*)
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
           JOIN pg_class t ON t.oid = i.indrelid,
           LATERAL bt_index_check(c.oid, true)
     WHERE t.relnamespace = 'event_store'::regnamespace
       AND (t.relname = 'events' OR t.relname LIKE 'events_archive%')
$$;
-- n events of type t, event i with data {"i": i} and, where id_at names
-- its index, the id given
CREATE FUNCTION regress.bie_batch(n int, t text, id_at int DEFAULT 0, id uuid DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
               'type', t, 'data', jsonb_build_object('i', i),
               'id', CASE WHEN i = id_at THEN id END)) ORDER BY i)
      FROM generate_series(1, n) AS i
$$;

SELECT event_store.append('bie-a', regress.bie_batch(3, 'Seed', 2, 'aaaaaaaa-0000-4000-8000-000000000002'));

-- the same id twice in one batch (the second time in the second chunk)
SELECT regress.try($$SELECT event_store.append('bie-b', regress.bie_batch(1500, 'Dup')
    || '[{"type": "Dup", "id": "bbbbbbbb-0000-4000-8000-000000000001"}]'::jsonb
    || regress.bie_batch(1200, 'Dup')
    || '[{"type": "Dup", "id": "bbbbbbbb-0000-4000-8000-000000000001"}]'::jsonb)$$);
-- an id stored in the hot table, in the middle of a 2,500-event batch
SELECT regress.try($$SELECT event_store.append('bie-b', regress.bie_batch(2500, 'Dup', 1700, 'aaaaaaaa-0000-4000-8000-000000000002'))$$);
SELECT count(*) AS rows_b FROM event_store.events WHERE stream_id = 'bie-b';
SELECT event_store.head_position() AS head_after_refusals;

-- an id stored in an archived range
SET allow_in_place_tablespaces = on;
CREATE TABLESPACE bie_cold LOCATION '';
RESET allow_in_place_tablespaces;
SELECT event_store.append('bie-c', regress.bie_batch(5, 'Old', 4, 'cccccccc-0000-4000-8000-000000000004'));
SELECT event_store.archive_events(event_store.head_position() + 1, 'bie_cold') > 0 AS archived;
SELECT regress.try($$SELECT event_store.append('bie-d', regress.bie_batch(1200, 'Dup', 1100, 'cccccccc-0000-4000-8000-000000000004'))$$);
SELECT count(*) AS rows_d FROM event_store.events WHERE stream_id = 'bie-d';
-- the archived id is still refused, as a retry of a different batch
SELECT regress.try($$SELECT event_store.append('bie-c', regress.bie_batch(2, 'Old', 1, 'cccccccc-0000-4000-8000-000000000004'))$$);
-- an exact retry of the archived events is recognised as one
SELECT event_store.append('bie-c', (SELECT jsonb_agg(jsonb_build_object('type', event_type, 'data', data, 'id', event_id) ORDER BY stream_version)
                                      FROM event_store.read_stream('bie-c')));
SELECT regress.check_event_indexes() > 0 AS indexes_intact;

-- a refusal from an index after the others got the entries of every row: a
-- unique index of the caller's on data->>'k' refuses event 1,700 of 2,500
-- (the second chunk), when every built-in index already has entries for
-- the first 1,700 rows at least
CREATE UNIQUE INDEX bie_zz_k ON event_store.events ((data ->> 'k'));
SELECT event_store.append('bie-e', '{"type": "K", "data": {"k": "taken"}}');
SELECT event_store.head_position() AS head \gset
BEGIN;
SAVEPOINT s;
SELECT event_store.append('bie-f', (SELECT jsonb_agg(jsonb_build_object('type', 'K',
           'data', CASE WHEN i = 1700 THEN '{"k": "taken"}'::jsonb ELSE jsonb_build_object('i', i) END) ORDER BY i)
      FROM generate_series(1, 2500) AS i));
ROLLBACK TO SAVEPOINT s;
SELECT (SELECT count(*) FROM event_store.read_all(:head, 10000)) AS readable_after,
       (SELECT count(*) FROM event_store.events WHERE stream_id = 'bie-f') AS rows_f;
SELECT regress.check_event_indexes() > 0 AS indexes_intact;
-- the retry in the same transaction, without the conflicting row
SELECT event_store.append('bie-f', regress.bie_batch(2500, 'K'), 0);
COMMIT;
SELECT count(*), min(stream_version), max(stream_version),
       max(global_position) - min(global_position) + 1 AS position_span,
       min(global_position) > :head AS positions_above
  FROM event_store.events WHERE stream_id = 'bie-f';
-- the same refusal inside a subtransaction of plpgsql: caught, then retried
SELECT regress.try($$SELECT event_store.append('bie-g', regress.bie_batch(10, 'K') || '[{"type": "K", "data": {"k": "taken"}}]'::jsonb)$$);
SELECT event_store.append('bie-g', regress.bie_batch(11, 'K'), 0);
SELECT regress.check_event_indexes() > 0 AS indexes_intact;
DROP INDEX event_store.bie_zz_k;

-- the correlation runs: a batch mixing events with and without a
-- correlationId (and one with a non-string one); read_correlated returns
-- exactly those with it
SELECT event_store.append('bie-h', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
           'type', 'C', 'data', jsonb_build_object('i', i),
           'metadata', CASE WHEN i % 3 = 0 THEN jsonb_build_object('correlationId', 'bie-corr')
                            WHEN i % 3 = 1 THEN jsonb_build_object('other', 'x') END)) ORDER BY i)
      FROM generate_series(1, 1300) AS i));
SELECT count(*) AS correlated,
       bool_and((data ->> 'i')::int % 3 = 0) AS only_those,
       bool_and(stream_id = 'bie-h') AS only_stream
  FROM event_store.read_correlated('bie-corr', 0, 100000);
SELECT count(*) AS expected_correlated
  FROM event_store.events WHERE stream_id = 'bie-h' AND metadata ->> 'correlationId' = 'bie-corr';

-- large values stored out of line (data compressed with lz4; metadata of
-- random hex may not shrink enough to stay compressed), in a batch of
-- 1,200 whose every 50th event is large, the last one refused: nothing of
-- it stays, then the batch without it goes in whole
SELECT count(*) AS toast_before FROM event_store.events WHERE pg_column_size(data) > 2000;
SELECT regress.try($$SELECT event_store.append('bie-t', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
           'type', 'T', 'id', CASE WHEN i = 1200 THEN 'aaaaaaaa-0000-4000-8000-000000000002'::uuid END,
           'data', jsonb_build_object('i', i, 'blob',
               CASE WHEN i % 50 = 0 THEN (SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 800) AS j) END),
           'metadata', CASE WHEN i % 50 = 0 THEN jsonb_build_object('note',
               (SELECT string_agg(md5('m' || i || '-' || j), '') FROM generate_series(1, 300) AS j)) END)) ORDER BY i)
      FROM generate_series(1, 1200) AS i))$$);
SELECT event_store.append('bie-t', (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
           'type', 'T',
           'data', jsonb_build_object('i', i, 'blob',
               CASE WHEN i % 50 = 0 THEN (SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 800) AS j) END),
           'metadata', CASE WHEN i % 50 = 0 THEN jsonb_build_object('note',
               (SELECT string_agg(md5('m' || i || '-' || j), '') FROM generate_series(1, 300) AS j)) END)) ORDER BY i)
      FROM generate_series(1, 1199) AS i), 0);
SELECT count(*) AS large_rows,
       count(*) FILTER (WHERE pg_column_compression(data) = 'lz4') AS lz4,
       count(*) FILTER (WHERE data ->> 'blob' = (SELECT string_agg(md5(stream_version || '-' || j), '') FROM generate_series(1, 800) AS j)
                          AND metadata ->> 'note' = (SELECT string_agg(md5('m' || stream_version || '-' || j), '') FROM generate_series(1, 300) AS j)) AS intact
  FROM event_store.events WHERE stream_id = 'bie-t' AND stream_version % 50 = 0;
SELECT count(*) AS rows_t FROM event_store.events WHERE stream_id = 'bie-t';
SELECT regress.check_event_indexes() > 0 AS indexes_intact;

-- clean up
DROP FUNCTION regress.check_event_indexes();
DROP FUNCTION regress.bie_batch(int, text, int, uuid);
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
RESET client_min_messages;
DROP TABLESPACE bie_cold;
DROP EXTENSION amcheck;
