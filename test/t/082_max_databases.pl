# The worker launcher and event_store.max_databases agree: with
# max_databases = 2 and three databases using the extension, two get a
# worker, and the log says once, naming the third, that the limit is
# reached (the launcher used to have a limit of its own, 64 databases, and
# said nothing).  Appends there fail with the same clear error.
#
# Every wait is a poll with a deadline, never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/082_max_databases.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('maxdb', q{
event_store.max_databases = 2
event_store.naptime = '200ms'
});

for my $db (qw(es1 es2 es3))
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION event_store');
}

my $limit_re = qr/event_store\.max_databases \(2\) is reached: database "(es[123])" gets no event_store worker/;
ok($node->poll_query_until('postgres', q{
SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'event_store worker'}),
	'two databases got a worker');
ok($node->wait_for_log($limit_re), 'the log says that max_databases is reached');

my $log = slurp_file($node->logfile);
my @hits = ($log =~ /$limit_re/g);
is(scalar @hits, 1, 'once');
my $left_out = $hits[0];
my @with_worker = grep { $_ ne $left_out } qw(es1 es2 es3);
is( $node->safe_psql('postgres', q{
SELECT string_agg(datname, ' ' ORDER BY datname) FROM pg_stat_activity
 WHERE backend_type = 'event_store worker'}),
	join(' ', @with_worker), "the workers are those of the other databases");

my ($ret, $stdout, $stderr) = $node->psql($left_out,
	q{SELECT event_store.append('order-1', '{"type": "Placed"}')});
like($stderr, qr/too many databases use event_store/, "append in $left_out: too many databases");
like($stderr, qr/Increase event_store.max_databases/, 'with the hint');
is($node->safe_psql($with_worker[0], q{SELECT event_store.append('order-1', '{"type": "Placed"}')}),
	'1', "append in $with_worker[0] works");

$node->stop;
done_testing();
