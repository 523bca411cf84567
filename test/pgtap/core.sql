--
-- core.sql: pgTAP assertions on the core SQL contract of event_store:
-- function signatures, result types, SQLSTATEs and reads.
--
-- The runner creates the extensions pgtap and event_store in the database
-- first; everything here runs in one transaction that is rolled back, so
-- the database is left as it was found (the store may already hold events).
--
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset pager off

BEGIN;
SET LOCAL IntervalStyle = 'postgres';
SELECT plan(94);

--
-- Signatures: exact argument types
--
SELECT has_schema('event_store');
SELECT has_function('event_store', 'append', ARRAY['text', 'jsonb', 'bigint']);
SELECT has_function('event_store', 'stream_version', ARRAY['text']);
SELECT has_function('event_store', 'read_stream', ARRAY['text', 'bigint', 'bigint', 'boolean', 'boolean']);
SELECT has_function('event_store', 'read_all', ARRAY['bigint', 'integer', 'text[]', 'boolean']);
SELECT has_function('event_store', 'read_category', ARRAY['text', 'bigint', 'integer', 'text[]', 'boolean']);
SELECT has_function('event_store', 'head_position', ARRAY[]::text[]);
SELECT has_function('event_store', 'wait_for_events', ARRAY['bigint', 'interval']);
SELECT has_function('event_store', 'define_aggregate', ARRAY['text', 'regprocedure', 'jsonb', 'integer', 'integer']);
SELECT has_function('event_store', 'load_aggregate', ARRAY['text', 'bigint']);
SELECT has_function('event_store', 'save_snapshot', ARRAY['text', 'bigint', 'jsonb', 'integer']);
SELECT has_function('event_store', 'load_snapshot', ARRAY['text', 'bigint']);
SELECT has_function('event_store', 'register_upcaster', ARRAY['text', 'integer', 'regprocedure', 'text']);
SELECT has_function('event_store', 'drop_upcaster', ARRAY['text', 'integer']);
SELECT has_function('event_store', 'create_projection',
                    ARRAY['text', 'regprocedure', 'text[]', 'text[]', 'text', 'regprocedure', 'integer', 'text']);
SELECT has_function('event_store', 'wait_for_projection', ARRAY['text', 'bigint', 'interval']);
SELECT has_function('event_store', 'last_appended_position', ARRAY[]::text[]);
SELECT has_function('event_store', 'create_subscription',
                    ARRAY['text', 'text[]', 'text[]', 'integer', 'bigint', 'integer', 'interval']);
SELECT has_function('event_store', 'claim_events', ARRAY['text', 'text', 'integer', 'interval', 'interval']);
SELECT has_function('event_store', 'ack_events', ARRAY['text', 'text', 'bigint']);
SELECT has_function('event_store', 'nack_event', ARRAY['text', 'text', 'bigint', 'text', 'interval']);
SELECT has_function('event_store', 'run_projections', ARRAY['integer']);
SELECT has_function('event_store', 'rebuild_projection', ARRAY['text']);
SELECT has_function('event_store', 'pause_projection', ARRAY['text']);
SELECT has_function('event_store', 'resume_projection', ARRAY['text']);
SELECT has_function('event_store', 'drop_projection', ARRAY['text']);
SELECT has_view('event_store', 'projection_status', 'view event_store.projection_status exists');
SELECT has_function('event_store', 'define_saga', ARRAY['text', 'jsonb']);
SELECT has_function('event_store', 'start_saga', ARRAY['text', 'jsonb', 'uuid']);
SELECT has_function('event_store', 'claim_saga_steps', ARRAY['text', 'integer', 'text[]', 'interval']);
SELECT has_function('event_store', 'complete_saga_step', ARRAY['uuid', 'text', 'jsonb']);
SELECT has_function('event_store', 'fail_saga_step', ARRAY['uuid', 'text', 'text', 'boolean']);
SELECT has_function('event_store', 'saga_tick', ARRAY[]::text[]);
SELECT has_function('event_store', 'saga_state', ARRAY['uuid']);

