
# Crash recovery under load, with a follower paging read_all throughout.
#
# Four writers append single events and small batches in a loop (some
# transactions rolled back on purpose, some with an expected version that
# may lose a race), while a follower pages read_all from its cursor and
# records every position it saw in the same transaction that advances the
# cursor, so its state survives a crash consistently.  The server is stopped
# with "immediate" (a crash) in the middle of this, restarted, and the
# follower catches up with no writers.  Then:
#   - the follower saw exactly the committed events: none missing, none twice;
#   - no page ever returned a position at or below the cursor it started
#     from, and the cursor moved exactly as the pages say;
#   - stream versions have no gaps, positions are unique, and appends after
#     the restart get positions above every position stored before it.
#
# Run from the top of the tree (as a user initdb accepts) with the test
# modules of the installed server on PERL5LIB, its pg_regress in PG_REGRESS
# and its bin directory on PATH:
#   PGXS_DIR=$(dirname $(pg_config --pgxs))/../..
#   PERL5LIB=$PGXS_DIR/src/test/perl PG_REGRESS=$PGXS_DIR/src/test/regress/pg_regress \
#   PATH=$(pg_config --bindir):$PATH prove test/t/020_crash_follower.pl
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

my $node = es_node('crash', q{
max_connections = 30
restart_after_crash = on
});

$node->safe_psql('postgres', 'CREATE EXTENSION event_store');

# The follower's crash-consistent state, and the loops of writers and follower.
$node->safe_psql(
	'postgres', q{
CREATE TABLE follower_cursor (pos bigint NOT NULL);
INSERT INTO follower_cursor VALUES (0);
-- every position the follower was handed, once
CREATE TABLE follower_seen (position bigint PRIMARY KEY);
-- one row per non-empty page, in the order the follower read them
CREATE TABLE follower_pages (
	page      bigserial PRIMARY KEY,
	after_pos bigint NOT NULL,	-- the cursor the page was read from
	n         int NOT NULL,
	min_pos   bigint NOT NULL,
	max_pos   bigint NOT NULL,
	dups      int NOT NULL		-- positions it had been handed before
);

-- A writer: single events and batches of up to 4, to streams shared with
-- the other writers; every 7th transaction rolled back, every 3rd append
-- with the expected version read just before (SE001 when it loses a race,
-- which is tolerated; any other error ends the writer).
CREATE PROCEDURE es_test_writer(w int, n int)
LANGUAGE plpgsql AS $$
DECLARE
	stream text;
	k int;
	events jsonb;
BEGIN
	FOR i IN 1 .. n LOOP
		stream := 'crash-' || ((i * 7 + w * 3) % 23);
		k := 1 + (i + w) % 4;
		IF k = 1 THEN
			events := jsonb_build_object('type', 'Single', 'data', jsonb_build_object('w', w, 'i', i));
		ELSE
			SELECT jsonb_agg(jsonb_build_object('type', 'Batched', 'data', jsonb_build_object('w', w, 'i', i, 'j', j)))
			  INTO events FROM generate_series(1, k) j;
		END IF;
		BEGIN
			IF i % 3 = 0 THEN
				PERFORM event_store.append(stream, events, event_store.stream_version(stream));
			ELSE
				PERFORM event_store.append(stream, events);
			END IF;
		EXCEPTION WHEN SQLSTATE 'SE001' THEN
			NULL;
		END;
		IF i % 7 = 0 THEN
			ROLLBACK;
		ELSE
			COMMIT;
		END IF;
	END LOOP;
END $$;

-- The follower: page after the cursor, record the page, advance the cursor,
-- commit; wait for events when there is nothing to read, or stop if asked.
CREATE PROCEDURE es_test_follow(max_pages int, stop_when_idle boolean)
LANGUAGE plpgsql AS $$
DECLARE
	cur bigint;
	got int;
	lo bigint;
	hi bigint;
	d int;
BEGIN
	FOR p IN 1 .. max_pages LOOP
		SELECT pos INTO cur FROM follower_cursor;
		WITH page AS (SELECT global_position FROM event_store.read_all(cur, 50)),
			 ins AS (INSERT INTO follower_seen SELECT global_position FROM page
					 ON CONFLICT DO NOTHING RETURNING position)
		SELECT (SELECT count(*) FROM page), (SELECT min(global_position) FROM page),
			   (SELECT max(global_position) FROM page),
			   (SELECT count(*) FROM page) - (SELECT count(*) FROM ins)
		  INTO got, lo, hi, d;
		IF got = 0 THEN
			COMMIT;
			EXIT WHEN stop_when_idle;
			PERFORM event_store.wait_for_events(cur, '100 milliseconds');
			COMMIT;
			CONTINUE;
		END IF;
		INSERT INTO follower_pages (after_pos, n, min_pos, max_pos, dups)
			VALUES (cur, got, lo, hi, d);
		UPDATE follower_cursor SET pos = greatest(cur, hi);
		COMMIT;
	END LOOP;
END $$;
});

