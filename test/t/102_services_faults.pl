# Services in separate databases, the faults: a $StreamPurged and a
# $StreamReopened of the producer arrive on the consumer as the producer's own
# events and take effect there; a producer transaction larger than
# logical_decoding_work_mem arrives whole and in order; a kill -9 of the
# import's apply worker, and one of the producer, in the middle of a stream
# lose and repeat nothing; an event id that already exists here in another
# stream (SE002) stops the import with the reason in import_status, leaves
# the local store untouched, and the import resumes, losing nothing, once the
# cause is removed here (the way README documents).
#
# Every wait is a poll with a deadline, never a sleep.  Every node is
# stopped, even when a check dies.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/102_services_faults.pl
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

my @nodes;

END
{
	# stop whatever is still running, even after a failed check
	for my $node (@nodes)
	{
		$node->teardown_node(fail_ok => 1) if defined $node->{_pid};
	}
}

my $producer = es_node('producer', q{
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
logical_decoding_work_mem = '64kB'
event_store.naptime = '200ms'
});
push @nodes, $producer;

my $consumer = PostgreSQL::Test::Cluster->new('consumer');
push @nodes, $consumer;
$consumer->init;
$consumer->append_conf('postgresql.conf', q{
shared_preload_libraries = 'event_store'
event_store.naptime = '200ms'
wal_retrieve_retry_interval = '200ms'
restart_after_crash = on
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

# The events of category order, as both sides must agree on them
my $same_events = q{
SELECT coalesce(string_agg(pg_catalog.concat_ws('|', stream_id, stream_version, event_id, event_type,
                                      data, metadata - '$source', schema_version), E'\n'
                  ORDER BY stream_id, stream_version), '')
  FROM event_store.events WHERE stream_id LIKE 'order-%'};
my $order_count = q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-%'};

# Wait until the consumer has as many order events as the producer
sub wait_in_step
{
	my ($what) = @_;
	my $want = $producer->safe_psql('postgres', $order_count);
	ok($consumer->poll_query_until('postgres', $order_count, $want),
		"the consumer has the producer's $want events: $what")
	  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
}

sub same_on_both_sides
{
	my ($what) = @_;
	is($consumer->safe_psql('postgres', $same_events),
		$producer->safe_psql('postgres', $same_events), "$what: the same events on both sides");
	is($consumer->safe_psql('postgres',
			q{SELECT count(DISTINCT event_id) = count(*) FROM event_store.events}),
		't', "$what: no event twice");
	# local positions follow the producer's order inside every stream
	is($consumer->safe_psql('postgres', q{
SELECT count(*) FROM (
  SELECT stream_version < lag(stream_version) OVER w OR (metadata->>'$source')::bigint < lag((metadata->>'$source')::bigint) OVER w AS bad
    FROM event_store.events WHERE stream_id LIKE 'order-%'
  WINDOW w AS (PARTITION BY stream_id ORDER BY global_position)) s WHERE bad}),
		'0', "$what: every stream in version order");
}

# The progress the import stores (written at most once a second) accounts
# for every imported event at or below its local position; import_status
# reads the later ones from the store and says the highest of all
sub progress_is_consistent
{
	my ($what) = @_;
	is($consumer->safe_psql('postgres', q{
SELECT i.last_source_position >= coalesce(max((e.metadata->>'$source')::bigint), 0)
       AND i.last_local_position <= (SELECT max(global_position) FROM event_store.events)
  FROM event_store.imports i
  LEFT JOIN event_store.events e
         ON e.global_position <= i.last_local_position AND e.metadata ? '$source'
 WHERE i.name = 'orders'
 GROUP BY i.last_source_position, i.last_local_position}),
		't', "$what: the stored progress accounts for every event below its local position");
	is($consumer->safe_psql('postgres',
			q{SELECT last_source_position FROM event_store.import_status WHERE name = 'orders'}),
		$consumer->safe_psql('postgres',
			q{SELECT max((metadata->>'$source')::bigint) FROM event_store.events}),
		"$what: import_status says the highest producer position stored here");
}

$producer->safe_psql('postgres', q{
CREATE EXTENSION event_store;
SELECT event_store.append('order-1', '[{"type": "Placed"}, {"type": "Paid"}, {"type": "Shipped"}]', 0);
SELECT event_store.append('order-2', '[{"type": "Placed"}, {"type": "Paid"}]', 0);
SELECT event_store.create_publication('orders', ARRAY['order']);
});
$consumer->safe_psql('postgres', q{CREATE EXTENSION event_store});
my $connstr = $producer->connstr('postgres');
$connstr =~ s/'/''/g;    # inside an SQL literal
$consumer->safe_psql('postgres',
	"SELECT event_store.create_import('orders', '$connstr', 'orders')");
wait_in_step('the history');
same_on_both_sides('the history');

# ---- $StreamPurged -------------------------------------------------------------
$producer->safe_psql('postgres', q{
SET event_store.allow_purge = on;
SELECT event_store.purge_stream('order-1');
});
wait_in_step('after purge_stream on the producer');
is($consumer->safe_psql('postgres',
		q{SELECT string_agg(stream_version || ':' || event_type, ',' ORDER BY stream_version)
		    FROM event_store.events WHERE stream_id = 'order-1'}),
	'4:$StreamPurged', 'the purged stream\'s events are gone here too; its marker stays');
is($consumer->safe_psql('postgres',
		q{SELECT event_id FROM event_store.events WHERE stream_id = 'order-1'}),
	$producer->safe_psql('postgres',
		q{SELECT event_id FROM event_store.events WHERE stream_id = 'order-1'}),
	'the marker is the producer\'s own event (same id)');
is($consumer->safe_psql('postgres', q{SELECT count(*) FROM event_store.read_stream('order-1')}),
	'0', 'read_stream of the purged stream: nothing, as on the producer');
same_on_both_sides('after the purge');

# ---- $StreamReopened -----------------------------------------------------------
$producer->safe_psql('postgres', q{
SELECT event_store.delete_stream('order-2');
SELECT event_store.reopen_stream('order-2');
SELECT event_store.append('order-2', '{"type": "Amended", "data": {"n": 1}}');
});
wait_in_step('after delete, reopen and a new event on the producer');
my $read2 = q{SELECT string_agg(stream_version || ':' || event_type, ',' ORDER BY stream_version)
                FROM event_store.read_stream('order-2')};
is($consumer->safe_psql('postgres', $read2), $producer->safe_psql('postgres', $read2),
	'the reopened stream reads here as on the producer');
is($consumer->safe_psql('postgres', $read2), '4:$StreamReopened,5:Amended',
	'only what follows the tombstone');
is($consumer->safe_psql('postgres', q{SELECT event_store.stream_version('order-2')}),
	$producer->safe_psql('postgres', q{SELECT event_store.stream_version('order-2')}),
	'and its version is the producer\'s');
like(sqlstate_of($consumer, q{SELECT event_store.append('order-2', '{"type": "X"}')}),
	qr/ERROR .*SE004/, 'it stays read-only here (SE004, not SE003: it is not deleted)');
$producer->safe_psql('postgres', q{
SELECT event_store.append('order-2', '{"type": "Amended", "data": {"n": 2}}', 5)});
wait_in_step('the reopened stream goes on');
is($consumer->safe_psql('postgres', $read2), '4:$StreamReopened,5:Amended,6:Amended',
	'appends to the reopened stream on the producer arrive here');
same_on_both_sides('after the reopen');

# ---- a transaction larger than logical_decoding_work_mem ------------------------
my $spilled_before = $producer->safe_psql('postgres',
	q{SELECT coalesce(sum(spill_txns), 0) FROM pg_catalog.pg_stat_replication_slots});
$producer->safe_psql('postgres', q{
BEGIN;
SELECT event_store.append('order-big', jsonb_build_object('type', 'Line',
        'data', jsonb_build_object('i', i, 'pad', repeat('x', 200))))
  FROM generate_series(1, 1500) i;
SELECT event_store.append('order-big2', '{"type": "Other"}');
SELECT event_store.append('order-big', '{"type": "Closed"}');
COMMIT;
});
# whole: the consumer never shows part of it
my $big = q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-big%'};
my $partial = 0;
my $seen = 0;
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
while (time < $deadline)
{
	$seen = $consumer->safe_psql('postgres', $big);
	$partial++ if $seen != 0 && $seen != 1502;
	last if $seen == 1502;
	usleep(20_000);
}
is($seen, 1502, 'the large transaction arrived');
is($partial, 0, 'whole: never a part of it visible here');
cmp_ok($producer->safe_psql('postgres',
		q{SELECT coalesce(sum(spill_txns), 0) FROM pg_catalog.pg_stat_replication_slots}),
	'>', $spilled_before, 'it was larger than logical_decoding_work_mem (spilled on the producer)');
is($consumer->safe_psql('postgres', q{
SELECT string_agg(stream_id || ':' || stream_version, ',' ORDER BY global_position)
  FROM (SELECT * FROM event_store.events WHERE stream_id LIKE 'order-big%'
         ORDER BY global_position DESC LIMIT 3) s}),
	'order-big:1500,order-big2:1,order-big:1501', 'in order: local positions follow the producer\'s');
is($consumer->safe_psql('postgres', q{
SELECT bool_and(stream_version = rn AND (data->>'i')::int = rn)
  FROM (SELECT stream_version, data, row_number() OVER (ORDER BY global_position) rn
          FROM event_store.events WHERE stream_id = 'order-big' AND event_type = 'Line') s}),
	't', 'every line at its version, in position order');
same_on_both_sides('after the large transaction');

# ---- kill -9 of the apply worker in the middle of a stream ----------------------
# Half of a stream of small transactions arrives; then a session of the
# consumer holds a lock on the events that the apply worker's next insert
# waits for, the producer commits the other half, and the worker is killed
# while it waits: in the middle of the stream, whatever the machine's speed.
# steps(PREFIX, N...): the transactions N of a stream, 40 events each, to
# streams order-<PREFIX><N>-<g>
my $steps = sub {
	my ($prefix, @n) = @_;
	join('', map {
		"SELECT event_store.append('order-$prefix$_-' || g, jsonb_build_object('type', 'Step', 'data', jsonb_build_object('g', g))) FROM generate_series(1, 40) g;\n"
	} @n);
};
$producer->safe_psql('postgres', $steps->('k', 1 .. 50));
ok($consumer->poll_query_until('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-k%'}, '2000'),
	'the first half of the stream of small transactions arrived');
my $holder = $consumer->background_psql('postgres');
$holder->query_safe('BEGIN; LOCK TABLE event_store.events IN SHARE MODE');
$producer->safe_psql('postgres', $steps->('k', 51 .. 100));
my $worker = $consumer->safe_psql('postgres',
	q{SELECT pid FROM pg_catalog.pg_stat_subscription WHERE subname = 'orders' AND relid IS NULL AND pid IS NOT NULL});
like($worker, qr/^\d+$/, "the import's apply worker runs (pid $worker)");
ok($consumer->poll_query_until('postgres',
		qq{SELECT EXISTS (SELECT FROM pg_catalog.pg_locks WHERE pid = $worker AND NOT granted)}),
	'the apply worker waits for the lock on the events, in the second half');
my $arrived = $consumer->safe_psql('postgres',
	q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-k%'});
kill 'KILL', $worker;
$deadline = time + $PostgreSQL::Test::Utils::timeout_default;
usleep(20_000) while time < $deadline && kill 0, $worker;
ok(!kill(0, $worker), 'the apply worker is gone');
is($arrived, '2000', "it was killed in the middle of the stream ($arrived of 4000 events here)");
# the server restarts its processes after a child's crash (the lock's holder
# too); the import goes on
$holder->quit;
ok($consumer->poll_query_until('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-k%'}, '4000'),
	'after the kill every event of the stream arrived')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
wait_in_step('after the kill -9 of the apply worker');
same_on_both_sides('after the kill -9 of the apply worker');
ok($consumer->poll_query_until('postgres',
		q{SELECT state = 'running' AND last_error IS NULL FROM event_store.import_status WHERE name = 'orders'}),
	'import_status: running again, no error');
progress_is_consistent('after the kill -9 of the apply worker');

# ---- kill -9 of the producer in the middle of a stream ---------------------------
# Half of a second stream is committed and has begun to arrive; a session of
# the producer holds a lock on the events that the next append waits for,
# the other half is sent, and the producer is killed while it waits.
$producer->safe_psql('postgres', $steps->('p', 1 .. 50));
ok($consumer->poll_query_until('postgres',
		q{SELECT count(*) > 0 FROM event_store.events WHERE stream_id LIKE 'order-p%'}),
	'a second stream of small transactions has begun to arrive');
my $blocker = $producer->background_psql('postgres', on_error_stop => 0);
$blocker->query_safe('BEGIN; LOCK TABLE event_store.events IN SHARE MODE');
my $doomed = $producer->background_psql('postgres', on_error_stop => 0);
$doomed->{stdin} .= $steps->('p', 51 .. 100);
$doomed->{run}->pump_nb;
ok($producer->poll_query_until('postgres',
		q{SELECT EXISTS (SELECT FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_stat_activity a USING (pid)
		   WHERE NOT l.granted AND a.query LIKE '%order-p51-%')}),
	'the second half waits for the lock on the events');
my @producer_pids = ($producer->{_pid},
	split /\n/, $producer->safe_psql('postgres', 'SELECT pid FROM pg_catalog.pg_stat_activity'));
$producer->kill9;
$deadline = time + $PostgreSQL::Test::Utils::timeout_default;
usleep(20_000) while time < $deadline && grep { kill 0, $_ } @producer_pids;
ok(!(grep { kill 0, $_ } @producer_pids), 'every process of the producer ended after its postmaster was killed');
eval { $doomed->quit; };
eval { $blocker->quit; };
$producer->start;
my $committed = $producer->safe_psql('postgres',
	q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'order-p%'});
