--
-- Callbacks never resolve names in the caller's session.  Every route by
-- which a less privileged role could make a callback registered by another
-- role (here the superuser that owns the extension) use objects of its own
-- -- temporary tables, views, types and functions, an operator in a schema
-- it puts first on its search_path, a search_path set with PGOPTIONS, a
-- setting of the session -- is tried as the role that can take it.  The
-- trap is the same everywhere: run with more rights than its owner, it
-- makes its owner a superuser; run at all, it leaves a row in cb_evil.hits.
-- Then: who may change a registration.
--
-- Roles are cluster-wide: every role made here is dropped at the end.
SET client_min_messages = warning;
CREATE ROLE cb_writer LOGIN;
CREATE ROLE cb_reader LOGIN;
CREATE ROLE cb_ops LOGIN;
CREATE ROLE cb_ops2 LOGIN;
\set ECHO none
\i examples/privileges.sql
\set ECHO all
GRANT event_store_writer TO cb_writer;
GRANT event_store_reader TO cb_reader;
GRANT event_store_operator TO cb_ops, cb_ops2;
GRANT USAGE ON SCHEMA regress TO PUBLIC;
SELECT current_user AS su \gset
-- try(), with the extension owner's name (which differs between servers) masked
CREATE FUNCTION regress.cb_try(sql text) RETURNS text LANGUAGE sql AS $$
    SELECT replace(regress.try(sql),
                   (SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'event_store'),
                   '<extension owner>')
$$;

