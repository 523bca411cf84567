--
-- sagas: define_saga validation; an order saga (local, retried and
-- external steps) through its happy path, a payment failure with retries and
-- compensation, and idempotent starts; parallel groups; compensation in
-- reverse group order, external compensations and compensations that run
-- out of attempts (saga_problems); event-driven and nested steps; step and
-- saga timeouts and lease expiry driven by saga_tick(); the saga's own
-- event stream; saga_state(); argument checks of every saga function.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS shop CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- sid(n): a fixed saga id, so ids can be shown
CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;

-- state(id): saga_state() with every ISO 8601 timestamp replaced by
-- "<iso8601>" and random (child) saga ids by "<uuid>"; a timestamp in any
-- other format stays as it is and shows up in the diff
CREATE FUNCTION pg_temp.mask_ts(v jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN jsonb_typeof(v) = 'string'
                 AND v #>> '{}' ~ '^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d(:?\d\d)?)$'
                THEN '"<iso8601>"' ELSE v END
$$;
CREATE FUNCTION pg_temp.state(id uuid) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_set(jsonb_set(s, '{startTime}', pg_temp.mask_ts(s -> 'startTime')),
                     '{steps}',
                     (SELECT coalesce(jsonb_agg(jsonb_set(e, '{timestamp}', pg_temp.mask_ts(e -> 'timestamp'))
                                                ORDER BY o), '[]')
                        FROM jsonb_array_elements(s -> 'steps') WITH ORDINALITY x(e, o)))
      FROM event_store.saga_state(id) s
$$;

-- steps(id): a saga's steps, compactly
CREATE FUNCTION pg_temp.steps(id uuid)
RETURNS TABLE(step_no int, name text, status text, attempts int, comp_attempts int, result jsonb)
LANGUAGE sql AS $$
    SELECT step_no, name, status, attempts, comp_attempts, result
      FROM event_store.saga_steps WHERE saga_id = id ORDER BY step_no
$$;

-- tick_until(cond): saga_tick() until the SQL condition cond holds, each
-- tick in a transaction of its own (timers compare with now(), the start of
-- the transaction), 10 ms apart, at most 1,000 times: for retries, which
-- never run in the call that failed but in a later tick once their backoff
-- passed.  What is expected is shown afterwards.
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

-- events(id): the event types of the stream saga-<id>, in order
CREATE FUNCTION pg_temp.events(id uuid) RETURNS text
LANGUAGE sql AS $$
    SELECT string_agg(event_type, ', ' ORDER BY stream_version)
      FROM event_store.read_stream('saga-' || id)
$$;

-- A small shop: stock, a log of every call of a step function (only calls
-- that succeeded stay logged: a failing call is rolled back), and counters
-- of calls that survive the rollback of a failing call.
CREATE SCHEMA shop;
CREATE TABLE shop.stock (sku text PRIMARY KEY, available int NOT NULL CHECK (available >= 0));
INSERT INTO shop.stock VALUES ('apple', 10), ('pear', 5);
CREATE TABLE shop.calls (n serial PRIMARY KEY, saga_id uuid NOT NULL, fn text NOT NULL, data jsonb);
CREATE SEQUENCE shop.charge_calls;
CREATE SEQUENCE shop.flaky_calls;

CREATE FUNCTION shop.reserve(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'reserve', data);
    UPDATE shop.stock SET available = available - (data ->> 'qty')::int WHERE sku = data ->> 'sku';
    RETURN jsonb_build_object('reservation', 'R-' || (data ->> 'order'), 'sku', data -> 'sku', 'qty', data -> 'qty');
END $$;
CREATE FUNCTION shop.release(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'release', data);
    UPDATE shop.stock SET available = available + (data ->> 'qty')::int WHERE sku = data ->> 'sku';
    RETURN '{}';
END $$;
-- declines amounts over 100
CREATE FUNCTION shop.charge(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM nextval('shop.charge_calls');
    IF (data ->> 'amount')::numeric > 100 THEN
        RAISE EXCEPTION 'card declined: % is over the limit', data ->> 'amount';
    END IF;
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'charge', data);
    RETURN jsonb_build_object('payment', 'P-' || (data ->> 'order'));
END $$;
CREATE FUNCTION shop.refund(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'refund', data);
    RETURN '{}';
END $$;
-- logs and returns its data (a generic local action or compensation)
CREATE FUNCTION shop.note(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'note', data);
    RETURN jsonb_build_object('noted', saga_id);
END $$;
CREATE FUNCTION shop.undo(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'undo', data);
    RETURN '{}';
END $$;
-- fails on its first two calls, then succeeds
CREATE FUNCTION shop.flaky(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    n bigint := nextval('shop.flaky_calls');
BEGIN
    IF n <= 2 THEN
        RAISE EXCEPTION 'flaky call % failed', n;
    END IF;
    INSERT INTO shop.calls (saga_id, fn, data) VALUES (saga_id, 'flaky', data);
    RETURN jsonb_build_object('flaky_call', n);
END $$;
-- always fails
CREATE FUNCTION shop.broken(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'broken for saga %', saga_id;
END $$;
-- wrong shapes
CREATE FUNCTION shop.returns_text(saga_id uuid, data jsonb) RETURNS text
LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION shop.wrong_args(data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data $$;

--
-- define_saga: validation
--
-- unknown action or compensation function, wrong signature or result
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "shop.nope"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "shop.note", "compensation": "shop.nope"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "shop.wrong_args"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "shop.returns_text"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "compensation": "shop.returns_text"}]}')$$);
-- step names: missing, empty, not a string, duplicate
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"action": "shop.note"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": ""}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": 7}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}')$$);
-- steps missing, empty, not an array, a step not an object
SELECT regress.try($$SELECT event_store.define_saga('bad', '{}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": []}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": {"name": "a"}}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": ["a"]}')$$);
-- bad intervals: step timeout, backoff, saga timeout
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "timeout": "soon"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "timeout": 30}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "timeout": "-1 second"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "backoff": "often"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "backoff": "-5 seconds"}]}')$$);
-- bounded work per call: a backoff below 10 ms (0 included) and more than
-- 100 attempts are refused, naming the step and the key (the limits pass:
-- see "bounded" below)
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "backoff": "0 seconds"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a"}, {"name": "b", "backoff": "9 milliseconds"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": 101}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": 2000, "backoff": "0 seconds"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a"}], "timeout": "1 fortnight"}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a"}], "timeout": true}')$$);
-- unknown keys, in the definition and in a step (typos must not pass)
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a"}], "timout": "1 hour"}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempt": 3}]}')$$);
-- bad group and max_attempts
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "group": 0}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "group": 1.5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "group": "1"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": 0}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": -2}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": 2.5}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "max_attempts": null}]}')$$);
-- function names, event types and nested saga types are non-empty strings
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": ""}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "complete_on": 1}]}')$$);
-- a nested saga of an undefined type; a nested step with an action
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "saga": "no_such_type"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "saga": "bad", "action": "shop.note"}]}')$$);
-- fail_on without complete_on or action
SELECT regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "fail_on": "Lost"}]}')$$);
-- nothing was defined
SELECT count(*) AS definitions FROM event_store.saga_definitions;

