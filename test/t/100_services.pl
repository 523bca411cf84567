# Services in separate databases: a producer publishes the events of a
# category (create_publication), a consumer on another server imports them
# (create_import).  History and live events arrive exactly once with the
# producer's stream ids, versions, ids and data, "$source" in metadata,
# local positions dense and in the producer's commit order; the imported
# category is read-only on the consumer (SE004); an inline projection, a
# subscription and an event-driven saga step there see the imported events;
# a restart of the producer and a kill -9 of the consumer lose and repeat
# nothing; a conflict stops the import with the reason in import_status;
# drop_import keeps the events and removes the producer's slot.
#
# Every wait is a poll with a deadline, never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/100_services.pl
# (ES_TEST_PORT picks the producer's port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $producer = es_node('producer', q{
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
event_store.naptime = '200ms'
});

my $consumer = PostgreSQL::Test::Cluster->new('consumer');
$consumer->init;
$consumer->append_conf('postgresql.conf', q{
shared_preload_libraries = 'event_store'
event_store.naptime = '200ms'
wal_retrieve_retry_interval = '200ms'
});
$consumer->start;

# What a statement gives: its result, or "ERROR <sqlstate>"
sub sqlstate_of
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $ret == 0 ? $stdout : "ERROR $stderr";
}

# Wait until the consumer has n events
sub wait_for_events
{
	my ($n, $what) = @_;
	ok($consumer->poll_query_until('postgres',
			"SELECT count(*) >= $n FROM event_store.events"),
		"the consumer has $n events: $what")
	  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
}

# The events of category order, as both sides must agree on them
my $same_events = q{
SELECT string_agg(pg_catalog.concat_ws('|', stream_id, stream_version, event_id, event_type,
                                      data, metadata - '$source', schema_version), E'\n'
                  ORDER BY stream_id, stream_version)
  FROM event_store.events WHERE stream_id LIKE 'order-%'};

$producer->safe_psql('postgres', q{
CREATE EXTENSION event_store;
SELECT event_store.append('order-1', '[
  {"type": "Placed", "id": "00000000-0000-4000-8000-000000000001", "data": {"total": 10}},
  {"type": "Shipped", "id": "00000000-0000-4000-8000-000000000002", "metadata": {"by": "ann"}, "schema_version": 2}]', 0);
SELECT event_store.append('customer-1', '{"type": "Registered"}', 0);
SELECT event_store.append('order-2', '{"type": "Placed", "data": {"total": 5}}', 0);
});
$consumer->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE ROLE svc_user LOGIN;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA event_store TO svc_user;
-- a local inline projection, a local subscription and a saga waiting for an event
CREATE TABLE order_counts (stream_id text PRIMARY KEY, n int NOT NULL);
CREATE FUNCTION count_order(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.order_counts AS c VALUES (e.stream_id, 1)
    ON CONFLICT (stream_id) DO UPDATE SET n = c.n + 1;
END $$;
SELECT event_store.create_projection('order_counts', 'count_order(event_store.event)',
                                     categories => ARRAY['order']);
SELECT event_store.create_subscription('billing', categories => ARRAY['order'], partitions => 1);
SELECT event_store.define_saga('await_payment', '{"steps": [{"name": "paid", "complete_on": "Paid"}]}');
SELECT event_store.start_saga('await_payment', '{}', '5a9a0000-0000-4000-8000-0000000000aa');
});
$producer->safe_psql('postgres', q{
CREATE ROLE svc_user LOGIN;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA event_store TO svc_user;
});

# ---- create_publication: who and where --------------------------------------
like(sqlstate_of($consumer, q{SELECT event_store.create_publication('p', ARRAY['order'])}),
	qr/ERROR .*55000/, 'create_publication without wal_level = logical: 55000');
like(sqlstate_of($producer,
		q{SET ROLE svc_user; SELECT event_store.create_publication('p', ARRAY['order'])}),
	qr/ERROR .*42501/, 'create_publication by a role that is not the extension owner: 42501');
like(sqlstate_of($producer, q{SELECT event_store.create_publication('p', ARRAY['or-der'])}),
	qr/ERROR .*22023/, 'create_publication of a category with "-": 22023');
is($producer->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_publication}),
	'0', 'the refused calls made no publication');
$producer->safe_psql('postgres',
	q{SELECT event_store.create_publication('orders', ARRAY['order'])});
like(sqlstate_of($producer, q{SELECT event_store.create_publication('orders', ARRAY['order'])}),
	qr/ERROR .*42710/, 'a second publication of the same name: 42710');

# ---- create_import: who ------------------------------------------------------
my $connstr = $producer->connstr('postgres');
$connstr =~ s/'/''/g;    # inside an SQL literal
like(sqlstate_of($consumer,
		"SET ROLE svc_user; SELECT event_store.create_import('orders', '$connstr', 'orders')"),
	qr/ERROR .*42501/, 'create_import by a role that is not a superuser: 42501');
like(sqlstate_of($consumer,
		"SELECT event_store.create_import('orders', '$connstr', 'no_such')"),
	qr/ERROR .*42704/, 'create_import of a publication the producer does not have: 42704');
