# Followers on a streaming physical standby: the reads (read_stream,
# read_all, read_category, head_position, wait_for_events, load_aggregate)
# work there and match the primary; every function that writes or changes
# state refuses with 25006; and a follower paging the standby with read_all
# while the primary holds a low position open is never handed a higher
# position first: the standby's head follows the primary's horizon, which
# the primary WAL-logs whenever an appending transaction ends.
#
# Every wait is a poll with a deadline, never a sleep.  Every node is
# stopped, even when a check dies.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/101_standby.pl
# (ES_TEST_PORT picks the primary's port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my @nodes;

END
{
	# stop whatever is still running, even after a failed check
	for my $node (@nodes)
	{
		$node->teardown_node(fail_ok => 1) if defined $node->{_pid};
	}
}

my $primary = PostgreSQL::Test::Cluster->new('primary',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
push @nodes, $primary;
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', q{
shared_preload_libraries = 'event_store'
wal_level = logical
max_replication_slots = 10
event_store.naptime = '200ms'
});
$primary->start;
$primary->safe_psql('postgres', q{
CREATE EXTENSION event_store;
CREATE FUNCTION wallet_reduce(state jsonb, e event_store.event) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('balance', coalesce((state->>'balance')::int, 0) + coalesce((e.data->>'amount')::int, 0))
$$;
CREATE FUNCTION noop(e event_store.event) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE FUNCTION same(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$ SELECT data $$;
SELECT event_store.define_aggregate('wallet', 'wallet_reduce(jsonb,event_store.event)');
SELECT event_store.create_projection('noop_async', 'noop(event_store.event)', mode => 'async');
SELECT event_store.create_subscription('billing', categories => ARRAY['wallet'], partitions => 1);
SELECT event_store.define_saga('await_payment', '{"steps": [{"name": "paid", "complete_on": "Paid"}]}');
SELECT event_store.start_saga('await_payment', '{}', '5a9a0000-0000-4000-8000-0000000000aa');
SELECT event_store.create_publication('wallets', ARRAY['wallet']);
SELECT event_store.append('wallet-1', '[{"type": "Deposited", "data": {"amount": 10}},
                                        {"type": "Deposited", "data": {"amount": 5}}]', 0);
SELECT event_store.append('order-1', '{"type": "Placed"}', 0);
});
$primary->backup('backup');

my $standby = PostgreSQL::Test::Cluster->new('standby');
push @nodes, $standby;
$standby->init_from_backup($primary, 'backup', has_streaming => 1);
$standby->start;

$primary->safe_psql('postgres', q{
SELECT event_store.append('wallet-1', '{"type": "Withdrawn", "data": {"amount": -3}}', 2);
SELECT event_store.append('wallet-2', '{"type": "Deposited", "data": {"amount": 7}}', 0);
});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'the standby is in recovery');

# What a statement gives: its result, or "ERROR <sqlstate> <message>"
sub result_of
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) = $node->psql('postgres',
		"\\set VERBOSITY default\n\\set SHOW_CONTEXT never\n$sql");
	return $stdout if $ret == 0;
	return "ERROR $stderr";
}

sub sqlstate_of
{
	my ($node, $sql) = @_;
	my ($ret, $stdout, $stderr) =
	  $node->psql('postgres', "\\set VERBOSITY sqlstate\n$sql");
	return $ret == 0 ? $stdout : "ERROR $stderr";
}

# Poll until $sql gives $want on $node; a deadline, never a bare sleep
sub wait_until
{
	my ($node, $sql, $want, $what) = @_;
	ok($node->poll_query_until('postgres', $sql, $want), $what);
}

# ---- the reads match the primary ---------------------------------------------
my @reads = (
	q{SELECT string_agg(global_position || ':' || stream_id || ':' || stream_version || ':' || event_type || ':' || data,
	                    ' ' ORDER BY global_position) FROM event_store.read_all(0)},
	q{SELECT string_agg(global_position || ':' || event_type, ' ' ORDER BY global_position) FROM event_store.read_all(2, 2)},
	q{SELECT string_agg(stream_version || ':' || event_type || ':' || data, ' ' ORDER BY stream_version)
	    FROM event_store.read_stream('wallet-1')},
	q{SELECT string_agg(global_position || ':' || stream_id, ' ' ORDER BY global_position)
	    FROM event_store.read_category('wallet', 0)},
	q{SELECT event_store.head_position()},
	q{SELECT event_store.wait_for_events(0, '0 s')},
	q{SELECT stream_version || ':' || state FROM event_store.load_aggregate('wallet-1')},
	q{SELECT stream_version || ':' || state FROM event_store.load_aggregate('wallet-1', 2)},
	q{SELECT event_store.stream_version('wallet-2')},
);
for my $sql (@reads)
{
	my $want = $primary->safe_psql('postgres', $sql);
	isnt($want, '', "the primary answers: $sql");
	is(result_of($standby, $sql), $want, "the standby answers the same: $sql");
}

