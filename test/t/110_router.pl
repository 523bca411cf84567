# The router (event_store_router on PL/Proxy) through the cluster example:
# examples/cluster/start.sh starts a router and three servers; appends
# through the router land on the stream's server (every server gets some)
# and read back; a follower paging read_all and read_category with the
# vector cursor while two clients append never skips or repeats an event
# and sees every stream in order; bad cursors are refused (22023); a server
# killed fails its streams promptly with the connection problem while the
# other servers' streams keep working, and they work again once it is back;
# stop.sh stops everything (also when a check died half-way: END block).
#
# Every wait is a poll with a deadline, never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH (start.sh finds the
# installation as scripts/lib.sh does: PG_CONFIG, else pg_config on PATH).

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

my $example = "$FindBin::RealBin/../../examples/cluster";
my $cluster_dir = Cwd::abs_path(PostgreSQL::Test::Utils::tempdir('cluster')) . '/data';
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

# start.sh: its output, parsed
my ($out, $err) = ('', '');
my $t0 = time;
$started = 1;
my $ok = IPC::Run::run([ 'bash', "$example/start.sh" ], '>', \$out, '2>', \$err);
ok($ok, 'start.sh succeeded') or diag("stdout: $out\nstderr: $err");
ok(time - $t0 < 240, sprintf('start.sh took %.1f s (at most 4 minutes)', time - $t0));
my %v = map { /^([A-Z_0-9]+)=(.*)$/ ? ($1 => $2) : () } split /\n/, $out;
my $router = $v{ROUTER_DSN};
ok(defined $router && $router =~ /user=/, 'start.sh printed ROUTER_DSN with a user')
  or BAIL_OUT("no ROUTER_DSN in: $out");
