# The upgrade paths 0.1.0 -> 0.2.0 -> 0.3.0 (ALTER EXTENSION event_store
# UPDATE).
#
#   (a) database "upgraded": CREATE EXTENSION event_store VERSION '0.1.0',
#       data written with 0.1.0's functions as the superuser (appends to
#       several streams, batches and caller ids; an upcaster; an aggregate
#       with snapshot_every and its snapshots; an inline and an async
#       projection writing read-model tables; saga types, and sagas that
#       completed, were compensated, and wait in an external step claimed by
#       a worker), a session that used the extension left open, then
#       ALTER EXTENSION event_store UPDATE TO '0.2.0';
#   (b) its schema equals that of a fresh CREATE EXTENSION event_store
#       VERSION '0.2.0' in database "fresh", compared with catalog queries (see schema_sql
#       below: tables, columns, types, defaults, constraints, indexes,
#       policies and row-level security, triggers, views, functions with
#       their full definitions, ACLs and initial privileges, comments,
#       dependencies, extension membership, extconfig);
#   (c) the data written before still works: read_stream / read_all return
#       the same rows, load_aggregate the same states, the projections go
#       on (inline at once, async after run_projections()), the waiting saga
#       completes, the registry rows are owned by the extension owner, and
#       the new functions work (category grants, delete_stream, stats), also
#       in the session opened before the update.  The saga definitions name
#       their step functions as 0.2.0 does (with their schema); a name that
#       is found again neither as the only function of its kind nor on the
#       search_path gets a warning;
#   (c3) ALTER EXTENSION event_store UPDATE of "upgraded" from 0.2.0 (with
#       the data of 0.1.0 and 0.2.0) to 0.3.0: its schema equals a fresh
#       CREATE EXTENSION event_store (0.3.0) in database "fresh3", the
#       reads, folds and rows are the same as before (the columns 0.3.0
#       adds aside), and appends go on above the head of before;
#   (d) pg_dump -Fc of "upgraded" restored into "restored": the schema again
#       equals "fresh3", the data equals "upgraded", and appends go on after
#       the highest restored position;
#   (e) ALTER EXTENSION event_store UPDATE on 0.3.0 does nothing, 0.2.0
#       with saga types updates to the same schema, and 0.1.0 without any
#       data updates to the same schema; a grant made under 0.1.0 on a
#       table is kept, and dumped.
#
# Every wait is a poll with a deadline (poll_query_until), never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/070_upgrade.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('upgrade', q{
event_store.naptime = '200ms'
});

# Result of a query, or its error text
sub query { return es_query($node, @_); }

