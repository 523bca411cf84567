# Fuzzing: random malformed and borderline argument combinations (events
# documents, stream ids, versions, regprocedures of the wrong signature,
# saga definitions, ...) for every public function of event_store, mixed
# with valid calls so that there is state to reach deep code paths.  The
# driver is test/fuzz/EsFuzz.pm; this test runs a short, seeded run of it on
# a node with the library preloaded and its background worker running.
#
#   (a) every public function of sql/event_store.sql is fuzzed, with its
#       argument names;
#   (b) per family of functions: every error a call raised is documented
#       for that function in docs/sqlstates.md (or comes from a fuzz
#       callback, for the functions that run callbacks; errors while the
#       arguments are read, before event_store runs, must be in the
#       document's list of those), and a rejected call wrote nothing;
#   (c) no backend crashed (psql kept its connection, the server log has no
#       crash), the server log has no SQLSTATE XX000 and no error of the
#       background workers, and errors event_store recorded (projections'
#       and sagas' last_error) look like no internal error;
#   (d) per-backend caches: every ES_FUZZ_CHECK_EVERY calls a fresh session
#       sees the same aggregates and upcast streams as the fuzzing session.
#
# A failure prints the seed, the call and its error.  Settings:
#   ES_FUZZ_SEED         the seed (default: random, printed); the same seed
#                        makes the same calls (outcomes can still vary a
#                        little: the background worker runs concurrently)
#   ES_FUZZ_ITERATIONS   number of calls (default 3000, well under a minute)
#   ES_FUZZ_CHECK_EVERY  calls between the log and cache checks (default 250)
#   ES_FUZZ_WORKER       "off" to run without the background worker
# Every call, with its outcome, is written to fuzz_calls.sql in the test's
# log directory (tmp_check/log).
#
# A long run is the same test with more calls, for instance:
#   ES_FUZZ_ITERATIONS=20000 \
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/050_fuzz.pl
#
# Known defects: @known_defects below lists findings not fixed yet; they are
# reported (diag) but do not fail the test.  Remove an entry once fixed.

use strict;
use warnings;

use File::Basename qw(dirname);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $top;
BEGIN { $top = dirname(dirname(dirname(__FILE__))); }
use lib "$top/test/fuzz";
use EsFuzz;

# Findings not fixed yet: { name, function, sqlstate, kind, message (regex) }
# match a problem; avoid => sub { my ($call) = @_; ... } keeps a call from
# running at all (for a crash).  Remove an entry when its defect is fixed.
my @known_defects = (
	{
		# {"steps": [{"name": "a", "action": "x.y.z"}]}: to_regprocedure's
		# error escapes event_store._saga_function
		name     => 'define_saga: three-part function name gives 0A000',
		function => 'define_saga',
		sqlstate => '0A000',
		message  => qr/cross-database references are not implemented/,
	},
	{
		# "action": "foo(int" or "\"": to_regprocedure raises 22P02, which
		# event_store._saga_function does not catch
		name     => 'define_saga: malformed function name gives 22P02 from to_regprocedure',
		function => 'define_saga',
		sqlstate => '22P02',
		message  => qr/improper type name|expected a (left|right) parenthesis|expected a type name|improper qualified name|invalid name syntax/,
	},
	{
		# "group": 1.0 or "max_attempts": 2.0 pass the integer check, then
		# (step ->> 'group')::int fails on the text "1.0"
		name     => 'define_saga: integral number written with a fraction gives 22P02',
		function => 'define_saga',
		sqlstate => '22P02',
		message  => qr/invalid input syntax for type integer/,
	},
	{
		# step_names => '{{a,b},{c,d}}': array_position() refuses
		# multidimensional arrays (the other functions give 2202E)
		name     => 'claim_saga_steps: multidimensional step_names gives 0A000',
		function => 'claim_saga_steps',
		sqlstate => '0A000',
		message  => qr/multidimensional arrays/,
	},
	{
		# names longer than a btree entry (about 2.7 kB after compression)
		# are not refused: define_aggregate (category), register_upcaster
		# (event_type), create_projection (name), define_saga (saga_type,
		# complete_on/fail_on), start_saga (a step name define_saga accepted)
		name     => 'long names give 54000 (index row size exceeds btree maximum)',
		sqlstate => '54000',
		message  => qr/exceeds btree version 4 maximum/,
	},
	{
		# a saga transition the worker appends fails (a callback on the
		# saga-<id> stream raises: inline projection handler, reducer of an
		# aggregate on category "saga", upcaster): saga_tick() fails as a
		# whole, the worker exits and is restarted, again at every round,
		# and no saga timer of the database fires meanwhile
		name    => 'worker: one failing saga transition stops saga_tick for every saga',
		kind    => 'background worker error',
		message => qr/event_store\.saga_tick\(\)/,
	},
);

