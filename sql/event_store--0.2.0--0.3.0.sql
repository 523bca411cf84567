\echo Use "ALTER EXTENSION event_store UPDATE TO '0.3.0'" to load this file. \quit

-- event_store 0.2.0 -> 0.3.0
--
-- Afterwards the schema is the one a fresh CREATE EXTENSION of 0.3.0 makes:
-- the same objects, definitions, privileges and comments, and the same
-- columns in the same order (new columns of 0.3.0 come last in
-- the install script, so they are added here).  Only the change is carried:
-- each section below names the part of the install script it brings in.

------------------------------------------------------------------------------
-- Events: the durable high-water mark of global positions
------------------------------------------------------------------------------
CREATE SEQUENCE event_store.position_mark AS bigint MINVALUE 0 START 0;
COMMENT ON SEQUENCE event_store.position_mark IS 'Every global position handed out is at or below its value; raised by event_store.append() only';
SELECT pg_catalog.pg_extension_config_dump('event_store.position_mark', '');
REVOKE ALL ON SEQUENCE event_store.position_mark FROM PUBLIC;
-- What 0.2.0 may have handed out and a follower may have passed: the
-- highest stored position and the highest projection checkpoint.  A running
-- server reserves above its own counter before its next append.
SELECT pg_catalog.setval('event_store.position_mark',
       GREATEST((SELECT max(global_position) FROM event_store.events),
                (SELECT max(position) FROM event_store.projections), 0), true);

------------------------------------------------------------------------------
-- Read-only means read-only: event_store._check_writable (after
-- _assert_preloaded), called first by the SQL-language writers
-- purge_snapshots, start_saga, complete_saga_step, fail_saga_step,
-- claim_saga_steps and saga_tick
------------------------------------------------------------------------------
CREATE FUNCTION event_store._check_writable(what text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_check_writable';
REVOKE ALL ON FUNCTION event_store._check_writable(text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Callbacks never resolve names in the caller's session
------------------------------------------------------------------------------
-- Every registry records the search_path its callbacks run with: the one in
-- force at registration, pg_temp placed explicitly last.  What 0.2.0
-- registered gets PostgreSQL's default search_path, which no session can
-- change (the library uses the same until this update has run).  (The
-- column is filled by an UPDATE, not a default, so that no "missing" value
-- remains in the catalog: the tables look exactly as freshly created.)

ALTER TABLE event_store.upcasters ADD COLUMN search_path text;
UPDATE event_store.upcasters SET search_path = '"$user", public, pg_temp';
ALTER TABLE event_store.upcasters ALTER COLUMN search_path SET NOT NULL;
ALTER TABLE event_store.aggregates ADD COLUMN search_path text;
UPDATE event_store.aggregates SET search_path = '"$user", public, pg_temp';
ALTER TABLE event_store.aggregates ALTER COLUMN search_path SET NOT NULL;
ALTER TABLE event_store.projections ADD COLUMN search_path text;
UPDATE event_store.projections SET search_path = '"$user", public, pg_temp';
ALTER TABLE event_store.projections ALTER COLUMN search_path SET NOT NULL;
ALTER TABLE event_store.saga_definitions ADD COLUMN search_path text;
UPDATE event_store.saga_definitions SET search_path = '"$user", public, pg_temp';
ALTER TABLE event_store.saga_definitions ALTER COLUMN search_path SET NOT NULL;

------------------------------------------------------------------------------
-- Categories bind registrations too
------------------------------------------------------------------------------
-- purge_snapshots checks the caller's category grants (append and read), in
-- C: it is no longer a SECURITY DEFINER function, which could not tell who
-- called it.

CREATE OR REPLACE FUNCTION event_store.purge_snapshots(category text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_purge_snapshots';
COMMENT ON FUNCTION event_store.purge_snapshots(text) IS
    'Delete snapshots whose state_version differs from their aggregate''s current one (of one category, or of all on which the caller may append and read); returns how many';

------------------------------------------------------------------------------
-- Sagas: bounded work per call (define_saga refuses a backoff below 10 ms
-- and more than 100 attempts; a retry is never due in the call that failed)
------------------------------------------------------------------------------

-- The work of define_saga(), which passes the role that calls it (the step
-- functions run as that role) and its search_path (to resolve their names)
CREATE OR REPLACE FUNCTION event_store._define_saga(saga_type text, definition jsonb, p_owner regrole, p_path text)
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
    PERFORM event_store._check_name_length(saga_type, 'saga_type');
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
            PERFORM event_store._check_name_length(step ->> k, format('"%s" of step %s', k, i));
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
               OR (step ->> 'max_attempts')::numeric < 1 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be a positive integer', nm));
            END IF;
            IF (step ->> 'max_attempts')::numeric > 100 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be at most 100', nm),
                    'Every attempt of a step is an event in the saga''s stream; for a longer wait, use a longer "backoff" (it doubles per attempt).');
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
        IF event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)) < interval '10 milliseconds' THEN
            PERFORM event_store._saga_bad(format('"backoff" of step "%s" must be at least 10 milliseconds', nm),
                'A failed attempt is retried by a later saga_tick() or worker round, never in the call that ran it.');
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

    INSERT INTO event_store.saga_definitions AS d (saga_type, definition, steps, timeout, owner, search_path)
    VALUES (_define_saga.saga_type, definition, norm, saga_timeout, p_owner, p_path)
    ON CONFLICT ON CONSTRAINT saga_definitions_pkey DO UPDATE
       SET definition = EXCLUDED.definition, steps = EXCLUDED.steps,
           timeout = EXCLUDED.timeout, owner = EXCLUDED.owner,
           search_path = EXCLUDED.search_path, defined_at = now();
    PERFORM event_store._saga_definitions_changed();
END $$;

-- (the backoff of a retry: see "One backoff rule" below)

------------------------------------------------------------------------------
-- Sagas: start_saga and saga_state check the caller's grants on category
-- "saga" (in C), then hand over to _start_saga / _saga_state
------------------------------------------------------------------------------

-- The work of start_saga(), which checks the caller's grants on category
-- "saga" and serialises starts with the same id (a lock of the extension's
-- own, out of reach of the SQL advisory-lock functions); p_may_read: may the
-- caller read category "saga"?
CREATE FUNCTION event_store._start_saga(saga_type text, data jsonb, saga_id uuid, p_may_read boolean)
    RETURNS uuid LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    existing record;
    id uuid := COALESCE(_start_saga.saga_id, gen_random_uuid());
BEGIN
    PERFORM event_store._check_writable('start_saga()');
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF data IS NULL OR jsonb_typeof(data) <> 'object' THEN
        PERFORM event_store._saga_bad('data must be a JSON object', NULL,
                                      CASE WHEN data IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    -- idempotent on saga_id
    SELECT * INTO existing FROM event_store.sagas s WHERE s.saga_id = id;
    IF FOUND THEN
        IF NOT p_may_read THEN
            -- whether type and data match would tell what the saga holds
            RAISE EXCEPTION 'saga % already exists', id
                USING ERRCODE = '42501',
                      DETAIL = 'Category "saga" has grants, and the current role may not read it, so whether the saga was started with this type and data is not disclosed.',
                      HINT = 'Start the saga with a new id, or have the extension owner grant "read" on category "saga".';
        END IF;
        IF existing.saga_type = _start_saga.saga_type AND existing.start_data = _start_saga.data THEN
            RETURN id;
        END IF;
        PERFORM event_store._saga_bad(format('saga %s already exists with a different type or data', id),
                                      'Starting a saga again with its id is idempotent only with the same type and data.');
    END IF;
    RETURN event_store._saga_start(_start_saga.saga_type, _start_saga.data, id, NULL, NULL);
END $$;
CREATE OR REPLACE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_start_saga';

-- The work of saga_state(), which checks the caller's grants on category "saga"
CREATE FUNCTION event_store._saga_state(saga_id uuid) RETURNS jsonb
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
    SELECT * INTO s FROM event_store.sagas x WHERE x.saga_id = _saga_state.saga_id;
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
CREATE OR REPLACE FUNCTION event_store.saga_state(saga_id uuid) RETURNS jsonb
    LANGUAGE c STABLE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_saga_state';
REVOKE ALL ON FUNCTION event_store._start_saga(text, jsonb, uuid, boolean), event_store._saga_state(uuid)
  FROM PUBLIC;

------------------------------------------------------------------------------
-- Read-only means read-only (continued): the saga functions written in SQL
-- call event_store._check_writable first (as in the install script)
------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
    sstatus text;
BEGIN
    PERFORM event_store._check_writable('complete_saga_step()');
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
    PERFORM event_store._check_writable('fail_saga_step()');
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
    PERFORM event_store._check_writable('claim_saga_steps()');
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

CREATE OR REPLACE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    PERFORM event_store._check_writable('saga_tick()');
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

------------------------------------------------------------------------------
-- One backoff rule and one name limit, in C, for the SQL-language functions
-- too: _backoff replaces _saga_backoff (doubling from the base, at most 300
-- times the base, +-25% jitter, a base below 10 ms counting as 10 ms), and
-- _check_name_length the 1024-byte limit _define_saga spelt out (above)
------------------------------------------------------------------------------
DROP FUNCTION event_store._saga_backoff(interval, int);
CREATE FUNCTION event_store._check_name_length(name text, what text) RETURNS void
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'es_check_name_length';
CREATE FUNCTION event_store._backoff(base interval, attempts int) RETURNS interval
    LANGUAGE c VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_backoff';
REVOKE ALL ON FUNCTION event_store._check_name_length(text, text), event_store._backoff(interval, int)
  FROM PUBLIC;

------------------------------------------------------------------------------
-- Sagas: the step loop in C (src/saga_run.c).  _saga_advance calls local
-- steps and compensations itself, as the saga type's owner with its
-- search_path, each in a subtransaction; it writes a step's completion
-- (_saga_step_done) and appends the saga's transitions (_saga_event)
-- directly.  _saga_call and _saga_owner, which only the PL/pgSQL loop used,
-- are gone (the library keeps _saga_call's C function for schemas before
-- 0.3.0, until they are updated).  The failure transitions stay PL/pgSQL,
-- now with the one backoff rule.
------------------------------------------------------------------------------
DROP FUNCTION event_store._saga_call(regprocedure, regrole, uuid, jsonb);
DROP FUNCTION event_store._saga_owner(text);
CREATE OR REPLACE FUNCTION event_store._saga_advance(p_saga uuid) RETURNS int
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_advance';
CREATE OR REPLACE FUNCTION event_store._saga_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_event';
CREATE OR REPLACE FUNCTION event_store._saga_step_done(p_saga uuid, p_step text, p_result jsonb) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_step_done';
CREATE OR REPLACE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    retry boolean;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    retry := p_retryable AND st.attempts < st.max_attempts;
    -- the step lets go of its nested saga first, so that saga's end is not
    -- reported back to this attempt
    UPDATE event_store.saga_steps
       SET status = CASE WHEN retry THEN 'pending' ELSE 'failed' END,
           last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
           child_saga_id = NULL,
           next_attempt_at = CASE WHEN retry THEN now() + event_store._backoff(st.backoff, st.attempts) END,
           updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    PERFORM event_store._saga_event(p_saga, 'SagaStepFailed',
        jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.attempts, 'retrying', retry));
    -- a nested step gives up on its child saga: fail (and so compensate) it
    IF st.child_saga_id IS NOT NULL THEN
        PERFORM event_store._saga_fail(st.child_saga_id, format('step "%s" of the parent saga failed', p_step));
        PERFORM event_store._saga_advance(st.child_saga_id);
    END IF;
    IF NOT retry THEN
        PERFORM event_store._saga_fail(p_saga, format('step "%s" failed: %s', p_step, p_error));
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF p_retryable AND st.comp_attempts < st.max_attempts THEN
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL,
               next_attempt_at = now() + event_store._backoff(st.backoff, st.comp_attempts),
               updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', true));
    ELSE
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = NULL,
               updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        UPDATE event_store.sagas
           SET status = 'compensation_failed', finished_at = now(), updated_at = now(),
               last_error = format('compensation of step "%s" failed: %s', p_step, p_error)
         WHERE saga_id = p_saga
        RETURNING * INTO s;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', false));
        PERFORM event_store._saga_event(p_saga, 'SagaCompensationFailed', jsonb_build_object('step', p_step, 'error', p_error));
        IF s.parent_saga_id IS NOT NULL THEN
            PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
        END IF;
    END IF;
END $$;

------------------------------------------------------------------------------
-- Subscriptions (new in 0.3.0): consumer groups on the log
------------------------------------------------------------------------------
-- A subscription is a durable position in the log shared by its consumers.
-- Streams are hashed into partitions; a partition is leased to one consumer
-- at a time.  Per partition the table keeps how far the log was handed out
-- (position) and what was handed out and not yet acknowledged (pending);
-- a stream held back by a failed event has a row in subscription_streams
-- until its events have all been handed out again.  Delivery is in C
-- (subscription.c).

CREATE TABLE event_store.subscriptions (
    name           text COLLATE "C" PRIMARY KEY,
    categories     text[],
    event_types    text[],
    partitions     int NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    start_position bigint NOT NULL CHECK (start_position >= 0),
    max_attempts   int NOT NULL CHECK (max_attempts >= 1),
    retry_backoff  interval NOT NULL,
    owner          regrole NOT NULL,
    projection     boolean NOT NULL DEFAULT false,  -- an async projection's own (same name)
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.subscriptions IS
    'Subscriptions (consumer groups): maintained with create_subscription() and drop_subscription(); an async projection consumes one of its own name';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscriptions', '');
REVOKE ALL ON TABLE event_store.subscriptions FROM PUBLIC;

CREATE TABLE event_store.subscription_partitions (
    subscription     text COLLATE "C" NOT NULL
                     REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    partition        int NOT NULL,
    position         bigint NOT NULL,          -- the log is handed out up to here
    holder           text COLLATE "C",         -- the consumer holding the lease
    lease_expires_at timestamptz,
    pending          bigint[] NOT NULL DEFAULT '{}',   -- handed to the holder, not acknowledged
    pending_attempts int[] NOT NULL DEFAULT '{}',
    redeliver        bigint[] NOT NULL DEFAULT '{}',   -- to hand out again (a lease expired)
    redeliver_attempts int[] NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, partition)
);
-- a consumer's claims, acks and nacks find its partitions by holder
CREATE INDEX subscription_partitions_holder_idx
    ON event_store.subscription_partitions (subscription, holder, partition);
COMMENT ON TABLE event_store.subscription_partitions IS
    'The partitions of every subscription: lease holder, position, events handed out and not acknowledged';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_partitions', '');
REVOKE ALL ON TABLE event_store.subscription_partitions FROM PUBLIC;

