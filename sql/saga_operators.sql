--
-- saga_operators: the sagas that need a person (saga_problems, and why),
-- retry_saga and resolve_saga with their events and their rules (who may
-- call them, in which states, with which arguments); pivot steps and
-- forward recovery.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS so CASCADE;
DROP ROLE IF EXISTS so_owner;
DROP ROLE IF EXISTS so_member;
DROP ROLE IF EXISTS so_other;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE ROLE so_owner;
CREATE ROLE so_member IN ROLE so_owner;
CREATE ROLE so_other;
GRANT USAGE ON SCHEMA regress TO so_other;
GRANT EXECUTE ON FUNCTION event_store.define_saga(text, jsonb), event_store.retry_saga(uuid),
    event_store.resolve_saga(uuid, text, text) TO so_owner, so_member, so_other;
CREATE SCHEMA so;
GRANT USAGE ON SCHEMA so TO PUBLIC;
-- what the step functions did; switches that make them fail
CREATE TABLE so.calls (n serial PRIMARY KEY, saga_id uuid, fn text);
CREATE TABLE so.broken (fn text PRIMARY KEY);
GRANT SELECT, INSERT ON so.calls TO PUBLIC;
GRANT SELECT ON so.broken TO PUBLIC;
GRANT USAGE ON SEQUENCE so.calls_n_seq TO PUBLIC;
CREATE FUNCTION so.step(saga_id uuid, fn text) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM so.broken b WHERE b.fn = step.fn) THEN
        RAISE EXCEPTION '% is broken', fn;
    END IF;
    INSERT INTO so.calls (saga_id, fn) VALUES (saga_id, fn);
    RETURN '{}';
END $$;
CREATE FUNCTION so.lock(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT so.step(saga_id, 'lock') $$;
CREATE FUNCTION so.unlock(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT so.step(saga_id, 'unlock') $$;
CREATE FUNCTION so.charge(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT so.step(saga_id, 'charge') $$;
CREATE FUNCTION so.refund(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT so.step(saga_id, 'refund') $$;
CREATE FUNCTION so.notify(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT so.step(saga_id, 'notify') $$;

CREATE FUNCTION pg_temp.sid(n int) RETURNS uuid
LANGUAGE sql AS $$ SELECT ('5a9a0000-0000-4000-8000-' || lpad(n::text, 12, '0'))::uuid $$;
CREATE FUNCTION pg_temp.calls(id uuid) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(fn, ', ' ORDER BY n) FROM so.calls WHERE saga_id = id
$$;
CREATE FUNCTION pg_temp.events(id uuid) RETURNS text LANGUAGE sql AS $$
    SELECT string_agg(event_type, ', ' ORDER BY stream_version)
      FROM event_store.read_stream('saga-' || id)
$$;
CREATE FUNCTION pg_temp.problems()
RETURNS TABLE(saga_id uuid, status text, step text, step_status text, reason text, attempts int, comp_attempts int)
LANGUAGE sql AS $$
    SELECT saga_id, status, step, step_status, reason, attempts, comp_attempts
      FROM event_store.saga_problems ORDER BY saga_id
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
-- A compensation that runs out of attempts: compensation_failed, listed
--
SET ROLE so_owner;
SELECT event_store.define_saga('so_fragile', $${"steps": [
    {"name": "lock", "action": "so.lock", "compensation": "so.unlock", "max_attempts": 2, "backoff": "10 milliseconds"},
    {"name": "work"}]}$$);
RESET ROLE;
INSERT INTO so.broken VALUES ('unlock');
SELECT event_store.start_saga('so_fragile', '{}', pg_temp.sid(1));
SELECT event_store.start_saga('so_fragile', '{}', pg_temp.sid(2));
SELECT event_store.fail_saga_step(pg_temp.sid(1), 'work', 'gave up', false);
SELECT event_store.fail_saga_step(pg_temp.sid(2), 'work', 'gave up', false);
CALL pg_temp.tick_until($$NOT EXISTS (SELECT 1 FROM event_store.sagas WHERE status = 'compensating')$$);
SELECT * FROM pg_temp.problems();

-- a role without the privileges of so_owner may neither retry nor resolve
SET ROLE so_other;
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(1))$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), 'compensated', 'mine now')$$);
RESET ROLE;
SELECT status, pg_temp.events(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);

-- arguments
SELECT regress.try($$SELECT event_store.retry_saga(NULL)$$);
SELECT regress.try($$SELECT event_store.retry_saga('5a9a0000-0000-4000-8000-00000000ffff')$$);
SELECT regress.try($$SELECT event_store.resolve_saga(NULL, 'completed', 'x')$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), NULL, 'x')$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), 'done', 'x')$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), 'failed', 'x')$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), 'completed', NULL)$$);
SELECT regress.try($$SELECT event_store.resolve_saga('5a9a0000-0000-4000-8000-00000000ffff', 'completed', 'x')$$);
-- nothing was written
SELECT status, pg_temp.events(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);

