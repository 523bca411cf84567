--
-- Security with real roles: what PUBLIC gets (nothing that writes), the
-- privilege recipe of examples/privileges.sql, category grants on every
-- read and write path (row-level security for direct SELECT), callbacks
-- running as the role that registered them, and search_path tricks.
--
-- Runs as the superuser that owns the extension.  Roles are cluster-wide,
-- so every role made here is dropped at the end.
SET client_min_messages = warning;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
CREATE ROLE sec_nobody;                 -- PUBLIC's rights only
CREATE ROLE sec_orders;                 -- the orders service
CREATE ROLE sec_billing;                -- the billing service
CREATE ROLE sec_ops;                    -- an operator
CREATE ROLE sec_low;                    -- an operator with a hidden agenda
\set ECHO none
\i examples/privileges.sql
\set ECHO all
-- the recipe is idempotent
\set ECHO none
\i examples/privileges.sql
\set ECHO all
GRANT event_store_writer TO sec_orders, sec_billing;
GRANT event_store_operator TO sec_ops, sec_low;
-- a place for each role's own objects
CREATE SCHEMA sec AUTHORIZATION sec_low;
GRANT USAGE ON SCHEMA sec TO PUBLIC;
CREATE SCHEMA evil AUTHORIZATION sec_billing;
GRANT USAGE ON SCHEMA evil TO PUBLIC;
-- what the extension's tables hold now, to prove nothing was written
CREATE FUNCTION regress.fingerprint() RETURNS text LANGUAGE sql AS $$
    SELECT format('events=%s grants=%s upcasters=%s aggregates=%s snapshots=%s projections=%s sagas=%s',
                  (SELECT count(*) FROM event_store.events),
                  (SELECT count(*) FROM event_store.category_grants),
                  (SELECT count(*) FROM event_store.upcasters),
                  (SELECT count(*) FROM event_store.aggregates),
                  (SELECT count(*) FROM event_store.snapshots),
                  (SELECT count(*) FROM event_store.projections),
                  (SELECT count(*) FROM event_store.sagas))
$$;
SELECT event_store.append('secorders-1', '[{"type": "Placed"}, {"type": "Paid"}]', 0);
SELECT event_store.append('secbilling-1', '{"type": "Invoiced"}', 0);
SELECT regress.fingerprint() AS before \gset

--
-- What PUBLIC gets: schema USAGE, and EXECUTE only on the row-level
-- security policy's function.  No table privilege at all.
--
SELECT p.oid::regprocedure AS function
  FROM pg_proc p
 WHERE p.pronamespace = 'event_store'::regnamespace
   AND has_function_privilege('sec_nobody', p.oid, 'EXECUTE')
 ORDER BY 1;
