# A read model over every server: examples/cluster/start.sh
# --reporting=order,payment starts a router, three servers (each publishing
# those categories) and a reporting server whose database imports every
# server's publication.  An async projection there counts the events it is
# given, by event id.  Events appended through the router to all three
# servers (and a bucket moved between two servers in the middle, so that
# the new server publishes copies of events the old one published too)
# reach the projection exactly once each: every event of the two categories
# that the router's read_all returns, none twice, none of another category,
# every stream without a gap.  Bad --reporting arguments are refused before
# anything starts; the imported categories are read-only in the reporting
# database (SE004).
#
# Every wait is a poll with a deadline, never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time usleep);
use FindBin;
use Cwd ();

my $example = "$FindBin::RealBin/../../examples/cluster";
my $cluster_dir = Cwd::abs_path(PostgreSQL::Test::Utils::tempdir('reporting')) . '/data';
local $ENV{ES_CLUSTER_DIR} = $cluster_dir;
local $ENV{ES_CLUSTER_PORT} = PostgreSQL::Test::Cluster::get_free_port();
delete $ENV{$_} for qw(PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS);

my $started = 0;

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
	stop_cluster();
	$? = $rc;
}

sub psql_on
{
	my ($dsn, $sql) = @_;
	my ($o, $e) = ('', '');
	my $r = IPC::Run::run([ 'psql', '-X', '-q', '-A', '-t', '-F', '|', '-v', 'ON_ERROR_STOP=1',
			'-v', 'VERBOSITY=verbose', '-d', $dsn, '-c', $sql ],
		'<', \undef, '>', \$o, '2>', \$e);
	chomp $o;
	return ($r, $o, $e);
}

