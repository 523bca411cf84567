--
-- pgTAP: the aggregate, snapshot and upcaster API — signatures, a fold with
-- automatic snapshots and time travel, upcasting, and the main errors.
-- Runs in one transaction and leaves nothing behind.
--
BEGIN;
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pgtap;
CREATE EXTENSION IF NOT EXISTS event_store;
RESET client_min_messages;

SELECT plan(31);

-- the functions, with their exact argument types
SELECT has_function('event_store', 'define_aggregate',
                    ARRAY['text', 'regprocedure', 'jsonb', 'integer', 'integer']);
SELECT has_function('event_store', 'load_aggregate', ARRAY['text', 'bigint']);
SELECT has_function('event_store', 'save_snapshot', ARRAY['text', 'bigint', 'jsonb', 'integer']);
SELECT has_function('event_store', 'load_snapshot', ARRAY['text', 'bigint']);
SELECT has_function('event_store', 'register_upcaster',
                    ARRAY['text', 'integer', 'regprocedure', 'text']);
SELECT has_function('event_store', 'drop_upcaster', ARRAY['text', 'integer']);
SELECT function_returns('event_store', 'define_aggregate',
                        ARRAY['text', 'regprocedure', 'jsonb', 'integer', 'integer'], 'void');
SELECT function_returns('event_store', 'load_aggregate', ARRAY['text', 'bigint'], 'setof record');
SELECT function_returns('event_store', 'load_snapshot', ARRAY['text', 'bigint'], 'setof record');
SELECT is(pg_get_function_result('event_store.load_aggregate(text,bigint)'::regprocedure),
          'TABLE(stream_version bigint, state jsonb)', 'load_aggregate returns (stream_version, state)');
SELECT is(pg_get_function_result('event_store.load_snapshot(text,bigint)'::regprocedure),
          'TABLE(stream_version bigint, state jsonb, state_version integer, created_at timestamp with time zone)',
          'load_snapshot returns (stream_version, state, state_version, created_at)');

-- a counter aggregate with a snapshot every 2 versions
CREATE FUNCTION pg_temp.tap_count(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', (state ->> 'n')::int + 1,
                              'last', event.event_type)
$$;
SELECT lives_ok($$SELECT event_store.define_aggregate('taptally',
                    'pg_temp.tap_count(jsonb,event_store.event)'::regprocedure,
                    '{"n": 0}', snapshot_every => 2)$$,
                'define_aggregate accepts a (jsonb, event_store.event) RETURNS jsonb reducer');
SELECT is(event_store.append('taptally-1', '[{"type": "A"}, {"type": "B"}, {"type": "C"}]'), 3::bigint,
          'a batch of three is appended');
SELECT results_eq($$SELECT stream_version, state FROM event_store.load_aggregate('taptally-1')$$,
                  $$VALUES (3::bigint, '{"n": 3, "last": "C"}'::jsonb)$$,
                  'load_aggregate folds every event');
SELECT results_eq($$SELECT stream_version, state FROM event_store.load_aggregate('taptally-1', 1)$$,
                  $$VALUES (1::bigint, '{"n": 1, "last": "A"}'::jsonb)$$,
                  'load_aggregate at_version gives the past state');
SELECT results_eq($$SELECT stream_version, state FROM event_store.load_aggregate('taptally-9')$$,
                  $$VALUES (0::bigint, '{"n": 0}'::jsonb)$$,
                  'an unknown stream is (0, initial_state)');
SELECT results_eq($$SELECT stream_version, state, state_version
                      FROM event_store.snapshots WHERE stream_id = 'taptally-1'$$,
                  $$VALUES (3::bigint, '{"n": 3, "last": "C"}'::jsonb, 1)$$,
                  'the append from 0 to 3 stored one snapshot, at 3');
SELECT lives_ok($$SELECT event_store.save_snapshot('taptally-1', 2, '{"n": 20, "last": "saved"}')$$,
                'save_snapshot at an existing version');
SELECT results_eq($$SELECT stream_version, state FROM event_store.load_aggregate('taptally-1', 2)$$,
                  $$VALUES (2::bigint, '{"n": 20, "last": "saved"}'::jsonb)$$,
                  'load_aggregate starts from the saved snapshot');
SELECT results_eq($$SELECT stream_version, state_version FROM event_store.load_snapshot('taptally-1', 2)$$,
                  $$VALUES (2::bigint, 1)$$,
                  'load_snapshot returns the newest snapshot at or below max_version');

-- upcasting
CREATE FUNCTION pg_temp.tap_up(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data || '{"upcast": true}' $$;
SELECT lives_ok($$SELECT event_store.register_upcaster('TapOld', 1,
                    'pg_temp.tap_up(jsonb,jsonb)'::regprocedure, 'TapNew')$$,
                'register_upcaster accepts a (jsonb, jsonb) RETURNS jsonb function');
SELECT is(event_store.append('taptally-2', '{"type": "TapOld", "data": {"x": 1}}'), 1::bigint,
          'an event of the old type is appended');
SELECT results_eq($$SELECT event_type COLLATE "default", data, schema_version FROM event_store.read_stream('taptally-2')$$,
                  $$VALUES ('TapNew'::text, '{"x": 1, "upcast": true}'::jsonb, 2)$$,
                  'read_stream returns the upcast event');
SELECT results_eq($$SELECT event_type COLLATE "default", data, schema_version
                      FROM event_store.read_stream('taptally-2', raw => true)$$,
                  $$VALUES ('TapOld'::text, '{"x": 1}'::jsonb, 1)$$,
                  'read_stream with raw => true returns the stored event');
SELECT lives_ok($$SELECT event_store.drop_upcaster('TapOld', 1)$$, 'drop_upcaster');

-- errors
SELECT throws_ok($$SELECT * FROM event_store.load_aggregate('tapnothing-1')$$, '22023',
                 'no aggregate is defined for category "tapnothing"',
                 'load_aggregate of a category without an aggregate');
SELECT throws_ok($$SELECT event_store.define_aggregate('taptally',
                     'pg_temp.tap_up(jsonb,jsonb)'::regprocedure)$$, '22023', NULL,
                 'a reducer with the wrong signature is rejected');
SELECT throws_ok($$SELECT event_store.define_aggregate('taptally',
                     'pg_temp.tap_count(jsonb,event_store.event)'::regprocedure, '{}', 0)$$,
                 '22023', NULL, 'snapshot_every 0 is rejected');
SELECT throws_ok($$SELECT event_store.save_snapshot('taptally-1', 4, '{}')$$, '22023', NULL,
                 'save_snapshot beyond the end of the stream is rejected');
SELECT throws_ok($$SELECT event_store.register_upcaster('TapOld', 1,
                     'pg_temp.tap_count(jsonb,event_store.event)'::regprocedure)$$, '22023', NULL,
                 'an upcaster with the wrong signature is rejected');
SELECT throws_ok($$SELECT event_store.drop_upcaster('TapOld', 1)$$, '42704', NULL,
                 'dropping a missing upcaster is an error');

SELECT * FROM finish();
ROLLBACK;