# The schema of the extension as sorted text, one row per object property,
# free of OIDs: what must be identical after an update and after a fresh
# install.  Continuation lines of a row (function definitions) start with
# "  | ".
my $schema_sql = <<'SQL';
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'event_store'),
nsp AS (SELECT oid FROM pg_namespace WHERE nspname = 'event_store'),
-- objects with the schema they live in; a trigger, policy, rule or default
-- in the schema of its relation (pg_identify_object leaves those out), the
-- extension under its own name
objs(classid, objid, nspname) AS (
    SELECT 'pg_class'::regclass, c.oid, c.relnamespace::regnamespace::text FROM pg_class c
    UNION ALL SELECT 'pg_proc'::regclass, p.oid, p.pronamespace::regnamespace::text FROM pg_proc p
    UNION ALL SELECT 'pg_type'::regclass, t.oid, t.typnamespace::regnamespace::text FROM pg_type t
    UNION ALL SELECT 'pg_constraint'::regclass, co.oid, co.connamespace::regnamespace::text
                FROM pg_constraint co
    UNION ALL SELECT 'pg_trigger'::regclass, t.oid, c.relnamespace::regnamespace::text
                FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    UNION ALL SELECT 'pg_policy'::regclass, p.oid, c.relnamespace::regnamespace::text
                FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
    UNION ALL SELECT 'pg_rewrite'::regclass, r.oid, c.relnamespace::regnamespace::text
                FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
    UNION ALL SELECT 'pg_attrdef'::regclass, a.oid, c.relnamespace::regnamespace::text
                FROM pg_attrdef a JOIN pg_class c ON c.oid = a.adrelid
    UNION ALL SELECT 'pg_namespace'::regclass, n.oid, n.nspname::text FROM pg_namespace n
    UNION ALL SELECT 'pg_extension'::regclass, e.oid, e.extname::text FROM pg_extension e
),
lines(section, line) AS (
-- the extension
SELECT 'extension', format('%s version %s owner %s schema %s relocatable %s',
       e.extname, e.extversion, e.extowner::regrole, e.extnamespace::regnamespace, e.extrelocatable)
  FROM ext e
UNION ALL
-- the tables pg_dump dumps the data of, with their conditions.  As a set:
-- pg_extension_config_dump() appends, so an update lists its new tables
-- last, and pg_dump does not depend on the order.
SELECT 'extconfig', format('%s where %L', c.cfg::regclass, c.cond)
  FROM ext e, unnest(e.extconfig, e.extcondition) AS c(cfg, cond)
UNION ALL
-- extension membership
SELECT 'member', pg_describe_object(d.classid, d.objid, d.objsubid)
  FROM pg_depend d, ext e
 WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid AND d.deptype = 'e'
UNION ALL
-- the schema
SELECT 'schema', format('%s owner %s acl %s comment %L', n.nspname, n.nspowner::regrole, n.nspacl,
       obj_description(n.oid, 'pg_namespace'))
  FROM pg_namespace n WHERE n.nspname = 'event_store'
UNION ALL
-- relations: tables, indexes, views, composite types, sequences
SELECT 'relation', format('%s kind %s persistence %s owner %s acl %s options %s rls %s force_rls %s '
                          'replident %s natts %s checks %s rules %s triggers %s toast %s am %s '
                          'tablespace %s comment %L',
       c.oid::regclass, c.relkind, c.relpersistence, c.relowner::regrole, c.relacl, c.reloptions,
       c.relrowsecurity, c.relforcerowsecurity, c.relreplident, c.relnatts, c.relchecks,
       c.relhasrules, c.relhastriggers, c.reltoastrelid <> 0, c.relam::regclass, c.reltablespace,
       obj_description(c.oid, 'pg_class'))
  FROM pg_class c WHERE c.relnamespace = (SELECT oid FROM nsp)
UNION ALL
-- columns, in order, of all of them (attoptions without the server's own
-- pg_attver entry, a per-column version that differs between installs)
SELECT 'column', format('%s %s %s type %s notnull %s default %s identity %L generated %L '
                        'collation %s storage %s compression %L stattarget %s acl %s options %s '
                        'hasmissing %s dropped %s local %s inhcount %s comment %L',
       a.attrelid::regclass, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
       pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attcollation::regcollation,
       a.attstorage, a.attcompression, a.attstattarget, a.attacl,
       array(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\_attver=%'),
       a.atthasmissing, a.attisdropped, a.attislocal, a.attinhcount, col_description(a.attrelid, a.attnum))
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE c.relnamespace = (SELECT oid FROM nsp) AND a.attnum > 0
UNION ALL
-- constraints, by name
SELECT 'constraint', format('%s %s %s: %s deferrable %s deferred %s validated %s index %s noinherit %s comment %L',
       coalesce(co.conrelid::regclass::text, co.contypid::regtype::text), co.conname, co.contype,
       pg_get_constraintdef(co.oid), co.condeferrable, co.condeferred, co.convalidated,
       nullif(co.conindid, 0)::regclass, co.connoinherit, obj_description(co.oid, 'pg_constraint'))
  FROM pg_constraint co WHERE co.connamespace = (SELECT oid FROM nsp)
UNION ALL
-- indexes
SELECT 'index', format('%s unique %s primary %s immediate %s clustered %s replident %s valid %s',
       pg_get_indexdef(i.indexrelid), i.indisunique, i.indisprimary, i.indimmediate,
       i.indisclustered, i.indisreplident, i.indisvalid)
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE c.relnamespace = (SELECT oid FROM nsp)
UNION ALL
-- triggers (the internal ones of the foreign keys are named after their
-- OIDs; the constraints and dependencies cover them)
SELECT 'trigger', format('%s enabled %s comment %L', pg_get_triggerdef(t.oid), t.tgenabled,
       obj_description(t.oid, 'pg_trigger'))
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE c.relnamespace = (SELECT oid FROM nsp) AND NOT t.tgisinternal
UNION ALL
-- row-level security policies (the RLS flags are with the relations)
SELECT 'policy', format('%s on %s for %s permissive %s to %s using %s with check %s comment %L',
       p.polname, p.polrelid::regclass, p.polcmd, p.polpermissive,
       (SELECT string_agg(CASE WHEN r = 0 THEN 'public' ELSE r::regrole::text END, ',' ORDER BY 1)
          FROM unnest(p.polroles) r),
       pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid),
       obj_description(p.oid, 'pg_policy'))
  FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid
 WHERE c.relnamespace = (SELECT oid FROM nsp)
UNION ALL
-- rules: the view definitions
SELECT 'rule', format('%s on %s: %s enabled %s', r.rulename, r.ev_class::regclass,
       CASE WHEN r.rulename = '_RETURN' THEN pg_get_viewdef(r.ev_class) ELSE pg_get_ruledef(r.oid) END,
       r.ev_enabled)
  FROM pg_rewrite r JOIN pg_class c ON c.oid = r.ev_class
 WHERE c.relnamespace = (SELECT oid FROM nsp)
UNION ALL
-- functions: every property, then the full definition
SELECT 'function', format('%s(%s) kind %s owner %s acl %s language %s volatile %s parallel %s '
                          'strict %s secdef %s leakproof %s config %s cost %s rows %s returns %s%s '
                          'src %L bin %L comment %L' || E'\n' || '%s',
       p.proname, pg_get_function_identity_arguments(p.oid), p.prokind, p.proowner::regrole,
       p.proacl, l.lanname, p.provolatile, p.proparallel, p.proisstrict, p.prosecdef, p.proleakproof,
       p.proconfig, p.procost, p.prorows, CASE WHEN p.proretset THEN 'setof ' ELSE '' END,
       p.prorettype::regtype, p.prosrc, p.probin, obj_description(p.oid, 'pg_proc'),
       CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END)
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
 WHERE p.pronamespace = (SELECT oid FROM nsp)
UNION ALL
-- types
SELECT 'type', format('%s type %s owner %s acl %s relation %s array %s comment %L',
       t.oid::regtype, t.typtype, t.typowner::regrole, t.typacl, t.typrelid::regclass,
       nullif(t.typarray, 0)::regtype, obj_description(t.oid, 'pg_type'))
  FROM pg_type t WHERE t.typnamespace = (SELECT oid FROM nsp)
UNION ALL
-- sequences
SELECT 'sequence', format('%s %s start %s increment %s min %s max %s cache %s cycle %s',
       s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax,
       s.seqcache, s.seqcycle)
  FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
 WHERE c.relnamespace = (SELECT oid FROM nsp)
UNION ALL
-- every comment on an object of the schema, on the schema, on the extension
SELECT 'comment', format('%s: %L', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
  FROM pg_description d JOIN objs o ON o.classid = d.classoid AND o.objid = d.objoid
 WHERE o.nspname = 'event_store'
UNION ALL
-- the initial privileges (what pg_dump compares the ACLs with)
SELECT 'initprivs', format('%s %s %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid),
       ip.privtype, ip.initprivs)
  FROM pg_init_privs ip JOIN objs o ON o.classid = ip.classoid AND o.objid = ip.objoid
 WHERE o.nspname = 'event_store'
UNION ALL
-- dependencies of the schema's objects and of their toast tables (the
-- OID-derived names of toast tables and foreign key triggers masked)
SELECT 'depend', regexp_replace(format('%s -> %s (%s)',
       pg_describe_object(d.classid, d.objid, d.objsubid),
       pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), d.deptype),
       '(pg_toast_|RI_ConstraintTrigger_[ac]_)[0-9]+', '\1N', 'g')
  FROM pg_depend d
  JOIN objs o ON o.classid = d.classid AND o.objid = d.objid
  LEFT JOIN objs r ON r.classid = d.refclassid AND r.objid = d.refobjid
 WHERE d.deptype <> 'e'
   AND (o.nspname = 'event_store' OR (o.nspname = 'pg_toast' AND r.nspname = 'event_store'))
)
SELECT string_agg(replace(section || ' ' || line, E'\n', E'\n  | '), E'\n'
                  ORDER BY section, line COLLATE "C")
  FROM lines;
