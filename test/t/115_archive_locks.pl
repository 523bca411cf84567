# A lock on a range table does not let anybody stop the store: a role
# without any privilege on the tables can hold a lock on a range table for as long as it
# likes (PREPARE locks the relations it names before privileges are
# checked); archive_events() moving that range waits for it without making
# the reads queue behind its own lock request, gives up at lock_timeout,
# and can be cancelled.  Once the lock is gone the move goes through.
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

my $node = es_node('archlocks', q{
event_store.worker_enabled = off
allow_in_place_tablespaces = on
});

$node->safe_psql('postgres', q{
CREATE TABLESPACE cold LOCATION '';
CREATE EXTENSION event_store;
CREATE ROLE nobody LOGIN;
-- a reader: no privilege on any table
GRANT EXECUTE ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) TO nobody;
SELECT count(event_store.append('acct-' || i % 5, jsonb_build_object('type', 'T', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 100) AS i;
SELECT event_store.archive_events(41, 'pg_default');
});

my $reads = q{SELECT count(*) || ' ' || sum(stream_version) FROM event_store.read_stream('acct-1')};
my $before = $node->safe_psql('postgres', $reads);
is($before, '20 210', 'acct-1 reads 20 events');

# nobody locks the range table (and its TOAST table) and keeps the lock
my $holder = $node->background_psql('postgres', on_error_stop => 0, extra_params => [ '-U', 'nobody' ]);
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->query_safe(q{BEGIN});
$holder->query_safe(q{PREPARE hold AS SELECT * FROM event_store.events_archive_1});
is( $node->safe_psql('postgres', qq{
    SELECT count(*) FROM pg_locks l
     WHERE l.relation = 'event_store.events_archive_1'::regclass AND l.pid = $holder_pid AND l.granted}),
	'1', 'a role without privileges on the tables holds a lock on the range table');

# with lock_timeout, the move gives up with 55P03 and moves nothing
my ($ret, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '200ms';\n\\set VERBOSITY sqlstate\nSELECT event_store.archive_events(41, 'cold')");
like($err, qr/55P03/, 'the move gives up at lock_timeout: 55P03');
is( $node->safe_psql('postgres', q{
    SELECT coalesce(t.spcname, 'pg_default') FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
     WHERE c.oid = 'event_store.events_archive_1'::regclass}),
	'pg_default', '... and the range stays where it was');

# without it, the archiver waits ...
my $archiver = $node->background_psql('postgres', on_error_stop => 0);
my $archiver_pid = $archiver->query_safe('SELECT pg_backend_pid()');
$archiver->query_until(qr/started/, qq{\\echo started\nSELECT event_store.archive_events(41, 'cold');\n});
ok( $node->poll_query_until('postgres', qq{
    SELECT state = 'active' AND wait_event IS NOT NULL FROM pg_stat_activity WHERE pid = $archiver_pid}),
	'the archiver waits for the lock');

# ... and the readers go on meanwhile (a deadline, not a sleep: blocked
# behind the archiver's lock request, they would time out)
($ret, $out, $err) = $node->psql('postgres', "SET statement_timeout = '10s';\n$reads");
is($out, $before, 'read_stream goes on while the archiver waits') or diag($err);
($ret, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '10s';\nSELECT count(*) FROM event_store.read_all(0, NULL)");
is($out, '100', 'read_all goes on while the archiver waits') or diag($err);

# the holder lets go: the move goes through
$holder->query_safe(q{ROLLBACK});
ok( $node->poll_query_until('postgres', q{
    SELECT count(*) = 5 AND bool_and(t.spcname IS NOT DISTINCT FROM 'cold')
      FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
     WHERE c.relname LIKE 'events_archive_1%' AND c.relnamespace = 'event_store'::regnamespace}),
	'the range and its four indexes moved to cold once the lock was released');
is($node->safe_psql('postgres', $reads), $before, 'acct-1 reads the same events');

# a waiting archiver can be cancelled
$holder->query_safe(q{BEGIN});
$holder->query_safe(q{PREPARE hold2 AS SELECT * FROM event_store.events_archive_1});
$archiver->query_until(qr/again/, qq{\\echo again\nSELECT event_store.archive_events(41, 'pg_default');\n});
ok( $node->poll_query_until('postgres', qq{
    SELECT state = 'active' AND wait_event IS NOT NULL AND query LIKE '%pg_default%'
      FROM pg_stat_activity WHERE pid = $archiver_pid}),
	'the archiver waits again');
$node->safe_psql('postgres', "SELECT pg_cancel_backend($archiver_pid)");
ok( $node->poll_query_until('postgres', qq{
    SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $archiver_pid}),
	'a waiting archiver is cancelled');
$holder->query_safe(q{ROLLBACK});
is($node->safe_psql('postgres', $reads), $before, 'acct-1 still reads the same events');

# moving two ranges while the second is locked: the archiver holds no lock
# of the first meanwhile, so the holder itself can still read the store
# (were the first range locked, the holder would wait for the archiver and
# the archiver for the holder, a deadlock nobody detects: the archiver
# does not queue)
$node->safe_psql('postgres', q{SELECT event_store.archive_events(81, 'pg_default')});
is( $node->safe_psql('postgres', q{
    SELECT string_agg(relation || '@' || coalesce(t.spcname, 'pg_default'), ' ' ORDER BY first_position)
      FROM event_store.archived_ranges r JOIN pg_class c ON c.oid = ('event_store.' || r.relation)::regclass
      LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace}),
	'events_archive_1@pg_default events_archive_41@pg_default', 'two ranges in pg_default');
$holder->query_safe(q{BEGIN});
$holder->query_safe(q{PREPARE hold3 AS SELECT * FROM event_store.events_archive_41});
$archiver->query_until(qr/both/, qq{\\echo both\nSELECT event_store.archive_events(81, 'cold');\n});
ok( $node->poll_query_until('postgres', qq{
    SELECT state = 'active' AND wait_event IS NOT NULL AND query LIKE '%81, ''cold''%'
      FROM pg_stat_activity WHERE pid = $archiver_pid}),
	'the archiver waits for the second range');
is( $node->safe_psql('postgres', qq{
    SELECT count(*) FROM pg_locks WHERE pid = $archiver_pid AND mode = 'AccessExclusiveLock'
       AND relation IN ('event_store.events_archive_1'::regclass, 'event_store.events_archive_41'::regclass)}),
	'0', '... holding no lock of either range meanwhile');
$holder->query_safe(q{SET statement_timeout = '10s'});
is($holder->query_safe($reads), $before, 'the holder of the lock reads the store meanwhile');
$holder->query_safe(q{ROLLBACK});
ok( $node->poll_query_until('postgres', q{
    SELECT count(*) = 10 AND bool_and(t.spcname IS NOT DISTINCT FROM 'cold')
      FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
     WHERE c.relname ~ '^events_archive_(1|41)(_|$)' AND c.relnamespace = 'event_store'::regnamespace}),
	'both ranges moved once the lock was released');
is($node->safe_psql('postgres', $reads), $before, 'acct-1 reads the same events');

# a lock on archived_ranges (a prepared INSERT takes ROW EXCLUSIVE) makes
# archive_events() wait in the queue of that table, where the readers and
# appenders (ACCESS SHARE at most) do not queue behind it
$holder->query_safe(q{RESET statement_timeout});
$holder->query_safe(q{BEGIN});
$holder->query_safe(q{PREPARE hold4 AS INSERT INTO event_store.archived_ranges VALUES (0, 1, 'x')});
$archiver->query_until(qr/registry/, qq{\\echo registry\nSELECT event_store.archive_events(event_store.head_position() + 1, 'cold');\n});
ok( $node->poll_query_until('postgres', qq{
    SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $archiver_pid}),
	'the archiver waits for the lock of archived_ranges');
($ret, $out, $err) = $node->psql('postgres', "SET statement_timeout = '10s';\n$reads");
is($out, $before, 'read_stream goes on meanwhile') or diag($err);
($ret, $out, $err) = $node->psql('postgres',
	"SET statement_timeout = '10s';\nSELECT event_store.append('acct-1', '{\"type\": \"T\"}', 20)");
is($out, '21', 'an append goes on meanwhile') or diag($err);
$holder->query_safe(q{ROLLBACK});
ok( $node->poll_query_until('postgres', q{SELECT count(*) = 3 FROM event_store.archived_ranges}),
	'the archiver makes its range once the lock is released');
is($node->safe_psql('postgres', $reads), '21 231', 'acct-1 reads every event');

$holder->quit;
$archiver->quit;
$node->stop;
done_testing();