CREATE TABLE event_store.subscription_consumers (
    subscription     text COLLATE "C" NOT NULL
                     REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    consumer         text COLLATE "C" NOT NULL,
    lease_expires_at timestamptz NOT NULL,     -- live while its last claim's lease runs
    claimed_at       timestamptz NOT NULL,     -- when its last claim began
    PRIMARY KEY (subscription, consumer)
);
COMMENT ON TABLE event_store.subscription_consumers IS
    'The consumers of every subscription and when their last claim''s lease expires';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_consumers', '');
REVOKE ALL ON TABLE event_store.subscription_consumers FROM PUBLIC;

CREATE TABLE event_store.subscription_fences (
    subscription text COLLATE "C" NOT NULL
                 REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    consumer     text COLLATE "C" NOT NULL,
    fenced_at    timestamptz NOT NULL            -- a partition of it was taken over then
);
CREATE INDEX subscription_fences_consumer_idx ON event_store.subscription_fences (subscription, consumer);
COMMENT ON TABLE event_store.subscription_fences IS
    'Consumers whose expired partition another consumer took over: their acks and nacks are refused until they claim again';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_fences', '');
REVOKE ALL ON TABLE event_store.subscription_fences FROM PUBLIC;

CREATE TABLE event_store.subscription_streams (
    subscription    text COLLATE "C" NOT NULL
                    REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    stream_id       text COLLATE "C" NOT NULL,
    partition       int NOT NULL,
    global_position bigint NOT NULL,           -- the stream's next event to hand out
    attempts        int NOT NULL DEFAULT 0,    -- of that event
    next_attempt_at timestamptz,
    last_error      text,
    parked_at       timestamptz,               -- set: waits for replay_parked / skip_parked
    handed_through  bigint,                    -- set: handed out up to here, not yet acknowledged
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, stream_id)
);
COMMENT ON TABLE event_store.subscription_streams IS
    'Streams held back in a subscription: retrying (nacked) or parked, and the streams catching up after either';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_streams', '');
REVOKE ALL ON TABLE event_store.subscription_streams FROM PUBLIC;

CREATE TABLE event_store.subscription_skipped (
    subscription    text COLLATE "C" NOT NULL
                    REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    stream_id       text COLLATE "C" NOT NULL,
    global_position bigint NOT NULL,           -- the parked event; its stream's later events went with it
    through_position bigint NOT NULL,          -- ... up to here
    last_error      text,
    skipped_by      regrole NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.subscription_skipped IS
    'Parked events acknowledged without delivery by skip_parked(), and who skipped them';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_skipped', '');
REVOKE ALL ON TABLE event_store.subscription_skipped FROM PUBLIC;

CREATE FUNCTION event_store.create_subscription(name text, categories text[] DEFAULT NULL,
                                                event_types text[] DEFAULT NULL, partitions int DEFAULT 8,
                                                start_position bigint DEFAULT 0, max_attempts int DEFAULT 5,
                                                retry_backoff interval DEFAULT '1 second')
    RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_create_subscription';
COMMENT ON FUNCTION event_store.create_subscription(text, text[], text[], int, bigint, int, interval) IS
    'Create a subscription (consumer group) delivering the events after start_position that match the filters and its owner may read';

CREATE FUNCTION event_store.drop_subscription(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_drop_subscription';
COMMENT ON FUNCTION event_store.drop_subscription(text) IS 'Drop a subscription with its partitions, consumers and held streams';

CREATE FUNCTION event_store.claim_events(subscription text, consumer text, max_count int DEFAULT 100,
                                         lease interval DEFAULT '30 seconds', wait interval DEFAULT '0 seconds')
    RETURNS TABLE(partition int, attempt int, global_position bigint, stream_id text, stream_version bigint,
                  event_id uuid, event_type text, data jsonb, metadata jsonb, schema_version int,
                  recorded_at timestamptz)
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_claim_events';
COMMENT ON FUNCTION event_store.claim_events(text, text, int, interval, interval) IS
    'Renew the consumer''s leases, take free partitions up to a fair share, and return up to max_count events of its partitions: redeliveries first, then new events, never past head_position()';

CREATE FUNCTION event_store.ack_events(subscription text, consumer text, up_to_position bigint)
    RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_ack_events';
COMMENT ON FUNCTION event_store.ack_events(text, text, bigint) IS
    'Acknowledge every event handed to the consumer up to up_to_position (except those it nacked); returns how many';

CREATE FUNCTION event_store.nack_event(subscription text, consumer text, global_position bigint, error text,
                                       retry_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_nack_event';
COMMENT ON FUNCTION event_store.nack_event(text, text, bigint, text, interval) IS
    'The event failed: deliver it again after retry_after (default: retry_backoff doubled per attempt, with jitter), holding back the later events of its stream; parked after max_attempts';

CREATE FUNCTION event_store.release_events(subscription text, consumer text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_release_events';
COMMENT ON FUNCTION event_store.release_events(text, text) IS
    'Give the consumer''s partitions up now; what it did not acknowledge is delivered again';

CREATE FUNCTION event_store.replay_parked(subscription text, stream_id text DEFAULT NULL) RETURNS int
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_replay_parked';
COMMENT ON FUNCTION event_store.replay_parked(text, text) IS
    'Deliver parked streams (one, or all) again from their parked event, attempts reset; returns the number of streams';

CREATE FUNCTION event_store.skip_parked(subscription text, stream_id text DEFAULT NULL) RETURNS int
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_skip_parked';
COMMENT ON FUNCTION event_store.skip_parked(text, text) IS
    'Acknowledge the held events of parked streams (one, or all) without delivering them, recording who skipped them; returns the number of streams';

CREATE VIEW event_store.subscription_status AS
SELECT s.name,
       s.partitions,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_consumers c
         WHERE c.subscription OPERATOR(pg_catalog.=) s.name
           AND c.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.now())::int AS consumers,
       p.position,
       h.head AS head_position,
       greatest(h.head OPERATOR(pg_catalog.-) p.position, 0) AS lag_events,
       p.in_flight,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_streams t
         WHERE t.subscription OPERATOR(pg_catalog.=) s.name AND t.parked_at IS NULL
           AND t.last_error IS NOT NULL)::int AS retrying_streams,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_streams t
         WHERE t.subscription OPERATOR(pg_catalog.=) s.name AND t.parked_at IS NOT NULL)::int AS parked_streams,
       greatest(s.updated_at, p.updated_at) AS updated_at
  FROM event_store.subscriptions s
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 CROSS JOIN LATERAL (SELECT pg_catalog.min(x.position) AS position,
                            pg_catalog.sum(pg_catalog.cardinality(x.pending)
                                           OPERATOR(pg_catalog.+) pg_catalog.cardinality(x.redeliver))::bigint AS in_flight,
                            pg_catalog.max(x.updated_at) AS updated_at
                       FROM event_store.subscription_partitions x
                      WHERE x.subscription OPERATOR(pg_catalog.=) s.name) p;
COMMENT ON VIEW event_store.subscription_status IS
    'Subscriptions: live consumers, position (every partition has handed out the log up to it), lag in positions behind head_position, events handed out and not acknowledged, retrying and parked streams';

CREATE VIEW event_store.subscription_parked AS
SELECT t.subscription, t.stream_id, t.global_position, e.event_type, t.attempts, t.last_error, t.parked_at
  FROM event_store.subscription_streams t
  LEFT JOIN event_store.events e ON e.global_position OPERATOR(pg_catalog.=) t.global_position
 WHERE t.parked_at IS NOT NULL;
COMMENT ON VIEW event_store.subscription_parked IS
    'Parked streams of every subscription, with the event they stopped at';
REVOKE ALL ON TABLE event_store.subscription_status, event_store.subscription_parked FROM PUBLIC;
REVOKE ALL ON FUNCTION event_store.create_subscription(text, text[], text[], int, bigint, int, interval),
    event_store.drop_subscription(text), event_store.claim_events(text, text, int, interval, interval),
    event_store.ack_events(text, text, bigint), event_store.nack_event(text, text, bigint, text, interval),
    event_store.release_events(text, text), event_store.replay_parked(text, text),
    event_store.skip_parked(text, text)
  FROM PUBLIC;

------------------------------------------------------------------------------
-- Projections (0.3): partitions and on_error; an async projection consumes
-- a subscription of its own name
------------------------------------------------------------------------------
ALTER TABLE event_store.projections ADD COLUMN partitions int;
UPDATE event_store.projections SET partitions = 1;
ALTER TABLE event_store.projections ALTER COLUMN partitions SET DEFAULT 1,
    ALTER COLUMN partitions SET NOT NULL,
    ADD CONSTRAINT projections_partitions_check CHECK (partitions BETWEEN 1 AND 1024);
ALTER TABLE event_store.projections ADD COLUMN on_error text;
UPDATE event_store.projections SET on_error = 'fail';
ALTER TABLE event_store.projections ALTER COLUMN on_error SET DEFAULT 'fail',
    ALTER COLUMN on_error SET NOT NULL,
    ADD CONSTRAINT projections_on_error_check CHECK (on_error IN ('fail', 'park'));

-- create_projection gains its trailing arguments; whoever could run the old
-- one can run the new one
SELECT pg_catalog.set_config('es_upgrade.create_projection_grantees',
    COALESCE(pg_catalog.string_agg(pg_catalog.quote_ident(a.grantee::regrole::text), ','), ''), true)
  FROM pg_catalog.pg_proc p, LATERAL pg_catalog.aclexplode(p.proacl) a
 WHERE p.oid = 'event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure)'::pg_catalog.regprocedure
   AND a.privilege_type = 'EXECUTE' AND a.grantee <> 0 AND a.grantee <> p.proowner;
DROP FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure);
CREATE FUNCTION event_store.create_projection(name text, handler regprocedure,
                                              event_types text[] DEFAULT NULL,
                                              categories text[] DEFAULT NULL,
                                              mode text DEFAULT 'inline',
                                              reset regprocedure DEFAULT NULL,
                                              partitions int DEFAULT 1,
                                              on_error text DEFAULT 'fail')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_create_projection';
COMMENT ON FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure, int, text) IS
    'Create a projection: handler (event event_store.event) RETURNS void, applied inline (in the appending transaction) or async (by the background workers, in partitions, parking failing streams with on_error => ''park'')';
REVOKE ALL ON FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure, int, text)
  FROM PUBLIC;
DO $$
BEGIN
    IF pg_catalog.current_setting('es_upgrade.create_projection_grantees') <> '' THEN
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure, int, text) TO %s',
                                  pg_catalog.current_setting('es_upgrade.create_projection_grantees'));
    END IF;
END $$;

-- every async projection gets its subscription, its one partition at its position
INSERT INTO event_store.subscriptions (name, categories, event_types, partitions, start_position,
                                       max_attempts, retry_backoff, owner, projection)
SELECT p.name, p.categories, p.event_types, 1, 0,
       COALESCE(pg_catalog.current_setting('event_store.projection_max_attempts', true), '5')::int,
       '1 second', p.owner, true
  FROM event_store.projections p
 WHERE p.mode = 'async';
INSERT INTO event_store.subscription_partitions (subscription, partition, position)
SELECT p.name, 0, p.position FROM event_store.projections p WHERE p.mode = 'async';

------------------------------------------------------------------------------
-- Read-your-writes (new in 0.3.0): last_appended_position, wait_for_projection
------------------------------------------------------------------------------
CREATE FUNCTION event_store.last_appended_position() RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_last_appended_position';
COMMENT ON FUNCTION event_store.last_appended_position() IS
    'The highest global position this session''s last append stored (NULL before any): what wait_for_projection() waits for';

CREATE FUNCTION event_store.wait_for_projection(name text, "position" bigint,
                                                timeout interval DEFAULT '10 seconds')
    RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_wait_for_projection';
COMMENT ON FUNCTION event_store.wait_for_projection(text, bigint, interval) IS
    'Wait until the projection applied (or passed) every event up to position (woken at the projection''s commit); false at the timeout';
REVOKE ALL ON FUNCTION event_store.last_appended_position(),
    event_store.wait_for_projection(text, bigint, interval) FROM PUBLIC;

