--
-- saga_loop: the step loop in C and the rules it shares with the rest of
-- the extension.  The one name limit (define_saga's names fail like
-- append's stream ids); the one backoff rule (_backoff: doubling from the
-- base, at most 300 times the base, a base below 10 ms counting as 10 ms,
-- +-25% jitter); the events of a local step with an object, a scalar and a
-- NULL result (a strict compensation is not called with NULL); a setting a
-- step function changes ends when it returns; a cancel inside a step
-- function is no failed attempt: it cancels the call.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS loop CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

--
-- One name limit: 1024 bytes, the same error in SQL (define_saga) and in C
-- (append)
--
SELECT regress.try(format($$SELECT event_store.define_saga(%L, '{"steps": [{"name": "a"}]}')$$, repeat('t', 1025)));
SELECT regress.try(format($$SELECT event_store.define_saga('long', '{"steps": [{"name": %s}]}')$$, to_jsonb(repeat('n', 1025))));
SELECT regress.try(format($$SELECT event_store.define_saga('long', '{"steps": [{"name": "a"}, {"name": "b", "complete_on": %s}]}')$$, to_jsonb(repeat('é', 513))));
SELECT regress.try(format($$SELECT event_store.append(%L, '{"type": "X"}')$$, repeat('s', 1025)));
-- exactly 1024 bytes is fine
SELECT event_store.define_saga(repeat('t', 1024), format('{"steps": [{"name": %s}]}', to_jsonb(repeat('n', 1024)))::jsonb);
SELECT count(*) FROM event_store.saga_definitions WHERE octet_length(saga_type) = 1024;

--
-- One backoff rule
--
SELECT regress.try($$SELECT event_store._backoff(NULL, 1)$$);
SELECT regress.try($$SELECT event_store._backoff('1 second', NULL)$$);
-- the first wait is the base, +-25%; a base below 10 ms counts as 10 ms,
-- so that a retry is never due in the transaction that failed
SELECT b.base, b.attempts,
       bool_and(w BETWEEN b.lo AND b.hi) AS within_25pct,
       count(DISTINCT w) > 1 AS jittered
  FROM (VALUES (interval '0', 1, interval '7.5 milliseconds', interval '12.5 milliseconds'),
               ('1 millisecond', 1, '7.5 milliseconds', '12.5 milliseconds'),
               ('10 milliseconds', 1, '7.5 milliseconds', '12.5 milliseconds'),
               ('1 second', 1, '0.75 seconds', '1.25 seconds'),
               -- doubling per attempt
               ('1 second', 2, '1.5 seconds', '2.5 seconds'),
               ('1 second', 3, '3 seconds', '5 seconds'),
               ('1 second', 9, '192 seconds', '320 seconds'),
               -- at most 300 times the base (five minutes for one second)
               ('1 second', 10, '225 seconds', '375 seconds'),
               ('1 second', 100, '225 seconds', '375 seconds'),
               ('10 milliseconds', 100, '2.25 seconds', '3.75 seconds'),
               ('1 hour', 2, '90 minutes', '150 minutes'),
               -- a long base is never cut short
               ('2 days', 1, '36 hours', '60 hours'),
               ('1 month', 1, '540 hours', '900 hours'),
               ('100 years', 100, '22500 years', '37500 years')) b(base, attempts, lo, hi),
       LATERAL (SELECT event_store._backoff(b.base, b.attempts) FROM generate_series(1, 50)) x(w)
 GROUP BY b.base, b.attempts ORDER BY b.base, b.attempts;

--
-- The events of local steps: results of every kind
--
CREATE SCHEMA loop;
CREATE TABLE loop.calls (n serial PRIMARY KEY, fn text NOT NULL, data jsonb, probe text);
CREATE FUNCTION loop.object(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ INSERT INTO loop.calls (fn, data) VALUES ('object', data) RETURNING '{"got": "object"}'::jsonb $$;
CREATE FUNCTION loop.scalar(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
CREATE FUNCTION loop.nothing(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
-- compensations: one strict (never called with NULL data), one not
CREATE FUNCTION loop.undo_strict(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql STRICT AS $$ INSERT INTO loop.calls (fn, data) VALUES ('undo_strict', data) RETURNING '{}'::jsonb $$;
CREATE FUNCTION loop.undo(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ INSERT INTO loop.calls (fn, data) VALUES ('undo', data) RETURNING '{}'::jsonb $$;
CREATE FUNCTION loop.refuse(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;

SELECT event_store.define_saga('results', $${"steps": [
    {"name": "object", "action": "loop.object", "compensation": "loop.undo"},
    {"name": "scalar", "action": "loop.scalar", "compensation": "loop.undo"},
    {"name": "nothing", "action": "loop.nothing", "compensation": "loop.undo_strict"},
    {"name": "nothing_too", "action": "loop.nothing", "compensation": "loop.undo"},
    {"name": "refuse", "action": "loop.refuse", "max_attempts": 1}]}$$);
SELECT event_store.start_saga('results', '{"order": 1}', '10000000-0000-4000-8000-000000000001');
SELECT stream_version, event_type, data
  FROM event_store.read_stream('saga-10000000-0000-4000-8000-000000000001') ORDER BY stream_version;
SELECT name, status, result FROM event_store.saga_steps
 WHERE saga_id = '10000000-0000-4000-8000-000000000001' ORDER BY step_no;
-- the strict compensation was not called; the other got NULL
SELECT fn, data FROM loop.calls ORDER BY n;

--
-- What a step function sets ends when it returns: the next step of the
-- same call does not see it, nor does the session
--
CREATE FUNCTION loop.set_probe(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('set', set_config('loop.probe', 'leaked', false)) $$;
CREATE FUNCTION loop.read_probe(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$
    INSERT INTO loop.calls (fn, probe)
    VALUES ('read_probe', coalesce(nullif(current_setting('loop.probe', true), ''), '<unset>'))
    RETURNING '{}'::jsonb
$$;
SELECT event_store.define_saga('probe', $${"steps": [
    {"name": "set", "action": "loop.set_probe"},
    {"name": "read", "action": "loop.read_probe"}]}$$);
SELECT event_store.start_saga('probe', '{}', '10000000-0000-4000-8000-000000000002');
SELECT status FROM event_store.sagas WHERE saga_id = '10000000-0000-4000-8000-000000000002';
SELECT fn, probe FROM loop.calls WHERE fn = 'read_probe';
SELECT coalesce(nullif(current_setting('loop.probe', true), ''), '<unset>') AS session_probe;

--
-- A cancel in a step function is not a failed attempt: the call is
-- cancelled, and nothing of it stays
--
CREATE FUNCTION loop.slow(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('slept', pg_sleep(30)::text) $$;
SELECT event_store.define_saga('slow', '{"steps": [{"name": "slow", "action": "loop.slow"}]}');
SET statement_timeout = '200ms';
SELECT event_store.start_saga('slow', '{}', '10000000-0000-4000-8000-000000000003');
RESET statement_timeout;
SELECT count(*) AS sagas FROM event_store.sagas WHERE saga_id = '10000000-0000-4000-8000-000000000003';

DROP SCHEMA loop CASCADE;