is($producer->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_replication_slots}),
	'0', 'the refused imports left no slot on the producer');

$consumer->safe_psql('postgres',
	"SELECT event_store.create_import('orders', '$connstr', 'orders')");

# ---- history -----------------------------------------------------------------
wait_for_events(3, 'the history');
is($consumer->safe_psql('postgres', $same_events),
	$producer->safe_psql('postgres', $same_events),
	'history: same stream ids, versions, ids, types, data, metadata and schema versions');
is($consumer->safe_psql('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'customer-%'}),
	'0', 'the unpublished category stayed at home');
is($consumer->safe_psql('postgres', q{
SELECT string_agg(c.stream_id || '/' || c.stream_version || ':' || (c.metadata->>'$source'), ',' ORDER BY c.global_position)
  FROM event_store.events c}),
	'order-1/1:1,order-1/2:2,order-2/1:4',
	'"$source" is the producer\'s position; local positions in the producer\'s order');

# ---- imported categories are read-only here ---------------------------------
like(sqlstate_of($consumer, q{SELECT event_store.append('order-77', '{"type": "Local"}')}),
	qr/ERROR .*SE004/, 'append to an imported category: SE004');
like(sqlstate_of($consumer, q{SELECT event_store.delete_stream('order-1')}),
	qr/ERROR .*SE004/, 'delete_stream in an imported category: SE004');
is($consumer->safe_psql('postgres', q{SELECT event_store.append('local-1', '{"type": "Local"}')}),
	'1', 'other categories stay writable');

# ---- live events, committed out of position order ---------------------------
my $s1 = $producer->background_psql('postgres');
my $s2 = $producer->background_psql('postgres');
$s1->query_safe(q{BEGIN; SELECT event_store.append('order-10', '{"type": "Placed"}', 0)});
$s2->query_safe(q{BEGIN; SELECT event_store.append('order-11', '{"type": "Placed"}', 0)});
$s2->query_safe('COMMIT');
$s1->query_safe('COMMIT');
$s1->quit;
$s2->quit;
$producer->safe_psql('postgres', q{
SELECT event_store.append('order-3', '{"type": "Paid", "metadata": {"saga_id": "5a9a0000-0000-4000-8000-0000000000aa"}}', 0);
});
wait_for_events(7, 'the live events (and the local one)');
is($consumer->safe_psql('postgres', q{
SELECT string_agg(stream_id || ':' || (metadata->>'$source'), ',' ORDER BY global_position)
  FROM event_store.events WHERE stream_id IN ('order-10', 'order-11')}),
	'order-11:6,order-10:5',
	'local positions follow the producer\'s commit order, not its positions');
is($consumer->safe_psql('postgres',
		q{SELECT max(global_position) = count(*) FROM event_store.events}),
	't', 'local positions are dense');
is($consumer->safe_psql('postgres', $same_events),
	$producer->safe_psql('postgres', $same_events), 'live events: the same on both sides');

# ---- the consumer's followers see imported events ---------------------------
is($consumer->safe_psql('postgres',
		q{SELECT string_agg(stream_id || '=' || n, ',' ORDER BY stream_id) FROM order_counts}),
	'order-1=2,order-10=1,order-11=1,order-2=1,order-3=1',
	'the inline projection applied every imported event');
is($consumer->safe_psql('postgres',
		q{SELECT count(*) FROM event_store.claim_events('billing', 'b1', 100)}),
	'6', 'the subscription delivers the imported events');
is($consumer->safe_psql('postgres',
		q{SELECT event_store.saga_state('5a9a0000-0000-4000-8000-0000000000aa')->>'status'}),
	'completed', 'an imported event completed the saga\'s event-driven step');

# ---- lifecycle markers travel ------------------------------------------------
$producer->safe_psql('postgres', q{SELECT event_store.delete_stream('order-2')});
ok($consumer->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM event_store.read_stream('order-2')}),
	'a stream deleted on the producer is deleted here too');

# ---- a restart of the producer and a kill -9 of the consumer ----------------
$producer->safe_psql('postgres', q{
SELECT event_store.append('order-100', jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)))
  FROM generate_series(1, 50) i});
$producer->restart;
$producer->safe_psql('postgres', q{
SELECT event_store.append('order-101', jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)))
  FROM generate_series(1, 50) i});
my $total = $producer->safe_psql('postgres',
	q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-%'}) + 1;  # + local-1
wait_for_events($total, 'after the producer\'s restart');

my $busy = $producer->background_psql('postgres');
$busy->query_safe(q{
SELECT event_store.append('order-102', jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)))
  FROM generate_series(1, 300) i});
$consumer->poll_query_until('postgres',
	q{SELECT count(*) > 0 FROM event_store.events WHERE stream_id = 'order-102'});
# every process of the server goes: the postmaster by SIGKILL, its
# children when they notice; wait until they are gone before starting again
my @server_pids = ($consumer->{_pid},
	split /\n/, $consumer->safe_psql('postgres', 'SELECT pid FROM pg_catalog.pg_stat_activity'));
