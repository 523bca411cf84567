# Fuzzing: random malformed and borderline argument combinations (events
# documents, stream ids, versions, regprocedures of the wrong signature,
# saga definitions, roles and privileges, retention settings, ...) for every
# public function of event_store, mixed with valid calls so that there is
# state to reach deep code paths; some calls run as roles other than the
# extension's owner, so that category grants apply.  The driver is
# test/fuzz/EsFuzz.pm; this test runs a short, seeded run of it on a node
# with the library preloaded and its background worker running (retention
# every second).
#
#   (a) every public function of the install script (sql/install/*.sql) is fuzzed, with its
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
#       sees the same aggregates, upcast streams, deleted streams and
#       category grants as the fuzzing session;
#   (e) the stream lifecycle: every ES_FUZZ_CHECK_EVERY calls, deleted
#       streams read as empty and get no events, purged ones keep only their
#       marker, reopened ones read from after their tombstone, retention
#       (enforced then) keeps no more than its settings allow, and
#       event_store.stats counts the open sagas the table holds (its
#       estimates of events, streams and deleted streams are not negative).
#
# A failure prints the seed, the call and its error.  Settings:
#   ES_FUZZ_SEED         the seed (default: random, printed); the same seed
#                        makes the same calls (outcomes can still vary a
#                        little: the background worker runs concurrently)
#   ES_FUZZ_ITERATIONS   number of calls (default 3000, well under a minute)
#   ES_FUZZ_CHECK_EVERY  calls between the log, cache and lifecycle checks
#                        (default 250)
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

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $top;
BEGIN { $top = dirname(dirname(dirname(__FILE__))); }
use lib "$top/test/fuzz";
use EsFuzz;

# Findings not fixed yet: { name, function, sqlstate, kind, message (regex) }
# match a problem; avoid => sub { my ($call) = @_; ... } keeps a call from
# running at all (for a crash, or a call that would spoil the rest of the
# run), and counts it as a hit.  Remove an entry when its defect is fixed.
my @known_defects = ();

my $seed = $ENV{ES_FUZZ_SEED} // int(rand(2**31));
die "ES_FUZZ_SEED must be a non-negative integer\n" unless $seed =~ /^\d+$/;
my $iterations = $ENV{ES_FUZZ_ITERATIONS} // 3000;
my $worker = ($ENV{ES_FUZZ_WORKER} // 'on') eq 'off' ? 'off' : 'on';
diag("fuzz seed $seed, $iterations calls (reproduce: ES_FUZZ_SEED=$seed ES_FUZZ_ITERATIONS=$iterations)");

my $node = es_node('fuzz', qq{
event_store.worker_enabled = $worker
event_store.naptime = '200ms'
event_store.projection_max_attempts = 2
event_store.retention_interval = '1s'
log_line_prefix = '%m [%p] <%b> %e %q%a '
log_error_verbosity = verbose
log_statement = none
restart_after_crash = on
});
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
my $api = EsFuzz::api_functions(glob("$top/sql/install/*.sql"));
my $fuzzed = $fuzz->fuzzed_functions;
is_deeply(
	{ map { $_ => join(', ', @{ $fuzzed->{$_} }) } keys %$fuzzed },
	{ map { $_ => join(', ', @{ $api->{$_} }) } keys %$api },
	'the fuzzer covers every public function of the install script (sql/install/), with its arguments');

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

#
# (e) the stream lifecycle's promises
#
report('deleted, purged and reopened streams, retention and event_store.stats keep their promises ('
	  . ($fuzz->{invariant_checks} // 0) . ' checks)',
	grep { $_->{kind} =~ /^(lifecycle invariant violated|invariant check failed)$/ } $fuzz->violations);

# nothing left unreported
my %reported = map { $_ => 1 } (keys %call_kinds, 'backend lost', 'crash in server log',
	'internal error in server log', 'internal error recorded', 'background worker error',
	'per-backend cache differs from a fresh session', 'server not answering',
	'lifecycle invariant violated', 'invariant check failed');
report('no other problem', grep { !$reported{ $_->{kind} } } $fuzz->violations);

$fuzz->{stopping} = 1;
$node->stop;
done_testing();
