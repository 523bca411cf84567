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

-- Append a transition to the saga's own stream
CREATE FUNCTION event_store._saga_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE sql AS $$
    SELECT event_store.append('saga-' || p_saga::text,
                              jsonb_build_object('type', p_type,
                                                 'data', jsonb_build_object('saga_id', p_saga) || COALESCE(p_data, '{}')));
$$;

-- Call a step function (saga_id uuid, data jsonb) RETURNS jsonb as run_as
CREATE FUNCTION event_store._saga_call(fn regprocedure, run_as regrole, p_saga uuid, p_data jsonb)
    RETURNS jsonb
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_call';

-- to_regprocedure() in a given search_path
CREATE FUNCTION event_store._saga_regprocedure(signature text, search_path text) RETURNS regprocedure
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_saga_regprocedure';

-- Backoff before attempt n+1: base doubling per attempt (at most a day), with
-- +-25% jitter.  Never zero (a base below 10 ms, possible in definitions made
-- before that minimum, counts as 10 ms): a retry is due after now(), the
-- start of the transaction, so it never runs in the call that failed.
CREATE FUNCTION event_store._saga_backoff(base interval, attempts int) RETURNS interval
    LANGUAGE sql AS $$
    SELECT least(greatest(base, interval '10 milliseconds')
                 * power(2, least(greatest(attempts - 1, 0), 40))::double precision,
                 interval '1 day') * (0.75 + random() * 0.5)
$$;

-- The step completed with a result
CREATE FUNCTION event_store._saga_step_done(p_saga uuid, p_step text, p_result jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.saga_steps
       SET status = 'completed', result = p_result, lease_owner = NULL, lease_expires_at = NULL,
           deadline = NULL, next_attempt_at = NULL, updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    UPDATE event_store.sagas
       SET data = CASE WHEN jsonb_typeof(p_result) = 'object' THEN data || p_result ELSE data END,
           updated_at = now()
     WHERE saga_id = p_saga;
    PERFORM event_store._saga_event(p_saga, 'SagaStepCompleted',
                                    jsonb_build_object('step', p_step, 'result', p_result));
END $$;

-- The saga fails: compensate what completed
CREATE FUNCTION event_store._saga_fail(p_saga uuid, p_reason text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
BEGIN
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
            UPDATE event_store.saga_steps SET next_attempt_at = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
        END IF;
    END LOOP;
    PERFORM event_store._saga_event(p_saga, 'SagaCompensating', jsonb_build_object('reason', p_reason));
END $$;

-- A step attempt failed: retry with backoff, or fail the saga
CREATE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
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
           next_attempt_at = CASE WHEN retry THEN now() + event_store._saga_backoff(st.backoff, st.attempts) END,
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

-- A compensation attempt failed: retry, or park the saga for a person
CREATE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF p_retryable AND st.comp_attempts < st.max_attempts THEN
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL,
               next_attempt_at = now() + event_store._saga_backoff(st.backoff, st.comp_attempts),
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
    chain uuid[] := '{}';
    cur uuid := p_saga;
    id uuid;
BEGIN
    WHILE cur IS NOT NULL LOOP
        chain := cur || chain;
        SELECT parent_saga_id INTO cur FROM event_store.sagas WHERE saga_id = cur;
    END LOOP;
    FOREACH id IN ARRAY chain LOOP
        PERFORM 1 FROM event_store.sagas WHERE saga_id = id FOR UPDATE;
    END LOOP;
    RETURN EXISTS (SELECT 1 FROM event_store.sagas WHERE saga_id = p_saga);
END $$;

-- Run whatever is ready: the next group's steps, compensations, the end
CREATE FUNCTION event_store._saga_advance(p_saga uuid) RETURNS int
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