--
-- The order saga: reserve stock (local, with a compensation), charge the
-- payment (local, declines big amounts; retried after 10 ms), ship
-- (external: a shipping worker claims it; no compensation function, so its
-- compensation would be external too).
--
SELECT event_store.define_saga('order', $${
    "steps": [
      {"name": "reserve_inventory", "action": "shop.reserve", "compensation": "shop.release"},
      {"name": "charge_payment", "action": "shop.charge", "compensation": "shop.refund",
       "max_attempts": 3, "backoff": "10 milliseconds"},
      {"name": "ship"}
    ],
    "timeout": "1 hour"}$$);
-- stored with defaults filled in: group = position, max_attempts 3, backoff 1 second
SELECT x ->> 'name' AS name, x ->> 'kind' AS kind, x ->> 'grp' AS grp,
       x ->> 'action' AS action, x ->> 'compensation' AS compensation, x ->> 'comp_kind' AS comp_kind,
       x ->> 'max_attempts' AS max_attempts, x ->> 'backoff' AS backoff
  FROM event_store.saga_definitions d, jsonb_array_elements(d.steps) x
 WHERE saga_type = 'order';

-- happy path: start_saga runs the local steps at once; ship waits for a worker
SELECT event_store.start_saga('order', '{"order": "o-1", "sku": "apple", "qty": 2, "amount": 30}', pg_temp.sid(1));
SELECT jsonb_pretty(pg_temp.state(pg_temp.sid(1)));
SELECT * FROM pg_temp.steps(pg_temp.sid(1));
SELECT available FROM shop.stock WHERE sku = 'apple';
-- each local action saw the start data merged with the earlier results
SELECT fn, data FROM shop.calls WHERE saga_id = pg_temp.sid(1) ORDER BY n;
-- the shipping worker claims ship: the action sees the saga's current data
-- (start data merged with the completed steps' results)
SELECT saga_id, saga_type, step, kind, attempt, data
  FROM event_store.claim_saga_steps('shipper-1', step_names => ARRAY['ship']);
-- claimed under the default lease of 30 seconds: nobody else gets it
SELECT lease_owner, lease_expires_at - updated_at AS lease
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(1) AND name = 'ship';
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('shipper-2');
SELECT event_store.complete_saga_step(pg_temp.sid(1), 'ship', '{"tracking": "T-1"}');
-- completed; the result is ship's compensation data and is merged into the data
SELECT jsonb_pretty(pg_temp.state(pg_temp.sid(1)));
SELECT saga_type, status, start_data, data, last_error, finished_at IS NOT NULL AS finished
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);
-- its stream: one event per transition
SELECT stream_version, event_type, data
  FROM event_store.read_stream('saga-' || pg_temp.sid(1));

-- start_saga is idempotent on saga_id: same type and data return the saga
-- (nothing runs again) ...
SELECT event_store.start_saga('order', '{"order": "o-1", "sku": "apple", "qty": 2, "amount": 30}', pg_temp.sid(1));
SELECT event_store.stream_version('saga-' || pg_temp.sid(1)) AS saga_stream_version,
       (SELECT count(*) FROM shop.calls WHERE fn = 'reserve') AS reserve_calls;
-- ... different data or type is an error (22023)
SELECT regress.try($$SELECT event_store.start_saga('order', '{"order": "o-1", "sku": "apple", "qty": 3, "amount": 30}', pg_temp.sid(1))$$);
SELECT event_store.define_saga('other', '{"steps": [{"name": "only"}]}');
SELECT regress.try($$SELECT event_store.start_saga('other', '{"order": "o-1", "sku": "apple", "qty": 2, "amount": 30}', pg_temp.sid(1))$$);
-- without an id a fresh one is made every time
SELECT count(DISTINCT event_store.start_saga('other', '{}')) AS distinct_ids FROM generate_series(1, 3);
-- (finish them: claim and complete their only step)
SELECT count(event_store.complete_saga_step(c.saga_id, c.step)) AS completed
  FROM event_store.claim_saga_steps('w', step_names => ARRAY['only']) c;
SELECT status, count(*) FROM event_store.sagas WHERE saga_type = 'other' GROUP BY status;

-- payment failure: charge fails three times (max_attempts 3), the saga
-- compensates the reservation and ends compensated; refund never runs
-- (charge never completed).  start_saga runs charge once: a failed attempt
-- is never retried in the call that ran it, but by a later saga_tick()
SELECT setval('shop.charge_calls', 1, false);
SELECT event_store.start_saga('order', '{"order": "o-2", "sku": "pear", "qty": 4, "amount": 500}', pg_temp.sid(2));
SELECT nextval('shop.charge_calls') - 1 AS charge_calls;
SELECT status, attempts, last_error
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(2) AND name = 'charge_payment';
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(2)) <> 'running'$$);
SELECT nextval('shop.charge_calls') - 1 AS charge_calls;
SELECT jsonb_pretty(pg_temp.state(pg_temp.sid(2)));
SELECT * FROM pg_temp.steps(pg_temp.sid(2));
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(2);
-- the reservation was released: the compensation saw reserve's result
SELECT fn, data FROM shop.calls WHERE saga_id = pg_temp.sid(2) ORDER BY n;
SELECT available FROM shop.stock WHERE sku = 'pear';
SELECT stream_version, event_type, data
  FROM event_store.read_stream('saga-' || pg_temp.sid(2));
