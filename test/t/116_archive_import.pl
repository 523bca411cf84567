# Imports meet archived ranges.  A producer archives the older part of its
# store into a tablespace (two ranges, streams whose first events are
# archived and their later ones hot); a new import's history must still
# bring every event of the published categories (the initial copy of a
# publication reads the hot table only): the same stream ids, versions,
# ids, types and data, exactly once, in the producer's position order, the
# archived ones first; a publication that filters event types too; also
# when archive_events() moves events of the copy into a new range on the
# producer after the copy's snapshot was taken and before the archived
# events are read (a lock on the consumer holds the copy there).  Then the
# consumer archives the imported events itself: later events of those
# streams still import, and a new import of the same publication (its whole
# history re-sent) recognises every event already stored, archived or hot,
# and stores none twice.
#
# Every wait is a poll with a deadline, never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $producer = es_node('producer', q{
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
allow_in_place_tablespaces = on
event_store.worker_enabled = off
});

my $consumer = PostgreSQL::Test::Cluster->new('consumer');
$consumer->init;
$consumer->append_conf('postgresql.conf', q{
shared_preload_libraries = 'event_store'
allow_in_place_tablespaces = on
event_store.worker_enabled = off
wal_retrieve_retry_interval = '200ms'
});
$consumer->start;

# The events of category order (of type Placed with $typed), as both sides
# must agree on them
sub same_events
{
	my ($typed) = @_;
	my $types = $typed ? q{AND event_type IN ('Placed', '$StreamDeleted')} : '';
	return qq{
SELECT count(*) || E'\\n' || string_agg(pg_catalog.concat_ws('|', stream_id, stream_version, event_id, event_type,
                                      data, metadata - '\$source', schema_version), E'\\n'
                  ORDER BY stream_id, stream_version)
  FROM event_store.events WHERE stream_id LIKE 'order-%' $types};
}

# No imported event is stored out of the producer's position order
my $in_order = q{
SELECT count(*) FROM (
  SELECT (metadata ->> '$source')::bigint AS s,
         lag((metadata ->> '$source')::bigint) OVER (ORDER BY global_position) AS p
    FROM event_store.events WHERE stream_id LIKE 'order-%') x
 WHERE s <= p};

# Wait until import name in database db has applied the producer's last
# event of its publication (producer position $last)
sub wait_caught_up
{
	my ($db, $name, $last, $what) = @_;
	ok($consumer->poll_query_until($db, qq{
SELECT state = 'running' AND last_source_position >= $last
  FROM event_store.import_status WHERE name = '$name'}),
		"$what: import $name caught up with producer position $last")
	  or diag($consumer->safe_psql($db, 'SELECT * FROM event_store.import_status'));
}

# The producer's last position of the published events
sub last_order_position
{
	my ($typed) = @_;
	my $types = $typed ? q{AND event_type IN ('Placed', '$StreamDeleted')} : '';
	return $producer->safe_psql('postgres', qq{
SELECT max(global_position) FROM event_store.events WHERE stream_id LIKE 'order-%' $types});
}

# ---- the producer: 600 events, the first 400 archived in two ranges ---------
$producer->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE TABLESPACE cold LOCATION '';
-- 20 order streams and 5 customer streams, interleaved; every fourth
-- event of an order stream is Placed, the others Paid
SELECT count(event_store.append(
         CASE WHEN i % 3 = 0 THEN 'customer-' || i % 5 ELSE 'order-' || i % 20 END,
         jsonb_build_object('type', CASE WHEN i % 4 = 0 THEN 'Placed' ELSE 'Paid' END,
                            'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 600) AS i;
SELECT event_store.archive_events(251, 'cold');
SELECT event_store.archive_events(401, 'cold');
SELECT event_store.create_publication('orders', ARRAY['order']);
SELECT event_store.create_publication('placed', ARRAY['order'], ARRAY['Placed']);
});
is($producer->safe_psql('postgres', q{
SELECT (SELECT count(*) FROM ONLY event_store.events) || ' hot, ' ||
       (SELECT count(*) FROM event_store.archived_ranges) || ' ranges'}),
	'200 hot, 2 ranges', 'the producer archived positions 1 to 400 in two ranges');

my $connstr = $producer->connstr('postgres');
$connstr =~ s/'/''/g;    # inside an SQL literal

$consumer->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE TABLESPACE cold LOCATION '';
CREATE DATABASE typed;
});
$consumer->safe_psql('typed', 'CREATE EXTENSION event_store');