SELECT c.relname, has_table_privilege('sec_nobody', c.oid, 'SELECT') AS sel,
       has_table_privilege('sec_nobody', c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE') AS write
  FROM pg_class c
 WHERE c.relnamespace = 'event_store'::regnamespace AND c.relkind IN ('r', 'v')
 ORDER BY 1;
-- No table is writable by anyone but the owner, whatever the recipe grants.
SELECT c.relname, r.rolname
  FROM pg_class c CROSS JOIN pg_roles r
 WHERE c.relnamespace = 'event_store'::regnamespace AND c.relkind = 'r'
   AND r.rolname LIKE 'event_store_%'
   AND has_table_privilege(r.oid, c.oid, 'INSERT,UPDATE,DELETE,TRUNCATE');
-- Every SQL-language function that touches the tables runs as the owner
-- with search_path pinned; no SECURITY DEFINER function lacks the pin.
SELECT p.proname, p.prosecdef, p.proconfig
  FROM pg_proc p
 WHERE p.pronamespace = 'event_store'::regnamespace
   AND (p.prosecdef OR p.proconfig IS NOT NULL)
 ORDER BY 1;

SET ROLE sec_nobody;
SELECT regress.try($$SELECT event_store.append('secnobody-1', '{"type": "X"}')$$);
SELECT regress.try($$SELECT * FROM event_store.read_all(0)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('secorders-1')$$);
SELECT regress.try($$SELECT event_store.head_position()$$);
SELECT regress.try($$INSERT INTO event_store.events VALUES (999999, 'secnobody-1', 1, gen_random_uuid(), 'X', '{}', '{}', 1, now())$$);
SELECT regress.try($$SELECT count(*) FROM event_store.events$$);
SELECT regress.try($$UPDATE event_store.projections SET position = 0$$);
SELECT regress.try($$SELECT event_store.define_saga('secnobody', '{"steps": [{"name": "a"}]}')$$);
SELECT regress.try($$SELECT event_store.start_saga('secnobody', '{}')$$);
SELECT regress.try($$SELECT event_store._saga_on_event(gen_random_uuid(), 'X', '{}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_nobody', 'secorders', '{append}')$$);
SELECT regress.try($$SELECT event_store._saga_advance(gen_random_uuid())$$);
RESET ROLE;
SELECT regress.fingerprint() = :'before' AS nothing_written;

--
-- Category grants: bad input, then ownership of "secorders" by sec_orders.
--
SELECT regress.try($$SELECT event_store.grant_category(NULL, 'secorders', '{append}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', NULL, '{append}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', '', '{append}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders-1', '{append}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders', NULL)$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders', '{}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders', '{append,write}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders', '{append,NULL}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_orders', 'secorders', '{{append}}')$$);
SELECT regress.try($$SELECT event_store.grant_category('sec_no_such_role', 'secorders', '{append}')$$);
SELECT regress.try($$SELECT event_store.revoke_category('sec_orders', 'secorders', '{delete}')$$);
SELECT regress.fingerprint() = :'before' AS nothing_written;

SELECT event_store.grant_category('sec_orders', 'secorders', '{append,read}');
SELECT event_store.grant_category('sec_orders', 'secorders', '{append,read}');   -- again: no change
SELECT event_store.grant_category('sec_billing', 'secorders', '{read}');          -- billing may read orders
SELECT category, grantee, privilege FROM event_store.category_grants ORDER BY 1, 2, 3;
-- a grant on a category without events (a typo would lock a category
-- nobody meant) works, with a NOTICE naming it; revoking says nothing
SET client_min_messages = notice;
SELECT event_store.grant_category('sec_billing', 'secordres', '{read}');
SELECT event_store.revoke_category('sec_billing', 'secordres', '{read}');
-- (none for a category with events)
SELECT event_store.grant_category('sec_billing', 'secorders', '{read}');
SET client_min_messages = warning;

-- the owner of the category appends and reads
SET ROLE sec_orders;
SELECT event_store.append('secorders-1', '{"type": "Shipped"}', 2);
SELECT event_store.append('secorders', '{"type": "CategoryWide"}');   -- no "-": the category is the whole id
SELECT stream_id, stream_version, event_type FROM event_store.read_stream('secorders-1');
SELECT stream_id, event_type FROM event_store.read_category('secorders');
RESET ROLE;

-- billing may read orders but not append to them; it owns nothing else
SET ROLE sec_billing;
SELECT regress.try($$SELECT event_store.append('secorders-1', '{"type": "Refunded"}')$$);
SELECT regress.try($$SELECT event_store.append('secorders-2', '{"type": "Placed"}', 0)$$);
SELECT regress.try($$SELECT event_store.save_snapshot('secorders-1', 1, '{}')$$);
SELECT regress.try($$SELECT event_store.delete_stream('secorders-1')$$);
SELECT count(*) AS billing_reads_orders FROM event_store.read_stream('secorders-1');
SELECT event_store.append('secbilling-1', '{"type": "Paid"}', 1);   -- an open category
RESET ROLE;

-- take billing's read grant away: every read path refuses or filters
SELECT event_store.revoke_category('sec_billing', 'secorders', '{read}');
SELECT event_store.revoke_category('sec_billing', 'secorders', '{read}');   -- again: no error
SET ROLE sec_billing;
SELECT regress.try($$SELECT * FROM event_store.read_stream('secorders-1')$$);
SELECT regress.try($$SELECT event_store.stream_version('secorders-1')$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('secorders')$$);
SELECT regress.try($$SELECT * FROM event_store.load_snapshot('secorders-1')$$);
-- read_all leaves them out instead of failing
SELECT count(*) FILTER (WHERE stream_id LIKE 'secorders%') AS orders_seen,
       count(*) FILTER (WHERE stream_id LIKE 'secbilling%') AS billing_seen
  FROM event_store.read_all(0);
RESET ROLE;
-- the extension owner always may
SELECT count(*) AS owner_sees_orders FROM event_store.read_all(0) WHERE stream_id LIKE 'secorders%';

-- direct SELECT on the tables: row-level security applies the same rule
GRANT SELECT ON event_store.events, event_store.snapshots TO sec_billing, sec_orders;
SET ROLE sec_billing;
SELECT count(*) FILTER (WHERE stream_id LIKE 'secorders%') AS orders_rows,
       count(*) FILTER (WHERE stream_id LIKE 'secbilling%') AS billing_rows
  FROM event_store.events;
RESET ROLE;
SET ROLE sec_orders;
SELECT count(*) AS orders_rows FROM event_store.events WHERE stream_id LIKE 'secorders%';
RESET ROLE;
REVOKE SELECT ON event_store.events, event_store.snapshots FROM sec_billing, sec_orders;

-- the grants of a dropped role can still be revoked
CREATE ROLE sec_gone;
SELECT event_store.grant_category('sec_gone', 'secgone', '{append}');
SELECT 'sec_gone'::regrole::oid AS gone_oid \gset
DROP ROLE sec_gone;
SELECT event_store.revoke_category(:gone_oid::oid::regrole, 'secgone');
SELECT count(*) AS grants_left FROM event_store.category_grants WHERE category = 'secgone';

-- a role holding a grant through membership may too
CREATE ROLE sec_orders_clerk IN ROLE sec_orders;
SET ROLE sec_orders_clerk;
SELECT count(*) AS clerk_reads FROM event_store.read_stream('secorders-1');
RESET ROLE;

-- aggregates: the caller needs read, and so does the role the reducer runs as
CREATE FUNCTION sec.count_reducer(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state ->> 'n')::int, 0) + 1, 'as', current_user) $$;
ALTER FUNCTION sec.count_reducer(jsonb, event_store.event) OWNER TO sec_ops;
SET ROLE sec_ops;
-- defining an aggregate of a category with grants needs append and read on it
SELECT regress.try($$SELECT event_store.define_aggregate('secorders', 'sec.count_reducer(jsonb, event_store.event)')$$);
RESET ROLE;
SELECT event_store.grant_category('sec_ops', 'secorders', '{append,read}');
SET ROLE sec_ops;
SELECT event_store.define_aggregate('secorders', 'sec.count_reducer(jsonb, event_store.event)');
RESET ROLE;
-- the grants are checked again when the reducer runs
SELECT event_store.revoke_category('sec_ops', 'secorders', '{read}');
SET ROLE sec_billing;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('secorders-1')$$);
RESET ROLE;
SET ROLE sec_orders;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('secorders-1')$$);
RESET ROLE;
SELECT event_store.grant_category('sec_ops', 'secorders', '{read}');
SET ROLE sec_orders;
-- the reducer ran as sec_ops, which defined the aggregate
SELECT * FROM event_store.load_aggregate('secorders-1');
RESET ROLE;