is($committed, '2000', "the producer was killed in the middle ($committed of 4000 events committed)");
wait_in_step('after a kill -9 of the producer');
same_on_both_sides('after a kill -9 of the producer');
$producer->safe_psql('postgres', q{SELECT event_store.append('order-after', '{"type": "Placed"}', 0)});
wait_in_step('the producer appends again after its crash');
ok($consumer->poll_query_until('postgres',
		q{SELECT state = 'running' AND last_error IS NULL FROM event_store.import_status WHERE name = 'orders'}),
	'import_status: running, no error');

# ---- SE002: the event's id exists here in another stream ---------------------------
my $dup = '00000000-0000-4000-8000-00000000d002';
$consumer->safe_psql('postgres',
	qq{SELECT event_store.append('local-1', '[{"type": "Noted", "id": "$dup"}]', 0)});
my $before = $consumer->safe_psql('postgres',
	q{SELECT count(*) || ':' || max(global_position) FROM event_store.events});
my $before_rows = $consumer->safe_psql('postgres',
	q{SELECT string_agg(global_position || ':' || event_id, ',' ORDER BY global_position) FROM event_store.events});
$producer->safe_psql('postgres',
	qq{SELECT event_store.append('order-d', '[{"type": "Placed", "id": "$dup"}]', 0)});
