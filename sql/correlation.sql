--
-- correlation: read_correlated (order, paging, gap-safe horizon, grants,
-- upcasting, argument errors, its index); sagas stamp their events with
-- correlationId (the saga id) and causationId (the event that caused the
-- transition); saga_diagram of a saga type and of a saga.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS corr CASCADE;
DROP ROLE IF EXISTS corr_reader;
DROP ROLE IF EXISTS corr_outsider;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE ROLE corr_reader;
CREATE ROLE corr_outsider;
GRANT USAGE ON SCHEMA regress TO corr_reader, corr_outsider;
GRANT EXECUTE ON FUNCTION event_store.read_correlated(text, bigint, int),
    event_store.saga_diagram(uuid), event_store.saga_diagram(text),
    event_store.saga_state(uuid) TO corr_reader, corr_outsider;

--
-- read_correlated: every event of one correlation, in position order,
-- across streams and categories; events of other correlations and events
-- without one are left out
--
SELECT event_store.append('corrorder-1', '[{"type": "OrderPlaced", "metadata": {"correlationId": "c-1"}},
                                           {"type": "Unrelated"}]');
SELECT event_store.append('corrpay-1', '{"type": "PaymentTaken", "metadata": {"correlationId": "c-1", "causationId": "x"}}');
SELECT event_store.append('corrorder-2', '{"type": "OrderPlaced", "metadata": {"correlationId": "c-2"}}');
SELECT event_store.append('corrship-1', '{"type": "Shipped", "metadata": {"correlationId": "c-1"}}');
SELECT event_store.append('corrorder-1', '{"type": "OrderClosed", "metadata": {"correlationId": "c-1"}}');
-- a number is a correlation id too (its text)
SELECT event_store.append('corrorder-3', '{"type": "OrderPlaced", "metadata": {"correlationId": 42}}');
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
SELECT stream_id, event_type FROM event_store.read_correlated('42');
SELECT count(*) FROM event_store.read_correlated('c-none');
-- paging: after_position and max_count
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 0, 2);
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 3, 2);
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 6, 2);
SELECT count(*) FROM event_store.read_correlated('c-1', 1000);
-- the rows are whole events
SELECT e.* = r.* AS same_rows
  FROM event_store.read_correlated('c-1') r
  JOIN event_store.events e ON e.global_position = r.global_position
 ORDER BY r.global_position LIMIT 1;

-- argument errors: negative 22023, NULL 22004; nothing is read
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, 0)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, -5)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated(NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('')$$);
-- append keeps correlation ids fit for the index
SELECT regress.try($$SELECT event_store.append('corrorder-9', '{"type": "X", "metadata": {"correlationId": {"a": 1}}}')$$);
SELECT regress.try(format($$SELECT event_store.append('corrorder-9', '{"type": "X", "metadata": {"correlationId": "%s"}}')$$, repeat('c', 1025)));
SELECT stream_version FROM event_store.read_stream('corrorder-9');

-- the index: it compares correlation ids as bytes (COLLATE "C", as the
-- stream and category indexes do), so a query of the same shape with that
-- collation uses it
SET enable_seqscan = off;
EXPLAIN (COSTS OFF)
SELECT * FROM event_store.events
 WHERE metadata ->> 'correlationId' COLLATE "C" = 'c-1' AND global_position > 0
 ORDER BY global_position LIMIT 1000;
RESET enable_seqscan;
SELECT indexdef FROM pg_indexes WHERE indexname = 'events_correlation_position_idx';
-- and read_correlated scans it
SELECT pg_stat_force_next_flush();
SELECT idx_scan AS scans_before FROM pg_stat_user_indexes
 WHERE indexrelname = 'events_correlation_position_idx' \gset
SELECT count(*) FROM event_store.read_correlated('c-1');
SELECT pg_stat_force_next_flush();
SELECT idx_scan > :scans_before AS index_scanned FROM pg_stat_user_indexes
 WHERE indexrelname = 'events_correlation_position_idx';

