-- =====================================================================
-- event_store walkthrough
--
-- A tour of the SQL API, meant to be read top to bottom.  scripts/demo.sh
-- runs it with `psql -X -a` on a throwaway server, so every statement is
-- printed right before its result.  It works in any fresh database of a
-- server that has  shared_preload_libraries = 'event_store'.
-- =====================================================================
\set ON_ERROR_STOP on
\pset null '(null)'
SET client_min_messages = notice;

CREATE EXTENSION IF NOT EXISTS event_store;

-- ---------------------------------------------------------------------
-- 1. Appending events
-- ---------------------------------------------------------------------
-- One event to a new stream.  expected_version => 0 means "this stream
-- must not exist yet".  append() returns the stream's new version.
SELECT event_store.append('order-1001',
    '{"type": "OrderPlaced", "data": {"customer": "ada", "total": 42.5}}',
    expected_version => 0) AS version;

-- A batch is one JSON array, written atomically.  expected_version => 1
-- means "only if the stream is still at version 1".
SELECT event_store.append('order-1001', '[
    {"type": "ItemAdded", "data": {"sku": "tea", "qty": 2}},
    {"type": "ItemAdded", "data": {"sku": "mug", "qty": 1},
     "metadata": {"user": "ada"}}
  ]', expected_version => 1) AS version;

-- With its own event id an append can be retried safely: repeating the
-- same call writes nothing and returns the same version.
SELECT event_store.append('order-1002',
    '{"type": "OrderPlaced", "id": "7b0b3a5e-3c1f-4d8e-9a40-1f2d3c4b5a60",
      "data": {"customer": "grace", "total": 10}}', 0) AS version;
SELECT event_store.append('order-1002',
    '{"type": "OrderPlaced", "id": "7b0b3a5e-3c1f-4d8e-9a40-1f2d3c4b5a60",
      "data": {"customer": "grace", "total": 10}}', 0) AS version_after_retry;

-- No expected version (NULL, the default): append whatever the version.
SELECT event_store.append('customer-ada',
    '{"type": "CustomerRegistered", "data": {"name": "Ada"}}') AS version;

-- ---------------------------------------------------------------------
-- 2. Optimistic concurrency and duplicate ids
-- ---------------------------------------------------------------------
-- order-1001 is at version 3 now; a writer that still believes it is at 1
-- gets SQLSTATE SE001 (wrong_expected_version) and nothing is written.
-- Application code catches it, re-reads the stream and decides again.
DO $$
BEGIN
    PERFORM event_store.append('order-1001', '{"type": "OrderShipped"}', 1);
    RAISE EXCEPTION 'the stale append was not refused';
EXCEPTION WHEN SQLSTATE 'SE001' THEN
    RAISE NOTICE 'caught SQLSTATE %: %', SQLSTATE, SQLERRM;
END
$$;

-- An event id that is already stored somewhere else: SQLSTATE SE002
-- (duplicate_event_id).
DO $$
BEGIN
    PERFORM event_store.append('order-1003',
        '{"type": "OrderPlaced", "id": "7b0b3a5e-3c1f-4d8e-9a40-1f2d3c4b5a60"}');
    RAISE EXCEPTION 'the duplicate id was not refused';
EXCEPTION WHEN SQLSTATE 'SE002' THEN
    RAISE NOTICE 'caught SQLSTATE %: %', SQLSTATE, SQLERRM;
END
$$;

-- Neither refused call left anything behind.
SELECT event_store.stream_version('order-1001') AS "order-1001",
       event_store.stream_version('order-1003') AS "order-1003";

-- ---------------------------------------------------------------------
-- 3. Reading one stream
-- ---------------------------------------------------------------------
-- Every read returns rows of type event_store.event.
SELECT stream_version, event_type, data, metadata, schema_version
  FROM event_store.read_stream('order-1001');

-- Backward from the end, at most two events.
SELECT stream_version, event_type, data
  FROM event_store.read_stream('order-1001', backward => true, max_count => 2);

-- Forward from version 2.
SELECT stream_version, event_type
  FROM event_store.read_stream('order-1001', from_version => 2);

-- The current version; 0 for a stream that does not exist.
SELECT event_store.stream_version('order-1001') AS "order-1001",
       event_store.stream_version('order-9999') AS "order-9999";

-- ---------------------------------------------------------------------
-- 4. Following all events: read_all with a cursor
-- ---------------------------------------------------------------------
-- Every event has a global position.  head_position() is how far a
-- follower may safely read right now.
SELECT event_store.head_position() AS head;