# ---- a new import's history holds the archived events --------------------------
# The table synchronization of import 'orders' is held after the producer
# took the copy's snapshot: the consumer's event_store.imports is locked as
# soon as create_import() returns (before the copy starts: a new process
# reads it when the copy's first trigger fires).  Meanwhile the producer's
# archive_events() moves 100 events of the copy into a new range, and 10
# more events are appended.
my ($lock_in, $lock_out, $lock_err) = ('', '', '');
my $locker = IPC::Run::start(
	[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $consumer->connstr('postgres'), '-f', '-' ],
	'<', \$lock_in, '>', \$lock_out, '2>', \$lock_err,
	IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
$lock_in .= "SELECT 'connected';\n";
$locker->pump until $lock_out =~ /connected/;
$consumer->safe_psql('postgres',
	"SELECT event_store.create_import('orders', '$connstr', 'orders')");
$lock_in .= "BEGIN; LOCK TABLE event_store.imports IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n";
$locker->pump until $lock_out =~ /locked/;
ok($consumer->poll_query_until('postgres', q{
SELECT count(*) > 0 FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_stat_subscription s ON s.pid = l.pid AND s.relid IS NOT NULL
 WHERE l.relation = 'event_store.imports'::regclass AND NOT l.granted}),
	'the import\'s copy started and waits');
is($producer->safe_psql('postgres', q{
SELECT event_store.archive_events(501, 'cold');
SELECT count(event_store.append('order-' || i % 20, jsonb_build_object('type', 'Placed', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1001, 1010) AS i;
SELECT count(*) FROM event_store.archived_ranges}),
	"100\n10\n3", 'meanwhile the producer archived 100 events of the copy and appended 10');
$lock_in .= "COMMIT;\n\\q\n";
$locker->finish;

$consumer->safe_psql('typed',
	"SELECT event_store.create_import('placed', '$connstr', 'placed')");
wait_caught_up('postgres', 'orders', last_order_position(0), 'history');
wait_caught_up('typed', 'placed', last_order_position(1), 'history of types');

is($consumer->safe_psql('postgres', same_events(0)),
	$producer->safe_psql('postgres', same_events(0)),
	'history: every event of the category, archived or hot, once, unchanged');
is($consumer->safe_psql('typed', same_events(1)),
	$producer->safe_psql('postgres', same_events(1)),
	'history of a publication of types: every event of those types, archived or hot');
is($consumer->safe_psql('typed',
		q{SELECT count(*) FROM event_store.events WHERE event_type <> 'Placed'}),
	'0', 'history of a publication of types: no event of another type');
is($consumer->safe_psql('postgres', $in_order), '0',
	'history: stored in the producer\'s position order, the archived events first');
is($consumer->safe_psql('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'customer-%'}),
	'0', 'history: nothing of an unpublished category');

# ---- live events after the history ----------------------------------------------
$producer->safe_psql('postgres', q{
SELECT count(event_store.append('order-' || i % 20, jsonb_build_object('type', 'Placed', 'data', jsonb_build_object('i', i))))
  FROM generate_series(601, 640) AS i;
});
wait_caught_up('postgres', 'orders', last_order_position(0), 'live');
is($consumer->safe_psql('postgres', same_events(0)),
	$producer->safe_psql('postgres', same_events(0)),
	'live events continue the streams whose first events are archived');

# ---- the consumer archives imported events ----------------------------------------
$consumer->safe_psql('postgres', q{
SELECT event_store.archive_events((SELECT max(global_position) FROM event_store.events) + 1, 'cold')});
is($consumer->safe_psql('postgres', q{
SELECT count(*) FROM ONLY event_store.events}),
	'0', 'the consumer archived every imported event');

$producer->safe_psql('postgres', q{
SELECT count(event_store.append('order-' || i % 20, jsonb_build_object('type', 'Paid', 'data', jsonb_build_object('i', i))))
  FROM generate_series(641, 680) AS i;
});
wait_caught_up('postgres', 'orders', last_order_position(0), 'after the consumer archived');
is($consumer->safe_psql('postgres', same_events(0)),
	$producer->safe_psql('postgres', same_events(0)),
	'events of streams archived on the consumer import at their versions');
is($consumer->safe_psql('postgres', $in_order), '0',
	'still in the producer\'s position order');

# ---- the whole history re-sent: recognised in every tier --------------------------
# A new import of the same publication copies the producer's whole history
# again; every event is already here, most of them archived, some hot.
$consumer->safe_psql('postgres', q{
SELECT event_store.drop_import('orders');
SELECT event_store.archive_events(
         (SELECT max(global_position) FROM event_store.events) - 9, 'cold');
});
is($consumer->safe_psql('postgres', q{SELECT count(*) FROM ONLY event_store.events}),
	'10', 'the consumer\'s last ten imported events are hot, the others archived');
my $before = $consumer->safe_psql('postgres',
	q{SELECT max(global_position) FROM event_store.events});
$consumer->safe_psql('postgres',
	"SELECT event_store.create_import('again', '$connstr', 'orders')");
wait_caught_up('postgres', 'again', last_order_position(0), 're-sent history');
is($consumer->safe_psql('postgres', same_events(0)),
	$producer->safe_psql('postgres', same_events(0)),
	're-sent history: every event recognised, none stored twice');
is($consumer->safe_psql('postgres',
		q{SELECT coalesce(max(global_position), 0) FROM event_store.events}),
	$before, 're-sent history: nothing new was written');

$producer->safe_psql('postgres', q{
SELECT event_store.append('order-1', '{"type": "Placed", "data": {"last": true}}');
});
wait_caught_up('postgres', 'again', last_order_position(0), 'after the re-sent history');
is($consumer->safe_psql('postgres', same_events(0)),
	$producer->safe_psql('postgres', same_events(0)),
	'the new import goes on with live events');
is($consumer->safe_psql('postgres',
		q{SELECT count(*) FROM (SELECT event_id FROM event_store.events GROUP BY 1 HAVING count(*) > 1) d}),
	'0', 'no event id twice across the consumer\'s tiers');

$consumer->safe_psql('postgres', q{SELECT event_store.drop_import('again')});
$consumer->safe_psql('typed', q{SELECT event_store.drop_import('placed')});
is($producer->safe_psql('postgres', q{SELECT count(*) FROM pg_catalog.pg_replication_slots}),
	'0', 'drop_import removed the producer\'s slots');

$consumer->stop;
$producer->stop;
done_testing();
