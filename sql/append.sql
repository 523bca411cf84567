--
-- append: single events and batches, returned versions, optimistic
-- concurrency (SE001), idempotent retries and duplicate ids (SE002),
-- defaults, a large batch, atomicity with the caller's transaction and
-- categories.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

--
-- Single events and batches; the stream's version after the append is
-- returned.  Versions start at 1 and have no gaps; global positions are
-- unique across streams.
--
SELECT now() AS before_appends \gset
SELECT event_store.append('order-1', '{"type": "OrderPlaced", "data": {"total": 10}}');
SELECT event_store.append('order-1', '{"type": "OrderPaid"}');
SELECT event_store.append('order-2', '{"type": "OrderPlaced", "data": {"total": 7}}');
SELECT event_store.append('order-1', '[{"type": "ItemAdded", "data": {"sku": "a"}},
                                       {"type": "ItemAdded", "data": {"sku": "b"}},
                                       {"type": "OrderShipped"}]');
-- named arguments; expected_version defaults to NULL (any version)
SELECT event_store.append(stream_id => 'order-2', events => '[{"type": "OrderPaid"}]');
SELECT event_store.append(events => '{"type": "OrderCancelled"}', stream_id => 'order-3');

SELECT global_position, stream_id, stream_version, event_type, data, metadata, schema_version
  FROM event_store.events ORDER BY global_position;
SELECT event_store.stream_version('order-1') AS order_1,
       event_store.stream_version('order-2') AS order_2,
       event_store.stream_version('order-3') AS order_3,
       event_store.stream_version('order-4') AS unknown_stream;
-- recorded_at is the time of the append
SELECT bool_and(recorded_at BETWEEN :'before_appends' AND now()) AS recorded_at_ok
  FROM event_store.events;

--
-- expected_version: NULL = any, 0 = the stream must not exist yet,
-- n > 0 = the stream must be exactly at version n.
--
SELECT event_store.append('order-2', '{"type": "Noted"}', NULL);
SELECT event_store.append('payment-1', '{"type": "PaymentStarted"}', 0);
SELECT event_store.append('payment-1', '{"type": "PaymentAuthorised"}', 1);
SELECT event_store.append('payment-1', '[{"type": "PaymentCaptured"}, {"type": "PaymentSettled"}]', 2);
SELECT event_store.append('payment-1', '{"type": "PaymentRefunded"}', expected_version => 4);

-- wrong expected versions: SQLSTATE SE001 naming the stream, the expected
-- and the actual version
SELECT regress.try($$SELECT event_store.append('payment-1', '{"type": "Again"}', 0)$$);
SELECT regress.try($$SELECT event_store.append('payment-1', '{"type": "Stale"}', 3)$$);
SELECT regress.try($$SELECT event_store.append('payment-1', '{"type": "Ahead"}', 9)$$);
SELECT regress.try($$SELECT event_store.append('payment-2', '{"type": "NotThere"}', 2)$$);
SELECT regress.try($$SELECT event_store.append('payment-1', '[{"type": "A"}, {"type": "B"}]', 4)$$);
-- nothing of a refused append was written
SELECT event_store.stream_version('payment-1') AS payment_1,
       event_store.stream_version('payment-2') AS payment_2;
SELECT stream_version, event_type FROM event_store.events
 WHERE stream_id = 'payment-1' ORDER BY stream_version;

--
-- Idempotent retries: a batch whose events all carry ids and that is
-- already stored right after expected_version (or anywhere in the stream
-- for NULL) writes nothing and returns the version after those events.
--
SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]', 0);
SELECT count(*) AS events_before_retries FROM event_store.events \gset
-- the same batch again, same expected version: same result, nothing written
SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]', 0);
-- and with no expected version
SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]');
SELECT count(*) - :events_before_retries AS written_by_retries FROM event_store.events;

