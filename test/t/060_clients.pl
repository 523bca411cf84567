# The clients as packages a service depends on, against a real server:
# the Node.js package event-store-client (examples/node, on `pg` from the
# npm registry) and the Python package event_store_client (examples/python,
# on Debian's psycopg 3), each installed the way a service installs it and
# tested there, in a database of its own with the extension, on a
# throwaway node with the library preloaded; every test they report
# becomes an assertion here.
#
# Node.js: `npm ci` in examples/node (the locked development packages:
# pg, typescript, @types), `npm pack` (the tarball holds the module, its
# declarations, package.json and README.md, nothing else), `npm install`
# of that tarball into a scratch project, `tsc` on test/usage.ts there (a
# typed service, checked against the installed declarations, with misuses
# the declarations must refuse), then the tests, copied into the scratch
# project, require the installed package.  Python: the package built and
# installed by the system's pip (--python, --no-build-isolation --no-deps
# --no-index: Debian's setuptools and wheel, no download) into a throwaway
# virtual environment that sees Debian's psycopg, `mypy --strict` on the
# package and service.py (with a misuse it must refuse) when mypy is
# installed, then the tests, run from another directory, import the
# installed package.
#
# They prove, for each client: appends retried on SE001 (concurrent
# appenders to one stream all land with consecutive versions, none lost),
# on 40001 and 40P01 (the same batch again, written once), a batch sent
# again after a lost connection (a backend terminated while its append
# waits) or by a later call, with the same event ids, written once;
# followers woken by wait_for_events() and by LISTEN event_store see every
# committed event exactly once, in order (across a late commit and a
# rollback); sagas whose external steps the client's workers do complete,
# one whose step fails for good compensates, and an operator's retry_saga
# completes one stuck after its pivot.  And, for subscriptions (consumer
# groups): three workers of one subscription handle every event exactly
# once, each stream in order and never in two workers at the same time;
# an event whose handler fails twice is retried, then its stream is parked
# (shown in subscription_parked, its later events held back) while the
# other streams go on, and replay_parked delivers it and the rest of its
# stream again; skip_parked acknowledges a parked stream; a worker that
# stops releases its partitions and another takes over at once, with the
# rest of the stopped batch; with transactional workers (the handler's
# writes and the ack in one transaction) a worker stalled past its lease
# has its ack refused (55000) and its writes rolled back, a handler failing
# after its write is rolled back to its savepoint, and every event lands
# exactly once.
#
# Needs node (18 or later) and npm, and /usr/bin/python3 with psycopg,
# venv, pip, setuptools and wheel (scripts/deps.sh installs them, and
# mypy).  A client whose runtime is absent (no node, no python3) is
# skipped, saying so; anything else missing fails.  npm installs from its
# cache when it has the packages (--prefer-offline); the cache is npm's
# default under $HOME when that is writable, else a temporary one.
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
# seconds for each npm or pip step and for each client's tests: what runs
# stays below the time limit of a TAP file in scripts/run-suites.sh (300 s)
my %time_limit = (npm => 60, tsc => 120, node => 90, pip => 60, mypy => 90, python => 90);

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

