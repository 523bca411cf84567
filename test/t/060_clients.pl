# The client examples against a real server: the Node.js client
# (examples/node, on `pg` from the npm registry) and the Python client
# (examples/python, on Debian's psycopg 3) run their own tests against a
# throwaway node with the library preloaded, each in a database of its own
# with the extension; every test they report becomes an assertion here.
# They prove, for each client: appends retried on SE001 (concurrent
# appenders to one stream all land with consecutive versions, none lost);
# followers woken by wait_for_events() and by LISTEN event_store see every
# committed event exactly once, in order (across a late commit and a
# rollback); sagas whose external steps the client's workers do complete,
# and one whose step fails for good compensates.  And, for subscriptions
# (consumer groups): three workers of one subscription handle every event
# exactly once, each stream in order and never in two workers at the same
# time; an event whose handler fails twice is retried, then its stream is
# parked (shown in subscription_parked, its later events held back) while
# the other streams go on, and replay_parked delivers it and the rest of
# its stream again; a worker that stops releases its partitions and
# another takes over at once, with the rest of the stopped batch; with
# transactional workers (the handler's writes and the ack in one
# transaction) a worker stalled past its lease has its ack refused (55000)
# and its writes rolled back, a handler failing after its write is rolled
# back to its savepoint, and every event lands exactly once.
#
# Needs node (18 or later) and npm, and /usr/bin/python3 with psycopg
# (scripts/deps.sh installs them): without them this test FAILS, it does
# not skip.  `npm ci` installs the locked packages into
# examples/node/node_modules of the tree under test, from npm's cache when
# it has them (--prefer-offline); the cache is npm's default under $HOME
# when that is writable, else a temporary one.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/060_clients.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.
# ES_PYTHON names another interpreter than /usr/bin/python3.)

use strict;
use warnings;

use Cwd qw(abs_path getcwd);
use File::Basename qw(dirname);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $top = abs_path(dirname(__FILE__) . '/../..');
my $node_dir = "$top/examples/node";
my $python_dir = "$top/examples/python";
my $python = $ENV{ES_PYTHON} // '/usr/bin/python3';
# seconds for npm ci and for each client's tests: together below the time
# limit of a TAP file in scripts/run-suites.sh (300 s)
my %time_limit = (npm => 80, node => 100, python => 100);

# Run a command in a directory with extra environment variables; returns
# (exit status or -1 when it could not start or timed out, combined output).
sub run_in
{
	my ($dir, $env, $cmd, $timeout) = @_;
	my $out = '';
	local %ENV = (%ENV, %$env);
	my $cwd = getcwd();
	chdir $dir or return (-1, "chdir $dir: $!");
	my $ok = eval {
		IPC::Run::run($cmd, '<', \undef, '>&', \$out,
			IPC::Run::timeout($timeout));
		1;
	};
	my $err = $@;
	chdir $cwd or die "chdir $cwd: $!";
	return (-1, $out . "\n$err") unless $ok;
	return ($? >> 8, $out);
}

# Is a program on PATH?
sub have
{
	my ($prog) = @_;
	return grep { -x "$_/$prog" } split /:/, ($ENV{PATH} // '');
}

# Show a client's output: in the log always, on the console when it failed.
sub show_output
{
	my ($what, $out, $failed) = @_;
	my $text = "---- $what ----\n$out";
	if ($failed)
	{
		diag($text);
	}
	else
	{
		note($text);
	}
}

#
# Prerequisites: missing ones fail the test (CI must install them)
#
my ($node_ok, $python_ok) = (1, 1);
if (!have('node') || !have('npm'))
{
	fail('node and npm are installed (Debian packages nodejs and npm; scripts/deps.sh installs them)');
	$node_ok = 0;
}
else
{
	my ($rc, $version) = run_in($top, {}, [ 'node', '--version' ], 60);
	my ($major) = $version =~ /^v(\d+)\./;
	ok($rc == 0 && defined $major && $major >= 18,
		"node 18 or later is installed (node:test), found: $version")
	  or $node_ok = 0;
}
my ($py_rc, $py_out) = run_in($top, {},
	[ $python, '-c', 'import psycopg, sys; print(psycopg.__version__, sys.version.split()[0])' ], 60);
ok($py_rc == 0,
	"$python can import psycopg (Debian package python3-psycopg; scripts/deps.sh installs it)")
  or do { diag($py_out); $python_ok = 0; };

#
# The server: worker running (NOTIFY, saga retries), a database per client
#
my $node = es_node('clients', q{
event_store.naptime = '200ms'
max_connections = 60
});

my $user = $node->safe_psql('postgres', 'SELECT current_user');
for my $db (qw(node_clients python_clients))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION event_store');
}
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'event_store worker'}),
	'a worker runs for each database');