-- the attackers' schema and trap
CREATE SCHEMA cb_evil AUTHORIZATION cb_writer;
GRANT USAGE ON SCHEMA cb_evil TO PUBLIC;
CREATE SCHEMA cb_own AUTHORIZATION cb_ops;   -- an operator's own functions
GRANT USAGE ON SCHEMA cb_own TO PUBLIC;
SET ROLE cb_writer;
CREATE TABLE cb_evil.hits (run_as text, at text);
GRANT INSERT, SELECT ON cb_evil.hits TO PUBLIC;
CREATE FUNCTION cb_evil.spring(at text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cb_evil.hits VALUES (current_user, at);
    BEGIN
        EXECUTE 'ALTER ROLE cb_writer SUPERUSER';
        EXECUTE 'ALTER ROLE cb_reader SUPERUSER';
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    RETURN true;
END $$;
CREATE FUNCTION cb_evil.trap() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_evil.spring(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END $$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA cb_evil TO PUBLIC;
RESET ROLE;
-- what must stay true: no attacker became superuser, no trap ran
CREATE FUNCTION regress.cb_safe() RETURNS text LANGUAGE sql AS $$
    SELECT format('superusers=%s hits=%s',
                  (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'cb\_%' AND rolsuper),
                  (SELECT count(*) FROM cb_evil.hits))
$$;

-- The owner's registrations, written as the walkthrough writes them: names
-- unqualified, found on the search_path in force when they are registered.
CREATE TABLE public.cb_order_items (stream_id text PRIMARY KEY, items int NOT NULL DEFAULT 0);
GRANT SELECT ON public.cb_order_items TO PUBLIC;
CREATE FUNCTION public.cb_project_items(event event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cb_order_items (stream_id) VALUES (event.stream_id) ON CONFLICT DO NOTHING;
END $$;
SELECT event_store.create_projection('cb_items', 'cb_project_items(event_store.event)',
                                     categories => ARRAY['cborder']);
CREATE FUNCTION public.cb_item_v2(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$ SELECT data || '{"v": 2}'::jsonb $$;
SELECT event_store.register_upcaster('CbItemAdded', 1, 'cb_item_v2(jsonb, jsonb)');
CREATE TABLE public.cb_prices (sku text PRIMARY KEY, price int NOT NULL);
INSERT INTO public.cb_prices VALUES ('cup', 3);
CREATE FUNCTION public.cb_total(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('total', coalesce((state ->> 'total')::int, 0) +
        (SELECT price FROM cb_prices WHERE sku = e.data ->> 'sku'));
END $$;
SELECT event_store.define_aggregate('cbcart', 'cb_total(jsonb, event_store.event)');
CREATE TABLE public.cb_stock_reservations (saga_id uuid);
GRANT SELECT ON public.cb_stock_reservations TO PUBLIC;
CREATE FUNCTION public.cb_reserve_stock(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO cb_stock_reservations VALUES (saga_id);
    RETURN '{"reserved": true}';
END $$;
SELECT event_store.define_saga('cb_order', '{"steps": [{"name": "reserve_stock", "action": "cb_reserve_stock"}]}');
-- what each registration records: the search_path of its registration, pg_temp last
SELECT 'upcaster' AS registry, search_path FROM event_store.upcasters WHERE event_type = 'CbItemAdded'
UNION ALL SELECT 'aggregate', search_path FROM event_store.aggregates WHERE category = 'cbcart'
UNION ALL SELECT 'projection', search_path FROM event_store.projections WHERE name = 'cb_items'
UNION ALL SELECT 'saga type', search_path FROM event_store.saga_definitions WHERE saga_type = 'cb_order';
SELECT event_store.append('cbitem-1', '{"type": "CbItemAdded", "data": {"sku": "cup"}}');
SELECT event_store.append('cbcart-1', '{"type": "Added", "data": {"sku": "cup"}}');

--
-- A temporary table in the writer's session, named like the table an
-- inline projection handler writes: the handler writes its own table.
--
\set conn 'dbname=' :DBNAME ' user=cb_writer'
\c :conn
SET client_min_messages = warning;
CREATE TEMP TABLE cb_order_items (stream_id text, items int);
CREATE TRIGGER trap BEFORE INSERT ON cb_order_items FOR EACH ROW EXECUTE FUNCTION cb_evil.trap();
SELECT event_store.append('cborder-1', '{"type": "OrderPlaced"}');
SELECT count(*) AS trapped FROM pg_temp.cb_order_items;
-- the same through the search_path: cb_evil first
CREATE TABLE cb_evil.cb_order_items (stream_id text, items int);
CREATE TRIGGER trap BEFORE INSERT ON cb_evil.cb_order_items FOR EACH ROW EXECUTE FUNCTION cb_evil.trap();
SET search_path = cb_evil, public;
SELECT event_store.append('cborder-2', '{"type": "OrderPlaced"}');
RESET search_path;
\c :conn
SELECT stream_id FROM public.cb_order_items ORDER BY 1;
SELECT regress.cb_safe();

--
-- A temporary domain named jsonb in the reader's session, when the
-- upcaster (a LANGUAGE sql function, inlined) is compiled there.
--
\set conn 'dbname=' :DBNAME ' user=cb_reader'
\c :conn
SET client_min_messages = warning;
CREATE FUNCTION pg_temp.check_it(v pg_catalog.jsonb) RETURNS boolean
    LANGUAGE sql AS $$ SELECT cb_evil.spring('temp domain jsonb') $$;
CREATE DOMAIN pg_temp.jsonb AS pg_catalog.jsonb CHECK (pg_temp.check_it(VALUE));
SELECT data FROM event_store.read_stream('cbitem-1');
SELECT data FROM event_store.read_all() WHERE stream_id = 'cbitem-1';
\c :conn
SELECT regress.cb_safe();

--
-- An operator || in a schema the writer owns and puts first, ahead of
-- pg_catalog, when the upcaster is compiled in its session.
--
\set conn 'dbname=' :DBNAME ' user=cb_writer'
\c :conn
SET client_min_messages = warning;
CREATE FUNCTION cb_evil.cat(a jsonb, b jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM cb_evil.spring('operator ||');
    RETURN a OPERATOR(pg_catalog.||) b;
END $$;
CREATE OPERATOR cb_evil.|| (LEFTARG = jsonb, RIGHTARG = jsonb, FUNCTION = cb_evil.cat);
SET search_path = cb_evil, pg_catalog, public;
SELECT data FROM event_store.read_stream('cbitem-1');
RESET search_path;
SELECT regress.cb_safe();

--
-- A temporary view named like the table a reducer reads, in the reader's
-- session: functions a view calls run as whoever reads it.
--
\set conn 'dbname=' :DBNAME ' user=cb_reader'
\c :conn
SET client_min_messages = warning;
CREATE TEMP VIEW cb_prices AS SELECT 'cup'::text AS sku, 1000 AS price WHERE cb_evil.spring('temp view');
SELECT * FROM event_store.load_aggregate('cbcart-1');
\c :conn
SELECT regress.cb_safe();

--
-- A saga step function, started by the writer from a session whose
-- search_path (set with PGOPTIONS, so also its reset value) puts its
-- schema first.
--
\set conn 'dbname=' :DBNAME ' user=cb_writer'
\c :conn
SET client_min_messages = warning;
CREATE TABLE cb_evil.cb_stock_reservations (saga_id uuid);
CREATE TRIGGER trap BEFORE INSERT ON cb_evil.cb_stock_reservations FOR EACH ROW EXECUTE FUNCTION cb_evil.trap();
\set conn 'dbname=' :DBNAME ' user=cb_writer options=-csearch_path=cb_evil,public'
\c :conn
SET client_min_messages = warning;
SHOW search_path;
SELECT event_store.start_saga('cb_order', '{}', '00000000-0000-4000-8000-0000000000c1');
SELECT event_store.saga_state('00000000-0000-4000-8000-0000000000c1') ->> 'status' AS status;
\c :conn
SELECT count(*) AS reserved FROM public.cb_stock_reservations;
SELECT regress.cb_safe();

--
-- A callback never sees event_store.allow_purge of the session it runs in.
--
\set conn 'dbname=' :DBNAME ' user=cb_ops'
\c :conn
SET client_min_messages = warning;
CREATE FUNCTION cb_own.purger(event event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.purge_stream(event.data ->> 'victim');
END $$;
SELECT event_store.create_projection('cb_purger', 'cb_own.purger(event_store.event)',
                                     event_types => ARRAY['CbPurge']);
\set conn 'dbname=' :DBNAME ' user=' :su
\c :conn
SET client_min_messages = warning;
SELECT current_user = (SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'event_store') AS owner;
SELECT event_store.append('cbvictim-1', '{"type": "Precious"}');
SET event_store.allow_purge = on;
SELECT regress.cb_try($$SELECT event_store.append('cbpurge-1', '{"type": "CbPurge", "data": {"victim": "cbvictim-1"}}')$$);
SHOW event_store.allow_purge;
RESET event_store.allow_purge;
SELECT count(*) AS victim_events FROM event_store.read_stream('cbvictim-1');
SELECT count(*) AS purge_events FROM event_store.read_stream('cbpurge-1');
-- a setting a callback changes does not outlive it
CREATE FUNCTION public.cb_setter(event event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('work_mem', '1234kB', false);
    PERFORM set_config('search_path', 'cb_evil', false);
END $$;
SELECT event_store.create_projection('cb_setter', 'cb_setter(event_store.event)',
                                     event_types => ARRAY['CbSet']);
SET work_mem = '4MB';
SELECT event_store.append('cbset-1', '{"type": "CbSet"}');
SHOW work_mem;
SHOW search_path;
SELECT event_store.drop_projection('cb_setter');
SELECT event_store.drop_projection('cb_purger');

-- a callback called by another one (a handler that folds an aggregate
-- registered under another search_path): the outer one goes on with its own
CREATE SCHEMA cb_alt;
CREATE TABLE cb_alt.cb_seen (stream_id text);
CREATE TABLE public.cb_seen (stream_id text);
CREATE FUNCTION public.cb_keep(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE sql AS $$ SELECT state $$;
SET search_path = cb_alt, public;
SELECT event_store.define_aggregate('cbnest', 'public.cb_keep(jsonb, event_store.event)');
RESET search_path;
CREATE FUNCTION public.cb_nested(event event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM * FROM event_store.load_aggregate(event.stream_id);
    INSERT INTO cb_seen VALUES (event.stream_id);
END $$;
SELECT event_store.create_projection('cb_nested', 'cb_nested(event_store.event)',
                                     categories => ARRAY['cbnest']);
SELECT event_store.append('cbnest-1', '[{"type": "X"}, {"type": "Y"}]');
SELECT (SELECT count(*) FROM public.cb_seen) AS in_public, (SELECT count(*) FROM cb_alt.cb_seen) AS in_alt;
SELECT event_store.drop_projection('cb_nested');
DELETE FROM event_store.aggregates WHERE category = 'cbnest';
DROP SCHEMA cb_alt CASCADE;
DROP TABLE public.cb_seen;

--
-- Who may change a registration: the role that made it (members of it)
-- and the extension owner; anyone else gets 42501, naming the owner.
--
SET ROLE cb_ops;
CREATE FUNCTION cb_own.noop(event event_store.event) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION cb_own.noop_reset() RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION cb_own.same(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT data $$;
SELECT event_store.create_projection('cb_ops_proj', 'cb_own.noop(event_store.event)',
                                     mode => 'async', reset => 'cb_own.noop_reset()');
SELECT event_store.register_upcaster('CbOps', 1, 'cb_own.same(jsonb, jsonb)');
RESET ROLE;
SET ROLE cb_ops2;
SELECT regress.cb_try($$SELECT event_store.pause_projection('cb_ops_proj')$$);
SELECT regress.cb_try($$SELECT event_store.resume_projection('cb_ops_proj')$$);
SELECT regress.cb_try($$SELECT event_store.rebuild_projection('cb_ops_proj')$$);
SELECT regress.cb_try($$SELECT event_store.drop_projection('cb_ops_proj')$$);
SELECT regress.cb_try($$SELECT event_store.rebuild_projection('cb_items')$$);
SELECT regress.cb_try($$SELECT event_store.pause_projection('cb_items')$$);
SELECT regress.cb_try($$SELECT event_store.register_upcaster('CbOps', 1, 'cb_own.same(jsonb, jsonb)')$$);
SELECT regress.cb_try($$SELECT event_store.drop_upcaster('CbOps', 1)$$);
SELECT regress.cb_try($$SELECT event_store.drop_upcaster('CbItemAdded', 1)$$);
SELECT regress.cb_try($$SELECT event_store.define_aggregate('cbcart', 'cb_total(jsonb, event_store.event)')$$);
SELECT regress.cb_try($$SELECT event_store.define_saga('cb_order', '{"steps": [{"name": "x", "action": "cb_reserve_stock"}]}')$$);
RESET ROLE;
-- nothing changed
SELECT name, state, replace(owner::text, :'su', '<extension owner>') AS owner
  FROM event_store.projections WHERE name IN ('cb_items', 'cb_ops_proj') ORDER BY 1;
SELECT event_type, replace(owner::text, :'su', '<extension owner>') AS owner
  FROM event_store.upcasters WHERE event_type IN ('CbItemAdded', 'CbOps') ORDER BY 1;
-- a member of the owner may; the owner may; the extension owner may
GRANT cb_ops TO cb_ops2;
SET ROLE cb_ops2;
SELECT event_store.pause_projection('cb_ops_proj');
RESET ROLE;
REVOKE cb_ops FROM cb_ops2;
SET ROLE cb_ops;
SELECT event_store.resume_projection('cb_ops_proj');
SELECT event_store.register_upcaster('CbOps', 1, 'cb_own.same(jsonb, jsonb)');
RESET ROLE;
SELECT event_store.rebuild_projection('cb_ops_proj');
SELECT event_store.drop_projection('cb_ops_proj');
SELECT event_store.drop_upcaster('CbOps', 1);

-- purge_snapshots of a category with grants needs append and read on it
SELECT event_store.grant_category('cb_writer', 'cbcart', '{append,read}');
SET ROLE cb_ops;
SELECT regress.cb_try($$SELECT event_store.purge_snapshots('cbcart')$$);
SELECT event_store.purge_snapshots() AS purged_elsewhere;
RESET ROLE;
SELECT event_store.revoke_category('cb_writer', 'cbcart', '{append,read}');

SELECT regress.cb_safe();

-- clean up
SELECT event_store.drop_projection('cb_items');
SELECT event_store.drop_upcaster('CbItemAdded', 1);
DELETE FROM event_store.aggregates WHERE category = 'cbcart';
DROP SCHEMA cb_evil, cb_own CASCADE;
DROP TABLE public.cb_order_items, public.cb_prices, public.cb_stock_reservations;
DROP FUNCTION regress.cb_safe(), regress.cb_try(text);
REVOKE USAGE ON SCHEMA regress FROM PUBLIC;
DROP OWNED BY cb_writer, cb_reader, cb_ops, cb_ops2,
    event_store_reader, event_store_writer, event_store_operator;
DROP ROLE cb_writer, cb_reader, cb_ops, cb_ops2,
    event_store_reader, event_store_writer, event_store_operator;