-- the stream moves on; a late retry still returns the version after the
-- retried events, not the stream's current version
SELECT event_store.append('cart-1', '{"type": "CheckedOut", "id": "00000000-0000-4000-8000-000000000009"}', 3);
SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]', 0);
SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]', NULL);
-- a retry of the second of two batches
SELECT event_store.append('cart-1', '[
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002", "data": {"sku": "x"}},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003", "data": {"sku": "y"}}]', 1);
-- a single event object with an id, retried
SELECT event_store.append('cart-2', '{"type": "CartOpened", "id": "00000000-0000-4000-8000-000000000010"}', 0);
SELECT event_store.append('cart-2', '{"type": "CartOpened", "id": "00000000-0000-4000-8000-000000000010"}', 0);
SELECT event_store.append('cart-2', '{"type": "CartOpened", "id": "00000000-0000-4000-8000-000000000010"}');
-- ids are compared as uuids, whatever their spelling
SELECT event_store.append('cart-3', '{"type": "CartOpened", "id": "{A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11}"}', 0);
SELECT event_store.append('cart-3', '{"type": "CartOpened", "id": "a0eebc999c0b4ef8bb6d6bb9bd380a11"}', 0);
SELECT event_store.append('cart-3', '{"type": "CartOpened", "id": "a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11"}', 0);
SELECT event_id FROM event_store.events WHERE stream_id = 'cart-3';
SELECT count(*) - :events_before_retries AS written_since_first_batch FROM event_store.events;

