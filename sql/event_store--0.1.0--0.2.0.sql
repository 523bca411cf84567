\echo Use "ALTER EXTENSION event_store UPDATE TO '0.2.0'" to load this file. \quit

-- event_store 0.1.0 -> 0.2.0
--
-- Afterwards the schema is the one a fresh CREATE EXTENSION of 0.2.0 makes:
-- the same objects, definitions, privileges and comments, and the same
-- columns in the same order (the owner columns of 0.2.0 come last, so they
-- are added here).  New and changed objects are written as in
-- event_store.sql; existing rows get their owners, and saga definitions
-- the names of their step functions as 0.2.0 stores them.

------------------------------------------------------------------------------
-- Category ownership
------------------------------------------------------------------------------
-- Once a category has a grant, only holders of "append" may append to its
-- streams and only holders of "read" may read them (the extension owner
-- always may): append() and the read functions check in C, read_all()
-- leaves such events out, and row-level security does the same for a role
-- that was granted SELECT on the tables.

CREATE TABLE event_store.category_grants (
    category   text    NOT NULL CHECK (category <> '' AND strpos(category, '-') = 0),
    grantee    regrole NOT NULL,
    privilege  text    NOT NULL CHECK (privilege IN ('append', 'read')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, grantee, privilege)
);
COMMENT ON TABLE event_store.category_grants IS 'Who may append to / read which category; maintained with grant_category() / revoke_category()';
SELECT pg_catalog.pg_extension_config_dump('event_store.category_grants', '');
REVOKE ALL ON TABLE event_store.category_grants FROM PUBLIC;

