--
-- upcasting: register_upcaster / drop_upcaster, chains with a type rename,
-- upcasting on every read path (read_stream, read_all, read_category,
-- load_aggregate) and raw => true, type filters matching the upcast type,
-- stored events never changing, replacement, upcaster errors, signature and
-- argument checks, and when a change of the registry becomes visible (same
-- transaction, rollback, next transaction, other sessions).
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

--
-- Events written before any upcaster exists.  UpcRegistered went through
-- three schemas: v1 {"name"}, v2 {"full_name"}, v3 {"full_name", "source"}
-- under the new name UpcSignedUp.
--
SELECT event_store.append('upcust-1', '[
  {"type": "UpcRegistered", "data": {"name": "Ann"}, "metadata": {"source": "web"}},
  {"type": "UpcRenamed",    "data": {"name": "Ann B"}},
  {"type": "UpcRegistered", "data": {"full_name": "Bob"}, "schema_version": 2},
  {"type": "UpcSignedUp",   "data": {"full_name": "Cy", "source": "app"}, "schema_version": 3}
]');
SELECT event_store.append('upcust-2', '{"type": "UpcRegistered", "data": {"name": "Dee"}}');
SELECT event_store.append('upcother-1', '{"type": "UpcRegistered", "data": {"name": "Eve"}}');

-- the stored rows, kept to prove that upcasting never changes them
CREATE TABLE stored_before AS SELECT * FROM event_store.events;

-- no upcaster yet: reads return what was stored
SELECT global_position, stream_id, stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1');

