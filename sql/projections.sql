--
-- projections: inline projections (replay on creation, applied inside the
-- appending transaction, handler errors abort the append), filters by event
-- type and category (combined with AND, matching the upcast event), pause,
-- resume and rebuild of inline and async projections, async projections
-- driven by run_projections() with projection_status, failing async
-- handlers (retries, failed state, the other projections keep going),
-- drop_projection and argument checks.
--
-- The background worker is off in this suite (test/event_store.conf), so
-- async projections move only when run_projections() is called.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- try(sql): run a statement and show the SQLSTATE, message, detail and hint
-- of its error (or "no error"), and the context lines that name a projection.
CREATE FUNCTION pg_temp.try(sql text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    st  text;
    msg text;
    det text;
    hnt text;
    ctx text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT,
                            ctx = PG_EXCEPTION_CONTEXT;
    RETURN st || ': ' || msg
        || coalesce(E'\nDETAIL: ' || nullif(det, ''), '')
        || coalesce(E'\nHINT: ' || nullif(hnt, ''), '')
        || coalesce((SELECT string_agg(E'\nCONTEXT: ' || l, '')
                       FROM regexp_split_to_table(ctx, E'\n') AS l
                      WHERE l LIKE 'projection %'), '');
END
$f$;

-- The status of the projections, without the timestamps (lag_seconds is
-- only told apart as zero, positive or negative).
CREATE FUNCTION pg_temp.status()
RETURNS TABLE (name text, mode text, state text, "position" bigint, head_position bigint,
               lag_events bigint, lag_seconds text, last_error text)
LANGUAGE sql AS $$
    SELECT name, mode, state, position, head_position, lag_events,
           CASE WHEN lag_seconds = 0 THEN '0' WHEN lag_seconds > 0 THEN '> 0' ELSE '< 0' END,
           last_error
      FROM event_store.projection_status ORDER BY name
$$;

--
-- Read models.  rm_log gets one row per (projection, event) handed to a
-- handler: its primary key makes a second application of an event to the
-- same projection an error, and seq records the order of application.
-- rm_counts counts events per stream with INSERT ... ON CONFLICT.
--
CREATE TABLE rm_log (
    proj           text NOT NULL,
    pos            bigint NOT NULL,
    stream_id      text NOT NULL,
    stream_version bigint NOT NULL,
    event_type     text NOT NULL,
    schema_version int NOT NULL,
    data           jsonb NOT NULL,
    seq            bigint GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (proj, pos)
);
CREATE TABLE rm_counts (stream_id text PRIMARY KEY, n int NOT NULL);
-- every call of a reset function
CREATE TABLE rm_resets (proj text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY);

CREATE FUNCTION log_event(proj text, e event_store.event) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rm_log (proj, pos, stream_id, stream_version, event_type, schema_version, data)
    VALUES (proj, e.global_position, e.stream_id, e.stream_version, e.event_type,
            e.schema_version, e.data)
$$;
CREATE FUNCTION reset_log(proj text) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rm_log WHERE rm_log.proj = reset_log.proj;
    INSERT INTO rm_resets (proj) VALUES (reset_log.proj);
$$;

CREATE FUNCTION count_event(e event_store.event) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rm_counts VALUES (e.stream_id, 1)
    ON CONFLICT (stream_id) DO UPDATE SET n = rm_counts.n + 1
$$;
CREATE FUNCTION count_reset() RETURNS void
LANGUAGE sql AS $$
    DELETE FROM rm_counts;
    INSERT INTO rm_resets (proj) VALUES ('counts');
$$;

-- one handler (and reset function) per logging projection
CREATE FUNCTION h_all(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('all', e) $$;
CREATE FUNCTION h_types(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('types', e) $$;
CREATE FUNCTION r_types() RETURNS void
LANGUAGE sql AS $$ SELECT reset_log('types') $$;
CREATE FUNCTION h_cats(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('cats', e) $$;
CREATE FUNCTION h_both(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('both', e) $$;
CREATE FUNCTION h_stored_type(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('stored_type', e) $$;
CREATE FUNCTION h_async_all(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('async_all', e) $$;
CREATE FUNCTION r_async_all() RETURNS void
LANGUAGE sql AS $$ SELECT reset_log('async_all') $$;
CREATE FUNCTION h_async_items(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('async_items', e) $$;
CREATE FUNCTION h_tmp(e event_store.event) RETURNS void
LANGUAGE sql AS $$ SELECT log_event('tmp', e) $$;

-- The inline guard refuses a negative quantity.
CREATE FUNCTION h_guard(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF (e.data ->> 'qty')::int < 0 THEN
        RAISE EXCEPTION 'negative quantity in stream %', e.stream_id;
    END IF;
END
$$;

-- The async "fragile" projection fails on the event types listed in poison.
CREATE TABLE poison (event_type text PRIMARY KEY);
CREATE FUNCTION h_fragile(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM poison p WHERE p.event_type = e.event_type) THEN
        RAISE EXCEPTION 'cannot project % at position %', e.event_type, e.global_position;
    END IF;
    PERFORM log_event('fragile', e);
END
$$;

--
-- History written before any projection exists.
--
SELECT event_store.append('order-1', '[
  {"type": "OrderPlaced", "data": {"total": 10}},
  {"type": "ItemAdded", "data": {"sku": "a", "qty": 1}},
  {"type": "ItemAdded", "data": {"sku": "b", "qty": 2}}
]');
SELECT event_store.append('cart-1', '{"type": "CartOpened"}');
SELECT event_store.append('order-2', '{"type": "OrderPlaced", "data": {"total": 5}}');

-- no projection: the status view is empty
SELECT * FROM pg_temp.status();

--
-- Inline projections: creating one replays the history before returning and
-- turns the trigger on.  ("counts" has a reset function, "all" has none.)
--
SELECT event_store.create_projection('counts', 'count_event(event_store.event)',
                                     reset => 'count_reset()');
SELECT * FROM rm_counts ORDER BY stream_id;
SELECT event_store.create_projection('all', 'h_all(event_store.event)', mode => 'inline');
SELECT pos, stream_id, stream_version, event_type FROM rm_log WHERE proj = 'all' ORDER BY seq;
-- an inline projection that runs is at the head
SELECT * FROM pg_temp.status();
SELECT name, handler, event_types, categories, mode, reset, state
  FROM event_store.projections ORDER BY name;

-- Applied inside the appending transaction: visible to it before commit, in
-- stream order, and gone with a rollback.
BEGIN;
SELECT event_store.append('order-1', '[
  {"type": "ItemAdded", "data": {"sku": "c", "qty": 3}},
  {"type": "ItemRemoved", "data": {"sku": "a"}}
]');
SELECT * FROM rm_counts WHERE stream_id = 'order-1';
SELECT pos, stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'all' AND stream_id = 'order-1' ORDER BY seq;
ROLLBACK;
SELECT * FROM rm_counts ORDER BY stream_id;
SELECT count(*) AS all_logged FROM rm_log WHERE proj = 'all';
SELECT event_store.stream_version('order-1');

-- committed: applied once per event, in stream order
SELECT event_store.append('order-3', '[
  {"type": "OrderPlaced", "data": {"total": 7}},
  {"type": "ItemAdded", "data": {"sku": "x", "qty": 1}},
  {"type": "ItemAdded", "data": {"sku": "y", "qty": 1}}
]');
SELECT * FROM rm_counts ORDER BY stream_id;
SELECT pos, stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'all' AND stream_id = 'order-3' ORDER BY seq;
SELECT * FROM pg_temp.status();

-- A projection created and rolled back leaves nothing behind: the other
-- inline projections keep working without calling its handler.
BEGIN;
SELECT event_store.create_projection('tmp', 'h_tmp(event_store.event)');
SELECT count(*) AS tmp_replayed FROM rm_log WHERE proj = 'tmp';
ROLLBACK;
SELECT event_store.append('cart-1', '{"type": "ItemAdded", "data": {"sku": "z", "qty": 1}}');
SELECT count(*) AS tmp_logged FROM rm_log WHERE proj = 'tmp';
SELECT stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'all' ORDER BY seq DESC LIMIT 1;

-- An append in the transaction that creates the projection is part of the
-- replay; one after it is applied by the trigger.
BEGIN;
SELECT event_store.append('tmp-1', '{"type": "Before"}');
SELECT event_store.create_projection('tmp', 'h_tmp(event_store.event)', categories => '{tmp}');
SELECT event_store.append('tmp-1', '{"type": "After"}');
COMMIT;
SELECT stream_id, stream_version, event_type FROM rm_log WHERE proj = 'tmp' ORDER BY seq;
SELECT event_store.drop_projection('tmp');

-- A handler may append: the events it appends go through the inline
-- projections too (here "echo" answers Ping with Pong on stream echo-1).
CREATE FUNCTION h_echo(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM log_event('echo', e);
    IF e.event_type = 'Ping' THEN
        PERFORM event_store.append('echo-1', '{"type": "Pong"}');
    END IF;
END
$$;
SELECT event_store.create_projection('echo', 'h_echo(event_store.event)', categories => '{ping,echo}');
SELECT event_store.append('ping-1', '[{"type": "Ping"}, {"type": "Other"}]');
SELECT proj, pos, stream_id, stream_version, event_type FROM rm_log
 WHERE stream_id IN ('ping-1', 'echo-1') ORDER BY proj, pos;
SELECT event_store.drop_projection('echo');

--
-- A handler error aborts the append, naming the projection and the event's
-- position in the error context; nothing of the batch is written.
--
SELECT event_store.create_projection('guard', 'h_guard(event_store.event)');
SELECT event_store.head_position() AS head_before \gset
SELECT pg_temp.try($$SELECT event_store.append('order-2', '[
  {"type": "ItemAdded", "data": {"sku": "a", "qty": 1}},
  {"type": "ItemAdded", "data": {"sku": "b", "qty": -1}}
]')$$);
SELECT event_store.stream_version('order-2');
SELECT count(*) AS events_after_head_before FROM event_store.events
 WHERE global_position > :head_before;
SELECT count(*) AS order_2_events FROM event_store.events WHERE stream_id = 'order-2';
SELECT * FROM rm_counts WHERE stream_id = 'order-2';
SELECT count(*) AS all_logged_for_order_2 FROM rm_log WHERE proj = 'all' AND stream_id = 'order-2';
-- and a good append still goes through
SELECT event_store.append('order-2', '{"type": "ItemAdded", "data": {"sku": "a", "qty": 1}}');
SELECT * FROM rm_counts WHERE stream_id = 'order-2';
SELECT event_store.drop_projection('guard');

-- A handler error while replaying the history makes create_projection fail:
-- no projection, the trigger as it was.
SELECT event_store.append('order-9', '{"type": "ItemAdded", "data": {"sku": "q", "qty": -5}}');
SELECT pg_temp.try($$SELECT event_store.create_projection('guard', 'h_guard(event_store.event)')$$);
SELECT count(*) AS guard_rows FROM event_store.projections WHERE name = 'guard';

--
-- Filters: event_types, categories, both (AND).  They see the upcast event:
-- ItemAddedV1 (stored, schema 1, {"code"}) is read as ItemAdded (schema 2,
-- {"sku"}), so a filter on ItemAdded takes it and one on ItemAddedV1 does not.
--
CREATE FUNCTION up_item_added(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('sku', data -> 'code', 'qty', 1) $$;
SELECT event_store.register_upcaster('ItemAddedV1', 1, 'up_item_added(jsonb,jsonb)', 'ItemAdded');
SELECT event_store.append('order-4', '{"type": "ItemAddedV1", "data": {"code": "old"}}');

-- created on existing history: each replays what passes its filters
SELECT event_store.create_projection('types', 'h_types(event_store.event)',
                                     event_types => ARRAY['ItemAdded'], reset => 'r_types()');
SELECT event_store.create_projection('cats', 'h_cats(event_store.event)',
                                     categories => ARRAY['order']);
SELECT event_store.create_projection('both', 'h_both(event_store.event)',
                                     event_types => ARRAY['ItemAdded', 'CartClosed'],
                                     categories => ARRAY['cart', 'basket']);
SELECT event_store.create_projection('stored_type', 'h_stored_type(event_store.event)',
                                     event_types => ARRAY['ItemAddedV1']);
SELECT proj, pos, stream_id, event_type, schema_version, data FROM rm_log
 WHERE proj IN ('types', 'cats', 'both', 'stored_type') ORDER BY proj, seq;

-- new events through the trigger: "orders-1" is category "orders", a stream
-- id without "-" is its own category, only the first "-" counts
SELECT event_store.append('orders-1', '{"type": "ItemAdded", "data": {"sku": "o1"}}');
SELECT event_store.append('order', '{"type": "ItemAdded", "data": {"sku": "o2"}}');
SELECT event_store.append('order-x-1', '[{"type": "ItemAdded", "data": {"sku": "o3"}},
                                         {"type": "OrderPlaced"}]');
SELECT event_store.append('basket-1', '[{"type": "CartClosed"}, {"type": "CartOpened"}]');
SELECT event_store.append('cart-1', '{"type": "ItemAddedV1", "data": {"code": "new"}}');
SELECT event_store.append('Order-1', '{"type": "ItemAdded", "data": {"sku": "upper"}}');
SELECT proj, pos, stream_id, event_type, schema_version, data FROM rm_log
 WHERE proj IN ('types', 'cats', 'both', 'stored_type')
   AND pos > (SELECT global_position FROM event_store.events WHERE stream_id = 'order-4')
 ORDER BY proj, seq;
SELECT count(*) AS stored_type_logged FROM rm_log WHERE proj = 'stored_type';
SELECT event_store.drop_projection('stored_type');

--
-- Pause and resume (inline).  A paused projection is not applied, appends
-- still succeed; resuming replays what it missed, once, before returning.
--
SELECT event_store.pause_projection('cats');
SELECT * FROM pg_temp.status() WHERE name = 'cats';
SELECT event_store.append('order-5', '[{"type": "OrderPlaced"}, {"type": "ItemAdded", "data": {"sku": "p"}}]');
SELECT event_store.append('cart-5', '{"type": "CartOpened"}');
SELECT count(*) AS cats_logged_for_order_5 FROM rm_log WHERE proj = 'cats' AND stream_id = 'order-5';
SELECT count(*) AS all_logged_for_order_5 FROM rm_log WHERE proj = 'all' AND stream_id = 'order-5';
SELECT * FROM pg_temp.status() WHERE name = 'cats';
-- pausing a paused projection changes nothing
SELECT event_store.pause_projection('cats');
SELECT * FROM pg_temp.status() WHERE name = 'cats';
SELECT event_store.resume_projection('cats');
SELECT pos, stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'cats' AND stream_id = 'order-5' ORDER BY seq;
SELECT * FROM pg_temp.status() WHERE name = 'cats';
-- resuming a running projection changes nothing either
SELECT event_store.resume_projection('cats');
SELECT event_store.append('order-5', '{"type": "ItemAdded", "data": {"sku": "q"}}');
SELECT count(*) AS cats_logged_for_order_5 FROM rm_log WHERE proj = 'cats' AND stream_id = 'order-5';
-- every event of category "order" is in "cats" exactly once
SELECT (SELECT array_agg(global_position ORDER BY global_position) FROM event_store.events
         WHERE split_part(stream_id, '-', 1) = 'order')
     = (SELECT array_agg(pos ORDER BY pos) FROM rm_log WHERE proj = 'cats') AS cats_complete;

-- Pause and resume inside the appending transaction: the appends made
-- while paused are replayed by resume, the others were applied already.
BEGIN;
SELECT event_store.append('order-6', '{"type": "ItemAdded", "data": {"sku": "r1"}}');
SELECT event_store.pause_projection('cats');
SELECT event_store.append('order-6', '{"type": "ItemAdded", "data": {"sku": "r2"}}');
SELECT count(*) AS cats_logged_for_order_6 FROM rm_log WHERE proj = 'cats' AND stream_id = 'order-6';
SELECT event_store.resume_projection('cats');
COMMIT;
SELECT pos, stream_id, stream_version, event_type, data FROM rm_log
 WHERE proj = 'cats' AND stream_id = 'order-6' ORDER BY seq;

--
-- Rebuild (inline): calls reset, replays from 0 before returning.
--
UPDATE rm_counts SET n = n + 100;	-- a read model gone wrong
SELECT event_store.rebuild_projection('counts');
SELECT proj FROM rm_resets ORDER BY seq;
SELECT * FROM rm_counts
EXCEPT
SELECT stream_id, count(*) FROM event_store.events GROUP BY stream_id;
SELECT count(*) = (SELECT count(DISTINCT stream_id) FROM event_store.events) AS counts_complete
  FROM rm_counts;
SELECT * FROM pg_temp.status() WHERE name = 'counts';
SELECT event_store.rebuild_projection('types');
SELECT (SELECT array_agg(pos ORDER BY pos) FROM rm_log WHERE proj = 'types')
     = (SELECT array_agg(global_position ORDER BY global_position)
          FROM event_store.read_all(0, 100000, ARRAY['ItemAdded'])) AS types_complete;

-- A paused projection rebuilt stays paused at position 0 with its read model
-- reset; resume replays everything.
SELECT event_store.pause_projection('counts');
SELECT event_store.append('cart-1', '{"type": "CartClosed"}');
SELECT event_store.rebuild_projection('counts');
SELECT count(*) AS counts_rows FROM rm_counts;
SELECT name, state, position, lag_events = (SELECT count(*) FROM event_store.events) AS lag_is_everything
  FROM event_store.projection_status WHERE name = 'counts';
SELECT event_store.resume_projection('counts');
SELECT * FROM rm_counts
EXCEPT
SELECT stream_id, count(*) FROM event_store.events GROUP BY stream_id;
SELECT count(*) = (SELECT count(DISTINCT stream_id) FROM event_store.events) AS counts_complete
  FROM rm_counts;
SELECT proj, count(*) FROM rm_resets GROUP BY proj ORDER BY proj;

--
-- Async projections: they start at position 0 and move only when
-- run_projections() (or the background worker) applies them, in global
-- position order, each batch committed with its checkpoint.
--
DELETE FROM rm_log WHERE proj <> 'all';
SELECT event_store.drop_projection('types');
SELECT event_store.drop_projection('cats');
SELECT event_store.drop_projection('both');
SELECT event_store.create_projection('async_all', 'h_async_all(event_store.event)',
                                     mode => 'async', reset => 'r_async_all()');
SELECT event_store.create_projection('async_items', 'h_async_items(event_store.event)',
                                     event_types => '{ItemAdded}', categories => '{order}',
                                     mode => 'async');
SELECT count(*) AS async_logged FROM rm_log WHERE proj LIKE 'async%';
SELECT name, mode, state, position, head_position = event_store.head_position() AS at_head,
       lag_events = (SELECT count(*) FROM event_store.events) AS lag_is_everything,
       lag_seconds > 0 AS lagging, last_error
  FROM event_store.projection_status WHERE mode = 'async' ORDER BY name;
SELECT updated_at AS async_all_updated FROM event_store.projection_status
 WHERE name = 'async_all' \gset

-- a budget: run_projections(n) hands at most n events to handlers (the
-- projections are run by name: async_all takes the whole budget)
SELECT event_store.run_projections(4);
SELECT pos, stream_id, stream_version, event_type FROM rm_log WHERE proj = 'async_all' ORDER BY seq;
SELECT name, state, position, lag_events = (SELECT count(*) FROM event_store.events) - 4 AS lag_is_rest
  FROM event_store.projection_status WHERE mode = 'async' ORDER BY name;
SELECT updated_at > :'async_all_updated' AS updated_at_moved
  FROM event_store.projection_status WHERE name = 'async_all';

-- the rest: the number returned is what the handlers were handed
SELECT (SELECT count(*) FROM event_store.events) - 4
     + (SELECT count(*) FROM event_store.read_all(0, 100000, ARRAY['ItemAdded'])
         WHERE split_part(stream_id, '-', 1) = 'order') AS expected_handed;
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE mode = 'async';
SELECT (SELECT array_agg(global_position ORDER BY global_position) FROM event_store.events)
     = (SELECT array_agg(pos ORDER BY seq) FROM rm_log WHERE proj = 'async_all') AS async_all_in_order;
SELECT pos, stream_id, event_type, schema_version, data FROM rm_log
 WHERE proj = 'async_items' ORDER BY seq;
-- nothing left to do
SELECT event_store.run_projections();

-- Events that pass no filter of async_items: nothing is handed to it, but
-- its position moves past them.
SELECT event_store.append('cart-7', '[{"type": "CartOpened"}, {"type": "ItemAdded"}]');
SELECT event_store.append('order-7', '{"type": "OrderPlaced"}');
SELECT * FROM pg_temp.status() WHERE mode = 'async';
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE mode = 'async';

-- An async projection's events are applied with the upcasters, like the
-- inline ones.
SELECT event_store.append('order-7', '{"type": "ItemAddedV1", "data": {"code": "up"}}');
SELECT event_store.run_projections();
SELECT proj, stream_id, event_type, schema_version, data FROM rm_log
 WHERE stream_id = 'order-7' AND event_type LIKE 'ItemAdded%' ORDER BY proj;

-- Pause and resume (async): a paused projection is skipped, resume lets it
-- catch up on what it missed, once.
SELECT event_store.pause_projection('async_all');
SELECT event_store.append('order-8', '[{"type": "ItemAdded", "data": {"sku": "s"}}, {"type": "OrderPlaced"}]');
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE mode = 'async';
SELECT count(*) AS async_all_logged_for_order_8 FROM rm_log
 WHERE proj = 'async_all' AND stream_id = 'order-8';
SELECT event_store.resume_projection('async_all');
SELECT * FROM pg_temp.status() WHERE name = 'async_all';
SELECT event_store.run_projections();
SELECT pos, stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'async_all' AND stream_id = 'order-8' ORDER BY seq;

-- Rebuild (async): reset now, position 0, the events are applied again by
-- the next run.
SELECT event_store.rebuild_projection('async_all');
SELECT count(*) AS async_all_logged FROM rm_log WHERE proj = 'async_all';
SELECT name, state, position, lag_events = (SELECT count(*) FROM event_store.events) AS lag_is_everything
  FROM event_store.projection_status WHERE name = 'async_all';
SELECT event_store.run_projections() = (SELECT count(*) FROM event_store.events) AS replayed_everything;
SELECT (SELECT array_agg(global_position ORDER BY global_position) FROM event_store.events)
     = (SELECT array_agg(pos ORDER BY seq) FROM rm_log WHERE proj = 'async_all') AS async_all_in_order;
-- a paused async projection rebuilt stays paused
SELECT event_store.pause_projection('async_all');
SELECT event_store.rebuild_projection('async_all');
SELECT name, state, position FROM event_store.projection_status WHERE name = 'async_all';
SELECT event_store.run_projections();
SELECT count(*) AS async_all_logged FROM rm_log WHERE proj = 'async_all';
SELECT event_store.resume_projection('async_all');
SELECT event_store.run_projections() = (SELECT count(*) FROM event_store.events) AS replayed_everything;
SELECT proj, count(*) FROM rm_resets GROUP BY proj ORDER BY proj;

--
-- A failing async handler: run_projections() does not raise; the events
-- before the failing one are applied and the error is recorded; after
-- event_store.projection_max_attempts attempts the projection is failed,
-- its position at the last event applied.  The other projections go on.
--
SHOW event_store.projection_max_attempts;
SELECT event_store.create_projection('fragile', 'h_fragile(event_store.event)', mode => 'async');
SELECT event_store.run_projections() = (SELECT count(*) FROM event_store.events) AS fragile_caught_up;
INSERT INTO poison VALUES ('Boom');
SELECT event_store.append('order-10', '[{"type": "OrderPlaced"}, {"type": "ItemAdded", "data": {"sku": "f"}}]');
SELECT event_store.head_position() AS last_good \gset
SELECT event_store.append('order-10', '[{"type": "Boom"}, {"type": "ItemAdded", "data": {"sku": "g"}}]');
-- 1st attempt: fragile applies the two events before Boom (2), async_all
-- the four new events (4), async_items the two ItemAdded (2)
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE mode = 'async';
SELECT position = :last_good AS at_last_good FROM event_store.projections WHERE name = 'fragile';
SELECT pos, stream_id, stream_version, event_type FROM rm_log
 WHERE proj = 'fragile' AND stream_id = 'order-10' ORDER BY seq;
-- attempts 2 to 4: nothing applied, still running with the error
SELECT event_store.run_projections();
SELECT event_store.run_projections();
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE name = 'fragile';
-- 5th attempt: failed, position at the last event applied
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE name = 'fragile';
SELECT position = (SELECT max(pos) FROM rm_log WHERE proj = 'fragile') AS at_last_applied
  FROM event_store.projections WHERE name = 'fragile';
-- a failed projection is left alone; the others keep advancing
SELECT event_store.append('order-11', '{"type": "ItemAdded", "data": {"sku": "h"}}');
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE mode = 'async';
-- fixed and resumed, it goes on from where it stopped: every event once
DELETE FROM poison;
SELECT event_store.resume_projection('fragile');
SELECT * FROM pg_temp.status() WHERE name = 'fragile';
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE name = 'fragile';
SELECT (SELECT array_agg(global_position ORDER BY global_position) FROM event_store.events)
     = (SELECT array_agg(pos ORDER BY seq) FROM rm_log WHERE proj = 'fragile') AS fragile_complete;

-- A failure on the first event of a batch: nothing applied, position kept.
INSERT INTO poison VALUES ('Bang');
SELECT event_store.head_position() AS before_bang \gset
SELECT event_store.append('order-12', '[{"type": "Bang"}, {"type": "OrderPlaced"}]');
SELECT event_store.run_projections();
SELECT name, state, position = :before_bang AS position_kept, last_error
  FROM event_store.projection_status WHERE name = 'fragile';
DELETE FROM poison;
SELECT event_store.run_projections();
SELECT * FROM pg_temp.status() WHERE name = 'fragile';

--
-- drop_projection: the projection is gone (its read model stays); the
-- trigger goes off with the last inline projection, whatever async ones remain.
--
SELECT event_store.drop_projection('fragile');
SELECT count(*) > 0 AS fragile_read_model_kept FROM rm_log WHERE proj = 'fragile';
SELECT event_store.pause_projection('all');
SELECT event_store.drop_projection('all');
-- a rolled back drop keeps the projection
BEGIN;
SELECT event_store.drop_projection('counts');
ROLLBACK;
SELECT name, mode, state FROM event_store.projection_status ORDER BY name;
SELECT event_store.append('cart-1', '{"type": "CartOpened"}');
SELECT n = event_store.stream_version('cart-1') AS counts_applied FROM rm_counts WHERE stream_id = 'cart-1';
SELECT event_store.drop_projection('counts');
-- no inline projection: appends do not touch the read models
SELECT count(*) AS logged FROM rm_log \gset
SELECT event_store.append('cart-1', '{"type": "CartOpened"}');
SELECT n = event_store.stream_version('cart-1') - 1 AS counts_not_applied
  FROM rm_counts WHERE stream_id = 'cart-1';
SELECT count(*) = :logged AS nothing_logged FROM rm_log;
-- async projections only
SELECT event_store.create_projection('tmp', 'h_tmp(event_store.event)', mode => 'async');
SELECT event_store.drop_projection('tmp');
SELECT event_store.drop_projection('async_all');
SELECT event_store.drop_projection('async_items');
SELECT * FROM pg_temp.status();
SELECT event_store.run_projections();

--
-- Argument checks.
--
CREATE FUNCTION bad_arg(e jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION bad_result(e event_store.event) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION bad_set(e event_store.event) RETURNS SETOF void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE bad_proc(e event_store.event) LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION bad_reset(x int) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION bad_reset_result() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
SELECT event_store.create_projection('ok', 'h_tmp(event_store.event)', mode => 'async');

SELECT pg_temp.try($$SELECT event_store.create_projection(NULL, 'h_tmp(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('', 'h_tmp(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('ok', 'h_tmp(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('ok', 'h_tmp(event_store.event)', mode => 'async')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', NULL)$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'bad_arg(jsonb)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'bad_result(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'bad_set(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'bad_proc(event_store.event)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', reset => 'bad_reset(int)')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', reset => 'bad_reset_result()')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', mode => NULL)$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', mode => 'sync')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', mode => 'INLINE')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', event_types => '{}')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', categories => '{}')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', event_types => ARRAY['A', NULL])$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', event_types => ARRAY['A', ''])$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', event_types => '{{A},{B}}')$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', categories => ARRAY['order-1'])$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', categories => ARRAY[NULL::text])$$);
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_tmp(event_store.event)', categories => ARRAY[''])$$);
-- none of these created anything
SELECT name FROM event_store.projections ORDER BY name;

SELECT pg_temp.try($$SELECT event_store.pause_projection(NULL)$$);
SELECT pg_temp.try($$SELECT event_store.resume_projection(NULL)$$);
SELECT pg_temp.try($$SELECT event_store.rebuild_projection(NULL)$$);
SELECT pg_temp.try($$SELECT event_store.drop_projection(NULL)$$);
SELECT pg_temp.try($$SELECT event_store.pause_projection('nope')$$);
SELECT pg_temp.try($$SELECT event_store.resume_projection('nope')$$);
SELECT pg_temp.try($$SELECT event_store.rebuild_projection('nope')$$);
SELECT pg_temp.try($$SELECT event_store.drop_projection('nope')$$);
SELECT pg_temp.try($$SELECT event_store.run_projections(NULL)$$);
SELECT pg_temp.try($$SELECT event_store.run_projections(-1)$$);
SELECT event_store.run_projections(0);
SELECT event_store.drop_projection('ok');

-- Batch handlers: (events event_store.event[]) RETURNS void gets the
-- matching events of an append (inline) or of a run (async, at most 10,000
-- per call) in one call, in order, so a read model can be maintained with
-- set-based SQL.
CREATE TABLE rm_batches (proj text, n int, first_pos bigint, last_pos bigint, types text);
CREATE FUNCTION h_batch(events event_store.event[]) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO rm_batches
    SELECT 'inline', count(*), min(e.global_position), max(e.global_position),
           string_agg(e.event_type, ',' ORDER BY e.global_position)
      FROM unnest(events) e
$$;
CREATE FUNCTION h_batch_async(events event_store.event[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(events) e WHERE e.event_type = 'BatchPoison') THEN
        RAISE EXCEPTION 'batch with poison';
    END IF;
    INSERT INTO rm_batches
    SELECT 'async', count(*), min(e.global_position), max(e.global_position),
           string_agg(e.event_type, ',' ORDER BY e.global_position)
      FROM unnest(events) e;
END $$;
SELECT event_store.head_position() AS batch_start \gset
SELECT event_store.create_projection('batch_inline', 'h_batch(event_store.event[])',
                                     categories => ARRAY['batch']);
SELECT event_store.append('batch-1', '[{"type": "B1"}, {"type": "Skip"}, {"type": "B2"}]');
SELECT event_store.append('other-1', '{"type": "B3"}');
SELECT event_store.append('batch-2', '{"type": "B4"}');
SELECT proj, n, first_pos - :batch_start AS first, last_pos - :batch_start AS last, types
  FROM rm_batches ORDER BY first_pos;
DELETE FROM rm_batches;
SELECT event_store.drop_projection('batch_inline');
-- async: one call for the whole backlog (filtered), position past it
SELECT event_store.create_projection('batch_async', 'h_batch_async(event_store.event[])',
                                     event_types => ARRAY['B1', 'B2', 'B3', 'B4'], mode => 'async');
UPDATE event_store.projections SET position = :batch_start WHERE name = 'batch_async';
SELECT event_store.run_projections();
SELECT proj, n, first_pos - :batch_start AS first, last_pos - :batch_start AS last, types
  FROM rm_batches ORDER BY first_pos;
-- a failing batch call is rolled back whole and recorded at its first event
SELECT event_store.append('batch-3', '[{"type": "B1"}, {"type": "B2"}]');
SELECT event_store.append('batch-3', '{"type": "B3"}');
UPDATE event_store.projections SET event_types = NULL WHERE name = 'batch_async';
SELECT event_store.append('batch-3', '{"type": "BatchPoison"}');
SELECT event_store.run_projections();
SELECT name, state, attempts, last_error, error_position - :batch_start AS error_at,
       position - :batch_start AS position
  FROM event_store.projections WHERE name = 'batch_async';
SELECT count(*) AS rows_after_failure FROM rm_batches;
-- An async array batch is handed over at about 256 kB, so large events come in
-- several calls; every event arrives whole and in order, whether it is
-- handed on as stored, upcast, or stored out of line (TOAST).
SELECT event_store.drop_projection('batch_async');
DELETE FROM rm_batches;
CREATE TABLE rm_big (call int, global_position bigint, event_type text,
                     schema_version int, data_len int, data_md5 text, sku text);
CREATE SEQUENCE rm_big_call;
CREATE FUNCTION h_big(events event_store.event[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    c int := nextval('rm_big_call');
BEGIN
    INSERT INTO rm_big
    SELECT c, e.global_position, e.event_type, e.schema_version,
           length(e.data ->> 'blob'), md5(e.data ->> 'blob'), e.data ->> 'sku'
      FROM unnest(events) e;
END $$;
SELECT event_store.head_position() AS big_start \gset
-- 100 kB of hex digits each: compressed, still stored out of line
SELECT event_store.append('big-1', (
    SELECT jsonb_agg(jsonb_build_object('type', 'Big', 'data', jsonb_build_object('blob',
               (SELECT string_agg(md5(i::text || ':' || j::text), '') FROM generate_series(1, 3200) j))))
      FROM generate_series(1, 6) i));
SELECT pg_relation_size(reltoastrelid) > 0 AS stored_out_of_line
  FROM pg_class WHERE oid = 'event_store.events'::regclass;
SELECT event_store.append('big-2', '[{"type": "Small", "data": {"n": 1}},
                                     {"type": "ItemAddedV1", "data": {"code": "b"}},
                                     {"type": "Small", "data": {"n": 2}}]');
SELECT event_store.create_projection('big', 'h_big(event_store.event[])',
                                     categories => ARRAY['big'], mode => 'async');
UPDATE event_store.projections SET position = :big_start WHERE name = 'big';
SELECT event_store.run_projections();
SELECT count(DISTINCT call) > 1 AS split, count(*) AS events,
       bool_and(n_in_call <= 3) AS at_most_3_large_per_call
  FROM (SELECT call, count(*) OVER (PARTITION BY call) AS n_in_call FROM rm_big) c;
-- in order across the calls, each event equal to what was stored
SELECT r.call - min(r.call) OVER () AS call, r.global_position - :big_start AS pos,
       r.event_type, r.schema_version, r.data_len, r.sku,
       r.data_md5 IS NOT DISTINCT FROM md5(e.data ->> 'blob') AS same_data
  FROM rm_big r JOIN event_store.events e USING (global_position)
 ORDER BY r.global_position;
SELECT bool_and(prev < global_position) AS ascending
  FROM (SELECT global_position, lag(global_position, 1, 0::bigint) OVER (ORDER BY call, global_position) AS prev
          FROM rm_big) o;
SELECT event_store.drop_projection('big');
DROP TABLE rm_big;
DROP SEQUENCE rm_big_call;
DROP FUNCTION h_big;
-- A trigger function is called as an AFTER INSERT ... FOR EACH STATEMENT
-- trigger on event_store.events whose transition table new_events holds the
-- batch: an append's matching events (inline), or a run's (async).
CREATE TABLE rm_table (proj text, tg text, n int, first_pos bigint, types text, skus text);
CREATE FUNCTION h_table() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_events WHERE event_type = 'TablePoison') THEN
        RAISE EXCEPTION 'table batch with poison';
    END IF;
    INSERT INTO rm_table
    SELECT TG_NAME, concat_ws(' ', TG_WHEN, TG_LEVEL, TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_NARGS),
           count(*), min(global_position), string_agg(event_type, ',' ORDER BY global_position),
           string_agg(data ->> 'sku', ',' ORDER BY global_position)
      FROM new_events;
    RETURN NULL;
END $$;
SELECT event_store.head_position() AS table_start \gset
SELECT event_store.create_projection('table_inline', 'h_table()', categories => ARRAY['tbl']);
SELECT event_store.create_projection('table_async', 'h_table()', event_types => ARRAY['T1', 'T2', 'ItemAdded'],
                                     mode => 'async');
UPDATE event_store.projections SET position = :table_start WHERE name = 'table_async';
SELECT event_store.append('tbl-1', '[{"type": "T1"}, {"type": "Skip"}, {"type": "ItemAddedV1", "data": {"code": "t"}}]');
SELECT event_store.append('other-2', '{"type": "T2"}');
SELECT event_store.run_projections();
SELECT proj, tg, n, first_pos - :table_start AS first, types, skus FROM rm_table ORDER BY proj, first_pos;
-- an error aborts the append (inline) with the projection in the context
SELECT pg_temp.try($$SELECT event_store.append('tbl-2', '{"type": "TablePoison"}')$$);
SELECT count(*) AS appended FROM event_store.read_stream('tbl-2');
-- a trigger function with the wrong return type is refused
CREATE FUNCTION h_table_void() RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_table_void()')$$);
-- catch-up: 1,500 events of 1 kB each (a batch is handed over at 1 MB) come in more than one call, in order
DELETE FROM rm_table;
SELECT event_store.append('tbl-3', (
    SELECT jsonb_agg(jsonb_build_object('type', 'T1', 'data', jsonb_build_object('pad', repeat(md5(i::text), 32))))
      FROM generate_series(1, 1500) i));
SELECT event_store.run_projections();
SELECT count(*) > 1 AS several_calls, sum(n) AS events,
       bool_and(first_pos > coalesce(prev_last, 0)) AS in_order
  FROM (SELECT first_pos, n, lag(first_pos + n - 1) OVER (ORDER BY first_pos) AS prev_last
          FROM rm_table WHERE proj = 'table_async') c;
-- an async batch that fails is rolled back whole and recorded at its first event
SELECT event_store.drop_projection('table_inline');
UPDATE event_store.projections SET event_types = NULL WHERE name = 'table_async';
SELECT event_store.head_position() AS poison_after \gset
SELECT event_store.append('tbl-4', '[{"type": "T1"}, {"type": "TablePoison"}]');
SELECT event_store.run_projections();
SELECT state, attempts, last_error, error_position - :poison_after AS error_at,
       position - :poison_after AS position
  FROM event_store.projections WHERE name = 'table_async';
SELECT count(*) AS rows_from_the_failed_batch FROM rm_table WHERE first_pos > :poison_after;
SELECT event_store.drop_projection('table_async');
DROP TABLE rm_table;
DROP FUNCTION h_table, h_table_void;
-- a wrong batch signature
CREATE FUNCTION h_batch_text(events text[]) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT pg_temp.try($$SELECT event_store.create_projection('x', 'h_batch_text(text[])')$$);
-- an append of more than 10,000 events is still one call of an inline batch handler
DELETE FROM rm_batches;
SELECT event_store.create_projection('bulk_inline', 'h_batch(event_store.event[])',
                                     categories => ARRAY['bulk']);
SELECT event_store.append('bulk-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Bulk'))
                                       FROM generate_series(1, 10001)));
SELECT proj, n FROM rm_batches;
SELECT event_store.drop_projection('bulk_inline');
DROP TABLE rm_batches;
DROP FUNCTION h_batch, h_batch_async, h_batch_text;

-- clean up
SELECT event_store.drop_upcaster('ItemAddedV1', 1);
DROP TABLE rm_log, rm_counts, rm_resets, poison;
DROP FUNCTION log_event, reset_log, count_event, count_reset, h_all, h_types, r_types,
              h_cats, h_both, h_stored_type, h_async_all, r_async_all, h_async_items,
              h_tmp, h_echo, h_guard, h_fragile, up_item_added, bad_arg, bad_result, bad_set,
              bad_reset, bad_reset_result;
DROP PROCEDURE bad_proc;
