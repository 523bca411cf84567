# A partitioned async projection applied by the workers while everything
# else happens to it.  Its handler refuses an event applied twice or one
# after a gap in its stream (the stream would be held back, and the checks
# below see it), and the read model is compared with the events.
#
#   (a) with event_store.max_workers 1, 2 and 4, with appends going on, and
#       run_projections() called in a loop by another session: every event
#       applied once, each stream in order;
#   (b) one partition far behind (back at 0, its streams' read model gone),
#       the others at the head: the workers bring it back, nothing twice, and
#       wait_for_projection() returns once it caught up;
#   (c) rebuild_projection (with a reset function) while the workers apply
#       it and appends go on: the read model starts again, exactly once;
#   (d) pause_projection while the workers apply it returns once their
#       batches ended: nothing is applied after it returned, until
#       resume_projection brings in the rest;
#   (e) the worker killed (SIGKILL) in the middle of a batch: the server
#       restarts (restart_after_crash), the launcher starts the worker again,
#       and what the killed batch applied is applied once.
#
# Every wait is a poll with a deadline (poll_query_until), never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('projconc', q{
event_store.naptime = '200ms'
event_store.projection_max_attempts = 2
event_store.max_workers = 1
restart_after_crash = on
});

sub wait_for
{
	my ($sql, $what) = @_;
	ok($node->poll_query_until('postgres', $sql), $what);
}

# a session running in the background: its harness
sub background
{
	my ($sql) = @_;
	my ($out, $err) = ('', '');
	my $h = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err);
	return [ $h, \$out, \$err ];
}

sub finish
{
	my ($bg, $what) = @_;
	$bg->[0]->finish;
	is($bg->[0]->result(0), 0, $what) or diag(${ $bg->[2] });
}

# appends, each in a transaction of its own, to the streams conc-0 .. conc-29
sub appends
{
	my ($n) = @_;
	return background(qq{
DO \$\$ BEGIN
    FOR i IN 1..$n LOOP
        PERFORM event_store.append('conc-' || (i % 30), '{"type": "More"}');
        COMMIT;
    END LOOP;
END \$\$});
}

# every event applied once, in order, nothing held, the projection at the head
sub check_exact
{
	my ($what) = @_;
	wait_for(q{
SELECT (SELECT count(*) FROM seen) = (SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'conc-%')
   AND (SELECT position = event_store.head_position() FROM event_store.projection_status WHERE name = 'conc')},
		"$what: every event applied");
	is( $node->safe_psql('postgres', q{
SELECT count(*) FILTER (WHERE e.global_position IS DISTINCT FROM s.position) AS not_the_event,
       (SELECT count(*) FROM event_store.subscription_streams WHERE subscription = 'conc') AS held,
       (SELECT state || ',' || attempts FROM event_store.projections WHERE name = 'conc') AS state
  FROM seen s LEFT JOIN event_store.events e
    ON e.stream_id = s.stream_id AND e.stream_version = s.stream_version}),
		'0|0|running,0', "$what: once each, in order, nothing held back");
}

$node->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE TABLE seen (stream_id text, stream_version bigint, position bigint,
                   PRIMARY KEY (stream_id, stream_version));
CREATE TABLE resets (at timestamptz DEFAULT now());
CREATE TABLE pace (secs float8 NOT NULL);
INSERT INTO pace VALUES (0.001);
CREATE FUNCTION strict_apply(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM seen WHERE stream_id = e.stream_id AND stream_version = e.stream_version) THEN
        RAISE EXCEPTION 'repeat of % %', e.stream_id, e.stream_version;
    END IF;
    IF e.stream_version > 1 AND NOT EXISTS (SELECT 1 FROM seen
                                             WHERE stream_id = e.stream_id AND stream_version = e.stream_version - 1) THEN
        RAISE EXCEPTION 'gap before % %', e.stream_id, e.stream_version;
    END IF;
    -- slow enough for batches to be caught in the middle
    PERFORM pg_catalog.pg_sleep((SELECT secs FROM pace));
    INSERT INTO seen VALUES (e.stream_id, e.stream_version, e.global_position);
END $$;
CREATE FUNCTION strict_reset() RETURNS void LANGUAGE sql AS $$
    DELETE FROM seen;
    INSERT INTO resets DEFAULT VALUES;
$$;
SELECT count(event_store.append('conc-' || (i % 30), '{"type": "Added"}')) FROM generate_series(1, 1500) i;
SELECT event_store.create_projection('conc', 'strict_apply(event_store.event)', categories => '{conc}',
                                     mode => 'async', partitions => 8, on_error => 'park',
                                     reset => 'strict_reset()');
});