$producer->safe_psql('postgres', q{SELECT event_store.append('order-e', '{"type": "Placed"}', 0)});
ok($consumer->poll_query_until('postgres', qq{
SELECT state = 'failing' AND last_error LIKE '%$dup%' AND last_error LIKE '%order-d%'
  FROM event_store.import_status WHERE name = 'orders'}),
	'the duplicate id stops the import: failing, with the event and the stream in last_error')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
my $reason = $consumer->safe_psql('postgres',
	q{SELECT last_error FROM event_store.import_status WHERE name = 'orders'});
like($reason, qr/duplicate event id "$dup".*SE002/, "the reason says why, with its SQLSTATE: $reason");
# it keeps failing while the cause is there (the worker retries), and writes nothing
my $retries = $consumer->safe_psql('postgres',
	q{SELECT apply_error_count FROM pg_catalog.pg_stat_subscription_stats WHERE subname = 'orders'});
ok($consumer->poll_query_until('postgres',
		"SELECT apply_error_count > $retries FROM pg_catalog.pg_stat_subscription_stats WHERE subname = 'orders'"),
	'the worker retried');
is($consumer->safe_psql('postgres',
		q{SELECT string_agg(global_position || ':' || event_id, ',' ORDER BY global_position) FROM event_store.events}),
	$before_rows, 'the local store is untouched: not one row written or changed');
