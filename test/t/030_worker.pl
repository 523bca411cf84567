# The background worker: one launcher per cluster and one worker per
# database with the extension.
#
#   (a) an async projection advances on its own after appends;
#   (b) two databases with the extension are both served, one worker each
#       (pg_stat_activity: backend_type "event_store worker", and one
#       "event_store launcher"); a database without it gets no worker;
#   (c) a worker ended by pg_terminate_backend, or killed (which makes the
#       postmaster restart every process), is replaced and keeps projecting;
#   (d) a failing async projection becomes "failed" after
#       event_store.projection_max_attempts (2 here), with its error and the
#       position of the last event applied, while another async projection
#       keeps advancing;
#   (e) LISTEN event_store gets a notification whose payload is the head
#       position after an append;
#   (f) DROP EXTENSION makes the database's worker exit, CREATE EXTENSION
#       brings one back;
#   (g) event_store.worker_enabled = off (reload) stops the workers, async
#       projections then wait; on again, workers come back and catch up;
#   (h) appends wake the worker: with event_store.naptime at an hour, an
#       append is still applied at once;
#   (i) the worker enforces retention (max_count) on its own;
#   (j) a slow per-event handler is applied in transactions of about the
#       worker's batch deadline, not in one long one.
#
# Every wait is a poll with a deadline (poll_query_until), never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/030_worker.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('worker', q{
event_store.naptime = '200ms'
event_store.projection_max_attempts = 2
restart_after_crash = on
});

# Wait (up to the test modules' default timeout) until $sql returns "t".
sub wait_for
{
	my ($db, $sql, $what) = @_;
	ok($node->poll_query_until($db, $sql), $what);
}

# The pids of the event_store workers of a database, sorted.
sub worker_pids
{
	my ($db) = @_;
	return $node->safe_psql(
		'postgres', qq{
SELECT coalesce(string_agg(pid::text, ',' ORDER BY pid), '')
  FROM pg_stat_activity
 WHERE backend_type = 'event_store worker' AND datname = '$db'
});
}

# A read model and an async projection counting every event into it, by
# event id (a second application of an event would violate the key).
my $read_model = q{
CREATE EXTENSION event_store;
CREATE TABLE applied (event_id uuid PRIMARY KEY, position bigint NOT NULL);
CREATE FUNCTION apply_event(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO applied VALUES (e.event_id, e.global_position) $$;
SELECT event_store.create_projection('counter', 'apply_event(event_store.event)', mode => 'async');
};

# Is the projection caught up with every event, each applied once?
sub caught_up_sql
{
	my ($name) = @_;
	return qq{
SELECT s.state = 'running' AND s.lag_events = 0 AND s.position = event_store.head_position()
   AND (SELECT count(*) FROM applied) = (SELECT count(*) FROM event_store.events)
   AND NOT EXISTS (SELECT FROM event_store.events e
                    WHERE NOT EXISTS (SELECT FROM applied a WHERE a.event_id = e.event_id))
  FROM event_store.projection_status s WHERE s.name = '$name'
};
}

my $append_sql = q{
SELECT event_store.append('order-' || i, jsonb_build_array(
         jsonb_build_object('type', 'OrderPlaced', 'data', jsonb_build_object('i', i)),
         jsonb_build_object('type', 'ItemAdded')))
  FROM generate_series(1, 5) i
};

#
# (a) an async projection advances on its own
#
$node->safe_psql('postgres', $read_model);
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_store launcher'},
	'one launcher runs');
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'postgres'},
	'a worker runs for database postgres');

$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'),
	'the async projection applies the appended events without run_projections()');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied'),
	'10', 'ten events applied');

$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'and the next appends too');
is($node->safe_psql('postgres', 'SELECT count(*) FROM applied'),
	'20', 'twenty events applied');

# a trigger-function handler: the worker hands it its batches as the
# transition table new_events
$node->safe_psql(
	'postgres', q{
CREATE TABLE per_stream (stream_id text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION count_per_stream() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO per_stream AS p SELECT stream_id, count(*) FROM new_events GROUP BY stream_id
    ON CONFLICT (stream_id) DO UPDATE SET n = p.n + EXCLUDED.n;
    RETURN NULL;
END $$;
SELECT event_store.create_projection('per_stream', 'count_per_stream()', mode => 'async');
});
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter') . q{ AND (SELECT lag_events = 0
    FROM event_store.projection_status WHERE name = 'per_stream')},
	'the worker applies a trigger-function handler too');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (SELECT stream_id, count(*) AS n FROM event_store.events GROUP BY 1) e
  FULL JOIN per_stream p USING (stream_id) WHERE e.n IS DISTINCT FROM p.n}),
	'0', 'its read model counts every event of every stream once');
$node->safe_psql('postgres', q{SELECT event_store.drop_projection('per_stream');
                               DROP TABLE per_stream; DROP FUNCTION count_per_stream});