-- an ended saga has nothing to claim and nothing to complete or fail
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('shipper-1', step_names => ARRAY['ship']);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(2), 'ship')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(2), 'charge_payment', 'again')$$);

-- a retried local step driven by saga_tick(): flaky fails its first two
-- calls; with a backoff the retry waits for a tick once the backoff passed
SELECT event_store.define_saga('retry', $${
    "steps": [{"name": "flaky", "action": "shop.flaky", "max_attempts": 3, "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('retry', '{}', pg_temp.sid(3));
-- after the first failure the step waits for its retry (pending, attempt 1)
SELECT * FROM pg_temp.steps(pg_temp.sid(3));
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(3)) <> 'running'$$);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(3);
SELECT * FROM pg_temp.steps(pg_temp.sid(3));
SELECT pg_temp.events(pg_temp.sid(3));
-- bounded work per call: a step that always fails, with the most attempts
-- and the least backoff there are, is run once by start_saga, and once more
-- by each later saga_tick() (never twice in one call, even where an older
-- definition left a backoff of 0)
SELECT setval('shop.charge_calls', 1, false);
SELECT event_store.define_saga('bounded', $${
    "steps": [{"name": "charge", "action": "shop.charge", "max_attempts": 100, "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('bounded', '{"order": "o-b", "amount": 1000}', pg_temp.sid(42));
SELECT nextval('shop.charge_calls') - 1 AS charge_calls, pg_temp.events(pg_temp.sid(42));
UPDATE event_store.saga_steps SET backoff = '0', next_attempt_at = now() WHERE saga_id = pg_temp.sid(42);
SELECT event_store.saga_tick() AS ticked;
SELECT nextval('shop.charge_calls') - 2 AS charge_calls, pg_temp.events(pg_temp.sid(42));
SELECT status, attempts
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(42);
-- (end it: its next attempt is its last)
UPDATE event_store.saga_steps SET max_attempts = attempts, next_attempt_at = now() WHERE saga_id = pg_temp.sid(42);
SELECT event_store.saga_tick() AS ticked;
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(42);
-- a long backoff is honoured: the tick does not retry early
SELECT setval('shop.flaky_calls', 1, false);
SELECT event_store.define_saga('retry_later', $${
    "steps": [{"name": "flaky", "action": "shop.flaky", "backoff": "1 hour"}]}$$);
SELECT event_store.start_saga('retry_later', '{}', pg_temp.sid(4));
SELECT event_store.saga_tick();
SELECT name, status, attempts, last_error,
       next_attempt_at - now() BETWEEN interval '45 minutes' AND interval '75 minutes' AS waits_1h_25pct
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(4);
-- the backoff doubles per attempt (with +-25% jitter): an external step
-- with backoff 1 hour, its due retry time moved to now to get on
SELECT event_store.define_saga('backoff', '{"steps": [{"name": "remote", "backoff": "1 hour", "max_attempts": 3}]}');
SELECT event_store.start_saga('backoff', '{}', pg_temp.sid(25));
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['remote']);
SELECT event_store.fail_saga_step(pg_temp.sid(25), 'remote', 'busy');
SELECT status, attempts, next_attempt_at - now() BETWEEN interval '45 minutes' AND interval '75 minutes' AS waits_1h_25pct
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(25);
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['remote']);
UPDATE event_store.saga_steps SET next_attempt_at = now() WHERE saga_id = pg_temp.sid(25);
SELECT event_store.saga_tick();
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['remote']);
SELECT event_store.fail_saga_step(pg_temp.sid(25), 'remote', 'busy');
SELECT status, attempts, next_attempt_at - now() BETWEEN interval '90 minutes' AND interval '150 minutes' AS waits_2h_25pct
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(25);
UPDATE event_store.saga_steps SET next_attempt_at = now() WHERE saga_id = pg_temp.sid(25);
SELECT event_store.saga_tick();
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['remote']);
-- the third failure is the last attempt: no retry
SELECT event_store.fail_saga_step(pg_temp.sid(25), 'remote', 'busy');
SELECT s.status, st.status AS step_status, st.attempts, st.next_attempt_at
  FROM event_store.sagas s JOIN event_store.saga_steps st USING (saga_id) WHERE saga_id = pg_temp.sid(25);
SELECT string_agg(event_type || coalesce(' ' || (data ->> 'attempt') || ' retrying ' || (data ->> 'retrying'), ''), ', '
                  ORDER BY stream_version) AS events
  FROM event_store.read_stream('saga-' || pg_temp.sid(25));

--
-- Parallel groups: a and b (group 1) run together, c (group 2) waits for both
--
SELECT event_store.define_saga('parallel', $${
    "steps": [{"name": "a", "group": 1}, {"name": "b", "group": 1}, {"name": "c", "group": 2}]}$$);
SELECT event_store.start_saga('parallel', '{"p": 1}', pg_temp.sid(5));
SELECT * FROM pg_temp.steps(pg_temp.sid(5));
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w1', step_names => ARRAY['a', 'b', 'c']) ORDER BY step;
SELECT event_store.complete_saga_step(pg_temp.sid(5), 'a', '{"a": "done"}');
-- c still waits for b
SELECT name, status FROM pg_temp.steps(pg_temp.sid(5));
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['c']);
SELECT event_store.complete_saga_step(pg_temp.sid(5), 'b', '{"b": "done"}');
SELECT name, status FROM pg_temp.steps(pg_temp.sid(5));
-- c sees both results
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w1', step_names => ARRAY['a', 'b', 'c']);
SELECT event_store.complete_saga_step(pg_temp.sid(5), 'c');
-- a NULL result is kept as {}
SELECT status, data FROM event_store.sagas WHERE saga_id = pg_temp.sid(5);
SELECT name, status, result FROM pg_temp.steps(pg_temp.sid(5));
SELECT pg_temp.events(pg_temp.sid(5));
-- ungrouped steps run one after the other (a step without group gets its
-- position); explicit groups may skip numbers and need not follow the order
-- of the steps
SELECT event_store.define_saga('groups', $${
    "steps": [{"name": "last", "group": 30}, {"name": "first"}, {"name": "middle", "group": 7}, {"name": "with_first", "group": 2}]}$$);
SELECT event_store.start_saga('groups', '{}', pg_temp.sid(6));
SELECT name, grp, status FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(6) ORDER BY step_no;
SELECT event_store.complete_saga_step(pg_temp.sid(6), 'first');
SELECT name, status FROM pg_temp.steps(pg_temp.sid(6));
SELECT event_store.complete_saga_step(pg_temp.sid(6), 'with_first');
SELECT name, status FROM pg_temp.steps(pg_temp.sid(6));
SELECT event_store.complete_saga_step(pg_temp.sid(6), 'middle');
SELECT event_store.complete_saga_step(pg_temp.sid(6), 'last');
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(6);

--
-- Compensation in reverse group order, parallel groups together, external
-- compensations.  A trip: flight (local, compensated locally), hotel and car
-- (group 2, external: compensated externally), pay (external).
--
SELECT event_store.define_saga('trip', $${
    "steps": [
      {"name": "flight", "action": "shop.note", "compensation": "shop.undo"},
      {"name": "hotel", "group": 2, "backoff": "10 milliseconds"},
      {"name": "car", "group": 2, "backoff": "10 milliseconds"},
      {"name": "pay", "group": 3}
    ]}$$);
SELECT event_store.start_saga('trip', '{"trip": "t-1"}', pg_temp.sid(7));
SELECT step, kind, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['hotel', 'car']) ORDER BY step;
SELECT event_store.complete_saga_step(pg_temp.sid(7), 'hotel', '{"hotel": "H-1"}');
SELECT event_store.complete_saga_step(pg_temp.sid(7), 'car', '{"car": "C-1"}');
SELECT step, kind, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['pay']);
-- pay fails for good: group 2 (hotel and car) is compensated first, both
-- at once; flight (group 1) waits until both are compensated
SELECT event_store.fail_saga_step(pg_temp.sid(7), 'pay', 'card declined', retryable => false);
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(7);
SELECT * FROM pg_temp.steps(pg_temp.sid(7));
SELECT pg_temp.state(pg_temp.sid(7)) -> 'currentStep' AS current_step;
-- both compensations are claimable together, each with its step's
-- compensation data
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w1') ORDER BY step;
SELECT event_store.complete_saga_step(pg_temp.sid(7), 'hotel', '{"cancelled": true}');
-- flight still waits for car; a failed compensation attempt is retried
-- (claimable again once its backoff passed, attempt 2)
SELECT event_store.fail_saga_step(pg_temp.sid(7), 'car', 'rental desk closed');
SELECT name, status, comp_attempts, last_error, next_attempt_at IS NOT NULL AS retry_due_later
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(7) ORDER BY step_no;
CALL pg_temp.tick_until($$(SELECT next_attempt_at <= now() FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(7) AND name = 'car')$$);
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w1');
SELECT event_store.complete_saga_step(pg_temp.sid(7), 'car');
-- then flight was compensated locally with its own result as data
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(7);
SELECT name, status, comp_attempts, result FROM pg_temp.steps(pg_temp.sid(7));
SELECT fn, data FROM shop.calls WHERE saga_id = pg_temp.sid(7) ORDER BY n;
SELECT stream_version, event_type, data ->> 'step' AS step
  FROM event_store.read_stream('saga-' || pg_temp.sid(7));
