# Sagas driven by the background worker, and sagas across a crash.
#
# With the worker enabled (event_store.naptime = 100ms) and no saga_tick()
# call from here (the worker may act between any two statements of this
# test: it only ever waits for the state it expects, or reads what no
# worker round can change, such as a saga's stream or its own claims):
#   - a local step that fails its first attempts is retried after its
#     backoff, and an external step whose worker went silent past the step
#     timeout is retried, until the saga completes;
#   - an external step whose lease expired is handed out again.
# At the end, timer steps: completed by the worker when due, with a naptime
# far longer than their delay, and across a restart.
# Then a crash (stop 'immediate') in the middle of sagas with external
# steps: every committed transition survives exactly (saga and step
# statuses, attempts, results, leases, event streams), an uncommitted one
# leaves no trace, and the sagas resume from there and end.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/040_sagas_worker.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('sagas', q{
event_store.worker_enabled = on
event_store.naptime = '100ms'
restart_after_crash = on
});

sub sql { return $node->safe_psql('postgres', $_[0]); }

sql('CREATE EXTENSION event_store');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'event_store worker'}),
	'the worker runs in the database');

sql(q{
CREATE SCHEMA tap;
-- every claim this test made, with the attempt it was handed
CREATE TABLE tap.claims (n serial PRIMARY KEY, saga_id uuid, step text, kind text,
                         attempt int, worker text);
-- claim one step (by name) for a worker, recording it; true when one was had
CREATE FUNCTION tap.claim(p_step text, p_worker text, p_lease interval DEFAULT '1 hour')
RETURNS boolean LANGUAGE sql AS $$
	WITH c AS (SELECT * FROM event_store.claim_saga_steps(p_worker, 1, ARRAY[p_step], p_lease)),
	     i AS (INSERT INTO tap.claims (saga_id, step, kind, attempt, worker)
	           SELECT saga_id, step, kind, attempt, p_worker FROM c RETURNING 1)
	SELECT count(*) = 1 FROM i
$$;
-- fails its first two calls (the counter survives the rollback of a failed call)
CREATE SEQUENCE tap.flaky_calls;
CREATE FUNCTION tap.flaky(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	n bigint := nextval('tap.flaky_calls');
BEGIN
	IF n <= 2 THEN
		RAISE EXCEPTION 'flaky call % failed', n;
	END IF;
	RETURN jsonb_build_object('flaky_call', n);
END $$;
CREATE FUNCTION tap.note(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT jsonb_build_object('noted', true) $$;
-- a saga's status and its steps, as one line
CREATE FUNCTION tap.saga(id uuid) RETURNS text
LANGUAGE sql AS $$
	SELECT s.status || ': ' || string_agg(st.name || ' ' || st.status || ' ' || st.attempts, ', ' ORDER BY st.step_no)
	  FROM event_store.sagas s JOIN event_store.saga_steps st USING (saga_id)
	 WHERE s.saga_id = id GROUP BY s.status
$$;
-- a saga's stream: event type, step and error of each event
CREATE FUNCTION tap.events(id uuid) RETURNS text
LANGUAGE sql AS $$
	SELECT string_agg(event_type || coalesce(' ' || (data ->> 'step'), '')
	                  || coalesce(' (' || (data ->> 'error') || ')', ''), ', ' ORDER BY stream_version)
	  FROM event_store.read_stream('saga-' || id)
$$;
});

# --- retries and step timeouts, driven by the worker -----------------------
#
# flaky: local, fails twice, backoff 50ms; slow: external, times out after
# 3s (a timeout is a failed attempt), retried after 10ms; finish: local.
sql(q{
SELECT event_store.define_saga('auto', $${
	"steps": [
	  {"name": "flaky", "action": "tap.flaky", "max_attempts": 4, "backoff": "50 milliseconds"},
	  {"name": "slow", "timeout": "3 seconds", "max_attempts": 3, "backoff": "10 milliseconds"},
	  {"name": "finish", "action": "tap.note"}
	]}$$);
});
my $auto = "'5a9a0000-0000-4000-8000-000000000001'";
# start_saga ran flaky once: its retries are the worker's (read before the
# commit: the worker may retry 50 ms after it)
is(sql("BEGIN;
	SELECT event_store.start_saga('auto', '{}', $auto) IS NOT NULL;
	SELECT tap.events($auto);
	COMMIT;"), "t\nSagaStarted, SagaStepFailed flaky (flaky call 1 failed)",
	'start_saga ran the first attempt of flaky, which failed, and did not retry it');

# a worker claims slow as soon as it runs, and goes silent: the timeout
# fails the attempt and the worker makes it claimable again
ok($node->poll_query_until('postgres', "SELECT tap.claim('slow', 'silent')"),
	'the worker retried flaky until it completed; slow was claimed');
is(sql("SELECT status || ' ' || attempts || ' ' || result FROM event_store.saga_steps WHERE saga_id = $auto AND name = 'flaky'"),
	'completed 3 {"flaky_call": 3}',
	'flaky completed at its third attempt');
# claimed and completed in one transaction: no timeout can come between
ok( $node->poll_query_until(
		'postgres',
		"SELECT CASE WHEN tap.claim('slow', 'diligent') "
		  . "THEN (SELECT true FROM event_store.complete_saga_step($auto, 'slow', '{\"slow\": \"done\"}')) END"),
	'after its timeout slow is handed out again (and completed)');
is(sql("SELECT string_agg(worker || ' ' || kind || ' ' || attempt, ', ' ORDER BY n) FROM tap.claims WHERE saga_id = $auto"),
	'silent action 1, diligent action 2',
	'the second claim is attempt 2');
ok( $node->poll_query_until(
		'postgres', "SELECT status FROM event_store.sagas WHERE saga_id = $auto", 'completed'),
	'the saga completed');
is(sql("SELECT tap.saga($auto)"),
	'completed: flaky completed 3, slow completed 2, finish completed 1',
	'every step completed, with its attempts');
is(sql("SELECT tap.events($auto)"),
	'SagaStarted, SagaStepFailed flaky (flaky call 1 failed), SagaStepFailed flaky (flaky call 2 failed), '
	  . 'SagaStepCompleted flaky, SagaStepFailed slow (step timed out), SagaStepCompleted slow, '
	  . 'SagaStepCompleted finish, SagaCompleted',
	'the saga stream tells the story');
is(sql("SELECT data FROM event_store.sagas WHERE saga_id = $auto"),
	'{"slow": "done", "noted": true, "flaky_call": 3}', 'the results were merged into the data');

# --- lease expiry, driven by the worker --------------------------------------
sql(q{
SELECT event_store.define_saga('leasey', '{"steps": [{"name": "job", "backoff": "10 milliseconds"}]}');
SELECT event_store.start_saga('leasey', '{"job": 7}', '5a9a0000-0000-4000-8000-000000000002');
});
my $leasey = "'5a9a0000-0000-4000-8000-000000000002'";
# (read in the claim's transaction, which holds the step until it ends)
is( sql("SELECT tap.claim('job', 'vanishing', '1 second'); "
		  . "SELECT lease_owner FROM event_store.saga_steps WHERE saga_id = $leasey"),
	"t\nvanishing", 'job claimed under a short lease, which is held');
ok($node->poll_query_until('postgres', "SELECT tap.claim('job', 'reliable')"),
	'after the lease expired job is handed out again');
is(sql("SELECT string_agg(worker || ' ' || attempt, ', ' ORDER BY n) FROM tap.claims WHERE saga_id = $leasey"),
	'vanishing 1, reliable 2', 'to another worker, as attempt 2');
is(sql("SELECT lease_owner || ' ' || (lease_expires_at > now() + interval '50 minutes') FROM event_store.saga_steps WHERE saga_id = $leasey"),
	'reliable true', 'under the new lease');
sql("SELECT event_store.complete_saga_step($leasey, 'job')");
is(sql("SELECT tap.saga($leasey)"), 'completed: job completed 2', 'the saga completed');
is(sql("SELECT tap.events($leasey)"),
	'SagaStarted, SagaStepFailed job (lease expired), SagaStepCompleted job, SagaCompleted',
	'the expired lease is a failed attempt in the stream');

# --- a crash in the middle of sagas ----------------------------------------------
#
# prep (local), then pack and label in parallel (external), then ship
# (external).  No timers can fire during this part: no timeouts, leases of
# an hour, retries an hour away.
sql(q{
SELECT event_store.define_saga('crashy', $${
	"steps": [
	  {"name": "prep", "action": "tap.note"},
	  {"name": "pack", "group": 2, "backoff": "1 hour"},
	  {"name": "label", "group": 2},
	  {"name": "ship", "group": 3}
	]}$$);
SELECT count(event_store.start_saga('crashy', jsonb_build_object('n', i),
                                    ('5a9a0000-0000-4000-8000-0000000001' || lpad(i::text, 2, '0'))::uuid))
  FROM generate_series(1, 10) i;
});
sub cid { return sprintf("'5a9a0000-0000-4000-8000-0000000001%02d'", $_[0]); }
sub complete { sql("SELECT event_store.complete_saga_step($_[0], '$_[1]', jsonb_build_object('$_[1]', 'ok'))"); }

# claim everything claimable (pack and label of all ten)
is(sql(q{SELECT count(*) FROM event_store.claim_saga_steps('pre', 100, lease => '1 hour')}),
	'20', 'pack and label of ten sagas claimed');
complete(cid($_), 'pack') for 1 .. 6;
complete(cid($_), 'label') for 1 .. 4;
is(sql(q{SELECT count(*) FROM event_store.claim_saga_steps('pre', 100, lease => '1 hour')}),
	'4', 'ship of sagas 1-4 claimed');
complete(cid($_), 'ship') for 1 .. 2;
# saga 9: pack failed, retried in an hour; saga 10: ship... not reached:
# label failed for good, so pack and label are compensated (externally)
sql("SELECT event_store.fail_saga_step(" . cid(9) . ", 'pack', 'jammed')");
complete(cid(10), 'pack');
sql("SELECT event_store.fail_saga_step(" . cid(10) . ", 'label', 'no ink', false)");
is(sql(q{SELECT string_agg(step || ' ' || kind, ', ') FROM event_store.claim_saga_steps('pre', 100, lease => '1 hour')}),
	'pack compensation', "saga 10's pack compensation claimed");

# everything about the sagas, as text
my $dump_sql = q{
SELECT string_agg(format('%s %s %s | %s', right(s.saga_id::text, 2), s.status, s.data,
                         (SELECT string_agg(format('%s %s a%s c%s %s %s %s', name, status, attempts, comp_attempts,
                                                   result, lease_owner, lease_expires_at), '; ' ORDER BY step_no)
                            FROM event_store.saga_steps WHERE saga_id = s.saga_id))
                  || ' | ' || (SELECT string_agg(event_type || ' ' || coalesce(data ->> 'step', ''), ', ' ORDER BY stream_version)
                                 FROM event_store.read_stream('saga-' || s.saga_id)),
                  E'\n' ORDER BY s.saga_id)
  FROM event_store.sagas s WHERE s.saga_type = 'crashy'};
my $before = sql($dump_sql);
is(sql(q{SELECT string_agg(right(saga_id::text, 2) || ' ' || status, ', ' ORDER BY saga_id) FROM event_store.sagas WHERE saga_type = 'crashy'}),
	'01 completed, 02 completed, 03 running, 04 running, 05 running, 06 running, 07 running, 08 running, 09 running, 10 compensating',
	'the sagas before the crash');

# an uncommitted completion (saga 8's pack) is in flight at the crash
my ($in, $out, $err) = ('', '', '');
my $h = IPC::Run::start(
	[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
	'<' => \$in, '>' => \$out, '2>' => \$err);
$in .= "BEGIN;\nSELECT event_store.complete_saga_step(" . cid(8) . ", 'pack');\nSELECT pg_sleep(600);\n";
$h->pump_nb;
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600);'}),
	'a completion is in flight');

$node->stop('immediate');
$h->finish;    # psql ends when the server goes away
$node->start;
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/),
	'the restart ran crash recovery');