-- upcasting applies as on every read
CREATE SCHEMA corr;
CREATE FUNCTION corr.shipped_v2(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT data || '{"carrier": "unknown"}' $$;
SELECT event_store.register_upcaster('Shipped', 1, 'corr.shipped_v2(jsonb, jsonb)');
SELECT event_type, data, schema_version FROM event_store.read_correlated('c-1') WHERE event_type = 'Shipped';

-- grants: a reader of some categories sees only their events
SELECT event_store.grant_category('corr_reader', 'corrorder', '{read}');
SELECT event_store.grant_category(current_user::regrole, 'corrpay', '{append,read}');
SET ROLE corr_reader;
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
RESET ROLE;
SET ROLE corr_outsider;
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
RESET ROLE;
SELECT event_store.revoke_category('corr_reader', 'corrorder', '{read}');
SELECT event_store.revoke_category(current_user::regrole, 'corrpay', '{append,read}');

--
-- Sagas stamp their events: correlationId = the saga id, causationId = the
-- event that caused the transition
--
CREATE FUNCTION corr.reserve(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{"reserved": true}'::jsonb $$;
CREATE FUNCTION corr.release(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION corr.notify(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{"notified": true}'::jsonb $$;
SELECT event_store.define_saga('corr_payment', '{"steps": [
    {"name": "authorize"}]}');
SELECT event_store.define_saga('corr_order', '{"steps": [
    {"name": "reserve", "action": "corr.reserve", "compensation": "corr.release"},
    {"name": "pay", "complete_on": "PaymentReceived", "fail_on": "PaymentDeclined"},
    {"name": "invoice", "group": 3},
    {"name": "notify", "group": 3, "action": "corr.notify"},
    {"name": "payment", "saga": "corr_payment"}]}');

SELECT event_store.saga_diagram('corr_order');
SELECT event_store.saga_diagram('corr_payment');

SELECT event_store.start_saga('corr_order', '{"order": 7}', '00000000-0000-4000-8000-000000000007');
-- the payment event of another stream completes "pay"
SELECT event_store.append('corrpay-7', '{"type": "PaymentReceived", "metadata": {"saga_id": "00000000-0000-4000-8000-000000000007"}}');
SELECT event_store.complete_saga_step('00000000-0000-4000-8000-000000000007', 'invoice');

CREATE FUNCTION pg_temp.stamps(id uuid)
    RETURNS TABLE (version bigint, event_type text, step text, correlated boolean, caused_by text)
    LANGUAGE sql AS $$
    SELECT e.stream_version, e.event_type, e.data ->> 'step',
           e.metadata ->> 'correlationId' = id::text,
           COALESCE((SELECT c.stream_id || '@' || c.stream_version || ' ' || c.event_type
                       FROM event_store.events c
                      WHERE c.event_id::text = e.metadata ->> 'causationId'),
                    e.metadata ->> 'causationId')
      FROM event_store.events e
     WHERE e.stream_id = 'saga-' || id
     ORDER BY e.stream_version
$$;
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000007', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000007');
-- read_correlated finds the saga's events by its id
SELECT count(*) = (SELECT count(*) FROM event_store.events
                    WHERE stream_id = 'saga-00000000-0000-4000-8000-000000000007') AS all_saga_events
  FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
-- the nested saga's events carry its own id
SELECT child_saga_id AS child FROM event_store.saga_steps
 WHERE saga_id = '00000000-0000-4000-8000-000000000007' AND name = 'payment' \gset
SELECT version, event_type, step, correlated, caused_by FROM pg_temp.stamps(:'child');

SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid);

-- a failing saga: the compensation shows
SELECT event_store.start_saga('corr_order', '{"order": 8}', '00000000-0000-4000-8000-000000000008');
SELECT event_store.append('corrpay-8', '{"type": "PaymentDeclined", "metadata": {"saga_id": "00000000-0000-4000-8000-000000000008"}}');
SELECT event_store.saga_state('00000000-0000-4000-8000-000000000008') ->> 'status' AS status;
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000008', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000008');
SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000008'::uuid);

-- local steps one after the other: each is caused by the completion before
-- it; a step its worker fails for good causes the compensation
SELECT event_store.define_saga('corr_chain', '{"steps": [
    {"name": "one", "action": "corr.reserve", "compensation": "corr.release"},
    {"name": "two", "action": "corr.notify"},
    {"name": "three"}]}');
SELECT event_store.start_saga('corr_chain', '{}', '00000000-0000-4000-8000-000000000009');
SELECT event_store.fail_saga_step('00000000-0000-4000-8000-000000000009', 'three', 'refused', false);
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000009', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000009');

-- saga_diagram: bad input
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-00000000ffff'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('no_such_type')$$);
-- an untyped literal is a saga type: a saga id given so is pointed out
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007')$$);
SELECT regress.try($$SELECT event_store.saga_diagram(NULL::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram(NULL::text)$$);
-- labels are Mermaid text: quotes and brackets cannot break out
SELECT event_store.define_saga('corr "odd" <b>', '{"steps": [{"name": "a\"]-->x[\"#1"}]}');
SELECT event_store.saga_diagram('corr "odd" <b>');

-- grants: with category "saga" under grants, a role without read on it
-- learns nothing, not even whether the saga exists
SELECT event_store.grant_category('corr_reader', 'saga', '{read}');
SET ROLE corr_outsider;
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-00000000ffff'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('corr_order')$$);
SELECT count(*) FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
RESET ROLE;
SET ROLE corr_reader;
SELECT length(event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)) > 0 AS reader_sees;
SELECT count(*) > 0 AS reader_reads FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
RESET ROLE;
-- without EXECUTE: PostgreSQL's own 42501
REVOKE EXECUTE ON FUNCTION event_store.saga_diagram(uuid) FROM corr_outsider;
SET ROLE corr_outsider;
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)$$);
RESET ROLE;

SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA corr CASCADE;
REVOKE USAGE ON SCHEMA regress FROM corr_reader, corr_outsider;
DROP ROLE corr_reader;
DROP ROLE corr_outsider;