my $seed = $ENV{ES_FUZZ_SEED} // int(rand(2**31));
die "ES_FUZZ_SEED must be a non-negative integer\n" unless $seed =~ /^\d+$/;
my $iterations = $ENV{ES_FUZZ_ITERATIONS} // 3000;
my $worker = ($ENV{ES_FUZZ_WORKER} // 'on') eq 'off' ? 'off' : 'on';
diag("fuzz seed $seed, $iterations calls (reproduce: ES_FUZZ_SEED=$seed ES_FUZZ_ITERATIONS=$iterations)");

my $node = PostgreSQL::Test::Cluster->new('fuzz',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
$node->init;
$node->append_conf(
	'postgresql.conf', qq{
shared_preload_libraries = 'event_store'
event_store.worker_enabled = $worker
event_store.naptime = '200ms'
event_store.projection_max_attempts = 2
log_line_prefix = '%m [%p] <%b> %e %q%a '
log_error_verbosity = verbose
log_statement = none
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', 'CREATE DATABASE fuzz');

my $fuzz = EsFuzz->new(
	connstr       => $node->connstr('fuzz'),
	logfile       => $node->logfile,
	seed          => $seed,
	iterations    => $iterations,
	check_every   => $ENV{ES_FUZZ_CHECK_EVERY} // 250,
	sqlstates_doc => "$top/docs/sqlstates.md",
	known_defects => \@known_defects,
	calls_log     => "$PostgreSQL::Test::Utils::log_path/fuzz_calls.sql",
	note          => sub { note($_[0]) });
$fuzz->setup;

#
# (a) every public function is fuzzed
#
my $api = EsFuzz::api_functions("$top/sql/event_store.sql");
$fuzz->{specs} = $fuzz->_specs;    # (built again by run())
$fuzz->_init_pools;
my $fuzzed = $fuzz->fuzzed_functions;
is_deeply(
	{ map { $_ => join(', ', @{ $fuzzed->{$_} }) } keys %$fuzzed },
	{ map { $_ => join(', ', @{ $api->{$_} }) } keys %$api },
	'the fuzzer covers every public function of sql/event_store.sql, with its arguments');

$fuzz->run;
# the counts per function in the test's log (prove -v), the rest on the terminal
my ($headline, @summary) = $fuzz->summary;
diag($headline);
for my $line (@summary)
{
	if ($line =~ /^known defect/) { diag($line); }
	else { note($line); }
}

sub report
{
	my ($what, @v) = @_;
	my $ok = ok(!@v, $what);
	my $n = 0;
	for my $v (@v)
	{
		diag($fuzz->describe($v));
		if (++$n >= 10)
		{
			diag(scalar(@v) - $n . ' more');
			last;
		}
	}
	return $ok;
}

#
# (b) per family: documented SQLSTATEs, nothing written by a rejected call
#
my %call_kinds = map { $_ => 1 } ('undocumented SQLSTATE', 'undocumented input error',
	'rejected call wrote something', 'hang (statement timeout)');
for my $family ($fuzz->families)
{
	my @fns = sort keys %{ $fuzz->{stats}{$family} };
	report("$family (" . join(', ', @fns) . '): every error documented, rejected calls wrote nothing',
		grep { $call_kinds{ $_->{kind} } } $fuzz->violations($family));
}

#
# (c) crashes, internal errors, worker errors
#
report('no backend crashed', grep { $_->{kind} =~ /^(backend lost|crash in server log)$/ } $fuzz->violations);
report('no SQLSTATE XX000 in the server log, no internal error recorded',
	grep { $_->{kind} =~ /^(internal error in server log|internal error recorded)$/ } $fuzz->violations);
report('the background workers logged no error', grep { $_->{kind} eq 'background worker error' } $fuzz->violations);
is($node->safe_psql('fuzz', 'SELECT 1'), '1', 'the server still answers');

#
# (d) per-backend caches
#
report('per-backend caches agree with a fresh session (' . ($fuzz->{probes} // 0) . ' comparisons)',
	grep { $_->{kind} =~ /per-backend cache|server not answering/ } $fuzz->violations);

# nothing left unreported
my %reported = map { $_ => 1 } (keys %call_kinds, 'backend lost', 'crash in server log',
	'internal error in server log', 'internal error recorded', 'background worker error',
	'per-backend cache differs from a fresh session', 'server not answering');
report('no other problem', grep { !$reported{ $_->{kind} } } $fuzz->violations);

$fuzz->{stopping} = 1;
$node->stop;
done_testing();
