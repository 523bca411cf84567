# Read-only means read-only on a hot standby too: on a streaming physical
# standby every function that writes refuses with 25006 (append failed
# with XX000 "cannot assign TransactionIds during recovery"), and the reads
# work.
#
# Every wait is a poll with a deadline, never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/081_standby.pl
# (ES_TEST_PORT picks the primary's port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $primary = PostgreSQL::Test::Cluster->new('primary',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'event_store'
event_store.naptime = '200ms'
});
$primary->start;
$primary->safe_psql(
	'postgres', q{
CREATE EXTENSION event_store;
SELECT event_store.append('order-1', '[{"type": "Placed"}, {"type": "Paid"}]', 0);
});
$primary->backup('backup');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

$primary->safe_psql('postgres',
	q{SELECT event_store.append('order-2', '{"type": "Placed"}', 0)});
$primary->wait_for_catchup($standby);

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

# What a statement gives on the standby: its result, or its SQLSTATE
sub on_standby
{
	my ($sql) = @_;
	my ($ret, $stdout, $stderr) =
	  $standby->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $ret == 0 ? $stdout : "ERROR $stderr";
}

like(on_standby(q{SELECT event_store.append('order-3', '{"type": "Placed"}')}),
	qr/ERROR .*25006/, 'append on the standby: 25006');
my ($ret, $stdout, $stderr) =
  $standby->psql('postgres', q{SELECT event_store.append('order-3', '{"type": "Placed"}')});
like($stderr, qr/cannot execute append\(\) during recovery/, 'and the message says why');
for my $stmt (
	q{SELECT event_store.delete_stream('order-1')},
	q{SELECT event_store.save_snapshot('order-1', 1, '{}')},
	q{SELECT event_store.run_projections()},
	q{SELECT event_store.grant_category(current_user::regrole, 'order')},
	q{SELECT event_store.saga_tick()})
{
	like(on_standby($stmt), qr/ERROR .*25006/, "$stmt on the standby: 25006");
}

# the reads work
is(on_standby(q{SELECT string_agg(stream_id || ':' || stream_version || ':' || event_type, ' ' ORDER BY global_position)
                  FROM event_store.read_all()}),
	'order-1:1:Placed order-1:2:Paid order-2:1:Placed', 'read_all on the standby');
is(on_standby(q{SELECT count(*) FROM event_store.read_stream('order-1')}), '2', 'read_stream on the standby');
is(on_standby(q{SELECT count(*) FROM event_store.read_category('order')}), '3', 'read_category on the standby');
is(on_standby(q{SELECT event_store.stream_version('order-2')}), '1', 'stream_version on the standby');
like(on_standby(q{SELECT event_store.head_position()}), qr/^\d+$/, 'head_position on the standby');

# and the primary still appends, the standby sees it
$primary->safe_psql('postgres',
	q{SELECT event_store.append('order-2', '{"type": "Paid"}', 1)});
$primary->wait_for_catchup($standby);
is(on_standby(q{SELECT count(*) FROM event_store.read_stream('order-2')}),
	'2', 'the standby reads what the primary appended since');

$standby->stop;
$primary->stop;
done_testing();