# ---- everything that writes refuses with 25006 -------------------------------
my @writes = (
	[ 'append()', q{SELECT event_store.append('wallet-3', '{"type": "Deposited"}')} ],
	[ 'delete_stream()', q{SELECT event_store.delete_stream('wallet-2')} ],
	[ 'reopen_stream()', q{SELECT event_store.reopen_stream('wallet-2')} ],
	[ 'purge_stream()', q{SELECT event_store.purge_stream('wallet-2')} ],
	[ 'set_stream_retention()', q{SELECT event_store.set_stream_retention('wallet-2', max_count => 1)} ],
	[ 'enforce_retention()', q{SELECT event_store.enforce_retention()} ],
	[ 'register_upcaster()', q{SELECT event_store.register_upcaster('Deposited', 1, 'same(jsonb,jsonb)')} ],
	[ 'drop_upcaster()', q{SELECT event_store.drop_upcaster('Deposited', 1)} ],
	[ 'define_aggregate()', q{SELECT event_store.define_aggregate('order', 'wallet_reduce(jsonb,event_store.event)')} ],
	[ 'save_snapshot()', q{SELECT event_store.save_snapshot('wallet-1', 1, '{}')} ],
	[ 'purge_snapshots()', q{SELECT event_store.purge_snapshots('wallet')} ],
	[ 'create_projection()', q{SELECT event_store.create_projection('p2', 'noop(event_store.event)')} ],
	[ 'rebuild_projection()', q{SELECT event_store.rebuild_projection('noop_async')} ],
	[ 'pause_projection()', q{SELECT event_store.pause_projection('noop_async')} ],
	[ 'resume_projection()', q{SELECT event_store.resume_projection('noop_async')} ],
	[ 'drop_projection()', q{SELECT event_store.drop_projection('noop_async')} ],
	[ 'run_projections()', q{SELECT event_store.run_projections()} ],
	[ 'create_subscription()', q{SELECT event_store.create_subscription('s2')} ],
	[ 'drop_subscription()', q{SELECT event_store.drop_subscription('billing')} ],
	[ 'claim_events()', q{SELECT * FROM event_store.claim_events('billing', 'c1', 10)} ],
	[ 'ack_events()', q{SELECT event_store.ack_events('billing', 'c1', 1)} ],
	[ 'nack_event()', q{SELECT event_store.nack_event('billing', 'c1', 1, 'no')} ],
	[ 'release_events()', q{SELECT event_store.release_events('billing', 'c1')} ],
	[ 'replay_parked()', q{SELECT event_store.replay_parked('billing')} ],
	[ 'skip_parked()', q{SELECT event_store.skip_parked('billing')} ],
	[ 'define_saga()', q{SELECT event_store.define_saga('s2', '{"steps": [{"name": "a", "complete_on": "X"}]}')} ],
	[ 'start_saga()', q{SELECT event_store.start_saga('await_payment', '{}')} ],
	[ 'complete_saga_step()', q{SELECT event_store.complete_saga_step('5a9a0000-0000-4000-8000-0000000000aa', 'paid')} ],
	[ 'fail_saga_step()', q{SELECT event_store.fail_saga_step('5a9a0000-0000-4000-8000-0000000000aa', 'paid', 'no')} ],
	[ 'claim_saga_steps()', q{SELECT * FROM event_store.claim_saga_steps('w1')} ],
	[ 'saga_tick()', q{SELECT event_store.saga_tick()} ],
	[ 'grant_category()', q{SELECT event_store.grant_category(current_user::regrole, 'wallet')} ],
	[ 'revoke_category()', q{SELECT event_store.revoke_category(current_user::regrole, 'wallet')} ],
	[ 'create_publication()', q{SELECT event_store.create_publication('p2', ARRAY['order'])} ],
	[ 'drop_publication()', q{SELECT event_store.drop_publication('wallets')} ],
	[ 'create_import()', q{SELECT event_store.create_import('i1', 'dbname=postgres', 'wallets')} ],
	[ 'drop_import()', q{SELECT event_store.drop_import('i1')} ],
);
for my $w (@writes)
{
	my ($name, $sql) = @$w;
	like(sqlstate_of($standby, $sql), qr/ERROR:\s+25006$/m, "$name on the standby: 25006");
	like(result_of($standby, $sql), qr/cannot execute \Q$name\E during recovery/,
		"$name on the standby: the message names it");
}
is($standby->safe_psql('postgres', q{SELECT event_store.head_position()}),
	$primary->safe_psql('postgres', q{SELECT event_store.head_position()}),
	'the refused writes left the standby\'s head where the primary\'s is');

