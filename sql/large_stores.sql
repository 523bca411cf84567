--
-- large_stores: generated event ids are time-ordered UUIDs (version 7,
-- RFC 9562) that sort in the order they were generated, caller ids stay as
-- given, and data and metadata are compressed with lz4.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

-- lz4 on the two JSON columns (the server is built with it), the default
-- method elsewhere
SELECT attname, attcompression
  FROM pg_attribute
 WHERE attrelid = 'event_store.events'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;

-- a value large enough to be compressed is compressed with lz4
SELECT event_store.append('big-1',
    jsonb_build_object('type', 'Big',
                       'data', jsonb_build_object('text', repeat('event sourcing ', 2000)),
                       'metadata', jsonb_build_object('text', repeat('metadata ', 2000))));
SELECT pg_column_compression(data) AS data_method,
       pg_column_compression(metadata) AS metadata_method
  FROM event_store.events WHERE stream_id = 'big-1';

-- generated ids: one batch of 500, then 50 single appends to other streams,
-- then a batch that mixes generated ids with caller ids
SELECT event_store.append('v7-1',
    (SELECT jsonb_agg(jsonb_build_object('type', 'Gen', 'data', jsonb_build_object('n', i)))
       FROM generate_series(1, 500) AS i));
SELECT count(event_store.append('v7-' || i, '{"type": "Gen"}')) FROM generate_series(2, 51) AS i;
SELECT event_store.append('v7-mixed', '[
    {"type": "Gen"},
    {"type": "Given", "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "Gen"},
    {"type": "Given", "id": "FFFFFFFF-FFFF-4FFF-BFFF-FFFFFFFFFFFF"},
    {"type": "Gen"}]');

-- caller ids are stored exactly as given (generated ones between them)
SELECT stream_version, event_type,
       CASE WHEN event_type = 'Given' THEN event_id::text
            ELSE 'generated, version ' || substr(event_id::text, 15, 1) END AS event_id
  FROM event_store.events WHERE stream_id = 'v7-mixed' ORDER BY stream_version;

-- every generated id: version 7, variant 10 (8, 9, a or b), its 48-bit
-- timestamp within a second of recorded_at, all distinct
SELECT count(*) AS generated,
       count(*) FILTER (WHERE substr(event_id::text, 15, 1) = '7') AS version_7,
       count(*) FILTER (WHERE substr(event_id::text, 20, 1) IN ('8', '9', 'a', 'b')) AS variant_10,
       count(*) FILTER (WHERE abs(('x' || lpad(replace(substr(event_id::text, 1, 13), '-', ''), 16, '0'))::bit(64)::bigint
                                  - floor(extract(epoch FROM recorded_at) * 1000)::bigint) < 1000) AS timestamp_ok,
       count(DISTINCT event_id) AS distinct_ids
  FROM event_store.events WHERE event_type = 'Gen';

-- ids generated one after the other sort in the order of their positions:
-- within the batch, across the appends, around the caller ids
SELECT count(*) AS pairs,
       count(*) FILTER (WHERE prev_id >= event_id) AS out_of_order
  FROM (SELECT event_id, lag(event_id) OVER (ORDER BY global_position) AS prev_id
          FROM event_store.events WHERE event_type = 'Gen') AS g
 WHERE prev_id IS NOT NULL;

-- a caller id that is a version 7 UUID of the past is accepted and kept
SELECT event_store.append('v7-given', '{"type": "Given", "id": "01800000-0000-7000-8000-000000000000"}');
SELECT event_id FROM event_store.read_stream('v7-given');

-- an append reads its stream's version from the stream index alone once the
-- heap pages are all-visible (after a VACUUM): the version is still exact
SELECT event_store.append('ios-1', '[{"type": "A"}, {"type": "B"}, {"type": "C"}]');
SELECT event_store.append('ios-2', '{"type": "A"}');
VACUUM event_store.events;
SELECT relallvisible > 0 AS some_pages_all_visible FROM pg_class WHERE oid = 'event_store.events'::regclass;
SELECT event_store.append('ios-1', '{"type": "D"}', 4);    -- wrong: the stream is at 3
SELECT event_store.append('ios-1', '{"type": "D"}', 3);
SELECT event_store.append('ios-2', '{"type": "B"}', 0);    -- wrong: the stream is at 1
SELECT event_store.append('ios-1', '{"type": "E"}');
SELECT event_store.append('ios-3', '{"type": "A"}', 0);    -- a new stream
-- and under SERIALIZABLE, where the unread heap page is predicate-locked
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT event_store.append('ios-2', '{"type": "B"}', 1);
COMMIT;
SELECT stream_id, string_agg(event_type || stream_version, ' ' ORDER BY stream_version) AS events
  FROM event_store.events WHERE stream_id LIKE 'ios-%' GROUP BY stream_id ORDER BY stream_id;