--
-- Result types
--
SELECT function_returns('event_store', 'append', ARRAY['text', 'jsonb', 'bigint'], 'bigint');
SELECT function_returns('event_store', 'stream_version', ARRAY['text'], 'bigint');
SELECT function_returns('event_store', 'read_stream', ARRAY['text', 'bigint', 'bigint', 'boolean', 'boolean'],
                        'setof event_store.event');
SELECT function_returns('event_store', 'read_all', ARRAY['bigint', 'integer', 'text[]', 'boolean'],
                        'setof event_store.event');
SELECT function_returns('event_store', 'read_category', ARRAY['text', 'bigint', 'integer', 'text[]', 'boolean'],
                        'setof event_store.event');
SELECT function_returns('event_store', 'head_position', ARRAY[]::text[], 'bigint');
SELECT function_returns('event_store', 'wait_for_events', ARRAY['bigint', 'interval'], 'bigint');
SELECT function_returns('event_store', 'run_projections', ARRAY['integer'], 'bigint');
SELECT function_returns('event_store', 'start_saga', ARRAY['text', 'jsonb', 'uuid'], 'uuid');
SELECT function_returns('event_store', 'saga_tick', ARRAY[]::text[], 'integer');
SELECT function_returns('event_store', 'saga_state', ARRAY['uuid'], 'jsonb');

--
-- Argument names and defaults, as callers use them with named notation
--
SELECT is(pg_get_function_arguments('event_store.append(text, jsonb, bigint)'::regprocedure),
          'stream_id text, events jsonb, expected_version bigint DEFAULT NULL::bigint',
          'append: argument names and defaults');
SELECT is(pg_get_function_arguments('event_store.read_stream(text, bigint, bigint, boolean, boolean)'::regprocedure),
          'stream_id text, from_version bigint DEFAULT NULL::bigint, max_count bigint DEFAULT NULL::bigint, '
          'backward boolean DEFAULT false, raw boolean DEFAULT false',
          'read_stream: argument names and defaults');
SELECT is(pg_get_function_arguments('event_store.read_all(bigint, integer, text[], boolean)'::regprocedure),
          'after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, '
          'event_types text[] DEFAULT NULL::text[], raw boolean DEFAULT false',
          'read_all: argument names and defaults');
SELECT is(pg_get_function_arguments('event_store.read_category(text, bigint, integer, text[], boolean)'::regprocedure),
          'category text, after_position bigint DEFAULT 0, max_count integer DEFAULT 1000, '
          'event_types text[] DEFAULT NULL::text[], raw boolean DEFAULT false',
          'read_category: argument names and defaults');
SELECT is(pg_get_function_arguments('event_store.wait_for_events(bigint, interval)'::regprocedure),
          'after_position bigint, timeout interval DEFAULT ''00:00:10''::interval',
          'wait_for_events: argument names and default');
-- (the default above is shown in IntervalStyle postgres, set above)
SELECT isnt_strict('event_store', 'append', ARRAY['text', 'jsonb', 'bigint'],
                   'append is not STRICT: a NULL argument is an error, not a NULL result');
SELECT isnt_strict('event_store', 'read_stream', ARRAY['text', 'bigint', 'bigint', 'boolean', 'boolean'],
                   'read_stream is not STRICT');

--
-- The event row type
--
SELECT has_type('event_store', 'event', 'type event_store.event exists');
SELECT results_eq(
    $$SELECT attname::text COLLATE "default", format_type(atttypid, atttypmod)
        FROM pg_attribute
       WHERE attrelid = 'event_store.event'::regclass AND attnum > 0 AND NOT attisdropped
       ORDER BY attnum$$,
    $$VALUES ('global_position', 'bigint'), ('stream_id', 'text'), ('stream_version', 'bigint'),
             ('event_id', 'uuid'), ('event_type', 'text'), ('data', 'jsonb'), ('metadata', 'jsonb'),
             ('schema_version', 'integer'), ('recorded_at', 'timestamp with time zone')$$,
    'event_store.event has the contract''s columns in order');
