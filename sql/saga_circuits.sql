--
-- saga_circuits: "circuit": {"failures": n, "cooldown": "<interval>"} --
-- after n failed attempts in a row of a step across sagas, no instance of
-- it runs or is handed out until the cooldown passed (the others wait,
-- without an attempt); then one trial decides: closed on success, open
-- again on failure.  Shown in saga_state and the view saga_circuits.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS sc CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE SCHEMA sc;
CREATE TABLE sc.down (down boolean NOT NULL);
INSERT INTO sc.down VALUES (true);
CREATE FUNCTION sc.call(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT down FROM sc.down) THEN
        RAISE EXCEPTION 'service down';
    END IF;
    RETURN '{"called": true}';
END $$;
CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
CREATE FUNCTION pg_temp.events(id uuid) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(event_type, ', ' ORDER BY stream_version)
      FROM event_store.read_stream('saga-' || id)
$$;
CREATE FUNCTION pg_temp.circuits() RETURNS TABLE(saga_type text, step text, state text, failures int, cooling boolean, waiting bigint)
LANGUAGE sql AS $$
    SELECT saga_type, step, state, failures, retry_at > now(), waiting FROM event_store.saga_circuits ORDER BY 1, 2
$$;
CREATE PROCEDURE pg_temp.tick_until(cond text)
LANGUAGE plpgsql AS $$
DECLARE
    ok boolean;
BEGIN
    FOR i IN 1 .. 1000 LOOP
        PERFORM event_store.saga_tick();
        COMMIT;
        EXECUTE 'SELECT ' || cond INTO ok;
        EXIT WHEN ok;
        PERFORM pg_sleep(0.01);
    END LOOP;
END $$;

-- define_saga checks "circuit" strictly (22023, naming the step)
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": 3}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 2}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 0, "cooldown": "1 second"}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": "2", "cooldown": "1 second"}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 2, "cooldown": "soon"}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 2, "cooldown": "0 seconds"}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 2, "cooldown": null}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "circuit": {"failures": 2, "cooldown": "1 second", "half_open": 1}}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "delay": "1 second", "circuit": {"failures": 2, "cooldown": "1 second"}}]}')$$);
SELECT count(*) AS defined FROM event_store.saga_definitions;

--
-- a local step behind a circuit: opens after 2 failures in a row
--
SELECT event_store.define_saga('calling', $${"steps": [
    {"name": "call", "action": "sc.call", "max_attempts": 1, "circuit": {"failures": 2, "cooldown": "300 milliseconds"}}]}$$);
SELECT event_store.start_saga('calling', '{}', pg_temp.sid(1));
SELECT * FROM pg_temp.circuits();
SELECT event_store.saga_state(pg_temp.sid(1)) -> 'steps' -> 0 -> 'circuit' AS circuit;
SELECT event_store.start_saga('calling', '{}', pg_temp.sid(2));
SELECT saga_id, status FROM event_store.sagas ORDER BY saga_id;
SELECT * FROM pg_temp.circuits();
SELECT pg_temp.events(pg_temp.sid(2));
-- open: a new instance waits, without an attempt
SELECT event_store.start_saga('calling', '{}', pg_temp.sid(3));
SELECT status, attempts, circuit_wait FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(3);
SELECT s -> 'steps' -> 0 -> 'waitingFor' AS waiting_for, s -> 'steps' -> 0 -> 'circuit' -> 'state' AS circuit,
       s -> 'steps' -> 0 -> 'circuit' -> 'failures' AS failures,
       (s -> 'steps' -> 0 -> 'circuit' ->> 'retryAt') IS NOT NULL AS retry_at
  FROM event_store.saga_state(pg_temp.sid(3)) s;
SELECT * FROM pg_temp.circuits();
-- the service is back; once the cooldown passed, the trial succeeds: closed
UPDATE sc.down SET down = false;
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(3)) = 'completed'$$);
SELECT status, attempts, circuit_wait FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(3);
SELECT pg_temp.events(pg_temp.sid(3));
SELECT * FROM pg_temp.circuits();
SELECT state, failures FROM event_store.saga_circuit_state;

-- a failed trial opens it again; the others go on waiting
UPDATE sc.down SET down = true;
SELECT event_store.start_saga('calling', '{}', pg_temp.sid(4 + i)) IS NOT NULL AS started FROM generate_series(0, 1) i;
SELECT * FROM pg_temp.circuits();
SELECT event_store.start_saga('calling', '{}', pg_temp.sid(6 + i)) IS NOT NULL AS started FROM generate_series(0, 1) i;
CALL pg_temp.tick_until($$(SELECT count(*) = 1 FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(6), pg_temp.sid(7)) AND status = 'compensated')$$);
SELECT count(*) FILTER (WHERE status = 'compensated') AS compensated, count(*) FILTER (WHERE status = 'running') AS waiting
  FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(6), pg_temp.sid(7));
SELECT * FROM pg_temp.circuits();

-- back again: the waiting one completes after the cooldown, the circuit closes
UPDATE sc.down SET down = false;
CALL pg_temp.tick_until($$(SELECT count(*) = 1 FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(6), pg_temp.sid(7)) AND status = 'completed')$$);
SELECT * FROM pg_temp.circuits();

--
-- an external step: an open circuit hands out no instance
--
SELECT event_store.define_saga('remote', $${"steps": [
    {"name": "call", "max_attempts": 3, "backoff": "10 milliseconds", "circuit": {"failures": 1, "cooldown": "200 milliseconds"}}]}$$);
SELECT event_store.start_saga('remote', '{}', pg_temp.sid(10 + i)) IS NOT NULL AS started FROM generate_series(0, 2) i;
SELECT saga_id, attempt FROM event_store.claim_saga_steps('w', 1);
SELECT event_store.fail_saga_step(pg_temp.sid(10), 'call', 'timeout');
SELECT * FROM pg_temp.circuits();
SELECT count(*) AS handed_out FROM event_store.claim_saga_steps('w', 10);
-- after the cooldown, one trial is handed out (the instance that waited longest)
SELECT pg_sleep(0.25);
SELECT saga_id, attempt FROM event_store.claim_saga_steps('w', 10);
SELECT * FROM pg_temp.circuits();
SELECT count(*) AS handed_out FROM event_store.claim_saga_steps('w', 10);
SELECT event_store.complete_saga_step(pg_temp.sid(11), 'call');
SELECT * FROM pg_temp.circuits();
-- closed: the rest is handed out (saga 10's retry once its backoff passed)
CALL pg_temp.tick_until($$(SELECT status = 'running' FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(10))$$);
SELECT saga_id, attempt FROM event_store.claim_saga_steps('w', 10) ORDER BY saga_id;

-- clean up
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA sc CASCADE;
RESET client_min_messages;
