# The cluster example with high availability (start.sh --ha): server 1 is a
# pg_auto_failover group (a primary and two standbys in the replication
# quorum, synchronous), the router reaches its read-write node.  A client
# appends through the router without a pause, each event with its own id and
# retried with the same id when the outcome is unknown; the primary's whole
# process group is killed; after the failover the appends go on, every
# acknowledged event is there exactly once (a retry never duplicates), the
# streams have no gap and the positions go on above every position handed
# out before; an async projection, a subscription's consumer and two sagas
# of server 1 go on on the new primary (every event projected and delivered
# once, the sagas complete: one by an external step completed through the
# router, one by a timer due during the failover).  stop.sh stops everything, the promoted and the killed nodes
# too (also when a check died half-way: END block).
#
# Every wait is a poll with a deadline, never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);
use POSIX qw(WNOHANG);
use FindBin;
use Cwd ();

if (!grep { -x "$_/pg_autoctl" } split /:/, $ENV{PATH})
{
	plan skip_all => 'pg_autoctl is not installed (postgresql-15-auto-failover, scripts/deps.sh)';
}

my $example = "$FindBin::RealBin/../../examples/cluster";
my $cluster_dir = Cwd::abs_path(PostgreSQL::Test::Utils::tempdir('ha')) . '/data';
my $tmp = PostgreSQL::Test::Utils::tempdir('ha_client');
local $ENV{ES_CLUSTER_DIR} = $cluster_dir;
local $ENV{ES_CLUSTER_PORT} = PostgreSQL::Test::Cluster::get_free_port();
delete $ENV{$_} for qw(PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS);

my $started = 0;
my $client = 0;
my $consumer = 0;

sub stop_cluster
{
	return unless $started;
	$started = 0;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'bash', "$example/stop.sh" ], '>', \$out, '2>', \$err);
	return ($?, $out, $err);
}

END
{
	my $rc = $?;
	for my $child ($client, $consumer)
	{
		next unless $child;
		kill 'KILL', $child;
		waitpid($child, 0);
	}
	stop_cluster();
	$? = $rc;
}

sub psql_on
{
	my ($dsn, $sql) = @_;
	my ($o, $e) = ('', '');
	my $r = IPC::Run::run([ 'psql', '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1',
			'-v', 'VERBOSITY=verbose', '-d', $dsn, '-c', $sql ],
		'<', \undef, '>', \$o, '2>', \$e);
	chomp $o;
	return ($r, $o, $e);
}

sub qok
{
	my ($dsn, $sql, $what) = @_;
	my ($r, $o, $e) = psql_on($dsn, $sql);
	ok($r, $what) or diag("$sql\n$e");
	return $o;
}

my ($out, $err) = ('', '');
my $t0 = time;
$started = 1;
my $ok = IPC::Run::run([ 'bash', "$example/start.sh", '--ha' ], '>', \$out, '2>', \$err);
ok($ok, 'start.sh --ha succeeded') or diag("stdout: $out\nstderr: $err");
ok(time - $t0 < 240, sprintf('start.sh --ha took %.1f s (at most 4 minutes)', time - $t0));
my %v = map { /^([A-Z_0-9]+)=(.*)$/ ? ($1 => $2) : () } split /\n/, $out;
for my $k (qw(ROUTER_DSN MONITOR_PGDATA PRIMARY_PGDATA_1 SERVER_DSN_1))
{
	ok(defined $v{$k}, "start.sh --ha printed $k") or BAIL_OUT("no $k in: $out");
}
my $router = $v{ROUTER_DSN};

# the monitor: one primary and two secondaries in the replication quorum
sub pid_file_line
{
	my ($pgdata, $line) = @_;
	open(my $fh, '<', "$pgdata/postmaster.pid") or return undef;
	my @l = <$fh>;
	chomp @l;
	return $l[ $line - 1 ];
}
my $monitor = 'host=127.0.0.1 port=' . pid_file_line($v{MONITOR_PGDATA}, 4)
  . ' dbname=pg_auto_failover user=postgres';
is(qok($monitor, "SELECT string_agg(reportedstate || ':' || replicationquorum, ',' ORDER BY reportedstate) FROM pgautofailover.node WHERE groupid = 0", 'nodes'),
	'primary:true,secondary:true,secondary:true',
	'server 1 is a primary and two secondaries, all in the replication quorum');