-- A follower keeps the largest position it has seen as its cursor and asks
-- for the events after it, a page at a time (two per page here).
\set cursor 0
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(after_position => :cursor, max_count => 2);
SELECT max(global_position) AS cursor
  FROM event_store.read_all(after_position => :cursor, max_count => 2) \gset
\echo cursor is now :cursor
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(after_position => :cursor, max_count => 2);

-- The same follower as a loop, until a page comes back empty.
DO $$
DECLARE
    cursor_pos bigint := 0;
    page       int := 0;
    n          int;
    last_pos   bigint;
BEGIN
    LOOP
        SELECT count(*), max(global_position) INTO n, last_pos
          FROM event_store.read_all(cursor_pos, 2);
        EXIT WHEN n = 0;
        page := page + 1;
        RAISE NOTICE 'page %: % events, positions % to %',
            page, n, cursor_pos + 1, last_pos;
        cursor_pos := last_pos;
    END LOOP;
    RAISE NOTICE 'caught up at position %', cursor_pos;
END
$$;

-- Only some event types.
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(0, 100, event_types => ARRAY['OrderPlaced']);

-- One category: the part of the stream id before the first '-'.
SELECT global_position, stream_id, stream_version, event_type
  FROM event_store.read_category('order');
SELECT global_position, stream_id, event_type
  FROM event_store.read_category('customer', after_position => 0);

-- ---------------------------------------------------------------------
-- 5. Waiting for new events
-- ---------------------------------------------------------------------
-- wait_for_events(after_position, timeout) returns head_position() as soon
-- as it is beyond after_position: at once here, there are newer events.
SELECT event_store.wait_for_events(0) AS head;

-- Nothing newer than the head arrives, so this one returns the head after
-- the timeout.  (A follower calls it in a loop; an append committed by
-- another session wakes it immediately.)
SELECT event_store.wait_for_events(event_store.head_position(), '200 milliseconds') AS head;

-- ---------------------------------------------------------------------
-- 6. Upcasting: evolving an event's schema
-- ---------------------------------------------------------------------
-- OrderPlaced v1 had a plain "total"; v2 has an amount with a currency.
-- Stored events never change: an upcaster converts them on every read.
CREATE FUNCTION order_placed_v1_to_v2(data jsonb, metadata jsonb)
    RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT (data - 'total') ||
                 jsonb_build_object('amount', jsonb_build_object(
                     'value', data -> 'total', 'currency', 'EUR')) $$;
SELECT event_store.register_upcaster('OrderPlaced', 1,
    'order_placed_v1_to_v2(jsonb, jsonb)');

SELECT stream_id, event_type, schema_version, data
  FROM event_store.read_category('order', event_types => ARRAY['OrderPlaced']);

-- raw => true shows what is stored.
SELECT stream_id, event_type, schema_version, data
  FROM event_store.read_category('order', event_types => ARRAY['OrderPlaced'],
                                 raw => true);

-- ---------------------------------------------------------------------
-- 7. Aggregates and snapshots
-- ---------------------------------------------------------------------
-- A reducer folds a stream's (upcast) events into a state.
CREATE FUNCTION order_reducer(state jsonb, event event_store.event)
    RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE event.event_type
        WHEN 'OrderPlaced' THEN state || jsonb_build_object(
            'customer', event.data -> 'customer', 'amount', event.data -> 'amount')
        WHEN 'ItemAdded' THEN jsonb_set(state, '{items}',
            to_jsonb((state ->> 'items')::int + (event.data ->> 'qty')::int))
        WHEN 'OrderShipped' THEN state || '{"shipped": true}'
        ELSE state
    END
    $$;

-- Every stream of category 'order' is such an aggregate; keep a snapshot
-- every 2 versions.
SELECT event_store.define_aggregate('order',
    'order_reducer(jsonb, event_store.event)',
    initial_state => '{"items": 0}', snapshot_every => 2);

SELECT * FROM event_store.load_aggregate('order-1001');

-- Time travel: the state as it was at version 1.
SELECT * FROM event_store.load_aggregate('order-1001', at_version => 1);

-- This append takes order-1001 from version 3 to 4, across a multiple of 2,
-- so it stores a snapshot at version 4 in the same transaction.
SELECT event_store.append('order-1001', '{"type": "OrderShipped"}', 3) AS version;
SELECT stream_version, state, state_version
  FROM event_store.load_snapshot('order-1001');