-- a compensation cannot be completed twice
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(7), 'car')$$);
-- what a compensation is: a local step without compensation needs none;
-- an external step with a compensation function is compensated locally
-- (never claimable); an event-driven step without one needs none
SELECT event_store.define_saga('mixed', $${
    "steps": [
      {"name": "plain", "action": "shop.note"},
      {"name": "remote", "compensation": "shop.undo"},
      {"name": "awaited", "complete_on": "Awaited"},
      {"name": "final"}
    ]}$$);
SELECT x ->> 'name' AS name, x ->> 'kind' AS kind, x ->> 'comp_kind' AS comp_kind
  FROM event_store.saga_definitions d, jsonb_array_elements(d.steps) x WHERE saga_type = 'mixed';
SELECT event_store.start_saga('mixed', '{}', pg_temp.sid(26));
SELECT event_store.complete_saga_step(pg_temp.sid(26), 'remote', '{"remote": "R-1"}');
SELECT event_store.append('mixed-1', $${"type": "Awaited", "data": {"awaited": 1},
                                        "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000026"}}$$);
SELECT event_store.fail_saga_step(pg_temp.sid(26), 'final', 'no', false);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(26);
SELECT name, status, comp_attempts FROM pg_temp.steps(pg_temp.sid(26));
SELECT fn, data FROM shop.calls WHERE saga_id = pg_temp.sid(26) ORDER BY n;
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['remote']);

--
-- A compensation that runs out of attempts: the saga ends
-- compensation_failed and shows up in saga_problems, left for a person.
--
SELECT event_store.define_saga('fragile', $${
    "steps": [
      {"name": "lock", "action": "shop.note", "compensation": "shop.broken", "max_attempts": 2, "backoff": "10 milliseconds"},
      {"name": "work"}
    ]}$$);
SELECT event_store.start_saga('fragile', '{}', pg_temp.sid(8));
SELECT event_store.fail_saga_step(pg_temp.sid(8), 'work', 'gave up', false);
-- the compensation failed once in that call; its retry waits for a tick
SELECT name, status, comp_attempts
  FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(8) AND name = 'lock';
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(8)) <> 'compensating'$$);
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(8);
SELECT * FROM pg_temp.steps(pg_temp.sid(8));
SELECT saga_type, status, saga_error, step, step_status, comp_attempts, step_error
  FROM event_store.saga_problems WHERE saga_id = pg_temp.sid(8);
SELECT pg_temp.events(pg_temp.sid(8));
-- nothing more happens to it
SELECT event_store.saga_tick();
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(8);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(8), 'lock')$$);
-- an external compensation failed non-retryably ends the same way
SELECT event_store.start_saga('trip', '{"trip": "t-2"}', pg_temp.sid(9));
SELECT event_store.complete_saga_step(pg_temp.sid(9), 'hotel', '{"hotel": "H-2"}');
SELECT event_store.fail_saga_step(pg_temp.sid(9), 'car', 'no cars', retryable => false);
SELECT name, status FROM pg_temp.steps(pg_temp.sid(9));
SELECT step, kind, data FROM event_store.claim_saga_steps('w1');
SELECT event_store.fail_saga_step(pg_temp.sid(9), 'hotel', 'hotel unreachable', retryable => false);
SELECT saga_type, status, saga_error, step, step_status, comp_attempts, step_error
  FROM event_store.saga_problems WHERE saga_id = pg_temp.sid(9);