my $primary = 'host=127.0.0.1 port=' . pid_file_line($v{PRIMARY_PGDATA_1}, 4)
  . ' dbname=event_store user=postgres';
like(qok($primary, 'SHOW synchronous_standby_names', 'sync'), qr/^ANY \d+ \(/,
	'the primary commits synchronously to its standbys');
my $state = PostgreSQL::Test::Utils::slurp_file("$cluster_dir/cluster.state");
my @keepers = map { /^autoctl \S+ \S+ (\d+)$/ ? $1 : () } split /\n/, $state;
is(scalar @keepers, 4, 'a pg_autoctl for the monitor and each node, each in its own process group');
is(scalar(grep { getpgrp() != $_ && kill(0, -$_) } @keepers), 4, 'every pg_autoctl process group runs');

# streams of server 1
my @streams = split /,/, qok($router,
	"SELECT string_agg(s, ',') FROM (SELECT 'ha-' || i AS s FROM generate_series(1, 500) i
	  WHERE event_store.stream_server('ha-' || i) = 1 LIMIT 3) x", 'streams of server 1');
is(scalar @streams, 3, 'three streams on server 1');

# On server 1, the work that must go on after the failover: an async
# projection of the streams (applied by the background worker), a
# subscription with a consumer that writes what it is given and acknowledges
# it in the same transaction, and two sagas (one waits for an external step
# completed through the router after the failover, one for a timer that is
# due during the failover)
my $server1 = $v{SERVER_DSN_1} . ' connect_timeout=5';
qok($server1, q{
	CREATE TABLE ha_projected (event_id uuid PRIMARY KEY, times int NOT NULL DEFAULT 1);
	CREATE FUNCTION ha_project(e event_store.event) RETURNS void LANGUAGE sql AS $$
		INSERT INTO ha_projected (event_id) VALUES (e.event_id)
		ON CONFLICT (event_id) DO UPDATE SET times = ha_projected.times + 1;
	$$;
	SELECT event_store.create_projection('ha_count', 'ha_project(event_store.event)'::regprocedure,
	                                     categories => ARRAY['ha'], mode => 'async');
	CREATE TABLE ha_delivered (event_id uuid PRIMARY KEY, times int NOT NULL DEFAULT 1);
	SELECT event_store.create_subscription('ha_sub', ARRAY['ha'], partitions => 4);
	CREATE FUNCTION ha_step(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
		RETURN jsonb_build_object('stepped', true);
	SELECT event_store.define_saga('ha_confirmed', '{"steps": [{"name": "prepare", "action": "public.ha_step"},
		{"name": "confirm"}, {"name": "pause", "delay": "1 second"}, {"name": "finish", "action": "public.ha_step"}]}');
	SELECT event_store.define_saga('ha_timed', '{"steps": [{"name": "pause", "delay": "15 seconds"},
		{"name": "finish", "action": "public.ha_step"}]}');
}, 'a projection, a subscription and two saga types on server 1');
my $consume_sql = q{
	BEGIN;
	CREATE TEMP TABLE c ON COMMIT DROP AS SELECT * FROM event_store.claim_events('ha_sub', 'c1', 200);
	INSERT INTO ha_delivered (event_id) SELECT event_id FROM c
	ON CONFLICT (event_id) DO UPDATE SET times = ha_delivered.times + 1;
	SELECT event_store.ack_events('ha_sub', 'c1', max(global_position)) FROM c HAVING count(*) > 0;
	COMMIT;
};
# saga ids on server 1, started through the router
my @saga_ids = split /,/, qok($router,
	"SELECT string_agg(id::text, ',') FROM (SELECT id FROM (SELECT ('7a9a0000-0000-4000-8000-' || lpad(i::text, 12, '0'))::uuid AS id
	   FROM generate_series(1, 500) i) x WHERE event_store.stream_server('saga-' || id) = 1 LIMIT 2) y", 'saga ids on server 1');
is(scalar @saga_ids, 2, 'two saga ids on server 1');
my ($confirmed, $timed) = @saga_ids;
qok($router, "SELECT event_store.start_saga('ha_confirmed', '{}', '$confirmed'), event_store.start_saga('ha_timed', '{}', '$timed')",
	'two sagas started through the router');
is(qok($router, "SELECT event_store.saga_state('$confirmed') ->> 'status'", 'saga state'), 'running',
	'the first saga waits for its external step');