-- the upcasters: v1 -> v2 keeps the type, v2 -> v3 renames it and takes
-- the source from the metadata
CREATE FUNCTION upc_v1_to_v2(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT (data - 'name') || jsonb_build_object('full_name', data -> 'name')
$$;
CREATE FUNCTION upc_v2_to_v3(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT data || jsonb_build_object('source', coalesce(metadata ->> 'source', 'unknown'))
$$;

-- one step registered: v1 events come out as v2, nothing else changes
SELECT event_store.register_upcaster('UpcRegistered', 1, 'upc_v1_to_v2(jsonb,jsonb)');
SELECT global_position, stream_id, stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1');

-- the second step with a rename: the chain runs v1 -> v2 -> v3, a stored
-- v2 event takes one step, the stored v3 event and other types none
SELECT event_store.register_upcaster(event_type => 'UpcRegistered', from_schema_version => 2,
                                     upcaster => 'upc_v2_to_v3(jsonb,jsonb)',
                                     to_event_type => 'UpcSignedUp');
SELECT event_type, from_schema_version, upcaster, to_event_type
  FROM event_store.upcasters ORDER BY event_type, from_schema_version;

-- read_stream, forward and backward, with limits; metadata and the other
-- columns are the stored ones
SELECT global_position, stream_id, stream_version, event_type, data, metadata, schema_version
  FROM event_store.read_stream('upcust-1');
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', backward => true, max_count => 2);
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 3);
-- every column but event_type, data and schema_version is the stored one
SELECT count(*) AS same_other_columns
  FROM event_store.read_stream('upcust-1') r
  JOIN stored_before s USING (global_position)
 WHERE (r.stream_id, r.stream_version, r.event_id, r.metadata, r.recorded_at)
     = (s.stream_id, s.stream_version, s.event_id, s.metadata, s.recorded_at);

-- raw => true: the stored events
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', raw => true);
SELECT count(*) AS raw_equals_stored
  FROM event_store.read_stream('upcust-1', raw => true) r
  JOIN stored_before s ON row(r.*)::text = row(s.*)::text;

-- read_all
SELECT global_position, stream_id, event_type, data, schema_version
  FROM event_store.read_all();
SELECT global_position, stream_id, event_type, data, schema_version
  FROM event_store.read_all(raw => true);
SELECT global_position, event_type, schema_version
  FROM event_store.read_all(after_position => 2, max_count => 2);

-- read_category
SELECT global_position, stream_id, event_type, data, schema_version
  FROM event_store.read_category('upcust');
SELECT global_position, stream_id, event_type, data, schema_version
  FROM event_store.read_category('upcust', raw => true);

-- event_types filters match the upcast type (and the stored one with raw)
SELECT global_position, event_type, schema_version
  FROM event_store.read_all(event_types => ARRAY['UpcSignedUp']);
SELECT global_position, event_type, schema_version
  FROM event_store.read_all(event_types => ARRAY['UpcRegistered']);
SELECT global_position, event_type, schema_version
  FROM event_store.read_all(event_types => ARRAY['UpcRegistered'], raw => true);
SELECT global_position, event_type, schema_version
  FROM event_store.read_all(event_types => ARRAY['UpcSignedUp'], raw => true);
SELECT global_position, event_type, schema_version
  FROM event_store.read_category('upcust', event_types => ARRAY['UpcSignedUp', 'UpcRenamed']);
SELECT global_position, event_type, schema_version
  FROM event_store.read_category('upcust', event_types => ARRAY['UpcRegistered']);
SELECT global_position, event_type, schema_version
  FROM event_store.read_category('upcust', event_types => ARRAY['UpcRegistered'], raw => true);
-- max_count counts the events that pass the filter
SELECT global_position, event_type
  FROM event_store.read_all(max_count => 2, event_types => ARRAY['UpcSignedUp']);

-- events appended after the upcasters exist are upcast as well
SELECT event_store.append('upcust-2', '{"type": "UpcRegistered", "data": {"name": "Dee 2"}, "metadata": {"source": "api"}}');
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-2');
-- the stored row is v1
SELECT stream_version, event_type, data, schema_version
  FROM event_store.events WHERE stream_id = 'upcust-2' ORDER BY stream_version;

--
-- load_aggregate: the reducer sees the upcast events
--
CREATE FUNCTION upc_reduce(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('seen', (state -> 'seen') || to_jsonb(
        format('%s v%s %s', event.event_type, event.schema_version, event.data)))
$$;
SELECT event_store.define_aggregate('upcust', 'upc_reduce(jsonb,event_store.event)', '{"seen": []}');
SELECT a.stream_version, s.seen
  FROM event_store.load_aggregate('upcust-1') a, jsonb_array_elements_text(a.state -> 'seen') s(seen);
SELECT a.stream_version, s.seen
  FROM event_store.load_aggregate('upcust-2', at_version => 1) a,
       jsonb_array_elements_text(a.state -> 'seen') s(seen);

-- the snapshot hook folds upcast events too
SELECT event_store.define_aggregate('upcust', 'upc_reduce(jsonb,event_store.event)', '{"seen": []}',
                                    snapshot_every => 3);
SELECT event_store.append('upcust-2', '{"type": "UpcRegistered", "data": {"name": "Dee 3"}}');
SELECT n.stream_version, n.state_version, s.seen
  FROM event_store.snapshots n, jsonb_array_elements_text(n.state -> 'seen') s(seen)
 WHERE n.stream_id = 'upcust-2';
SELECT a.stream_version, s.seen
  FROM event_store.load_aggregate('upcust-2') a, jsonb_array_elements_text(a.state -> 'seen') s(seen);

-- after all those reads the stored events are exactly as written
SELECT (SELECT count(*) FROM stored_before) AS stored_before,
       (SELECT count(*) FROM (TABLE stored_before EXCEPT
                              SELECT * FROM event_store.events) d) AS changed_or_missing;
SELECT stream_id, stream_version, event_type, data, schema_version
  FROM event_store.events ORDER BY global_position;

--
-- Re-registering replaces the function and the target type.
--
CREATE FUNCTION upc_v1_to_v2_display(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('full_name', upper(data ->> 'name'))
$$;
SELECT event_store.register_upcaster('UpcRegistered', 1, 'upc_v1_to_v2_display(jsonb,jsonb)');
SELECT event_store.register_upcaster('UpcRegistered', 2, 'upc_v2_to_v3(jsonb,jsonb)');
SELECT event_type, from_schema_version, upcaster, to_event_type
  FROM event_store.upcasters ORDER BY event_type, from_schema_version;
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1');
-- and back
SELECT event_store.register_upcaster('UpcRegistered', 1, 'upc_v1_to_v2(jsonb,jsonb)');
SELECT event_store.register_upcaster('UpcRegistered', 2, 'upc_v2_to_v3(jsonb,jsonb)', 'UpcSignedUp');
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1');

-- a renamed type's own upcasters continue the chain
CREATE FUNCTION upc_v3_to_v4(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data || '{"v4": true}' $$;
SELECT event_store.register_upcaster('UpcSignedUp', 3, 'upc_v3_to_v4(jsonb,jsonb)');
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1');
SELECT event_store.drop_upcaster('UpcSignedUp', 3);

--
-- An upcaster's error aborts the read with the upcaster's own message.
--
CREATE FUNCTION upc_broken(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF data ? 'bad' THEN
        RAISE EXCEPTION 'cannot upcast UpcBroken: %', data ->> 'bad'
            USING ERRCODE = 'P0001', HINT = 'Fix the event data.';
    END IF;
    RETURN data || '{"fixed": true}';
END
$$;
SELECT event_store.append('upcbroken-1', '[{"type": "UpcBroken", "data": {"ok": 1}},
                                           {"type": "UpcBroken", "data": {"bad": "no way"}}]');
SELECT event_store.register_upcaster('UpcBroken', 1, 'upc_broken(jsonb,jsonb)');
SELECT * FROM event_store.read_stream('upcbroken-1');
SELECT regress.try($$SELECT * FROM event_store.read_stream('upcbroken-1')$$) AS read_stream;
SELECT regress.try($$SELECT * FROM event_store.read_all()$$) AS read_all;
SELECT regress.try($$SELECT * FROM event_store.read_category('upcbroken')$$) AS read_category;
SELECT regress.try($$SELECT * FROM event_store.read_all(event_types => ARRAY['Nothing'])$$)
       AS read_all_filtered;
-- the event before the bad one is upcast fine; raw reads do not call it
SELECT stream_version, data, schema_version
  FROM event_store.read_stream('upcbroken-1', max_count => 1);
SELECT stream_version, data, schema_version
  FROM event_store.read_stream('upcbroken-1', raw => true);
SELECT event_store.define_aggregate('upcbroken', 'upc_reduce(jsonb,event_store.event)', '{"seen": []}');
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('upcbroken-1')$$) AS load_aggregate;
SELECT stream_version, state FROM event_store.load_aggregate('upcbroken-1', at_version => 1);
-- an upcaster's error inside a transaction aborts it like any error
BEGIN;
SELECT count(*) FROM event_store.read_stream('upcbroken-1');
SELECT 1;
ROLLBACK;

-- an upcaster that returns NULL: a clear error
CREATE FUNCTION upc_null(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
SELECT event_store.register_upcaster('UpcBroken', 1, 'upc_null(jsonb,jsonb)');
SELECT * FROM event_store.read_stream('upcbroken-1');
SELECT regress.try($$SELECT * FROM event_store.read_all()$$) AS read_all;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('upcbroken-1')$$) AS load_aggregate;
SELECT event_store.drop_upcaster('UpcBroken', 1);
SELECT stream_version, data, schema_version FROM event_store.read_stream('upcbroken-1');

--
-- Signatures are checked at registration.
--
CREATE FUNCTION upc_one_arg(data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT data $$;
CREATE FUNCTION upc_returns_text(data jsonb, metadata jsonb) RETURNS text
LANGUAGE sql AS $$ SELECT data::text $$;
CREATE FUNCTION upc_text_args(data text, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data::jsonb $$;
CREATE FUNCTION upc_three_args(data jsonb, metadata jsonb, extra jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data $$;
CREATE FUNCTION upc_set(data jsonb, metadata jsonb) RETURNS SETOF jsonb
LANGUAGE sql AS $$ SELECT data $$;
CREATE PROCEDURE upc_proc(data jsonb, metadata jsonb) LANGUAGE sql AS $$ SELECT 1 $$;
SELECT event_store.register_upcaster('UpcSig', 1, 'upc_one_arg(jsonb)');
SELECT sig, regress.try(format('SELECT event_store.register_upcaster(%L, 1, %L)', 'UpcSig', sig))
  FROM (VALUES ('upc_returns_text(jsonb,jsonb)'),
               ('upc_text_args(text,jsonb)'),
               ('upc_three_args(jsonb,jsonb,jsonb)'),
               ('upc_set(jsonb,jsonb)'),
               ('upc_proc(jsonb,jsonb)'),
               ('upc_v1_to_v2(jsonb,jsonb)')) v(sig);
-- the one with the right signature was registered; the others were not
SELECT event_type, from_schema_version, upcaster FROM event_store.upcasters
 WHERE event_type = 'UpcSig';
SELECT event_store.drop_upcaster('UpcSig', 1);

--
-- Bad arguments: class 22, nothing registered or dropped.
--
SELECT stmt, regress.try(stmt) AS error
  FROM (VALUES
    ($$SELECT event_store.register_upcaster(NULL, 1, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('', 1, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('UpcX', NULL, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('UpcX', 0, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('UpcX', -1, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('UpcX', 2147483647, 'upc_v1_to_v2(jsonb,jsonb)')$$),
    ($$SELECT event_store.register_upcaster('UpcX', 1, NULL)$$),
    ($$SELECT event_store.register_upcaster('UpcX', 1, 'upc_v1_to_v2(jsonb,jsonb)', '')$$),
    ($$SELECT event_store.drop_upcaster(NULL, 1)$$),
    ($$SELECT event_store.drop_upcaster('', 1)$$),
    ($$SELECT event_store.drop_upcaster('UpcRegistered', NULL)$$),
    ($$SELECT * FROM event_store.read_stream('upcust-1', raw => NULL)$$),
    ($$SELECT * FROM event_store.read_all(raw => NULL)$$),
    ($$SELECT * FROM event_store.read_category('upcust', raw => NULL)$$)
  ) v(stmt);
SELECT event_type, from_schema_version, upcaster, to_event_type
  FROM event_store.upcasters ORDER BY event_type, from_schema_version;

-- dropping an upcaster that does not exist is an error
SELECT event_store.drop_upcaster('UpcNothing', 1);
SELECT event_store.drop_upcaster('UpcRegistered', 3);
SELECT regress.try($$SELECT event_store.drop_upcaster('UpcNothing', 1)$$) AS drop_missing;

--
-- When a change of the registry becomes visible.
--
-- in the same transaction, from the next statement on; a rollback undoes it
BEGIN;
SELECT event_store.drop_upcaster('UpcRegistered', 2);
SELECT stream_version, event_type, schema_version FROM event_store.read_stream('upcust-2');
SELECT event_store.register_upcaster('UpcRegistered', 2, 'upc_v2_to_v3(jsonb,jsonb)', 'UpcRenamedAgain');
SELECT stream_version, event_type, schema_version FROM event_store.read_stream('upcust-2');
ROLLBACK;
SELECT stream_version, event_type, schema_version FROM event_store.read_stream('upcust-2');

-- the same with a savepoint
BEGIN;
SAVEPOINT s;
SELECT event_store.register_upcaster('UpcRenamed', 1, 'upc_v1_to_v2(jsonb,jsonb)', 'UpcRenamedV2');
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
ROLLBACK TO SAVEPOINT s;
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
COMMIT;

-- a transaction that registers and reads inside one function call
BEGIN;
DO $$
DECLARE
    t text;
BEGIN
    PERFORM event_store.register_upcaster('UpcRenamed', 1, 'upc_v1_to_v2(jsonb,jsonb)', 'UpcRenamedV2');
    SELECT event_type INTO t FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
    RAISE NOTICE 'inside the same call: %', t;
END
$$;
ROLLBACK;
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);

-- committed in one transaction, used in the next
BEGIN;
SELECT event_store.register_upcaster('UpcRenamed', 1, 'upc_v1_to_v2(jsonb,jsonb)', 'UpcRenamedV2');
COMMIT;
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
-- dropped: no longer upcast, in the same and in a new session
SELECT event_store.drop_upcaster('UpcRenamed', 1);
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
\c
SELECT stream_version, event_type, data, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
-- a new session sees the upcasters registered before it started
SELECT stream_version, event_type, schema_version FROM event_store.read_stream('upcust-2');

-- changes committed by another session reach a session that has already
-- loaded the registry
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
SELECT dblink_connect('upc_other',
                      format('dbname=%s port=%s host=%s', current_database(),
                             current_setting('port'),
                             split_part(current_setting('unix_socket_directories'), ',', 1)))
       AS other_session;
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
SELECT * FROM dblink('upc_other', $$SELECT event_store.register_upcaster('UpcRenamed', 1,
                     'upc_v1_to_v2(jsonb,jsonb)', 'UpcRenamedV2')::text$$) AS t(registered text);
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
SELECT * FROM dblink('upc_other', $$SELECT event_store.drop_upcaster('UpcRenamed', 1)::text$$)
    AS t(dropped text);
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);

-- a registration committed while this session is inside a REPEATABLE READ
-- transaction (whose snapshot cannot see it) is used once that transaction
-- has ended
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1 AS snapshot_taken;
SELECT * FROM dblink('upc_other', $$SELECT event_store.register_upcaster('UpcRenamed', 1,
                     'upc_v1_to_v2(jsonb,jsonb)', 'UpcRenamedV2')::text$$) AS t(registered text);
SELECT count(*) FROM event_store.read_stream('upcust-1');
COMMIT;
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
SELECT stream_version, event_type, schema_version
  FROM event_store.read_all(event_types => ARRAY['UpcRenamedV2']);
-- the same for a drop
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1 AS snapshot_taken;
SELECT * FROM dblink('upc_other', $$SELECT event_store.drop_upcaster('UpcRenamed', 1)::text$$)
    AS t(dropped text);
SELECT count(*) FROM event_store.read_stream('upcust-1');
COMMIT;
SELECT stream_version, event_type, schema_version
  FROM event_store.read_stream('upcust-1', from_version => 2, max_count => 1);
SELECT dblink_disconnect('upc_other');

-- the stored events are still exactly as written
SELECT count(*) AS changed_or_missing
  FROM (TABLE stored_before EXCEPT SELECT * FROM event_store.events) d;
DROP TABLE stored_before;

-- leave no upcaster behind for the tests that follow
SELECT event_store.drop_upcaster('UpcRegistered', 1);
SELECT event_store.drop_upcaster('UpcRegistered', 2);
SELECT count(*) AS upcasters_left FROM event_store.upcasters;
SELECT count(*) AS upcast_events
  FROM event_store.read_all() r JOIN event_store.events e USING (global_position)
 WHERE row(r.*)::text <> row(e.*)::text;
