-- The step loop (_saga_advance), a step's completion (_saga_step_done) and
-- the appending of a transition to the saga's own stream saga-<saga_id>
-- (_saga_event) are C (src/saga_run.c): the loop calls local steps and
-- compensations directly, as the saga type's owner with its search_path,
-- each in a subtransaction (an error is a failed attempt).  The rarer
-- transitions below are PL/pgSQL, called by the loop and by the API
-- functions; they call back into the loop.

-- Run whatever is ready: the next group's steps, compensations, the end;
-- returns how many steps moved (plus one when the saga ended)
CREATE FUNCTION event_store._saga_advance(p_saga uuid) RETURNS int
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_advance';

-- Append a transition to the saga's own stream: data is {"saga_id": p_saga} || p_data
CREATE FUNCTION event_store._saga_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_event';

-- to_regprocedure() in a given search_path
CREATE FUNCTION event_store._saga_regprocedure(signature text, search_path text) RETURNS regprocedure
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_saga_regprocedure';

-- The step completed with a result: kept as its compensation data, merged
-- into the saga's data (an object), SagaStepCompleted
CREATE FUNCTION event_store._saga_step_done(p_saga uuid, p_step text, p_result jsonb) RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_step_done';

-- Is the saga past its pivot (a pivot step completed)?  Then it recovers
-- forward: nothing is compensated any more.
CREATE FUNCTION event_store._saga_past_pivot(p_saga uuid) RETURNS boolean
    LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM event_store.saga_steps
                    WHERE saga_id = p_saga AND pivot AND status = 'completed')
$$;

-- The saga fails: compensate what completed
CREATE FUNCTION event_store._saga_fail(p_saga uuid, p_reason text) RETURNS void
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

-- A step attempt failed: retry with backoff, or fail the saga (past its
-- pivot: leave the step failed, for a person, and the saga running)
CREATE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
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

-- A timer step started: it is due after its delay, or at the time its
-- saga data holds under its key (an ISO 8601 timestamp; a missing or
-- malformed one fails the step); due already, it completes at once.
CREATE FUNCTION event_store._saga_timer_start(p_saga uuid, p_step int, p_data jsonb) RETURNS void
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

-- Wake the background worker when the transaction commits (it then runs
-- saga_tick and waits for the next due timer step)
CREATE FUNCTION event_store._saga_wake_worker() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_wake_worker';

-- saga_tick found a timer step due: lock the saga (and its ancestors), and
-- if the step still runs and is due, complete it and run what is ready;
-- returns what moved (0: nothing)
CREATE FUNCTION event_store._saga_timer_due(p_saga uuid, p_step text) RETURNS int
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_timer_due';

-- Something is due at p_due (a timer step, a retry): when that is before
-- the worker's next round, wake it at commit, so that it learns the due time
-- and waits for it on its latch rather than for the round
CREATE FUNCTION event_store._saga_wake_for(p_due timestamptz) RETURNS void
    LANGUAGE sql AS $$
    SELECT event_store._saga_wake_worker()
     WHERE p_due < now() + COALESCE(current_setting('event_store.naptime', true), '1s')::interval
$$;

-- A compensation attempt failed: retry, or park the saga for a person
CREATE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
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

-- A nested saga reached an end: move its parent step on
CREATE FUNCTION event_store._saga_child_finished(p_parent uuid, p_step text, p_child uuid)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c record;
    st record;
BEGIN
    SELECT * INTO c FROM event_store.sagas WHERE saga_id = p_child;
    PERFORM 1 FROM event_store.sagas WHERE saga_id = p_parent FOR UPDATE;
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_parent AND name = p_step;
    IF st.child_saga_id IS DISTINCT FROM p_child THEN
        RETURN;
    END IF;
    IF st.status = 'running' THEN
        IF c.status = 'completed' THEN
            PERFORM event_store._saga_step_done(p_parent, p_step, c.data);
        ELSE
            PERFORM event_store._saga_step_failed(p_parent, p_step,
                format('nested saga %s ended %s', p_child, c.status), false);
        END IF;
    ELSIF st.status = 'compensating' THEN
        IF c.status = 'compensated' THEN
            UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
             WHERE saga_id = p_parent AND name = p_step;
            PERFORM event_store._saga_event(p_parent, 'SagaStepCompensated', jsonb_build_object('step', p_step));
        ELSIF c.status = 'compensation_failed' THEN
            PERFORM event_store._saga_comp_failed(p_parent, p_step,
                format('nested saga %s ended compensation_failed', p_child), false);
        END IF;
    END IF;
    PERFORM event_store._saga_advance(p_parent);
END $$;

-- Start a compensation of a completed nested saga
CREATE FUNCTION event_store._saga_compensate_child(p_child uuid) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.sagas SET status = 'compensating', last_error = 'parent saga compensating',
           finished_at = NULL, updated_at = now()
     WHERE saga_id = p_child AND status = 'completed';
    IF FOUND THEN
        PERFORM event_store._saga_event(p_child, 'SagaCompensating',
                                        jsonb_build_object('reason', 'parent saga compensating'));
    END IF;
    PERFORM event_store._saga_advance(p_child);
END $$;

-- Lock a saga and its ancestors, root first.  Every entry point that may
-- touch a parent and a child (nested sagas) locks in this order, so a child's
-- completion and its parent's timeout never deadlock.
CREATE FUNCTION event_store._saga_lock_tree(p_saga uuid) RETURNS boolean
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

-- A lock of the extension's own (out of reach of the SQL advisory-lock
-- functions) on a concurrency slot name, held to the end of the
-- transaction; only tried: false when another transaction holds it
CREATE FUNCTION event_store._saga_lock_slot(p_slot text) RETURNS boolean
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_lock_slot';

-- May the step start, under its "concurrency"?  At most that many
-- instances of the step (of the saga type, per value of its
-- "concurrency_key" in the saga data) run at once; the slot's lock
-- serialises the check with the other sagas' starts until commit (a slot
-- whose lock another transaction holds counts as busy: never waited for,
-- so never a deadlock).  A step that must wait stays pending, marked
-- slot_wait, without an attempt: saga_tick tries it again.
CREATE FUNCTION event_store._saga_take_slot(p_saga uuid, p_step int) RETURNS boolean
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

-- A step's attempt ended (ok: completed) under its "circuit": a success
-- closes the circuit; a failure counts, and the n-th in a row (or a failed
-- half-open trial) opens it for the cooldown
CREATE FUNCTION event_store._saga_circuit_result(p_saga uuid, p_step text, p_ok boolean) RETURNS void
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

-- May the step start, under its "circuit"?  Closed: yes.  Open: no, until
-- its cooldown passed; then this instance is the half-open trial (one at a
-- time).  A step that must wait stays pending, marked circuit_wait,
-- without an attempt: saga_tick tries it again.
CREATE FUNCTION event_store._saga_circuit_gate(p_saga uuid, p_step int) RETURNS boolean
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