ok( $node->poll_query_until(
		'postgres',
		q{SELECT count(*) = 1 FROM pg_stat_activity WHERE application_name = 'event_store worker'}),
	'the worker runs again');

my $after = sql($dump_sql);
is($after, $before, 'every saga, step and saga stream is exactly as committed before the crash');
is(sql("SELECT tap.saga(" . cid(8) . ")"),
	'running: prep completed 1, pack running 1, label running 1, ship pending 0',
	'the uncommitted completion left no trace');

# resume: the workers that held claims report them now
complete(cid($_), 'pack') for 7 .. 8;
complete(cid($_), 'label') for 5 .. 8;
complete(cid($_), 'ship') for 3 .. 4;
complete(cid(9), 'label');
is(sql(q{SELECT string_agg(right(saga_id::text, 2) || ' ' || step, ', ' ORDER BY saga_id) FROM event_store.claim_saga_steps('post', 100)}),
	'05 ship, 06 ship, 07 ship, 08 ship', 'the next steps are claimable after the restart');
complete(cid($_), 'ship') for 5 .. 8;
# saga 9's retry was due in an hour: make it due now, the worker picks it up
sql("UPDATE event_store.saga_steps SET next_attempt_at = now() WHERE saga_id = " . cid(9) . " AND name = 'pack'");
ok($node->poll_query_until('postgres', "SELECT tap.claim('pack', 'post')"),
	"the worker ran saga 9's due retry of pack");