SELECT has_table('event_store', 'events', 'table event_store.events exists');
SELECT columns_are('event_store', 'events',
    ARRAY['global_position', 'stream_id', 'stream_version', 'event_id', 'event_type',
          'data', 'metadata', 'schema_version', 'recorded_at'],
    'event_store.events has the columns of the event row type');

--
-- Appends and reads (streams named tapstream* to keep clear of anything
-- stored).
--
SELECT event_store.head_position() AS tap_start \gset
SELECT is(event_store.stream_version('tapstream-1'), 0::bigint, 'an unknown stream is at version 0');
SELECT is(event_store.append('tapstream-1', '{"type": "A", "id": "7a000000-0000-4000-8000-000000000001"}', 0),
          1::bigint, 'append of one event to a new stream returns 1');
SELECT is(event_store.append('tapstream-1', '[{"type": "B", "data": {"n": 2}}, {"type": "C", "metadata": {"m": 3}}]', 1),
          3::bigint, 'append of a batch returns the last version');
SELECT is(event_store.append('tapstream-2', '{"type": "A"}'), 1::bigint,
          'append with the default expected_version');
SELECT is(event_store.append('tapstream', '{"type": "D", "schema_version": 4}', NULL), 1::bigint,
          'append to a stream id without "-"');
SELECT is(event_store.stream_version('tapstream-1'), 3::bigint, 'stream_version after the appends');

SELECT results_eq(
    $$SELECT stream_version, event_type, data, metadata, schema_version
        FROM event_store.read_stream('tapstream-1')$$,
    $$VALUES (1::bigint, 'A'::text, '{}'::jsonb, '{}'::jsonb, 1),
             (2, 'B', '{"n": 2}', '{}', 1),
             (3, 'C', '{}', '{"m": 3}', 1)$$,
    'read_stream forward');
SELECT results_eq(
    $$SELECT stream_version FROM event_store.read_stream('tapstream-1', backward => true)$$,
    $$VALUES (3::bigint), (2), (1)$$,
    'read_stream backward');
SELECT results_eq(
    $$SELECT stream_version FROM event_store.read_stream('tapstream-1', 2, 1)$$,
    $$VALUES (2::bigint)$$,
    'read_stream from_version and max_count');
SELECT results_eq(
    $$SELECT stream_version FROM event_store.read_stream('tapstream-1', 2, backward => true)$$,
    $$VALUES (2::bigint), (1)$$,
    'read_stream backward from a version');
SELECT is_empty(
    $$SELECT * FROM event_store.read_stream('tapstream-9')$$,
    'read_stream of an unknown stream is empty');
SELECT results_eq(
    $$SELECT event_id FROM event_store.read_stream('tapstream-1', max_count => 1)$$,
    $$VALUES ('7a000000-0000-4000-8000-000000000001'::uuid)$$,
    'the caller''s event id is kept');
SELECT results_eq(
    format($$SELECT * FROM event_store.read_all(%s)$$, :tap_start),
    format($$SELECT * FROM event_store.events WHERE global_position > %s ORDER BY global_position$$, :tap_start),
    'read_all after a position returns the stored rows in position order');
SELECT results_eq(
    format($$SELECT stream_id, stream_version FROM event_store.read_all(%s, 2)$$, :tap_start),
    $$VALUES ('tapstream-1'::text, 1::bigint), ('tapstream-1', 2)$$,
    'read_all max_count');
SELECT results_eq(
    format($$SELECT stream_id, event_type FROM event_store.read_all(%s, 10, ARRAY['A'])$$, :tap_start),
    $$VALUES ('tapstream-1'::text, 'A'::text), ('tapstream-2', 'A')$$,
    'read_all event_types');
SELECT results_eq(
    format($$SELECT stream_id, stream_version FROM event_store.read_category('tapstream', %s)$$, :tap_start),
    $$VALUES ('tapstream-1'::text, 1::bigint), ('tapstream-1', 2), ('tapstream-1', 3),
             ('tapstream-2', 1), ('tapstream', 1)$$,
    'read_category includes the stream named like the category');
