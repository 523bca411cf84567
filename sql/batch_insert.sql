--
-- batch_insert: a batch goes into the heap as one multi-row insertion (of
-- at most 1,000 rows at a time), then into each index, an index at a time.
-- Every row must come out with its entry in every index (amcheck's
-- heapallindexed check), its version, position and id, and its values
-- (large ones stored out of line) as given.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
CREATE EXTENSION IF NOT EXISTS amcheck;
RESET client_min_messages;

-- a single event (the single-row path) and batches of 2, 10 and 2,500 events
-- (three multi-row insertions of 1,000, 1,000 and 500 rows); every fifth
-- event has a correlationId (a run of its own), every 100th a value large
-- enough to be stored out of line, every 7th of the last batch an id of its own
SELECT event_store.append('bi-1', '{"type": "One", "metadata": {"correlationId": "bi-c0"}}');
SELECT event_store.append('bi-2', '[{"type": "A"}, {"type": "B", "metadata": {"correlationId": "bi-c0"}}]');
SELECT event_store.append('bi-3',
    (SELECT jsonb_agg(jsonb_build_object('type', 'Ten', 'data', jsonb_build_object('i', i)) ORDER BY i)
       FROM generate_series(1, 10) AS i));
SELECT event_store.append('bi-4',
    (SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                'type', 'Many',
                'id', CASE WHEN i % 7 = 0 THEN md5('bi-id-' || i)::uuid END,
                'data', jsonb_build_object('i', i, 'blob',
                    CASE WHEN i % 100 = 0
                         THEN (SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 600) AS j)
                    END),
                'metadata', CASE WHEN i % 5 = 0 THEN jsonb_build_object('correlationId', 'bi-c' || i % 3) END))
             ORDER BY i)
       FROM generate_series(1, 2500) AS i));

-- versions dense from 1 in every stream, positions dense over the store,
-- ids unique
SELECT stream_id, count(*), min(stream_version), max(stream_version),
       max(global_position) - min(global_position) + 1 AS position_span
  FROM event_store.events WHERE stream_id LIKE 'bi-%' GROUP BY stream_id ORDER BY stream_id;
SELECT count(*) = count(DISTINCT event_id) AS ids_unique,
       max(global_position) - min(global_position) + 1 = count(*) AS positions_dense
  FROM event_store.events WHERE stream_id LIKE 'bi-%';
-- the given ids are where they were given
SELECT count(*) AS given_ids_in_place
  FROM event_store.events
 WHERE stream_id = 'bi-4' AND stream_version % 7 = 0
   AND event_id = md5('bi-id-' || stream_version)::uuid;

-- the large values are stored out of line, and read back whole
SELECT reltoastrelid::regclass AS toast FROM pg_class WHERE oid = 'event_store.events'::regclass \gset
SELECT count(DISTINCT chunk_id) AS out_of_line FROM :toast;
SELECT count(*) AS blobs_intact
  FROM event_store.events
 WHERE stream_id = 'bi-4' AND stream_version % 100 = 0
   AND data ->> 'blob' = (SELECT string_agg(md5(stream_version || '-' || j), '') FROM generate_series(1, 600) AS j);

-- every index has an entry for every row, and each read finds them
SELECT c.relname AS checked
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid,
       LATERAL bt_index_check(c.oid, true)
 WHERE i.indrelid = 'event_store.events'::regclass
 ORDER BY c.relname;
SELECT count(*) AS read_stream FROM event_store.read_stream('bi-4');
SELECT count(*) AS read_category FROM event_store.read_category('bi', 0, 10000);
SELECT correlation, (SELECT count(*) FROM event_store.read_correlated(correlation, 0, 10000)) AS events
  FROM unnest(ARRAY['bi-c0', 'bi-c1', 'bi-c2']) AS correlation;
SELECT count(*) AS read_all FROM event_store.read_all(0, 10000) WHERE stream_id LIKE 'bi-%';

-- The index keys a batch shares are computed once for all its rows (the
-- category of its stream): the entries must be what the index's
-- expressions give for each row (amcheck's heapallindexed check recomputes
-- them), for every kind of stream id; and the batch's correlation runs hold
-- the text metadata ->> 'correlationId' gives, for every kind of value.
SELECT event_store.append('bikeys', jsonb_build_array(
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', 'bi-k')),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', 42.50)),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', true)),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', null)),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('other', 1)),
    jsonb_build_object('type', 'K'),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', '')),
    jsonb_build_object('type', 'K', 'metadata', jsonb_build_object('correlationId', 'bi-k'))));
SELECT event_store.append('bikeys-a-b', '[{"type": "K"}, {"type": "K"}, {"type": "K"}]');
SELECT event_store.append('bikeys-', '[{"type": "K"}, {"type": "K"}]');
SELECT event_store.append('bikeys-é-ü', '[{"type": "K"}, {"type": "K"}]');
SELECT c.relname AS checked
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid,
       LATERAL bt_index_check(c.oid, true)
 WHERE i.indrelid = 'event_store.events'::regclass
 ORDER BY c.relname;
-- each key is found through its index, and only the rows that have one
SELECT correlation, (SELECT string_agg(stream_version::text, ',' ORDER BY global_position)
                       FROM event_store.read_correlated(correlation, 0, 100)) AS versions
  FROM unnest(ARRAY['bi-k', '42.50', 'true']) AS correlation;
SELECT count(*) AS correlated_rows
  FROM event_store.events
 WHERE stream_id = 'bikeys' AND (metadata ->> 'correlationId') IS NOT NULL;
-- the batch's runs: each id's text, a null or missing id breaking the run
SELECT r.correlation_id, r.first_position - b.first + 1 AS first, r.last_position - b.first + 1 AS last,
       r.correlation_id = ALL (SELECT (e.metadata ->> 'correlationId') COLLATE "C" FROM event_store.events e
                                WHERE e.global_position BETWEEN r.first_position AND r.last_position)
           AS as_the_events_give_it
  FROM event_store.correlations r,
       (SELECT min(global_position) AS first, max(global_position) AS last
          FROM event_store.events WHERE stream_id = 'bikeys') b
 WHERE r.first_position >= b.first AND r.last_position <= b.last
 ORDER BY r.first_position;
SELECT 'correlations_pkey' AS checked FROM bt_index_check('event_store.correlations_pkey'::regclass, true);
-- the runs cover exactly the events that have an id: the events at their
-- positions with their id, counted, are all the events with one
SELECT (SELECT count(*) FROM event_store.correlations r
          JOIN event_store.events e
            ON e.global_position BETWEEN r.first_position AND r.last_position
           AND (e.metadata ->> 'correlationId') COLLATE "C" = r.correlation_id) AS events_in_runs,
       (SELECT count(*) FROM event_store.events
         WHERE (metadata ->> 'correlationId') IS NOT NULL) AS events_with_an_id;
SELECT stream_id, count(*)
  FROM event_store.read_category('bikeys', 0, 100) GROUP BY stream_id ORDER BY stream_id;

-- a batch refused for an id stored before writes nothing
SELECT event_store.head_position() AS head \gset
SELECT event_store.append('bi-5', jsonb_build_array(
    jsonb_build_object('type', 'X'),
    jsonb_build_object('type', 'X', 'id', md5('bi-id-7')::uuid)));
SELECT event_store.head_position() = :head AS nothing_written,
       (SELECT count(*) FROM event_store.events WHERE stream_id = 'bi-5') AS rows;

DROP EXTENSION amcheck;