# ---- gap safety: the primary holds a low position open -----------------------
my $held = $primary->background_psql('postgres');
my $other = $primary->background_psql('postgres');
$held->query_safe('BEGIN');
# the global position of what the session appended last
sub appended
{
	my ($session, $stream) = @_;
	$session->query_safe("SELECT event_store.append('$stream', '{\"type\": \"Placed\"}', 0)");
	my $pos = $session->query_safe('SELECT event_store.last_appended_position()');
	$pos =~ s/\s+//g;
	return $pos;
}
my $n = appended($held, 'order-2');
my $n1 = appended($other, 'order-3');
is($n1, $n + 1, "the open transaction holds position $n, the committed one has $n1");
$primary->wait_for_catchup($standby);
ok($standby->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM event_store.events WHERE global_position = $n1"),
	'the standby has replayed the committed row');
# The standby's horizon record for the commit arrives with the WAL writer's
# next flush: let it come, then check it did not move the head past $n - 1.
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->wait_for_catchup($standby);
my $last_seen = $n - 1;
my $page = q{SELECT coalesce(string_agg(global_position::text, ',' ORDER BY global_position), '')
               FROM event_store.read_all(%d)};
is($standby->safe_psql('postgres', sprintf($page, $last_seen)), '',
	"a follower on the standby past $last_seen is not handed $n1 while $n is open");
cmp_ok($standby->safe_psql('postgres', 'SELECT event_store.head_position()'), '<', $n,
	'the standby\'s head stays below the open position');
is($standby->safe_psql('postgres', "SELECT event_store.wait_for_events($last_seen, '100 ms')"),
	$n - 1, 'wait_for_events on the standby does not wake for it either');
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM event_store.read_category('order', $last_seen)"),
	'0', 'nor read_category');

# a follower waits on the standby; the primary commits; it wakes within a second of replay
my $follower = $standby->background_psql('postgres');
$follower->{stdin} .= "SELECT event_store.wait_for_events($last_seen, '60 s') AS head, "
  . "extract(epoch FROM clock_timestamp()) AS woke;\n";
