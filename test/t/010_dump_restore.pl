# pg_dump / pg_restore keep every event exactly (positions, versions, ids,
# payloads, timestamps), and a restored store goes on where the original
# stopped: new positions come after the highest restored one, stream
# versions continue, and the restored table is still immutable.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('dump_restore');

# Result of a query, or its error text
sub query { return es_query($node, @_); }

$node->safe_psql('postgres', 'CREATE DATABASE source');
$node->safe_psql('source', 'CREATE EXTENSION event_store');

# Several streams, all kinds of payloads, caller-supplied and generated
# ids, a 1000-event batch and a hole left by a rolled back append.
$node->safe_psql('source', q{
SELECT event_store.append('order-1', '[
    {"type": "OrderPlaced", "data": {"total": 10.50, "lines": [1, 2]}, "metadata": {"user": "u1", "correlationId": "o-1"}},
    {"type": "OrderPaid", "schema_version": 2, "data": "paid in full", "metadata": {"correlationId": "o-1"}}]', 0);
SELECT event_store.append('customer-1', '{"type": "Registered", "id": "00000000-0000-4000-8000-00000000c001", "data": {"name": "Zoë \"Z\" O''Neil"}}', 0);
SELECT event_store.append('bulk-1',
       (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', jsonb_build_object('n', i))
                         ORDER BY i)
          FROM generate_series(1, 1000) AS i), 0);
SELECT event_store.append('customer', '{"type": "RegistryOpened", "data": null}', 0);
});
$node->safe_psql('source', q{
BEGIN;
SELECT event_store.append('order-2', '{"type": "Discarded"}', 0);
ROLLBACK;
});
$node->safe_psql('source', q{
SELECT event_store.append('order-1', '{"type": "OrderShipped", "data": 42, "metadata": {"correlationId": "o-1"}}', 2);
SELECT event_store.append('order-2', '{"type": "OrderPlaced"}', 0);
});

# Every column of every event, in position order, as one text.
my $all_events = q{
SELECT count(*) || E'\n' || string_agg(e::text, E'\n' ORDER BY e.global_position)
  FROM event_store.events e};
my $source_events = $node->safe_psql('source', $all_events);
like($source_events, qr/^1006\n/, 'source holds 1006 events');

my $source_max = $node->safe_psql('source',
	'SELECT max(global_position) FROM event_store.events');

# custom-format dump, restored into a new database
my $dump = $node->basedir . '/source.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'source' ],
	'pg_dump -Fc of the source database');
$node->safe_psql('postgres', 'CREATE DATABASE target');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'target', $dump ],
	'pg_restore into a new database');

is($node->safe_psql('target', $all_events),
	$source_events, 'restored events equal the source row for row, all columns');
# the correlation runs read_correlated reads are restored with the events
my $correlated = q{
SELECT string_agg(correlation_id || ' ' || first_position || '-' || last_position, ', '
                  ORDER BY correlation_id, last_position)
  FROM event_store.correlations;
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('o-1')};
is($node->safe_psql('target', $correlated),
	$node->safe_psql('source', $correlated),
	'the correlation runs are restored: read_correlated reads the restored events');
like($node->safe_psql('target', $correlated), qr/\nOrderPlaced OrderPaid OrderShipped$/,
	'(all of the correlation)');
