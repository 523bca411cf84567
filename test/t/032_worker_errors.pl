# The database worker survives the errors of its units of work, and
# retention removes events in bounded batches.
#
#   (a) retention that fails (a trigger refuses every DELETE on the events)
#       is logged as a warning with its context (the unit and the database)
#       and retried with a backoff that doubles; the worker keeps its pid and
#       its async projection keeps applying new events meanwhile;
#   (b) once the cause is gone, the next attempt succeeds (logged), still in
#       the same worker;
#   (c) retention of streams with more events than one batch (10,000)
#       removes them all, by the worker and by enforce_retention();
#   (d) a query cancel is not swallowed: it ends the worker, and the
#       launcher starts a new one that projects.
#
# Every wait is a poll with a deadline (poll_query_until, wait_for_log),
# never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('worker_errors', q{
event_store.naptime = '200ms'
event_store.retention_interval = '200ms'
});

# Wait (up to the test modules' default timeout) until $sql returns "t".
sub wait_for
{
	my ($sql, $what) = @_;
	ok($node->poll_query_until('postgres', $sql), $what);
}

# The pid of the event_store worker of database postgres ('' if none).
sub worker_pid
{
	return $node->safe_psql(
		'postgres', q{
SELECT coalesce(string_agg(pid::text, ','), '')
  FROM pg_stat_activity
 WHERE backend_type = 'event_store worker' AND datname = 'postgres'
});
}

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION event_store;
CREATE TABLE applied (event_id uuid PRIMARY KEY);
CREATE FUNCTION apply_event(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO applied VALUES (e.event_id) $$;
SELECT event_store.create_projection('counter', 'apply_event(event_store.event)', mode => 'async');
});
# (retention removes events from the store, not from the read model)
my $caught_up = q{
SELECT s.state = 'running' AND s.lag_events = 0 AND s.position = event_store.head_position()
   AND NOT EXISTS (SELECT FROM event_store.events e
                    WHERE NOT EXISTS (SELECT FROM applied a WHERE a.event_id = e.event_id))
  FROM event_store.projection_status s WHERE s.name = 'counter'
};
wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity
            WHERE backend_type = 'event_store worker' AND datname = 'postgres'},
	'a worker runs for database postgres');
my $pid = worker_pid();
like($pid, qr/^\d+$/, 'one worker pid');

#
# (a) failing retention: logged with its context, retried with backoff, the
# worker lives on and projects
#
$node->safe_psql(
	'postgres', q{
CREATE FUNCTION refuse_delete() RETURNS trigger
LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'deleting events refused by the test'; END $$;
CREATE TRIGGER refuse_delete BEFORE DELETE ON event_store.events
    FOR EACH ROW EXECUTE FUNCTION refuse_delete();
});
my $log_offset = -s $node->logfile;
$node->safe_psql(
	'postgres', q{
SELECT event_store.append('kept-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick')) FROM generate_series(1, 10)));
SELECT event_store.set_stream_retention('kept-1', max_count => 3);
});
$node->wait_for_log(
	qr/WARNING:  deleting events refused by the test\n(?:.*\n)*?\tevent_store worker: retention in database "postgres"\n/,
	$log_offset);
ok(1, 'the failure of retention is logged as a warning with the unit and the database');
$node->wait_for_log(
	qr/event_store worker: retention in database "postgres" failed \(2 in a row\), next attempt in 2000 ms/,
	$log_offset);
ok(1, 'it is retried, after a backoff that doubles');
is(worker_pid(), $pid, 'the worker keeps its pid');
$node->safe_psql('postgres',
	q{SELECT event_store.append('order-' || i, '{"type": "OrderPlaced"}') FROM generate_series(1, 5) i});
wait_for($caught_up, 'the async projection applies new events while retention fails');
is($node->safe_psql('postgres', q{SELECT count(*) FROM event_store.events WHERE stream_id = 'kept-1'}),
	'10', 'and retention removed nothing');
is(worker_pid(), $pid, 'still the same worker');

#
# (b) the cause gone, retention succeeds on its next attempt
#
$node->safe_psql('postgres', 'DROP TRIGGER refuse_delete ON event_store.events');
wait_for(q{SELECT string_agg(stream_version::text, ',' ORDER BY stream_version) = '8,9,10'
             FROM event_store.events WHERE stream_id = 'kept-1'},
	'retention succeeds once the trigger is gone');
$node->wait_for_log(
	qr/event_store worker: retention in database "postgres" succeeded again after \d+ failures/,
	$log_offset);
ok(1, 'its recovery is logged');
is(worker_pid(), $pid, 'by the same worker');
$node->safe_psql('postgres', q{SELECT event_store.append('order-x', '{"type": "OrderPlaced"}')});
wait_for($caught_up, 'which still projects');

#
# (c) more events than one batch
#
$node->safe_psql(
	'postgres', q{
SELECT event_store.append('big-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick')) FROM generate_series(1, 25000)));
SELECT event_store.set_stream_retention('big-1', max_count => 2);
});
wait_for(q{SELECT string_agg(stream_version::text, ',' ORDER BY stream_version) = '24999,25000'
             FROM event_store.events WHERE stream_id = 'big-1'},
	'the worker removes 24,998 events of a stream, more than two batches');
is( $node->safe_psql(
		'postgres', q{
BEGIN;
SELECT event_store.append('big-2', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick')) FROM generate_series(1, 20001)));
SELECT event_store.set_stream_retention('big-2', max_count => 1);
SELECT event_store.enforce_retention();
COMMIT;
SELECT count(*) FROM event_store.events WHERE stream_id = 'big-2';
}),
	"20001\n\n20000\n1",
	'enforce_retention() removes 20,000 events (two full batches and an empty one) in its transaction');
wait_for($caught_up, 'the projection caught up with all of it');
is(worker_pid(), $pid, 'the same worker all along');

#
# (d) a query cancel ends the worker; a new one takes over
#
is($node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)"), 't', 'pg_cancel_backend of the worker');
wait_for(qq{SELECT count(*) = 1 FROM pg_stat_activity
             WHERE backend_type = 'event_store worker' AND datname = 'postgres' AND pid <> $pid},
	'the cancel ended the worker; a new one runs');
$node->safe_psql('postgres', q{SELECT event_store.append('order-y', '{"type": "OrderPlaced"}')});
wait_for($caught_up, 'and projects');

$node->stop;
done_testing();
