-- Create a saga instance and run what is ready
CREATE FUNCTION event_store._saga_start(p_type text, p_data jsonb, p_id uuid, p_parent uuid, p_parent_step text)
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
CREATE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_start_saga';
COMMENT ON FUNCTION event_store.start_saga(text, jsonb, uuid) IS
    'Start a saga (idempotent on saga_id) and run its ready local steps; returns the saga id';

-- Lock a saga and find its step, or raise
CREATE FUNCTION event_store._saga_lock_step(p_saga uuid, p_step text) RETURNS event_store.saga_steps
    LANGUAGE plpgsql AS $$
DECLARE
    st event_store.saga_steps;
BEGIN
    IF p_saga IS NULL THEN
        PERFORM event_store._saga_bad('saga_id must not be null', NULL, '22004');
    END IF;
    IF p_step IS NULL OR p_step = '' THEN
        PERFORM event_store._saga_bad('step must not be null or empty', NULL,
                                      CASE WHEN p_step IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF NOT event_store._saga_lock_tree(p_saga) THEN
        PERFORM event_store._saga_bad(format('saga %s does not exist', p_saga));
    END IF;
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga %s has no step "%s"', p_saga, p_step));
    END IF;
    RETURN st;
END $$;

-- Report a step (or its external compensation) done: C (src/saga_run.c),
-- with the locking, checks and errors of fail_saga_step below
CREATE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE c
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS 'MODULE_PATHNAME', 'es_complete_saga_step';
COMMENT ON FUNCTION event_store.complete_saga_step(uuid, text, jsonb) IS
    'Report a step (or its external compensation) done; the result becomes its compensation data and is merged into the saga data';

CREATE FUNCTION event_store.fail_saga_step(saga_id uuid, step text, error text, retryable boolean DEFAULT true)
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
COMMENT ON FUNCTION event_store.fail_saga_step(uuid, text, text, boolean) IS
    'Report a step (or its external compensation) failed; retried with backoff while attempts remain and retryable';

CREATE FUNCTION event_store.claim_saga_steps(worker text, max_count int DEFAULT 10, step_names text[] DEFAULT NULL,
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
COMMENT ON FUNCTION event_store.claim_saga_steps(text, int, text[], interval) IS
    'Claim external saga steps (actions or compensations) for a worker under a lease; concurrent workers never get the same step';

-- Timers: saga and step timeouts, lease expiry, due retries
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

-- The work of saga_tick(): every due timer, or (p_limit) until p_limit
-- sagas moved on -- the background worker commits after each such batch,
-- so that a crowd of timers due at once does not wait for the last of
-- them, nor hold all their locks at once; more: some may be left.  (A saga
-- whose transition failed does not count: the batches always progress.)
-- Its callers pin the search_path (saga_tick() by its SET, the worker for
-- the transaction it calls it in).
CREATE FUNCTION event_store._saga_tick(p_limit int, OUT moved int, OUT more boolean)
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

CREATE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE sql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT moved FROM event_store._saga_tick(NULL)
$$;
COMMENT ON FUNCTION event_store.saga_tick() IS
    'Fire due saga timers (timeouts, lease expiry, retries, timer steps) and run ready local steps; the background worker calls it';

-- Event-driven steps: called by append() for an event with metadata.saga_id
-- whose type is some step's complete_on or fail_on
CREATE FUNCTION event_store._saga_on_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
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

-- ISO 8601 in UTC
CREATE FUNCTION event_store._iso8601(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

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
CREATE FUNCTION event_store.saga_state(saga_id uuid) RETURNS jsonb
    LANGUAGE c STABLE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_saga_state';
COMMENT ON FUNCTION event_store.saga_state(uuid) IS
    'A saga''s state: {"sagaId","sagaType","status","currentStep","startTime","steps":[...]}';

-- Operators: retry and resolve the sagas that need a person (saga_problems).
-- retry_saga and resolve_saga (C, src/saga.c) check that the caller has the
-- privileges of the saga's owner (the role that defined the version it runs
-- on) and pass it on, to be recorded in the saga's stream.

-- A fresh round of attempts for what stopped the saga: the compensations
-- that ran out (a nested step's child saga is retried in turn), or its
-- steps that failed past the pivot; false when nothing stopped it
CREATE FUNCTION event_store._saga_retry(p_saga uuid, p_by text) RETURNS boolean
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

-- Lock a saga (and its ancestors) for an operator, or raise
CREATE FUNCTION event_store._saga_lock_for_operator(p_saga uuid, p_what text) RETURNS event_store.sagas
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

-- The work of retry_saga()
CREATE FUNCTION event_store._retry_saga(saga_id uuid, p_by regrole) RETURNS void
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
CREATE FUNCTION event_store.retry_saga(saga_id uuid) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_retry_saga';
COMMENT ON FUNCTION event_store.retry_saga(uuid) IS
    'A fresh round of attempts for what stopped a saga: its compensation that failed, or its step that failed after the pivot (SagaRetried); needs the privileges of the saga''s owner';

-- The work of resolve_saga()
CREATE FUNCTION event_store._resolve_saga(saga_id uuid, status text, note text, p_by regrole) RETURNS void
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
CREATE FUNCTION event_store.resolve_saga(saga_id uuid, status text, note text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_resolve_saga';
COMMENT ON FUNCTION event_store.resolve_saga(uuid, text, text) IS
    'A person settles a saga that needs one as completed or compensated, the note recorded in its stream (SagaResolved); needs the privileges of the saga''s owner';

-- Internal functions are not for PUBLIC
REVOKE ALL ON FUNCTION event_store._saga_bad(text, text, text), event_store._saga_interval(jsonb, text),
    event_store._saga_function(text, text, regrole, text), event_store._saga_event(uuid, text, jsonb),
    event_store._saga_step_done(uuid, text, jsonb), event_store._saga_fail(uuid, text),
    event_store._saga_step_failed(uuid, text, text, boolean), event_store._saga_comp_failed(uuid, text, text, boolean),
    event_store._saga_child_finished(uuid, text, uuid), event_store._saga_compensate_child(uuid),
    event_store._saga_advance(uuid), event_store._saga_start(text, jsonb, uuid, uuid, text),
    event_store._saga_lock_step(uuid, text), event_store._saga_on_event(uuid, text, jsonb),
    event_store._saga_lock_tree(uuid), event_store._start_saga(text, jsonb, uuid, boolean),
    event_store._saga_state(uuid), event_store._saga_past_pivot(uuid),
    event_store._saga_timer_start(uuid, int, jsonb), event_store._saga_retry(uuid, text),
    event_store._saga_lock_for_operator(uuid, text), event_store._retry_saga(uuid, regrole),
    event_store._resolve_saga(uuid, text, text, regrole), event_store._saga_wake_worker(),
    event_store._saga_wake_for(timestamptz), event_store._saga_tick(int),
    event_store._saga_timer_due(uuid, text),
    event_store._saga_take_slot(uuid, int), event_store._saga_lock_slot(text),
    event_store._saga_circuit_gate(uuid, int), event_store._saga_circuit_result(uuid, text, boolean)
  FROM PUBLIC;


-- Diagrams

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