# Parse a TAP stream (node --test) into assertions named "$what: ...";
# returns how many it found.
sub tap_assertions
{
	my ($what, $out) = @_;
	my $n = 0;
	for my $line (split /\n/, $out)
	{
		if ($line =~ /^\s*(not )?ok \d+ - (.*?)(?:\s+#\s*(SKIP|TODO)\b.*)?$/i)
		{
			my ($not, $name, $directive) = ($1, $2, $3);
			ok(!$not && !$directive, "$what: $name" . ($directive ? " ($directive)" : ''));
			$n++;
		}
		elsif ($line =~ /^# (\d+ conflicts.*|events per worker.*)$/)
		{
			note("$what: $1");
		}
	}
	return $n;
}

# Copy files and directories into a directory (cp -R)
sub copy_into
{
	my ($dest, @paths) = @_;
	my ($rc, $out) = run_in($dest, {}, [ 'cp', '-R', @paths, $dest ], 60);
	die "cp -R @paths $dest: $out" if $rc != 0;
	return;
}

#
# Prerequisites: an absent runtime skips its client; anything else missing fails
#
my ($node_ok, $python_ok) = (1, 1);
my ($node_skip, $python_skip);
if (!have('node'))
{
	$node_skip = 'node is not installed (Debian packages nodejs and npm; scripts/deps.sh installs them)';
	$node_ok = 0;
}
elsif (!have('npm'))
{
	fail('npm is installed (Debian package npm; scripts/deps.sh installs it)');
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
my $have_mypy = 0;
if (!-x $python)
{
	$python_skip = "$python is not installed (Debian package python3; scripts/deps.sh installs it)";
	$python_ok = 0;
}
else
{
	my ($rc, $out) = run_in($top, {},
		[ $python, '-c', 'import psycopg, venv, setuptools, wheel, pip, sys; '
			  . 'assert tuple(map(int, pip.__version__.split(".")[:2])) >= (22, 3), "pip " + pip.__version__ + " has no --python"; '
			  . 'print(psycopg.__version__, sys.version.split()[0])' ], 60);
	ok($rc == 0,
		"$python has psycopg, venv, pip (22.3 or later), setuptools and wheel (Debian packages python3-psycopg, python3-venv, python3-pip, python3-setuptools, python3-wheel; scripts/deps.sh installs them)"
	) or do { diag($out); $python_ok = 0; };
	($rc) = run_in($top, {}, [ $python, '-m', 'mypy', '--version' ], 60);
	$have_mypy = $rc == 0;
}
if (!$node_ok && !$python_ok && $node_skip && $python_skip)
{
	plan skip_all => "$node_skip; $python_skip";
}

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
# Node.js: npm ci, npm pack, npm install of the tarball in a scratch
# project, tsc on the typed usage there, node's test runner (TAP) there
#
SKIP:
{
	skip($node_skip, 1) if $node_skip;
	last SKIP unless $node_ok;

	my %npm_env = (
		npm_config_update_notifier => 'false',
		npm_config_fund => 'false',
		npm_config_audit => 'false',
		npm_config_loglevel => 'error');
	# npm's cache lives under $HOME: use a temporary one when that is not ours
	if (!defined $ENV{npm_config_cache}
		&& !(defined $ENV{HOME} && -d $ENV{HOME} && -w $ENV{HOME}))
	{
		$npm_env{npm_config_cache} = abs_path(PostgreSQL::Test::Utils::tempdir('npm_cache'));
	}
	my ($rc, $out) = run_in($node_dir, \%npm_env,
		[ 'npm', 'ci', '--prefer-offline' ], $time_limit{npm});
	show_output('npm ci', $out, $rc != 0);
	is($rc, 0, 'node: npm ci installed the locked packages') or last SKIP;

	my $packed = abs_path(PostgreSQL::Test::Utils::tempdir('npm_pack'));
	($rc, $out) = run_in($node_dir, \%npm_env,
		[ 'npm', 'pack', '--pack-destination', $packed ], $time_limit{npm});
	show_output('npm pack', $out, $rc != 0);
	my ($tarball) = $out =~ /^(event-store-client-[\w.-]+\.tgz)\s*$/m;
	ok($rc == 0 && defined $tarball && -f "$packed/$tarball",
		'node: npm pack made the tarball event-store-client-<version>.tgz')
	  or last SKIP;
	is($tarball, 'event-store-client-0.3.0.tgz', 'node: the package is version 0.3.0');
	($rc, $out) = run_in($packed, {}, [ 'tar', '-tzf', $tarball ], 60);
	is( join(',', sort split /\n/, $out),
		'package/README.md,package/event_store.d.ts,package/event_store.js,package/package.json',
		'node: the tarball holds the module, its declarations, package.json and README.md');

	# a service's project: the tarball and its peer pg, with the versions
	# the lockfile has (types for tsc too)
	my $lock = slurp_file("$node_dir/package-lock.json");
	my %locked;
	for my $dep ('pg', '@types/pg', '@types/node')
	{
		($locked{$dep}) =
		  $lock =~ /"node_modules\/\Q$dep\E": \{\s*"version": "([^"]+)"/;
		die "no version of $dep in package-lock.json" unless defined $locked{$dep};
	}
	my $service = abs_path(PostgreSQL::Test::Utils::tempdir('service'));
	open my $fh, '>', "$service/package.json" or die "$service/package.json: $!";
	print $fh qq({"name": "a-service", "version": "1.0.0", "private": true}\n);
	close $fh;
	($rc, $out) = run_in($service, \%npm_env,
		[ 'npm', 'install', '--prefer-offline', "$packed/$tarball", map { "$_\@$locked{$_}" } sort keys %locked ],
		$time_limit{npm});
	show_output('npm install (the service)', $out, $rc != 0);
	is($rc, 0, 'node: a service installed the tarball') or last SKIP;
	like(slurp_file("$service/package.json"),
		qr/"event-store-client":\s*"file:[^"]*event-store-client-0\.3\.0\.tgz"/,
		'node: the service depends on it');
	ok(-f "$service/node_modules/event-store-client/event_store.d.ts" && -d "$service/node_modules/pg",
		'node: the package and its peer dependency pg are installed');

	mkdir "$service/test" or die "$service/test: $!";
	copy_into("$service/test", map { "$node_dir/test/$_" } qw(event_store.test.js usage.ts tsconfig.json));
	($rc, $out) = run_in($service, {},
		[ "$node_dir/node_modules/.bin/tsc", '-p', 'test' ], $time_limit{tsc});
	show_output('tsc -p test (the service)', $out, $rc != 0);
	is($rc, 0, 'node: the typed usage checks against the installed declarations (tsc --noEmit, strict)');

	($rc, $out) = run_in($service, { %pg_env, PGDATABASE => 'node_clients', ES_CLIENT_INSTALLED => '1' },
		[ 'node', '--test', '--test-reporter=tap', 'test/event_store.test.js' ],
		$time_limit{node});
	show_output('node --test (the service)', $out, $rc != 0);
	my $n = tap_assertions('node', $out);
	ok($n >= 17, "node: the tests reported (found $n)");
	is($rc, 0, 'node: the test runner succeeded');
}

#
# Python: the package installed by pip into a throwaway virtual
# environment, mypy, unittest (one "name (...) ... ok" line per test)
#
SKIP:
{
	skip($python_skip, 1) if $python_skip;
	last SKIP unless $python_ok;

	my %py_env = (
		PYTHONDONTWRITEBYTECODE => '1',
		PIP_DISABLE_PIP_VERSION_CHECK => '1',
		PIP_NO_INDEX => '1',
		PIP_NO_INPUT => '1',
		PIP_NO_CACHE_DIR => '1');
	# the system's pip installs into the environment (which needs no pip of
	# its own); it builds in the source directory: a copy of the package's files
	my $src = abs_path(PostgreSQL::Test::Utils::tempdir('python_src'));
	copy_into($src, map { "$python_dir/$_" } qw(pyproject.toml README.md event_store_client service.py));
	my $venv = abs_path(PostgreSQL::Test::Utils::tempdir('venv'));
	my ($rc, $out) = run_in($src, \%py_env,
		[ $python, '-m', 'venv', '--system-site-packages', '--without-pip', $venv ], $time_limit{pip});
	show_output('python -m venv', $out, $rc != 0);
	is($rc, 0, 'python: a virtual environment that sees the system packages') or last SKIP;
	($rc, $out) = run_in($src, \%py_env,
		[ $python, '-m', 'pip', '--python', "$venv/bin/python", 'install', '--no-build-isolation', '--no-deps', '--no-index', $src ],
		$time_limit{pip});
	show_output('pip install', $out, $rc != 0);
	ok($rc == 0 && $out =~ /Successfully installed event-store-client-0\.3\.0/,
		'python: pip built and installed event-store-client 0.3.0, without a download')
	  or last SKIP;
	($rc, $out) = run_in($src, \%py_env,
		[ $python, '-m', 'pip', '--python', "$venv/bin/python", 'show', 'event-store-client' ], $time_limit{pip});
	show_output('pip show', $out, $rc != 0);
	ok( $rc == 0
		  && $out =~ /^Version: 0\.3\.0$/m
		  && $out =~ /^Requires: psycopg$/m
		  && $out =~ /^Location: \Q$venv\E\//m,
		'python: installed in the virtual environment, version 0.3.0, requiring psycopg');

	if ($have_mypy)
	{
		# one run: the package and service.py clean, a misuse refused
		open my $fh, '>', "$src/misuse.py" or die "$src/misuse.py: $!";
		print $fh "from event_store_client import append_with_retry, connect\n",
		  "append_with_retry(connect(), 17, {'type': 'X'}, max_attempts='3')\n";
		close $fh;
		($rc, $out) = run_in($src, \%py_env,
			[ $python, '-m', 'mypy', '--strict', '--cache-dir=/dev/null', 'event_store_client', 'service.py', 'misuse.py' ],
			$time_limit{mypy});
		show_output('mypy --strict', $out, 0);
		my @errors = $out =~ /^(\S+?):\d+: error: (.*)$/mg;
		my %by_file;
		while (my ($file, $error) = splice @errors, 0, 2)
		{
			push @{ $by_file{$file} }, $error;
		}
		is_deeply([ sort keys %by_file ], ['misuse.py'],
			'python: the package and service.py pass mypy --strict')
		  or diag($out);
		is( join("\n", @{ $by_file{'misuse.py'} // [] }),
			join("\n",
				'Argument 2 to "append_with_retry" has incompatible type "int"; expected "str"  [arg-type]',
				'Argument "max_attempts" to "append_with_retry" has incompatible type "str"; expected "int"  [arg-type]'),
			'python: mypy refuses a misuse of the package');
	}
	else
	{
		note('python: mypy is not installed (Debian package python3-mypy): the type hints are not checked');
	}

	my $run = abs_path(PostgreSQL::Test::Utils::tempdir('python_tests'));
	copy_into($run, "$python_dir/test_event_store_client.py");
	($rc, $out) = run_in($run,
		{ %py_env, %pg_env, PGDATABASE => 'python_clients', ES_CLIENT_INSTALLED => '1' },
		[ "$venv/bin/python", '-m', 'unittest', '-v', 'test_event_store_client' ],
		$time_limit{python});
	show_output('python -m unittest (the installed package)', $out, $rc != 0);
	my $n = 0;
	while ($out =~ /^(\w+) \(([\w.]+)\)\s*\.\.\.\s*(.*)$/mg)
	{
		my ($name, $where, $status) = ($1, $2, $3);
		ok($status eq 'ok', "python: $name" . ($status eq 'ok' ? '' : " ($status)"));
		$n++;
	}
	my ($ran) = $out =~ /^Ran (\d+) tests? in/m;
	ok($n >= 16 && defined $ran && $ran == $n,
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