SELECT * FROM event_store.load_aggregate('order-1001');

-- ---------------------------------------------------------------------
-- 8. Projections (CQRS read models)
-- ---------------------------------------------------------------------
-- A projection hands events to a handler (event event_store.event)
-- RETURNS void that maintains the application's own read-model tables.
CREATE TABLE order_items (
    stream_id text PRIMARY KEY,
    items     int NOT NULL DEFAULT 0,
    shipped   boolean NOT NULL DEFAULT false
);
CREATE FUNCTION project_order_items(event event_store.event)
    RETURNS void LANGUAGE plpgsql
    AS $$
BEGIN
    CASE event.event_type
    WHEN 'OrderPlaced' THEN
        INSERT INTO order_items (stream_id) VALUES (event.stream_id);
    WHEN 'ItemAdded' THEN
        UPDATE order_items SET items = items + (event.data ->> 'qty')::int
         WHERE stream_id = event.stream_id;
    WHEN 'OrderShipped' THEN
        UPDATE order_items SET shipped = true WHERE stream_id = event.stream_id;
    ELSE
        NULL;
    END CASE;
END
$$;

-- An inline projection runs inside the appending transaction (a handler
-- error aborts the append).  Creating it replays the existing history.
SELECT event_store.create_projection('order_items',
    'project_order_items(event_store.event)', categories => ARRAY['order']);
SELECT * FROM order_items ORDER BY stream_id;

-- The read model changes together with the append.
SELECT event_store.append('order-1002',
    '{"type": "ItemAdded", "data": {"sku": "pen", "qty": 5}}') AS version;
SELECT * FROM order_items ORDER BY stream_id;

-- An async projection is applied after commit by the extension's
-- background worker, in global-position order, gap-safe, each batch
-- committed together with its checkpoint.  (event_store.run_projections()
-- does the same on demand.)
CREATE TABLE event_counts (event_type text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION count_event(event event_store.event)
    RETURNS void LANGUAGE sql
    AS $$ INSERT INTO event_counts VALUES (event.event_type, 1)
          ON CONFLICT (event_type) DO UPDATE SET n = event_counts.n + 1 $$;
SELECT event_store.create_projection('event_counts',
    'count_event(event_store.event)', mode => 'async');

-- Give the worker a moment to catch up.
DO $$
BEGIN
    FOR i IN 1 .. 100 LOOP
        EXIT WHEN (SELECT lag_events FROM event_store.projection_status
                    WHERE name = 'event_counts') = 0;
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;
SELECT name, mode, state, position, head_position, lag_events, last_error
  FROM event_store.projection_status ORDER BY name;
SELECT * FROM event_counts ORDER BY event_type;

-- Followers that prefer LISTEN get  NOTIFY event_store, '<head_position>'
-- from the worker when the head advances (at most once per
-- event_store.notify_interval).  psql prints it after the next statement.
LISTEN event_store;
SELECT event_store.append('customer-ada',
    '{"type": "CustomerEmailChanged", "data": {"email": "ada@example.org"}}') AS version;
SELECT pg_sleep(0.5);
UNLISTEN event_store;

-- ---------------------------------------------------------------------
-- 9. Sagas (orchestrated long-running transactions)
-- ---------------------------------------------------------------------
-- Fulfilling an order takes three steps: reserve stock (a local step, an
-- SQL function run inside the database), take the payment (an external
-- step, claimed and reported by some payment worker outside) and dispatch
-- (event-driven: completed by an appended event).  A failure compensates
-- the completed steps in reverse order.
CREATE FUNCTION reserve_stock(saga_id uuid, data jsonb)
    RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('reservation', 'R-' || (data ->> 'order')) $$;
CREATE FUNCTION release_stock(saga_id uuid, data jsonb)
    RETURNS jsonb LANGUAGE sql
    AS $$ SELECT jsonb_build_object('released', data -> 'reservation') $$;

SELECT event_store.define_saga('fulfilment', '{
    "steps": [
      {"name": "reserve_stock", "action": "reserve_stock",
       "compensation": "release_stock"},
      {"name": "take_payment", "max_attempts": 2, "backoff": "1 second"},
      {"name": "dispatch", "complete_on": "ShipmentDispatched",
       "fail_on": "ShipmentLost", "timeout": "2 days"}
    ],
    "timeout": "7 days"}');

-- start_saga runs the ready local steps at once: reserve_stock is done,
-- take_payment waits for an external worker.
SELECT event_store.start_saga('fulfilment', '{"order": "order-1001"}',
    '5a9a0000-0000-4000-8000-000000000001') AS saga_id;

-- How a saga looks (timestamps left out here).
SELECT s ->> 'status' AS status, s ->> 'currentStep' AS current_step,
       jsonb_path_query_array(s, '$.steps[*].status') AS step_statuses
  FROM event_store.saga_state('5a9a0000-0000-4000-8000-000000000001') AS s;

-- The payment worker claims its steps (under a lease; concurrent workers
-- never get the same step) and reports the result.
SELECT saga_id, step, kind, attempt, data
  FROM event_store.claim_saga_steps('payments-1', step_names => ARRAY['take_payment']);
SELECT event_store.complete_saga_step('5a9a0000-0000-4000-8000-000000000001',
    'take_payment', '{"payment": "P-77"}');

-- Dispatch completes when an event carrying the saga's id in its metadata
-- is appended, here by the shipping side.
SELECT event_store.append('shipment-9001', '{"type": "ShipmentDispatched",
    "data": {"order": "order-1001"},
    "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000001"}}') AS version;

