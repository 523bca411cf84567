--
-- preload: the library is loaded through shared_preload_libraries (the
-- refusal without it is tested by a TAP test, as it needs another server),
-- and DROP EXTENSION leaves nothing behind; a new CREATE EXTENSION starts
-- an empty store.
--
SHOW shared_preload_libraries;
-- its settings are registered under the reserved prefix
SELECT name, setting, context FROM pg_settings
 WHERE name = 'event_store.max_databases';

-- start from a store with events in it
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
SELECT event_store.append('order-1', '[{"type": "OrderPlaced"}, {"type": "OrderPaid"}]', 0);
SELECT event_store.append('order-2', '{"type": "OrderPlaced"}', 0);
SELECT event_store.head_position();

-- remember what belonged to the extension
SELECT e.oid AS ext_oid, 'event_store'::regnamespace::oid AS nsp_oid
  FROM pg_extension e WHERE e.extname = 'event_store' \gset
SELECT count(*) > 0 AS has_members
  FROM pg_depend WHERE refclassid = 'pg_extension'::regclass AND refobjid = :ext_oid;

DROP EXTENSION event_store;

-- nothing is left behind
SELECT count(*) AS extension FROM pg_extension WHERE extname = 'event_store';
SELECT count(*) AS schema FROM pg_namespace WHERE nspname = 'event_store' OR oid = :nsp_oid;
SELECT count(*) AS relations FROM pg_class WHERE relnamespace = :nsp_oid;
SELECT count(*) AS functions FROM pg_proc WHERE pronamespace = :nsp_oid;
SELECT count(*) AS types FROM pg_type WHERE typnamespace = :nsp_oid;
SELECT count(*) AS operators FROM pg_operator WHERE oprnamespace = :nsp_oid;
SELECT count(*) AS dependencies FROM pg_depend
 WHERE (refclassid = 'pg_extension'::regclass AND refobjid = :ext_oid)
    OR (refclassid = 'pg_namespace'::regclass AND refobjid = :nsp_oid)
    OR (classid = 'pg_namespace'::regclass AND objid = :nsp_oid);
SELECT count(*) AS triggers FROM pg_trigger t
  LEFT JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.oid IS NULL OR t.tgname LIKE 'events\_%';
SELECT count(*) AS init_privileges FROM pg_init_privs p
 WHERE p.objoid NOT IN (SELECT oid FROM pg_proc UNION ALL SELECT oid FROM pg_class
                        UNION ALL SELECT oid FROM pg_namespace UNION ALL SELECT oid FROM pg_type);
SELECT count(*) AS descriptions FROM pg_description d
 WHERE (d.classoid = 'pg_proc'::regclass AND d.objoid NOT IN (SELECT oid FROM pg_proc))
    OR (d.classoid = 'pg_class'::regclass AND d.objoid NOT IN (SELECT oid FROM pg_class))
    OR (d.classoid = 'pg_type'::regclass AND d.objoid NOT IN (SELECT oid FROM pg_type));
-- the functions are gone with it
SELECT to_regprocedure('event_store.append(text, jsonb, bigint)') AS append,
       to_regclass('event_store.events') AS events,
       to_regtype('event_store.event') AS event;

-- a new CREATE EXTENSION gives an empty store whose positions start at 1
CREATE EXTENSION event_store;
SELECT count(*) FROM event_store.events;
SELECT event_store.head_position();
SELECT event_store.stream_version('order-1');
SELECT event_store.append('order-1', '{"type": "OrderPlaced"}', 0);
SELECT global_position, stream_id, stream_version, event_type FROM event_store.read_all();
SELECT event_store.head_position();

-- twice in a row, inside one transaction too
BEGIN;
DROP EXTENSION event_store;
CREATE EXTENSION event_store;
SELECT event_store.append('order-9', '[{"type": "A"}, {"type": "B"}]', 0);
SELECT global_position, stream_id, stream_version, event_type FROM event_store.read_all();
COMMIT;
SELECT global_position, stream_id, stream_version, event_type FROM event_store.read_all();
SELECT event_store.head_position();

-- a DROP EXTENSION that is rolled back keeps the store as it was
BEGIN;
DROP EXTENSION event_store;
ROLLBACK;
SELECT global_position, stream_id, stream_version, event_type FROM event_store.read_all();
SELECT event_store.append('order-9', '{"type": "C"}', 2);
SELECT global_position, stream_id, stream_version, event_type FROM event_store.read_all();