# The client: appends one event at a time, each with its own id; when the
# outcome is unknown (an error), the same event is sent again until it is
# acknowledged.  Every acknowledged id goes to a file, one line each.
my $acked_file = "$tmp/acked";
my $stop_file = "$tmp/stop";
PostgreSQL::Test::Utils::append_to_file($acked_file, '');
$client = fork();
die "fork: $!" unless defined $client;
if ($client == 0)
{
	my $k = 0;
	my $give_up = time + 200;
	while (!-e $stop_file && time < $give_up)
	{
		$k++;
		my $s = $streams[ $k % @streams ];
		my $id = sprintf('00000000-0000-4000-8000-%012d', $k);
		while (time < $give_up)
		{
			my ($r, $o, $e) = psql_on($router,
				"SELECT event_store.append('$s', '{\"type\": \"Load\", \"id\": \"$id\", \"data\": {\"k\": $k}}')");
			if ($r)
			{
				PostgreSQL::Test::Utils::append_to_file($acked_file, sprintf("%s %s %.3f\n", $id, $s, time));
				last;
			}
			PostgreSQL::Test::Utils::append_to_file("$tmp/errors", $e);
			usleep(100_000);
		}
	}
	POSIX::_exit(0);    # (not exit: the END block is the parent's)
}

# The consumer: claims, writes and acknowledges in one transaction, round
# after round, through the failover (a round that fails is tried again)
$consumer = fork();
die "fork: $!" unless defined $consumer;
if ($consumer == 0)
{
	my $give_up = time + 200;
	while (!-e $stop_file && time < $give_up)
	{
		my ($r, $o, $e) = psql_on($server1, $consume_sql);
		if ($r)
		{
			PostgreSQL::Test::Utils::append_to_file("$tmp/consumed", ".");
		}
		else
		{
			PostgreSQL::Test::Utils::append_to_file("$tmp/consumer_errors", $e);
		}
		usleep(100_000);
	}
	POSIX::_exit(0);    # (not exit: the END block is the parent's)
}

sub acked
{
	my @l = grep { length } split /\n/, PostgreSQL::Test::Utils::slurp_file($acked_file);
	return @l;
}

sub wait_for
{
	my ($what, $secs, $cond) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(100_000);
	}
	return 0;
}

ok(wait_for('acks', 60, sub { acked() >= 30 }), 'the client appends through the router');
ok(wait_for('consumed', 60, sub {
			my ($r, $o) = psql_on($server1, 'SELECT count(*) FROM ha_delivered');
			$r && $o >= 10;
		}), 'the consumer is given events');
ok(wait_for('projected', 60, sub {
			my ($r, $o) = psql_on($server1, 'SELECT count(*) FROM ha_projected');
			$r && $o >= 10;
		}), 'the projection applies events');
my $head_before = qok($router, 'SELECT (event_store.head_position())[1]', 'head before');

# kill the primary's whole process group (keeper and postgres)
my $pm = pid_file_line($v{PRIMARY_PGDATA_1}, 1);
my $pgid = `ps -o pgid= -p $pm`;
$pgid =~ s/\s+//g;
ok($pgid && $pgid != getpgrp(), "the primary (pid $pm) runs in a process group of its own ($pgid)");
my $acked_before = scalar acked();
my $killed_at = time;
kill 'KILL', -$pgid;
ok(wait_for('the kill', 30, sub { !kill(0, $pm) }), 'the primary is gone');

# the failover: another node becomes primary; the client goes on
ok(wait_for('failover', 150, sub {
			my ($r, $o) = psql_on($monitor,
				"SELECT count(*) FROM pgautofailover.node WHERE groupid = 0 AND reportedstate IN ('primary', 'wait_primary') AND nodename <> 'server1a'");
			$r && $o eq '1';
		}), 'a standby was promoted');