SELECT s ->> 'status' AS status,
       jsonb_path_query_array(s, '$.steps[*].status') AS step_statuses
  FROM event_store.saga_state('5a9a0000-0000-4000-8000-000000000001') AS s;

-- A second order whose payment is declined for good: the reservation is
-- released by the compensation and the saga ends "compensated".
SELECT event_store.start_saga('fulfilment', '{"order": "order-1002"}',
    '5a9a0000-0000-4000-8000-000000000002') AS saga_id;
SELECT step, kind FROM event_store.claim_saga_steps('payments-1');
SELECT event_store.fail_saga_step('5a9a0000-0000-4000-8000-000000000002',
    'take_payment', 'card declined', retryable => false);
SELECT s ->> 'status' AS status,
       jsonb_path_query(s, '$.steps[*] ? (@.stepType == "reserve_stock")')
           - 'timestamp' AS reserve_stock
  FROM event_store.saga_state('5a9a0000-0000-4000-8000-000000000002') AS s;

-- Every transition is also an event in the stream saga-<saga_id>, stamped
-- with the saga id as metadata "correlationId" and the id of the event that
-- caused it as "causationId": read_correlated() reads a saga's events (and
-- any other event stamped with its id) in position order.
SELECT stream_version, event_type,
       metadata ->> 'correlationId' = '5a9a0000-0000-4000-8000-000000000002' AS correlated,
       metadata ? 'causationId' AS has_cause
  FROM event_store.read_stream('saga-5a9a0000-0000-4000-8000-000000000002');
SELECT global_position, stream_id, event_type
  FROM event_store.read_correlated('5a9a0000-0000-4000-8000-000000000001');

-- A saga drawn as a Mermaid flowchart (paste it into any Mermaid viewer):
-- its steps in order, compensations as dashed edges, each step's status as
-- its class.  saga_diagram('fulfilment') draws the saga type itself.
SELECT event_store.saga_diagram('5a9a0000-0000-4000-8000-000000000002'::uuid)
\g (format=unaligned tuples_only=on)

-- ---------------------------------------------------------------------
-- 10. Subscriptions: consumer groups on the log
-- ---------------------------------------------------------------------
-- A subscription is a durable position in the log that any number of
-- consumers share (a consumer is any process that can call SQL).  Streams
-- are hashed into partitions, and a partition is leased to one consumer at
-- a time: each stream's events are handled in order, by one consumer at a
-- time, while different streams go in parallel.  This one delivers the
-- order events appended from now on, gives each event two attempts, and
-- waits 100 ms before the first retry.
SELECT event_store.create_subscription('invoicing', categories => ARRAY['order'],
    partitions => 4, start_position => event_store.head_position(),
    max_attempts => 2, retry_backoff => '100 milliseconds');

SELECT event_store.append('order-2001', '[
    {"type": "OrderPlaced", "data": {"customer": "ada", "total": 12}},
    {"type": "OrderShipped"}]', 0) AS version;
SELECT event_store.append('order-2002', '[
    {"type": "OrderPlaced", "data": {"customer": "grace", "total": -5}},
    {"type": "OrderShipped"}]', 0) AS version;