-- flight was never compensated: the saga stopped at the failed compensation
SELECT name, status FROM pg_temp.steps(pg_temp.sid(9));
SELECT count(*) AS problems FROM event_store.saga_problems;

--
-- Event-driven steps: dispatch completes on ParcelDelivered, fails on
-- ParcelLost, when the event's metadata.saga_id is the saga's id.
--
SELECT event_store.define_saga('delivery', $${
    "steps": [
      {"name": "label", "action": "shop.note", "compensation": "shop.undo"},
      {"name": "dispatch", "complete_on": "ParcelDelivered", "fail_on": "ParcelLost"},
      {"name": "invoice"}
    ]}$$);
SELECT event_store.start_saga('delivery', '{"parcel": "p-1"}', pg_temp.sid(10));
SELECT name, status, attempts FROM pg_temp.steps(pg_temp.sid(10));
-- never claimable
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['dispatch']);
-- events that do not concern it: another type, no saga_id, another saga,
-- a saga_id that is no uuid, a rolled back append
SELECT event_store.append('parcel-1', $${"type": "ParcelScanned", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000010"}}$$);
SELECT event_store.append('parcel-1', $${"type": "ParcelDelivered", "data": {"at": "door"}}$$);
SELECT event_store.append('parcel-1', $${"type": "ParcelDelivered", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000099"}}$$);
SELECT event_store.append('parcel-1', $${"type": "ParcelDelivered", "metadata": {"saga_id": "not-a-uuid"}}$$);
BEGIN;
SELECT event_store.append('parcel-1', $${"type": "ParcelLost", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000010"}}$$);
SELECT name, status FROM pg_temp.steps(pg_temp.sid(10));
ROLLBACK;
SELECT name, status FROM pg_temp.steps(pg_temp.sid(10));
-- the completing event: its data is the step's result, merged into the data
SELECT event_store.append('parcel-1', $${"type": "ParcelDelivered", "data": {"delivered_at": "door"},
                                         "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000010"}}$$);
SELECT name, status, attempts, result FROM pg_temp.steps(pg_temp.sid(10));
SELECT data FROM event_store.sagas WHERE saga_id = pg_temp.sid(10);
-- a second delivery event changes nothing
SELECT event_store.append('parcel-1', $${"type": "ParcelDelivered", "data": {"delivered_at": "again"},
                                         "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000010"}}$$);
SELECT name, status, result FROM pg_temp.steps(pg_temp.sid(10));
SELECT event_store.complete_saga_step(pg_temp.sid(10), 'invoice');
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(10);
-- a fail_on event fails the step without retry (attempts remain): the
-- label is compensated
SELECT event_store.start_saga('delivery', '{"parcel": "p-2"}', pg_temp.sid(11));
SELECT event_store.append('parcel-2', $${"type": "ParcelLost", "data": {"where": "depot"},
                                         "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000011"}}$$);
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(11);
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(11) ORDER BY step_no;
SELECT fn FROM shop.calls WHERE saga_id = pg_temp.sid(11) ORDER BY n;
SELECT pg_temp.events(pg_temp.sid(11));
-- a local step with complete_on runs its action, then waits for the event
SELECT event_store.define_saga('confirm', $${
    "steps": [{"name": "request", "action": "shop.note", "complete_on": "RequestConfirmed"}]}$$);
SELECT event_store.start_saga('confirm', '{}', pg_temp.sid(12));
SELECT name, status, attempts, result FROM pg_temp.steps(pg_temp.sid(12));
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['request']);
SELECT event_store.append('confirm-1', $${"type": "RequestConfirmed", "data": {"ok": true},
                                          "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000012"}}$$);
SELECT status, data FROM event_store.sagas WHERE saga_id = pg_temp.sid(12);
SELECT name, status, attempts, result FROM pg_temp.steps(pg_temp.sid(12));
-- redefining a saga type applies to sagas started afterwards; a saga
-- started before still completes on the event its own definition named
SELECT event_store.define_saga('handover', '{"steps": [{"name": "wait", "complete_on": "HandedOver"}]}');
SELECT event_store.start_saga('handover', '{}', pg_temp.sid(13));
SELECT event_store.define_saga('handover', '{"steps": [{"name": "wait", "complete_on": "HandedOverV2"}]}');
SELECT event_store.start_saga('handover', '{}', pg_temp.sid(14));
SELECT event_store.append('handover-1', $${"type": "HandedOver", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000013"}}$$);
SELECT event_store.append('handover-1', $${"type": "HandedOverV2", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-000000000014"}}$$);
SELECT saga_id, status FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(13), pg_temp.sid(14)) ORDER BY saga_id;
-- the steps of a running saga stay those of its definition
SELECT event_store.define_saga('two_then_three', '{"steps": [{"name": "one"}, {"name": "two"}]}');
SELECT event_store.start_saga('two_then_three', '{}', pg_temp.sid(27));
SELECT event_store.define_saga('two_then_three', '{"steps": [{"name": "one"}, {"name": "two"}, {"name": "three"}]}');
SELECT event_store.start_saga('two_then_three', '{}', pg_temp.sid(28));
SELECT saga_id, string_agg(name, ', ' ORDER BY step_no) AS steps
  FROM event_store.saga_steps WHERE saga_id IN (pg_temp.sid(27), pg_temp.sid(28)) GROUP BY saga_id ORDER BY saga_id;
SELECT count(event_store.complete_saga_step(pg_temp.sid(27), n)) FROM unnest(ARRAY['one', 'two']) n;
SELECT count(event_store.complete_saga_step(pg_temp.sid(28), n)) FROM unnest(ARRAY['one', 'two', 'three']) n;
SELECT saga_id, status FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(27), pg_temp.sid(28)) ORDER BY saga_id;

--
-- Nested sagas: a child saga of type "packing" runs as a step of
-- "shipment"; its data is the parent's data, its end moves the parent step.
--
SELECT event_store.define_saga('packing', $${
    "steps": [{"name": "pick", "action": "shop.note", "compensation": "shop.undo"}, {"name": "pack"}]}$$);
SELECT event_store.define_saga('shipment', $${
    "steps": [
      {"name": "prepare", "action": "shop.note", "compensation": "shop.undo"},
      {"name": "packing", "saga": "packing"},
      {"name": "handover"}
    ]}$$);
-- a nested step is never claimable itself
SELECT event_store.start_saga('shipment', '{"shipment": "s-1"}', pg_temp.sid(15));
SELECT name, status FROM pg_temp.steps(pg_temp.sid(15));
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1', step_names => ARRAY['packing']);
-- the child: running, linked to its parent step, started with the parent's data
SELECT c.saga_type, c.status, c.parent_saga_id, c.parent_step, c.start_data,
       c.saga_id = st.child_saga_id AS linked
  FROM event_store.sagas c
  JOIN event_store.saga_steps st ON st.saga_id = c.parent_saga_id AND st.name = c.parent_step
 WHERE c.parent_saga_id = pg_temp.sid(15);
-- the child completes: the parent step completes with the child's data
SELECT event_store.complete_saga_step(c.saga_id, 'pack', '{"boxes": 2}')
  FROM event_store.sagas c WHERE c.parent_saga_id = pg_temp.sid(15);
SELECT status FROM event_store.sagas WHERE parent_saga_id = pg_temp.sid(15);
SELECT name, status, result - 'noted' AS result FROM pg_temp.steps(pg_temp.sid(15));
-- handover fails: the parent compensates the completed child saga (the
-- child compensates its own steps), then prepare
SELECT event_store.fail_saga_step(pg_temp.sid(15), 'handover', 'courier missing', false);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(15);
SELECT name, status FROM pg_temp.steps(pg_temp.sid(15));
SELECT c.status, (SELECT string_agg(name || ':' || status, ', ' ORDER BY step_no)
                    FROM event_store.saga_steps WHERE saga_id = c.saga_id) AS steps
  FROM event_store.sagas c WHERE c.parent_saga_id = pg_temp.sid(15);
-- the child's external step pack is compensated externally (claimed with
-- the child's saga id and type); then the child compensates pick and ends
-- compensated, which compensates the parent step, then prepare
SELECT c.saga_id = k.saga_id AS child, k.saga_type, k.step, k.kind, k.attempt, k.data
  FROM event_store.claim_saga_steps('w1') k
  JOIN event_store.sagas c ON c.parent_saga_id = pg_temp.sid(15);
SELECT event_store.complete_saga_step(c.saga_id, 'pack')
  FROM event_store.sagas c WHERE c.parent_saga_id = pg_temp.sid(15);
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(15);
SELECT name, status FROM pg_temp.steps(pg_temp.sid(15));
SELECT c.status, (SELECT string_agg(name || ':' || status, ', ' ORDER BY step_no)
                    FROM event_store.saga_steps WHERE saga_id = c.saga_id) AS steps
  FROM event_store.sagas c WHERE c.parent_saga_id = pg_temp.sid(15);
-- the undo calls, in order: the child's pick first, then the parent's
-- prepare, each with its step's result
SELECT c.fn, CASE WHEN c.saga_id = pg_temp.sid(15) THEN 'parent' ELSE 'child' END AS saga,
       c.data ->> 'noted' = c.saga_id::text AS own_result
  FROM shop.calls c
 WHERE c.fn = 'undo'
   AND (c.saga_id = pg_temp.sid(15) OR c.saga_id IN (SELECT saga_id FROM event_store.sagas WHERE parent_saga_id = pg_temp.sid(15)))
 ORDER BY c.n;
SELECT pg_temp.events(pg_temp.sid(15));
-- a child that ends compensated fails its parent step (no retry), and the
-- parent compensates
SELECT event_store.start_saga('shipment', '{"shipment": "s-2"}', pg_temp.sid(16));
SELECT event_store.fail_saga_step(c.saga_id, 'pack', 'no boxes', false)
  FROM event_store.sagas c WHERE c.parent_saga_id = pg_temp.sid(16);
SELECT status FROM event_store.sagas WHERE parent_saga_id = pg_temp.sid(16);
SELECT status, regexp_replace(last_error, '[0-9a-f-]{36}', '<uuid>') AS last_error
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(16);
SELECT name, status, attempts FROM pg_temp.steps(pg_temp.sid(16));
SELECT pg_temp.events(pg_temp.sid(16));

--
-- Timeouts and leases, driven by saga_tick().  Every saga started above is
-- finished or waits without a timer, so the ticks below only touch the
-- sagas of this part.
--
-- a step timeout counts as a failed attempt and is retried while attempts
-- remain; then the saga fails and compensates
SELECT event_store.define_saga('slow', $${
    "steps": [
      {"name": "prep", "action": "shop.note", "compensation": "shop.undo"},
      {"name": "wait", "timeout": "0 seconds", "max_attempts": 2, "backoff": "10 milliseconds"}
    ]}$$);
SELECT event_store.start_saga('slow', '{}', pg_temp.sid(20));
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['wait']);
SELECT event_store.saga_tick() > 0 AS fired;
-- the retry waits for its backoff: a later tick runs the step again
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(20) ORDER BY step_no;
CALL pg_temp.tick_until($$(SELECT status FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(20) AND name = 'wait') = 'running'$$);
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(20) ORDER BY step_no;
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['wait']);
SELECT event_store.saga_tick() > 0 AS fired;
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(20);
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(20) ORDER BY step_no;
SELECT stream_version, event_type, data ->> 'step' AS step, data ->> 'error' AS error,
       data ->> 'attempt' AS attempt, data ->> 'retrying' AS retrying
  FROM event_store.read_stream('saga-' || pg_temp.sid(20));
-- the worker's late report of the timed out step is refused
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(20), 'wait')$$);
-- an event-driven step times out the same way
SELECT event_store.define_saga('confirm_slow', $${
    "steps": [{"name": "wait", "complete_on": "Confirmed", "timeout": "0 seconds", "max_attempts": 2, "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('confirm_slow', '{}', pg_temp.sid(21));
SELECT event_store.saga_tick() > 0 AS fired;
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(21);
CALL pg_temp.tick_until($$(SELECT status FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(21)) = 'running'$$);
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(21);
SELECT event_store.saga_tick() > 0 AS fired;
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(21);
-- a step timeout that has not passed does nothing
SELECT event_store.define_saga('patient', $${
    "steps": [{"name": "idle", "timeout": "1 hour"}], "timeout": "1 day"}$$);
SELECT event_store.start_saga('patient', '{}', pg_temp.sid(22));
SELECT event_store.saga_tick();
SELECT s.status, st.status AS step_status, st.attempts,
       st.deadline BETWEEN now() + interval '50 minutes' AND now() + interval '70 minutes' AS step_deadline_in_1h,
       s.deadline BETWEEN now() + interval '23 hours' AND now() + interval '25 hours' AS saga_deadline_in_1d
  FROM event_store.sagas s JOIN event_store.saga_steps st USING (saga_id) WHERE saga_id = pg_temp.sid(22);
SELECT event_store.fail_saga_step(pg_temp.sid(22), 'idle', 'not needed', false);

-- the saga timeout fails the saga at once (no retry), whatever its steps
-- are doing: running steps are cancelled, completed ones compensated
SELECT event_store.define_saga('deadline', $${
    "steps": [
      {"name": "prep", "action": "shop.note", "compensation": "shop.undo"},
      {"name": "wait", "max_attempts": 5}
    ],
    "timeout": "0 seconds"}$$);
SELECT event_store.start_saga('deadline', '{}', pg_temp.sid(23));
SELECT step, attempt FROM event_store.claim_saga_steps('w1', step_names => ARRAY['wait']);
SELECT event_store.saga_tick() > 0 AS fired;
SELECT status, last_error FROM event_store.sagas WHERE saga_id = pg_temp.sid(23);
SELECT name, status, attempts, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(23) ORDER BY step_no;
SELECT pg_temp.events(pg_temp.sid(23));
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(23), 'wait')$$);

-- lease expiry: a claimed step whose worker went silent is handed out again
-- (the expired lease counts as a failed attempt)
SELECT event_store.define_saga('leased', $${
    "steps": [{"name": "job", "backoff": "10 milliseconds"}, {"name": "after", "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('leased', '{"job": 1}', pg_temp.sid(24));
SELECT step, kind, attempt FROM event_store.claim_saga_steps('w1', lease => '1 millisecond');
-- not handed out again before a tick saw the lease expire
SELECT pg_sleep(0.05);
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w2');
SELECT event_store.saga_tick() > 0 AS fired;
SELECT name, status, attempts, lease_owner, last_error FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(24) ORDER BY step_no;
-- handed out again once the retry's backoff passed
CALL pg_temp.tick_until($$(SELECT status FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(24) AND name = 'job') = 'running'$$);
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w2');
-- a lease that has not expired is kept
SELECT event_store.saga_tick();
SELECT name, status, attempts, lease_owner FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(24) ORDER BY step_no;
SELECT event_store.complete_saga_step(pg_temp.sid(24), 'job', '{"job_done": true}');
-- an expired lease on a compensation: the compensation is handed out again
SELECT step, kind, attempt FROM event_store.claim_saga_steps('w1');
SELECT event_store.fail_saga_step(pg_temp.sid(24), 'after', 'no', false);
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w1', lease => '1 millisecond');
SELECT pg_sleep(0.05);
SELECT event_store.saga_tick() > 0 AS fired;
CALL pg_temp.tick_until($$(SELECT next_attempt_at <= now() FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(24) AND name = 'job')$$);
SELECT step, kind, attempt, data FROM event_store.claim_saga_steps('w2');
SELECT event_store.complete_saga_step(pg_temp.sid(24), 'job');
SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(24);
SELECT pg_temp.events(pg_temp.sid(24));
-- claim limits: max_count, step_names, max_count 0
SELECT count(event_store.start_saga('leased', jsonb_build_object('job', i))) FROM generate_series(2, 6) i;
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1', max_count => 0);
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1', max_count => 2);
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1', step_names => ARRAY['after']);
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1', step_names => '{}');
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1');
SELECT count(*) AS claimed FROM event_store.claim_saga_steps('w1');
-- (finish them)
SELECT count(event_store.fail_saga_step(saga_id, 'job', 'cancelled', false)) AS failed
  FROM event_store.sagas WHERE saga_type = 'leased' AND status = 'running';

--
-- Argument checks: NULL required arguments and malformed values are class
-- 22 errors (never a silent NULL result); a step that is not running cannot
-- be completed or failed (55000).
--
SELECT regress.try($$SELECT event_store.define_saga(NULL, '{"steps": [{"name": "a"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('', '{"steps": [{"name": "a"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('x', NULL)$$);
SELECT regress.try($$SELECT event_store.define_saga('x', '[{"name": "a"}]')$$);
SELECT regress.try($$SELECT event_store.define_saga('x', '"steps"')$$);
SELECT regress.try($$SELECT event_store.start_saga(NULL, '{}')$$);
SELECT regress.try($$SELECT event_store.start_saga('', '{}')$$);
SELECT regress.try($$SELECT event_store.start_saga('order', NULL)$$);
SELECT regress.try($$SELECT event_store.start_saga('order', '[1, 2]')$$);
SELECT regress.try($$SELECT event_store.start_saga('order', '"o-1"')$$);
SELECT regress.try($$SELECT event_store.start_saga('no_such_type', '{}')$$);
SELECT regress.try($$SELECT event_store.start_saga('order', '{}', 'not-a-uuid')$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps(NULL)$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('')$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', NULL)$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', -1)$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', 1, ARRAY['a', NULL])$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', lease => NULL)$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', lease => '0 seconds')$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', lease => '-1 minute')$$);
SELECT regress.try($$SELECT event_store.claim_saga_steps('w', lease => 'a while')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step(NULL, 'ship')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(1), NULL)$$);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(1), '')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step('5a9a0000-0000-4000-8000-0000000000ff', 'ship')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(1), 'no_such_step')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step('nope', 'ship')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(NULL, 'ship', 'e')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(1), NULL, 'e')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(1), 'ship', NULL)$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(1), 'ship', 'e', NULL)$$);
SELECT regress.try($$SELECT event_store.fail_saga_step('5a9a0000-0000-4000-8000-0000000000ff', 'ship', 'e')$$);
SELECT regress.try($$SELECT event_store.saga_state(NULL)$$);
SELECT regress.try($$SELECT event_store.saga_state('5a9a0000-0000-4000-8000-0000000000ff')$$);
-- a pending step (its group has not started) and a completed one: 55000
SELECT event_store.start_saga('order', '{"order": "o-30", "sku": "apple", "qty": 1, "amount": 10}', pg_temp.sid(30));
SELECT event_store.define_saga('two', '{"steps": [{"name": "first"}, {"name": "second"}]}');
SELECT event_store.start_saga('two', '{}', pg_temp.sid(31));
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(31), 'second')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(31), 'second', 'e')$$);
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(30), 'reserve_inventory')$$);
SELECT regress.try($$SELECT event_store.fail_saga_step(pg_temp.sid(30), 'charge_payment', 'e')$$);
-- a completed saga's step
SELECT regress.try($$SELECT event_store.complete_saga_step(pg_temp.sid(1), 'ship')$$);
-- none of the refused calls changed anything
SELECT name, status, attempts FROM pg_temp.steps(pg_temp.sid(31));
SELECT name, status, attempts FROM pg_temp.steps(pg_temp.sid(30));
SELECT event_store.complete_saga_step(pg_temp.sid(30), 'ship');
SELECT event_store.complete_saga_step(pg_temp.sid(31), 'first');
SELECT event_store.complete_saga_step(pg_temp.sid(31), 'second');
SELECT saga_id, status FROM event_store.sagas WHERE saga_id IN (pg_temp.sid(30), pg_temp.sid(31)) ORDER BY saga_id;

