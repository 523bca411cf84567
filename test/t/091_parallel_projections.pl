# Async projections with partitions, applied by the background workers.
#
#   (a) while a projection has several partitions, the database worker runs
#       helpers (event_store.max_workers - 1 of them: backend_type "event_store
#       helper"), and the partitions are applied by more than one process;
#       every event is applied once, each stream in order;
#   (b) on_error 'park': a stream whose event fails is retried by the workers
#       with backoff and parked after event_store.projection_max_attempts
#       (2 here), listed in subscription_parked, while every other stream is
#       applied; replay_parked (once the handler can apply it) brings the
#       stream's events in, in order;
#   (c) wait_for_projection returns true once the workers applied an append
#       (woken at their commit), and false at the timeout while the event is
#       parked;
#   (d) rebuild_projection and drop_projection while the workers apply the
#       projection wait for the workers' batches, without a deadlock;
#   (e) with no partitioned projection left, the helpers leave.
#
# Every wait is a poll with a deadline (poll_query_until), never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/091_parallel_projections.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('parallel', q{
event_store.naptime = '200ms'
event_store.projection_max_attempts = 2
event_store.max_workers = 3
});

sub wait_for
{
	my ($sql, $what) = @_;
	ok($node->poll_query_until('postgres', $sql), $what);
}

$node->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE TABLE applied (seq bigserial, stream_id text, stream_version bigint, by_pid int,
                      UNIQUE (stream_id, stream_version));
CREATE TABLE cured (stream_id text);
CREATE FUNCTION apply_event(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ->> 'fail' = 'yes' AND NOT EXISTS (SELECT 1 FROM cured c WHERE c.stream_id = e.stream_id) THEN
        RAISE EXCEPTION 'cannot apply % of %', e.event_type, e.stream_id;
    END IF;
    -- slow enough that several processes get to work
    PERFORM pg_catalog.pg_sleep(0.002);
    INSERT INTO applied (stream_id, stream_version, by_pid)
    VALUES (e.stream_id, e.stream_version, pg_backend_pid());
END $$;
SELECT count(event_store.append('par-' || (i % 40), '{"type": "Added"}')) FROM generate_series(1, 2400) i;
SELECT event_store.create_projection('par', 'apply_event(event_store.event)', categories => '{par}',
                                     mode => 'async', partitions => 8, on_error => 'park');
});

#
# (a) helpers come, and the partitions are shared out
#
wait_for(q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'event_store helper'},
	'the database worker runs event_store.max_workers - 1 helpers');
wait_for(q{SELECT count(*) = 2400 FROM applied}, 'every event is applied');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT by_pid) > 1 FROM applied}),
	't', 'by more than one process');
is( $node->safe_psql('postgres', q{
SELECT count(*) FROM (SELECT stream_version, lag(stream_version) OVER (PARTITION BY stream_id ORDER BY seq) AS prev
                        FROM applied) x
 WHERE prev IS NOT NULL AND stream_version <> prev + 1}),
	'0', 'each stream in order');
is( $node->safe_psql('postgres', q{
SELECT state, position = event_store.head_position() FROM event_store.projection_status WHERE name = 'par'}),
	'running|t', 'the projection is at the head');

#
# (b) a failing stream is retried, then parked; the others go on
#
$node->safe_psql('postgres', q{
SELECT event_store.append('par-bad', '[{"type": "Bad", "data": {"fail": "yes"}}, {"type": "After"}]');
SELECT count(event_store.append('par-' || i, '{"type": "More"}')) FROM generate_series(1, 20) i;
});
wait_for(q{SELECT count(*) = 1 FROM event_store.subscription_parked WHERE subscription = 'par'},
	'the failing stream is parked after its attempts');
is( $node->safe_psql('postgres', q{
SELECT stream_id, event_type, attempts, last_error FROM event_store.subscription_parked}),
	'par-bad|Bad|2|cannot apply Bad of par-bad', 'subscription_parked shows it');
wait_for(q{SELECT count(*) = 2420 FROM applied}, 'every other stream is applied');

#
# (c) wait_for_projection: false while parked, true once applied
#
is( $node->safe_psql('postgres', q{
SELECT event_store.wait_for_projection('par',
         (SELECT max(global_position) FROM event_store.events WHERE stream_id = 'par-bad'), '200 ms')}),
	'f', 'wait_for_projection times out while the stream is parked');
$node->safe_psql('postgres', q{
INSERT INTO cured VALUES ('par-bad');
SELECT event_store.replay_parked('par');
});
is( $node->safe_psql('postgres', q{
SELECT event_store.wait_for_projection('par',
         (SELECT max(global_position) FROM event_store.events WHERE stream_id = 'par-bad'), '1 minute')}),
	't', 'after replay_parked, wait_for_projection returns once the workers applied it');
is( $node->safe_psql('postgres', q{
SELECT string_agg(e.event_type, ',' ORDER BY a.seq) FROM applied a
  JOIN event_store.events e ON e.stream_id = a.stream_id AND e.stream_version = a.stream_version
 WHERE a.stream_id = 'par-bad'}),
	'Bad,After', 'the parked stream is applied in order');
is( $node->safe_psql('postgres', q{
DO $$ BEGIN PERFORM event_store.append('par-3', '{"type": "Late"}'); END $$;
SELECT event_store.wait_for_projection('par', event_store.last_appended_position(), '1 minute');
SELECT EXISTS (SELECT 1 FROM applied a JOIN event_store.events e
                 ON e.stream_id = a.stream_id AND e.stream_version = a.stream_version
                WHERE e.event_type = 'Late')}),
	"t\nt", 'read-your-writes: the append is applied when wait_for_projection returns');

#
# (d) rebuild and drop while the workers apply the projection: they wait for
#     the workers' batches (whose partitions they need), no deadlock
#
$node->safe_psql('postgres', q{
CREATE TABLE slow_applied (stream_id text);
CREATE FUNCTION slow_apply(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- batches long enough to be caught in the middle of
    PERFORM pg_catalog.pg_sleep(0.005);
    INSERT INTO slow_applied VALUES (e.stream_id);
END $$;
SELECT count(event_store.append('slow-' || (i % 40), '{"type": "Slow"}')) FROM generate_series(1, 2000) i;
SELECT event_store.create_projection('slow', 'slow_apply(event_store.event)', categories => '{slow}',
                                     mode => 'async', partitions => 4);
});
wait_for(q{SELECT count(*) >= 40 FROM slow_applied}, 'the workers are applying the slow projection');
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT event_store.rebuild_projection('slow')});
is($rc, 0, 'rebuild_projection while the workers apply the projection') or diag($err);
my $applied = $node->safe_psql('postgres', q{SELECT count(*) FROM slow_applied});
wait_for(qq{SELECT count(*) >= $applied + 40 FROM slow_applied}, 'the workers apply it again');
($rc, $out, $err) = $node->psql('postgres', q{SELECT event_store.drop_projection('slow')});
is($rc, 0, 'drop_projection while the workers apply the projection') or diag($err);
is($node->safe_psql('postgres', q{SELECT count(*) FROM event_store.subscriptions WHERE name = 'slow'}),
	'0', 'its subscription went with it');

#
# (e) no partitioned projection: the helpers leave
#
$node->safe_psql('postgres', q{SELECT event_store.drop_projection('par')});
wait_for(q{SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'event_store helper'},
	'the helpers leave once no projection has partitions');
wait_for(q{SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'event_store worker'},
	'the database worker stays');

$node->stop;
done_testing();