SELECT global_position AS failing
  FROM event_store.read_stream('order-2002') WHERE event_type = 'OrderPlaced' \gset

-- The consumer 'billing-1' claims a batch.  Being the only consumer, it
-- leases all four partitions (for 30 seconds, renewed by every claim) and
-- gets their events in order, upcast like every read.
SELECT partition, attempt, global_position, stream_id, stream_version, event_type, data
  FROM event_store.claim_events('invoicing', 'billing-1', max_count => 10);

-- order-2001 is invoiced; order-2002's negative total is refused.  The
-- consumer nacks that event with the error; the nack also takes back the
-- later events of order-2002 it was handed (they follow the retry), so it
-- skips them.  Then one ack up to the last event it handled: the ack
-- covers what is still pending, order-2001's two events.
SELECT event_store.nack_event('invoicing', 'billing-1', :failing, 'negative total');
SELECT event_store.ack_events('invoicing', 'billing-1',
    (SELECT max(global_position) FROM event_store.read_stream('order-2001'))) AS acknowledged;

-- order-2002 is held back and retrying; every other stream goes on.
SELECT name, partitions, consumers, in_flight, retrying_streams, parked_streams
  FROM event_store.subscription_status;

-- Once the backoff (100 ms, give or take a quarter) has passed, a claim
-- hands the event out again (attempt 2), with the rest of its stream.  A
-- claim with a wait that finds nothing blocks until new events are
-- appended, a retry is due or a lease expires, or the time is up: this one
-- returns as soon as the retry is due.
SELECT partition, attempt, global_position, stream_id, stream_version, event_type
  FROM event_store.claim_events('invoicing', 'billing-1', wait => '5 seconds');

-- It fails again.  That was its last attempt: the stream is parked, and
-- waits for an operator.
SELECT event_store.nack_event('invoicing', 'billing-1', :failing, 'negative total, again');
SELECT stream_id, global_position, event_type, attempts, last_error
  FROM event_store.subscription_parked;

-- The other streams are not held up.
SELECT event_store.append('order-2003',
    '{"type": "OrderPlaced", "data": {"customer": "alan", "total": 30}}', 0) AS version;
SELECT partition, attempt, stream_id, stream_version, event_type
  FROM event_store.claim_events('invoicing', 'billing-1');
SELECT event_store.ack_events('invoicing', 'billing-1', event_store.head_position()) AS acknowledged;

-- The invoicing rule is fixed (a negative total becomes a credit note),
-- and replay_parked delivers the parked stream again from its parked
-- event, attempts counted afresh.  (skip_parked would acknowledge it
-- without delivery instead, recording who skipped it.)
SELECT event_store.replay_parked('invoicing', 'order-2002') AS replayed;

-- A consumer inside the database makes its writes and the ack one
-- transaction: both commit or neither does, so each event takes effect
-- exactly once.  (A consumer elsewhere gets each event at least once, and
-- deduplicates by event_id.)
CREATE TABLE invoices (
    stream_id text PRIMARY KEY,
    kind      text NOT NULL,
    amount    numeric NOT NULL
);
BEGIN;
CREATE TEMP TABLE batch ON COMMIT DROP AS
SELECT * FROM event_store.claim_events('invoicing', 'billing-1');
SELECT partition, attempt, stream_id, stream_version, event_type FROM batch ORDER BY global_position;
INSERT INTO invoices
SELECT stream_id, CASE WHEN total < 0 THEN 'credit note' ELSE 'invoice' END, abs(total)
  FROM (SELECT stream_id, (data -> 'amount' ->> 'value')::numeric AS total
          FROM batch WHERE event_type = 'OrderPlaced') b;
SELECT event_store.ack_events('invoicing', 'billing-1',
    (SELECT max(global_position) FROM batch)) AS acknowledged;
COMMIT;
SELECT * FROM invoices;

-- Nothing parked, nothing in flight.
SELECT * FROM event_store.subscription_parked;
SELECT name, consumers, in_flight, retrying_streams, parked_streams,
       lag_events FROM event_store.subscription_status;

-- On shutdown a consumer gives its partitions up at once (otherwise they
-- pass to the others when its lease expires); what it did not acknowledge
-- is delivered again to the next holder.
SELECT event_store.release_events('invoicing', 'billing-1');
SELECT name, consumers, in_flight FROM event_store.subscription_status;

-- Everything at a glance.
SELECT global_position, stream_id, stream_version, event_type
  FROM event_store.read_all();