#
# (b) two databases, one worker each; none for a database without the extension
#
$node->safe_psql('postgres', 'CREATE DATABASE db2');
$node->safe_psql('postgres', 'CREATE DATABASE plain');
$node->safe_psql('db2', $read_model);
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'db2'},
	'a worker runs for database db2 after CREATE EXTENSION');
$node->safe_psql('db2', $append_sql);
wait_for('db2', caught_up_sql('counter'), 'the projection of db2 advances on its own');
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'and the one of postgres still does');
wait_for('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'plain'},
	'no worker stays in a database without the extension');
is( $node->safe_psql(
		'postgres', q{
SELECT string_agg(datname || ':' || n, ' ' ORDER BY datname)
  FROM (SELECT datname, count(*) AS n FROM pg_stat_activity
         WHERE backend_type = 'event_store worker' GROUP BY datname) w
}),
	'db2:1 postgres:1',
	'exactly one worker per database with the extension');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store launcher'}),
	'1',
	'still one launcher');

#
# (c) a terminated or killed worker is replaced and keeps projecting
#
my $old_pid = worker_pids('postgres');
like($old_pid, qr/^\d+$/, 'one worker pid for database postgres');
is($node->safe_psql('postgres', "SELECT pg_terminate_backend($old_pid)"),
	't', 'pg_terminate_backend of the worker');
wait_for('postgres',
	qq{SELECT count(*) = 1 FROM pg_stat_activity
        WHERE backend_type = 'event_store worker' AND datname = 'postgres' AND pid <> $old_pid},
	'a new worker replaces the terminated one');
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'the new worker projects');

$old_pid = worker_pids('db2');
like($old_pid, qr/^\d+$/, 'one worker pid for database db2');
kill 'KILL', $old_pid;
wait_for('postgres',
	qq{SELECT count(*) = 1 FROM pg_stat_activity
        WHERE backend_type = 'event_store worker' AND datname = 'db2' AND pid <> $old_pid},
	'after a worker was killed (and the server reinitialised), db2 has a worker again');
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'postgres'},
	'and so has postgres');
$node->safe_psql('db2', $append_sql);
wait_for('db2', caught_up_sql('counter'), 'the projection of db2 advances again');
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'the projection of postgres advances again');

#
# (d) a failing async projection becomes failed; another keeps advancing
#
$node->safe_psql(
	'postgres', q{
CREATE TABLE fragile_applied (position bigint PRIMARY KEY);
CREATE FUNCTION fragile(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	IF e.event_type = 'Poison' THEN
		RAISE EXCEPTION 'poisoned at %', e.global_position;
	END IF;
	INSERT INTO fragile_applied VALUES (e.global_position);
END
$$;
SELECT event_store.create_projection('fragile', 'fragile(event_store.event)', mode => 'async');
});
wait_for(
	'postgres', q{
SELECT state = 'running' AND lag_events = 0
   AND (SELECT count(*) FROM fragile_applied) = (SELECT count(*) FROM event_store.events)
  FROM event_store.projection_status WHERE name = 'fragile'
}, 'the new projection replays the history');
$node->safe_psql('postgres',
	q{SELECT event_store.append('order-p', '[{"type": "OrderPlaced"}, {"type": "ItemAdded"}]')});
my $last_good = $node->safe_psql('postgres', 'SELECT event_store.head_position()');
$node->safe_psql('postgres',
	q{SELECT event_store.append('order-p', '[{"type": "Poison"}, {"type": "ItemAdded"}]')});
my $poison = $node->safe_psql('postgres',
	q{SELECT global_position FROM event_store.events WHERE event_type = 'Poison'});
wait_for('postgres',
	q{SELECT state = 'failed' FROM event_store.projection_status WHERE name = 'fragile'},
	'the failing projection becomes failed');
is( $node->safe_psql(
		'postgres',
		q{SELECT position || ' ' || last_error FROM event_store.projection_status WHERE name = 'fragile'}),
	"$last_good poisoned at $poison",
	'its position is the last event applied, its error is recorded');
is($node->safe_psql('postgres', 'SELECT max(position) FROM fragile_applied'),
	$last_good, 'the events before the failing one were applied');
wait_for('postgres', caught_up_sql('counter'), 'the other projection passed the failing event');
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'and keeps advancing');
is( $node->safe_psql(
		'postgres',
		q{SELECT state || ' ' || position FROM event_store.projection_status WHERE name = 'fragile'}),
	"failed $last_good",
	'while the failed one stays where it stopped');
$node->safe_psql('postgres', q{SELECT event_store.drop_projection('fragile')});

#
# (e) LISTEN event_store: a notification with the head position as payload
#
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN event_store');
$node->safe_psql('postgres',
	q{SELECT event_store.append('order-n', '{"type": "OrderPlaced"}')});
my $head = $node->safe_psql('postgres', 'SELECT event_store.head_position()');
my $heard = '';
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
# psql shows the notifications it received after each command
while (time() < $deadline)
{
	$heard .= $listener->query('SELECT 1');
	last if $heard =~ /Asynchronous notification "event_store" with payload "$head" received/;
	select(undef, undef, undef, 0.1);
}
like($heard, qr/Asynchronous notification "event_store" with payload "$head" received/,
	"a notification with the head position ($head) as payload");