SQL

# The schema of a database (see $schema_sql)
sub schema_of
{
	my ($db) = @_;
	return $node->safe_psql($db, $schema_sql);
}

# Is the schema of $db the one of database "fresh"?  On a difference, the
# rows only in one of them are shown ("-" only in fresh, "+" only in $db).
sub schema_is
{
	my ($db, $expected, $what) = @_;
	my $got = schema_of($db);
	my (%count, @diff);
	$count{$_}++ for split /\n(?!  \| )/, $expected;
	$count{$_}-- for split /\n(?!  \| )/, $got;
	for my $row (sort keys %count)
	{
		push @diff, ($count{$row} > 0 ? '- ' : '+ ') . $row
		  for 1 .. abs($count{$row});
	}
	ok($got eq $expected, $what)
	  or diag("schema of $db differs from fresh:\n" . join("\n", @diff));
}

# The data of the extension's tables and of the test's own tables, as text:
# every column of every row; with $drop (a list of column names), without
# those columns (what an update adds or rewrites: owner and
# saga_definitions.steps from 0.1.0 to 0.2.0, @cols_03 from 0.2.0 to 0.3.0).
my @ext_tables = qw(events snapshots upcasters aggregates projections
  saga_definitions saga_watched_types sagas saga_steps);
my @new_tables = qw(category_grants stream_metadata);
my @own_tables = qw(public.order_totals public.event_log public.step_calls);
# the columns 0.3.0 adds to the tables of 0.2.0 (filled in by the update)
my @cols_03 = qw(search_path partitions on_error version pivot delay until_key due_at
  comp_timeout concurrency concurrency_key slot_wait circuit_failures circuit_cooldown circuit_wait);

sub data_of
{
	my ($db, $drop, @tables) = @_;
	my $row = $drop ? 'to_jsonb(t)' . join('', map { " - '$_'" } @$drop) : 't';
	return join(
		"\n",
		map {
			my $table = /\./ ? $_ : "event_store.$_";
			$node->safe_psql($db, qq{
SELECT '$table ' || count(*) || coalesce(E'\\n' || string_agg(($row)::text, E'\\n'
                                                   ORDER BY ($row)::text COLLATE "C"), '')
  FROM $table t});
		} @tables);
}

my $extowner = q{(SELECT extowner::regrole FROM pg_extension WHERE extname = 'event_store')};