-- the compensation is fixed; a member of so_owner retries: a fresh round
-- of attempts, and the saga ends compensated
DELETE FROM so.broken;
SET ROLE so_member;
SELECT event_store.retry_saga(pg_temp.sid(1));
RESET ROLE;
SELECT status, finished_at IS NOT NULL AS finished FROM event_store.sagas WHERE saga_id = pg_temp.sid(1);
SELECT pg_temp.events(pg_temp.sid(1));
SELECT data - 'saga_id' AS retried FROM event_store.read_stream('saga-' || pg_temp.sid(1))
 WHERE event_type = 'SagaRetried';
SELECT pg_temp.calls(pg_temp.sid(1));
-- it ended: retry and resolve refuse
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(1))$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(1), 'completed', 'x')$$);

-- a person settles saga 2 by hand
SET ROLE so_owner;
SELECT event_store.resolve_saga(pg_temp.sid(2), 'compensated', 'unlocked in the warehouse');
RESET ROLE;
SELECT status, finished_at IS NOT NULL AS finished FROM event_store.sagas WHERE saga_id = pg_temp.sid(2);
SELECT data - 'saga_id' AS resolved FROM event_store.read_stream('saga-' || pg_temp.sid(2))
 WHERE event_type = 'SagaResolved';
SELECT * FROM pg_temp.problems();
-- nothing of it runs any more
SELECT count(*) AS due FROM event_store.saga_steps
 WHERE saga_id = pg_temp.sid(2) AND (next_attempt_at IS NOT NULL OR lease_owner IS NOT NULL OR deadline IS NOT NULL);
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(2))$$);

-- a saga that makes progress by itself needs no person
SELECT event_store.start_saga('so_fragile', '{}', pg_temp.sid(3));
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(3))$$);
SELECT regress.try($$SELECT event_store.resolve_saga(pg_temp.sid(3), 'completed', 'x')$$);
-- the extension owner may always (the saga is not stuck: 55000, not 42501)
SELECT event_store.complete_saga_step(pg_temp.sid(3), 'work');
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(3))$$);

--
-- Pivot steps: forward recovery
--
SELECT regress.try($$SELECT event_store.define_saga('so_bad', '{"steps": [{"name": "a", "pivot": "yes"}]}')$$);
SELECT regress.try($$SELECT event_store.define_saga('so_bad', '{"steps": [{"name": "a", "pivot": null}]}')$$);
SET ROLE so_owner;
SELECT event_store.define_saga('so_ship', $${"steps": [
    {"name": "lock", "action": "so.lock", "compensation": "so.unlock"},
    {"name": "charge", "action": "so.charge", "compensation": "so.refund", "pivot": true, "max_attempts": 1},
    {"name": "ship", "max_attempts": 2, "backoff": "10 milliseconds"},
    {"name": "notify", "action": "so.notify"}]}$$);