#
# (a) max_workers 1, 2, 4, appends going on, run_projections() alongside
#
for my $workers (1, 2, 4)
{
	$node->append_conf('postgresql.conf', "event_store.max_workers = $workers\n");
	$node->reload;
	my $app = appends(300);
	my $manual = background(q{
DO $$ BEGIN
    FOR i IN 1..40 LOOP
        PERFORM event_store.run_projections(50);
        COMMIT;
    END LOOP;
END $$});
	finish($app, "max_workers $workers: the appends");
	finish($manual, "max_workers $workers: run_projections() alongside the workers");
	check_exact("max_workers $workers");
	wait_for(qq{SELECT count(*) = $workers - 1 FROM pg_stat_activity WHERE backend_type = 'event_store helper'},
		"max_workers $workers: the worker and its helpers");
}

#
# (b) one partition far behind, the others at the head
#
$node->safe_psql('postgres', q{
SELECT event_store.create_subscription('map', categories => '{conc}', partitions => 8);
CREATE TABLE map AS SELECT DISTINCT stream_id, partition FROM event_store.claim_events('map', 'me', 10000);
SELECT event_store.drop_subscription('map');
});
my $app = appends(300);
$node->safe_psql('postgres', q{
BEGIN;
SELECT 1 FROM event_store.subscription_partitions
 WHERE subscription = 'conc' AND partition = (SELECT partition FROM map WHERE stream_id = 'conc-1') FOR UPDATE;
UPDATE event_store.subscription_partitions SET position = 0
 WHERE subscription = 'conc' AND partition = (SELECT partition FROM map WHERE stream_id = 'conc-1');
DELETE FROM seen WHERE stream_id IN (SELECT stream_id FROM map
                                      WHERE partition = (SELECT partition FROM map WHERE stream_id = 'conc-1'));
COMMIT;
});
finish($app, 'one partition far behind: the appends');
# woken at the workers' commits; the lowest partition's position decides
is( $node->safe_psql('postgres', q{
SELECT event_store.wait_for_projection('conc', event_store.head_position(), '3 minutes')}),
	't', 'one partition far behind: wait_for_projection returns once it caught up');
check_exact('one partition far behind');

#
# (c) rebuild while the workers apply it, appends going on
#
# (paused while the first appends commit, so that the workers have a backlog
# however fast they keep up; resumed just before the rebuild)
$node->safe_psql('postgres', q{SELECT event_store.pause_projection('conc')});
$app = appends(300);
wait_for(q{SELECT count(*) > 0 FROM event_store.subscription_partitions
            WHERE subscription = 'conc' AND position < event_store.head_position()},
	'rebuild: the workers have work');
$node->safe_psql('postgres', q{
SELECT event_store.resume_projection('conc');
SELECT event_store.rebuild_projection('conc');
});
is($node->safe_psql('postgres', q{SELECT count(*) FROM resets}), '1', 'rebuild: the reset function ran');
finish($app, 'rebuild: the appends');
check_exact('rebuild');

#
# (d) pause while the workers apply it: returns once their batches ended,
#     nothing is applied while paused; resume brings in the rest
#
$node->safe_psql('postgres', q{
UPDATE pace SET secs = 0.05;
SELECT event_store.rebuild_projection('conc');
});
wait_for(q{SELECT count(*) >= 100 FROM seen}, 'pause: the workers are applying it');
# what was applied when pause_projection returned is all there is until the
# resume: no batch in flight goes on after it, none starts
my $while_paused = $node->safe_psql('postgres', q{
SELECT event_store.pause_projection('conc');
SELECT count(*) FROM seen;
});
$while_paused =~ s/^\n//;
cmp_ok($while_paused, '<', $node->safe_psql('postgres',
		q{SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'conc-%'}),
	'pause: caught in the middle');
$app = appends(60);
finish($app, 'pause: the appends');
is( $node->safe_psql('postgres', q{
SELECT event_store.wait_for_projection('conc', event_store.head_position(), '1 s')}),
	'f', 'pause: wait_for_projection times out');
is($node->safe_psql('postgres', q{SELECT count(*) FROM seen}), $while_paused, 'pause: nothing applied');
$node->safe_psql('postgres', q{
UPDATE pace SET secs = 0.001;
SELECT event_store.resume_projection('conc');
});
check_exact('resume');

#
# (e) the worker killed in the middle of a batch
#
$node->safe_psql('postgres', q{SELECT event_store.rebuild_projection('conc')});
wait_for(q{SELECT count(*) >= 100 FROM seen}, 'kill: the workers are applying it');
my $pid = $node->safe_psql('postgres',
	q{SELECT pid FROM pg_stat_activity WHERE backend_type = 'event_store worker'});
like($pid, qr/^\d+$/, 'kill: the worker is running');
kill 'KILL', $pid;
wait_for(qq{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_store worker' AND pid <> $pid},
	'kill: the worker is started again');
check_exact('after the kill');
is($node->safe_psql('postgres', q{SELECT count(*) FROM resets}), '3', 'kill: no reset but the rebuilds');

$node->stop;
done_testing();
