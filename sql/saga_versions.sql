--
-- saga_versions: define_saga of a defined type adds its next version;
-- sagas run on the version they started with to their end (their steps,
-- their compensations and the role those run as), new ones on the newest;
-- the view saga_types; saga_state's "version"; who may add a version.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS sv CASCADE;
DROP ROLE IF EXISTS sv_owner1;
DROP ROLE IF EXISTS sv_owner2;
DROP ROLE IF EXISTS sv_other;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE ROLE sv_owner1;
CREATE ROLE sv_owner2;
CREATE ROLE sv_other;
GRANT EXECUTE ON FUNCTION event_store.define_saga(text, jsonb) TO sv_owner1, sv_owner2, sv_other;
CREATE SCHEMA sv;
GRANT USAGE ON SCHEMA sv TO PUBLIC;
-- every call of a step function: which function, of which version, as whom
CREATE TABLE sv.calls (n serial PRIMARY KEY, saga_id uuid, fn text, run_as text);
GRANT INSERT, SELECT ON sv.calls TO PUBLIC;
GRANT USAGE ON SEQUENCE sv.calls_n_seq TO PUBLIC;
CREATE FUNCTION sv.log(saga_id uuid, fn text) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO sv.calls (saga_id, fn, run_as) VALUES (saga_id, fn, current_user) RETURNING '{}'::jsonb
$$;
CREATE FUNCTION sv.reserve1(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT sv.log(saga_id, 'reserve1') $$;
CREATE FUNCTION sv.release1(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT sv.log(saga_id, 'release1') $$;
CREATE FUNCTION sv.reserve2(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT sv.log(saga_id, 'reserve2') $$;
CREATE FUNCTION sv.release2(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT sv.log(saga_id, 'release2') $$;
CREATE FUNCTION sv.audit2(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT sv.log(saga_id, 'audit2') $$;

CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
CREATE FUNCTION pg_temp.calls(id uuid) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(fn || ' as ' || run_as, ', ' ORDER BY n) FROM sv.calls WHERE saga_id = id
$$;
CREATE FUNCTION pg_temp.types() RETURNS TABLE(saga_type text, version int, owner text, running bigint)
LANGUAGE sql AS $$
    SELECT saga_type, version, owner::text, running FROM event_store.saga_types ORDER BY 1, 2
$$;

-- version 1, defined by sv_owner1: reserve (local), then ship (external)
SET ROLE sv_owner1;
SELECT event_store.define_saga('sv_order', $${"steps": [
    {"name": "reserve", "action": "sv.reserve1", "compensation": "sv.release1"},
    {"name": "ship"}]}$$);
RESET ROLE;
SELECT * FROM pg_temp.types();
SELECT event_store.start_saga('sv_order', '{"order": 1}', pg_temp.sid(1));
SELECT event_store.start_saga('sv_order', '{"order": 2}', pg_temp.sid(2));
SELECT event_store.saga_state(pg_temp.sid(1)) -> 'version' AS version;

-- a role that is not a member of sv_owner1 may not add a version
SET ROLE sv_other;
\set VERBOSITY sqlstate
SELECT event_store.define_saga('sv_order', '{"steps": [{"name": "x"}]}');
\set VERBOSITY default
SELECT event_store.define_saga('sv_order', '{"steps": [{"name": "x"}]}');
RESET ROLE;
SELECT * FROM pg_temp.types();

-- version 2, by sv_owner2 (a member of sv_owner1): other functions, a new step
GRANT sv_owner1 TO sv_owner2;
SET ROLE sv_owner2;
SELECT event_store.define_saga('sv_order', $${"steps": [
    {"name": "reserve", "action": "sv.reserve2", "compensation": "sv.release2"},
    {"name": "audit", "action": "sv.audit2"},
    {"name": "ship"}]}$$);
RESET ROLE;
REVOKE sv_owner1 FROM sv_owner2;
SELECT * FROM pg_temp.types();
SELECT saga_type, version, defined_at IS NOT NULL AS defined FROM event_store.saga_types ORDER BY 2;

-- a new saga starts on version 2, the running ones stay on version 1
SELECT event_store.start_saga('sv_order', '{"order": 3}', pg_temp.sid(3));
SELECT saga_id, version, status FROM event_store.sagas ORDER BY saga_id;
SELECT event_store.saga_state(pg_temp.sid(3)) -> 'version' AS version,
       jsonb_path_query_array(event_store.saga_state(pg_temp.sid(3)), '$.steps[*].stepType') AS steps;
SELECT jsonb_path_query_array(event_store.saga_state(pg_temp.sid(1)), '$.steps[*].stepType') AS steps;
SELECT * FROM pg_temp.types();

-- saga 1 completes on version 1; saga 2 fails and compensates with
-- version 1's compensation, as version 1's owner; saga 3 compensates with
-- version 2's, as its owner
SELECT event_store.complete_saga_step(pg_temp.sid(1), 'ship');
SELECT event_store.fail_saga_step(pg_temp.sid(2), 'ship', 'no truck', false);
SELECT event_store.fail_saga_step(pg_temp.sid(3), 'ship', 'no truck', false);
SELECT saga_id, version, status FROM event_store.sagas ORDER BY saga_id;
SELECT pg_temp.calls(pg_temp.sid(1)) AS saga1, pg_temp.calls(pg_temp.sid(2)) AS saga2,
       pg_temp.calls(pg_temp.sid(3)) AS saga3;
SELECT * FROM pg_temp.types();

-- a nested saga starts on the newest version of its type
SELECT event_store.define_saga('sv_parent', '{"steps": [{"name": "child", "saga": "sv_order"}]}');
SELECT event_store.start_saga('sv_parent', '{}', pg_temp.sid(4));
SELECT c.version, c.status FROM event_store.saga_steps st JOIN event_store.sagas c ON c.saga_id = st.child_saga_id
 WHERE st.saga_id = pg_temp.sid(4);
-- a third version of the nested type, defined by the extension owner
SELECT event_store.define_saga('sv_order', '{"steps": [{"name": "ship"}]}');
SELECT saga_type, version, running FROM event_store.saga_types ORDER BY 1, 2;
-- the cycle check looks at the newest versions: sv_order may nest sv_parent
-- no more than sv_parent (which nests sv_order) may nest itself
SELECT event_store.define_saga('sv_order', '{"steps": [{"name": "p", "saga": "sv_parent"}]}');

-- a refused definition adds no version
SELECT event_store.define_saga('sv_order', '{"steps": [{"name": "x", "bogus": 1}]}');
SELECT max(version) FROM event_store.saga_types WHERE saga_type = 'sv_order';

-- clean up
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA sv CASCADE;
DROP ROLE sv_owner1, sv_owner2, sv_other;
RESET client_min_messages;