#
# (a) 0.1.0 with data
#
$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('upgraded', q{CREATE EXTENSION event_store VERSION '0.1.0'});
is( $node->safe_psql(
		'upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'0.1.0',
	'0.1.0 installed with the current library');

$node->safe_psql(
	'upgraded', q{
-- an upcaster: ItemAdded 1 -> 2 gets a quantity
CREATE FUNCTION item_added_v2(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$ SELECT data || '{"qty": 1}' $$;
SELECT event_store.register_upcaster('ItemAdded', 1, 'item_added_v2(jsonb, jsonb)');

-- the order aggregate, a snapshot every 3 versions
CREATE FUNCTION order_reducer(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN CASE e.event_type
        WHEN 'OrderPlaced' THEN state || jsonb_build_object('customer', e.data -> 'customer')
        WHEN 'ItemAdded' THEN jsonb_set(state, '{items}',
                                        to_jsonb((state ->> 'items')::int + (e.data ->> 'qty')::int))
        ELSE state END;
END $$;
SELECT event_store.define_aggregate('order', 'order_reducer(jsonb, event_store.event)',
                                    '{"items": 0}', snapshot_every => 3);

-- an inline projection of the order category, with who ran it
CREATE TABLE order_totals (stream_id text PRIMARY KEY, events int NOT NULL,
                           last_position bigint NOT NULL, run_as text NOT NULL);
CREATE FUNCTION project_order(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO order_totals VALUES (e.stream_id, 1, e.global_position, current_user)
    ON CONFLICT (stream_id) DO UPDATE
       SET events = order_totals.events + 1, last_position = EXCLUDED.last_position,
           run_as = EXCLUDED.run_as;
END $$;
SELECT event_store.create_projection('order_totals', 'project_order(event_store.event)',
                                     categories => ARRAY['order']);

-- an async projection of every event
CREATE TABLE event_log (event_id uuid PRIMARY KEY, global_position bigint NOT NULL,
                        event_type text NOT NULL);
CREATE FUNCTION log_event(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_log VALUES (e.event_id, e.global_position, e.event_type);
END $$;
SELECT event_store.create_projection('event_log', 'log_event(event_store.event)', mode => 'async');

});

# The saga types, in 0.1.0 and in a fresh 0.2.0.  The step functions log
# their calls and the role they ran as.  "fulfilment": reserve, charge (one
# attempt), ship (external), confirm; "packing": a function of schema shop,
# defined with shop on the search_path; "wrapping": a function that schemas
# a and b both have, defined with a on the search_path.
my $sagas_sql = q{
-- the saga's step functions log their calls, and the role they ran as
CREATE TABLE step_calls (n serial PRIMARY KEY, saga_id uuid NOT NULL, fn text NOT NULL,
                         run_as text NOT NULL DEFAULT current_user);
CREATE FUNCTION reserve(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO step_calls (saga_id, fn) VALUES (saga_id, 'reserve');
    RETURN jsonb_build_object('reservation', 'R-' || (data ->> 'order'));
END $$;
CREATE FUNCTION release(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO step_calls (saga_id, fn) VALUES (saga_id, 'release');
    RETURN '{}';
END $$;
-- declines amounts over 100
CREATE FUNCTION charge(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (data ->> 'amount')::numeric > 100 THEN
        RAISE EXCEPTION 'card declined';
    END IF;
    INSERT INTO step_calls (saga_id, fn) VALUES (saga_id, 'charge');
    RETURN jsonb_build_object('payment', 'P-' || (data ->> 'order'));
END $$;
CREATE FUNCTION confirm(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO step_calls (saga_id, fn) VALUES (saga_id, 'confirm');
    RETURN '{"confirmed": true}';
END $$;
CREATE SCHEMA shop;
CREATE FUNCTION shop.pack(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.step_calls (saga_id, fn) VALUES (saga_id, 'pack');
    RETURN '{}';
END $$;
CREATE SCHEMA a;
CREATE SCHEMA b;
CREATE FUNCTION a.wrap(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION b.wrap(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
SELECT event_store.define_saga('fulfilment', $${"steps": [
    {"name": "reserve", "action": "reserve", "compensation": "release"},
    {"name": "charge", "action": "charge", "max_attempts": 1},
    {"name": "ship"},
    {"name": "confirm", "action": "confirm"}]}$$);
SET search_path = shop, public;
SELECT event_store.define_saga('packing', '{"steps": [{"name": "pack", "action": "pack"}]}');
SET search_path = a;
SELECT event_store.define_saga('wrapping', '{"steps": [{"name": "wrap", "action": "wrap"}]}');
RESET search_path;
};
$node->safe_psql('upgraded', $sagas_sql);

# appends: single events and batches, generated and caller-supplied ids,
# old and new schema versions
$node->safe_psql(
	'upgraded', q{
SELECT event_store.append('order-1', '[
    {"type": "OrderPlaced", "data": {"customer": "ada"}, "metadata": {"user": "u1"}},
    {"type": "ItemAdded", "data": {"sku": "tea"}},
    {"type": "ItemAdded", "schema_version": 2, "data": {"sku": "mug", "qty": 3}}]', 0);
SELECT event_store.append('order-1',
    '{"type": "ItemAdded", "id": "00000000-0000-4000-8000-0000000000a1", "data": {"sku": "pot"}}', 3);
SELECT event_store.append('customer-1',
    '{"type": "Registered", "id": "00000000-0000-4000-8000-0000000000c1", "data": {"name": "Ada"}}', 0);
SELECT event_store.append('order-2',
    '[{"type": "OrderPlaced", "data": {"customer": "bob"}}]'::jsonb ||
    (SELECT jsonb_agg(jsonb_build_object('type', 'ItemAdded', 'data', jsonb_build_object('sku', 's' || i))
                      ORDER BY i)
       FROM generate_series(1, 7) i), 0);
SELECT event_store.append('customer-2', '{"type": "Registered", "data": null}');
SELECT event_store.save_snapshot('order-2', 5, '{"items": 4, "customer": "bob"}');
});

# sagas: completed, compensated, waiting in an external step claimed for an hour
my %sid = map { $_ => "5a9a0000-0000-4000-8000-00000000000$_" } 1 .. 5;
$node->safe_psql(
	'upgraded', qq{
SELECT event_store.start_saga('fulfilment', '{"order": "o-1", "amount": 30}', '$sid{1}');
SELECT count(*) FROM event_store.claim_saga_steps('shipper', 10, ARRAY['ship'], '1 hour');
SELECT event_store.complete_saga_step('$sid{1}', 'ship', '{"tracking": "T-1"}');
SELECT event_store.start_saga('fulfilment', '{"order": "o-2", "amount": 500}', '$sid{2}');
SELECT event_store.start_saga('fulfilment', '{"order": "o-3", "amount": 20}', '$sid{3}');
SELECT count(*) FROM event_store.claim_saga_steps('shipper', 10, ARRAY['ship'], '1 hour');
});
is( $node->safe_psql(
		'upgraded',
		q{SELECT string_agg(status, ' ' ORDER BY saga_id) FROM event_store.sagas}),
	'completed compensated running',
	'0.1.0: sagas completed, compensated and running');

my $snapshots_sql =
  q{SELECT string_agg(stream_id || '@' || stream_version, ' ' ORDER BY stream_id, stream_version)
      FROM event_store.snapshots};
is($node->safe_psql('upgraded', $snapshots_sql),
	'order-1@3 order-2@5 order-2@8',
	'0.1.0: snapshots by snapshot_every and save_snapshot');

# Is the async projection caught up with every event?
sub caught_up_sql
{
	return q{
SELECT s.state = 'running' AND s.lag_events = 0
   AND (SELECT count(*) FROM event_log) = (SELECT count(*) FROM event_store.events)
  FROM event_store.projection_status s WHERE s.name = 'event_log'};
}

# what the reads return before the update: every column of every row
my $reads_sql = q{
SELECT 'read_stream ' || s.stream_id || E'\n' ||
       coalesce((SELECT string_agg(r::text, E'\n' ORDER BY r.stream_version)
                   FROM event_store.read_stream(s.stream_id) r), '')
  FROM (SELECT DISTINCT stream_id FROM event_store.events) s
UNION ALL
SELECT 'read_stream raw order-1' || E'\n' ||
       string_agg(r::text, E'\n' ORDER BY r.stream_version)
  FROM event_store.read_stream('order-1', raw => true) r
UNION ALL
SELECT 'read_all' || E'\n' || string_agg(r::text, E'\n' ORDER BY r.global_position)
  FROM event_store.read_all(0, NULL) r
UNION ALL
SELECT 'read_category order' || E'\n' || string_agg(r::text, E'\n' ORDER BY r.global_position)
  FROM event_store.read_category('order') r
ORDER BY 1};
my $aggregates_sql = q{
SELECT string_agg(s || ': ' || a::text, E'\n' ORDER BY s)
  FROM (VALUES ('order-1', NULL), ('order-2', NULL), ('order-2', 4), ('order-1', 2)) v(id, at),
       LATERAL (SELECT v.id || coalesce('@' || v.at, '') AS s) n,
       LATERAL event_store.load_aggregate(v.id, v.at::bigint) a};

# a session that used the 0.1.0 schema stays open across the update
my $session = $node->background_psql('upgraded');
$session->query_safe(q{
SELECT event_store.append('order-3', '{"type": "OrderPlaced", "data": {"customer": "cy"}}', 0);
SELECT * FROM event_store.load_aggregate('order-3');
SELECT count(*) FROM event_store.read_stream('order-1');
});
$node->safe_psql('upgraded', 'SELECT event_store.run_projections()');
ok($node->poll_query_until('upgraded', caught_up_sql()),
	'0.1.0: the async projection is caught up');

my $reads_before = $node->safe_psql('upgraded', $reads_sql);
my $aggregates_before = $node->safe_psql('upgraded', $aggregates_sql);
my $data_before = data_of('upgraded', [qw(owner steps)], @ext_tables, @own_tables);
like($aggregates_before,
	qr/^order-1: \(4,"\{""items"": 5, ""customer"": ""ada""\}"\)$/m,
	'0.1.0: load_aggregate folds upcast events');

#
# the update
#
my $steps_sql = q{
SELECT string_agg(saga_type || ' ' || steps::text, E'\n' ORDER BY saga_type)
  FROM event_store.saga_definitions WHERE saga_type IN ('fulfilment', 'packing')};
like($node->safe_psql('upgraded', $steps_sql),
	qr/"action": "reserve\(uuid,jsonb\)".*"action": "pack\(uuid,jsonb\)"/s,
	'0.1.0 stored the step functions found on the search_path without their schema');
my ($ret, $stdout, $stderr) =
  $node->psql('upgraded', q{ALTER EXTENSION event_store UPDATE TO '0.2.0'});
is($ret, 0, 'ALTER EXTENSION event_store UPDATE TO 0.2.0 succeeds');
like(
	$stderr,
	qr/WARNING:  saga type "wrapping": the function wrap\(uuid,jsonb\) of step "wrap" was not found/,
	'with a warning for the saga step function that is not found again');
is( $node->safe_psql(
		'upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'0.2.0',
	'ALTER EXTENSION event_store UPDATE TO 0.2.0 goes to 0.2.0');

#
# (b) the same schema as a fresh install
#
$node->safe_psql('fresh', q{CREATE EXTENSION event_store VERSION '0.2.0'});
is( $node->safe_psql(
		'fresh', q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'0.2.0',
	'a fresh install is 0.2.0');
my $fresh_schema = schema_of('fresh');
like($fresh_schema, qr/^function grant_category\(role regrole, category text, privileges text\[\]\)/m,
	'the schema query sees the functions');
schema_is('upgraded', $fresh_schema,
	'the updated schema equals a fresh install of 0.2.0');

# the saga definitions name their functions as 0.2.0's define_saga does
$node->safe_psql('fresh', $sagas_sql);
is($node->safe_psql('upgraded', $steps_sql),
	$node->safe_psql('fresh', $steps_sql),
	'the saga definitions name their step functions as define_saga of 0.2.0 does');

#
# (c) the data written before still works
#
is($node->safe_psql('upgraded', $reads_sql),
	$reads_before, 'read_stream, read_all and read_category return the same rows as before');
is($node->safe_psql('upgraded', $aggregates_sql),
	$aggregates_before, 'load_aggregate gives the same states as before');
is(data_of('upgraded', [qw(owner steps)], @ext_tables, @own_tables),
	$data_before, 'the tables hold the same rows as before (owner columns and saga steps aside)');
is( $node->safe_psql(
		'upgraded', qq{
SELECT string_agg(format('%s %s/%s', t, n, o), ' ' ORDER BY t) FROM (
    SELECT 'upcasters' AS t, count(*) AS n, count(*) FILTER (WHERE owner = $extowner) AS o
      FROM event_store.upcasters
    UNION ALL SELECT 'aggregates', count(*), count(*) FILTER (WHERE owner = $extowner)
      FROM event_store.aggregates
    UNION ALL SELECT 'projections', count(*), count(*) FILTER (WHERE owner = $extowner)
      FROM event_store.projections
    UNION ALL SELECT 'saga_definitions', count(*), count(*) FILTER (WHERE owner = $extowner)
      FROM event_store.saga_definitions) x}),
	'aggregates 1/1 projections 2/2 saga_definitions 3/3 upcasters 1/1',
	'every registry row is owned by the extension owner');

# the projections go on
is( query(
		'upgraded', q{
SELECT event_store.append('order-1', '{"type": "ItemAdded", "data": {"sku": "cup"}}', 4);
SELECT events, last_position = event_store.head_position(), run_as = current_user
  FROM order_totals WHERE stream_id = 'order-1'}),
	"5\n5|t|t",
	'the inline projection applies an append at once, as the extension owner');
$node->safe_psql('upgraded', q{
SELECT event_store.append('order-4', '[{"type": "OrderPlaced"}, {"type": "ItemAdded", "data": {"sku": "x"}}]', 0);
SELECT event_store.run_projections();
});
ok($node->poll_query_until('upgraded', caught_up_sql()),
	'the async projection catches up with the new events');
is( query(
		'upgraded',
		q{SELECT state, stream_version FROM event_store.load_aggregate('order-1')}),
	'{"items": 6, "customer": "ada"}|5',
	'load_aggregate folds the new event');
is( query(
		'upgraded',
		q{SELECT string_agg(stream_id || '@' || stream_version, ' ' ORDER BY stream_id, stream_version)
            FROM event_store.snapshots WHERE stream_id = 'order-1'}),
	'order-1@3',
	'no snapshot before the next multiple of snapshot_every');

# the waiting saga completes; its next step runs as the extension owner
is( query(
		'upgraded', qq{
SELECT event_store.complete_saga_step('$sid{3}', 'ship', '{"tracking": "T-3"}');
SELECT status FROM event_store.sagas WHERE saga_id = '$sid{3}'}),
	"\ncompleted",
	'the saga waiting in its external step completes after the update');
is( query(
		'upgraded', qq{
SELECT string_agg(fn || ':' || (run_as = ${extowner}::text)::text, ' ' ORDER BY n)
  FROM step_calls WHERE saga_id = '$sid{3}'}),
	'reserve:true charge:true confirm:true',
	'its remaining local step ran (as the extension owner)');
is( query(
		'upgraded', qq{
SELECT event_store.start_saga('fulfilment', '{"order": "o-4", "amount": 40}', '$sid{4}');
SELECT string_agg(name || ':' || status, ' ' ORDER BY step_no)
  FROM event_store.saga_steps WHERE saga_id = '$sid{4}'}),
	"$sid{4}\nreserve:completed charge:completed ship:running confirm:pending",
	'a new saga of the type defined under 0.1.0 starts');
is( query(
		'upgraded', qq{
SELECT event_store.start_saga('packing', '{}', '$sid{5}');
SELECT s.status || ' ' || c.fn FROM event_store.sagas s JOIN step_calls c USING (saga_id)
 WHERE saga_id = '$sid{5}'}),
	"$sid{5}\ncompleted pack",
	'a saga whose step function was found on the search_path of 0.1.0 runs it');
like(
	query('upgraded', q{SELECT event_store.start_saga('wrapping', '{}')}),
	qr/function "wrap\(uuid,jsonb\)" does not exist/,
	'a saga whose step function was not found again does not start');

# new in 0.2.0: category grants, stream deletion, the stats view
$node->safe_psql('postgres', 'CREATE ROLE es_reader; CREATE ROLE es_other');
is( query(
		'upgraded', q{
SELECT event_store.grant_category('es_reader', 'order', '{read}');
SELECT category || ' ' || grantee || ' ' || privilege FROM event_store.category_grants}),
	"\norder es_reader read",
	'grant_category works');
# (EXECUTE granted in a transaction rolled back: the ACLs stay as installed)
my $read_as = q{
BEGIN;
GRANT EXECUTE ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) TO %s;
SET ROLE %s;
SELECT count(*) FROM event_store.read_stream('order-1');
ROLLBACK};
is(query('upgraded', sprintf($read_as, 'es_reader', 'es_reader')),
	'5', 'a grantee of the category reads it');
like(
	query('upgraded', sprintf($read_as, 'es_other', 'es_other')),
	qr/role "es_other" may not read category "order"/,
	'another role may not');
is( query(
		'upgraded', q{
SELECT event_store.delete_stream('customer-2', 1);
SELECT count(*) FROM event_store.read_stream('customer-2');
SELECT stream_id, deleted_at IS NOT NULL FROM event_store.stream_metadata}),
	"2\n0\ncustomer-2|t",
	'delete_stream works');
($ret, $stdout, $stderr) = $node->psql(
	'upgraded',
	q{SELECT event_store.append('customer-2', '{"type": "Again"}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/SE003: stream "customer-2" is deleted/,
	'and an append to the deleted stream is refused (SE003)');
# (events and streams are estimates, exact for a small table right after
# ANALYZE once every session reported its counts: the open session does so
# before it answers)
$session->query_safe('SELECT pg_stat_force_next_flush()');
is( query(
		'upgraded', q{
ANALYZE event_store.events;
SELECT s.events = (SELECT count(*) FROM event_store.events),
       s.streams = (SELECT count(DISTINCT stream_id) FROM event_store.events),
       s.deleted_streams, s.head_position = event_store.head_position(), s.sagas_by_status
  FROM event_store.stats s}),
	't|t|1|t|{"running": 1, "completed": 3, "compensated": 1}',
	'the stats view');

# the session opened before the update sees 0.2.0
is( $session->query_safe(q{
SELECT event_store.append('order-3', '{"type": "ItemAdded", "data": {"sku": "y"}}', 1);
SELECT state FROM event_store.load_aggregate('order-3');
SELECT event_store.grant_category('es_reader', 'customer', '{read}');
SELECT count(*) FROM event_store.category_grants;
SELECT run_as = current_user FROM order_totals WHERE stream_id = 'order-3';
}),
	qq{2\n{"items": 1, "customer": "cy"}\n\n2\nt},
	'a session opened before the update appends, folds and grants with the 0.2.0 schema');

# correlation ids appended on the 0.2.0 schema, which has no correlation
# runs (event_store.correlations comes with 0.3.0): the library writes none
# and the appends succeed.  A batch A,A,B,A,(none),A, then A in another
# stream, then 42 as a number and as a string in two appends of that stream.
is( query(
		'upgraded', q{
SELECT event_store.append('corr-1', '[
    {"type": "C1", "metadata": {"correlationId": "u-a"}},
    {"type": "C2", "metadata": {"correlationId": "u-a"}},
    {"type": "C3", "metadata": {"correlationId": "u-b"}},
    {"type": "C4", "metadata": {"correlationId": "u-a"}},
    {"type": "C5"},
    {"type": "C6", "metadata": {"correlationId": "u-a"}}]', 0);
SELECT event_store.append('corr-2', '{"type": "D1", "metadata": {"correlationId": "u-a"}}', 0);
SELECT event_store.append('corr-2', '{"type": "D2", "metadata": {"correlationId": 42}}', 1);
SELECT event_store.append('corr-2', '{"type": "D3", "metadata": {"correlationId": "42"}}', 2);
SELECT to_regclass('event_store.correlations') IS NULL}),
	"6\n1\n2\n3\nt",
	'0.2.0: appends with correlation ids succeed without the runs table');

#
# (c3) 0.2.0 -> 0.3.0, with the data written under 0.1.0 and 0.2.0
#
$node->safe_psql('upgraded', 'SELECT event_store.run_projections()');
ok($node->poll_query_until('upgraded', caught_up_sql()),
	'0.2.0: the async projection is caught up');
my @all_tables = (@ext_tables, @new_tables, @own_tables);
my $reads_02 = $node->safe_psql('upgraded', $reads_sql);
my $aggregates_02 = $node->safe_psql('upgraded', $aggregates_sql);
my $data_02 = data_of('upgraded', \@cols_03, @all_tables);
my $head_02 = $node->safe_psql('upgraded', 'SELECT event_store.head_position()');
($ret, $stdout, $stderr) = $node->psql('upgraded', 'ALTER EXTENSION event_store UPDATE');
is($ret, 0, 'ALTER EXTENSION event_store UPDATE from 0.2.0 succeeds') or diag($stderr);
is( $node->safe_psql(
		'upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'0.3.0',
	'ALTER EXTENSION event_store UPDATE goes to 0.3.0');
$node->safe_psql('postgres', 'CREATE DATABASE fresh3');
$node->safe_psql('fresh3', 'CREATE EXTENSION event_store');
is( $node->safe_psql(
		'fresh3', q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'0.3.0',
	'a fresh install is 0.3.0');
my $fresh3_schema = schema_of('fresh3');
schema_is('upgraded', $fresh3_schema,
	'the schema updated from 0.2.0 equals a fresh install of 0.3.0');
is($node->safe_psql('upgraded', $reads_sql),
	$reads_02, '0.3.0: read_stream, read_all and read_category return the same rows as before');
is($node->safe_psql('upgraded', $aggregates_sql),
	$aggregates_02, '0.3.0: load_aggregate gives the same states as before');
is(data_of('upgraded', \@cols_03, @all_tables),
	$data_02, '0.3.0: the tables hold the same rows as before (the columns 0.3.0 adds aside)');
# the update fills the correlation runs of the events stored before: one
# per maximal sequence of events of one stream, consecutive in position
# order, with the same correlation text (batch boundaries are not known:
# 42 spans two appends)
my $corr_base = $node->safe_psql('upgraded',
	q{SELECT min(global_position) - 1 FROM event_store.events WHERE stream_id = 'corr-1'});
is( query(
		'upgraded', qq{
SELECT string_agg(correlation_id || ' ' || (first_position - $corr_base) || '-' || (last_position - $corr_base),
                  ', ' ORDER BY last_position)
  FROM event_store.correlations WHERE correlation_id IN ('u-a', 'u-b', '42');
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('u-a');
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('42');
SELECT (SELECT count(*) FROM event_store.correlations r
          JOIN event_store.events e
            ON e.global_position BETWEEN r.first_position AND r.last_position
           AND (e.metadata ->> 'correlationId') COLLATE "C" = r.correlation_id)
     = (SELECT count(*) FROM event_store.events WHERE (metadata ->> 'correlationId') IS NOT NULL)}),
	"u-a 1-2, u-b 3-3, u-a 4-4, u-a 6-6, u-a 7-7, 42 8-9\nC1 C2 C4 C6 D1\nD2 D3\nt",
	'0.3.0: the update fills the correlation runs of the stored events, and read_correlated reads them');
is( query(
		'upgraded', q{
SELECT count(*) || ' ' || count(*) FILTER (WHERE version = 1) FROM event_store.saga_definitions;
SELECT count(*) || ' ' || count(*) FILTER (WHERE version = 1) FROM event_store.sagas;
SELECT count(*) = (SELECT count(*) FROM event_store.saga_definitions)
   AND sum(running) = (SELECT count(*) FROM event_store.sagas WHERE status IN ('running', 'compensating'))
  FROM event_store.saga_types}),
	query(
		'upgraded', q{
SELECT count(*) || ' ' || count(*) FROM event_store.saga_definitions;
SELECT count(*) || ' ' || count(*) FROM event_store.sagas;
SELECT true}),
	'0.3.0: every saga type defined before is its version 1, every saga runs on it (saga_types)');
is( query(
		'upgraded', qq{
SELECT event_store.append('order-5', '{"type": "OrderPlaced"}', 0);
SELECT min(global_position) > $head_02 FROM event_store.events WHERE stream_id = 'order-5'}),
	"1\nt",
	'0.3.0: appends go on above the head of before the update');
is( $session->query_safe(q{
SELECT event_store.append('order-3', '{"type": "ItemAdded", "data": {"sku": "z"}}', 2);
SELECT state FROM event_store.load_aggregate('order-3');
}),
	qq{3\n{"items": 2, "customer": "cy"}},
	'a session opened before both updates appends and folds with the 0.3.0 schema');
is( $session->query_safe(q{
SELECT event_store.append('corr-3', '{"type": "S1", "metadata": {"correlationId": "u-s"}}', 0);
SELECT count(*) FROM event_store.correlations WHERE correlation_id = 'u-s';
SELECT string_agg(stream_id, ' ') FROM event_store.read_correlated('u-s');
}),
	qq{1\n1\ncorr-3},
	'and writes the correlation runs of its appends');
$session->quit;

# a claim hands out the rows written under 0.1.0, 0.2.0 and 0.3.0 as
# read_all reads them, every column (a claimed row is built from the stored
# row's bytes when the row has every column of the event type)
my $events_03 = $node->safe_psql('upgraded', 'SELECT count(*) FROM event_store.read_all(0, NULL)');
is( query(
		'upgraded', q{
SELECT event_store.create_subscription('upgraded_rows', partitions => 3);
WITH g AS (SELECT * FROM event_store.claim_events('upgraded_rows', 'u', 1000))
SELECT count(*) || ' ' || count(*) FILTER (
         WHERE (g.stream_id, g.stream_version, g.event_id, g.event_type, g.data, g.metadata,
                g.schema_version, g.recorded_at)
               IS NOT DISTINCT FROM
               (r.stream_id, r.stream_version, r.event_id, r.event_type, r.data, r.metadata,
                r.schema_version, r.recorded_at))
  FROM g LEFT JOIN event_store.read_all(0, NULL) r USING (global_position);
SELECT event_store.drop_subscription('upgraded_rows');
}),
	"\n$events_03 $events_03\n",
	'0.3.0: a claim hands out every event as read_all reads it');

#
# (d) dump and restore of the updated database
#
$node->safe_psql('upgraded', 'SELECT event_store.run_projections()');
ok($node->poll_query_until('upgraded', caught_up_sql()),
	'the async projection is caught up before the dump');
# (with the correlation runs, which 0.3.0 adds)
my @tables_03 = (@all_tables, 'correlations');
my $upgraded_data = data_of('upgraded', 0, @tables_03);
# the worker of the restored database may move an async projection to the
# head there, which starts at the restored position mark
my @moved = ('position', 'updated_at');
my $upgraded_unmoved = data_of('upgraded', \@moved, @tables_03);
my $upgraded_max =
  $node->safe_psql('upgraded', 'SELECT max(global_position) FROM event_store.events');

my $dump = $node->basedir . '/upgraded.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'upgraded' ],
	'pg_dump -Fc of the updated database');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', '--exit-on-error', '--single-transaction', '-d', 'restored', $dump ],
	'pg_restore into a new database');
is(data_of('upgraded', 0, @tables_03),
	$upgraded_data, 'the updated database did not change during the dump');

schema_is('restored', $fresh3_schema,
	'the schema of the restored database equals a fresh install');
is(data_of('restored', \@moved, @tables_03),
	$upgraded_unmoved,
	'the restored tables equal the updated ones row for row (events, snapshots, registries, '
	  . 'projections, sagas, saga steps, grants, stream metadata, read models)');
is( query(
		'restored', qq{
SELECT event_store.append('order-1', '{"type": "ItemAdded", "data": {"sku": "lid"}}', 5);
SELECT event_store.append('order-9', '{"type": "OrderPlaced"}', 0);
SELECT string_agg(stream_id || ':' || stream_version, ' ' ORDER BY global_position)
       || ' ' || (max(global_position) - min(global_position))
  FROM event_store.events WHERE global_position > $upgraded_max}),
	"6\n1\norder-1:6 order-9:1 1",
	'appends to the restored database continue after the highest restored position');
is( query(
		'restored',
		q{SELECT events FROM order_totals WHERE stream_id = 'order-1'}),
	'6',
	'and its inline projection applies them');

#
# (e) updating 0.3.0 does nothing; 0.2.0 with saga types and 0.1.0
# without data update alike
#
($ret, $stdout, $stderr) =
  $node->psql('fresh3', 'ALTER EXTENSION event_store UPDATE');
is($ret, 0, 'ALTER EXTENSION event_store UPDATE on 0.3.0 succeeds');
like(
	$stderr,
	qr/NOTICE:  version "0\.3\.0" of extension "event_store" is already installed/,
	'with the notice that 0.3.0 is already installed');
schema_is('fresh3', $fresh3_schema, 'and changes nothing');
# an append that waits for the update (which holds a SHARE lock on the
# events while it fills the runs) writes the runs of its batch, though its
# session looked the schema up before the update: none of its events is
# left out of read_correlated
my $appender = $node->background_psql('fresh');
$appender->query_safe(q{
SELECT event_store.append('race-0', '{"type": "Before", "metadata": {"correlationId": "u-race"}}')});
my $updater = $node->background_psql('fresh');
$updater->query_safe('BEGIN');
$updater->query_safe('ALTER EXTENSION event_store UPDATE');
$appender->query_until(qr/appending/, q{\echo appending
SELECT event_store.append('race-1', '[{"type": "Waited", "metadata": {"correlationId": "u-race"}},
                                      {"type": "Waited", "metadata": {"correlationId": "u-race"}}]');
});
ok( $node->poll_query_until(
		'fresh', q{
SELECT count(*) > 0 FROM pg_stat_activity
 WHERE wait_event_type = 'Lock' AND query LIKE '%race-1%' AND pid <> pg_backend_pid()}),
	'an append waits for the update');
$updater->query_safe('COMMIT');
$updater->quit;
ok( $node->poll_query_until(
		'fresh', q{SELECT count(*) = 2 FROM event_store.events WHERE stream_id = 'race-1'}),
	'and goes on once it committed');
$appender->quit;
is( query(
		'fresh', q{
SELECT string_agg(last_position - first_position + 1 || '', ' ' ORDER BY last_position)
  FROM event_store.correlations WHERE correlation_id = 'u-race';
SELECT string_agg(stream_id, ' ' ORDER BY global_position) FROM event_store.read_correlated('u-race')}),
	"1 2\nrace-0 race-1 race-1",
	'the update filled the runs of the events before it, the append that waited wrote its own');
schema_is('fresh', $fresh3_schema, '0.2.0 with saga types updates to the schema of a fresh install');

# no data, but a grant made under 0.1.0: it stays, and stays out of the
# extension's initial privileges (pg_dump dumps it)
$node->safe_psql('postgres', 'CREATE DATABASE empty; CREATE ROLE es_reporter');
$node->safe_psql('empty', q{CREATE EXTENSION event_store VERSION '0.1.0'});
$node->safe_psql('empty', 'GRANT SELECT ON event_store.events TO es_reporter');
is( $node->safe_psql(
		'empty',
		q{SELECT path FROM pg_extension_update_paths('event_store')
           WHERE source = '0.1.0' AND target = '0.2.0'}),
	'0.1.0--0.2.0',
	'the update path 0.1.0 -> 0.2.0 is the single script');
is( $node->safe_psql(
		'empty',
		q{SELECT path FROM pg_extension_update_paths('event_store')
           WHERE source = '0.2.0' AND target = '0.3.0'}),
	'0.2.0--0.3.0',
	'the update path 0.2.0 -> 0.3.0 is the single script');
$node->safe_psql('empty', q{ALTER EXTENSION event_store UPDATE});
# (pg_dump warns about the foreign key of event_store.sagas on itself)
my ($dump_out) = run_command([ 'pg_dump', '--schema-only', '-d', $node->connstr('empty') ]);
like($dump_out, qr/^GRANT SELECT ON TABLE event_store\.events TO es_reporter;$/m,
	'a grant on a table made before the update is dumped');
$node->safe_psql('empty', 'REVOKE SELECT ON event_store.events FROM es_reporter');
schema_is('empty', $fresh3_schema,
	'0.1.0 without data updates to the schema of a fresh install');

$node->stop;
done_testing();