$consumer->kill9;
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
usleep(50_000) while time < $deadline && grep { kill 0, $_ } @server_pids;
ok(!(grep { kill 0, $_ } @server_pids), 'every process of the consumer ended after its postmaster was killed');
$busy->query_safe(q{
SELECT event_store.append('order-103', jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i)))
  FROM generate_series(1, 100) i});
$busy->quit;
# a batch is one multi-row insertion into the heap, decoded from its WAL
# records (one per heap page) as one change per row: a batch over many
# pages, with values stored out of line, arrives whole
$producer->safe_psql('postgres', q{
SELECT event_store.append('order-104',
    (SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i, 'blob',
                 CASE WHEN i % 50 = 0
                      THEN (SELECT string_agg(md5(i || '-' || j), '') FROM generate_series(1, 600) AS j)
                 END)) ORDER BY i)
       FROM generate_series(1, 250) AS i))});
# batches in one producer transaction around a rolled-back subtransaction
# that held a batch of two multi-row insertions: only the kept ones arrive
$producer->safe_psql('postgres', q{
CREATE FUNCTION pg_temp.batch(n int) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('type', 'Step', 'data', jsonb_build_object('i', i, 'blob',
               CASE WHEN i % 100 = 0
                    THEN (SELECT string_agg(md5(n || '-' || i || '-' || j), '') FROM generate_series(1, 600) AS j)
               END)) ORDER BY i)
      FROM generate_series(1, n) AS i
$$;
BEGIN;
SELECT event_store.append('order-105', pg_temp.batch(300), 0);
SAVEPOINT s;
SELECT event_store.append('order-106', pg_temp.batch(1200), 0);
SELECT event_store.append('order-105', pg_temp.batch(700), 300);
ROLLBACK TO SAVEPOINT s;
SELECT event_store.append('order-105', pg_temp.batch(200), 300);
COMMIT;
});
$consumer->start;
$total = $producer->safe_psql('postgres',
	q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-%'}) + 1;
wait_for_events($total, 'after a kill -9 of the consumer');
# the marker of the deleted stream is one event more on both sides
is($consumer->safe_psql('postgres', $same_events),
	$producer->safe_psql('postgres', $same_events),
	'after the restarts: every event exactly once, the same on both sides');
is($consumer->safe_psql('postgres',
		q{SELECT count(DISTINCT event_id) = count(*) FROM event_store.events}),
	't', 'no duplicates (positions may jump after a crash: never reused)');
ok($consumer->poll_query_until('postgres',
		q{SELECT state = 'running' AND last_error IS NULL FROM event_store.import_status WHERE name = 'orders'}),
	'import_status: running, no error');
is($consumer->safe_psql('postgres',
		q{SELECT last_source_position FROM event_store.import_status WHERE name = 'orders'}),
	$producer->safe_psql('postgres',
		q{SELECT max(global_position) FROM event_store.events WHERE stream_id LIKE 'order-%'}),
	'import_status: the last source position is the producer\'s last');

# the consumer's events but its sagas' own (category saga)
my $count_here = q{SELECT count(*) FROM event_store.events WHERE stream_id NOT LIKE 'saga-%'};

# ---- drop_import -------------------------------------------------------------
like(sqlstate_of($consumer, q{SET ROLE svc_user; SELECT event_store.drop_import('orders')}),
	qr/ERROR .*42501/, 'drop_import by a role that is not a superuser: 42501');
$consumer->safe_psql('postgres', q{SELECT event_store.drop_import('orders')});
is($consumer->safe_psql('postgres', $count_here), $total, 'drop_import keeps the imported events');
is($consumer->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_subscription}),
	'0', 'drop_import dropped the subscription');
ok($producer->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_catalog.pg_replication_slots}),
	'drop_import removed the producer\'s slot');
is($consumer->safe_psql('postgres', q{SELECT event_store.append('order-500', '{"type": "Local"}')}),
	'1', 'after drop_import the category is writable here');

# ---- import again: re-sent events are skipped, a conflict stops the import --
$consumer->safe_psql('postgres',
	"SELECT event_store.create_import('again', '$connstr', 'orders')");
$producer->safe_psql('postgres', q{SELECT event_store.append('order-500', '{"type": "Remote"}', 0)});
ok($consumer->poll_query_until('postgres',
		q{SELECT state = 'failing' AND last_error LIKE '%order-500%' FROM event_store.import_status WHERE name = 'again'}),
	'a conflict stops the import with the reason in import_status')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
is($consumer->safe_psql('postgres', $count_here), $total + 1, 'the history sent again was recognised and skipped, nothing was corrupted');
is($consumer->safe_psql('postgres',
		q{SELECT string_agg(event_type, ',') FROM event_store.read_stream('order-500')}),
	'Local', 'the local stream is untouched');
$consumer->safe_psql('postgres', q{SELECT event_store.drop_import('again')});
ok($producer->poll_query_until('postgres',
		q{SELECT count(*) = 0 FROM pg_catalog.pg_replication_slots}),
	'the second import\'s slot is gone too');

$producer->safe_psql('postgres', q{SELECT event_store.drop_publication('orders')});
is($producer->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_publication}),
	'0', 'drop_publication dropped the publication');

$consumer->stop;
$producer->stop;
done_testing();
