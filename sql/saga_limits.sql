--
-- saga_limits: "compensation_timeout" (a local compensation that takes
-- longer fails its attempt and is rolled back; an external one claimed
-- for longer fails when saga_tick finds it past its time) and
-- "concurrency" / "concurrency_key" (at most n running instances of a
-- step across sagas, per key value; the others wait without an attempt,
-- shown in saga_state, and start when a slot frees).  Two sessions: the
-- isolation spec saga_concurrency.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS sl CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE SCHEMA sl;
CREATE TABLE sl.calls (n serial PRIMARY KEY, saga_id uuid, fn text);
CREATE TABLE sl.slow (seconds float8 NOT NULL);
INSERT INTO sl.slow VALUES (0.3);
CREATE FUNCTION sl.work(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$
    INSERT INTO sl.calls (saga_id, fn) VALUES (saga_id, 'work') RETURNING '{}'::jsonb
$$;
CREATE FUNCTION sl.undo(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sl.calls (saga_id, fn) VALUES (saga_id, 'undo');
    PERFORM pg_sleep(seconds) FROM sl.slow;
    RETURN '{}';
END $$;
CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
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
-- define_saga checks the keys strictly (22023, naming the step)
--
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": 0}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": 1.5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": "2"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": null}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency_key": "k"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": 1, "concurrency_key": 5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "concurrency": 1, "concurrency_key": ""}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "sl.work", "compensation_timeout": "1 second"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "complete_on": "X", "compensation_timeout": "1 second"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "delay": "1 second", "compensation_timeout": "1 second"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "compensation_timeout": "later"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "compensation_timeout": "0 seconds"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "compensation_timeout": null}]}')$$);
SELECT count(*) AS defined FROM event_store.saga_definitions;

--
-- compensation_timeout of a local compensation
--
SELECT event_store.define_saga('slow_undo', $${"steps": [
    {"name": "work", "action": "sl.work", "compensation": "sl.undo", "compensation_timeout": "100 milliseconds",
     "max_attempts": 2, "backoff": "10 milliseconds"},
    {"name": "ask"}]}$$);
SELECT event_store.start_saga('slow_undo', '{}', pg_temp.sid(1));
SELECT event_store.fail_saga_step(pg_temp.sid(1), 'ask', 'no', false);
-- the first attempt took too long: failed, and what it did is rolled back
SELECT name, status, comp_attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(1) ORDER BY step_no;
SELECT fn FROM sl.calls WHERE saga_id = pg_temp.sid(1) ORDER BY n;
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(1)) <> 'compensating'$$);
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);
-- fast enough, it counts
UPDATE sl.slow SET seconds = 0;
SELECT event_store.start_saga('slow_undo', '{}', pg_temp.sid(2));
SELECT event_store.fail_saga_step(pg_temp.sid(2), 'ask', 'no', false);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(2);
SELECT fn FROM sl.calls WHERE saga_id = pg_temp.sid(2) ORDER BY n;

--
-- compensation_timeout of an external compensation
--
SELECT event_store.define_saga('remote_undo', $${"steps": [
    {"name": "book", "compensation_timeout": "200 milliseconds", "max_attempts": 3, "backoff": "10 milliseconds"},
    {"name": "pay"}]}$$);
SELECT event_store.start_saga('remote_undo', '{}', pg_temp.sid(3));
SELECT step, kind FROM event_store.claim_saga_steps('w', step_names => ARRAY['book']);
SELECT event_store.complete_saga_step(pg_temp.sid(3), 'book');
SELECT step, kind FROM event_store.claim_saga_steps('w', step_names => ARRAY['pay']);
SELECT event_store.fail_saga_step(pg_temp.sid(3), 'pay', 'declined', false);
-- its compensation is claimed for an hour, but may take 200 ms
SELECT step, kind, attempt FROM event_store.claim_saga_steps('w', lease => '1 hour');
SELECT deadline - updated_at AS compensation_time FROM event_store.saga_steps
 WHERE saga_id = pg_temp.sid(3) AND name = 'book';
CALL pg_temp.tick_until($$(SELECT comp_attempts = 1 AND lease_owner IS NULL FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(3) AND name = 'book')$$);
SELECT status, comp_attempts, last_error, deadline FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(3) AND name = 'book';
-- a late report still settles it (the compensation was done after all)
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(3), 'book')$$) ~ '^no error' AS late_report_taken;
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(3);

--
-- concurrency: at most 2 running "call"s across sagas
--
SELECT event_store.define_saga('limited', $${"steps": [
    {"name": "prep", "action": "sl.work"},
    {"name": "call", "concurrency": 2, "max_attempts": 1}]}$$);
SELECT event_store.start_saga('limited', '{}', pg_temp.sid(10 + i)) IS NOT NULL AS started FROM generate_series(1, 3) i;
SELECT saga_id, status, attempts, slot_wait FROM event_store.saga_steps WHERE name = 'call' ORDER BY saga_id;
SELECT s -> 'currentStep' AS current, s -> 'steps' -> 1 -> 'waitingFor' AS waiting_for, s -> 'steps' -> 1 -> 'attempts' AS attempts
  FROM event_store.saga_state(pg_temp.sid(13)) s;
-- claims skip the waiting one; ticks neither start it nor count an attempt
SELECT saga_id, step, attempt FROM event_store.claim_saga_steps('w') ORDER BY saga_id;
SELECT event_store.saga_tick() >= 0 AS ticked;
SELECT event_store.saga_tick() >= 0 AS ticked;
SELECT saga_id, status, attempts, slot_wait FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(13) AND name = 'call';
-- a slot frees (a completion, or a failure): the next tick starts it
SELECT event_store.fail_saga_step(pg_temp.sid(11), 'call', 'busy', false);
SELECT event_store.saga_tick() > 0 AS started;
SELECT saga_id, status, attempts, slot_wait FROM event_store.saga_steps WHERE name = 'call' ORDER BY saga_id;
SELECT saga_id, step, attempt FROM event_store.claim_saga_steps('w') ORDER BY saga_id;
SELECT s -> 'steps' -> 1 -> 'waitingFor' AS waiting_for FROM event_store.saga_state(pg_temp.sid(13)) s;

-- concurrency_key: one running "charge" per customer
SELECT event_store.define_saga('per_customer', $${"steps": [
    {"name": "charge", "concurrency": 1, "concurrency_key": "customer"}]}$$);
SELECT event_store.start_saga('per_customer', d, pg_temp.sid(20 + i)) IS NOT NULL AS started
  FROM (VALUES (1, '{"customer": "a"}'::jsonb), (2, '{"customer": "a"}'), (3, '{"customer": "b"}'),
               (4, '{}'), (5, '{"other": 1}')) v(i, d);
SELECT saga_id, status, slot_wait FROM event_store.saga_steps WHERE name = 'charge' ORDER BY saga_id;
-- a saga that fails while it waits gives up waiting
SELECT event_store.start_saga('per_customer', '{"customer": "a"}', pg_temp.sid(26));
UPDATE event_store.sagas SET deadline = now() - interval '1 second' WHERE saga_id = pg_temp.sid(26);
SELECT event_store.saga_tick() > 0 AS ticked;
SELECT s.status, st.status AS step_status, st.slot_wait
  FROM event_store.sagas s JOIN event_store.saga_steps st USING (saga_id) WHERE saga_id = pg_temp.sid(26);

-- clean up
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA sl CASCADE;
RESET client_min_messages;