is($consumer->safe_psql('postgres', q{SELECT count(*) FROM event_store.events WHERE stream_id IN ('order-d', 'order-e')}),
	'0', 'neither the conflicting event nor the ones after it');

# the documented way to resume: remove the cause here; the worker's next retry applies
$consumer->safe_psql('postgres', q{
SET event_store.allow_purge = on;
SELECT event_store.purge_stream('local-1');
});
wait_in_step('after the conflict was resolved');
ok($consumer->poll_query_until('postgres',
		q{SELECT state = 'running' AND last_error IS NULL FROM event_store.import_status WHERE name = 'orders'}),
	'import_status: running again, the error cleared');
is($consumer->safe_psql('postgres',
		qq{SELECT stream_id FROM event_store.events WHERE event_id = '$dup'}),
	'order-d', 'the producer\'s event arrived with its id');
same_on_both_sides('after resuming');
is($consumer->safe_psql('postgres',
		q{SELECT last_source_position FROM event_store.import_status WHERE name = 'orders'}),
	$producer->safe_psql('postgres',
		q{SELECT max(global_position) FROM event_store.events WHERE stream_id LIKE 'order-%'}),
	'import_status: the last source position is the producer\'s last');
progress_is_consistent('at the end');

# ---- a row in the way of the next version of a stream the worker stored last ----
# (the worker does not look at the stream again: the unique index still refuses)
$producer->safe_psql('postgres', q{SELECT event_store.append('order-c', '{"type": "Placed"}', 0)});
ok($consumer->poll_query_until('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id = 'order-c'}, '1'),
	'order-c arrived');
# written around the import, as a restore writes
$consumer->safe_psql('postgres', q{
SET session_replication_role = replica;
INSERT INTO event_store.events (global_position, stream_id, stream_version, event_id, event_type,
                                data, metadata, schema_version, recorded_at)
VALUES ((SELECT max(global_position) + 1000 FROM event_store.events), 'order-c', 2,
        gen_random_uuid(), 'Local', '{}', '{}', 1, now());
});
$producer->safe_psql('postgres', q{SELECT event_store.append('order-c', '{"type": "Paid"}', 1)});
ok($consumer->poll_query_until('postgres', q{
SELECT state = 'failing' AND last_error LIKE '%order-c%' AND last_error LIKE '%SE001%'
  FROM event_store.import_status WHERE name = 'orders'}),
	'an event here at the version the worker stores next stops the import (SE001)')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));
is($consumer->safe_psql('postgres',
		q{SELECT string_agg(event_type, ',' ORDER BY stream_version) FROM event_store.events WHERE stream_id = 'order-c'}),
	'Placed,Local', 'nothing was overwritten or stored twice');

$consumer->safe_psql('postgres', q{SELECT event_store.drop_import('orders')});
$consumer->stop;
$producer->stop;
done_testing();
