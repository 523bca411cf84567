# Archiving under load: archive_events() moves ranges of positions to two
# tablespaces and back while clients append (to new streams and to streams
# whose first events are archived), followers read with wait_for_events and
# read_all, a subscription consumes from position 0, an async projection
# catches up from 0, and readers check read_stream, read_category and
# load_aggregate.  Afterwards:
#   (a) every follower, the subscription and the projection saw every event
#       exactly once, unchanged, in position order;
#   (b) every stream's versions are 1, 2, 3, ... in position order, event
#       ids are unique across the tiers, appending an archived id fails
#       with the same error as before it was archived;
#   (c) a REPEATABLE READ transaction reads the same events before and
#       after an archive_events() that commits in between;
#   (d) the ranges really live in the tablespaces' directories;
#   (e) pg_dump / pg_restore keep the ranges, their tablespaces and every
#       event, and the restored store goes on appending and archiving;
#   (f) a store created at 0.2.0 archives once updated.
#
# Every wait is on state with a deadline, never a sleep.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Cwd qw(abs_path);

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('archive', q{
event_store.worker_enabled = off
max_connections = 40
});

sub query { return es_query($node, @_); }

my $cold1 = abs_path($node->basedir) . '/cold1';
my $cold2 = abs_path($node->basedir) . '/cold2';
mkdir $cold1 or die "mkdir $cold1: $!";
mkdir $cold2 or die "mkdir $cold2: $!";

$node->safe_psql('postgres', qq{
CREATE TABLESPACE cold1 LOCATION '$cold1';
CREATE TABLESPACE cold2 LOCATION '$cold2';
CREATE DATABASE store;
});