--
-- Corner cases of the contract: each query below shows t when it holds.
--
-- A step timeout counts as a failed attempt even when no worker ever
-- claimed the external step: after max_attempts timeouts the saga fails
-- (instead of retrying, and appending SagaStepFailed, forever).
SELECT event_store.define_saga('unclaimed', $${
    "steps": [{"name": "nobody_home", "timeout": "0 seconds", "max_attempts": 2, "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('unclaimed', '{}', pg_temp.sid(40));
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(40)) <> 'running'$$);
-- (and a further tick changes nothing)
SELECT event_store.saga_tick();
SELECT status = 'compensated' AS failed_after_2_timeouts,
       event_store.stream_version('saga-' || saga_id) <= 6 AS stream_bounded
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(40);

-- A nested step that times out does not leave its child saga running: the
-- child of a failed attempt is failed in turn (and compensates), like the
-- child of a step cancelled by a saga failure.
SELECT event_store.define_saga('nested_slow', $${
    "steps": [{"name": "kid", "saga": "packing", "timeout": "0 seconds", "max_attempts": 2, "backoff": "10 milliseconds"}]}$$);
SELECT event_store.start_saga('nested_slow', '{}', pg_temp.sid(41));
CALL pg_temp.tick_until($$(SELECT status FROM event_store.sagas WHERE saga_id = pg_temp.sid(41)) <> 'running'$$);
SELECT status = 'compensated' AS parent_compensated
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(41);
SELECT count(*) FILTER (WHERE status IN ('running', 'completed')) = 0 AS none_left_running
  FROM event_store.sagas WHERE parent_saga_id = pg_temp.sid(41);

-- A saga started before its type was redefined completes on the
-- complete_on event of its own definition (see "handover" above).
SELECT status = 'completed' AS completed_on_own_event
  FROM event_store.sagas WHERE saga_id = pg_temp.sid(13);

-- A malformed function name is a class 22 error, like any malformed value.
SELECT left(regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "no such function"}]}')$$), 2) = '22'
       AS malformed_action_class_22;