SELECT results_eq(
    format($$SELECT stream_id FROM event_store.read_category('tapstream', %s, 5, ARRAY['D'])$$, :tap_start),
    $$VALUES ('tapstream'::text)$$,
    'read_category with event_types');
SELECT is(event_store.head_position(),
          (SELECT max(global_position) FROM event_store.events),
          'head_position is the highest position with nothing else in flight');
SELECT is(event_store.wait_for_events(:tap_start, '1 ms'), event_store.head_position(),
          'wait_for_events returns the head once it is past after_position');
SELECT is(event_store.wait_for_events(event_store.head_position(), '1 ms'), event_store.head_position(),
          'wait_for_events returns the head at the timeout');

--
-- Idempotent retry
--
SELECT is(event_store.append('tapstream-1', '{"type": "A", "id": "7a000000-0000-4000-8000-000000000001"}', 0),
          1::bigint, 'a retried append returns the same version');
SELECT is(event_store.stream_version('tapstream-1'), 3::bigint, 'and writes nothing');

--
-- SQLSTATEs
--
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-1', '{"type": "X"}', 5)$$,
    'SE001', 'wrong expected version for stream "tapstream-1": expected 5, actual 3',
    'wrong expected version: SE001 naming stream, expected and actual');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-1', '{"type": "X"}', 0)$$,
    'SE001', 'wrong expected version for stream "tapstream-1": expected 0, actual 3',
    'expected version 0 on an existing stream: SE001');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '{"type": "X", "id": "7a000000-0000-4000-8000-000000000001"}')$$,
    'SE002', 'duplicate event id "7a000000-0000-4000-8000-000000000001"',
    'an event id reused in another stream: SE002 naming the id');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '[{"type": "X", "id": "7a000000-0000-4000-8000-000000000002"},
                                                {"type": "Y", "id": "7a000000-0000-4000-8000-000000000002"}]')$$,
    'SE002', NULL, 'the same id twice in one batch: SE002');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '{"type": "X"}', -1)$$,
    '22023', 'expected_version must not be negative',
    'negative expected_version: 22023');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '[{"type": "X"}, {"type": ""}]')$$,
    '22023', 'invalid event at index 1: "type" must not be empty',
    'a bad event in a batch: 22023 naming its index');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '{"type": "X", "tpye": "Y"}')$$,
    '22023', NULL, 'an unknown key: 22023');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '[]')$$,
    '22023', NULL, 'an empty batch: 22023');
SELECT throws_ok(
    $$SELECT event_store.append('tapstream-3', '{"type": "X", "id": "not-a-uuid"}')$$,
    '22P02', NULL, 'a bad uuid: 22P02');
SELECT throws_ok(
    $$SELECT event_store.append(NULL, '{"type": "X"}')$$,
    '22004', NULL, 'a NULL stream id: 22004');
SELECT throws_ok(
    $$SELECT * FROM event_store.read_category('tapstream-1')$$,
    '22023', NULL, 'a category containing "-": 22023');
SELECT throws_ok(
    $$SELECT * FROM event_store.read_stream('tapstream-1', -1)$$,
    '22023', NULL, 'a negative from_version: 22023');
SELECT throws_ok(
    $$SELECT * FROM event_store.read_all(0, -1)$$,
    '22023', NULL, 'a negative max_count: 22023');
SELECT throws_ok(
    $$UPDATE event_store.events SET data = '{}' WHERE stream_id = 'tapstream-1'$$,
    '42501', NULL, 'UPDATE of stored events is refused');
SELECT throws_ok(
    $$DELETE FROM event_store.events WHERE stream_id = 'tapstream-1'$$,
    '42501', NULL, 'DELETE of stored events is refused');
SELECT is(event_store.stream_version('tapstream-3'), 0::bigint, 'nothing of the refused appends was written');

SELECT * FROM finish();
ROLLBACK;
