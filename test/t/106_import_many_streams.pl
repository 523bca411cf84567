# An import of many streams in one transaction: the history (the initial
# copy, one transaction on the consumer) and a live producer transaction,
# each of 3,000 streams, into a consumer whose lock table holds far fewer
# locks than that (max_locks_per_transaction = 10).  Each imported event
# takes its stream's lock; the import, the one writer of its categories,
# gives it back after the event, so nothing fills the lock table.  Both
# arrive whole, once, with the producer's stream versions, and
# import_status records the last producer position.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH (as for 100_services.pl).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $producer = es_node('producer', q{
wal_level = logical
max_wal_senders = 4
max_replication_slots = 4
});
my $consumer = es_node('consumer', q{
max_locks_per_transaction = 10
wal_retrieve_retry_interval = '200ms'
});

my $batch = q{
SELECT count(event_store.append('wide-' || s || '-' || n, '[{"type": "Made"}, {"type": "Done"}]', 0))
  FROM generate_series(1, 3000) AS s};

$producer->safe_psql('postgres', "CREATE EXTENSION event_store;\n" . ($batch =~ s/ n,/ 'h',/r));
$producer->safe_psql('postgres', q{SELECT event_store.create_publication('wide', ARRAY['wide'])});
$consumer->safe_psql('postgres', 'CREATE EXTENSION event_store');

my $connstr = $producer->connstr('postgres');
$connstr =~ s/'/''/g;
$consumer->safe_psql('postgres', "SELECT event_store.create_import('wide', '$connstr', 'wide')");

ok($consumer->poll_query_until('postgres', q{SELECT count(*) = 6000 FROM event_store.events}),
	'the history of 3,000 streams arrived in one copy')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));

# one producer transaction of 3,000 more streams, live
$producer->safe_psql('postgres', $batch =~ s/ n,/ 'l',/r);
ok($consumer->poll_query_until('postgres', q{SELECT count(*) = 12000 FROM event_store.events}),
	'a live transaction of 3,000 streams arrived')
  or diag($consumer->safe_psql('postgres', 'SELECT * FROM event_store.import_status'));

my $shape = q{
SELECT count(DISTINCT event_id), count(DISTINCT stream_id),
       bool_and(stream_version = CASE event_type WHEN 'Made' THEN 1 ELSE 2 END),
       max((metadata->>'$source')::bigint)
  FROM event_store.events WHERE stream_id LIKE 'wide-%'};
is($consumer->safe_psql('postgres', $shape),
	'12000|6000|t|' . $producer->safe_psql('postgres', 'SELECT max(global_position) FROM event_store.events'),
	'every event once, each stream at the producer\'s versions, the last producer position kept');
is($consumer->safe_psql('postgres',
		q{SELECT last_source_position = (SELECT max((metadata->>'$source')::bigint) FROM event_store.events)
		    FROM event_store.import_status WHERE name = 'wide'}),
	't', 'import_status has the producer position of the last event applied');
# the events are readable in the consumer's order, gap-safe, as local ones
is($consumer->safe_psql('postgres', 'SELECT count(*) FROM event_store.read_all(0, 20000)'),
	'12000', 'read_all returns every imported event');

$consumer->safe_psql('postgres', q{SELECT event_store.drop_import('wide')});
$consumer->stop;
$producer->stop;
done_testing();