# Start a psql running one statement in the background.
my %err;
sub start_psql
{
	my ($name, $sql) = @_;
	$err{$name} = '';
	my $out = '';
	return IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$out, '2>', \$err{$name},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
}

my @clients;
push @clients, start_psql("writer $_", "CALL es_test_writer($_, 100000000)") for 1 .. 4;
push @clients, start_psql('follower', 'CALL es_test_follow(100000000, false)');

# Let load build up: all four writers and the follower running, a few
# thousand events stored and the follower well under way.
ok( $node->poll_query_until(
		'postgres', q{
SELECT (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL es_test_writer%') = 4
   AND (SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL es_test_follow%') = 1
   AND (SELECT count(*) FROM event_store.events) >= 6000
   AND (SELECT pos FROM follower_cursor) >= 2000
}),
	'writers and follower under way');

# Crash in the middle of it.
$node->stop('immediate');
for my $h (@clients)
{
	$h->finish;
}
for my $name (sort keys %err)
{
	note "$name: $err{$name}";
	unlike($err{$name}, qr/ERROR/, "$name ended by the crash, not by an error");
}

$node->start;
ok($node->log_contains(qr/database system was not properly shut down; automatic recovery in progress/),
	'the restart ran crash recovery');

my ($events, $max_pos, $pages) = split /\|/, $node->safe_psql(
	'postgres', q{
SELECT (SELECT count(*) FROM event_store.events),
       (SELECT max(global_position) FROM event_store.events),
       (SELECT count(*) FROM follower_pages)
});
note "before the crash: $events events up to position $max_pos, $pages follower pages";
cmp_ok($pages, '>', 0, "the follower had read $pages pages before the crash");
cmp_ok($max_pos, '>', $events,
	'positions of rolled-back and interrupted transactions are holes');

cmp_ok($node->safe_psql('postgres', 'SELECT event_store.head_position()'),
	'>=', $max_pos, 'head_position() after recovery covers every stored event');

# The follower catches up with no writers: it must not stall on any hole.
$node->safe_psql('postgres', 'CALL es_test_follow(100000000, true)');

is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM event_store.events e
 WHERE NOT EXISTS (SELECT FROM follower_seen s WHERE s.position = e.global_position)
}),
	'0',
	'the follower saw every committed event');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM follower_seen s
 WHERE NOT EXISTS (SELECT FROM event_store.events e WHERE e.global_position = s.position)
}),
	'0',
	'the follower saw nothing that is not a committed event');
is($node->safe_psql('postgres', 'SELECT coalesce(sum(dups), 0) FROM follower_pages'),
	'0', 'the follower was never handed a position twice');
is( $node->safe_psql(
		'postgres', 'SELECT count(*) FROM follower_pages WHERE min_pos <= after_pos'),
	'0',
	'no page returned a position at or below its cursor');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (
	SELECT after_pos,
	       lag(greatest(after_pos, max_pos)) OVER (ORDER BY page) AS expected_after
	  FROM follower_pages) p
 WHERE after_pos <> coalesce(expected_after, 0)
}),
	'0',
	'each page started where the previous one ended');
is( $node->safe_psql(
		'postgres',
		'SELECT sum(n) - sum(dups) = (SELECT count(*) FROM follower_seen) FROM follower_pages'),
	't',
	'the recorded pages account for exactly the recorded positions');

# The store itself is consistent.
is( $node->safe_psql(
		'postgres',
		'SELECT count(*) = count(DISTINCT global_position) FROM event_store.events'),
	't',
	'global positions are unique');
is( $node->safe_psql(
		'postgres', q{
SELECT count(*) FROM (
	SELECT stream_id FROM event_store.events GROUP BY stream_id
	HAVING min(stream_version) <> 1 OR max(stream_version) <> count(*)) s
}),
	'0',
	'stream versions start at 1 and have no gaps');

# Appends after the restart get positions above everything stored.
my $head = $node->safe_psql('postgres', 'SELECT event_store.head_position()');
$node->safe_psql('postgres',
	q{SELECT event_store.append('after-1', '[{"type": "A"}, {"type": "B"}]')});
my ($new_min, $new_max) = split /\|/, $node->safe_psql(
	'postgres', q{
SELECT min(global_position), max(global_position) FROM event_store.events
 WHERE stream_id = 'after-1'
});
cmp_ok($new_min, '>', $max_pos, 'a new append lands above every stored event');
cmp_ok($new_min, '>', $head, 'a new append lands above head_position() of before');
is($new_max, $new_min + 1, 'its positions are consecutive');

# and the follower picks it up
$node->safe_psql('postgres', 'CALL es_test_follow(100000000, true)');
is( $node->safe_psql(
		'postgres',
		"SELECT count(*) FROM follower_seen WHERE position BETWEEN $new_min AND $new_max"),
	'2',
	'the follower reads the new events');

$node->stop;
done_testing();