my @servers;
for my $n (1 .. 3)
{
	ok(defined $v{"SERVER_DSN_$n"} && -d ($v{"SERVER_PGDATA_$n"} // ''),
		"start.sh printed SERVER_DSN_$n and SERVER_PGDATA_$n")
	  or BAIL_OUT("server $n missing in: $out");
	push @servers, { dsn => $v{"SERVER_DSN_$n"}, pgdata => $v{"SERVER_PGDATA_$n"} };
}
ok(!defined $v{SERVER_DSN_4}, 'three servers by default');

# psql on a connection string: (success, output, error)
sub psql_on
{
	my ($dsn, $sql) = @_;
	my ($o, $e) = ('', '');
	# (-c, not standard input: psql that cannot connect closes its input,
	# and writing to it would fail)
	my $r = IPC::Run::run([ 'psql', '-X', '-q', '-A', '-t', '-F', '|', '-v', 'ON_ERROR_STOP=1',
			'-v', 'VERBOSITY=verbose', '-d', $dsn, '-c', $sql ],
		'<', \undef, '>', \$o, '2>', \$e);
	chomp $o;
	return ($r, $o, $e);
}

# the output, or the test fails showing the error
sub qok
{
	my ($dsn, $sql, $what) = @_;
	my ($r, $o, $e) = psql_on($dsn, $sql);
	ok($r, $what) or diag("$sql\n$e");
	return $o;
}

# The router has plproxy and event_store_router
is( qok($router,
		"SELECT string_agg(extname, ',' ORDER BY extname) FROM pg_extension WHERE extname IN ('plproxy', 'event_store_router')",
		'extensions'),
	'event_store_router,plproxy',
	'the router database has plproxy and event_store_router');

# Streams of two categories on every server
my (%on, %server_of);
for my $i (1 .. 200)
{
	for my $cat ('order', 'invoice')
	{
		my $s = "$cat-$i";
		my $n = qok($router, "SELECT event_store.stream_server('$s')", "server of $s");
		last unless $n;
		push @{ $on{$cat}{$n} }, $s if @{ $on{$cat}{$n} // [] } < 2;
	}
	last if 6 == grep { @{ $on{$_->[0]}{$_->[1]} // [] } == 2 }
	  map { my $c = $_; map { [ $c, $_ ] } 1 .. 3 } 'order', 'invoice';
}
my @streams = map { my $c = $_; map { @{ $on{$c}{$_} // [] } } 1 .. 3 } 'order', 'invoice';
is(scalar @streams, 12, 'two streams of each category found on each of the three servers');
$server_of{$_} = qok($router, "SELECT event_store.stream_server('$_')", "server of $_") for @streams;

# The bucket is the md5 hash, the same on the servers
is(qok($servers[0]{dsn},
		"SELECT get_byte(decode(md5('order-17'), 'hex'), 0) % 64"),
	qok($router, "SELECT event_store.stream_bucket('order-17')", 'bucket'),
	'stream_bucket is the md5 expression a server evaluates alike');

# Appends through the router: versions returned, the events on their server
for my $s (@streams)
{
	is(qok($router, "SELECT event_store.append('$s', '[{\"type\": \"Opened\"}, {\"type\": \"Changed\", \"data\": {\"n\": 1}}]', 0)",
			"append to $s"),
		'2', "append to $s returns the version");
}
for my $s (@streams)
{
	my @where = map { qok($servers[$_ - 1]{dsn}, "SELECT event_store.stream_version('$s')", "version of $s on server $_") } 1 .. 3;
	is(join(',', @where),
		join(',', map { $_ == $server_of{$s} ? 2 : 0 } 1 .. 3),
		"$s is on server $server_of{$s} only");
}
is(qok($router, "SELECT string_agg(stream_version || ':' || event_type, ',' ORDER BY stream_version) FROM event_store.read_stream('$streams[0]')", 'read_stream'),
	'1:Opened,2:Changed', 'read_stream through the router');
is(qok($router, "SELECT event_store.stream_version('$streams[1]')", 'stream_version'), '2', 'stream_version through the router');
my ($r, $o, $e) = psql_on($router, "SELECT event_store.append('$streams[0]', '{\"type\": \"X\"}', 1)");
ok(!$r && $e =~ /SE001/ && $e =~ /wrong expected version/, 'a wrong expected version is the server\'s SE001') or diag($e);

# A caller's search_path does not change where a stream goes: the routing
# function runs in the caller's session without a SET clause, so every name
# and operator in it is qualified (here operators and functions of the same
# names that route everything to server 1, found first on the path)
qok($router, q{
	CREATE SCHEMA hostile;
	CREATE FUNCTION hostile.int_eq(int, int) RETURNS boolean LANGUAGE sql RETURN true;
	CREATE FUNCTION hostile.int_minus(int, int) RETURNS int LANGUAGE sql RETURN 0;
	CREATE OPERATOR hostile.= (LEFTARG = int, RIGHTARG = int, FUNCTION = hostile.int_eq);
	CREATE OPERATOR hostile.- (LEFTARG = int, RIGHTARG = int, FUNCTION = hostile.int_minus);
	CREATE FUNCTION hostile.stream_bucket(text) RETURNS int LANGUAGE sql RETURN 0;
	CREATE FUNCTION hostile.pg_advisory_xact_lock_shared(int, int) RETURNS void LANGUAGE sql RETURN NULL;
}, 'look-alike operators and functions');
my $away = qok($router,
	"SELECT 'pathed-' || i FROM generate_series(1, 100) i WHERE event_store.stream_server('pathed-' || i) = 3 LIMIT 1",
	'a stream of server 3');
is(qok($router, "SET search_path = hostile, pg_catalog, event_store; SELECT append('$away', '{\"type\": \"Pathed\"}', 0)",
		'append with a hostile search_path'),
	'1', "an append under a hostile search_path returns the version");
is(join(',', map { qok($servers[$_ - 1]{dsn}, "SELECT event_store.stream_version('$away')", "version on server $_") } 1 .. 3),
	'0,0,1', "and goes to $away\'s server (3), not to server 1");
qok($router, q{DROP SCHEMA hostile CASCADE}, 'drop the look-alikes');

# head_position: one position per server, in server order
my $head = qok($router, 'SELECT event_store.head_position()', 'head_position');
like($head, qr/^\{\d+,\d+,\d+\}$/, 'head_position lists one position per server');
is($head,
	'{' . join(',', map { qok($servers[$_]{dsn}, 'SELECT event_store.head_position()', "head of server $_") } 0 .. 2) . '}',
	'head_position is every server\'s head in server order');
is(qok($router, 'SELECT pg_typeof(event_store.head_position()) = pg_typeof("cursor") FROM event_store.read_all(NULL, 1)', 'types'),
	't', 'a row\'s cursor has the type of head_position()');

# Bad cursors are refused
for my $bad ("'{1,2}'", "'{1,2,3,4}'", "'{1,-1,0}'", "'{1,NULL,0}'", "'{{1,2,3}}'")
{
	($r, $o, $e) = psql_on($router, "SELECT * FROM event_store.read_all($bad, 10)");
	ok(!$r && $e =~ /22023/ && $e =~ /one non-negative position per server/, "cursor $bad refused (22023)")
	  or diag($e);
}

# A follower pages through the router while two clients append to every
# stream: nothing skipped, nothing repeated, every stream in order
my $per_client = 150;
my @appenders;
my $tmp = PostgreSQL::Test::Utils::tempdir('appenders');
for my $c (0 .. 1)
{
	my $sql = '';
	for my $k (1 .. $per_client)
	{
		my $s = $streams[ ($k * 5 + $c * 7) % @streams ];
		$sql .= "SELECT event_store.append('$s', '{\"type\": \"Live\", \"data\": {\"client\": $c, \"k\": $k}}');\n";
	}
	PostgreSQL::Test::Utils::append_to_file("$tmp/client$c.sql", $sql);
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', '/dev/null');
		open(STDERR, '>', "$tmp/client$c.err");
		exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $router, '-f', "$tmp/client$c.sql");
		exit 127;
	}
	push @appenders, $pid;
}
my %exit;
my $appenders_done = sub {
	for my $pid (@appenders)
	{
		next if exists $exit{$pid};
		my $w = waitpid($pid, WNOHANG);
		$exit{$pid} = $? if $w == $pid;
	}
	return @appenders == keys %exit;
};

# follow FUNCTION-CALL-PREFIX: pages until the appenders are done and a page
# is empty; returns the rows seen (position|stream|version|id|cursor)
sub follow
{
	my ($call, $page, $done, $start) = @_;
	my $cursor = defined $start ? "'$start'" : 'NULL';
	my @rows;
	my $deadline = time + 180;
	my $empty_after_done = 0;
	while (time < $deadline)
	{
		my $finished = $done->();
		my $out = qok($router,
			"SELECT global_position, stream_id, stream_version, event_id, \"cursor\" FROM $call$cursor, $page)",
			"page after $cursor");
		my @page = grep { length } split /\n/, $out;
		if (!@page)
		{
			last if $finished;
			usleep(20_000);
			next;
		}
		if (@page > $page)
		{
			fail('a page holds at most max_count events');
			last;
		}
		push @rows, @page;
		my @f = split /\|/, $page[-1];
		$cursor = "'$f[4]'";
	}
	return @rows;
}

my @all = follow('event_store.read_all(', 7, $appenders_done);
is(join(',', map { $exit{$_} } @appenders), '0,0', 'the appenders succeeded')
  or diag(PostgreSQL::Test::Utils::slurp_file("$tmp/client0.err") . PostgreSQL::Test::Utils::slurp_file("$tmp/client1.err"));


sub check_follow
{
	my ($what, $rows, $filter) = @_;
	my (%ids, %last, $dup, $disorder);
	for my $row (@$rows)
	{
		my ($pos, $stream, $version, $id) = split /\|/, $row;
		next if $filter && $stream !~ $filter;
		$dup++ if $ids{$id}++;
		$disorder++ if ($last{$stream} // 0) + 1 != $version;
		$last{$stream} = $version;
	}
	ok(!$dup, "$what: no event repeated");
	ok(!$disorder, "$what: every stream in order, versions without a gap");
	# what the servers have is exactly what the follower saw
	my $expected = 0;
	my $mismatch = '';
	for my $n (1 .. 3)
	{
		# copies made by a bucket move are not returned: their originals are
		my $where = "WHERE NOT metadata ? '\$moved'" . ($filter ? " AND stream_id LIKE 'order-%'" : '');
		my $ids = qok($servers[ $n - 1 ]{dsn},
			"SELECT string_agg(event_id::text, ',') FROM event_store.events $where", "events of server $n");
		for my $id (split /,/, $ids)
		{
			$expected++;
			$mismatch .= "$id missing; " unless $ids{$id};
		}
	}
	is(scalar(keys %ids), $expected, "$what: as many events as the servers hold ($expected, copies aside)");
	is($mismatch, '', "$what: nothing skipped");
	return \%ids;
}
check_follow('read_all', \@all);
ok(@all >= 12 * 2 + 2 * $per_client, 'the follower saw the history and the live appends');

# read_category the same way, from the beginning, with a page of 5
my @orders = follow("event_store.read_category('order', ", 5, sub { 1 });
my @bad = grep { (split /\|/)[1] !~ /^order-/ } @orders;
is(scalar @bad, 0, 'read_category returns only its category');
check_follow('read_category', \@orders, qr/^order-/);

# resuming from a row's cursor gives exactly the events after that row: with
# the rows up to it, every event once
my @first = split /\n/, qok($router, 'SELECT event_id, "cursor" FROM event_store.read_all(NULL, 12)', 'page of 12');
ok(@first >= 3 && @first <= 12, 'a page holds at most max_count events, and some') or diag(scalar @first);
my %upto = map { (split /\|/)[0] => 1 } @first[ 0 .. 2 ];
my @rest = follow('event_store.read_all(', 50, sub { 1 }, (split /\|/, $first[2])[1]);
my $total = qok($router, 'SELECT count(*) FROM event_store.read_all(NULL, 100000)', 'count');
is(scalar(grep { $upto{ (split /\|/)[3] } } @rest), 0, 'resuming after a row repeats none of the rows up to it');
is(scalar(@rest) + 3, $total, 'resuming after a row, with the rows up to it, gives every event');

# A bucket moves from server 1 to server 3 while two clients append (to
# its streams too) and a follower pages read_all: no event lost or
# repeated, stream versions go on, the follower still sees every event
# once and every stream in order
my $bucket = qok($router, "SELECT event_store.stream_bucket('$on{order}{1}[0]')", 'bucket');
my @moving = split /,/, qok($router, "SELECT string_agg(s, ',') FROM (SELECT 'move-' || i AS s
	FROM generate_series(1, 5000) i WHERE event_store.stream_bucket('move-' || i) = $bucket LIMIT 3) x",
	'streams of the bucket');
is(scalar @moving, 3, "three more streams of bucket $bucket");
my %count;
for my $s (@moving)
{
	qok($router, "SELECT event_store.append('$s', (SELECT jsonb_agg(jsonb_build_object('type', 'Old', 'data', jsonb_build_object('k', k))) FROM generate_series(1, 30) k), 0)",
		"history of $s");
	$count{$s} = 30;
}
my $cursor_before = qok($router, 'SELECT event_store.head_position()', 'head');
my @movers = (@moving, $on{order}{1}[0], $on{order}{2}[0], $on{invoice}{3}[0]);
my @moving_all = (@moving, $on{order}{1}[0]);
$count{$_} //= qok($router, "SELECT event_store.stream_version('$_')", "version of $_") for @movers, @moving_all;
%exit = ();
@appenders = ();
for my $c (0 .. 1)
{
	my $sql = '';
	for my $k (1 .. $per_client)
	{
		my $s = $movers[ ($k + $c * 3) % @movers ];
		$count{$s}++;
		$sql .= "SELECT event_store.append('$s', '{\"type\": \"DuringMove\", \"data\": {\"client\": $c, \"k\": $k}}');\n";
	}
	PostgreSQL::Test::Utils::append_to_file("$tmp/mover$c.sql", $sql);
	my $pid = fork();
	die "fork: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>', '/dev/null');
		open(STDERR, '>', "$tmp/mover$c.err");
		exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $router, '-f', "$tmp/mover$c.sql");
		exit 127;
	}
	push @appenders, $pid;
}
# the move starts once the appends are under way
my $started_at = qok($router, "SELECT event_store.stream_version('$movers[0]')", 'version');
my $wait_until = time + 30;
usleep(20_000)
  while time < $wait_until
  && qok($router, "SELECT event_store.stream_version('$movers[0]')", 'version') < $started_at + 5;
my $pid = fork();
die "fork: $!" unless defined $pid;
if ($pid == 0)
{
	open(STDOUT, '>', '/dev/null');
	open(STDERR, '>', "$tmp/move.err");
	exec('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $router, '-c', "CALL event_store.move_bucket($bucket, 3)");
	exit 127;
}
push @appenders, $pid;
@all = follow('event_store.read_all(', 11, $appenders_done);
is(join(',', map { $exit{$_} } @appenders), '0,0,0', 'the appenders and the move succeeded')
  or diag(join('', map { PostgreSQL::Test::Utils::slurp_file("$tmp/$_") } 'mover0.err', 'mover1.err', 'move.err'));
is(qok($router, "SELECT server FROM event_store.buckets WHERE bucket = $bucket", 'mapping'), '3',
	"bucket $bucket is on server 3 now");
like(qok($router, "SELECT from_server || '>' || to_server || ' ' || (events_copied > 0) || ' ' || (fenced_for < '5 s') || ' ' || (finished_at IS NOT NULL) FROM event_store.bucket_moves WHERE bucket = $bucket", 'moves'),
	qr/^1>3 true true true$/, 'the move is recorded, with a short fence');
for my $s (@moving_all)
{
	is(qok($servers[2]{dsn}, "SELECT min(stream_version) = 1 AND max(stream_version) = count(*) AND count(DISTINCT stream_version) = count(*) AND count(DISTINCT event_id) = count(*) FROM event_store.events WHERE stream_id = '$s'", "versions of $s"),
		't', "$s on server 3: versions 1..n without a gap, every event once");
	is(qok($router, "SELECT event_store.stream_version('$s')", "version of $s"), $count{$s},
		"$s through the router: every append counted ($count{$s})");
	is(qok($servers[0]{dsn}, "SELECT string_agg(event_id::text, ',' ORDER BY stream_version) FROM event_store.events WHERE stream_id = '$s'", 'source'),
		qok($servers[2]{dsn}, "SELECT string_agg(event_id::text, ',' ORDER BY stream_version) FROM event_store.events WHERE stream_id = '$s' AND metadata ? '\$moved'", 'copies'),
		"$s: every event of server 1 copied to server 3 with its id, in order");
}
check_follow('read_all across the move', \@all);
# a follower that started before the move and resumes after it
my @resumed = follow("event_store.read_all(", 13, sub { 1 }, $cursor_before);
my %seen_after = map { ((split /\|/)[3] => 1) } @resumed;
my $after_ids = qok($router, "SELECT count(*) FROM event_store.read_all('$cursor_before', 100000)", 'count');
is(scalar(keys %seen_after), $after_ids, 'a follower resuming across the move sees every later event once');

# A server down: its streams fail promptly, naming the connection problem;
# the others keep working; back once it is
my $down = 2;
my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
my $bin = `$pg_config --bindir`;
chomp $bin;
my @as_owner = $> == 0 ? ('runuser', '-u', 'postgres', '--') : ();
my ($so, $se) = ("", "");
IPC::Run::run([ @as_owner, "$bin/pg_ctl", '-D', $servers[ $down - 1 ]{pgdata}, '-m', 'immediate', '-w', 'stop' ],
	'>', \$so, '2>', \$se)
  or diag("pg_ctl stop: $so $se");
my ($s_down) = @{ $on{order}{$down} };
$t0 = time;
($r, $o, $e) = psql_on($router, "SELECT event_store.append('$s_down', '{\"type\": \"WhileDown\"}')");
my $took = time - $t0;
ok(!$r, 'an append to a stream of the server that is down fails');
like($e, qr/connect|connection/i, 'the error names the connection problem');
ok($took < 15, sprintf('it fails promptly (%.2f s)', $took));
($r, $o, $e) = psql_on($router, "SELECT event_store.read_stream('$s_down')");
ok(!$r && $e =~ /connect/i, 'reading that stream fails too') or diag($e);
for my $n (grep { $_ != $down } 1 .. 3)
{
	my ($s) = @{ $on{order}{$n} };
	my $before = qok($router, "SELECT event_store.stream_version('$s')", 'version');
	is(qok($router, "SELECT event_store.append('$s', '{\"type\": \"OtherServerUp\"}')", "append to $s"),
		$before + 1, "streams of server $n keep working while server $down is down");
}
($r, $o, $e) = psql_on($router, 'SELECT event_store.head_position()');
ok(!$r && $e =~ /connect/i, 'head_position needs every server and says which connection failed') or diag($e);

IPC::Run::run([ @as_owner, "$bin/pg_ctl", '-D', $servers[ $down - 1 ]{pgdata},
		'-l', "$servers[$down - 1]{pgdata}.log", '-w', 'start' ], '>', \$so, '2>', \$se)
  or diag("pg_ctl start: $so $se");
my $back = 0;
my $deadline = time + 60;
while (time < $deadline)
{
	($r, $o, $e) = psql_on($router, "SELECT event_store.append('$s_down', '{\"type\": \"Back\"}')");
	if ($r) { $back = 1; last; }
	usleep(100_000);
}
ok($back, "the stream works again once server $down is back") or diag($e);
is(qok($router, "SELECT string_agg(event_type, ',' ORDER BY stream_version) FROM event_store.read_stream('$s_down') WHERE event_type IN ('WhileDown', 'Back')", 'read'),
	'Back', 'the append refused while the server was down wrote nothing');

# stop.sh stops every server
my $rc;
($rc, $o, $e) = stop_cluster();
is($rc, 0, 'stop.sh succeeded') or diag("$o\n$e");
for my $n (1 .. 3)
{
	ok(!-f "$servers[$n - 1]{pgdata}/postmaster.pid", "server $n is stopped");
	($r, $o, $e) = psql_on($servers[ $n - 1 ]{dsn}, 'SELECT 1');
	ok(!$r, "server $n no longer accepts connections");
}
($r, $o, $e) = psql_on($router, 'SELECT 1');
ok(!$r, 'the router no longer accepts connections');

done_testing();