-- every grant gone: the category is open again
SELECT event_store.revoke_category('sec_orders', 'secorders');
SELECT event_store.revoke_category('sec_ops', 'secorders');
SET ROLE sec_billing;
SELECT count(*) AS open_again FROM event_store.read_stream('secorders-1');
RESET ROLE;

--
-- Registering a callback needs EXECUTE on it, and its owner must have the
-- registering role's privileges (else its owner could change what it does
-- and have it run with more rights).
--
CREATE FUNCTION public.sec_private_handler(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
REVOKE EXECUTE ON FUNCTION public.sec_private_handler(event_store.event) FROM PUBLIC;
SET ROLE sec_low;
SELECT regress.try($$SELECT event_store.create_projection('sec_p', 'public.sec_private_handler(event_store.event)')$$);
RESET ROLE;
CREATE FUNCTION sec.low_handler(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT $$;
ALTER FUNCTION sec.low_handler(event_store.event) OWNER TO sec_low;
-- the superuser may not register sec_low's function: sec_low could replace it
-- (the superuser's name, whatever it is, shows as "<superuser>")
SELECT replace(regress.try($$SELECT event_store.create_projection('sec_p', 'sec.low_handler(event_store.event)')$$),
               format('"%s"', current_user), '"<superuser>"') AS try;
SELECT regress.try($$SELECT event_store.register_upcaster('SecX', 1, 'sec.low_handler(event_store.event)')$$);

--
-- Callbacks run as the role that registered them: an inline projection,
-- an upcaster and a saga step registered by sec_low run as sec_low when
-- the superuser appends, reads or starts the saga, and cannot use the
-- superuser's rights.
--
CREATE TABLE sec.seen (what text, run_as text, escalated text);
ALTER TABLE sec.seen OWNER TO sec_low;
CREATE FUNCTION sec.spy(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    outcome text;
BEGIN
    BEGIN
        INSERT INTO event_store.events VALUES (888888, 'sechack-1', 1, gen_random_uuid(), 'Hack', '{}', '{}', 1, now());
        outcome := 'wrote an event';
    EXCEPTION WHEN insufficient_privilege THEN
        outcome := 'denied';
    END;
    -- try to leave a trap in the caller's session
    PERFORM set_config('search_path', 'evil, pg_catalog', false);
    INSERT INTO sec.seen VALUES ('handler ' || e.event_type, current_user, outcome);
END $$;
CREATE FUNCTION sec.spy_upcast(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec.seen VALUES ('upcaster', current_user, NULL);
    RETURN data || '{"upcast": true}';
END $$;
CREATE FUNCTION sec.spy_step(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sec.seen VALUES ('saga step', current_user, NULL);
    RETURN '{}';
END $$;
ALTER FUNCTION sec.spy(event_store.event) OWNER TO sec_low;
ALTER FUNCTION sec.spy_upcast(jsonb, jsonb) OWNER TO sec_low;
ALTER FUNCTION sec.spy_step(uuid, jsonb) OWNER TO sec_low;
SET ROLE sec_low;
SELECT event_store.create_projection('sec_spy', 'sec.spy(event_store.event)', categories => '{secspy}');
SELECT event_store.register_upcaster('SecOld', 1, 'sec.spy_upcast(jsonb, jsonb)');
SET search_path = sec, public;   -- the step function is named without its schema
SELECT event_store.define_saga('sec_saga', '{"steps": [{"name": "s", "action": "spy_step"}]}');
RESET search_path;
RESET ROLE;
SHOW search_path;
SELECT event_store.append('secspy-1', '{"type": "Spied"}');
SHOW search_path;   -- unchanged: the handler's setting did not outlive it
SELECT event_type, data FROM event_store.read_stream('secspy-1');
SELECT event_store.append('secold-1', '{"type": "SecOld"}');
SELECT data FROM event_store.read_stream('secold-1');
SELECT event_store.start_saga('sec_saga', '{}', '00000000-0000-4000-8000-00000000000a'::uuid);
SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000a') ->> 'status' AS saga_status;
SELECT * FROM sec.seen ORDER BY 1;
SELECT count(*) AS hack_events FROM event_store.events WHERE stream_id = 'sechack-1';

-- A projection is handed only what the role that created it may read:
-- secorders has a grant again, sec_low none, so neither sec_low's inline
-- nor its async projection gets those events (the async one's scan leaves
-- them out), and the async one's position still passes them.
SELECT event_store.grant_category('sec_orders', 'secorders', '{read}');
CREATE TABLE sec.low_seen (proj text, stream_id text);
ALTER TABLE sec.low_seen OWNER TO sec_low;
CREATE FUNCTION sec.low_seen_inline(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN INSERT INTO sec.low_seen VALUES ('inline', e.stream_id); END $$;
CREATE FUNCTION sec.low_seen_async(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$ BEGIN INSERT INTO sec.low_seen VALUES ('async', e.stream_id); END $$;
ALTER FUNCTION sec.low_seen_inline(event_store.event) OWNER TO sec_low;
ALTER FUNCTION sec.low_seen_async(event_store.event) OWNER TO sec_low;
SET ROLE sec_low;
SELECT event_store.create_projection('sec_low_inline', 'sec.low_seen_inline(event_store.event)', '{LowSeen}');
SELECT event_store.create_projection('sec_low_async', 'sec.low_seen_async(event_store.event)', '{LowSeen}', mode => 'async');
RESET ROLE;
SELECT event_store.append('secorders-3', '{"type": "LowSeen"}');
SELECT event_store.append('secopen-1', '{"type": "LowSeen"}');
SELECT event_store.run_projections() > 0 AS ran;
SELECT proj, stream_id FROM sec.low_seen ORDER BY 1, 2;
SELECT name, state, lag_events FROM event_store.projection_status
 WHERE name LIKE 'sec_low%' ORDER BY 1;
SELECT event_store.drop_projection('sec_low_inline');
SELECT event_store.drop_projection('sec_low_async');
SELECT event_store.revoke_category('sec_orders', 'secorders');

--
-- Sagas are data.  An event completes or fails an event-driven step only
-- when the saga's owner (sec_low, who defined the type) may read it: an
-- event of secorders (a grant for sec_orders only) neither completes nor
-- fails the step, is not merged into the saga's data nor copied into its
-- stream; an event of an open category completes it.
--
SET ROLE sec_low;
SELECT event_store.define_saga('sec_pay', '{"steps": [{"name": "wait", "complete_on": "SecPaid", "fail_on": "SecRefused"}]}');
RESET ROLE;
SELECT event_store.grant_category('sec_orders', 'secorders', '{append,read}');
SET ROLE sec_orders;
SELECT event_store.start_saga('sec_pay', '{"order": 9}', '00000000-0000-4000-8000-00000000000c'::uuid);
SELECT event_store.append('secorders-9', $${"type": "SecPaid", "data": {"card": "4111 1111 1111 1111"},
    "metadata": {"saga_id": "00000000-0000-4000-8000-00000000000c"}}$$);
SELECT event_store.append('secorders-9', $${"type": "SecRefused", "data": {"reason": "limit 500"},
    "metadata": {"saga_id": "00000000-0000-4000-8000-00000000000c"}}$$);
RESET ROLE;
SELECT s.status, s.data, st.status AS step_status, st.result
  FROM event_store.sagas s JOIN event_store.saga_steps st USING (saga_id)
 WHERE saga_id = '00000000-0000-4000-8000-00000000000c';
SELECT event_type, data FROM event_store.read_stream('saga-00000000-0000-4000-8000-00000000000c');
SET ROLE sec_orders;
SELECT event_store.append('secopen-9', $${"type": "SecPaid", "data": {"paid": true},
    "metadata": {"saga_id": "00000000-0000-4000-8000-00000000000c"}}$$);
RESET ROLE;
SELECT status, data FROM event_store.sagas WHERE saga_id = '00000000-0000-4000-8000-00000000000c';
-- Category "saga" with grants: start_saga needs "append" on it, saga_state
-- "read" (42501, as the read functions).  sec_orders may append there but
-- not read: a start with an existing id tells it nothing about the saga's
-- type or data (the same refusal whether they match or not).
SELECT event_store.grant_category('sec_orders', 'saga', '{append}');
SET ROLE sec_billing;
SELECT regress.try($$SELECT event_store.start_saga('sec_pay', '{"order": 10}')$$);
SELECT regress.try($$SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000c')$$);
SET ROLE sec_orders;
SELECT regress.try($$SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000c')$$);
SELECT event_store.start_saga('sec_pay', '{"order": 10}', '00000000-0000-4000-8000-00000000000d'::uuid);
SELECT regress.try($$SELECT event_store.start_saga('sec_pay', '{"order": 10}', '00000000-0000-4000-8000-00000000000d')$$) AS same;
SELECT regress.try($$SELECT event_store.start_saga('sec_pay', '{"order": 11}', '00000000-0000-4000-8000-00000000000d')$$) AS different;
RESET ROLE;
-- with "read" on saga, the documented behaviour: same type and data return
-- the saga, different data is 22023
SELECT event_store.grant_category('sec_orders', 'saga', '{read}');
SET ROLE sec_orders;
SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000d') ->> 'status' AS saga_status;
SELECT event_store.start_saga('sec_pay', '{"order": 10}', '00000000-0000-4000-8000-00000000000d'::uuid);
SELECT regress.try($$SELECT event_store.start_saga('sec_pay', '{"order": 11}', '00000000-0000-4000-8000-00000000000d')$$);
RESET ROLE;
SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000d') ->> 'status' AS saga_status;
SELECT event_store.revoke_category('sec_orders', 'saga');
SELECT event_store.revoke_category('sec_orders', 'secorders');

--
-- search_path tricks: sec_billing controls schema "evil", shadows the
-- text "=" operator and some functions there, puts it first in its
-- search_path and calls every function it may.  Nothing of evil's runs.
--
CREATE TABLE evil.log (who text, what text);
ALTER TABLE evil.log OWNER TO sec_billing;
GRANT INSERT ON evil.log TO PUBLIC;
CREATE FUNCTION evil.texteq(a text, b text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evil.log VALUES (current_user, 'operator = ' || current_query());
    RETURN a OPERATOR(pg_catalog.=) b;
END $$;
CREATE FUNCTION evil.now() RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO evil.log VALUES (current_user, 'now()');
    RETURN pg_catalog.now();
END $$;
CREATE FUNCTION evil.count(jsonb) RETURNS bigint
LANGUAGE sql AS $$ INSERT INTO evil.log VALUES (current_user, 'count()') RETURNING 0::bigint $$;
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
ALTER FUNCTION evil.texteq(text, text) OWNER TO sec_billing;
ALTER FUNCTION evil.now() OWNER TO sec_billing;
ALTER FUNCTION evil.count(jsonb) OWNER TO sec_billing;
ALTER OPERATOR evil.= (text, text) OWNER TO sec_billing;
SELECT event_store.define_saga('sec_ext', '{"steps": [{"name": "wait"}]}');
GRANT event_store_operator TO sec_billing;
SET ROLE sec_billing;
SET search_path = evil, pg_catalog, public;
SELECT 'a'::text = 'a'::text AS shadowing_works;   -- the trap is armed
DELETE FROM evil.log;
SELECT event_store.append('secbilling-1', '{"type": "Paid"}', 2);
SELECT count(*) > 0 AS read FROM event_store.read_stream('secbilling-1');
SELECT event_store.start_saga('sec_ext', '{}', '00000000-0000-4000-8000-00000000000b'::uuid);
SELECT saga_id, step FROM event_store.claim_saga_steps('w1', 10, '{wait}');
SELECT event_store.complete_saga_step('00000000-0000-4000-8000-00000000000b', 'wait', '{}');
SELECT event_store.saga_state('00000000-0000-4000-8000-00000000000b') ->> 'status' AS saga_status;
SELECT event_store.saga_tick() >= 0 AS ticked;
SELECT event_store.purge_snapshots() >= 0 AS purged;
SELECT event_store.run_projections() >= 0 AS ran;
SELECT count(*) >= 0 AS loaded FROM event_store.load_snapshot('secbilling-1');
SELECT regress.try($$SELECT event_store.define_saga('sec_ext2', '{"steps": [{"name": "wait", "timeout": "1 hour"}]}')$$);
RESET search_path;
RESET ROLE;
SELECT * FROM evil.log;   -- empty: nothing of evil's ran
SELECT count(*) AS hack_events FROM event_store.events WHERE stream_id LIKE 'sechack%';

-- clean up: the roles are cluster-wide
SELECT event_store.drop_projection('sec_spy');
SELECT event_store.drop_upcaster('SecOld', 1);
DELETE FROM event_store.aggregates WHERE category = 'secorders';
DROP SCHEMA evil CASCADE;
DROP SCHEMA sec CASCADE;
DROP FUNCTION public.sec_private_handler(event_store.event);
DROP FUNCTION regress.fingerprint();
REVOKE USAGE ON SCHEMA regress FROM PUBLIC;
DROP OWNED BY sec_nobody, sec_orders, sec_billing, sec_ops, sec_low, sec_orders_clerk,
    event_store_reader, event_store_writer, event_store_operator;
DROP ROLE sec_nobody, sec_orders, sec_billing, sec_ops, sec_low, sec_orders_clerk,
    event_store_reader, event_store_writer, event_store_operator;