-- projection_status: a partitioned projection's position is the lowest of its
-- partitions'
CREATE OR REPLACE VIEW event_store.projection_status AS
SELECT p.name,
       p.mode,
       p.state,
       x.pos AS position,
       h.head AS head_position,
       (SELECT pg_catalog.count(*) FROM event_store.events e
         WHERE e.global_position > x.pos AND e.global_position <= h.head) AS lag_events,
       COALESCE((SELECT greatest(EXTRACT(epoch FROM pg_catalog.now() - e.recorded_at)::double precision, 0)
                   FROM event_store.events e
                  WHERE e.global_position > x.pos AND e.global_position <= h.head
                  ORDER BY e.global_position LIMIT 1), 0) AS lag_seconds,
       p.last_error,
       p.updated_at
  FROM event_store.projections p
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 CROSS JOIN LATERAL (SELECT CASE WHEN p.mode = 'inline' AND p.state = 'running' THEN h.head
                                 -- several partitions: the lowest of them, as committed
                                 WHEN p.partitions > 1 THEN
                                      (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                                        WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                                 ELSE p.position END AS pos) x;
COMMENT ON VIEW event_store.projection_status IS 'Projections with their position, lag and last error';

------------------------------------------------------------------------------
-- Monitoring: the stats view reads no history (same columns; it reads the
-- projections' partitions, so it comes last)
------------------------------------------------------------------------------
-- the open sagas by status, and the oldest running one (as in the sagas' tables)
CREATE INDEX sagas_open_idx ON event_store.sagas (status, started_at)
    WHERE status IN ('running', 'compensating', 'compensation_failed');

-- Constant time: nothing here reads event_store.events, and nothing counts
-- history.  The numbers of events, streams, deleted streams and finished
-- sagas are the estimates PostgreSQL keeps (the cumulative statistics
-- system's live rows, ANALYZE's distinct values, null fractions and most
-- common values); the event counters and the horizon are shared memory; the
-- projections' lag is measured in positions; the sagas still open are
-- counted, and the oldest running one found, through the index of open sagas
-- (its size is the work in progress, not the history).
CREATE OR REPLACE VIEW event_store.stats AS
SELECT n.events,
       CASE WHEN n.events = 0 THEN 0
            WHEN d.stadistinct > 0 THEN d.stadistinct::bigint
            WHEN d.stadistinct < 0 THEN pg_catalog.round(-d.stadistinct * n.events)::bigint
       END AS streams,
       CASE WHEN m.live = 0 THEN 0
            ELSE pg_catalog.round(m.live * (1 - md.stanullfrac))::bigint
       END AS deleted_streams,
       c.appends,
       c.appended_events,
       c.conflicts,
       h.head AS head_position,
       c.appends_in_flight,
       -- a projection's lag in positions: 0 for a running inline one
       (SELECT pg_catalog.max(CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' AND p.state OPERATOR(pg_catalog.=) 'running' THEN 0
                    ELSE greatest(h.head OPERATOR(pg_catalog.-) CASE WHEN p.partitions OPERATOR(pg_catalog.>) 1
                      THEN (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                             WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                      ELSE p.position END, 0) END)
          FROM event_store.projections p) AS projection_max_lag,
       (SELECT pg_catalog.jsonb_object_agg(p.name, CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' AND p.state OPERATOR(pg_catalog.=) 'running' THEN 0
                    ELSE greatest(h.head OPERATOR(pg_catalog.-) CASE WHEN p.partitions OPERATOR(pg_catalog.>) 1
                      THEN (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                             WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                      ELSE p.position END, 0) END ORDER BY p.name)
          FROM event_store.projections p) AS projection_lag,
       (SELECT COALESCE(pg_catalog.jsonb_object_agg(b.status, b.n ORDER BY b.status), '{}')
          FROM (SELECT s.status, pg_catalog.count(*) AS n
                  FROM event_store.sagas s
                 WHERE s.status IN ('running', 'compensating', 'compensation_failed')
                 GROUP BY s.status
                UNION ALL
                SELECT v.status, pg_catalog.round(v.freq * sg.live)::bigint
                  FROM ROWS FROM (pg_catalog.unnest(sm.vals), pg_catalog.unnest(sm.freqs)) AS v(status, freq)
                 WHERE v.status IN ('completed', 'compensated') AND sg.live > 0) b) AS sagas_by_status,
       LEAST((SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
               WHERE s.status OPERATOR(pg_catalog.=) 'running'),
             (SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
               WHERE s.status OPERATOR(pg_catalog.=) 'compensating')) AS oldest_running_saga_started_at
  FROM event_store._counters() c
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 -- the hot table and the archived ranges (which inherit from it)
 CROSS JOIN LATERAL (SELECT pg_catalog.sum(pg_catalog.pg_stat_get_live_tuples(r.rel))::bigint AS events
                       FROM (SELECT 'event_store.events'::pg_catalog.regclass AS rel
                             UNION ALL
                             SELECT i.inhrelid::pg_catalog.regclass FROM pg_catalog.pg_inherits i
                              WHERE i.inhparent OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass) r) n
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_live_tuples('event_store.stream_metadata'::pg_catalog.regclass) AS live) m
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_live_tuples('event_store.sagas'::pg_catalog.regclass) AS live) sg
  LEFT JOIN LATERAL (SELECT st.stadistinct
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'stream_id')
                      -- with archived ranges, ANALYZE also describes the
                      -- whole inheritance tree: those figures, not the hot
                      -- table's alone
                      ORDER BY st.stainherit DESC LIMIT 1) d ON true
  LEFT JOIN LATERAL (SELECT st.stanullfrac
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.stream_metadata'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.stream_metadata'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'deleted_at')
                        AND NOT st.stainherit) md ON true
  -- the most common statuses and their frequencies (with a handful of
  -- statuses, ANALYZE lists every one it saw)
  LEFT JOIN LATERAL (SELECT (CASE 1 WHEN st.stakind1 THEN st.stavalues1 WHEN st.stakind2 THEN st.stavalues2
                                    WHEN st.stakind3 THEN st.stavalues3 WHEN st.stakind4 THEN st.stavalues4
                                    WHEN st.stakind5 THEN st.stavalues5 END)::text::text[] AS vals,
                            CASE 1 WHEN st.stakind1 THEN st.stanumbers1 WHEN st.stakind2 THEN st.stanumbers2
                                   WHEN st.stakind3 THEN st.stanumbers3 WHEN st.stakind4 THEN st.stanumbers4
                                   WHEN st.stakind5 THEN st.stanumbers5 END AS freqs
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.sagas'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.sagas'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'status')
                        AND NOT st.stainherit) sm ON true;
COMMENT ON VIEW event_store.stats IS
    'One row, without reading the history: estimated events, streams, deleted streams and finished sagas; open sagas by status; appends, appended events and SE001 conflicts since the server started (shared memory); the follower horizon (head_position) and appends in flight; each projection''s lag in positions; the oldest running saga';
COMMENT ON COLUMN event_store.stats.events IS
    'Estimate: the live rows of event_store.events and its archived ranges as the cumulative statistics system counts them (pg_stat_get_live_tuples: committed appends minus purged and retained-away events, reset by VACUUM and ANALYZE); sessions report a few seconds late, and a crash resets it until the next ANALYZE';
COMMENT ON COLUMN event_store.stats.streams IS
    'Estimate: the distinct stream ids ANALYZE last found in event_store.events and its archived ranges (pg_statistic), scaled to the events estimate when ANALYZE recorded a fraction; 0 when events is 0; NULL until the table was first analyzed';
COMMENT ON COLUMN event_store.stats.deleted_streams IS
    'Estimate: the live rows of event_store.stream_metadata (the cumulative statistics system''s count, as for events) times the share of them ANALYZE last found deleted; 0 when the table has no rows; NULL until it was first analyzed (exact: SELECT count(*) FROM event_store.stream_metadata WHERE deleted_at IS NOT NULL)';
COMMENT ON COLUMN event_store.stats.appends IS
    'Exact counter since the server started (shared memory, this database): append() calls that wrote events';
COMMENT ON COLUMN event_store.stats.appended_events IS
    'Exact counter since the server started (shared memory, this database): events written by append()';
COMMENT ON COLUMN event_store.stats.conflicts IS
    'Exact counter since the server started (shared memory, this database): appends refused with SE001 (wrong expected version)';
COMMENT ON COLUMN event_store.stats.head_position IS
    'Exact: the follower horizon, head_position(); every event at or below it is committed or will never be';
COMMENT ON COLUMN event_store.stats.appends_in_flight IS
    'Exact at the moment of reading (shared memory): transactions of this database that hold positions not yet committed or aborted';
COMMENT ON COLUMN event_store.stats.projection_max_lag IS
    'Exact, in positions: the largest projection_lag (event_store.projection_status.lag_events counts the events themselves)';
COMMENT ON COLUMN event_store.stats.projection_lag IS
    'Exact, in positions: by projection name, head_position minus the projection''s position (0 for a running inline projection); positions of other categories and of rolled-back appends count too, so it is an upper bound of the events still to apply (event_store.projection_status.lag_events counts them)';
COMMENT ON COLUMN event_store.stats.sagas_by_status IS
    'By status: exact for the open sagas (running, compensating, compensation_failed: counted through the index sagas_open_idx, which holds only them); an estimate for the finished ones (completed, compensated): the live rows of event_store.sagas (the cumulative statistics system''s count) times the share ANALYZE last found among its most common statuses, absent when ANALYZE has not listed it (exact: SELECT status, count(*) FROM event_store.sagas GROUP BY status)';
COMMENT ON COLUMN event_store.stats.oldest_running_saga_started_at IS
    'Exact: when the oldest running or compensating saga started (a probe of the index sagas_open_idx per status)';

------------------------------------------------------------------------------
-- Services in separate databases: publications and imports
------------------------------------------------------------------------------
-- A producer publishes the events of some categories (a PostgreSQL
-- publication of event_store.events, inserts only); a consumer imports them
-- (a PostgreSQL subscription to it).  The subscription's rows arrive at
-- event_store.events, where triggers enabled for replication only turn each
-- into a local append at the producer's version (services.c).

