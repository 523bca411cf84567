# Archived ranges on a hot standby: a standby session that has read the
# store keeps seeing every event after the primary archives more of them
# (the archived_ranges triggers that tell the primary's sessions to read the
# ranges again do not fire during WAL replay), and after the primary moves
# a range to another tablespace.
#
# Every wait is a poll with a deadline, never a sleep.

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
event_store.worker_enabled = off
allow_in_place_tablespaces = on
});
$primary->start;
$primary->safe_psql('postgres', q{
CREATE TABLESPACE cold LOCATION '';
CREATE EXTENSION event_store;
SELECT count(event_store.append('acct-' || i % 5, jsonb_build_object('type', 'T', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 100) AS i;
});
$primary->backup('backup');

my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->append_conf('postgresql.conf', 'allow_in_place_tablespaces = on');
$standby->start;

my $reads = q{SELECT count(*) || ' ' || coalesce(sum(global_position), 0)
                FROM event_store.read_all(0, NULL)
              UNION ALL
              SELECT count(*) || ' ' || coalesce(sum(stream_version), 0)
                FROM event_store.read_stream('acct-1')
              UNION ALL
              SELECT count(*)::text FROM event_store.read_category('acct', 0, NULL)
              UNION ALL
              SELECT event_store.stream_version('acct-2')::text};

# a long-lived standby session reads everything once (the ranges as they are)
my $session = $standby->background_psql('postgres');
my $before = $session->query_safe($reads);
is($before, "100 5050\n20 210\n100\n20", 'the standby session reads every event');

# the primary archives in three steps, moving the first range as well
for my $step ([ 41, 'cold' ], [ 81, 'cold' ], [ 41, 'pg_default' ], [ 101, 'cold' ])
{
	my ($pos, $ts) = @$step;
	$primary->safe_psql('postgres', "SELECT event_store.archive_events($pos, '$ts')");
	$primary->wait_for_catchup($standby);
	is($session->query_safe($reads), $before,
		"after archive_events($pos, '$ts') the standby session reads the same events");
	is($standby->safe_psql('postgres', $reads), $before, '... and so does a new session');
}
is($standby->safe_psql('postgres', 'SELECT count(*) FROM event_store.archived_ranges'), '3',
	'the standby lists the three ranges');
is($standby->safe_psql('postgres', 'SELECT event_store.head_position()'),
	$primary->safe_psql('postgres', 'SELECT event_store.head_position()'),
	'the standby\'s head is the primary\'s, with every event archived');
my ($ret, $out, $err) = $standby->psql('postgres',
	"\\set VERBOSITY sqlstate\nSELECT event_store.archive_events(41, 'pg_default')");
like($err, qr/25006/, 'archive_events() on the standby: 25006');

$session->quit;
$standby->stop;
$primary->stop;
done_testing();