SELECT left(regress.try($$SELECT event_store.define_saga('bad', '{"steps": [{"name": "a", "action": "shop.note(uuid, jsonb)"}]}')$$), 2) = '22'
       AS signature_in_name_class_22;

-- A saga timeout too large to add to a timestamp: refused by define_saga
-- (class 22), or start_saga works
CREATE FUNCTION pg_temp.huge_timeout() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r text := regress.try($q$SELECT event_store.define_saga('huge_timeout',
                  '{"steps": [{"name": "far"}], "timeout": "1000000 years"}')$q$);
BEGIN
    IF r <> 'no error' THEN
        RETURN CASE WHEN left(r, 2) = '22' THEN 'ok' ELSE r END;
    END IF;
    r := regress.try($q$SELECT event_store.start_saga('huge_timeout', '{}')$q$);
    RETURN CASE WHEN r = 'no error' THEN 'ok' ELSE r END;
END $$;
SELECT pg_temp.huge_timeout();

-- A saga type that nests itself cannot be started (it would recurse
-- without end): define_saga or start_saga refuses it with a class 22 error
-- rather than running out of stack.
CREATE FUNCTION pg_temp.self_nested() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r text := regress.try($q$SELECT event_store.define_saga('matryoshka',
                  '{"steps": [{"name": "inner", "saga": "matryoshka"}]}')$q$);