CREATE TABLE event_store.publications (
    name        text COLLATE "C" PRIMARY KEY,
    categories  text[] NOT NULL,
    event_types text[],
    owner       regrole NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.publications IS
    'Publications of categories to other databases: maintained with create_publication() and drop_publication(); each is a PostgreSQL publication of the same name';
SELECT pg_catalog.pg_extension_config_dump('event_store.publications', '');
REVOKE ALL ON TABLE event_store.publications FROM PUBLIC;

CREATE TABLE event_store.imports (
    name                 text COLLATE "C" PRIMARY KEY,
    publication          text NOT NULL,
    categories           text[] NOT NULL,   -- read-only here (SE004)
    owner                regrole NOT NULL,
    -- written at most once a second (services.c): last_source_position
    -- accounts for the import's events up to the local position
    -- last_local_position; import_status reads the later ones from the store
    last_source_position bigint NOT NULL DEFAULT 0,
    last_local_position  bigint NOT NULL DEFAULT 0,
    last_applied_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.imports IS
    'Imports of another database''s publication: maintained with create_import() and drop_import(); each is a PostgreSQL subscription of the same name';
SELECT pg_catalog.pg_extension_config_dump('event_store.imports', '');
REVOKE ALL ON TABLE event_store.imports FROM PUBLIC;

CREATE FUNCTION event_store._import_row() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_row';
CREATE FUNCTION event_store._import_copy_begin() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_copy_begin';
CREATE FUNCTION event_store._import_copy_end() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_copy_end';
CREATE TRIGGER events_import_row BEFORE INSERT ON event_store.events
    FOR EACH ROW EXECUTE FUNCTION event_store._import_row();
CREATE TRIGGER events_import_copy_begin BEFORE INSERT ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._import_copy_begin();
CREATE TRIGGER events_import_copy_end AFTER INSERT ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._import_copy_end();
-- only in the subscription's workers (session_replication_role = replica)
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_row;
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_copy_begin;
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_copy_end;

CREATE FUNCTION event_store._import_errors(OUT subid oid, OUT failed_at timestamptz, OUT message text)
    RETURNS SETOF record
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_errors';

CREATE FUNCTION event_store.create_publication(name text, categories text[], event_types text[] DEFAULT NULL)
    RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_create_publication';
COMMENT ON FUNCTION event_store.create_publication(text, text[], text[]) IS
    'Publishes the events of the categories (and types; the lifecycle markers always) to other databases: a PostgreSQL publication of event_store.events, inserts only; needs wal_level = logical, membership in the extension''s owner and CREATE on the database';

CREATE FUNCTION event_store.drop_publication(name text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_drop_publication';
COMMENT ON FUNCTION event_store.drop_publication(text) IS
    'Drops a publication made by create_publication()';

CREATE FUNCTION event_store.create_import(name text, connection text, publication text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_create_import';
COMMENT ON FUNCTION event_store.create_import(text, text, text) IS
    'Imports every event of another database''s publication, history first, exactly once: same stream ids, versions, ids and data, local positions in the producer''s commit order, "$source" in metadata; its categories become read-only here (superuser only)';

CREATE FUNCTION event_store.drop_import(name text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_drop_import';
COMMENT ON FUNCTION event_store.drop_import(text) IS
    'Stops an import: drops its subscription and the producer''s replication slot; the imported events stay (superuser only)';

CREATE VIEW event_store.import_status AS
SELECT i.name,
       i.publication,
       CASE WHEN s.oid IS NULL THEN 'missing'
            WHEN NOT s.subenabled THEN 'disabled'
            WHEN e.message IS NOT NULL THEN 'failing'
            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r
                          WHERE r.srsubid OPERATOR(pg_catalog.=) s.oid
                            AND r.srsubstate OPERATOR(pg_catalog.<>) 'r') THEN 'copying'
            WHEN st.pid IS NOT NULL THEN 'running'
            ELSE 'starting' END AS state,
       GREATEST(i.last_source_position,
                (SELECT pg_catalog.max((ev.metadata OPERATOR(pg_catalog.->>) '$source')::bigint)
                   FROM event_store.events ev
                  WHERE ev.global_position OPERATOR(pg_catalog.>) i.last_local_position
                    AND pg_catalog.split_part(ev.stream_id, '-', 1) COLLATE pg_catalog."C"
                        OPERATOR(pg_catalog.=) ANY (i.categories)
                    -- an import sharing a category with another one writes
                    -- its progress with every transaction of events
                    AND NOT EXISTS (SELECT 1 FROM event_store.imports o
                                     WHERE o.name OPERATOR(pg_catalog.<>) i.name
                                       AND o.categories OPERATOR(pg_catalog.&&) i.categories)))
           AS last_source_position,
       EXTRACT(epoch FROM pg_catalog.now() OPERATOR(pg_catalog.-) st.last_msg_send_time)::float8 AS lag_seconds,
       e.message AS last_error
  FROM event_store.imports i
  LEFT JOIN pg_catalog.pg_subscription s
         ON s.subname OPERATOR(pg_catalog.=) i.name
        AND s.subdbid OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                               WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  LEFT JOIN pg_catalog.pg_stat_subscription st
         ON st.subid OPERATOR(pg_catalog.=) s.oid AND st.relid IS NULL
  LEFT JOIN event_store._import_errors() e ON e.subid OPERATOR(pg_catalog.=) s.oid;
COMMENT ON VIEW event_store.import_status IS
    'One row per import: state (copying, running, starting, failing, disabled, missing), the producer''s position of the last event applied, seconds since the producer''s last message (NULL while no worker runs), and the error that stops it (kept in shared memory until an event of the import is applied again)';
REVOKE ALL ON TABLE event_store.import_status FROM PUBLIC;
REVOKE ALL ON FUNCTION event_store._import_row(), event_store._import_copy_begin(),
    event_store._import_copy_end(), event_store._import_errors(),
    event_store.create_publication(text, text[], text[]), event_store.drop_publication(text),
    event_store.create_import(text, text, text), event_store.drop_import(text)
    FROM PUBLIC;

------------------------------------------------------------------------------
-- Correlation (0.3): read_correlated and the runs of correlation ids it reads
------------------------------------------------------------------------------
-- Appends wait until the update commits: the runs below are those of every
-- event committed before, and an append that waited writes its own runs
-- (it looks for the table again once it holds its lock on the events).
LOCK TABLE event_store.events IN SHARE MODE;
CREATE TABLE event_store.correlations (
    correlation_id  text COLLATE "C" NOT NULL,
    first_position  bigint NOT NULL,
    last_position   bigint NOT NULL,
    CONSTRAINT correlations_pkey PRIMARY KEY (correlation_id, last_position)
);
COMMENT ON TABLE event_store.correlations IS
    'Runs of consecutive events of one batch with the same metadata "correlationId", for event_store.read_correlated(); written only by event_store';
SELECT pg_catalog.pg_extension_config_dump('event_store.correlations', '');
REVOKE ALL ON TABLE event_store.correlations FROM PUBLIC;

-- The runs of the events stored so far.  Where one batch ended and the next
-- began is not recorded: a run here is a maximal sequence of events of one
-- stream, consecutive in position order, whose correlation ids have the
-- same text.  One that spans several batches is still right (read_correlated
-- checks every event's id), and none overlaps another.
INSERT INTO event_store.correlations (correlation_id, first_position, last_position)
SELECT correlation_id, pg_catalog.min(global_position), pg_catalog.max(global_position)
  FROM (SELECT global_position, correlation_id,
               pg_catalog.sum(starts) OVER (ORDER BY global_position) AS run
          FROM (SELECT global_position,
                       (metadata OPERATOR(pg_catalog.->>) 'correlationId') COLLATE "C" AS correlation_id,
                       CASE WHEN pg_catalog.lag(stream_id) OVER w OPERATOR(pg_catalog.=) stream_id
                             AND pg_catalog.lag((metadata OPERATOR(pg_catalog.->>) 'correlationId') COLLATE "C") OVER w
                                 OPERATOR(pg_catalog.=) ((metadata OPERATOR(pg_catalog.->>) 'correlationId') COLLATE "C")
                            THEN 0 ELSE 1 END AS starts
                  FROM event_store.events
                WINDOW w AS (ORDER BY global_position)) e) r
 WHERE correlation_id IS NOT NULL
 GROUP BY run, correlation_id;

CREATE FUNCTION event_store.read_correlated(correlation_id text, after_position bigint DEFAULT 0,
                                            max_count int DEFAULT 1000)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 100
    AS 'MODULE_PATHNAME', 'es_read_correlated';
COMMENT ON FUNCTION event_store.read_correlated(text, bigint, int) IS
    'Events whose metadata "correlationId" is correlation_id, after a global position in position order, gap-safe (sagas stamp theirs with the saga id)';
REVOKE ALL ON FUNCTION event_store.read_correlated(text, bigint, int) FROM PUBLIC;

------------------------------------------------------------------------------
-- Saga diagrams (0.3): saga_diagram(uuid), saga_diagram(text)
------------------------------------------------------------------------------

-- Mermaid text: a label's quotes, angle brackets, # and backquotes as
-- entity codes, line breaks as spaces
CREATE FUNCTION event_store._mermaid_text(t text) RETURNS text
    LANGUAGE sql IMMUTABLE
    SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT translate(replace(replace(replace(replace(replace(t, '#', '#35;'), '"', '#quot;'),
                                             '<', '#lt;'), '>', '#gt;'), '`', '#96;'),
                     E'\r\n\t', '   ')
$$;

-- The work of saga_diagram(), which checks the caller's grants on category
-- "saga": a Mermaid flowchart of a saga (p_saga, with each step's status as
-- its class) or of a saga type's definition (p_type)
CREATE FUNCTION event_store._saga_diagram(p_saga uuid, p_type text) RETURNS text
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s record;
    st record;
    g int;
    n int;
    stype text;
    sstatus text;
    steps jsonb;
    lines text[] := ARRAY['flowchart TD'];
    classes text[] := '{}';
    prev text[] := ARRAY['start'];
    cur text[];
    node text;
    label text;
BEGIN
    IF p_saga IS NULL AND p_type IS NULL THEN
        PERFORM event_store._saga_bad('saga_id or saga_type must not be null', NULL, '22004');
    END IF;
    IF p_saga IS NOT NULL THEN
        SELECT * INTO s FROM event_store.sagas x WHERE x.saga_id = p_saga;
        IF NOT FOUND THEN
            PERFORM event_store._saga_bad(format('saga %s does not exist', p_saga));
        END IF;
        stype := s.saga_type;
        sstatus := s.status;
        SELECT jsonb_agg(jsonb_build_object(
                   'step_no', x.step_no, 'name', x.name, 'grp', x.grp, 'kind', x.kind,
                   'action', x.action::text, 'compensation', x.compensation::text,
                   'comp_kind', x.comp_kind, 'complete_on', x.complete_on, 'fail_on', x.fail_on,
                   'child_type', x.child_type, 'status', x.status) ORDER BY x.step_no)
          INTO steps
          FROM event_store.saga_steps x WHERE x.saga_id = p_saga;
    ELSE
        SELECT d.steps INTO steps FROM event_store.saga_definitions d WHERE d.saga_type = p_type;
        IF NOT FOUND THEN
            PERFORM event_store._saga_bad(format('saga type "%s" is not defined', p_type),
                CASE WHEN p_type ~* '^\{?[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}\}?$'
                     THEN format('To draw a saga, pass its id as a uuid: saga_diagram(%L::uuid).', p_type)
                     ELSE 'Define it with event_store.define_saga().' END);
        END IF;
        stype := p_type;
    END IF;

    lines := lines || format('    start(["%s"])', event_store._mermaid_text(stype)
                             || CASE WHEN sstatus IS NOT NULL THEN ': ' || sstatus ELSE '' END);
    IF sstatus IS NOT NULL THEN
        classes := classes || ('    class start ' || sstatus);
    END IF;
    -- the groups in the order they run; the steps of one group in parallel
    FOR g IN SELECT DISTINCT (x ->> 'grp')::int AS grp FROM jsonb_array_elements(steps) x ORDER BY 1 LOOP
        SELECT count(*) INTO n FROM jsonb_array_elements(steps) x WHERE (x ->> 'grp')::int = g;
        IF n > 1 THEN
            lines := lines || format('    subgraph g%s["group %s (parallel)"]', g, g);
        END IF;
        cur := '{}';
        FOR st IN SELECT (x ->> 'step_no')::int AS step_no, x ->> 'name' AS name, x ->> 'kind' AS kind,
                         regexp_replace(x ->> 'action', '\(uuid,jsonb\)$', '') AS action,
                         regexp_replace(x ->> 'compensation', '\(uuid,jsonb\)$', '') AS compensation,
                         x ->> 'comp_kind' AS comp_kind, x ->> 'complete_on' AS complete_on,
                         x ->> 'fail_on' AS fail_on, x ->> 'child_type' AS child_type,
                         x ->> 'status' AS status
                    FROM jsonb_array_elements(steps) x
                   WHERE (x ->> 'grp')::int = g ORDER BY 1 LOOP
            node := 's' || st.step_no;
            label := event_store._mermaid_text(st.name) || '<br/>' || event_store._mermaid_text(
                CASE st.kind
                    WHEN 'local' THEN 'local: ' || st.action
                    WHEN 'external' THEN 'external'
                    WHEN 'event' THEN 'waits for ' || st.complete_on
                    ELSE 'saga ' || st.child_type END
                || CASE WHEN st.kind = 'local' AND st.complete_on IS NOT NULL
                        THEN ', then waits for ' || st.complete_on ELSE '' END
                || CASE WHEN st.fail_on IS NOT NULL THEN ', fails on ' || st.fail_on ELSE '' END);
            lines := lines || format(CASE WHEN st.kind = 'nested' THEN '    %s[["%s"]]' ELSE '    %s["%s"]' END,
                                     node, label);
            cur := cur || node;
            IF st.status IS NOT NULL THEN
                classes := classes || format('    class %s %s', node, st.status);
            END IF;
        END LOOP;
        IF n > 1 THEN
            lines := lines || '    end'::text;
        END IF;
        lines := lines || (SELECT array_agg(format('    %s --> %s', p, c) ORDER BY i, j)
                             FROM unnest(prev) WITH ORDINALITY a(p, i), unnest(cur) WITH ORDINALITY b(c, j));
        prev := cur;
    END LOOP;
    lines := lines || '    finish(["end"])'::text
                   || (SELECT array_agg(format('    %s --> finish', p) ORDER BY i)
                         FROM unnest(prev) WITH ORDINALITY a(p, i));
    -- compensations: what undoes a step, dashed
    FOR st IN SELECT (x ->> 'step_no')::int AS step_no, x ->> 'comp_kind' AS comp_kind,
                     regexp_replace(x ->> 'compensation', '\(uuid,jsonb\)$', '') AS compensation,
                     x ->> 'child_type' AS child_type, x ->> 'status' AS status
                FROM jsonb_array_elements(steps) x
               WHERE x ->> 'comp_kind' <> 'none' ORDER BY 1 LOOP
        node := 'c' || st.step_no;
        lines := lines
            || format('    %s["%s"]', node, event_store._mermaid_text(
                   'compensate: ' || CASE st.comp_kind WHEN 'local' THEN 'local: ' || st.compensation
                                                       WHEN 'external' THEN 'external'
                                                       ELSE 'saga ' || st.child_type END))
            || format('    s%s -.-> %s', st.step_no, node);
        IF st.status IS NOT NULL THEN
            classes := classes || format('    class %s %s', node,
                CASE WHEN st.status IN ('compensating', 'compensated') THEN st.status ELSE 'pending' END);
        END IF;
    END LOOP;
    IF p_saga IS NOT NULL THEN
        lines := lines || ARRAY[
            '    classDef pending fill:#f4f4f4,stroke:#999',
            '    classDef running fill:#dbe9ff,stroke:#3366cc',
            '    classDef completed fill:#d9f2d9,stroke:#339933',
            '    classDef failed fill:#f8d7d7,stroke:#cc3333',
            '    classDef compensating fill:#ffe8c2,stroke:#cc8800',
            '    classDef compensated fill:#fff6c2,stroke:#999933',
            '    classDef compensation_failed fill:#f8d7d7,stroke:#cc3333,stroke-width:3px']
            || classes;
    END IF;
    RETURN array_to_string(lines, E'\n');
END $$;
CREATE FUNCTION event_store.saga_diagram(saga_id uuid) RETURNS text
    LANGUAGE c STABLE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_saga_diagram';
COMMENT ON FUNCTION event_store.saga_diagram(uuid) IS
    'A Mermaid flowchart of a saga: its steps in order, parallel groups, compensations (dashed), nested sagas, each step''s status as its class';
CREATE FUNCTION event_store.saga_diagram(saga_type text) RETURNS text
    LANGUAGE c STABLE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_saga_type_diagram';
COMMENT ON FUNCTION event_store.saga_diagram(text) IS
    'A Mermaid flowchart of a saga type''s definition: its steps in order, parallel groups, compensations (dashed), nested sagas';
REVOKE ALL ON FUNCTION event_store._saga_diagram(uuid, text), event_store._mermaid_text(text),
    event_store.saga_diagram(uuid), event_store.saga_diagram(text) FROM PUBLIC;
-- ---------------------------------------------------------------------------
-- Hot standby: complete_saga_step() and fail_saga_step() refuse with their own
-- "cannot execute ... during recovery" before locking the step
-- ---------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps;
    sstatus text;
BEGIN
    -- first: on a standby the lock below would fail with a less telling message
    PERFORM event_store._check_writable('complete_saga_step()');
    st := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
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
    st event_store.saga_steps;
    sstatus text;
BEGIN
    -- first: on a standby the lock below would fail with a less telling message
    PERFORM event_store._check_writable('fail_saga_step()');
    st := event_store._saga_lock_step(fail_saga_step.saga_id, fail_saga_step.step);
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

--------------------------------------------------------------------------------
-- Sagas for the long haul: versioned definitions
--
-- Every saga type defined before becomes its version 1, and every saga
-- runs on version 1; define_saga of a defined type adds the next version
-- (sql/install/70_sagas_tables.sql, 71_sagas_define.sql, 73_sagas_api.sql)
--------------------------------------------------------------------------------
ALTER TABLE event_store.saga_definitions DROP CONSTRAINT saga_definitions_pkey;
ALTER TABLE event_store.saga_definitions ADD COLUMN version int;
UPDATE event_store.saga_definitions SET version = 1;
ALTER TABLE event_store.saga_definitions ALTER COLUMN version SET NOT NULL;
ALTER TABLE event_store.saga_definitions ADD CONSTRAINT saga_definitions_pkey PRIMARY KEY (saga_type, version);
COMMENT ON TABLE event_store.saga_definitions IS 'Saga types, one row per version; maintained with define_saga()';
ALTER TABLE event_store.sagas ADD COLUMN version int;
UPDATE event_store.sagas SET version = 1;
ALTER TABLE event_store.sagas ALTER COLUMN version SET NOT NULL;
ALTER TABLE event_store.sagas ALTER COLUMN version SET DEFAULT 1;

CREATE VIEW event_store.saga_types AS
SELECT d.saga_type, d.version, d.owner, d.defined_at,
       (SELECT count(*) FROM event_store.sagas s
         WHERE s.saga_type = d.saga_type AND s.version = d.version
           AND s.status IN ('running', 'compensating')) AS running
  FROM event_store.saga_definitions d;
COMMENT ON VIEW event_store.saga_types IS 'Saga types, one row per version (define_saga of a defined type adds the next), with how many of its sagas still run';
REVOKE ALL ON TABLE event_store.saga_types FROM PUBLIC;

CREATE OR REPLACE FUNCTION event_store._define_saga(saga_type text, definition jsonb, p_owner regrole, p_path text)
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
    PERFORM event_store._check_name_length(saga_type, 'saga_type');
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
                         'backoff', 'complete_on', 'fail_on', 'saga', 'pivot', 'delay', 'until',
                         'compensation_timeout', 'concurrency', 'concurrency_key', 'circuit') THEN
                PERFORM event_store._saga_bad(format('unknown key "%s" in step %s', k, i),
                    'A step has the keys name, action, compensation, group, timeout, max_attempts, backoff, complete_on, fail_on, saga, pivot, delay, until, compensation_timeout, concurrency, concurrency_key and circuit.');
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
        FOREACH k IN ARRAY ARRAY['name', 'action', 'compensation', 'complete_on', 'fail_on', 'saga', 'until',
                                 'concurrency_key'] LOOP
            PERFORM event_store._check_name_length(step ->> k, format('"%s" of step %s', k, i));
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
               OR (step ->> 'max_attempts')::numeric < 1 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be a positive integer', nm));
            END IF;
            IF (step ->> 'max_attempts')::numeric > 100 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be at most 100', nm),
                    'Every attempt of a step is an event in the saga''s stream; for a longer wait, use a longer "backoff" (it doubles per attempt).');
            END IF;
            maxatt := (step ->> 'max_attempts')::numeric::int;
        ELSE
            maxatt := 3;
        END IF;
        IF step ? 'pivot' AND jsonb_typeof(step -> 'pivot') <> 'boolean' THEN
            PERFORM event_store._saga_bad(format('"pivot" of step "%s" must be true or false', nm));
        END IF;
        -- a timer step: "delay" or "until", and nothing that runs or waits for an event
        IF step ? 'delay' OR step ? 'until' THEN
            IF step ? 'delay' AND step ? 'until' THEN
                PERFORM event_store._saga_bad(format('timer step "%s" cannot have both "delay" and "until"', nm),
                    'A timer step waits an interval ("delay") or until the time a key of the saga data holds ("until").');
            END IF;
            FOREACH k IN ARRAY ARRAY['action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
                IF step ? k THEN
                    PERFORM event_store._saga_bad(format('timer step "%s" cannot also have "%s"', nm, k),
                        'A timer step completes by itself when it is due: it has no action, compensation, event or nested saga.');
                END IF;
            END LOOP;
            IF step ? 'delay' AND jsonb_typeof(step -> 'delay') = 'null' THEN
                PERFORM event_store._saga_bad(format('"delay" of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            PERFORM event_store._saga_interval(step -> 'delay', format('"delay" of step "%s"', nm));
            IF step ? 'until' AND (jsonb_typeof(step -> 'until') <> 'string' OR step ->> 'until' = '') THEN
                PERFORM event_store._saga_bad(format('"until" of step "%s" must be the name of a key of the saga data', nm),
                    'The key holds the due time as an ISO 8601 timestamp, such as "2030-01-31T12:00:00Z".');
            END IF;
        END IF;
        IF step ? 'concurrency' THEN
            IF jsonb_typeof(step -> 'concurrency') <> 'number'
               OR (step ->> 'concurrency')::numeric <> floor((step ->> 'concurrency')::numeric)
               OR (step ->> 'concurrency')::numeric < 1 OR (step ->> 'concurrency')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"concurrency" of step "%s" must be a positive integer', nm));
            END IF;
        END IF;
        IF step ? 'concurrency_key' THEN
            IF NOT step ? 'concurrency' THEN
                PERFORM event_store._saga_bad(format('step "%s" has "concurrency_key" but no "concurrency"', nm),
                    '"concurrency": n limits the running instances of the step (per value of "concurrency_key").');
            END IF;
            IF jsonb_typeof(step -> 'concurrency_key') <> 'string' OR step ->> 'concurrency_key' = '' THEN
                PERFORM event_store._saga_bad(format('"concurrency_key" of step "%s" must be the name of a key of the saga data', nm));
            END IF;
        END IF;
        IF step ? 'circuit' THEN
            IF jsonb_typeof(step -> 'circuit') <> 'object' OR NOT (step -> 'circuit') ? 'failures'
               OR NOT (step -> 'circuit') ? 'cooldown'
               OR EXISTS (SELECT 1 FROM jsonb_object_keys(step -> 'circuit') ck WHERE ck NOT IN ('failures', 'cooldown')) THEN
                PERFORM event_store._saga_bad(format('"circuit" of step "%s" must be an object {"failures": n, "cooldown": "<interval>"}', nm));
            END IF;
            IF jsonb_typeof(step #> '{circuit,failures}') <> 'number'
               OR (step #>> '{circuit,failures}')::numeric <> floor((step #>> '{circuit,failures}')::numeric)
               OR (step #>> '{circuit,failures}')::numeric < 1 OR (step #>> '{circuit,failures}')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"failures" of the circuit of step "%s" must be a positive integer', nm));
            END IF;
            IF jsonb_typeof(step #> '{circuit,cooldown}') = 'null' THEN
                PERFORM event_store._saga_bad(format('"cooldown" of the circuit of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            IF event_store._saga_interval(step #> '{circuit,cooldown}', format('"cooldown" of the circuit of step "%s"', nm)) = interval '0' THEN
                PERFORM event_store._saga_bad(format('"cooldown" of the circuit of step "%s" must be positive', nm));
            END IF;
            IF step ? 'delay' OR step ? 'until' THEN
                PERFORM event_store._saga_bad(format('timer step "%s" cannot also have "circuit"', nm),
                    'A timer step completes by itself when it is due: it has no action, compensation, event or nested saga.');
            END IF;
        END IF;
        IF step ? 'compensation_timeout' THEN
            IF jsonb_typeof(step -> 'compensation_timeout') = 'null' THEN
                PERFORM event_store._saga_bad(format('"compensation_timeout" of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            IF event_store._saga_interval(step -> 'compensation_timeout', format('"compensation_timeout" of step "%s"', nm)) = interval '0' THEN
                PERFORM event_store._saga_bad(format('"compensation_timeout" of step "%s" must be positive', nm));
            END IF;
            -- what the step's compensation is: a function, or external (a step without action, event or saga)
            IF NOT (step ? 'compensation' OR NOT (step ? 'action' OR step ? 'complete_on' OR step ? 'fail_on'
                                                 OR step ? 'saga' OR step ? 'delay' OR step ? 'until')) THEN
                PERFORM event_store._saga_bad(format('step "%s" has "compensation_timeout" but no compensation to time', nm),
                    'A compensation timeout applies to a step''s "compensation" function, or to the external compensation of a step without "action".');
            END IF;
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
        ELSIF step ? 'delay' OR step ? 'until' THEN
            kind := 'timer';
        ELSE
            kind := 'external';
        END IF;
        IF kind = 'event' AND NOT step ? 'complete_on' THEN
            PERFORM event_store._saga_bad(format('step "%s" has "fail_on" but no "complete_on" or "action"', nm),
                                          'An event-driven step completes on its "complete_on" event.');
        END IF;
        IF event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)) < interval '10 milliseconds' THEN
            PERFORM event_store._saga_bad(format('"backoff" of step "%s" must be at least 10 milliseconds', nm),
                'A failed attempt is retried by a later saga_tick() or worker round, never in the call that ran it.');
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
            'backoff', COALESCE(event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)), interval '1 second'),
            'pivot', COALESCE((step ->> 'pivot')::boolean, false),
            'delay', event_store._saga_interval(step -> 'delay', format('"delay" of step "%s"', nm)),
            'until', step ->> 'until',
            'compensation_timeout', event_store._saga_interval(step -> 'compensation_timeout',
                                                               format('"compensation_timeout" of step "%s"', nm)),
            'concurrency', (step ->> 'concurrency')::numeric::int,
            'concurrency_key', step ->> 'concurrency_key',
            'circuit_failures', (step #>> '{circuit,failures}')::numeric::int,
            'circuit_cooldown', event_store._saga_interval(step #> '{circuit,cooldown}',
                                                           format('"cooldown" of the circuit of step "%s"', nm)));
    END LOOP;

    -- nested sagas must not lead back to this type (a saga would start itself forever)
    IF EXISTS (
        WITH RECURSIVE reach(t) AS (
            SELECT x ->> 'child_type' FROM jsonb_array_elements(norm) x WHERE x ->> 'child_type' IS NOT NULL
            UNION
            SELECT y ->> 'child_type'
              FROM reach r
              JOIN LATERAL (SELECT x.steps FROM event_store.saga_definitions x WHERE x.saga_type = r.t
                             ORDER BY x.version DESC LIMIT 1) d ON true
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

    -- the next version (define_saga locked the newest); running sagas keep theirs
    INSERT INTO event_store.saga_definitions AS d (saga_type, definition, steps, timeout, owner, search_path, version)
    SELECT _define_saga.saga_type, _define_saga.definition, norm, saga_timeout, p_owner, p_path,
           COALESCE(max(x.version), 0) + 1
      FROM event_store.saga_definitions x WHERE x.saga_type = _define_saga.saga_type;
    PERFORM event_store._saga_definitions_changed();
END $$;
COMMENT ON FUNCTION event_store.define_saga(text, jsonb) IS
    'Define a saga type, or its next version (for sagas started afterwards): {"steps": [...], "timeout": "1 hour"}';
CREATE OR REPLACE FUNCTION event_store._saga_start(p_type text, p_data jsonb, p_id uuid, p_parent uuid, p_parent_step text)
    RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT * INTO d FROM event_store.saga_definitions WHERE saga_type = p_type ORDER BY version DESC LIMIT 1;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga type "%s" is not defined', p_type),
                                      'Define it with event_store.define_saga().');
    END IF;
    INSERT INTO event_store.sagas (saga_id, saga_type, start_data, data, timeout, deadline, parent_saga_id, parent_step,
                                   version)
    VALUES (p_id, p_type, p_data, p_data, d.timeout, now() + d.timeout, p_parent, p_parent_step, d.version);
    INSERT INTO event_store.saga_steps (saga_id, step_no, name, grp, kind, action, compensation, comp_kind,
                                        complete_on, fail_on, child_type, timeout, max_attempts, backoff,
                                        pivot, delay, until_key, comp_timeout, concurrency, concurrency_key,
                                        slot_wait, circuit_failures, circuit_cooldown, circuit_wait)
    SELECT p_id, (x ->> 'step_no')::int, x ->> 'name', (x ->> 'grp')::int, x ->> 'kind',
           (x ->> 'action')::regprocedure, (x ->> 'compensation')::regprocedure, x ->> 'comp_kind',
           x ->> 'complete_on', x ->> 'fail_on', x ->> 'child_type',
           (x ->> 'timeout')::interval, (x ->> 'max_attempts')::int, (x ->> 'backoff')::interval,
           COALESCE((x ->> 'pivot')::boolean, false), (x ->> 'delay')::interval, x ->> 'until',
           (x ->> 'compensation_timeout')::interval, (x ->> 'concurrency')::int, x ->> 'concurrency_key',
           false, (x ->> 'circuit_failures')::int, (x ->> 'circuit_cooldown')::interval, false
      FROM jsonb_array_elements(d.steps) x;
    PERFORM event_store._saga_event(p_id, 'SagaStarted',
        jsonb_build_object('saga_type', p_type, 'data', p_data, 'parent_saga_id', p_parent));
    PERFORM event_store._saga_advance(p_id);
    RETURN p_id;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_state(saga_id uuid) RETURNS jsonb
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
    SELECT * INTO s FROM event_store.sagas x WHERE x.saga_id = _saga_state.saga_id;
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
        'version', s.version,
        'status', s.status,
        'currentStep', cur,
        'startTime', event_store._iso8601(s.started_at),
        'steps', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                     'stepId', st.step_no,
                     'stepType', st.name,
                     'status', st.status,
                     'timestamp', event_store._iso8601(st.updated_at),
                     'compensationData', st.result,
                     'attempts', CASE WHEN st.status IN ('compensating', 'compensated')
                                      THEN st.comp_attempts ELSE st.attempts END,
                     'nextAttemptAt', event_store._iso8601(st.next_attempt_at),
                     'waitingFor', CASE WHEN st.status = 'pending' AND st.circuit_wait AND s.status = 'running'
                                        THEN 'open circuit'
                                        WHEN st.status = 'pending' AND st.slot_wait AND s.status = 'running'
                                        THEN 'concurrency slot'
                                        WHEN st.status <> 'running' OR s.status <> 'running' THEN NULL
                                        WHEN st.kind = 'timer' THEN event_store._iso8601(st.due_at)
                                        WHEN st.complete_on IS NOT NULL THEN st.complete_on END,
                     'circuit', CASE WHEN st.circuit_failures IS NOT NULL THEN
                         (SELECT jsonb_build_object('state', COALESCE(c.state, 'closed'),
                                                    'failures', COALESCE(c.failures, 0),
                                                    'retryAt', event_store._iso8601(c.retry_at))
                            FROM (SELECT 1) one
                            LEFT JOIN event_store.saga_circuit_state c
                              ON c.saga_type = s.saga_type AND c.step = st.name) END)
                     ORDER BY st.step_no)
                   FROM event_store.saga_steps st WHERE st.saga_id = s.saga_id), '[]'));
END $$;

--------------------------------------------------------------------------------
-- Sagas for the long haul: pivot steps (forward recovery), timer steps
-- ("delay", "until"), the operators' retry_saga and resolve_saga, and
-- saga_problems saying why a saga needs a person
-- (sql/install/70_sagas_tables.sql, 71_sagas_define.sql,
-- 72_sagas_transitions.sql, 73_sagas_api.sql)
--------------------------------------------------------------------------------
ALTER TABLE event_store.saga_steps DROP CONSTRAINT saga_steps_kind_check;
ALTER TABLE event_store.saga_steps ADD CONSTRAINT saga_steps_kind_check
    CHECK (kind IN ('local', 'external', 'event', 'nested', 'timer'));
ALTER TABLE event_store.saga_steps ADD COLUMN pivot boolean;
UPDATE event_store.saga_steps SET pivot = false;
ALTER TABLE event_store.saga_steps ALTER COLUMN pivot SET NOT NULL;
ALTER TABLE event_store.saga_steps ALTER COLUMN pivot SET DEFAULT false;
ALTER TABLE event_store.saga_steps ADD COLUMN delay interval;
ALTER TABLE event_store.saga_steps ADD COLUMN until_key text;
ALTER TABLE event_store.saga_steps ADD COLUMN due_at timestamptz;
-- the running timer steps by due time (saga_tick, the worker's next wake-up)
CREATE INDEX saga_steps_due_idx ON event_store.saga_steps (due_at)
    WHERE status = 'running' AND due_at IS NOT NULL;

CREATE OR REPLACE VIEW event_store.saga_problems AS
SELECT s.saga_id, s.saga_type, s.status, s.last_error AS saga_error,
       st.name AS step, st.status AS step_status, st.comp_attempts, st.last_error AS step_error,
       s.updated_at,
       CASE WHEN s.status = 'compensation_failed' THEN 'compensation_failed'
            ELSE 'forward_recovery_failed' END AS reason,
       s.version, st.attempts
  FROM event_store.sagas s
  LEFT JOIN event_store.saga_steps st
    ON st.saga_id = s.saga_id
   AND st.status = CASE WHEN s.status = 'compensation_failed' THEN 'compensating' ELSE 'failed' END
 WHERE s.status = 'compensation_failed'
    OR (s.status = 'running'
        AND EXISTS (SELECT 1 FROM event_store.saga_steps f
                     WHERE f.saga_id = s.saga_id AND f.status = 'failed'));
COMMENT ON VIEW event_store.saga_problems IS 'Sagas that need a person, and why (reason: compensation_failed, forward_recovery_failed), with the step that stopped them; settled with retry_saga or resolve_saga';

CREATE OR REPLACE FUNCTION event_store._saga_past_pivot(p_saga uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM event_store.saga_steps
                    WHERE saga_id = p_saga AND pivot AND status = 'completed')
$$;
CREATE OR REPLACE FUNCTION event_store._saga_fail(p_saga uuid, p_reason text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
BEGIN
    -- past its pivot a saga is never compensated: it goes on (its timeout
    -- no longer applies; a step out of attempts waits for a person)
    IF event_store._saga_past_pivot(p_saga) THEN
        UPDATE event_store.sagas SET last_error = p_reason, deadline = NULL, updated_at = now()
         WHERE saga_id = p_saga AND status = 'running';
        RETURN;
    END IF;
    UPDATE event_store.sagas SET status = 'compensating', last_error = p_reason, deadline = NULL,
           updated_at = now()
     WHERE saga_id = p_saga AND status = 'running';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- whatever is still running is cancelled (a nested saga is failed in turn)
    FOR st IN SELECT * FROM event_store.saga_steps
               WHERE saga_id = p_saga AND status IN ('running', 'pending') ORDER BY step_no LOOP
        IF st.status = 'running' THEN
            UPDATE event_store.saga_steps SET status = 'failed', last_error = 'cancelled: ' || p_reason,
                   lease_owner = NULL, lease_expires_at = NULL, deadline = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
            IF st.child_saga_id IS NOT NULL THEN
                PERFORM event_store._saga_fail(st.child_saga_id, 'parent saga failed');
                PERFORM event_store._saga_advance(st.child_saga_id);
            END IF;
        ELSE
            UPDATE event_store.saga_steps SET next_attempt_at = NULL, slot_wait = false, circuit_wait = false,
                   updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
        END IF;
    END LOOP;
    PERFORM event_store._saga_event(p_saga, 'SagaCompensating', jsonb_build_object('reason', p_reason));
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    retry boolean;
    forward boolean;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    retry := p_retryable AND st.attempts < st.max_attempts;
    forward := NOT retry AND event_store._saga_past_pivot(p_saga);
    -- the step lets go of its nested saga first, so that saga's end is not
    -- reported back to this attempt
    UPDATE event_store.saga_steps
       SET status = CASE WHEN retry THEN 'pending' ELSE 'failed' END,
           last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
           child_saga_id = NULL,
           next_attempt_at = CASE WHEN retry THEN now() + event_store._backoff(st.backoff, st.attempts) END,
           updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    PERFORM event_store._saga_event(p_saga, 'SagaStepFailed',
        jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.attempts, 'retrying', retry));
    IF st.circuit_failures IS NOT NULL THEN
        PERFORM event_store._saga_circuit_result(p_saga, p_step, false);
    END IF;
    -- a nested step gives up on its child saga: fail (and so compensate) it
    IF st.child_saga_id IS NOT NULL THEN
        PERFORM event_store._saga_fail(st.child_saga_id, format('step "%s" of the parent saga failed', p_step));
        PERFORM event_store._saga_advance(st.child_saga_id);
    END IF;
    IF forward THEN
        UPDATE event_store.sagas
           SET last_error = format('step "%s" failed after the pivot: %s', p_step, p_error), updated_at = now()
         WHERE saga_id = p_saga;
        PERFORM event_store._saga_event(p_saga, 'SagaStepNeedsPerson',
            jsonb_build_object('step', p_step, 'error', p_error, 'reason', 'forward_recovery_failed'));
    ELSIF NOT retry THEN
        PERFORM event_store._saga_fail(p_saga, format('step "%s" failed: %s', p_step, p_error));
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_wake_worker() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_wake_worker';
CREATE OR REPLACE FUNCTION event_store._saga_timer_start(p_saga uuid, p_step int, p_data jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
    v jsonb;
    due timestamptz;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = p_step;
    IF st.delay IS NOT NULL THEN
        due := now() + st.delay;
    ELSE
        v := p_data -> st.until_key;
        IF jsonb_typeof(v) IS DISTINCT FROM 'string'
           OR v #>> '{}' !~ '^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d(:?\d\d)?)?$' THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name,
                format('the saga data has no ISO 8601 timestamp under "%s"', st.until_key), false);
            RETURN;
        END IF;
        BEGIN
            due := (v #>> '{}')::timestamptz;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name,
                format('the saga data has no valid ISO 8601 timestamp under "%s": %s', st.until_key, v #>> '{}'), false);
            RETURN;
        END;
    END IF;
    UPDATE event_store.saga_steps SET due_at = due WHERE saga_id = p_saga AND step_no = p_step;
    IF due <= now() THEN
        PERFORM event_store._saga_step_done(p_saga, st.name, NULL);
    ELSIF due < now() + COALESCE(current_setting('event_store.naptime', true), '1s')::interval THEN
        -- due before the worker's next round: it learns the due time at commit
        PERFORM event_store._saga_wake_worker();
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    PERFORM event_store._check_writable('saga_tick()');
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
                PERFORM event_store._saga_comp_failed(r.saga_id, r.name,
                    CASE WHEN r.deadline <= now() THEN 'compensation timed out' ELSE 'lease expired' END, true);
            END IF;
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    -- timer steps that are due complete
    FOR r IN SELECT st.saga_id, st.name FROM event_store.saga_steps st
              WHERE st.status = 'running' AND st.due_at <= now() ORDER BY st.due_at LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            PERFORM 1 FROM event_store.saga_steps st JOIN event_store.sagas s ON s.saga_id = st.saga_id
              WHERE st.saga_id = r.saga_id AND st.name = r.name AND st.status = 'running'
                AND st.due_at <= now() AND s.status = 'running';
            CONTINUE WHEN NOT FOUND;
            PERFORM event_store._saga_step_done(r.saga_id, r.name, NULL);
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    FOR r IN SELECT DISTINCT st.saga_id FROM event_store.saga_steps st
              WHERE (st.status IN ('pending', 'compensating') AND st.next_attempt_at <= now())
                 OR (st.status = 'pending' AND (st.slot_wait OR st.circuit_wait)) LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            n := n + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION event_store.saga_tick() IS
    'Fire due saga timers (timeouts, lease expiry, retries, timer steps) and run ready local steps; the background worker calls it';
CREATE OR REPLACE FUNCTION event_store._saga_retry(p_saga uuid, p_by text) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    s record;
    st record;
    steps text[] := '{}';
BEGIN
    SELECT * INTO s FROM event_store.sagas WHERE saga_id = p_saga;
    IF s.status = 'compensation_failed' THEN
        FOR st IN SELECT * FROM event_store.saga_steps
                   WHERE saga_id = p_saga AND status = 'compensating' AND lease_owner IS NULL
                   ORDER BY step_no DESC LOOP
            UPDATE event_store.saga_steps
               SET comp_attempts = 0, next_attempt_at = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
            IF st.comp_kind = 'nested' AND st.child_saga_id IS NOT NULL THEN
                PERFORM event_store._saga_retry(st.child_saga_id, p_by);
            END IF;
            steps := steps || st.name;
        END LOOP;
        UPDATE event_store.sagas SET status = 'compensating', finished_at = NULL, updated_at = now()
         WHERE saga_id = p_saga;
        PERFORM event_store._saga_event(p_saga, 'SagaRetried',
            jsonb_build_object('kind', 'compensation', 'steps', to_jsonb(steps), 'by', p_by));
    ELSIF s.status = 'running'
          AND EXISTS (SELECT 1 FROM event_store.saga_steps WHERE saga_id = p_saga AND status = 'failed') THEN
        FOR st IN SELECT * FROM event_store.saga_steps
                   WHERE saga_id = p_saga AND status = 'failed' ORDER BY step_no LOOP
            UPDATE event_store.saga_steps
               SET status = 'pending', attempts = 0, next_attempt_at = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
            steps := steps || st.name;
        END LOOP;
        PERFORM event_store._saga_event(p_saga, 'SagaRetried',
            jsonb_build_object('kind', 'action', 'steps', to_jsonb(steps), 'by', p_by));
    ELSE
        RETURN false;
    END IF;
    PERFORM event_store._saga_advance(p_saga);
    RETURN true;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_lock_for_operator(p_saga uuid, p_what text) RETURNS event_store.sagas
    LANGUAGE plpgsql AS $$
DECLARE
    s event_store.sagas;
BEGIN
    PERFORM event_store._check_writable(p_what);
    IF p_saga IS NULL THEN
        PERFORM event_store._saga_bad('saga_id must not be null', NULL, '22004');
    END IF;
    IF NOT event_store._saga_lock_tree(p_saga) THEN
        PERFORM event_store._saga_bad(format('saga %s does not exist', p_saga));
    END IF;
    SELECT * INTO s FROM event_store.sagas WHERE saga_id = p_saga;
    RETURN s;
END $$;
CREATE OR REPLACE FUNCTION event_store._retry_saga(saga_id uuid, p_by regrole) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s event_store.sagas := event_store._saga_lock_for_operator(_retry_saga.saga_id, 'retry_saga()');
BEGIN
    IF NOT event_store._saga_retry(s.saga_id, p_by::text) THEN
        RAISE EXCEPTION 'saga % cannot be retried: it is %', s.saga_id, s.status
            USING ERRCODE = '55000',
                  DETAIL = 'Nothing stopped it: no compensation ran out of attempts, and no step failed after its pivot.',
                  HINT = 'retry_saga() retries the sagas that event_store.saga_problems lists.';
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store.retry_saga(saga_id uuid) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_retry_saga';
COMMENT ON FUNCTION event_store.retry_saga(uuid) IS
    'A fresh round of attempts for what stopped a saga: its compensation that failed, or its step that failed after the pivot (SagaRetried); needs the privileges of the saga''s owner';
CREATE OR REPLACE FUNCTION event_store._resolve_saga(saga_id uuid, status text, note text, p_by regrole) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s event_store.sagas;
BEGIN
    IF status IS NULL OR status NOT IN ('completed', 'compensated') THEN
        PERFORM event_store._saga_bad(format('status must be "completed" or "compensated"%s',
                                             COALESCE(', not "' || status || '"', '')),
                                      'A person settles a saga as completed or as compensated.',
                                      CASE WHEN status IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF note IS NULL THEN
        PERFORM event_store._saga_bad('note must not be null', 'Say what was done and why.', '22004');
    END IF;
    s := event_store._saga_lock_for_operator(_resolve_saga.saga_id, 'resolve_saga()');
    IF NOT (s.status = 'compensation_failed'
            OR (s.status = 'running'
                AND EXISTS (SELECT 1 FROM event_store.saga_steps st
                             WHERE st.saga_id = s.saga_id AND st.status = 'failed'))) THEN
        RAISE EXCEPTION 'saga % cannot be resolved: it is %', s.saga_id, s.status
            USING ERRCODE = '55000',
                  DETAIL = 'Only a saga that needs a person (listed in event_store.saga_problems) can be resolved.',
                  HINT = CASE WHEN s.status IN ('running', 'compensating')
                              THEN 'The saga is still making progress by itself.'
                              ELSE 'The saga has ended.' END;
    END IF;
    -- nothing of it runs any more: no attempt, lease or timer is left
    UPDATE event_store.saga_steps st
       SET lease_owner = NULL, lease_expires_at = NULL, deadline = NULL, next_attempt_at = NULL,
           slot_wait = false, circuit_wait = false, updated_at = now()
     WHERE st.saga_id = s.saga_id AND st.status IN ('pending', 'running', 'compensating');
    UPDATE event_store.sagas x
       SET status = _resolve_saga.status, finished_at = now(), deadline = NULL, updated_at = now()
     WHERE x.saga_id = s.saga_id;
    PERFORM event_store._saga_event(s.saga_id, 'SagaResolved',
        jsonb_build_object('status', status, 'note', note, 'previous_status', s.status, 'by', p_by::text));
    IF s.parent_saga_id IS NOT NULL THEN
        PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, s.saga_id);
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store.resolve_saga(saga_id uuid, status text, note text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_resolve_saga';
COMMENT ON FUNCTION event_store.resolve_saga(uuid, text, text) IS
    'A person settles a saga that needs one as completed or compensated, the note recorded in its stream (SagaResolved); needs the privileges of the saga''s owner';
REVOKE ALL ON FUNCTION event_store._saga_past_pivot(uuid), event_store._saga_timer_start(uuid, int, jsonb),
    event_store._saga_retry(uuid, text), event_store._saga_lock_for_operator(uuid, text),
    event_store._retry_saga(uuid, regrole), event_store._resolve_saga(uuid, text, text, regrole),
    event_store.retry_saga(uuid), event_store.resolve_saga(uuid, text, text),
    event_store._saga_wake_worker()
  FROM PUBLIC;

--------------------------------------------------------------------------------
-- Sagas for the long haul: "compensation_timeout", "concurrency" and
-- "concurrency_key" (sql/install/70_sagas_tables.sql, 71_sagas_define.sql,
-- 72_sagas_transitions.sql, 73_sagas_api.sql)
--------------------------------------------------------------------------------
ALTER TABLE event_store.saga_steps ADD COLUMN comp_timeout interval;
ALTER TABLE event_store.saga_steps ADD COLUMN concurrency int;
ALTER TABLE event_store.saga_steps ADD COLUMN concurrency_key text;
ALTER TABLE event_store.saga_steps ADD COLUMN slot_wait boolean;
UPDATE event_store.saga_steps SET slot_wait = false;
ALTER TABLE event_store.saga_steps ALTER COLUMN slot_wait SET NOT NULL;
ALTER TABLE event_store.saga_steps ALTER COLUMN slot_wait SET DEFAULT false;

CREATE OR REPLACE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF p_retryable AND st.comp_attempts < st.max_attempts THEN
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
               next_attempt_at = now() + event_store._backoff(st.backoff, st.comp_attempts),
               updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', true));
    ELSE
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = NULL,
               deadline = NULL, updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        UPDATE event_store.sagas
           SET status = 'compensation_failed', finished_at = now(), updated_at = now(),
               last_error = format('compensation of step "%s" failed: %s', p_step, p_error)
         WHERE saga_id = p_saga
        RETURNING * INTO s;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', false));
        PERFORM event_store._saga_event(p_saga, 'SagaCompensationFailed', jsonb_build_object('step', p_step, 'error', p_error));
        IF s.parent_saga_id IS NOT NULL THEN
            PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
        END IF;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_lock_slot(p_slot text) RETURNS boolean
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_lock_slot';
CREATE OR REPLACE FUNCTION event_store._saga_take_slot(p_saga uuid, p_step int) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
    keyval text;
    busy bigint;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = p_step;
    IF st.concurrency IS NULL THEN
        RETURN true;
    END IF;
    SELECT * INTO s FROM event_store.sagas WHERE saga_id = p_saga;
    keyval := s.data ->> st.concurrency_key;
    IF NOT event_store._saga_lock_slot(jsonb_build_array(s.saga_type, st.name, keyval)::text) THEN
        busy := st.concurrency;      -- another saga is taking the slot right now
    ELSE
        SELECT count(*) INTO busy
          FROM event_store.saga_steps x JOIN event_store.sagas y ON y.saga_id = x.saga_id
         WHERE x.name = st.name AND x.status = 'running' AND y.saga_type = s.saga_type
           AND x.saga_id <> p_saga
           AND (st.concurrency_key IS NULL OR (y.data ->> st.concurrency_key) IS NOT DISTINCT FROM keyval);
    END IF;
    IF busy >= st.concurrency THEN
        IF NOT st.slot_wait THEN
            UPDATE event_store.saga_steps SET slot_wait = true, updated_at = now()
             WHERE saga_id = p_saga AND step_no = p_step;
        END IF;
        RETURN false;
    END IF;
    IF st.slot_wait THEN
        UPDATE event_store.saga_steps SET slot_wait = false WHERE saga_id = p_saga AND step_no = p_step;
    END IF;
    RETURN true;
END $$;
CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
    sstatus text;
BEGIN
    PERFORM event_store._check_writable('complete_saga_step()');
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
               deadline = NULL, updated_at = now()
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
CREATE OR REPLACE FUNCTION event_store.claim_saga_steps(worker text, max_count int DEFAULT 10, step_names text[] DEFAULT NULL,
                                             lease interval DEFAULT '30 seconds')
    RETURNS TABLE(saga_id uuid, saga_type text, step text, kind text, attempt int, data jsonb)
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM event_store._check_writable('claim_saga_steps()');
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
    -- an open circuit whose cooldown passed: half-open, its trial the
    -- instance that waits longest to be handed out
    UPDATE event_store.saga_circuit_state x
       SET state = 'half_open', updated_at = now(),
           trial_saga = (SELECT st.saga_id FROM event_store.saga_steps st
                           JOIN event_store.sagas s ON s.saga_id = st.saga_id
                          WHERE s.saga_type = x.saga_type AND st.name = x.step AND s.status = 'running'
                            AND st.status = 'running' AND st.kind = 'external' AND st.lease_owner IS NULL
                          ORDER BY st.updated_at LIMIT 1)
     WHERE x.state = 'open' AND x.retry_at <= now()
       AND EXISTS (SELECT 1 FROM event_store.saga_steps st JOIN event_store.sagas s ON s.saga_id = st.saga_id
                    WHERE s.saga_type = x.saga_type AND st.name = x.step AND s.status = 'running'
                      AND st.status = 'running' AND st.kind = 'external' AND st.lease_owner IS NULL);
    RETURN QUERY
    WITH c AS (
        SELECT st.saga_id AS sid, st.step_no AS sno
          FROM event_store.saga_steps st
          JOIN event_store.sagas s ON s.saga_id = st.saga_id
         WHERE st.lease_owner IS NULL
           AND ((st.status = 'running' AND st.kind = 'external' AND s.status = 'running'
                 AND (st.circuit_failures IS NULL
                      OR NOT EXISTS (SELECT 1 FROM event_store.saga_circuit_state c
                                      WHERE c.saga_type = s.saga_type AND c.step = st.name
                                        AND c.state <> 'closed' AND c.trial_saga IS DISTINCT FROM st.saga_id)))
             OR (st.status = 'compensating' AND st.comp_kind = 'external' AND s.status = 'compensating'
                 AND (st.next_attempt_at IS NULL OR st.next_attempt_at <= now())))
           AND (step_names IS NULL OR st.name = ANY (step_names))
         ORDER BY st.updated_at, st.saga_id, st.step_no
         LIMIT max_count
           FOR UPDATE OF st SKIP LOCKED),
    u AS (
        UPDATE event_store.saga_steps st
           SET lease_owner = worker, lease_expires_at = now() + lease, updated_at = now(),
               deadline = CASE WHEN st.status = 'compensating' THEN now() + st.comp_timeout ELSE st.deadline END,
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
REVOKE ALL ON FUNCTION event_store._saga_take_slot(uuid, int), event_store._saga_lock_slot(text) FROM PUBLIC;

--------------------------------------------------------------------------------
-- Sagas for the long haul: circuit breakers ("circuit"), the table
-- saga_circuit_state and the view saga_circuits
-- (sql/install/70_sagas_tables.sql, 72_sagas_transitions.sql)
--------------------------------------------------------------------------------
ALTER TABLE event_store.saga_steps ADD COLUMN circuit_failures int;
ALTER TABLE event_store.saga_steps ADD COLUMN circuit_cooldown interval;
ALTER TABLE event_store.saga_steps ADD COLUMN circuit_wait boolean;
UPDATE event_store.saga_steps SET circuit_wait = false;
ALTER TABLE event_store.saga_steps ALTER COLUMN circuit_wait SET NOT NULL;
ALTER TABLE event_store.saga_steps ALTER COLUMN circuit_wait SET DEFAULT false;
CREATE TABLE event_store.saga_circuit_state (
    saga_type  text NOT NULL,
    step       text NOT NULL,
    state      text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures   int  NOT NULL,
    opened_at  timestamptz,
    retry_at   timestamptz,
    trial_saga uuid,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (saga_type, step)
);
COMMENT ON TABLE event_store.saga_circuit_state IS 'Circuit breakers of saga steps; see the view saga_circuits';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_circuit_state', '');
REVOKE ALL ON TABLE event_store.saga_circuit_state FROM PUBLIC;
CREATE VIEW event_store.saga_circuits AS
SELECT c.saga_type, c.step, c.state, c.failures, c.opened_at, c.retry_at, c.trial_saga,
       (SELECT count(*) FROM event_store.saga_steps st JOIN event_store.sagas s ON s.saga_id = st.saga_id
         WHERE s.saga_type = c.saga_type AND st.name = c.step AND st.circuit_wait) AS waiting
  FROM event_store.saga_circuit_state c
 WHERE c.state <> 'closed';
COMMENT ON VIEW event_store.saga_circuits IS 'Open and half-open circuit breakers of saga steps, with how many instances wait for them';
REVOKE ALL ON TABLE event_store.saga_circuits FROM PUBLIC;
CREATE OR REPLACE FUNCTION event_store._saga_circuit_result(p_saga uuid, p_step text, p_ok boolean) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
    c record;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF st.circuit_failures IS NULL THEN
        RETURN;
    END IF;
    SELECT saga_type INTO s FROM event_store.sagas WHERE saga_id = p_saga;
    INSERT INTO event_store.saga_circuit_state AS x (saga_type, step, state, failures, updated_at)
    VALUES (s.saga_type, p_step, 'closed', 0, now())
    ON CONFLICT (saga_type, step) DO NOTHING;
    SELECT * INTO c FROM event_store.saga_circuit_state x
     WHERE x.saga_type = s.saga_type AND x.step = p_step FOR UPDATE;
    IF p_ok THEN
        IF c.state <> 'closed' OR c.failures > 0 THEN
            UPDATE event_store.saga_circuit_state x
               SET state = 'closed', failures = 0, opened_at = NULL, retry_at = NULL, trial_saga = NULL,
                   updated_at = now()
             WHERE x.saga_type = s.saga_type AND x.step = p_step;
            IF c.state <> 'closed' THEN
                PERFORM event_store._saga_event(p_saga, 'SagaCircuitClosed', jsonb_build_object('step', p_step));
            END IF;
        END IF;
    ELSIF c.state = 'half_open' OR (c.state = 'closed' AND c.failures + 1 >= st.circuit_failures) THEN
        UPDATE event_store.saga_circuit_state x
           SET state = 'open', failures = c.failures + 1, opened_at = now(),
               retry_at = now() + st.circuit_cooldown, trial_saga = NULL, updated_at = now()
         WHERE x.saga_type = s.saga_type AND x.step = p_step;
        PERFORM event_store._saga_event(p_saga, 'SagaCircuitOpened',
            jsonb_build_object('step', p_step, 'failures', c.failures + 1,
                               'retry_at', event_store._iso8601(now() + st.circuit_cooldown)));
    ELSE
        UPDATE event_store.saga_circuit_state x
           SET failures = c.failures + 1, updated_at = now()
         WHERE x.saga_type = s.saga_type AND x.step = p_step;
    END IF;
END $$;
CREATE OR REPLACE FUNCTION event_store._saga_circuit_gate(p_saga uuid, p_step int) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
    c record;
    ok boolean;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = p_step;
    SELECT saga_type INTO s FROM event_store.sagas WHERE saga_id = p_saga;
    SELECT * INTO c FROM event_store.saga_circuit_state x WHERE x.saga_type = s.saga_type AND x.step = st.name;
    IF FOUND AND c.state <> 'closed' THEN
        SELECT * INTO c FROM event_store.saga_circuit_state x
         WHERE x.saga_type = s.saga_type AND x.step = st.name FOR UPDATE;
    END IF;
    IF NOT FOUND OR c.state = 'closed' THEN
        ok := true;
    ELSIF c.state = 'open' AND c.retry_at <= now() THEN
        UPDATE event_store.saga_circuit_state x SET state = 'half_open', trial_saga = p_saga, updated_at = now()
         WHERE x.saga_type = s.saga_type AND x.step = st.name;
        PERFORM event_store._saga_event(p_saga, 'SagaCircuitHalfOpen', jsonb_build_object('step', st.name));
        ok := true;
    ELSIF c.state = 'half_open' AND c.trial_saga IS DISTINCT FROM p_saga
          AND NOT EXISTS (SELECT 1 FROM event_store.saga_steps t JOIN event_store.sagas ts ON ts.saga_id = t.saga_id
                           WHERE t.saga_id = c.trial_saga AND t.name = st.name
                             AND t.status IN ('pending', 'running') AND ts.status = 'running') THEN
        -- the trial's saga gave up its step (it failed for another reason, or
        -- was settled by a person): this instance is the trial now
        UPDATE event_store.saga_circuit_state x SET trial_saga = p_saga, updated_at = now()
         WHERE x.saga_type = s.saga_type AND x.step = st.name;
        ok := true;
    ELSE
        ok := c.state = 'half_open' AND c.trial_saga = p_saga;
    END IF;
    IF st.circuit_wait IS DISTINCT FROM NOT ok THEN
        UPDATE event_store.saga_steps SET circuit_wait = NOT ok WHERE saga_id = p_saga AND step_no = p_step;
    END IF;
    RETURN ok;
END $$;
REVOKE ALL ON FUNCTION event_store._saga_circuit_result(uuid, text, boolean), event_store._saga_circuit_gate(uuid, int)
  FROM PUBLIC;

--------------------------------------------------------------------------------
-- complete_saga_step() and fail_saga_step() as they are now: the long haul's
-- versions of them (above) with the hot standby's check first
--------------------------------------------------------------------------------
CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps;
    sstatus text;
BEGIN
    -- first: on a standby the lock below would fail with a less telling message
    PERFORM event_store._check_writable('complete_saga_step()');
    st := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
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
               deadline = NULL, updated_at = now()
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
    st event_store.saga_steps;
    sstatus text;
BEGIN
    -- first: on a standby the lock below would fail with a less telling message
    PERFORM event_store._check_writable('fail_saga_step()');
    st := event_store._saga_lock_step(fail_saga_step.saga_id, fail_saga_step.step);
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

-- Large stores: data and metadata compressed with lz4 (values stored from now
-- on; existing values stay as they are until rewritten)
------------------------------------------------------------------------------
DO $lz4$
BEGIN
    ALTER TABLE event_store.events
        ALTER COLUMN data SET COMPRESSION lz4,
        ALTER COLUMN metadata SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;   -- a server without lz4: keep the default method
END
$lz4$;
-- Sagas under load: a claim reads only the external steps it takes, in the
-- order of their index; the timers (timer steps, retries, timeouts, leases)
-- are found through an index of their own; the background worker waits for
-- the next of them and moves the due sagas on in batches, each committed.
DROP INDEX event_store.saga_steps_claimable_idx;
-- the external steps and compensations that wait to be claimed, in the
-- order claim_saga_steps hands them out (a claim reads no further than the
-- steps it takes, however many sagas started in the same transaction)
CREATE INDEX saga_steps_claimable_idx ON event_store.saga_steps (updated_at, saga_id, step_no)
    WHERE lease_owner IS NULL AND ((status = 'running' AND kind = 'external')
                                   OR (status = 'compensating' AND comp_kind = 'external'));
-- the timers of unfinished steps: the first of a step's timeout, its lease's
-- expiry, its retry and its due time (a timer step) -- saga_tick, the
-- worker's next wake-up
CREATE INDEX saga_steps_next_timer_idx
    ON event_store.saga_steps ((LEAST(deadline, lease_expires_at, next_attempt_at, due_at)))
    WHERE status IN ('pending', 'running', 'compensating')
      AND LEAST(deadline, lease_expires_at, next_attempt_at, due_at) IS NOT NULL;
-- the pending steps that wait for a concurrency slot or a circuit (saga_tick)
CREATE INDEX saga_steps_waiting_idx ON event_store.saga_steps (saga_id)
    WHERE status = 'pending' AND (slot_wait OR circuit_wait);

CREATE OR REPLACE FUNCTION event_store._saga_lock_tree(p_saga uuid) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    chain uuid[] := ARRAY[p_saga];
    cur uuid;
    id uuid;
BEGIN
    SELECT parent_saga_id INTO cur FROM event_store.sagas WHERE saga_id = p_saga;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF cur IS NULL THEN
        -- no ancestors (the usual case); a saga's parent never changes
        PERFORM 1 FROM event_store.sagas WHERE saga_id = p_saga FOR UPDATE;
        RETURN FOUND;
    END IF;
    WHILE cur IS NOT NULL LOOP
        chain := cur || chain;
        SELECT parent_saga_id INTO cur FROM event_store.sagas WHERE saga_id = cur;
    END LOOP;
    FOREACH id IN ARRAY chain LOOP
        PERFORM 1 FROM event_store.sagas WHERE saga_id = id FOR UPDATE;
    END LOOP;
    RETURN EXISTS (SELECT 1 FROM event_store.sagas WHERE saga_id = p_saga);
END $$;

CREATE OR REPLACE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    retry boolean;
    forward boolean;
    next_at timestamptz;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    retry := p_retryable AND st.attempts < st.max_attempts;
    forward := NOT retry AND event_store._saga_past_pivot(p_saga);
    IF retry THEN
        next_at := now() + event_store._backoff(st.backoff, st.attempts);
        PERFORM event_store._saga_wake_for(next_at);
    END IF;
    -- the step lets go of its nested saga first, so that saga's end is not
    -- reported back to this attempt
    UPDATE event_store.saga_steps
       SET status = CASE WHEN retry THEN 'pending' ELSE 'failed' END,
           last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
           child_saga_id = NULL,
           next_attempt_at = next_at,
           updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    PERFORM event_store._saga_event(p_saga, 'SagaStepFailed',
        jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.attempts, 'retrying', retry));
    IF st.circuit_failures IS NOT NULL THEN
        PERFORM event_store._saga_circuit_result(p_saga, p_step, false);
    END IF;
    -- a nested step gives up on its child saga: fail (and so compensate) it
    IF st.child_saga_id IS NOT NULL THEN
        PERFORM event_store._saga_fail(st.child_saga_id, format('step "%s" of the parent saga failed', p_step));
        PERFORM event_store._saga_advance(st.child_saga_id);
    END IF;
    IF forward THEN
        UPDATE event_store.sagas
           SET last_error = format('step "%s" failed after the pivot: %s', p_step, p_error), updated_at = now()
         WHERE saga_id = p_saga;
        PERFORM event_store._saga_event(p_saga, 'SagaStepNeedsPerson',
            jsonb_build_object('step', p_step, 'error', p_error, 'reason', 'forward_recovery_failed'));
    ELSIF NOT retry THEN
        PERFORM event_store._saga_fail(p_saga, format('step "%s" failed: %s', p_step, p_error));
    END IF;
END $$;

CREATE OR REPLACE FUNCTION event_store._saga_timer_start(p_saga uuid, p_step int, p_data jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
    v jsonb;
    due timestamptz;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = p_step;
    IF st.delay IS NOT NULL THEN
        due := now() + st.delay;
    ELSE
        v := p_data -> st.until_key;
        IF jsonb_typeof(v) IS DISTINCT FROM 'string'
           OR v #>> '{}' !~ '^\d{4}-\d\d-\d\d([T ]\d\d:\d\d(:\d\d(\.\d+)?)?)?(Z|[+-]\d\d(:?\d\d)?)?$' THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name,
                format('the saga data has no ISO 8601 timestamp under "%s"', st.until_key), false);
            RETURN;
        END IF;
        BEGIN
            due := (v #>> '{}')::timestamptz;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name,
                format('the saga data has no valid ISO 8601 timestamp under "%s": %s', st.until_key, v #>> '{}'), false);
            RETURN;
        END;
    END IF;
    UPDATE event_store.saga_steps SET due_at = due WHERE saga_id = p_saga AND step_no = p_step;
    IF due <= now() THEN
        PERFORM event_store._saga_step_done(p_saga, st.name, NULL);
    ELSE
        PERFORM event_store._saga_wake_for(due);
    END IF;
END $$;

CREATE OR REPLACE FUNCTION event_store._saga_timer_due(p_saga uuid, p_step text) RETURNS int
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_timer_due';

CREATE OR REPLACE FUNCTION event_store._saga_wake_for(p_due timestamptz) RETURNS void
    LANGUAGE sql AS $$
    SELECT event_store._saga_wake_worker()
     WHERE p_due < now() + COALESCE(current_setting('event_store.naptime', true), '1s')::interval
$$;

CREATE OR REPLACE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
    next_at timestamptz;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF p_retryable AND st.comp_attempts < st.max_attempts THEN
        next_at := now() + event_store._backoff(st.backoff, st.comp_attempts);
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
               next_attempt_at = next_at, updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        IF st.comp_kind = 'local' THEN
            PERFORM event_store._saga_wake_for(next_at);
        END IF;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', true));
    ELSE
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = NULL,
               deadline = NULL, updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        UPDATE event_store.sagas
           SET status = 'compensation_failed', finished_at = now(), updated_at = now(),
               last_error = format('compensation of step "%s" failed: %s', p_step, p_error)
         WHERE saga_id = p_saga
        RETURNING * INTO s;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', false));
        PERFORM event_store._saga_event(p_saga, 'SagaCompensationFailed', jsonb_build_object('step', p_step, 'error', p_error));
        IF s.parent_saga_id IS NOT NULL THEN
            PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
        END IF;
    END IF;
END $$;

CREATE OR REPLACE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE c
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_complete_saga_step';

CREATE OR REPLACE FUNCTION event_store.claim_saga_steps(worker text, max_count int DEFAULT 10, step_names text[] DEFAULT NULL,
                                             lease interval DEFAULT '30 seconds')
    RETURNS TABLE(saga_id uuid, saga_type text, step text, kind text, attempt int, data jsonb)
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM event_store._check_writable('claim_saga_steps()');
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
    -- an open circuit whose cooldown passed: half-open, its trial the
    -- instance that waits longest to be handed out (looked for only when
    -- there is such a circuit: the statement joins the running steps)
    IF EXISTS (SELECT 1 FROM event_store.saga_circuit_state x WHERE x.state = 'open' AND x.retry_at <= now()) THEN
        UPDATE event_store.saga_circuit_state x
           SET state = 'half_open', updated_at = now(),
               trial_saga = (SELECT st.saga_id FROM event_store.saga_steps st
                               JOIN event_store.sagas s ON s.saga_id = st.saga_id
                              WHERE s.saga_type = x.saga_type AND st.name = x.step AND s.status = 'running'
                                AND st.status = 'running' AND st.kind = 'external' AND st.lease_owner IS NULL
                              ORDER BY st.updated_at LIMIT 1)
         WHERE x.state = 'open' AND x.retry_at <= now()
           AND EXISTS (SELECT 1 FROM event_store.saga_steps st JOIN event_store.sagas s ON s.saga_id = st.saga_id
                        WHERE s.saga_type = x.saga_type AND st.name = x.step AND s.status = 'running'
                          AND st.status = 'running' AND st.kind = 'external' AND st.lease_owner IS NULL);
    END IF;
    RETURN QUERY
    -- The claimable steps in the order of their index, each checked against
    -- its saga by the saga's key as it comes, then updated by their row
    -- addresses (a join could be planned to scan all the sagas or steps)
    WITH c AS (
        SELECT st.ctid AS tid
          FROM event_store.saga_steps st
         WHERE st.lease_owner IS NULL
           AND ((st.status = 'running' AND st.kind = 'external')
                OR (st.status = 'compensating' AND st.comp_kind = 'external'))
           AND (step_names IS NULL OR st.name = ANY (step_names))
           AND CASE WHEN st.status = 'running' THEN
                    (SELECT s.status = 'running'
                            AND (st.circuit_failures IS NULL
                                 OR NOT EXISTS (SELECT 1 FROM event_store.saga_circuit_state c
                                                 WHERE c.saga_type = s.saga_type AND c.step = st.name
                                                   AND c.state <> 'closed'
                                                   AND c.trial_saga IS DISTINCT FROM st.saga_id))
                       FROM event_store.sagas s WHERE s.saga_id = st.saga_id)
                ELSE (st.next_attempt_at IS NULL OR st.next_attempt_at <= now())
                     AND (SELECT s.status = 'compensating' FROM event_store.sagas s WHERE s.saga_id = st.saga_id)
               END
         ORDER BY st.updated_at, st.saga_id, st.step_no
         LIMIT max_count
           FOR UPDATE OF st SKIP LOCKED),
    u AS (
        UPDATE event_store.saga_steps st
           SET lease_owner = worker, lease_expires_at = now() + lease, updated_at = now(),
               deadline = CASE WHEN st.status = 'compensating' THEN now() + st.comp_timeout ELSE st.deadline END,
               attempts = st.attempts + CASE WHEN st.status = 'running' THEN 1 ELSE 0 END,
               comp_attempts = st.comp_attempts + CASE WHEN st.status = 'compensating' THEN 1 ELSE 0 END
         WHERE st.ctid = ANY (ARRAY(SELECT c.tid FROM c))
        RETURNING st.*)
    SELECT u.saga_id, s.saga_type, u.name,
           CASE WHEN u.status = 'running' THEN 'action' ELSE 'compensation' END,
           CASE WHEN u.status = 'running' THEN u.attempts ELSE u.comp_attempts END,
           CASE WHEN u.status = 'running' THEN s.data ELSE u.result END
      FROM u CROSS JOIN LATERAL (SELECT x.saga_type, x.data FROM event_store.sagas x
                                  WHERE x.saga_id = u.saga_id LIMIT 1) s
     ORDER BY u.updated_at, u.saga_id, u.step_no;
END $$;

CREATE OR REPLACE FUNCTION event_store._saga_tick(p_limit int, OUT moved int, OUT more boolean)
    LANGUAGE plpgsql AS $$
DECLARE
    r record;
    x record;
    handled int := 0;
    step_moved int;
    due boolean;
BEGIN
    moved := 0;
    more := false;
    PERFORM event_store._check_writable('saga_tick()');
    -- nothing due (the worker is woken when a retry or a timer is announced,
    -- before it is due): one look through the timers' indexes, no more
    EXECUTE $q$SELECT EXISTS (SELECT 1 FROM event_store.sagas s
                                WHERE s.status IN ('running', 'compensating') AND s.deadline <= now())
                   OR EXISTS (SELECT 1 FROM event_store.saga_steps st
                               WHERE st.status IN ('pending', 'running', 'compensating')
                                 AND LEAST(st.deadline, st.lease_expires_at, st.next_attempt_at, st.due_at) <= now())
                   OR EXISTS (SELECT 1 FROM event_store.saga_steps st
                               WHERE st.status = 'pending' AND (st.slot_wait OR st.circuit_wait))$q$ INTO due;
    IF NOT due THEN
        RETURN;
    END IF;
    -- (each query is planned when it runs: the worker's session lasts, and a
    -- plan kept from when the tables were small would read them whole)
    FOR r IN EXECUTE $q$SELECT s.saga_id FROM event_store.sagas s
              WHERE s.status = 'running' AND s.deadline <= now() ORDER BY s.deadline$q$ LOOP
        IF handled >= p_limit THEN
            more := true;
            RETURN;
        END IF;
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            SELECT s.status, s.deadline INTO x FROM event_store.sagas s WHERE s.saga_id = r.saga_id;
            CONTINUE WHEN x.status IS DISTINCT FROM 'running' OR NOT x.deadline <= now();
            PERFORM event_store._saga_event(r.saga_id, 'SagaTimedOut', '{}');
            PERFORM event_store._saga_fail(r.saga_id, 'saga timed out');
            moved := moved + 1 + event_store._saga_advance(r.saga_id);
            handled := handled + 1;
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    -- (the steps' timers are found through their index; the re-checks read
    -- the step by its key, so that each costs the same however many are due)
    FOR r IN EXECUTE $q$SELECT st.saga_id, st.name, st.status, st.deadline, st.lease_expires_at
               FROM event_store.saga_steps st
              WHERE st.status IN ('running', 'compensating')
                AND LEAST(st.deadline, st.lease_expires_at, st.next_attempt_at, st.due_at) <= now()
                AND (st.deadline <= now() OR st.lease_expires_at <= now())
              ORDER BY st.updated_at$q$ LOOP
        IF handled >= p_limit THEN
            more := true;
            RETURN;
        END IF;
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            -- re-check under the lock: the step may have completed meanwhile
            SELECT st.status, st.deadline, st.lease_expires_at INTO x
              FROM event_store.saga_steps st WHERE st.saga_id = r.saga_id AND st.name = r.name;
            CONTINUE WHEN x.status IS DISTINCT FROM r.status
                       OR NOT (x.deadline <= now() OR x.lease_expires_at <= now());
            IF r.status = 'running' THEN
                -- an external step nobody claimed still used up an attempt by timing out
                UPDATE event_store.saga_steps SET attempts = attempts + 1
                 WHERE saga_id = r.saga_id AND name = r.name AND kind = 'external' AND lease_owner IS NULL;
                PERFORM event_store._saga_step_failed(r.saga_id, r.name,
                    CASE WHEN r.deadline <= now() THEN 'step timed out' ELSE 'lease expired' END, true);
            ELSE
                PERFORM event_store._saga_comp_failed(r.saga_id, r.name,
                    CASE WHEN r.deadline <= now() THEN 'compensation timed out' ELSE 'lease expired' END, true);
            END IF;
            moved := moved + 1 + event_store._saga_advance(r.saga_id);
            handled := handled + 1;
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    -- timer steps that are due complete
    FOR r IN EXECUTE $q$SELECT st.saga_id, st.name FROM event_store.saga_steps st
              WHERE st.status = 'running'
                AND LEAST(st.deadline, st.lease_expires_at, st.next_attempt_at, st.due_at) <= now()
                AND st.due_at <= now()
              ORDER BY st.due_at$q$ LOOP
        IF handled >= p_limit THEN
            more := true;
            RETURN;
        END IF;
        BEGIN
            step_moved := event_store._saga_timer_due(r.saga_id, r.name);
            CONTINUE WHEN step_moved = 0;
            moved := moved + step_moved;
            handled := handled + 1;
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    -- due retries, and the steps that wait for a concurrency slot or a circuit
    FOR r IN EXECUTE $q$SELECT st.saga_id FROM event_store.saga_steps st
              WHERE st.status IN ('pending', 'compensating')
                AND LEAST(st.deadline, st.lease_expires_at, st.next_attempt_at, st.due_at) <= now()
                AND st.next_attempt_at <= now()
             UNION
             SELECT st.saga_id FROM event_store.saga_steps st
              WHERE st.status = 'pending' AND (st.slot_wait OR st.circuit_wait)$q$ LOOP
        IF handled >= p_limit THEN
            more := true;
            RETURN;
        END IF;
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            moved := moved + event_store._saga_advance(r.saga_id);
            handled := handled + 1;
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
END $$;

CREATE OR REPLACE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE sql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT moved FROM event_store._saga_tick(NULL)
$$;

REVOKE ALL ON FUNCTION event_store._saga_wake_for(timestamptz), event_store._saga_tick(int),
    event_store._saga_timer_due(uuid, text) FROM PUBLIC;

------------------------------------------------------------------------------
-- Large stores: archived position ranges (archive_events)
------------------------------------------------------------------------------
CREATE TABLE event_store.archived_ranges (
    first_position bigint      NOT NULL PRIMARY KEY,
    end_position   bigint      NOT NULL,
    relation       name        NOT NULL UNIQUE,
    archived_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (first_position OPERATOR(pg_catalog.<) end_position)
);
COMMENT ON TABLE event_store.archived_ranges IS
    'The archived ranges of positions: the events at positions [first_position, end_position) are in table event_store.<relation>; written only by event_store.archive_events()';
SELECT pg_catalog.pg_extension_config_dump('event_store.archived_ranges', '');
REVOKE ALL ON TABLE event_store.archived_ranges FROM PUBLIC;

-- The version of each stream's newest archived event: append() reads a
-- stream's version here when the hot table holds none of its events, with
-- one probe, rather than descending the stream index of every range.
-- archive_events() writes it with each range it makes; removals leave it
-- right, since a stream's newest event is never removed.
CREATE TABLE event_store.archived_streams (
    stream_id      text   COLLATE "C" NOT NULL,
    stream_version bigint NOT NULL,
    CONSTRAINT archived_streams_pkey PRIMARY KEY (stream_id) INCLUDE (stream_version)
);
COMMENT ON TABLE event_store.archived_streams IS
    'The version of the newest archived event of each stream with archived events, which append() reads when the hot table holds none of the stream''s events; written only by event_store.archive_events()';
SELECT pg_catalog.pg_extension_config_dump('event_store.archived_streams', '');
REVOKE ALL ON TABLE event_store.archived_streams FROM PUBLIC;

-- Every write of the ranges (archive_events(), pg_restore's COPY) makes the
-- other sessions read them again.
CREATE FUNCTION event_store._archived_ranges_write() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_archived_ranges_write';
REVOKE ALL ON FUNCTION event_store._archived_ranges_write() FROM PUBLIC;
CREATE TRIGGER archived_ranges_write
    BEFORE INSERT OR UPDATE OR DELETE ON event_store.archived_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._archived_ranges_write();
ALTER TABLE event_store.archived_ranges ENABLE ALWAYS TRIGGER archived_ranges_write;

CREATE FUNCTION event_store.archive_events(before_position bigint, tablespace name)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_archive_events';
COMMENT ON FUNCTION event_store.archive_events(bigint, name) IS
    'Move the events below a position (whole ranges) to a tablespace, pg_default to bring them back; reads see them as before; returns the number of events moved';
REVOKE ALL ON FUNCTION event_store.archive_events(bigint, name) FROM PUBLIC;