my %pg_env = (
	PGHOST => $node->host,
	PGPORT => $node->port,
	PGUSER => $user,
	PGAPPNAME => 'event_store client test');
delete @ENV{qw(PGSERVICE PGOPTIONS DATABASE_URL PGPASSWORD)};

#
# Node.js: npm ci, then node's test runner with the TAP reporter
#
if ($node_ok)
{
	my %npm_env = (
		npm_config_update_notifier => 'false',
		npm_config_fund => 'false',
		npm_config_audit => 'false');
	# npm's cache lives under $HOME: use a temporary one when that is not ours
	if (!defined $ENV{npm_config_cache}
		&& !(defined $ENV{HOME} && -d $ENV{HOME} && -w $ENV{HOME}))
	{
		$npm_env{npm_config_cache} = PostgreSQL::Test::Utils::tempdir('npm_cache');
	}
	my ($rc, $out) = run_in($node_dir, \%npm_env,
		[ 'npm', 'ci', '--prefer-offline', '--no-audit', '--no-fund', '--loglevel=error' ],
		$time_limit{npm});
	show_output('npm ci', $out, $rc != 0);
	if (is($rc, 0, 'npm ci installed the locked packages'))
	{
		($rc, $out) = run_in($node_dir, { %pg_env, PGDATABASE => 'node_clients' },
			[ 'node', '--test', '--test-reporter=tap', 'test/event_store.test.js' ],
			$time_limit{node});
		show_output('node --test', $out, $rc != 0);
		my $n = 0;
		for my $line (split /\n/, $out)
		{
			if ($line =~ /^\s*(not )?ok \d+ - (.*?)(?:\s+#\s*(SKIP|TODO)\b.*)?$/i)
			{
				my ($not, $name, $directive) = ($1, $2, $3);
				ok(!$not && !$directive,
					"node: $name" . ($directive ? " ($directive)" : ''));
				$n++;
			}
			elsif ($line =~ /^# (\d+ conflicts.*)$/)
			{
				note("node: $1");
			}
		}
		ok($n >= 10, "node: the tests reported (found $n)");
		is($rc, 0, 'node: the test runner succeeded');
	}
}

#
# Python: unittest, verbose (one "name (...) ... ok" line per test)
#
if ($python_ok)
{
	my ($rc, $out) = run_in($python_dir,
		{ %pg_env, PGDATABASE => 'python_clients', PYTHONDONTWRITEBYTECODE => '1' },
		[ $python, '-m', 'unittest', '-v', 'test_event_store_client' ],
		$time_limit{python});
	show_output('python -m unittest', $out, $rc != 0);
	my $n = 0;
	while ($out =~ /^(\w+) \(([\w.]+)\)\s*\.\.\.\s*(.*)$/mg)
	{
		my ($name, $where, $status) = ($1, $2, $3);
		ok($status eq 'ok', "python: $name" . ($status eq 'ok' ? '' : " ($status)"));
		$n++;
	}
	my ($ran) = $out =~ /^Ran (\d+) tests? in/m;
	ok($n >= 11 && defined $ran && $ran == $n,
		"python: the tests reported (found $n, ran " . ($ran // '?') . ')');
	is($rc, 0, 'python: unittest succeeded');
}

# The clients left nothing behind: no connection of theirs remains
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 0 FROM pg_stat_activity WHERE datname IN ('node_clients', 'python_clients')
		     AND backend_type = 'client backend'}),
	'the clients closed their connections');

$node->stop;
done_testing();