sub qok
{
	my ($dsn, $sql, $what) = @_;
	my ($r, $o, $e) = psql_on($dsn, $sql);
	ok($r, $what // $sql) or diag("$sql\n$e");
	return $o;
}

sub wait_for
{
	my ($secs, $cond) = @_;
	my $deadline = time + $secs;
	while (time < $deadline)
	{
		return 1 if $cond->();
		usleep(100_000);
	}
	return 0;
}

# ---- bad arguments: refused before anything starts ------------------------
for my $bad ('--reporting', '--reporting=', '--reporting=order,,payment', "--reporting=or-der",
	"--reporting=order';DROP")
{
	my ($o, $e) = ('', '');
	my $r = IPC::Run::run([ 'bash', "$example/start.sh", $bad ], '>', \$o, '2>', \$e);
	ok(!$r && $e =~ /--reporting takes/, "start.sh $bad is refused with a hint")
	  or diag("stdout: $o\nstderr: $e");
}
ok(!-e "$cluster_dir/cluster.state", 'nothing was started for the refused arguments');

# ---- start ------------------------------------------------------------------
my ($out, $err) = ('', '');
my $t0 = time;
$started = 1;
my $ok = IPC::Run::run([ 'bash', "$example/start.sh", '--reporting=order,payment' ],
	'>', \$out, '2>', \$err);
ok($ok, 'start.sh --reporting=order,payment succeeded') or diag("stdout: $out\nstderr: $err");
ok(time - $t0 < 240, sprintf('start.sh --reporting took %.1f s (at most 4 minutes)', time - $t0));
my %v = map { /^([A-Z_0-9]+)=(.*)$/ ? ($1 => $2) : () } split /\n/, $out;
for my $k (qw(ROUTER_DSN REPORTING_DSN REPORTING_PGDATA SERVER_DSN_1 SERVER_DSN_2 SERVER_DSN_3))
{
	ok(defined $v{$k}, "start.sh printed $k") or BAIL_OUT("no $k in: $out");
}
my $router = $v{ROUTER_DSN};
my $reporting = $v{REPORTING_DSN};
my @servers = map { $v{"SERVER_DSN_$_"} } 1 .. 3;

is(qok($reporting, "SELECT string_agg(name || ':' || publication || ':' || state, ',' ORDER BY name) FROM event_store.import_status"),
	'server_1:reporting:running,server_2:reporting:running,server_3:reporting:running',
	'the reporting database imports the publication of each of the three servers');
for my $n (1 .. 3)
{
	is(qok($servers[ $n - 1 ], "SELECT array_to_string(categories, ',') FROM event_store.publications WHERE name = 'reporting'"),
		'order,payment', "server $n publishes the two categories");
}

# ---- the read model: counts what it is given, by event id ------------------
qok($reporting, q{
	CREATE TABLE seen (event_id uuid PRIMARY KEY, stream_id text NOT NULL,
	                   stream_version bigint NOT NULL, times int NOT NULL DEFAULT 1);
	CREATE FUNCTION count_event(e event_store.event) RETURNS void LANGUAGE sql AS $$
		INSERT INTO seen (event_id, stream_id, stream_version) VALUES (e.event_id, e.stream_id, e.stream_version)
		ON CONFLICT (event_id) DO UPDATE SET times = seen.times + 1;
	$$;
	SELECT event_store.create_projection('counter', 'count_event(event_store.event)'::regprocedure, mode => 'async');
}, 'an async projection on the reporting database');

# ---- appends through the router, a bucket moved in the middle --------------
my $batch = sub {
	my ($from, $to, $types) = @_;
	qok($router, qq{
		SELECT count(*) FROM (
			SELECT event_store.append(c || '-' || i, '$types')
			  FROM generate_series($from, $to) i, unnest(ARRAY['order', 'payment', 'other']) c) x},
		"appends through the router to streams $from..$to");
};
$batch->(1, 150, '[{"type": "Opened"}, {"type": "Changed", "data": {"n": 1}}]');
my $per_server = qok($router,
	"SELECT string_agg(n::text, ',' ORDER BY s) FROM (SELECT event_store.stream_server('order-' || i) s, count(*) n FROM generate_series(1, 150) i GROUP BY 1) x");
like($per_server, qr/^\d+,\d+,\d+$/, "the streams are on all three servers ($per_server)");

# a bucket of server 1 that holds order streams moves to server 2: server 2
# then holds (and publishes) copies of those streams' events
my $bucket = qok($router,
	"SELECT event_store.stream_bucket('order-' || i) FROM generate_series(1, 150) i WHERE event_store.stream_server('order-' || i) = 1 LIMIT 1");
qok($router, "CALL event_store.move_bucket($bucket, 2)", "bucket $bucket moves from server 1 to server 2");
my $copied = qok($router, "SELECT events_copied FROM event_store.bucket_moves WHERE bucket = $bucket");
ok($copied > 0, "the move copied $copied events to server 2");
$batch->(1, 200, '[{"type": "Closed"}]');

# ---- every event once ------------------------------------------------------
# what each server holds of the two categories, up to its last position
my @last = map {
	qok($servers[ $_ - 1 ],
		"SELECT coalesce(max(global_position), 0) FROM event_store.events WHERE split_part(stream_id, '-', 1) IN ('order', 'payment')")
} 1 .. 3;
ok(wait_for(120, sub {
			my ($r, $o) = psql_on($reporting,
				"SELECT string_agg(last_source_position::text, ',' ORDER BY name) FROM event_store.import_status");
			$r && $o eq join(',', @last);
		}), 'the imports reached every server\'s last event (' . join(',', @last) . ')')
  or diag(qok($reporting, 'SELECT * FROM event_store.import_status'));
ok(wait_for(120, sub {
			my ($r, $o) = psql_on($reporting,
				"SELECT lag_events FROM event_store.projection_status WHERE name = 'counter'");
			$r && $o eq '0';
		}), 'the projection caught up')
  or diag(qok($reporting, 'SELECT * FROM event_store.projection_status'));

# the events of the two categories, as the router reads them (copies hidden)
my $expected = qok($router, q{
	SELECT count(*) || ':' || md5(string_agg(event_id::text, ',' ORDER BY event_id::text))
	  FROM event_store.read_all(NULL, 100000) WHERE split_part(stream_id, '-', 1) IN ('order', 'payment')});
is($expected =~ /^(\d+):/ ? $1 : 0, 2 * (150 * 2 + 200), 'the router reads every event of the two categories');
is(qok($reporting, q{SELECT count(*) || ':' || md5(string_agg(event_id::text, ',' ORDER BY event_id::text)) FROM seen}),
	$expected, 'the projection was given every event of the two categories');
is(qok($reporting, 'SELECT count(*) FROM seen WHERE times <> 1'), '0', 'and none twice');
is(qok($reporting, "SELECT count(*) FROM seen WHERE split_part(stream_id, '-', 1) NOT IN ('order', 'payment')"),
	'0', 'no event of another category');
is(qok($reporting, q{SELECT count(*) FROM (SELECT stream_id FROM seen GROUP BY stream_id
	HAVING max(stream_version) <> count(*) OR min(stream_version) <> 1) x}),
	'0', 'every stream without a gap in its versions');
is(qok($reporting, 'SELECT count(*) FROM event_store.events') + 0, 2 * (150 * 2 + 200),
	'the reporting store holds each imported event once (the moved copies skipped)');

# imported categories are read-only in the reporting database
my ($r, $o, $e) = psql_on($reporting, q{SELECT event_store.append('order-1', '{"type": "Sneaked"}')});
ok(!$r && $e =~ /SE004/, 'an append to an imported category in the reporting database: SE004')
  or diag($e);

my $rc;
($rc, $out, $err) = stop_cluster();
is($rc, 0, 'stop.sh succeeded') or diag("$out\n$err");
ok(!-d $cluster_dir, 'the data directory is removed');

done_testing();