is( $node->safe_psql(
		'target',
		q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	$node->safe_psql(
		'source',
		q{SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	'the extension is restored at the same version');

# the restored store goes on where the source stopped: its head is its
# highest position, or the restored durable mark above it when the
# database's counter is first built after the restore (every position up to
# the mark may have been handed out, so the head starts there); which of the
# two depends on whether the background worker looked at the new database
# before pg_restore filled it
my $restored_mark = query('target', 'SELECT last_value FROM event_store.position_mark');
my $head = query('target', 'SELECT event_store.head_position()');
ok($head == $source_max || $head == $restored_mark,
	"head_position of the restored store is its highest position or the restored mark ($head; $source_max, $restored_mark)");
is( query(
		'target', q{SELECT event_store.stream_version('order-1')}),
	'3',
	'stream versions are restored');
is( query(
		'target',
		q{SELECT event_store.append('order-1', '{"type": "OrderReturned"}', 3)}),
	'4',
	'an append to a restored stream continues its versions');
is( query(
		'target',
		q{SELECT event_store.append('bulk-1', '[{"type": "Tock"}, {"type": "Tock"}]', 1000)}),
	'1002',
	'a batch appended to the restored 1000-event stream continues at 1001');
is( query(
		'target',
		q{SELECT event_store.append('order-3', '{"type": "OrderPlaced"}', 0)}),
	'1',
	'a new stream starts at version 1');
is( query(
		'target', qq{
SELECT string_agg(stream_id || ':' || stream_version, ' ' ORDER BY global_position)
  FROM event_store.events WHERE global_position > $source_max}),
	'order-1:4 bulk-1:1001 bulk-1:1002 order-3:1',
	'new events get positions after the highest restored one');
is( query(
		'target', qq{
SELECT count(*) || E'\\n' || string_agg(e::text, E'\\n' ORDER BY e.global_position)
  FROM event_store.events e WHERE e.global_position <= $source_max}),
	$source_events,
	'no restored position was reused: up to the restored maximum, the rows are the source\'s');
is( query(
		'target', qq{
SELECT min(global_position) > $source_max AND max(global_position) - min(global_position) = 3
  FROM event_store.events WHERE global_position > $source_max}),
	't',
	'the new positions are consecutive, above the restored ones');
is( query(
		'target', q{SELECT count(*) FROM event_store.read_all(0, NULL)}),
	'1010',
	'read_all sees restored and new events');

# the caller-supplied id is restored: a retry is recognised, a reuse refused
is( query(
		'target',
		q{SELECT event_store.append('customer-1', '{"type": "Registered", "id": "00000000-0000-4000-8000-00000000c001"}', 0)}
	),
	'1',
	'an idempotent retry of a restored event is recognised');
my ($ret, $stdout, $stderr) = $node->psql(
	'target',
	q{SELECT event_store.append('customer-2', '{"type": "Registered", "id": "00000000-0000-4000-8000-00000000c001"}')},
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'a restored event id cannot be reused');
like($stderr, qr/SE002/, 'reusing a restored event id is SE002');

# the restored table is still immutable, also for replication roles
($ret, $stdout, $stderr) = $node->psql('target',
	q{SET session_replication_role = replica; DELETE FROM event_store.events});
isnt($ret, 0, 'DELETE on the restored table is refused');
like($stderr, qr/events are immutable/, 'with the immutability error');
($ret, $stdout, $stderr) =
  $node->psql('target', q{TRUNCATE event_store.events});
like($stderr, qr/events are immutable/, 'TRUNCATE on the restored table is refused');

# the source is untouched by all this
is($node->safe_psql('source', $all_events),
	$source_events, 'the source database is unchanged');

# a plain-format dump of the restored database replays the same way
my $plain = $node->basedir . '/target.sql';
$node->command_ok([ 'pg_dump', '-Fp', '-f', $plain, '-d', 'target' ],
	'pg_dump -Fp of the restored database');
$node->safe_psql('postgres', 'CREATE DATABASE target2');
$node->command_ok(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', 'target2', '-f', $plain ],
	'plain dump replayed with psql');
is(query('target2', $all_events),
	query('target', $all_events),
	'a dump of the restored database restores the same events');
is( query(
		'target2',
		q{SELECT event_store.append('order-1', '{"type": "OrderReopened"}', 4)}),
	'5',
	'and it goes on from there too');

# Everything else the extension keeps survives too: snapshots, projections
# (and their read models and checkpoints), sagas and their steps, category
# grants, deleted streams and retention settings; and it all goes on working
# after the restore.
$node->safe_psql('postgres', 'CREATE DATABASE rich');
$node->safe_psql('rich', q{
CREATE EXTENSION event_store;
CREATE ROLE dump_service;
CREATE TABLE public.counts (stream_id text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION public.count_event(e event_store.event) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO public.counts VALUES (e.stream_id, 1)
    ON CONFLICT (stream_id) DO UPDATE SET n = counts.n + 1
$$;
CREATE TABLE public.async_counts (stream_id text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION public.async_count(e event_store.event) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO public.async_counts VALUES (e.stream_id, 1)
    ON CONFLICT (stream_id) DO UPDATE SET n = async_counts.n + 1
$$;
CREATE FUNCTION public.total(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('n', coalesce((state ->> 'n')::int, 0) + 1) $$;
CREATE FUNCTION public.step(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT '{"done": true}'::jsonb $$;
SELECT event_store.define_aggregate('acct', 'public.total(jsonb, event_store.event)', snapshot_every => 2);
SELECT event_store.create_projection('counts', 'public.count_event(event_store.event)');
SELECT event_store.create_projection('async_counts', 'public.async_count(event_store.event)', mode => 'async');
SELECT event_store.append('acct-1', '[{"type": "Opened"}, {"type": "Paid"}, {"type": "Paid"}]', 0);
SELECT event_store.save_snapshot('acct-1', 1, '{"n": 1}', 7);
SELECT event_store.run_projections();
SELECT event_store.define_saga('pay', '{"steps": [{"name": "local", "action": "public.step"}, {"name": "ext"}]}');
SELECT event_store.start_saga('pay', '{"x": 1}', '00000000-0000-4000-8000-0000000000d1');
SELECT event_store.grant_category('dump_service', 'acct', '{append,read}');
SELECT event_store.append('gone-1', '{"type": "Soon"}');
SELECT event_store.delete_stream('gone-1');
SELECT event_store.set_stream_retention('acct-1', max_count => 100);
});
my $rich_state = q{
SELECT string_agg(t, E'\n' ORDER BY t) FROM (
  SELECT 'snapshot ' || s.stream_id || ' ' || s.stream_version || ' ' || s.state || ' ' || s.state_version AS t FROM event_store.snapshots s
  -- (an async projection past the last event: the restored worker may move it on
  -- to the restored head, which is above every position handed out before)
  UNION ALL SELECT 'projection ' || p.name || ' ' || p.mode || ' ' || p.state || ' ' ||
                   CASE WHEN p.mode = 'async' AND p.position >= (SELECT max(global_position) FROM event_store.events)
                        THEN 'caught up' ELSE p.position::text END || ' ' || p.owner FROM event_store.projections p
  UNION ALL SELECT 'aggregate ' || a.category || ' ' || a.reducer || ' ' || a.snapshot_every || ' ' || a.owner FROM event_store.aggregates a
  UNION ALL SELECT 'saga ' || s.saga_id || ' ' || s.status || ' ' || s.data FROM event_store.sagas s
  UNION ALL SELECT 'step ' || st.saga_id || ' ' || st.name || ' ' || st.status || ' ' || coalesce(st.result::text, '-') FROM event_store.saga_steps st
  UNION ALL SELECT 'definition ' || d.saga_type || ' ' || d.steps || ' ' || d.owner FROM event_store.saga_definitions d
  UNION ALL SELECT 'grant ' || g.category || ' ' || g.grantee || ' ' || g.privilege FROM event_store.category_grants g
  UNION ALL SELECT 'meta ' || m.stream_id || ' ' || (m.deleted_at IS NOT NULL) || ' ' || m.start_after || ' ' || coalesce(m.max_count::text, '-') FROM event_store.stream_metadata m
  UNION ALL SELECT 'count ' || c.stream_id || ' ' || c.n FROM public.counts c
  UNION ALL SELECT 'async ' || c.stream_id || ' ' || c.n FROM public.async_counts c
  UNION ALL SELECT 'events ' || count(*) || ' ' || max(global_position) FROM event_store.events) x};
my $rich_before = $node->safe_psql('rich', $rich_state);
like($rich_before, qr/^async acct-1 3$/m, 'the async read model was built before the dump');
like($rich_before, qr/^step .* ext running/m, 'a saga waits on its external step');
my $rich_dump = $node->basedir . '/rich.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $rich_dump, '-d', 'rich' ], 'pg_dump -Fc of a store using every feature');
$node->safe_psql('postgres', 'CREATE DATABASE rich_restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'rich_restored', $rich_dump ],
	'pg_restore of it');
is($node->safe_psql('rich_restored', $rich_state), $rich_before,
	'snapshots, projections, aggregates, sagas, steps, definitions, grants, stream metadata and read models are restored');
is( query('rich_restored', q{SELECT state FROM event_store.load_aggregate('acct-1')}),
	'{"n": 3}', 'the aggregate loads from the restored snapshot and events');
is( query(
		'rich_restored', q{
SELECT event_store.append('acct-1', '{"type": "Paid"}', 3);
SELECT event_store.run_projections() >= 0;   -- the worker may have been first
SELECT n FROM public.counts WHERE stream_id = 'acct-1'}),
	"4\nt\n4", 'the inline projection goes on from its restored checkpoint');
# the worker may hold the async projection's batch: wait for its commit
ok( $node->poll_query_until(
		'rich_restored', q{
SELECT lag_events = 0 FROM event_store.projection_status WHERE mode = 'async'}),
	'the async projection catches up');
is( query('rich_restored', q{SELECT n FROM public.async_counts WHERE stream_id = 'acct-1'}),
	'4', 'the async projection goes on from its restored checkpoint, applying each event once');
is( query(
		'rich_restored', q{
SELECT event_store.complete_saga_step('00000000-0000-4000-8000-0000000000d1', 'ext', '{}');
SELECT event_store.saga_state('00000000-0000-4000-8000-0000000000d1') ->> 'status'}),
	"\ncompleted", 'the restored saga completes');
like( query('rich_restored', q{SELECT event_store.append('gone-1', '{"type": "Late"}')}),
	qr/stream "gone-1" is deleted/, 'a restored deleted stream stays deleted');
is( query('rich_restored', q{
SELECT min(global_position) > (SELECT max(global_position) FROM event_store.events WHERE stream_id = 'gone-1')
  FROM event_store.events WHERE stream_version = 4 AND stream_id = 'acct-1'}),
	't', 'positions go on after the restored ones');
$node->safe_psql('rich', 'DROP EXTENSION event_store CASCADE');
$node->safe_psql('rich_restored', 'DROP EXTENSION event_store CASCADE');
$node->safe_psql('postgres', 'DROP DATABASE rich');
$node->safe_psql('postgres', 'DROP DATABASE rich_restored');
$node->safe_psql('postgres', 'DROP ROLE dump_service');

$node->stop;
done_testing();