BEGIN
    IF r = 'no error' THEN
        r := regress.try($q$SELECT event_store.start_saga('matryoshka', '{}')$q$);
    END IF;
    RETURN CASE WHEN left(r, 2) = '22' THEN 'ok' ELSE r END;
END $$;
SELECT pg_temp.self_nested();

-- A backoff too large to add to a timestamp must not break saga_tick() for
-- every saga of the database: either define_saga refuses it (class 22) or
-- saga_tick() copes.  (Last: when saga_tick() fails here, it keeps failing.)
CREATE TEMP TABLE outcome (result text);
DO $$
DECLARE
    r text := regress.try($q$SELECT event_store.define_saga('huge_backoff',
                  '{"steps": [{"name": "far", "backoff": "1000000 years"}]}')$q$);
BEGIN
    IF r <> 'no error' THEN
        INSERT INTO outcome VALUES (CASE WHEN left(r, 2) = '22' THEN 'ok' ELSE r END);
    ELSE
        PERFORM event_store.start_saga('huge_backoff', '{}', pg_temp.sid(42));
        PERFORM event_store.claim_saga_steps('w1', step_names => ARRAY['far'], lease => '1 microsecond');
        COMMIT;
        PERFORM pg_sleep(0.01);
        COMMIT;     -- the tick's now() is after the lease expired
        r := regress.try('SELECT event_store.saga_tick()');
        INSERT INTO outcome VALUES (CASE WHEN r = 'no error' THEN 'ok' ELSE 'saga_tick: ' || r END);
    END IF;
END $$;
SELECT result AS huge_backoff FROM outcome;