$follower->{run}->pump_nb;
$held->query_safe('COMMIT');
my $committed_at = time();
$primary->wait_for_catchup($standby);
my $replayed_at = time();
my $out = '';
my $deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while ($out !~ /(?:^|\n)\d+\|[\d.]+\n/ && time() < $deadline)
{
	$follower->{run}->pump_nb;
	$out = $follower->{stdout};
	select(undef, undef, undef, 0.05);
}
my ($woke_head, $woke_at) = $out =~ /(?:^|\n)(\d+)\|([\d.]+)\n/;
ok(defined $woke_head, 'wait_for_events on the standby woke up') or diag("output: $out");
cmp_ok($woke_head // 0, '>=', $n1, 'with a head past both positions');
cmp_ok(($woke_at // 1e12) - $replayed_at, '<', 1.0,
	'within a second of the replay of the commit');
$follower->quit;

is($standby->safe_psql('postgres', sprintf($page, $last_seen)), "$n,$n1",
	"after the commit the follower gets $n then $n1, nothing skipped");

# an aborted low position: the head moves on past it
$held->query_safe('BEGIN');
my $m = appended($held, 'order-4');
my $m1 = appended($other, 'order-5');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', sprintf($page, $n1)), '',
	"again nothing past $n1 while $m is open");
$held->query_safe('ROLLBACK');
wait_until($standby, "SELECT event_store.head_position() >= $m1", 't',
	'after the rollback the standby\'s head passes the aborted position');
is($standby->safe_psql('postgres', sprintf($page, $n1)), "$m1",
	"and the follower gets $m1");
$held->quit;
$other->quit;

# many concurrent appenders: the standby follower pages to the end, in
# position order, nothing skipped, nothing twice
my @bg;
for my $i (1 .. 4)
{
	my $s = $primary->background_psql('postgres');
	push @bg, $s;
	$s->{stdin} .= "SELECT event_store.append('load$i-' || g, '{\"type\": \"Step\"}') FROM generate_series(1, 150) g;\n";
	$s->{run}->pump_nb;
}
my @seen;
my $after = $m1;
$deadline = time() + $PostgreSQL::Test::Utils::timeout_default;
while (@seen < 600 && time() < $deadline)
{
	my $got = $standby->safe_psql('postgres',
		"SELECT coalesce(string_agg(global_position::text, ',' ORDER BY global_position), '') "
		  . "FROM event_store.read_all($after, 50) WHERE stream_id LIKE 'load%'");
	if ($got eq '')
	{
		$standby->safe_psql('postgres', "SELECT event_store.wait_for_events($after, '1 s')");
		# positions of other streams (none here) would also advance after
		next;
	}
	my @p = split /,/, $got;
	push @seen, @p;
	$after = $p[-1];
}
$_->quit for @bg;
is(scalar(@seen), 600, 'the standby follower paged all 600 concurrent events');
is($primary->safe_psql('postgres',
		"SELECT string_agg(global_position::text, ',' ORDER BY global_position) FROM event_store.events WHERE stream_id LIKE 'load%'"),
	join(',', @seen), 'in position order, each once, the same as the primary\'s');

# ---- a standby restarted after the last append: it reads up to its rows -----------
# (a restartpoint after the primary's checkpoint: the WAL replayed after the
# restart holds no horizon record)
$primary->safe_psql('postgres', 'CHECKPOINT');
$primary->wait_for_catchup($standby);
$standby->safe_psql('postgres', 'CHECKPOINT');
$standby->restart;
my $primary_head = $primary->safe_psql('postgres', 'SELECT event_store.head_position()');
is($standby->safe_psql('postgres', 'SELECT event_store.head_position()'), $primary_head,
	'after a restart the standby\'s head is the highest committed position it has');
is($standby->safe_psql('postgres', "SELECT count(*) FROM event_store.read_all($primary_head - 5)"),
	'5', 'and it reads up to it');
# the next horizon from the primary takes over again: a low position held open
$held = $primary->background_psql('postgres');
$other = $primary->background_psql('postgres');
$held->query_safe('BEGIN');
my $k = appended($held, 'order-7');
my $k1 = appended($other, 'order-8');
$primary->safe_psql('postgres', 'SELECT pg_switch_wal()');
$primary->wait_for_catchup($standby);
ok($standby->poll_query_until('postgres',
		"SELECT count(*) = 1 FROM event_store.events WHERE global_position = $k1"),
	'the restarted standby has replayed the committed row');
is($standby->safe_psql('postgres', "SELECT count(*) FROM event_store.read_all($primary_head)"),
	'0', "it is not handed $k1 while $k is open on the primary");
$held->query_safe('COMMIT');
wait_until($standby, "SELECT event_store.head_position() >= $k1", 't', 'after the commit its head passes both');
is($standby->safe_psql('postgres', sprintf($page, $primary_head)), "$k,$k1", "and it reads $k then $k1");
$held->quit;
$other->quit;

# ---- a new events table on the primary (DROP / CREATE EXTENSION) ------------------
$primary->safe_psql('postgres', q{
DROP EXTENSION event_store CASCADE;
CREATE EXTENSION event_store;
SELECT event_store.append('order-1', '{"type": "Placed"}', 0);
SELECT event_store.append('order-2', '{"type": "Placed"}', 0);
});
$primary_head = $primary->safe_psql('postgres', 'SELECT event_store.head_position()');
wait_until($standby, 'SELECT event_store.head_position()', $primary_head,
	"the standby follows the primary's new table: head $primary_head");
is($standby->safe_psql('postgres', sprintf($page, 0)),
	$primary->safe_psql('postgres', sprintf($page, 0)), 'and reads what the primary reads');

# ---- promotion: the standby becomes a primary and appends ------------------------
$standby->promote;
wait_until($standby, 'SELECT NOT pg_is_in_recovery()', 't', 'the standby is promoted');
my $before = $standby->safe_psql('postgres', 'SELECT max(global_position) FROM event_store.events');
my $pos = $standby->safe_psql('postgres', q{SELECT event_store.append('order-6', '{"type": "Placed"}', 0);
SELECT event_store.last_appended_position()});
$pos = (split /\n/, $pos)[-1];
cmp_ok($pos, '>', $before, 'the promoted standby appends above every replayed position');
is($standby->safe_psql('postgres', 'SELECT event_store.head_position()'), $pos,
	'and its head follows its own appends');

$standby->stop;
$primary->stop;
done_testing();
