--
-- Read-only means read-only: every function that writes or changes state
-- refuses with 25006 in a read-only transaction, before doing anything, as
-- an INSERT does; the reads go on working.
--
SET client_min_messages = warning;
CREATE TABLE ro_marker (n int);
CREATE FUNCTION ro_reducer(state jsonb, e event_store.event) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT state $$;
CREATE FUNCTION ro_handler(e event_store.event) RETURNS void
    LANGUAGE sql AS $$ INSERT INTO ro_marker VALUES (1) $$;
CREATE FUNCTION ro_upcaster(data jsonb, metadata jsonb) RETURNS jsonb
    LANGUAGE sql AS $$ SELECT data $$;
SELECT event_store.append('ro-1', '{"type": "Opened"}');
SELECT event_store.define_aggregate('ro', 'ro_reducer(jsonb,event_store.event)');
SELECT event_store.create_projection('ro_async', 'ro_handler(event_store.event)', mode => 'async');
RESET client_min_messages;

-- a plain INSERT, for comparison
BEGIN READ ONLY;
SELECT regress.try('INSERT INTO ro_marker VALUES (0)');
ROLLBACK;

SET default_transaction_read_only = on;
SELECT f, regress.try(stmt) AS result
  FROM (VALUES
    ('append', $$SELECT event_store.append('ro-1', '{"type": "Again"}')$$),
    ('append batch', $$SELECT event_store.append('ro-2', '[{"type": "A"}, {"type": "B"}]', 0)$$),
    ('delete_stream', $$SELECT event_store.delete_stream('ro-1')$$),
    ('reopen_stream', $$SELECT event_store.reopen_stream('ro-1')$$),
    ('purge_stream', $$SELECT event_store.purge_stream('ro-1')$$),
    ('set_stream_retention', $$SELECT event_store.set_stream_retention('ro-1', 10)$$),
    ('enforce_retention', $$SELECT event_store.enforce_retention()$$),
    ('grant_category', $$SELECT event_store.grant_category(current_user::regrole, 'ro')$$),
    ('revoke_category', $$SELECT event_store.revoke_category(current_user::regrole, 'ro')$$),
    ('register_upcaster', $$SELECT event_store.register_upcaster('Opened', 1, 'ro_upcaster(jsonb,jsonb)')$$),
    ('drop_upcaster', $$SELECT event_store.drop_upcaster('Opened', 1)$$),
    ('define_aggregate', $$SELECT event_store.define_aggregate('ro', 'ro_reducer(jsonb,event_store.event)')$$),
    ('save_snapshot', $$SELECT event_store.save_snapshot('ro-1', 1, '{}')$$),
    ('purge_snapshots', $$SELECT event_store.purge_snapshots()$$),
    ('create_projection', $$SELECT event_store.create_projection('ro_p', 'ro_handler(event_store.event)')$$),
    ('rebuild_projection', $$SELECT event_store.rebuild_projection('ro_async')$$),
    ('pause_projection', $$SELECT event_store.pause_projection('ro_async')$$),
    ('resume_projection', $$SELECT event_store.resume_projection('ro_async')$$),
    ('drop_projection', $$SELECT event_store.drop_projection('ro_async')$$),
    ('run_projections', $$SELECT event_store.run_projections()$$),
    ('define_saga', $$SELECT event_store.define_saga('ro_saga', '{"steps": [{"name": "a"}]}')$$),
    ('start_saga', $$SELECT event_store.start_saga('ro_saga', '{}')$$),
    ('complete_saga_step', $$SELECT event_store.complete_saga_step(gen_random_uuid(), 'a')$$),
    ('fail_saga_step', $$SELECT event_store.fail_saga_step(gen_random_uuid(), 'a', 'e')$$),
    ('claim_saga_steps', $$SELECT count(*) FROM event_store.claim_saga_steps('w')$$),
    ('saga_tick', $$SELECT event_store.saga_tick()$$)
  ) AS t(f, stmt);

-- the reads work
SELECT event_store.stream_version('ro-1'), event_store.head_position() > 0 AS head;
SELECT stream_id, stream_version, event_type FROM event_store.read_stream('ro-1');
SELECT count(*) FROM event_store.read_all() WHERE stream_id LIKE 'ro-%';
SELECT count(*) FROM event_store.read_category('ro');
SELECT stream_version FROM event_store.load_aggregate('ro-1');
SELECT count(*) FROM event_store.load_snapshot('ro-1');
SELECT name, state, position FROM event_store.projection_status WHERE name = 'ro_async';
RESET default_transaction_read_only;

-- BEGIN READ ONLY alike, and nothing was written
BEGIN READ ONLY;
SELECT event_store.append('ro-1', '{"type": "Again"}');
ROLLBACK;
SELECT count(*) AS events, max(stream_version) AS version FROM event_store.events WHERE stream_id LIKE 'ro-%';
SELECT count(*) AS applied FROM ro_marker;

-- writable again
SELECT event_store.append('ro-1', '{"type": "Again"}');

SET client_min_messages = warning;
SELECT event_store.drop_projection('ro_async');
DROP FUNCTION ro_handler(event_store.event);
DELETE FROM event_store.aggregates WHERE category = 'ro';
DROP FUNCTION ro_reducer(jsonb, event_store.event);
DROP FUNCTION ro_upcaster(jsonb, jsonb);
DROP TABLE ro_marker;
RESET client_min_messages;
