# Crash in the middle of large batches.
#
# Two writers append batches of 1 to 3,000 events (the larger ones in
# several multi-row insertions of 1,000 rows, every 250th event with a value
# stored out of line) to a stream each, with the expected version, and
# report each batch once its transaction has committed.  A writer's backend
# is killed with SIGKILL in the middle of this (the postmaster then stops
# every backend and recovers from the WAL), the writers start again, and
# the server is then stopped with "immediate" and started again.  After
# each crash:
#   - every batch reported as committed is stored, and every stored batch is
#     whole: all its events, at consecutive versions and positions;
#   - stream versions are dense from 1, positions and ids unique;
#   - every index of the events table has an entry for exactly each stored
#     row (amcheck, heapallindexed), the correlation runs cover exactly the
#     stored events (each batch has two ids, one per half), and reads find
#     every event;
#   - appends go on, at positions above every stored one.
#
# Run from the top of the tree as described in 020_crash_follower.pl.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('batch_crash', q{
restart_after_crash = on
});

$node->safe_psql('postgres', 'CREATE EXTENSION event_store');
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');

# A writer appends batch after batch to stream batch-<k>, from the version
# its stream is at, and reports each batch after its commit.
$node->safe_psql(
	'postgres', q{
CREATE PROCEDURE es_batch_writer(k int, nbatches int) LANGUAGE plpgsql AS $$
DECLARE
	v bigint;
	n int;
	first int;
	sizes int[] := ARRAY[2500, 1, 1200, 10, 3000, 2, 1001];
BEGIN
	SELECT coalesce(max(stream_version), 0), coalesce(max((data ->> 'b')::int), 0)
	  INTO v, first FROM event_store.events WHERE stream_id = 'batch-' || k;
	COMMIT;
	FOR b IN first + 1 .. first + nbatches LOOP
		n := sizes[1 + b % 7];
		v := event_store.append('batch-' || k,
			(SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object('type', 'Batch',
						'data', jsonb_build_object('b', b, 'n', n, 'i', i, 'blob',
							CASE WHEN i % 250 = 0 THEN
								(SELECT string_agg(md5(k || '-' || b || '-' || i || '-' || j), '')
								   FROM generate_series(1, 200) AS j) END),
						'metadata', jsonb_build_object('correlationId',
							'c-' || k || '-' || b || CASE WHEN i > n / 2 THEN 'b' ELSE 'a' END)))
					ORDER BY i)
			   FROM generate_series(1, n) AS i),
			v);
		COMMIT;
		RAISE NOTICE 'committed % % %', k, b, v;
	END LOOP;
END $$;
});

my %err;
sub start_writer
{
	my ($k) = @_;
	$err{$k} = '';
	my $out = '';
	return IPC::Run::start(
		[
			'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'),
			'-c', "CALL es_batch_writer($k, 100000000)"
		],
		'>', \$out, '2>', \$err{$k},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
}

# the committed batches the writers reported, as "k b" => version
my %committed;

sub run_writers_until
{
	my ($events) = @_;
	my @h = map { start_writer($_) } 1 .. 2;
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL es_batch_writer%') = 2
   AND (SELECT count(*) FROM event_store.events) >= $events
}),
		"writers under way past $events events");
	return @h;
}

sub collect
{
	my ($h, $label) = @_;
	$_->finish for @$h;
	for my $k (sort keys %err)
	{
		while ($err{$k} =~ /NOTICE:  committed (\d+) (\d+) (\d+)/g)
		{
			$committed{"$1 $2"} = $3;
		}
		unlike($err{$k}, qr/ERROR:/, "$label: writer $k ended by the crash, not by an error");
	}
}