CREATE FUNCTION event_store.grant_category(role regrole, category text,
                                           privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_grant_category';
COMMENT ON FUNCTION event_store.grant_category(regrole, text, text[]) IS
    'Let a role append to and/or read the streams of a category; once a category has grants, only their holders (and the extension owner) may';

CREATE FUNCTION event_store.revoke_category(role regrole, category text,
                                            privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_revoke_category';
COMMENT ON FUNCTION event_store.revoke_category(regrole, text, text[]) IS
    'Take category privileges back from a role; a category without grants is open to every role that may call the functions';

-- The row-level security policy: may the current user read this stream?
CREATE FUNCTION event_store._may_read(stream_id text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'es_may_read';

ALTER TABLE event_store.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY category_read ON event_store.events FOR SELECT
    USING (event_store._may_read(stream_id));

-- Checks a callback's registration (EXECUTE; its owner has the registrant's rights)
CREATE FUNCTION event_store._check_callback(fn regprocedure, registrant regrole, what text)
    RETURNS void
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_check_callback';

------------------------------------------------------------------------------
-- Stream lifecycle: deletion, purging, retention
------------------------------------------------------------------------------
-- The only paths that remove events are purge_stream() and retention;
-- the immutability trigger lets their own DELETE through and nothing else.

CREATE TABLE event_store.stream_metadata (
    stream_id   text COLLATE "C" PRIMARY KEY,
    deleted_at  timestamptz,                 -- set: deleted, append() refused (SE003)
    start_after bigint NOT NULL DEFAULT 0,   -- read_stream shows versions above this
    max_count   bigint CHECK (max_count > 0),
    max_age     interval CHECK (max_age > interval '0'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.stream_metadata IS 'Deleted streams and retention settings; maintained with delete_stream(), reopen_stream(), purge_stream() and set_stream_retention()';
SELECT pg_catalog.pg_extension_config_dump('event_store.stream_metadata', '');
REVOKE ALL ON TABLE event_store.stream_metadata FROM PUBLIC;

CREATE FUNCTION event_store.delete_stream(stream_id text, expected_version bigint DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_delete_stream';
COMMENT ON FUNCTION event_store.delete_stream(text, bigint) IS
    'Soft-delete a stream: appends the tombstone $StreamDeleted, then read_stream returns nothing and append() is refused (SE003) until reopen_stream(); returns the tombstone''s version';

CREATE FUNCTION event_store.reopen_stream(stream_id text)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_reopen_stream';
COMMENT ON FUNCTION event_store.reopen_stream(text) IS
    'Allow appends to a deleted stream again: appends $StreamReopened; read_stream then shows only what follows the tombstone';

CREATE FUNCTION event_store.purge_stream(stream_id text)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_purge_stream';
COMMENT ON FUNCTION event_store.purge_stream(text) IS
    'Erase a stream''s events and snapshots for good (only while event_store.allow_purge is on); leaves the event $StreamPurged without their data and the stream deleted; returns how many events were removed';

CREATE FUNCTION event_store.set_stream_retention(stream_id text, max_count bigint DEFAULT NULL,
                                                 max_age interval DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_set_stream_retention';
COMMENT ON FUNCTION event_store.set_stream_retention(text, bigint, interval) IS
    'Keep only the newest max_count events of a stream and/or those younger than max_age (the newest always stays); enforced by the background worker';

CREATE FUNCTION event_store.enforce_retention()
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_enforce_retention';
COMMENT ON FUNCTION event_store.enforce_retention() IS
    'Remove the events that retention settings no longer keep (what the background worker does every event_store.retention_interval); returns how many';

------------------------------------------------------------------------------
-- Owners of the registered callbacks
------------------------------------------------------------------------------
-- 0.2.0 records who registered an upcaster, aggregate, projection or saga
-- type, and runs its callbacks as that role.  Under 0.1.0 they ran as the
-- extension's owner, which therefore becomes the owner of every existing
-- row: callbacks keep running with the rights they had.

ALTER TABLE event_store.upcasters ADD COLUMN owner regrole;
ALTER TABLE event_store.aggregates ADD COLUMN owner regrole;
ALTER TABLE event_store.projections ADD COLUMN owner regrole;
ALTER TABLE event_store.saga_definitions ADD COLUMN owner regrole;

UPDATE event_store.upcasters
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'event_store')::regrole;
UPDATE event_store.aggregates
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'event_store')::regrole;
UPDATE event_store.projections
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'event_store')::regrole;
UPDATE event_store.saga_definitions
   SET owner = (SELECT e.extowner FROM pg_catalog.pg_extension e WHERE e.extname = 'event_store')::regrole;

ALTER TABLE event_store.upcasters ALTER COLUMN owner SET NOT NULL;
ALTER TABLE event_store.aggregates ALTER COLUMN owner SET NOT NULL;
ALTER TABLE event_store.projections ALTER COLUMN owner SET NOT NULL;
ALTER TABLE event_store.saga_definitions ALTER COLUMN owner SET NOT NULL;

------------------------------------------------------------------------------
-- Snapshots: row-level security, purge_snapshots() as definer
------------------------------------------------------------------------------

ALTER TABLE event_store.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY category_read ON event_store.snapshots FOR SELECT
    USING (event_store._may_read(stream_id));

CREATE OR REPLACE FUNCTION event_store.purge_snapshots(category text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE sql VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    WITH purged AS (
        DELETE FROM event_store.snapshots s
         USING event_store.aggregates a
         WHERE pg_catalog.split_part(s.stream_id, '-', 1) OPERATOR(pg_catalog.=) a.category
           AND s.state_version OPERATOR(pg_catalog.<>) a.state_version
           AND ($1 IS NULL OR a.category OPERATOR(pg_catalog.=) $1)
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM purged
$$;

------------------------------------------------------------------------------
-- Sagas
------------------------------------------------------------------------------
-- Step functions run as the role that defined the saga type: define_saga()
-- is now C (it passes the caller and its search_path to _define_saga(), the
-- former PL/pgSQL body), names are resolved in that search_path, and
-- _saga_call() (now C, with the role to run as) calls them.  The entry
-- points become SECURITY DEFINER with a pinned search_path.

-- signature changed: (name, what) -> (name, what, p_owner, p_path)
DROP FUNCTION event_store._saga_function(text, text);

-- Resolve a step function name to (saga_id uuid, data jsonb) RETURNS jsonb
CREATE FUNCTION event_store._saga_function(name text, what text, p_owner regrole, p_path text)
    RETURNS regprocedure
    LANGUAGE plpgsql AS $$
DECLARE
    f regprocedure;
    rt oid;
    rs boolean;
BEGIN
    BEGIN
        -- resolved in the search_path of the role that defines the saga
        f := event_store._saga_regprocedure(name || '(uuid, jsonb)', p_path);
    EXCEPTION WHEN syntax_error OR invalid_name OR invalid_parameter_value OR undefined_object
                OR invalid_text_representation OR feature_not_supported THEN
        PERFORM event_store._saga_bad(format('%s "%s" is not a valid function name', what, name),
                                      'Name a function such as "inventory.reserve".');
    END;
    IF f IS NULL THEN
        PERFORM event_store._saga_bad(format('%s function %s(uuid, jsonb) does not exist', what, name),
                                      'A step function takes (saga_id uuid, data jsonb) and returns jsonb.',
                                      '42883');
    END IF;
    SELECT prorettype, proretset INTO rt, rs FROM pg_catalog.pg_proc WHERE oid = f;
    IF rt <> 'jsonb'::regtype OR rs THEN
        PERFORM event_store._saga_bad(format('%s function %s must return a single jsonb', what, f::text));
    END IF;
    PERFORM event_store._check_callback(f, p_owner, 'a saga step function');
    RETURN f;
END $$;

-- The work of define_saga(), which passes the role that calls it (the step
-- functions run as that role) and its search_path (to resolve their names)
CREATE FUNCTION event_store._define_saga(saga_type text, definition jsonb, p_owner regrole, p_path text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    step jsonb;
    k text;
    i int := 0;
    norm jsonb := '[]';
    names text[] := '{}';
    nm text;
    grp int;
    maxatt int;
    act regprocedure;
    comp regprocedure;
    kind text;
    comp_kind text;
    saga_timeout interval;
BEGIN
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF octet_length(saga_type) > 1024 THEN
        PERFORM event_store._saga_bad(format('saga_type is too long (%s bytes; the maximum is 1024)',
                                             octet_length(saga_type)), NULL, '22001');
    END IF;
    IF definition IS NULL OR jsonb_typeof(definition) <> 'object' THEN
        PERFORM event_store._saga_bad('definition must be a JSON object with "steps"', NULL,
                                      CASE WHEN definition IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    FOR k IN SELECT jsonb_object_keys(definition) LOOP
        IF k NOT IN ('steps', 'timeout') THEN
            PERFORM event_store._saga_bad(format('unknown key "%s" in saga definition', k),
                                          'A saga definition has the keys "steps" and "timeout".');
        END IF;
    END LOOP;
    IF jsonb_typeof(definition -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(definition -> 'steps') = 0 THEN
        PERFORM event_store._saga_bad('saga definition needs a non-empty "steps" array');
    END IF;
    saga_timeout := event_store._saga_interval(definition -> 'timeout', 'saga "timeout"');

    FOR step IN SELECT value FROM jsonb_array_elements(definition -> 'steps') LOOP
        i := i + 1;
        IF jsonb_typeof(step) <> 'object' THEN
            PERFORM event_store._saga_bad(format('step %s must be a JSON object', i));
        END IF;
        FOR k IN SELECT jsonb_object_keys(step) LOOP
            IF k NOT IN ('name', 'action', 'compensation', 'group', 'timeout', 'max_attempts',
                         'backoff', 'complete_on', 'fail_on', 'saga') THEN
                PERFORM event_store._saga_bad(format('unknown key "%s" in step %s', k, i),
                    'A step has the keys name, action, compensation, group, timeout, max_attempts, backoff, complete_on, fail_on and saga.');
            END IF;
        END LOOP;
        nm := step ->> 'name';
        IF jsonb_typeof(step -> 'name') IS DISTINCT FROM 'string' OR nm = '' THEN
            PERFORM event_store._saga_bad(format('step %s needs a non-empty string "name"', i));
        END IF;
        IF nm = ANY (names) THEN
            PERFORM event_store._saga_bad(format('duplicate step name "%s"', nm));
        END IF;
        names := names || nm;
        FOREACH k IN ARRAY ARRAY['action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
            IF step ? k AND (jsonb_typeof(step -> k) <> 'string' OR step ->> k = '') THEN
                PERFORM event_store._saga_bad(format('"%s" of step "%s" must be a non-empty string', k, nm));
            END IF;
        END LOOP;
        FOREACH k IN ARRAY ARRAY['name', 'action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
            IF octet_length(step ->> k) > 1024 THEN
                PERFORM event_store._saga_bad(format('"%s" of step %s is too long (%s bytes; the maximum is 1024)',
                                                     k, i, octet_length(step ->> k)), NULL, '22001');
            END IF;
        END LOOP;
        IF step ? 'group' THEN
            IF jsonb_typeof(step -> 'group') <> 'number' OR (step ->> 'group')::numeric <> floor((step ->> 'group')::numeric)
               OR (step ->> 'group')::numeric < 1 OR (step ->> 'group')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"group" of step "%s" must be a positive integer', nm));
            END IF;
            grp := (step ->> 'group')::numeric::int;
        ELSE
            grp := i;
        END IF;
        IF step ? 'max_attempts' THEN
            IF jsonb_typeof(step -> 'max_attempts') <> 'number' OR (step ->> 'max_attempts')::numeric <> floor((step ->> 'max_attempts')::numeric)
               OR (step ->> 'max_attempts')::numeric < 1 OR (step ->> 'max_attempts')::numeric > 1000000 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be a positive integer', nm));
            END IF;
            maxatt := (step ->> 'max_attempts')::numeric::int;
        ELSE
            maxatt := 3;
        END IF;
        act := CASE WHEN step ? 'action' THEN event_store._saga_function(step ->> 'action', format('action of step "%s":', nm), p_owner, p_path) END;
        comp := CASE WHEN step ? 'compensation' THEN event_store._saga_function(step ->> 'compensation', format('compensation of step "%s":', nm), p_owner, p_path) END;
        IF step ? 'saga' THEN
            IF step ? 'action' OR step ? 'complete_on' OR step ? 'fail_on' THEN
                PERFORM event_store._saga_bad(format('step "%s" runs a nested saga and cannot also have "action", "complete_on" or "fail_on"', nm));
            END IF;
            IF NOT EXISTS (SELECT 1 FROM event_store.saga_definitions d WHERE d.saga_type = step ->> 'saga')
               OR step ->> 'saga' = _define_saga.saga_type THEN
                PERFORM event_store._saga_bad(format('saga type "%s" of step "%s" is not defined', step ->> 'saga', nm),
                                              'Define the nested saga type first.');
            END IF;
            kind := 'nested';
        ELSIF act IS NOT NULL THEN
            kind := 'local';
        ELSIF step ? 'complete_on' OR step ? 'fail_on' THEN
            kind := 'event';
        ELSE
            kind := 'external';
        END IF;
        IF kind = 'event' AND NOT step ? 'complete_on' THEN
            PERFORM event_store._saga_bad(format('step "%s" has "fail_on" but no "complete_on" or "action"', nm),
                                          'An event-driven step completes on its "complete_on" event.');
        END IF;
        comp_kind := CASE WHEN comp IS NOT NULL THEN 'local'
                          WHEN kind = 'external' THEN 'external'
                          WHEN kind = 'nested' THEN 'nested'
                          ELSE 'none' END;
        norm := norm || jsonb_build_object(
            'step_no', i, 'name', nm, 'grp', grp, 'kind', kind,
            'action', act::text, 'compensation', comp::text, 'comp_kind', comp_kind,
            'complete_on', step ->> 'complete_on', 'fail_on', step ->> 'fail_on',
            'child_type', step ->> 'saga',
            'timeout', event_store._saga_interval(step -> 'timeout', format('"timeout" of step "%s"', nm)),
            'max_attempts', maxatt,
            'backoff', COALESCE(event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)), interval '1 second'));
    END LOOP;

    -- nested sagas must not lead back to this type (a saga would start itself forever)
    IF EXISTS (
        WITH RECURSIVE reach(t) AS (
            SELECT x ->> 'child_type' FROM jsonb_array_elements(norm) x WHERE x ->> 'child_type' IS NOT NULL
            UNION
            SELECT y ->> 'child_type'
              FROM reach r
              JOIN event_store.saga_definitions d ON d.saga_type = r.t
             CROSS JOIN LATERAL jsonb_array_elements(d.steps) y
             WHERE y ->> 'child_type' IS NOT NULL)
        SELECT 1 FROM reach WHERE t = _define_saga.saga_type) THEN
        PERFORM event_store._saga_bad(format('saga type "%s" would nest itself', _define_saga.saga_type),
                                      'Nested sagas must not form a cycle.');
    END IF;

    INSERT INTO event_store.saga_watched_types (event_type)
    SELECT DISTINCT t FROM jsonb_array_elements(norm) x,
           LATERAL (VALUES (x ->> 'complete_on'), (x ->> 'fail_on')) v(t)
     WHERE t IS NOT NULL
    ON CONFLICT DO NOTHING;

    INSERT INTO event_store.saga_definitions AS d (saga_type, definition, steps, timeout, owner)
    VALUES (_define_saga.saga_type, definition, norm, saga_timeout, p_owner)
    ON CONFLICT ON CONSTRAINT saga_definitions_pkey DO UPDATE
       SET definition = EXCLUDED.definition, steps = EXCLUDED.steps,
           timeout = EXCLUDED.timeout, owner = EXCLUDED.owner, defined_at = now();
    PERFORM event_store._saga_definitions_changed();
END $$;

-- was PL/pgSQL (the body is now _define_saga())
CREATE OR REPLACE FUNCTION event_store.define_saga(saga_type text, definition jsonb) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_define_saga';

-- The role a saga type's step functions run as
CREATE FUNCTION event_store._saga_owner(p_type text) RETURNS regrole
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    r regrole;
BEGIN
    SELECT d.owner INTO r FROM event_store.saga_definitions d WHERE d.saga_type = p_type;
    IF r IS NULL THEN
        RAISE EXCEPTION 'saga type "%" is not defined', p_type
            USING ERRCODE = '42704', HINT = 'Define it with event_store.define_saga().';
    END IF;
    RETURN r;
END $$;

-- signature changed: (fn, p_saga, p_data) -> (fn, run_as, p_saga, p_data)
DROP FUNCTION event_store._saga_call(regprocedure, uuid, jsonb);

-- Call a step function (saga_id uuid, data jsonb) RETURNS jsonb as run_as
CREATE FUNCTION event_store._saga_call(fn regprocedure, run_as regrole, p_saga uuid, p_data jsonb)
    RETURNS jsonb
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_call';

-- to_regprocedure() in a given search_path
CREATE FUNCTION event_store._saga_regprocedure(signature text, search_path text) RETURNS regprocedure
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_saga_regprocedure';

-- calls the new _saga_call() with the saga type's owner
CREATE OR REPLACE FUNCTION event_store._saga_advance(p_saga uuid) RETURNS int
    LANGUAGE plpgsql AS $$
DECLARE
    s record;
    st record;
    g int;
    res jsonb;
    progressed boolean;
    n int := 0;
    ok boolean;
    err text;
BEGIN
    LOOP
        progressed := false;
        SELECT * INTO s FROM event_store.sagas WHERE saga_id = p_saga FOR UPDATE;
        IF NOT FOUND THEN
            RETURN n;
        END IF;

        IF s.status = 'running' THEN
            SELECT min(grp) INTO g FROM event_store.saga_steps
             WHERE saga_id = p_saga AND status <> 'completed';
            IF g IS NULL THEN
                UPDATE event_store.sagas SET status = 'completed', finished_at = now(), deadline = NULL,
                       updated_at = now()
                 WHERE saga_id = p_saga;
                PERFORM event_store._saga_event(p_saga, 'SagaCompleted', jsonb_build_object('data', s.data));
                IF s.parent_saga_id IS NOT NULL THEN
                    PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
                END IF;
                RETURN n + 1;
            END IF;
            FOR st IN SELECT step_no FROM event_store.saga_steps
                       WHERE saga_id = p_saga AND grp = g AND status = 'pending'
                         AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                       ORDER BY step_no LOOP
                -- re-read: a nested call may have moved things on
                SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = st.step_no;
                CONTINUE WHEN st.status <> 'pending';
                EXIT WHEN (SELECT status FROM event_store.sagas WHERE saga_id = p_saga) <> 'running';
                n := n + 1;
                progressed := true;
                UPDATE event_store.saga_steps
                   SET status = 'running', next_attempt_at = NULL, updated_at = now(),
                       attempts = attempts + CASE WHEN kind IN ('local', 'nested', 'event') THEN 1 ELSE 0 END,
                       deadline = CASE WHEN timeout IS NULL THEN NULL ELSE now() + timeout END
                 WHERE saga_id = p_saga AND step_no = st.step_no;
                SELECT data INTO s.data FROM event_store.sagas WHERE saga_id = p_saga;
                IF st.kind = 'local' THEN
                    ok := true;
                    BEGIN
                        res := event_store._saga_call(st.action, event_store._saga_owner(s.saga_type), p_saga, s.data);
                    EXCEPTION WHEN OTHERS THEN
                        ok := false;
                        err := SQLERRM;
                    END;
                    IF NOT ok THEN
                        PERFORM event_store._saga_step_failed(p_saga, st.name, err, true);
                    ELSIF st.complete_on IS NULL THEN
                        PERFORM event_store._saga_step_done(p_saga, st.name, res);
                    ELSE
                        -- done its part; now waits for its completion event
                        UPDATE event_store.saga_steps SET result = res, updated_at = now()
                         WHERE saga_id = p_saga AND step_no = st.step_no;
                    END IF;
                ELSIF st.kind = 'nested' THEN
                    UPDATE event_store.saga_steps SET child_saga_id = gen_random_uuid()
                     WHERE saga_id = p_saga AND step_no = st.step_no
                    RETURNING child_saga_id INTO st.child_saga_id;
                    PERFORM event_store._saga_start(st.child_type, s.data, st.child_saga_id, p_saga, st.name);
                END IF;
                -- external steps wait to be claimed, event-driven ones for their event
            END LOOP;

        ELSIF s.status = 'compensating' THEN
            SELECT max(grp) INTO g FROM event_store.saga_steps
             WHERE saga_id = p_saga AND status IN ('completed', 'compensating');
            IF g IS NULL THEN
                UPDATE event_store.sagas SET status = 'compensated', finished_at = now(), updated_at = now()
                 WHERE saga_id = p_saga;
                PERFORM event_store._saga_event(p_saga, 'SagaCompensated', jsonb_build_object('reason', s.last_error));
                IF s.parent_saga_id IS NOT NULL THEN
                    PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
                END IF;
                RETURN n + 1;
            END IF;
            FOR st IN SELECT step_no FROM event_store.saga_steps
                       WHERE saga_id = p_saga AND grp = g
                         AND (status = 'completed'
                              OR (status = 'compensating' AND comp_kind = 'local'
                                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())))
                       ORDER BY step_no DESC LOOP
                SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = st.step_no;
                EXIT WHEN (SELECT status FROM event_store.sagas WHERE saga_id = p_saga) <> 'compensating';
                n := n + 1;
                progressed := true;
                IF st.status = 'completed' THEN
                    UPDATE event_store.saga_steps SET status = 'compensating', updated_at = now()
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                END IF;
                IF st.comp_kind = 'none' THEN
                    UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                    PERFORM event_store._saga_event(p_saga, 'SagaStepCompensated', jsonb_build_object('step', st.name));
                ELSIF st.comp_kind = 'local' THEN
                    UPDATE event_store.saga_steps SET comp_attempts = comp_attempts + 1, next_attempt_at = NULL
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                    ok := true;
                    BEGIN
                        PERFORM event_store._saga_call(st.compensation, event_store._saga_owner(s.saga_type), p_saga, st.result);
                    EXCEPTION WHEN OTHERS THEN
                        ok := false;
                        err := SQLERRM;
                    END;
                    IF ok THEN
                        UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
                         WHERE saga_id = p_saga AND step_no = st.step_no;
                        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensated', jsonb_build_object('step', st.name));
                    ELSE
                        PERFORM event_store._saga_comp_failed(p_saga, st.name, err, true);
                    END IF;
                ELSIF st.comp_kind = 'nested' AND st.status = 'completed' THEN
                    PERFORM event_store._saga_compensate_child(st.child_saga_id);
                ELSE
                    -- external compensation: waits to be claimed
                    progressed := st.status = 'completed';
                END IF;
            END LOOP;
        ELSE
            RETURN n;
        END IF;
        EXIT WHEN NOT progressed;
    END LOOP;
    RETURN n;
END $$;

-- the entry points, and _saga_on_event() that append() calls:
-- SECURITY DEFINER SET search_path = pg_catalog, pg_temp
CREATE OR REPLACE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    existing record;
    id uuid := COALESCE(start_saga.saga_id, gen_random_uuid());
BEGIN
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF data IS NULL OR jsonb_typeof(data) <> 'object' THEN
        PERFORM event_store._saga_bad('data must be a JSON object', NULL,
                                      CASE WHEN data IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    -- idempotent on saga_id (serialised on the id)
    PERFORM pg_catalog.pg_advisory_xact_lock(hashtextextended(id::text, 21319));
    SELECT * INTO existing FROM event_store.sagas s WHERE s.saga_id = id;
    IF FOUND THEN
        IF existing.saga_type = start_saga.saga_type AND existing.start_data = start_saga.data THEN
            RETURN id;
        END IF;
        PERFORM event_store._saga_bad(format('saga %s already exists with a different type or data', id),
                                      'Starting a saga again with its id is idempotent only with the same type and data.');
    END IF;
    RETURN event_store._saga_start(start_saga.saga_type, start_saga.data, id, NULL, NULL);
END $$;

CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
    sstatus text;
BEGIN
    SELECT status INTO sstatus FROM event_store.sagas s WHERE s.saga_id = st.saga_id;
    IF st.kind = 'nested' THEN
        RAISE EXCEPTION 'step "%" of saga % is completed by its nested saga', st.name, st.saga_id
            USING ERRCODE = '55000',
                  HINT = 'Complete the steps of the nested saga instead.';
    END IF;
    IF st.status = 'running' AND sstatus = 'running' THEN
        PERFORM event_store._saga_step_done(st.saga_id, st.name, COALESCE(result, '{}'));
    ELSIF st.status = 'compensating' AND st.comp_kind = 'external' AND sstatus = 'compensating' THEN
        UPDATE event_store.saga_steps SET status = 'compensated', lease_owner = NULL, lease_expires_at = NULL,
               updated_at = now()
         WHERE saga_steps.saga_id = st.saga_id AND name = st.name;
        PERFORM event_store._saga_event(st.saga_id, 'SagaStepCompensated', jsonb_build_object('step', st.name));
    ELSE
        RAISE EXCEPTION 'step "%" of saga % cannot be completed: it is %', st.name, st.saga_id, st.status
            USING ERRCODE = '55000',
                  DETAIL = format('The saga is %s.', sstatus),
                  HINT = 'Only a running step (or a step whose external compensation is running) can be completed.';
    END IF;
    PERFORM event_store._saga_advance(st.saga_id);
END $$;

CREATE OR REPLACE FUNCTION event_store.fail_saga_step(saga_id uuid, step text, error text, retryable boolean DEFAULT true)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(fail_saga_step.saga_id, fail_saga_step.step);
    sstatus text;
BEGIN
    IF error IS NULL THEN
        PERFORM event_store._saga_bad('error must not be null', NULL, '22004');
    END IF;
    IF retryable IS NULL THEN
        PERFORM event_store._saga_bad('retryable must not be null', NULL, '22004');
    END IF;
    SELECT status INTO sstatus FROM event_store.sagas s WHERE s.saga_id = st.saga_id;
    IF st.status = 'running' AND sstatus = 'running' THEN
        PERFORM event_store._saga_step_failed(st.saga_id, st.name, error, retryable);
    ELSIF st.status = 'compensating' AND st.comp_kind = 'external' AND sstatus = 'compensating' THEN
        PERFORM event_store._saga_comp_failed(st.saga_id, st.name, error, retryable);
    ELSE
        RAISE EXCEPTION 'step "%" of saga % cannot fail: it is %', st.name, st.saga_id, st.status
            USING ERRCODE = '55000',
                  DETAIL = format('The saga is %s.', sstatus),
                  HINT = 'Only a running step (or a step whose external compensation is running) can fail.';
    END IF;
    PERFORM event_store._saga_advance(st.saga_id);
END $$;

CREATE OR REPLACE FUNCTION event_store.claim_saga_steps(worker text, max_count int DEFAULT 10, step_names text[] DEFAULT NULL,
                                             lease interval DEFAULT '30 seconds')
    RETURNS TABLE(saga_id uuid, saga_type text, step text, kind text, attempt int, data jsonb)
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    IF worker IS NULL OR worker = '' THEN
        PERFORM event_store._saga_bad('worker must not be null or empty', NULL,
                                      CASE WHEN worker IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF max_count IS NULL OR max_count < 0 THEN
        PERFORM event_store._saga_bad('max_count must be a non-negative integer', NULL,
                                      CASE WHEN max_count IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        PERFORM event_store._saga_bad('lease must be a positive interval', NULL,
                                      CASE WHEN lease IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF array_ndims(step_names) > 1 THEN
        PERFORM event_store._saga_bad('step_names must be a one-dimensional array', NULL, '2202E');
    END IF;
    IF array_position(step_names, NULL) IS NOT NULL THEN
        PERFORM event_store._saga_bad('step_names must not contain nulls', NULL, '22004');
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT st.saga_id AS sid, st.step_no AS sno
          FROM event_store.saga_steps st
          JOIN event_store.sagas s ON s.saga_id = st.saga_id
         WHERE st.lease_owner IS NULL
           AND ((st.status = 'running' AND st.kind = 'external' AND s.status = 'running')
             OR (st.status = 'compensating' AND st.comp_kind = 'external' AND s.status = 'compensating'
                 AND (st.next_attempt_at IS NULL OR st.next_attempt_at <= now())))
           AND (step_names IS NULL OR st.name = ANY (step_names))
         ORDER BY st.updated_at, st.saga_id, st.step_no
         LIMIT max_count
           FOR UPDATE OF st SKIP LOCKED),
    u AS (
        UPDATE event_store.saga_steps st
           SET lease_owner = worker, lease_expires_at = now() + lease, updated_at = now(),
               attempts = st.attempts + CASE WHEN st.status = 'running' THEN 1 ELSE 0 END,
               comp_attempts = st.comp_attempts + CASE WHEN st.status = 'compensating' THEN 1 ELSE 0 END
          FROM c
         WHERE st.saga_id = c.sid AND st.step_no = c.sno
        RETURNING st.*)
    SELECT u.saga_id, s.saga_type, u.name,
           CASE WHEN u.status = 'running' THEN 'action' ELSE 'compensation' END,
           CASE WHEN u.status = 'running' THEN u.attempts ELSE u.comp_attempts END,
           CASE WHEN u.status = 'running' THEN s.data ELSE u.result END
      FROM u JOIN event_store.sagas s ON s.saga_id = u.saga_id
     ORDER BY u.updated_at, u.saga_id, u.step_no;
END $$;

-- A saga's timer transition failed (say, a callback raised while its
-- transition was appended): saga_tick() rolled back that saga's changes and
-- goes on with the others; the error is kept on the saga and the timer is
-- tried again at the next tick.
CREATE FUNCTION event_store._saga_tick_failed(p_saga uuid, p_sqlstate text, p_error text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.sagas
       SET last_error = format('timer transition failed (%s): %s', p_sqlstate, p_error), updated_at = now()
     WHERE saga_id = p_saga;
    RAISE WARNING 'event_store saga %: timer transition failed: %', p_saga, p_error;
END $$;

CREATE OR REPLACE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT s.saga_id FROM event_store.sagas s
              WHERE s.status = 'running' AND s.deadline <= now() ORDER BY s.deadline LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            PERFORM 1 FROM event_store.sagas WHERE saga_id = r.saga_id AND status = 'running' AND deadline <= now();
            CONTINUE WHEN NOT FOUND;
            PERFORM event_store._saga_event(r.saga_id, 'SagaTimedOut', '{}');
            PERFORM event_store._saga_fail(r.saga_id, 'saga timed out');
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    FOR r IN SELECT st.saga_id, st.name, st.status, st.deadline, st.lease_expires_at
               FROM event_store.saga_steps st
              WHERE st.status IN ('running', 'compensating')
                AND (st.deadline <= now() OR st.lease_expires_at <= now())
              ORDER BY st.updated_at LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            -- re-check under the lock: the step may have completed meanwhile
            PERFORM 1 FROM event_store.saga_steps st
              WHERE st.saga_id = r.saga_id AND st.name = r.name AND st.status = r.status
                AND (st.deadline <= now() OR st.lease_expires_at <= now());
            CONTINUE WHEN NOT FOUND;
            IF r.status = 'running' THEN
                -- an external step nobody claimed still used up an attempt by timing out
                UPDATE event_store.saga_steps SET attempts = attempts + 1
                 WHERE saga_id = r.saga_id AND name = r.name AND kind = 'external' AND lease_owner IS NULL;
                PERFORM event_store._saga_step_failed(r.saga_id, r.name,
                    CASE WHEN r.deadline <= now() THEN 'step timed out' ELSE 'lease expired' END, true);
            ELSE
                PERFORM event_store._saga_comp_failed(r.saga_id, r.name, 'lease expired', true);
            END IF;
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    FOR r IN SELECT DISTINCT st.saga_id FROM event_store.saga_steps st
              WHERE st.status IN ('pending', 'compensating') AND st.next_attempt_at <= now() LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            n := n + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION event_store._saga_on_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st record;
BEGIN
    PERFORM event_store._saga_lock_tree(p_saga);
    PERFORM 1 FROM event_store.sagas WHERE saga_id = p_saga AND status = 'running';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR st IN SELECT * FROM event_store.saga_steps
               WHERE saga_id = p_saga AND status = 'running' AND (complete_on = p_type OR fail_on = p_type)
               ORDER BY step_no LOOP
        IF st.fail_on = p_type THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name, format('event %s', p_type), false);
        ELSE
            PERFORM event_store._saga_step_done(p_saga, st.name, p_data);
        END IF;
    END LOOP;
    PERFORM event_store._saga_advance(p_saga);
END $$;

CREATE OR REPLACE FUNCTION event_store.saga_state(saga_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s record;
    cur text;
BEGIN
    IF saga_id IS NULL THEN
        PERFORM event_store._saga_bad('saga_id must not be null', NULL, '22004');
    END IF;
    SELECT * INTO s FROM event_store.sagas x WHERE x.saga_id = saga_state.saga_id;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga %s does not exist', saga_id));
    END IF;
    SELECT name INTO cur FROM event_store.saga_steps st
     WHERE st.saga_id = s.saga_id
       AND st.status IN (CASE WHEN s.status = 'running' THEN 'running' ELSE 'compensating' END,
                         CASE WHEN s.status = 'running' THEN 'pending' ELSE 'compensating' END)
     ORDER BY CASE WHEN s.status = 'running' THEN st.step_no ELSE -st.step_no END
     LIMIT 1;
    RETURN jsonb_build_object(
        'sagaId', s.saga_id,
        'sagaType', s.saga_type,
        'status', s.status,
        'currentStep', cur,
        'startTime', event_store._iso8601(s.started_at),
        'steps', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                     'stepId', st.step_no,
                     'stepType', st.name,
                     'status', st.status,
                     'timestamp', event_store._iso8601(st.updated_at),
                     'compensationData', st.result) ORDER BY st.step_no)
                   FROM event_store.saga_steps st WHERE st.saga_id = s.saga_id), '[]'));
END $$;

------------------------------------------------------------------------------
-- Saga definitions: the names of the step functions
------------------------------------------------------------------------------
-- define_saga() stores the step functions it resolved (steps[].action and
-- .compensation) as regprocedure text.  0.1.0 wrote that text in the
-- search_path of the session that defined the saga, so a function found on
-- that path was stored without its schema; 0.2.0 writes and reads it with
-- search_path = pg_catalog, pg_temp (start_saga is SECURITY DEFINER), where
-- such a name is not found.  Each name is resolved again and stored as
-- _define_saga() stores it: as the only function of that name and
-- signature in the database, else as found on the search_path that a new
-- session of the role running the update starts with.  A name found
-- neither way stays as it is, with a warning: starting a saga of that type
-- then fails as if the function had been dropped, until the type is
-- defined again.
DO $$
DECLARE
    old_path text := pg_catalog.current_setting('search_path');
    new_path text := (SELECT s.reset_val FROM pg_catalog.pg_settings s WHERE s.name = 'search_path');
    d record;
    v_step jsonb;
    v_steps jsonb;
    k text;
    n text;
    f regprocedure;
BEGIN
    -- regprocedure text as _define_saga() writes it
    PERFORM pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);
    FOR d IN SELECT s.saga_type, s.steps FROM event_store.saga_definitions s ORDER BY s.saga_type LOOP
        v_steps := '[]';
        FOR v_step IN SELECT x.value FROM pg_catalog.jsonb_array_elements(d.steps) WITH ORDINALITY x
                       ORDER BY x.ordinality LOOP
            FOREACH k IN ARRAY ARRAY['action', 'compensation'] LOOP
                n := v_step ->> k;
                CONTINUE WHEN n IS NULL;
                SELECT CASE WHEN pg_catalog.count(*) = 1 THEN pg_catalog.min(p.oid)::regprocedure END INTO f
                  FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace ns ON ns.oid = p.pronamespace
                 WHERE p.pronargs = 2
                   AND p.proargtypes[0] = 'pg_catalog.uuid'::pg_catalog.regtype
                   AND p.proargtypes[1] = 'pg_catalog.jsonb'::pg_catalog.regtype
                   AND n IN (pg_catalog.quote_ident(p.proname) || '(uuid,jsonb)',
                             pg_catalog.quote_ident(ns.nspname) || '.' ||
                             pg_catalog.quote_ident(p.proname) || '(uuid,jsonb)');
                IF f IS NULL THEN
                    f := event_store._saga_regprocedure(n, new_path);
                END IF;
                IF f IS NULL THEN
                    RAISE WARNING 'saga type "%": the function % of step "%" was not found',
                                  d.saga_type, n, v_step ->> 'name'
                        USING HINT = 'Define the saga type again with event_store.define_saga().';
                ELSE
                    v_step := pg_catalog.jsonb_set(v_step, ARRAY[k], pg_catalog.to_jsonb(f::text));
                END IF;
            END LOOP;
            v_steps := v_steps || pg_catalog.jsonb_build_array(v_step);
        END LOOP;
        IF v_steps IS DISTINCT FROM d.steps THEN
            UPDATE event_store.saga_definitions s SET steps = v_steps WHERE s.saga_type = d.saga_type;
        END IF;
    END LOOP;
    PERFORM pg_catalog.set_config('search_path', old_path, true);
END $$;

------------------------------------------------------------------------------
-- Monitoring
------------------------------------------------------------------------------

CREATE FUNCTION event_store._counters(OUT appends bigint, OUT appended_events bigint,
                                      OUT conflicts bigint, OUT appends_in_flight int)
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'es_counters';

CREATE VIEW event_store.stats AS
SELECT (SELECT pg_catalog.count(*) FROM event_store.events) AS events,
       (SELECT pg_catalog.count(DISTINCT e.stream_id) FROM event_store.events e) AS streams,
       (SELECT pg_catalog.count(*) FROM event_store.stream_metadata m
         WHERE m.deleted_at IS NOT NULL) AS deleted_streams,
       c.appends,
       c.appended_events,
       c.conflicts,
       h.head AS head_position,
       c.appends_in_flight,
       (SELECT pg_catalog.max(p.lag_events) FROM event_store.projection_status p) AS projection_max_lag,
       (SELECT pg_catalog.jsonb_object_agg(p.name, p.lag_events ORDER BY p.name)
          FROM event_store.projection_status p) AS projection_lag,
       COALESCE((SELECT pg_catalog.jsonb_object_agg(b.status, b.n ORDER BY b.status)
                   FROM (SELECT s.status, pg_catalog.count(*) AS n
                           FROM event_store.sagas s GROUP BY s.status) b), '{}') AS sagas_by_status,
       (SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
         WHERE s.status IN ('running', 'compensating')) AS oldest_running_saga_started_at
  FROM event_store._counters() c
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h;
COMMENT ON VIEW event_store.stats IS
    'One row: events, streams, deleted streams; appends, appended events and SE001 conflicts since the server started (shared memory); the follower horizon (head_position) and appends in flight; projection lag; sagas by status and the oldest running one';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------
-- PUBLIC may name the schema's objects and nothing else: no function runs
-- and no table is readable until granted (README: "Privileges"), except
-- _may_read(), which the row-level security policy runs as whoever reads
-- the tables.  The install script revokes from PUBLIC on every function
-- and table.  Here only the objects that PUBLIC may use and those whose
-- privileges were never set are revoked from: a GRANT or REVOKE in an
-- extension script makes the object's whole ACL its initial privileges,
-- which pg_dump leaves out, so grants made since 0.1.0 was installed stay
-- out of them wherever possible (and are dumped).
GRANT USAGE ON SCHEMA event_store TO PUBLIC;
DO $$
DECLARE
    obj text;
BEGIN
    FOR obj IN
        SELECT pg_catalog.format('FUNCTION %s', p.oid::regprocedure)
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace OPERATOR(pg_catalog.=) 'event_store'::regnamespace
           AND (p.proacl IS NULL OR EXISTS (SELECT FROM pg_catalog.aclexplode(p.proacl) a
                                             WHERE a.grantee OPERATOR(pg_catalog.=) 0))
        UNION ALL
        SELECT pg_catalog.format('TABLE %s', c.oid::regclass)
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace OPERATOR(pg_catalog.=) 'event_store'::regnamespace
           AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,v,m,f}')
           AND (c.relacl IS NULL OR EXISTS (SELECT FROM pg_catalog.aclexplode(c.relacl) a
                                             WHERE a.grantee OPERATOR(pg_catalog.=) 0))
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', obj);
    END LOOP;
END $$;
GRANT EXECUTE ON FUNCTION event_store._may_read(text) TO PUBLIC;
