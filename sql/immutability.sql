--
-- immutability: stored events cannot be changed or removed with plain DML,
-- not by the table's owner, not by a superuser, not with
-- session_replication_role = replica.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

SELECT event_store.append('ledger-1', '[{"type": "Opened", "data": {"balance": 0}},
                                        {"type": "Credited", "data": {"amount": 10}},
                                        {"type": "Debited", "data": {"amount": 3}}]', 0);
SELECT event_store.append('ledger-2', '{"type": "Opened"}', 0);
CREATE TEMP TABLE stored AS SELECT * FROM event_store.events;

-- we are a superuser and own the table
SELECT rolsuper AS superuser,
       pg_get_userbyid(c.relowner) = current_user AS owner
  FROM pg_roles r, pg_class c
 WHERE r.rolname = current_user AND c.oid = 'event_store.events'::regclass;

-- the plain error, as a client sees it
UPDATE event_store.events SET data = '{"balance": 1000000}' WHERE global_position = 1;

-- every way of changing or removing rows
SELECT regress.try($$UPDATE event_store.events SET data = '{}'$$);
SELECT regress.try($$UPDATE event_store.events SET metadata = '{"fixed": true}' WHERE stream_id = 'ledger-1'$$);
SELECT regress.try($$UPDATE event_store.events SET event_type = 'X' WHERE false$$);
SELECT regress.try($$DELETE FROM event_store.events$$);
SELECT regress.try($$DELETE FROM event_store.events WHERE stream_id = 'ledger-2'$$);
SELECT regress.try($$DELETE FROM event_store.events WHERE false$$);
SELECT regress.try($$WITH gone AS (DELETE FROM event_store.events RETURNING 1) SELECT count(*) FROM gone$$);
SELECT regress.try($$TRUNCATE event_store.events$$);
SELECT regress.try($$TRUNCATE ONLY event_store.events RESTART IDENTITY CASCADE$$);
SELECT regress.try($$INSERT INTO event_store.events SELECT * FROM event_store.events WHERE global_position = 1
                     ON CONFLICT (global_position) DO UPDATE SET data = '{}'$$);
SELECT regress.try($$MERGE INTO event_store.events e USING (VALUES (1::bigint)) AS s(p) ON e.global_position = s.p
                     WHEN MATCHED THEN UPDATE SET data = '{}'$$);
SELECT regress.try($$MERGE INTO event_store.events e USING (VALUES (1::bigint)) AS s(p) ON e.global_position = s.p
                     WHEN MATCHED THEN DELETE$$);

-- the same with replication triggers switched off for the session
SET session_replication_role = replica;
SHOW session_replication_role;
SELECT regress.try($$UPDATE event_store.events SET data = '{}'$$);
SELECT regress.try($$DELETE FROM event_store.events$$);
SELECT regress.try($$TRUNCATE event_store.events$$);
SELECT regress.try($$MERGE INTO event_store.events e USING (VALUES (1::bigint)) AS s(p) ON e.global_position = s.p
                     WHEN MATCHED THEN DELETE$$);
RESET session_replication_role;

-- nothing changed
SELECT (SELECT array_agg(s::text ORDER BY global_position) FROM stored s)
     = (SELECT array_agg(e::text ORDER BY global_position) FROM event_store.events e)
       AS unchanged;
SELECT global_position, stream_id, stream_version, event_type, data
  FROM event_store.events ORDER BY global_position;

-- appending still works
SELECT event_store.append('ledger-1', '{"type": "Closed"}', 3);
