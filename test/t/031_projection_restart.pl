# Async projections survive server restarts with an exactly-once effect.
#
# Two async projections write every event they are handed into read-model
# tables keyed by event id, so applying an event twice would violate the
# key, fail the batch and, after event_store.projection_max_attempts (1
# here), leave the projection failed.  Their handlers are slowed down so that
# the worker is still busy when the server is stopped: once in "fast" mode
# (the worker is told to stop in the middle of a batch) and once in
# "immediate" mode (a crash).  More events are appended between the
# restarts.  After the worker caught up on its own:
#   - both projections are running, with no error, at the head;
#   - "every" has applied each event exactly once, "orders" exactly the
#     events of category order;
#   - what was applied before a stop survived it.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/031_projection_restart.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('restart', q{
event_store.naptime = '200ms'
event_store.projection_max_attempts = 1
restart_after_crash = on
});

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION event_store;
CREATE TABLE every_applied (event_id uuid PRIMARY KEY, position bigint NOT NULL);
CREATE TABLE orders_applied (event_id uuid PRIMARY KEY, position bigint NOT NULL);
-- about a millisecond per event: a batch of the worker takes about a second
CREATE FUNCTION apply_every(e event_store.event) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM pg_sleep(0.001);
	INSERT INTO every_applied VALUES (e.event_id, e.global_position);
END
$$;
CREATE FUNCTION apply_orders(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO orders_applied VALUES (e.event_id, e.global_position) $$;
-- n events in batches of 10, to streams of categories order and cart
CREATE PROCEDURE load_events(first int, n int)
LANGUAGE plpgsql AS $$
BEGIN
	FOR b IN 0 .. n / 10 - 1 LOOP
		PERFORM event_store.append(
			(CASE WHEN b % 3 = 0 THEN 'cart-' ELSE 'order-' END) || ((first + b) % 50),
			(SELECT jsonb_agg(jsonb_build_object('type', 'Loaded', 'data', jsonb_build_object('b', first + b, 'i', i)))
			   FROM generate_series(1, 10) i));
		IF b % 20 = 19 THEN
			COMMIT;
		END IF;
	END LOOP;
END
$$;
});

# Is the projection done: running, no error, at the head, nothing to do?
sub caught_up_sql
{
	my ($name) = @_;
	return qq{
SELECT state = 'running' AND last_error IS NULL AND lag_events = 0
   AND position = event_store.head_position()
  FROM event_store.projection_status WHERE name = '$name'
};
}

sub applied
{
	return $node->safe_psql('postgres', 'SELECT count(*) FROM every_applied');
}

# 6000 events, then the projections, which start from position 0.
$node->safe_psql('postgres', 'CALL load_events(0, 6000)');
$node->safe_psql(
	'postgres', q{
SELECT event_store.create_projection('every', 'apply_every(event_store.event)', mode => 'async');
SELECT event_store.create_projection('orders', 'apply_orders(event_store.event)',
                                     categories => ARRAY['order'], mode => 'async');
});

# fast shutdown while the worker is under way
ok( $node->poll_query_until(
		'postgres', 'SELECT count(*) >= 1500 FROM every_applied'),
	'the worker is applying "every"');
my $before = applied();
cmp_ok($before, '<', 6000, "stopped mid-way ($before of 6000 applied)");
$node->stop('fast');
$node->start;
cmp_ok(applied(), '>=', $before, 'what was applied before the fast shutdown survived it');

$node->safe_psql('postgres', 'CALL load_events(600, 2000)');

# crash while the worker is under way
ok( $node->poll_query_until(
		'postgres', 'SELECT count(*) >= 3500 FROM every_applied'),
	'the worker goes on after the restart');
$before = applied();
cmp_ok($before, '<', 8000, "crashed mid-way ($before of 8000 applied)");
$node->stop('immediate');
$node->start;
cmp_ok(applied(), '>=', $before, 'what was applied before the crash survived it');

$node->safe_psql('postgres', 'CALL load_events(800, 1000)');

# catch-up, then every event exactly once
ok($node->poll_query_until('postgres', caught_up_sql('every')),
	'"every" caught up, running, without error');
ok($node->poll_query_until('postgres', caught_up_sql('orders')),
	'"orders" caught up, running, without error');
is($node->safe_psql('postgres', 'SELECT count(*) FROM event_store.events'),
	'9000', '9000 events stored');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM event_store.events e
  FULL JOIN every_applied a USING (event_id)
 WHERE e.event_id IS NULL OR a.event_id IS NULL OR a.position <> e.global_position
}),
	'0',
	'"every" applied each event exactly once');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (SELECT * FROM event_store.events WHERE stream_id LIKE 'order-%') e
  FULL JOIN orders_applied a USING (event_id)
 WHERE e.event_id IS NULL OR a.event_id IS NULL OR a.position <> e.global_position
}),
	'0',
	'"orders" applied each event of category order exactly once');
is($node->safe_psql('postgres', 'SELECT count(*) > 0 FROM orders_applied'),
	't', '"orders" applied some events');
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/),
	'the second restart ran crash recovery');

$node->stop;
done_testing();
