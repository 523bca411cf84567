--
-- saga_timers: timer steps ("delay", "until") -- their validation, their
-- due time (saga_state's "waitingFor"), completion by saga_tick() once due
-- and not before, at once when due already; a malformed or missing "until"
-- fails the step; a failing saga cancels its running timer.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS st CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE SCHEMA st;
CREATE TABLE st.calls (n serial PRIMARY KEY, saga_id uuid, fn text, at timestamptz);
CREATE FUNCTION st.remind(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO st.calls (saga_id, fn, at) VALUES (saga_id, 'remind', clock_timestamp()) RETURNING '{"reminded": true}'::jsonb
$$;
CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
CREATE FUNCTION pg_temp.events(id uuid) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(event_type, ', ' ORDER BY stream_version)
      FROM event_store.read_stream('saga-' || id)
$$;
CREATE FUNCTION pg_temp.steps(id uuid) RETURNS TABLE(name text, kind text, status text, due boolean, last_error text)
LANGUAGE sql AS $$
    SELECT name, kind, status, due_at IS NOT NULL, last_error
      FROM event_store.saga_steps WHERE saga_id = id ORDER BY step_no
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

--
-- define_saga checks timer steps strictly (22023, naming the step)
--
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "1 second", "until": "at"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "1 second", "action": "st.remind"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "1 second", "compensation": "st.remind"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "until": "at", "complete_on": "X"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "1 second", "saga": "bad"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "soon"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": 5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": null}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "delay": "-1 second"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "until": 5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "until": ""}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "t", "waitfor": "1 second"}]}')$$);
SELECT count(*) AS defined FROM event_store.saga_definitions;

-- a reminder: wait, then remind
SELECT event_store.define_saga('reminder', $${"steps": [
    {"name": "wait", "delay": "300 milliseconds"},
    {"name": "remind", "action": "st.remind"}]}$$);
SELECT x ->> 'name' AS name, x ->> 'kind' AS kind, x ->> 'delay' AS delay, x ->> 'comp_kind' AS comp_kind
  FROM event_store.saga_definitions d, jsonb_array_elements(d.steps) x WHERE saga_type = 'reminder';
SELECT event_store.start_saga('reminder', '{}', pg_temp.sid(1));
SELECT * FROM pg_temp.steps(pg_temp.sid(1));
-- saga_state shows the due time the step waits for
SELECT s -> 'steps' -> 0 ->> 'waitingFor' = event_store._iso8601(st.due_at) AS waiting_for_due,
       st.due_at - st.updated_at AS delay,
       s -> 'steps' -> 0 -> 'attempts' AS attempts, s -> 'steps' -> 0 -> 'nextAttemptAt' AS next_attempt_at,
       s -> 'steps' -> 1 -> 'waitingFor' AS second_waits_for
  FROM event_store.saga_state(pg_temp.sid(1)) s, event_store.saga_steps st
 WHERE st.saga_id = pg_temp.sid(1) AND st.name = 'wait';
-- not due yet: a tick does nothing
SELECT event_store.saga_tick();
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);
-- once due, a tick completes it and runs the next step
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(1)) = 'completed'$$);
SELECT status, data FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);
SELECT c.at >= st.due_at AS not_before_due
  FROM st.calls c, event_store.saga_steps st
 WHERE c.saga_id = pg_temp.sid(1) AND st.saga_id = c.saga_id AND st.name = 'wait';
SELECT pg_temp.events(pg_temp.sid(1));
SELECT s -> 'steps' -> 0 -> 'waitingFor' AS waiting_for
  FROM event_store.saga_state(pg_temp.sid(1)) s;

-- a delay of nothing completes at once
SELECT event_store.define_saga('now', '{"steps": [{"name": "wait", "delay": "0 seconds"}, {"name": "remind", "action": "st.remind"}]}');
SELECT event_store.start_saga('now', '{}', pg_temp.sid(2));
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(2);

--
-- "until": the due time is in the saga's data
--
SELECT event_store.define_saga('deadline', $${"steps": [
    {"name": "wait", "until": "remind_at"},
    {"name": "remind", "action": "st.remind"}]}$$);
-- in the past: at once
SELECT event_store.start_saga('deadline', '{"remind_at": "2020-01-31T12:00:00Z"}', pg_temp.sid(3));
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(3);
-- far ahead: waits; its due time is the one in the data
SELECT event_store.start_saga('deadline', '{"remind_at": "2099-06-30T08:30:00+02:00"}', pg_temp.sid(4));
SELECT status, (SELECT s -> 'steps' -> 0 ->> 'waitingFor' FROM event_store.saga_state(pg_temp.sid(4)) s) AS waiting_for
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(4);
SELECT event_store.saga_tick();
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(4);
-- soon: completes by a tick once due
SELECT event_store.start_saga('deadline',
    jsonb_build_object('remind_at', to_char(clock_timestamp() + interval '200 milliseconds', 'YYYY-MM-DD"T"HH24:MI:SS.USOF')),
    pg_temp.sid(5));
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(5)) = 'completed'$$);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(5);
-- missing, not a string, not ISO 8601, not a time: the step fails (not
-- retryable), the saga compensates
SELECT event_store.start_saga('deadline', '{}', pg_temp.sid(6));
SELECT event_store.start_saga('deadline', '{"remind_at": 20200131}', pg_temp.sid(7));
SELECT event_store.start_saga('deadline', '{"remind_at": "tomorrow"}', pg_temp.sid(8));
SELECT event_store.start_saga('deadline', '{"remind_at": "2020-02-31T12:00:00Z"}', pg_temp.sid(9));
SELECT saga_id, status, last_error FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(6), pg_temp.sid(7), pg_temp.sid(8), pg_temp.sid(9))
 ORDER BY saga_id;

--
-- a saga that fails while its timer runs: the timer is cancelled
--
SELECT event_store.define_saga('race', $${"steps": [
    {"name": "wait", "delay": "200 milliseconds", "group": 1},
    {"name": "call", "group": 1},
    {"name": "remind", "action": "st.remind"}]}$$);
SELECT event_store.start_saga('race', '{}', pg_temp.sid(10));
SELECT event_store.fail_saga_step(pg_temp.sid(10), 'call', 'no answer', false);
SELECT pg_sleep(0.3);
SELECT event_store.saga_tick();
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(10);
SELECT * FROM pg_temp.steps(pg_temp.sid(10));
SELECT count(*) AS reminded FROM st.calls WHERE saga_id = pg_temp.sid(10);

-- a timer step of a saga started before a redefinition keeps its delay
SELECT event_store.start_saga('reminder', '{}', pg_temp.sid(11));
SELECT event_store.define_saga('reminder', '{"steps": [{"name": "wait", "delay": "1 hour"}]}');
SELECT delay FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(11) AND name = 'wait';
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(11)) = 'completed'$$);
SELECT status, version FROM event_store.sagas WHERE saga_id = pg_temp.sid(11);

-- clean up
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA st CASCADE;
RESET client_min_messages;