sub check_store
{
	my ($label) = @_;

	# every batch reported committed is there, at the version reported
	my %stored = map { my ($k, $b, $v) = split /\|/; ("$k $b" => $v) } split /\n/,
	  $node->safe_psql(
		'postgres', q{
SELECT substr(stream_id, 7), data ->> 'b', max(stream_version)
  FROM event_store.events WHERE stream_id LIKE 'batch-%' GROUP BY 1, 2});
	my @lost = grep { !defined $stored{$_} || $stored{$_} != $committed{$_} } sort keys %committed;
	note("$label: " . scalar(keys %committed) . " batches reported committed");
	ok(scalar(keys %committed) > 0, "$label: batches were reported committed");
	is(join(', ', @lost), '', "$label: no committed batch lost or moved");

	# every stored batch is whole, at consecutive versions and positions
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM (
  SELECT stream_id, data ->> 'b'
    FROM event_store.events WHERE stream_id LIKE 'batch-%'
   GROUP BY 1, 2
  HAVING count(*) <> min((data ->> 'n')::int)
      OR max(stream_version) - min(stream_version) + 1 <> count(*)
      OR max(global_position) - min(global_position) + 1 <> count(*)
      OR count(DISTINCT (data ->> 'i')::int) <> count(*)) AS partial}),
		'0', "$label: every stored batch is whole");

	# versions dense, positions and ids unique, large values intact
	is( $node->safe_psql(
			'postgres', q{
SELECT bool_and(n = maxv AND minv = 1) FROM (
  SELECT count(*) AS n, min(stream_version) AS minv, max(stream_version) AS maxv
    FROM event_store.events GROUP BY stream_id) s}),
		't', "$label: stream versions dense from 1");
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) = count(DISTINCT global_position) AND count(*) = count(DISTINCT event_id)
  FROM event_store.events}),
		't', "$label: positions and ids unique");
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM event_store.events
 WHERE stream_id LIKE 'batch-%' AND (data ->> 'i')::int % 250 = 0
   AND data ->> 'blob' IS DISTINCT FROM
       (SELECT string_agg(md5(substr(stream_id, 7) || '-' || (data ->> 'b') || '-' || (data ->> 'i') || '-' || j), '')
          FROM generate_series(1, 200) AS j)}),
		'0', "$label: the values stored out of line are intact");

	# every index has an entry for each row, and reads find every event
	is( $node->safe_psql(
			'postgres', q{
SELECT count(*) FROM pg_index i, LATERAL bt_index_check(i.indexrelid, true)
 WHERE i.indrelid IN ('event_store.events'::regclass, 'event_store.correlations'::regclass)}),
		'5', "$label: amcheck passes on every index (the events' and the correlation runs')");
	# a batch's correlation runs are stored with it, or not at all: they
	# cover exactly the stored events that have an id
	is( $node->safe_psql(
			'postgres', q{
SELECT (SELECT count(*) FROM event_store.correlations r
          JOIN event_store.events e
            ON e.global_position BETWEEN r.first_position AND r.last_position
           AND (e.metadata ->> 'correlationId') COLLATE "C" = r.correlation_id)
     = (SELECT count(*) FROM event_store.events WHERE (metadata ->> 'correlationId') IS NOT NULL)
   AND NOT EXISTS (SELECT FROM event_store.correlations r
                    WHERE NOT EXISTS (SELECT FROM event_store.events e
                                       WHERE e.global_position BETWEEN r.first_position AND r.last_position))}),
		't', "$label: the correlation runs cover exactly the stored events that have an id");
	is( $node->safe_psql(
			'postgres', q{
SELECT (SELECT count(*) FROM event_store.read_all(0, 1000000))
     = (SELECT count(*) FROM event_store.events)
   AND (SELECT count(*) FROM event_store.read_category('batch', 0, 1000000))
     = (SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'batch-%')}),
		't', "$label: reads find every event");

	# appends go on above every stored position
	my $before = $node->safe_psql('postgres', 'SELECT max(global_position) FROM event_store.events');
	my $v = $node->safe_psql('postgres', q{
SELECT event_store.append('after-crash', (SELECT jsonb_agg(jsonb_build_object('type', 'After')) FROM generate_series(1, 1500)))});
	is( $node->safe_psql(
			'postgres', qq{
SELECT min(global_position) > $before AND count(*) = 1500 FROM event_store.events
 WHERE stream_id = 'after-crash' AND stream_version > $v - 1500}),
		't', "$label: appends after the crash go above every stored position");
}

# 1. SIGKILL of a writer's backend in the middle of a batch
my @h = run_writers_until(20000);
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE query LIKE 'CALL es_batch_writer(1,%'});
ok(kill('KILL', $pid), 'a writer backend killed');
collect(\@h, 'SIGKILL');
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server is back');
ok( $node->log_contains(qr/terminated by signal 9: Killed/)
	  && $node->log_contains(qr/all server processes terminated; reinitializing/),
	'the kill made the server recover');
check_store('SIGKILL');

# 2. An immediate stop (a crash of the whole server) in the middle of batches
my $events = $node->safe_psql('postgres', 'SELECT count(*) FROM event_store.events') + 20000;
@h = run_writers_until($events);
$node->stop('immediate');
collect(\@h, 'immediate stop');
$node->start;
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/),
	'the restart ran crash recovery');
check_store('immediate stop');

$node->stop;
done_testing();