complete(cid(9), 'pack');
ok(sql("SELECT tap.claim('ship', 'post')") eq 't', "saga 9's ship claimed");
complete(cid(9), 'ship');
sql("SELECT event_store.complete_saga_step(" . cid(10) . ", 'pack')");

ok( $node->poll_query_until(
		'postgres',
		q{SELECT string_agg(status, ',' ORDER BY saga_id) FROM event_store.sagas WHERE saga_type = 'crashy'},
		'completed,completed,completed,completed,completed,completed,completed,completed,completed,compensated'),
	'every saga ended: nine completed, one compensated');
is(sql("SELECT tap.saga(" . cid(9) . ")"),
	'completed: prep completed 1, pack completed 2, label completed 1, ship completed 1',
	'saga 9 completed with the retried pack');
is(sql("SELECT tap.saga(" . cid(10) . ")"),
	'compensated: prep compensated 1, pack compensated 1, label failed 1, ship pending 0',
	'saga 10 compensated');
is( sql(q{
	SELECT count(*) FROM (
	    SELECT stream_id, event_type, data ->> 'step' FROM event_store.events
	     WHERE stream_id LIKE 'saga-%' AND event_type IN ('SagaStepCompleted', 'SagaStepCompensated')
	     GROUP BY 1, 2, 3 HAVING count(*) > 1) d}),
	'0', 'no step completed or compensated twice');