my @payloads = $heard =~ /with payload "(\d+)"/g;
is(scalar(grep { $_ > $head } @payloads), 0, 'no payload beyond the head');
$listener->quit;

#
# (f) DROP EXTENSION ends the worker, CREATE EXTENSION brings one back
#
$node->safe_psql('db2', 'DROP EXTENSION event_store CASCADE');
wait_for('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'db2'},
	'the worker of db2 exits after DROP EXTENSION');
is(worker_pids('postgres') ne '', 1, 'the worker of postgres is still there');
# (the handler went with the extension: its argument type was dropped)
$node->safe_psql('db2', 'DROP TABLE applied');
$node->safe_psql('db2', $read_model);
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'db2'},
	'CREATE EXTENSION brings a worker back to db2');
$node->safe_psql('db2', $append_sql);
wait_for('db2', caught_up_sql('counter'), 'and it projects');

#
# (g) worker_enabled off and on again
#
wait_for('postgres', caught_up_sql('counter'), 'nothing pending before the workers stop');
$node->safe_psql('postgres',
	'ALTER SYSTEM SET event_store.worker_enabled = off; SELECT pg_reload_conf()');
wait_for('postgres',
	q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'event_store worker'},
	'worker_enabled = off stops every worker');
is( $node->safe_psql(
		'postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store launcher'}),
	'1',
	'the launcher stays');
$node->safe_psql('postgres', $append_sql);
is( $node->safe_psql(
		'postgres', q{SELECT lag_events FROM event_store.projection_status WHERE name = 'counter'}),
	'10',
	'with no worker the async projection waits');

#
# (h) with naptime at an hour, only the wakeup of the appenders moves the
# worker: the worker that comes back applies what is pending in its first
# round, then the next append must wake it.
#
$node->safe_psql(
	'postgres', q{
ALTER SYSTEM SET event_store.naptime = '1h';
ALTER SYSTEM SET event_store.worker_enabled = on;
SELECT pg_reload_conf();
});
wait_for('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity
       WHERE backend_type = 'event_store worker' AND datname = 'postgres'},
	'worker_enabled = on brings the worker back');
wait_for('postgres', caught_up_sql('counter'), 'and it catches up');
is($node->safe_psql('postgres', 'SHOW event_store.naptime'), '1h', 'naptime is an hour');
$node->safe_psql('postgres', $append_sql);
wait_for('postgres', caught_up_sql('counter'), 'an append wakes the worker');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET ALL; SELECT pg_reload_conf()');

#
# (i) the worker enforces retention settings every
# event_store.retention_interval: events past max_count go, the newest
# stays, and it keeps doing so as more arrive.
#
$node->safe_psql(
	'postgres', q{
SELECT event_store.append('kept-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick')) FROM generate_series(1, 10)));
SELECT event_store.set_stream_retention('kept-1', max_count => 3);
ALTER SYSTEM SET event_store.retention_interval = '200ms';
SELECT pg_reload_conf();
});
wait_for('postgres',
	q{SELECT string_agg(stream_version::text, ',' ORDER BY stream_version) = '8,9,10'
        FROM event_store.events WHERE stream_id = 'kept-1'},
	'the worker removes the events past max_count');
$node->safe_psql('postgres',
	q{SELECT event_store.append('kept-1', '[{"type": "Tock"}, {"type": "Tock"}]', 10)});
wait_for('postgres',
	q{SELECT string_agg(stream_version::text, ',' ORDER BY stream_version) = '10,11,12'
        FROM event_store.events WHERE stream_id = 'kept-1'},
	'and keeps enforcing them as events arrive');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET ALL; SELECT pg_reload_conf()');

#
# (j) a slow per-event handler does not hold the worker's transaction open:
# the worker commits about once a second (its batch deadline), read after
# every call of such a handler, not only every 64 events.  30 calls of 100 ms
# each (the handler's own work, here pg_sleep) take 3 s, so they must be
# spread over more than one transaction.
#
$node->safe_psql('postgres', 'CREATE DATABASE slow');
$node->safe_psql(
	'slow', q{
CREATE EXTENSION event_store;
CREATE TABLE slow_applied (event_id uuid PRIMARY KEY, xid xid8 NOT NULL);
CREATE FUNCTION slow_apply(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(0.1);
    INSERT INTO slow_applied VALUES (e.event_id, pg_current_xact_id());
END $$;
SELECT event_store.create_projection('slow', 'slow_apply(event_store.event)', mode => 'async');
SELECT event_store.append('slow-1', (SELECT jsonb_agg(jsonb_build_object('type', 'Slow')) FROM generate_series(1, 30)));
});
wait_for('slow', q{SELECT count(*) = 30 FROM slow_applied}, 'the slow projection applies every event');
cmp_ok($node->safe_psql('slow', 'SELECT count(DISTINCT xid) FROM slow_applied'),
	'>=', 2, 'in more than one transaction of the worker');

$node->stop;
done_testing();