ok(wait_for('appends after the failover', 120, sub { acked() >= $acked_before + 30 }),
	'appends through the router go on after the failover')
  or diag(eval { PostgreSQL::Test::Utils::slurp_file("$tmp/errors") } // '');
diag(sprintf('appends went on %.1f s after the kill', time - $killed_at));
# the external step of the first saga, completed through the router
qok($router, "SELECT event_store.complete_saga_step('$confirmed', 'confirm')",
	'the external step completed through the router after the failover');
PostgreSQL::Test::Utils::append_to_file($stop_file, '');
waitpid($client, 0);
is($?, 0, 'the client stopped');
$client = 0;
waitpid($consumer, 0);
is($?, 0, 'the consumer stopped');
$consumer = 0;
my $rounds = length(eval { PostgreSQL::Test::Utils::slurp_file("$tmp/consumed") } // '');
ok($rounds > 0, "the consumer went round $rounds times");

# every acknowledged event is there, once; streams without a gap
my @acked = acked();
my %acked_id = map { (split / /)[0] => 1 } @acked;
my %pos;
my ($dups, $gaps) = (0, 0);
for my $s (@streams)
{
	my @rows = split /\n/, qok($router,
		"SELECT event_id || ' ' || stream_version || ' ' || global_position FROM event_store.read_stream('$s')",
		"read $s");
	my %seen;
	my $v = 0;
	for my $row (@rows)
	{
		my ($id, $version, $position) = split / /, $row;
		$dups++ if $seen{$id}++;
		$gaps++ if $version != ++$v;
		$pos{$id} = $position;
	}
}
is($dups, 0, 'no event twice: a retried append with the same id is not written again');
is($gaps, 0, 'stream versions without a gap');
my @missing = grep { !exists $pos{$_} } keys %acked_id;
is(scalar @missing, 0, 'every acknowledged event is there (' . scalar(keys %acked_id) . ')')
  or diag("missing: @missing");
my ($max_before) = sort { $b <=> $a } map { $pos{ (split / /)[0] } // 0 } @acked[ 0 .. $acked_before - 1 ];
my ($min_after) = sort { $a <=> $b } map { $pos{ (split / /)[0] } // 0 } @acked[ $acked_before + 1 .. $#acked ];
ok($min_after > $max_before && $min_after > $head_before,
	"positions go on above every position handed out before ($min_after > $max_before, $head_before)");

# projections, subscriptions and sagas go on on the new primary
my $events = qok($server1,
	"SELECT count(*) || ':' || md5(string_agg(event_id::text, ',' ORDER BY event_id::text)) FROM event_store.events WHERE stream_id LIKE 'ha-%'",
	'the events of the streams');
ok(wait_for('the projection', 60, sub {
			my ($r, $o) = psql_on($server1,
				q{SELECT count(*) || ':' || md5(string_agg(event_id::text, ',' ORDER BY event_id::text)) FROM ha_projected});
			$r && $o eq $events;
		}), 'the async projection applied every event after the failover')
  or diag(qok($server1, 'SELECT * FROM event_store.projection_status'));
is(qok($server1, 'SELECT count(*) FROM ha_projected WHERE times <> 1'), '0', 'the projection applied none twice');
my $drained = wait_for('the subscription', 60, sub {
		psql_on($server1, $consume_sql);
		my ($r, $o) = psql_on($server1,
			q{SELECT count(*) || ':' || md5(string_agg(event_id::text, ',' ORDER BY event_id::text)) FROM ha_delivered});
		$r && $o eq $events;
	});
ok($drained, 'the subscription delivered every event after the failover')
  or diag(qok($server1, 'SELECT * FROM event_store.subscription_status'),
	eval { PostgreSQL::Test::Utils::slurp_file("$tmp/consumer_errors") } // '');
is(qok($server1, 'SELECT count(*) FROM ha_delivered WHERE times <> 1'), '0',
	'none twice (written and acknowledged in one transaction)');
for my $saga ($confirmed, $timed)
{
	ok(wait_for('the saga', 60, sub {
				my ($r, $o) = psql_on($router, "SELECT event_store.saga_state('$saga') ->> 'status'");
				$r && $o eq 'completed';
			}), "saga $saga completed on the new primary")
	  or diag(qok($router, "SELECT event_store.saga_state('$saga')"));
}
is(qok($server1, "SELECT string_agg(status, ' ' ORDER BY step_no) FROM event_store.saga_steps WHERE saga_id = '$confirmed'"),
	'completed completed completed completed', 'each of its steps completed');

# stop.sh stops everything, the killed and the promoted nodes too
my $rc;
($rc, $out, $err) = stop_cluster();
is($rc, 0, 'stop.sh succeeded') or diag("$out\n$err");
# (zombies aside: their parent may be gone)
is(scalar(grep { `ps -o stat= -g $_` =~ /^[^Z]/m } @keepers), 0, 'no pg_autoctl process group is left');
for my $d (glob("$cluster_dir/*"))
{
	fail("$d is left") if -f "$d/postmaster.pid";
}
ok(!-d $cluster_dir, 'the data directory is removed');

done_testing();