-- anything else with a stored id is SE002 naming the id:
-- partial overlap with the stored events
SELECT regress.try($$SELECT event_store.append('cart-1', '[
    {"type": "ItemAdded", "id": "00000000-0000-4000-8000-000000000003"},
    {"type": "ItemAdded", "id": "00000000-0000-4000-8000-000000000004"}]', 2)$$);
SELECT regress.try($$SELECT event_store.append('cart-1', '[
    {"type": "ItemAdded", "id": "00000000-0000-4000-8000-000000000005"},
    {"type": "ItemAdded", "id": "00000000-0000-4000-8000-000000000001"}]')$$);
-- the stored ids, at another place than expected_version says
SELECT regress.try($$SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003"}]', 1)$$);
-- the stored ids in another order
SELECT regress.try($$SELECT event_store.append('cart-1', '[
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000003"},
    {"type": "ItemAdded",   "id": "00000000-0000-4000-8000-000000000002"}]')$$);
-- a retry needs an id on every event of the batch
SELECT regress.try($$SELECT event_store.append('cart-1', '[
    {"type": "CartOpened",  "id": "00000000-0000-4000-8000-000000000001"},
    {"type": "ItemAdded"}]', 0)$$);
-- an id reused in another stream
SELECT regress.try($$SELECT event_store.append('cart-9', '{"type": "CartOpened", "id": "00000000-0000-4000-8000-000000000001"}')$$);
SELECT regress.try($$SELECT event_store.append('cart-9', '{"type": "CartOpened", "id": "00000000-0000-4000-8000-000000000010"}', 0)$$);
-- the same id twice in one batch
SELECT regress.try($$SELECT event_store.append('cart-9', '[
    {"type": "A", "id": "00000000-0000-4000-8000-000000000020"},
    {"type": "B", "id": "00000000-0000-4000-8000-000000000021"},
    {"type": "C", "id": "00000000-0000-4000-8000-000000000020"}]')$$);
-- none of these wrote anything
SELECT count(*) - :events_before_retries AS written_since_first_batch FROM event_store.events;
SELECT event_store.stream_version('cart-1') AS cart_1,
       event_store.stream_version('cart-9') AS cart_9;
SELECT stream_version, event_type, event_id FROM event_store.events
 WHERE stream_id = 'cart-1' ORDER BY stream_version;

--
-- Defaults: data {} and metadata {} when absent, metadata null -> {},
-- schema_version 1, a generated (time-ordered, version 7) id.  data may be any
-- JSON value.
--
SELECT event_store.append('defaults-1', '[
    {"type": "Bare"},
    {"type": "NullMetadata", "metadata": null},
    {"type": "NullData", "data": null},
    {"type": "ScalarData", "data": 42},
    {"type": "StringData", "data": "text"},
    {"type": "ArrayData", "data": [1, {"a": 2}], "metadata": {"user": "u1"}},
    {"type": "Versioned", "schema_version": 3}]', 0);
SELECT stream_version, event_type, data, jsonb_typeof(data) AS data_type,
       metadata, schema_version
  FROM event_store.events WHERE stream_id = 'defaults-1' ORDER BY stream_version;
SELECT count(DISTINCT event_id) AS distinct_ids,
       bool_and(substr(event_id::text, 15, 1) = '7') AS uuids_v7
  FROM event_store.events WHERE stream_id = 'defaults-1';

--
-- A batch of 10,000 events in one call: contiguous versions and
-- contiguous global positions, in the order given.
--
SELECT event_store.append('bulk-1',
       (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', jsonb_build_object('n', i))
                         ORDER BY i)
          FROM generate_series(1, 10000) AS i), 0) AS bulk_version;
SELECT count(*) AS events,
       min(stream_version) AS first_version,
       max(stream_version) AS last_version,
       max(global_position) - min(global_position) + 1 AS position_span,
       count(DISTINCT global_position - stream_version) AS position_version_offsets,
       bool_and((data ->> 'n')::bigint = stream_version) AS order_kept,
       count(DISTINCT event_id) AS distinct_ids
  FROM event_store.events WHERE stream_id = 'bulk-1';
-- nothing else was interleaved into the batch's positions
SELECT count(*) AS foreign_events_inside_batch
  FROM event_store.events e,
       (SELECT min(global_position) AS lo, max(global_position) AS hi
          FROM event_store.events WHERE stream_id = 'bulk-1') b
 WHERE e.global_position BETWEEN b.lo AND b.hi AND e.stream_id <> 'bulk-1';
SELECT event_store.append('bulk-1', '{"type": "Tock"}', 10000);
-- positions stay unique and follow version order within every stream
SELECT count(*) = count(DISTINCT global_position) AS positions_unique
  FROM event_store.events;
SELECT count(*) AS out_of_order
  FROM (SELECT global_position,
               lag(global_position) OVER (PARTITION BY stream_id ORDER BY stream_version) AS prev
          FROM event_store.events) s
 WHERE prev >= global_position;

--
-- Atomicity with the caller's transaction.
--
BEGIN;
SELECT event_store.append('tx-1', '{"type": "Opened"}', 0);
SELECT event_store.append('tx-1', '{"type": "Changed"}', 1);
-- visible inside the transaction
SELECT event_store.stream_version('tx-1');
SELECT stream_version, event_type FROM event_store.read_stream('tx-1');
ROLLBACK;
-- no trace after the rollback
SELECT event_store.stream_version('tx-1');
SELECT count(*) FROM event_store.events WHERE stream_id = 'tx-1';
SELECT event_store.append('tx-1', '{"type": "OpenedAgain"}', 0);

-- savepoints: a rolled back append is gone, the rest of the transaction stays
BEGIN;
SELECT event_store.append('tx-2', '{"type": "First"}', 0);
SAVEPOINT s1;
SELECT event_store.append('tx-2', '{"type": "Discarded"}', 1);
ROLLBACK TO SAVEPOINT s1;
SELECT event_store.stream_version('tx-2');
SELECT event_store.append('tx-2', '{"type": "Second"}', 1);
-- a refused append inside the transaction does not spoil it
SELECT regress.try($$SELECT event_store.append('tx-2', '{"type": "Third"}', 1)$$);
SELECT event_store.append('tx-2', '{"type": "Third"}', 2);
COMMIT;
SELECT stream_version, event_type FROM event_store.events
 WHERE stream_id = 'tx-2' ORDER BY stream_version;
-- a transaction that appended cannot be prepared for two-phase commit (its
-- positions would hold followers back until COMMIT PREPARED); it is rolled
-- back instead
BEGIN;
SELECT event_store.append('tx-3', '{"type": "Prepared"}', 0);
PREPARE TRANSACTION 'event_store_append';
SELECT count(*) AS prepared FROM pg_prepared_xacts WHERE gid = 'event_store_append';
SELECT event_store.stream_version('tx-3');

--
-- Categories: the part of the stream id before the first "-"; a stream id
-- without "-" is its own category.
--
SELECT event_store.append('inventory', '{"type": "CatalogueOpened"}', 0);
SELECT event_store.append('inventory-7', '{"type": "StockCounted"}', 0);
SELECT event_store.append('inventory-7-b', '{"type": "StockCounted"}', 0);
SELECT event_store.append('inventoryx-1', '{"type": "Other"}', 0);
SELECT stream_id, stream_version, event_type
  FROM event_store.read_category('inventory') ORDER BY global_position;
SELECT stream_id, stream_version, event_type
  FROM event_store.read_category('inventoryx') ORDER BY global_position;