RESET ROLE;
SELECT x ->> 'name' AS name, x ->> 'pivot' AS pivot
  FROM event_store.saga_definitions d, jsonb_array_elements(d.steps) x WHERE saga_type = 'so_ship';
-- the pivot fails: before it, the saga recovers backward as ever
INSERT INTO so.broken VALUES ('charge');
SELECT event_store.start_saga('so_ship', '{}', pg_temp.sid(10));
SELECT status, pg_temp.calls(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(10);
DELETE FROM so.broken;
-- past the pivot, a failing step is retried, then waits for a person; the
-- saga stays running and nothing is compensated
SELECT event_store.start_saga('so_ship', '{}', pg_temp.sid(11));
SELECT step, attempt FROM event_store.claim_saga_steps('w1');
SELECT event_store.fail_saga_step(pg_temp.sid(11), 'ship', 'no truck');
CALL pg_temp.tick_until($$(SELECT status FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(11) AND name = 'ship') = 'running'$$);
SELECT step, attempt FROM event_store.claim_saga_steps('w1');
SELECT event_store.fail_saga_step(pg_temp.sid(11), 'ship', 'still no truck');
SELECT status, last_error, pg_temp.calls(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(11);
SELECT name, status, attempts FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(11) ORDER BY step_no;
SELECT * FROM pg_temp.problems();
SELECT event_store.saga_tick();
SELECT count(*) AS claimable FROM event_store.claim_saga_steps('w1');
-- a non-retryable failure past the pivot waits for a person too
SELECT event_store.start_saga('so_ship', '{}', pg_temp.sid(12));
SELECT event_store.fail_saga_step(pg_temp.sid(12), 'ship', 'address unknown', false);
SELECT status, pg_temp.calls(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(12);
SELECT * FROM pg_temp.problems();
SELECT jsonb_path_query_array(event_store.saga_state(pg_temp.sid(12)), '$.steps[*].status') AS steps;
-- its saga timeout would compensate: past the pivot it does not
UPDATE event_store.sagas SET deadline = now() - interval '1 second' WHERE saga_id = pg_temp.sid(12);
SELECT event_store.saga_tick() > 0 AS ticked;
SELECT status, last_error, deadline FROM event_store.sagas WHERE saga_id = pg_temp.sid(12);
-- others may not retry it
SET ROLE so_other;
SELECT regress.try($$SELECT event_store.retry_saga(pg_temp.sid(11))$$);
RESET ROLE;
-- retry_saga: a new round of attempts; the saga completes
SET ROLE so_member;
SELECT event_store.retry_saga(pg_temp.sid(11));
RESET ROLE;
SELECT name, status, attempts FROM event_store.saga_steps WHERE saga_id = pg_temp.sid(11) ORDER BY step_no;
SELECT saga_id = pg_temp.sid(11) AS it, step, attempt FROM event_store.claim_saga_steps('w1');
SELECT event_store.complete_saga_step(pg_temp.sid(11), 'ship');
SELECT status, pg_temp.calls(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(11);
SELECT pg_temp.events(pg_temp.sid(11));
-- resolve_saga settles the other as completed
SELECT event_store.resolve_saga(pg_temp.sid(12), 'completed', 'shipped by courier');
SELECT status, pg_temp.calls(saga_id) FROM event_store.sagas WHERE saga_id = pg_temp.sid(12);
SELECT data - 'saga_id' - 'by' AS resolved, data ->> 'by' = current_user AS by_me
  FROM event_store.read_stream('saga-' || pg_temp.sid(12))
 WHERE event_type = 'SagaResolved';
SELECT * FROM pg_temp.problems();

-- clean up
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA so CASCADE;
REVOKE USAGE ON SCHEMA regress FROM so_other;
DROP ROLE so_owner, so_member, so_other;
RESET client_min_messages;