$node->safe_psql('store', q{
CREATE EXTENSION event_store;

-- history: 40 streams in 2 categories, 50 events each, interleaved
SELECT count(event_store.append((ARRAY['hista', 'histb'])[1 + i % 2] || '-' || i % 40,
                                jsonb_build_object('type', 'H', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 2000) AS i;
SELECT event_store.append('hista-given', '{"type": "Given", "id": "11111111-1111-4111-8111-111111111111"}');

-- what the followers, the subscription and the projection saw
CREATE TABLE seen (seq bigserial, who text, global_position bigint, stream_id text, stream_version bigint,
                   event_id uuid, data jsonb);
CREATE TABLE cursors (who text PRIMARY KEY, pos bigint NOT NULL);
INSERT INTO cursors VALUES ('follower1', 0), ('follower2', 0);

-- one step of a follower: wait for events after its cursor, read a page
CREATE FUNCTION follow_step(f text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    c bigint;
    n bigint;
BEGIN
    SELECT pos INTO c FROM cursors WHERE who = f FOR UPDATE;
    PERFORM event_store.wait_for_events(c, '100 ms');
    INSERT INTO seen (who, global_position, stream_id, stream_version, event_id, data)
    SELECT f, e.global_position, e.stream_id, e.stream_version, e.event_id, e.data
      FROM event_store.read_all(c, 97) AS e;
    SELECT max(global_position) INTO n FROM seen WHERE who = f;
    UPDATE cursors SET pos = coalesce(n, 0) WHERE who = f;
    RETURN n;
END $$;

-- one step of a subscription consumer: claim and acknowledge
SELECT event_store.create_subscription('arch', partitions => 4);
CREATE FUNCTION consume_step(consumer text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
BEGIN
    WITH c AS (SELECT * FROM event_store.claim_events('arch', consumer, 100)),
         i AS (INSERT INTO seen (who, global_position, stream_id, stream_version, event_id, data)
               SELECT 'subscription', c.global_position, c.stream_id, c.stream_version, c.event_id, c.data
                 FROM c RETURNING global_position)
    SELECT max(global_position) INTO n FROM i;
    IF n IS NOT NULL THEN
        PERFORM event_store.ack_events('arch', consumer, n);
    END IF;
    RETURN (SELECT max(global_position) FROM seen WHERE who = 'subscription');
END $$;

-- every follower, consumer and the projection one step further; true once
-- each has seen every event
CREATE FUNCTION drain() RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    total bigint;
BEGIN
    PERFORM follow_step('follower1'), follow_step('follower2');
    PERFORM consume_step('c' || i) FROM generate_series(0, 5) AS i;
    PERFORM event_store.run_projections(1000);
    SELECT count(*) INTO total FROM event_store.events;
    RETURN (SELECT count(*) = 4 AND min(n) = total
              FROM (SELECT count(DISTINCT global_position) AS n FROM seen GROUP BY who) AS x);
END $$;

-- the async projection, created once the history exists: it catches up from 0
CREATE FUNCTION project(e event_store.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO seen (who, global_position, stream_id, stream_version, event_id, data)
    VALUES ('projection', e.global_position, e.stream_id, e.stream_version, e.event_id, e.data)
$$;
SELECT event_store.create_projection('archproj', 'project(event_store.event)', mode => 'async');

-- a reader's check of one stream: versions 1..n in position order,
-- load_aggregate equal to the fold of read_stream, the category read has
-- the stream's events too
CREATE FUNCTION count_reduce(state jsonb, e event_store.event) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_build_object('n', (state ->> 'n')::int + 1, 'last', e.stream_version)
$$;
SELECT event_store.define_aggregate('hista', 'count_reduce(jsonb,event_store.event)', '{"n": 0}', 25);
CREATE FUNCTION check_stream(s text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    bad bigint;
    h bigint;
    agg jsonb;
BEGIN
    SELECT count(*), count(*) FILTER (WHERE stream_version <> rn) INTO n, bad
      FROM (SELECT stream_version, row_number() OVER (ORDER BY global_position) AS rn
              FROM event_store.read_stream(s)) AS x;
    IF bad > 0 THEN
        RAISE EXCEPTION 'stream % has % versions out of place', s, bad;
    END IF;
    -- a later statement: appends may have come in between, never fewer
    IF n > event_store.stream_version(s) THEN
        RAISE EXCEPTION 'stream % reads % events, its version is %', s, n, event_store.stream_version(s);
    END IF;
    IF split_part(s, '-', 1) = 'hista' THEN
        SELECT state INTO agg FROM event_store.load_aggregate(s);
        IF (agg ->> 'n')::bigint <> (agg ->> 'last')::bigint OR (agg ->> 'n')::bigint < n THEN
            RAISE EXCEPTION 'aggregate of % is %, the stream has % events', s, agg, n;
        END IF;
    END IF;
    -- read from a version near its end, in the same statement (one
    -- snapshot): the same events as the whole read has from there (the
    -- ranges are skipped when those are all above the stream's newest
    -- archived version)
    SELECT count(*) INTO bad FROM (
        (SELECT global_position FROM event_store.read_stream(s) WHERE stream_version >= greatest(n - 2, 1)
         EXCEPT
         SELECT global_position FROM event_store.read_stream(s, greatest(n - 2, 1)))
        UNION ALL
        (SELECT global_position FROM event_store.read_stream(s, greatest(n - 2, 1))
         EXCEPT
         SELECT global_position FROM event_store.read_stream(s) WHERE stream_version >= greatest(n - 2, 1))) AS x;
    IF bad > 0 THEN
        RAISE EXCEPTION 'read_stream of % from version % differs from its whole read by % events', s, greatest(n - 2, 1), bad;
    END IF;
    -- up to a head taken first: every position below it is settled
    h := event_store.head_position();
    SELECT count(*) INTO bad FROM (
        (SELECT global_position FROM event_store.read_stream(s) WHERE global_position <= h
         EXCEPT
         SELECT global_position FROM event_store.read_category(split_part(s, '-', 1), 0, NULL)
          WHERE stream_id = s AND global_position <= h)
        UNION ALL
        (SELECT global_position FROM event_store.read_category(split_part(s, '-', 1), 0, NULL)
          WHERE stream_id = s AND global_position <= h
         EXCEPT
         SELECT global_position FROM event_store.read_stream(s) WHERE global_position <= h)) AS x;
    IF bad > 0 THEN
        RAISE EXCEPTION 'read_category and read_stream differ by % events of %', bad, s;
    END IF;
END $$;
});

# the error of appending an existing id, before anything is archived
my $dup_sql = q{SELECT event_store.append('histb-dup', '{"type": "Again", "id": "11111111-1111-4111-8111-111111111111"}')};
my ($ret, $stdout, $dup_error_before) = $node->psql('store', $dup_sql);
like($dup_error_before, qr/duplicate event id/, 'appending an existing id fails');

# every read of the history, before archiving
my $history_head = $node->safe_psql('store', 'SELECT event_store.head_position()');
my $history_reads = qq{
SELECT (SELECT string_agg(format('%s %s %s %s %s', global_position, stream_id, stream_version, event_id, data), E'\n'
                          ORDER BY global_position)
          FROM event_store.read_all(0, NULL) WHERE global_position <= $history_head)
    || E'\n' || (SELECT string_agg(format('%s %s', c, global_position), ',' ORDER BY c, global_position)
                   FROM unnest(ARRAY['hista', 'histb']) AS c, event_store.read_category(c, 0, NULL)
                  WHERE global_position <= $history_head)
    || E'\n' || (SELECT string_agg(format('%s %s', s, stream_version), ',' ORDER BY s, stream_version)
                   FROM generate_series(0, 39) AS i,
                        LATERAL (SELECT (ARRAY['hista', 'histb'])[1 + i % 2] || '-' || i) AS x(s),
                        event_store.read_stream(s, NULL, 50))};
my $reads_before = $node->safe_psql('store', $history_reads);

# the load: appends, followers, a subscription, the projection, readers
my $dir = $node->basedir;
my %scripts = (
	'append_new.sql' => q{SELECT event_store.append('load' || (random() * 3)::int || '-' || (random() * 99)::int, '{"type": "L", "data": {"x": 1}}');},
	'append_old.sql' => q{SELECT event_store.append((ARRAY['hista', 'histb'])[1 + (random())::int] || '-' || (random() * 39)::int, '[{"type": "M"}, {"type": "M"}]');},
	'follow1.sql' => q{SELECT follow_step('follower1');},
	'follow2.sql' => q{SELECT follow_step('follower2');},
	'consume.sql' => q{SELECT consume_step('c' || :client_id);},
	'project.sql' => q{SELECT event_store.run_projections(150);},
	'check.sql' => q{SELECT check_stream((ARRAY['hista', 'histb', 'load0'])[1 + (random() * 2)::int] || '-' || (random() * 39)::int);},
);
for my $f (keys %scripts)
{
	open my $fh, '>', "$dir/$f" or die "$f: $!";
	print $fh $scripts{$f}, "\n";
	close $fh;
}
my @pgbench = (
	'pgbench', '-n', '-c', '6', '-j', '2', '-T', '25',
	'-f', "$dir/append_new.sql\@6", '-f', "$dir/append_old.sql\@3",
	'-f', "$dir/follow1.sql\@1", '-f', "$dir/follow2.sql\@1",
	'-f', "$dir/consume.sql\@1", '-f', "$dir/project.sql\@1",
	'-f', "$dir/check.sql\@2",
	'-h', $node->host, '-p', $node->port, 'store');
my ($bench_out, $bench_err) = ('', '');
my $bench = IPC::Run::start(\@pgbench, '<', \undef, '>', \$bench_out, '2>', \$bench_err,
	IPC::Run::timeout(600));

# archive while the load runs: each round waits for 150 new events (with a
# deadline), archives up to 100 below the head into one tablespace, and
# every third round moves everything archived to another tablespace (or
# back to pg_default)
my @spaces = ('cold1', 'cold2', 'pg_default');
my ($rounds, $moved, $errors) = (0, 0, '');
while ($bench->pumpable)
{
	my $r = $rounds++;
	my $space = $spaces[$r % 2];
	my $res = query('store', qq{
SELECT event_store.wait_for_events(
           coalesce((SELECT max(end_position) FROM event_store.archived_ranges), 1) + 250, '5 s');
SELECT event_store.archive_events(event_store.head_position() - 100, '$space');});
	if ($r % 3 == 2)
	{
		my $back = $spaces[($r / 3) % 3];
		$res .= "\n" . query('store', qq{
SELECT event_store.archive_events((SELECT max(end_position) FROM event_store.archived_ranges), '$back')});
	}
	$errors .= "$res\n" if $res =~ /ERROR/;
	$moved += $_ for ($res =~ /^(\d+)$/mg);
	$bench->pump_nb;
}
ok($bench->finish, 'the load ran without an error') or diag("$bench_out\n$bench_err");
is($errors, '', 'every archive_events() call under load succeeded');
my $ranges = $node->safe_psql('store', 'SELECT count(*) FROM event_store.archived_ranges');
cmp_ok($ranges, '>=', 5, "$ranges ranges archived under load ($rounds rounds, $moved events moved)");
note($bench_out);

# the followers, the subscription and the projection catch up
ok($node->poll_query_until('store', 'SELECT drain()'),
	'followers, subscription and projection reached the head');

# (a) exactly once, unchanged, in position order
my $truth = q{
SELECT count(*) || ' ' || md5(string_agg(format('%s %s %s %s %s', global_position, stream_id, stream_version, event_id, data), ','
                                  ORDER BY global_position))
  FROM event_store.events};
my $all = $node->safe_psql('store', $truth);
like($all, qr/^\d+ /, "the store holds $all");
for my $who ('follower1', 'follower2', 'subscription', 'projection')
{
	is( $node->safe_psql('store', qq{
SELECT count(*) || ' ' || md5(string_agg(format('%s %s %s %s %s', global_position, stream_id, stream_version, event_id, data), ','
                                  ORDER BY global_position))
  FROM (SELECT DISTINCT ON (global_position) * FROM seen WHERE who = '$who') AS s}),
		$all, "$who saw every event, unchanged");
	is( $node->safe_psql('store', qq{
SELECT count(*) - count(DISTINCT global_position) FROM seen WHERE who = '$who'}),
		'0', "$who saw no event twice");
}
is( $node->safe_psql('store', q{
SELECT count(*) FROM (SELECT global_position, lag(global_position) OVER (ORDER BY seq) AS prev
                        FROM seen WHERE who = 'follower1') AS x WHERE prev >= global_position}),
	'0', 'a follower read in position order');

# (b) versions continuous, ids unique, the same duplicate-id error
is( $node->safe_psql('store', q{
SELECT count(*) FROM (SELECT stream_version, row_number() OVER (PARTITION BY stream_id ORDER BY global_position) AS rn
                        FROM event_store.events) AS x WHERE stream_version <> rn}),
	'0', 'every stream has versions 1, 2, 3, ... in position order');
is( $node->safe_psql('store',
		'SELECT count(*) - count(DISTINCT event_id) FROM event_store.events'),
	'0', 'event ids are unique across the tiers');
is( $node->safe_psql('store', q{
SELECT count(*) FROM ONLY event_store.events
 WHERE global_position < (SELECT max(end_position) FROM event_store.archived_ranges)}),
	'0', 'the hot table holds no archived position');
like( $node->safe_psql('store', q{
SELECT relation FROM event_store.archived_ranges
 WHERE (SELECT global_position FROM event_store.events
         WHERE event_id = '11111111-1111-4111-8111-111111111111') BETWEEN first_position AND end_position - 1}),
	qr/^events_archive_\d+$/, 'the event with the given id is archived');
($ret, $stdout, my $dup_error_after) = $node->psql('store', $dup_sql);
is($dup_error_after, $dup_error_before,
	'appending an archived id fails with the same error as before');
is($node->safe_psql('store', $history_reads), $reads_before,
	'read_all, read_category and read_stream of the history unchanged');
is( query('store', q{SELECT count(check_stream(s)) FROM (SELECT DISTINCT stream_id FROM event_store.events) AS x(s)}),
	$node->safe_psql('store', 'SELECT count(DISTINCT stream_id) FROM event_store.events'),
	'every stream passes the reader check');

# (c) a REPEATABLE READ reader across an archive_events() that commits
my $rr = $node->background_psql('store');
$rr->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
my $rr_all = q{SELECT count(*) || ' ' || md5(string_agg(event_id::text, ',' ORDER BY global_position)) FROM event_store.read_all(0, NULL)};
my $rr_before = $rr->query_safe($rr_all);
$node->safe_psql('store', q{
SELECT event_store.append('late-1', '{"type": "Late"}');
SELECT event_store.archive_events(event_store.head_position() + 1, 'cold1');});
is($rr->query_safe($rr_all), $rr_before,
	'a REPEATABLE READ transaction reads the same events across an archive');
is( $rr->query_safe(q{SELECT count(*) FROM event_store.read_stream('late-1')}),
	'0', '... and still not the event appended after it began');
$rr->query_safe('COMMIT');
$rr->quit;
is( $node->safe_psql('store', q{SELECT count(*) FROM event_store.read_stream('late-1')}),
	'1', 'a new transaction reads the late event, now archived');

# (d) the files of the ranges are in the tablespaces' directories
$node->safe_psql('store', q{SELECT event_store.archive_events((SELECT max(end_position) FROM event_store.archived_ranges), 'cold2')});
my $paths = $node->safe_psql('store', q{
SELECT string_agg(DISTINCT CASE WHEN pg_relation_filepath(c.oid) LIKE 'pg_tblspc/' || t.oid || '/%' THEN t.spcname ELSE 'elsewhere' END, ',')
  FROM event_store.archived_ranges r
  JOIN pg_class c ON c.relname = r.relation AND c.relnamespace = 'event_store'::regnamespace
  LEFT JOIN pg_tablespace t ON t.spcname = 'cold2'});
is($paths, 'cold2', 'every range table is stored in the tablespace cold2');

# (e) dump and restore
my $final = $node->safe_psql('store', $truth);
my $dump = $node->basedir . '/store.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'store' ], 'pg_dump of the archived store');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', 'restored', $dump ], 'pg_restore');
is($node->safe_psql('restored', $truth), $final, 'the restored store holds every event');
is( $node->safe_psql('restored', q{
SELECT string_agg(r.first_position || '-' || r.end_position || ' ' || coalesce(t.spcname, 'default'), ',' ORDER BY r.first_position)
  FROM event_store.archived_ranges r
  JOIN pg_class c ON c.relname = r.relation AND c.relnamespace = 'event_store'::regnamespace
  LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace}),
	$node->safe_psql('store', q{
SELECT string_agg(r.first_position || '-' || r.end_position || ' ' || coalesce(t.spcname, 'default'), ',' ORDER BY r.first_position)
  FROM event_store.archived_ranges r
  JOIN pg_class c ON c.relname = r.relation AND c.relnamespace = 'event_store'::regnamespace
  LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace}),
	'the restored ranges are in the same tablespaces');
is( $node->safe_psql('restored', q{
SELECT count(*) || ' ' || md5(string_agg(event_id::text, ',' ORDER BY global_position)) FROM event_store.read_all(0, NULL)}),
	$node->safe_psql('store', q{
SELECT count(*) || ' ' || md5(string_agg(event_id::text, ',' ORDER BY global_position)) FROM event_store.read_all(0, NULL)}),
	'read_all of the restored store equals the original');
my $versions = q{
SELECT (SELECT string_agg(stream_id || ' ' || stream_version, ',' ORDER BY stream_id) FROM event_store.archived_streams)
    || ' / ' || (SELECT string_agg(s || ' ' || event_store.stream_version(s), ',' ORDER BY s)
                   FROM (SELECT DISTINCT stream_id FROM event_store.events) AS x(s))};
is($node->safe_psql('restored', $versions), $node->safe_psql('store', $versions),
	'the restored store has the same archived streams and stream versions');
my $v = $node->safe_psql('store', q{SELECT event_store.stream_version('hista-2')});
is( query('restored', qq{SELECT event_store.append('hista-2', '{"type": "Restored"}', $v)}),
	$v + 1, 'the restored store appends at the next version');
($ret, $stdout, my $dup_error_restored) = $node->psql('restored', $dup_sql);
is($dup_error_restored, $dup_error_before, 'an archived id is still refused after the restore');
like( query('restored', q{SELECT event_store.archive_events(event_store.head_position() + 1, 'cold1')}),
	qr/^[1-9]\d*$/, 'the restored store archives again');

# (f) a store created at 0.2.0 and updated archives too
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', q{
CREATE EXTENSION event_store VERSION '0.2.0';
SELECT count(event_store.append('old-' || i % 7, jsonb_build_object('type', 'Old', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 300) AS i;});
my $old_reads = q{
SELECT count(*) || ' ' || md5(string_agg(format('%s %s %s %s', global_position, stream_id, stream_version, event_id), ','
                                  ORDER BY global_position))
  FROM event_store.read_all(0, NULL)};
my $old_before = $node->safe_psql('old', $old_reads);
$node->safe_psql('old', 'ALTER EXTENSION event_store UPDATE');
is( query('old', q{SELECT event_store.archive_events(201, 'cold2')}),
	'200', 'a store updated from 0.2.0 archives');
is($node->safe_psql('old', $old_reads), $old_before, '... and reads the same events');
is( query('old', q{SELECT event_store.append('old-1', '{"type": "New"}', 43)}),
	'44', '... and appends at the next version of a stream with archived events');

$node->stop;
done_testing();
