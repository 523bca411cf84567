-- event_store: the privilege recipe.
--
-- PUBLIC may name the objects of schema event_store and nothing more: no
-- function runs, no table can be read, and the tables are never writable
-- (all writes go through the functions).  This script creates three group
-- roles with what each kind of user needs; grant them to login roles:
--
--   GRANT event_store_writer TO orders_service;
--
-- Run it as the extension's owner (a superuser), in each database with the
-- extension.  Running it again changes nothing.
--
--   event_store_reader    read streams, categories, the global log,
--                         correlated events, aggregates, snapshots, saga
--                         states and diagrams; follow the log
--                         (head_position, wait_for_events) and the
--                         projections (wait_for_projection); consume
--                         subscriptions (claim_events, ack_events,
--                         nack_event, release_events: these also need
--                         membership in the subscription's owner)
--   event_store_writer    the reader's rights, plus append,
--                         last_appended_position, save_snapshot,
--                         start_saga, delete_stream and reopen_stream
--   event_store_operator  the reader's rights, plus registering upcasters,
--                         aggregates, projections, subscriptions (and
--                         replaying or skipping their parked streams) and
--                         saga types, running
--                         projections, working saga steps, retention,
--                         purge_stream (which also needs the superuser-only
--                         setting event_store.allow_purge), and the
--                         monitoring views (stats, projection_status,
--                         saga_problems, saga_types, saga_circuits,
--                         subscription_status, subscription_parked,
--                         import_status)
--
-- README.md ("Privileges and category ownership") lists every function and
-- view of each role; a test compares that table with what this script
-- grants, so change both together.
--
-- Publications, imports and archiving are not granted: create_publication
-- and drop_publication need membership in the extension's owner (and CREATE
-- on the database), create_import and drop_import a superuser,
-- archive_events membership in the extension's owner (and CREATE on the
-- tablespace).
--
-- Category grants come on top: once a category has a grant
-- (event_store.grant_category), only roles holding one may append to or
-- read its streams.  Only the extension owner manages them, unless it
-- grants EXECUTE on grant_category / revoke_category to someone.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'event_store_reader') THEN
        CREATE ROLE event_store_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'event_store_writer') THEN
        CREATE ROLE event_store_writer NOLOGIN IN ROLE event_store_reader;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'event_store_operator') THEN
        CREATE ROLE event_store_operator NOLOGIN IN ROLE event_store_reader;
    END IF;
END $$;

GRANT EXECUTE ON FUNCTION
    event_store.stream_version(text),
    event_store.read_stream(text, bigint, bigint, boolean, boolean),
    event_store.read_category(text, bigint, int, text[], boolean),
    event_store.read_all(bigint, int, text[], boolean),
    event_store.read_correlated(text, bigint, int),
    event_store.head_position(),
    event_store.wait_for_events(bigint, interval),
    event_store.load_aggregate(text, bigint),
    event_store.load_snapshot(text, bigint),
    event_store.saga_state(uuid),
    event_store.saga_diagram(uuid),
    event_store.saga_diagram(text),
    event_store.wait_for_projection(text, bigint, interval),
    event_store.claim_events(text, text, int, interval, interval),
    event_store.ack_events(text, text, bigint),
    event_store.nack_event(text, text, bigint, text, interval),
    event_store.release_events(text, text)
  TO event_store_reader;

GRANT EXECUTE ON FUNCTION
    event_store.append(text, jsonb, bigint),
    event_store.last_appended_position(),
    event_store.save_snapshot(text, bigint, jsonb, int),
    event_store.start_saga(text, jsonb, uuid),
    event_store.delete_stream(text, bigint),
    event_store.reopen_stream(text)
  TO event_store_writer;

GRANT EXECUTE ON FUNCTION
    event_store.register_upcaster(text, int, regprocedure, text),
    event_store.drop_upcaster(text, int),
    event_store.define_aggregate(text, regprocedure, jsonb, int, int),
    event_store.purge_snapshots(text),
    event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure, int, text),
    event_store.rebuild_projection(text),
    event_store.pause_projection(text),
    event_store.resume_projection(text),
    event_store.drop_projection(text),
    event_store.run_projections(int),
    event_store.create_subscription(text, text[], text[], int, bigint, int, interval),
    event_store.drop_subscription(text),
    event_store.replay_parked(text, text),
    event_store.skip_parked(text, text),
    event_store.define_saga(text, jsonb),
    event_store.complete_saga_step(uuid, text, jsonb),
    event_store.fail_saga_step(uuid, text, text, boolean),
    event_store.claim_saga_steps(text, int, text[], interval),
    event_store.saga_tick(),
    event_store.retry_saga(uuid),
    event_store.resolve_saga(uuid, text, text),
    event_store.set_stream_retention(text, bigint, interval),
    event_store.enforce_retention(),
    event_store.purge_stream(text),
    event_store._counters(),
    event_store._import_errors()
  TO event_store_operator;

GRANT SELECT ON event_store.projection_status, event_store.saga_problems, event_store.saga_types, event_store.saga_circuits, event_store.stats,
    event_store.subscription_status, event_store.subscription_parked,
    event_store.import_status
  TO event_store_operator;