is( sql(q{
	SELECT count(*) FROM event_store.sagas s
	 WHERE event_store.stream_version('saga-' || s.saga_id)
	    <> (SELECT count(*) FROM event_store.events WHERE stream_id = 'saga-' || s.saga_id)}),
	'0', 'saga streams have no gaps');

# Timer steps, driven by the worker: with a naptime of a minute, the worker
# still completes a timer step when it is due (a timer due before its next
# round wakes it at commit, and it waits for the due time on its latch), not
# before; a timer survives a restart.
$node->append_conf('postgresql.conf', "event_store.naptime = '60s'");
$node->reload;
sql(q{
SELECT event_store.define_saga('timed', '{"steps": [{"name": "wait", "delay": "2 seconds"}, {"name": "note", "action": "tap.note"}]}');
});
sql(q{SELECT event_store.start_saga('timed', '{}', '7173e400-0000-4000-8000-000000000001')});
ok( $node->poll_query_until(
		'postgres',
		q{SELECT status = 'completed' FROM event_store.sagas WHERE saga_id = '7173e400-0000-4000-8000-000000000001'}),
	'the worker completed the timer step and the saga');
is( sql(q{
	SELECT st.due_at - s.started_at = interval '2 seconds', st.updated_at >= st.due_at,
	       st.updated_at < st.due_at + interval '20 seconds'
	  FROM event_store.saga_steps st JOIN event_store.sagas s USING (saga_id)
	 WHERE st.name = 'wait' AND s.saga_id = '7173e400-0000-4000-8000-000000000001'}),
	't|t|t', 'when it was due, long before the next naptime round');
# a timer across a restart
sql(q{SELECT event_store.start_saga('timed', '{}', '7173e400-0000-4000-8000-000000000002')});
$node->restart;
ok( $node->poll_query_until(
		'postgres',
		q{SELECT status = 'completed' FROM event_store.sagas WHERE saga_id = '7173e400-0000-4000-8000-000000000002'}),
	'a timer step started before a restart completes after it');
is( sql(q{SELECT string_agg(status, ' ' ORDER BY step_no) FROM event_store.saga_steps
           WHERE saga_id = '7173e400-0000-4000-8000-000000000002'}),
	'completed completed', 'its steps completed once');

$node->stop;
done_testing();
