\echo Use "ALTER EXTENSION event_store UPDATE TO '0.3.0'" to load this file. \quit

-- event_store 0.2.0 -> 0.3.0
--
-- Afterwards the schema is the one a fresh CREATE EXTENSION of 0.3.0 makes:
-- the same objects, definitions, privileges and comments, and the same
-- columns in the same order (new columns of 0.3.0 come last in
-- event_store.sql, so they are added here).  Only the change is carried:
-- each section below names the part of event_store.sql it brings in.

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

CREATE OR REPLACE FUNCTION event_store.purge_snapshots(category text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE sql VOLATILE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
    SELECT event_store._check_writable('purge_snapshots()');
    WITH purged AS (
        DELETE FROM event_store.snapshots s
         USING event_store.aggregates a
         WHERE pg_catalog.split_part(s.stream_id, '-', 1) OPERATOR(pg_catalog.=) a.category
           AND s.state_version OPERATOR(pg_catalog.<>) a.state_version
           AND ($1 IS NULL OR a.category OPERATOR(pg_catalog.=) $1)
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM purged
$$;

CREATE OR REPLACE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    existing record;
    id uuid := COALESCE(start_saga.saga_id, gen_random_uuid());
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
