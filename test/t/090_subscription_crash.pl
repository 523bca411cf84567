# Subscriptions under load, with consumers coming and going, and a crash.
#
# Two appenders append single events and small batches to 39 streams of
# three categories (every 9th transaction is rolled back).  Two
# subscriptions of 8 partitions deliver the categories "acct" and "order"
# (not "noise"):
#
#   exact: in-database consumers.  They handle each event by inserting a row
#          into "handled" and acknowledge in the same transaction (an
#          exactly-once effect).  They handle each claim in global-position
#          order, in transactions of 1 to 4 events, and nack some events
#          once (with a retry after 20 to 200 ms).  The later events of that
#          stream in the claim are then skipped: they were taken back.  Now
#          and then they are slower than their lease (300 ms) before
#          acknowledging, so the acknowledgement may be refused (55000) and
#          the transaction rolled back.
#   alo:   at-least-once consumers.  The side effect ("seen") is committed
#          in one transaction and the acknowledgement in another.  They also
#          nack some events and are sometimes slow.
#
# Every claim is recorded ("deliveries") in the claim's transaction.  Every
# acknowledgement, nack and refusal is recorded ("consumer_log") in the
# consumer's transaction.  Four exact consumers start together.  One of them
# releases its partitions with events still unacknowledged (release_events).
# Another stops with events unacknowledged and never comes back, so its
# lease must expire.  A fifth consumer joins later.  In the middle of the run
# the postmaster is killed with SIGKILL and restarted.  The consumers then
# reconnect under the same names while the appenders go on.  They wait until
# the leases from before the crash have expired: a consumer is its name, and
# events handed to a name whose lease still runs count as delivered to it.
# Then the appenders stop and the consumers drain both subscriptions.
# Afterwards:
#   - exact: "handled" has every committed event of the subscribed
#     categories exactly once, and nothing else.  Per stream, the handling
#     order (a sequence) is the version order.  Every event the leaving
#     consumers left unacknowledged was handled by another consumer, as a
#     redelivery.  Every nacked event was handled later, as a redelivery;
#   - alo: every committed event of the subscribed categories was seen at
#     least once, and nothing else was.  Per stream, first sightings are in
#     version order;
#   - no claim returned an event above head_position() (read right after
#     the claim, in the claim's transaction);
#   - subscription_status shows no lag and nothing in flight, retrying or
#     parked, and no stream stays held.
#
# Two regressions have their own deterministic reproduction at the end of
# this file, and signature checks above make sure that any loss or
# duplicate would be reported with its cause:
#   (A) a consumer whose expired partition another consumer took over while
#       it was handling must not get its acknowledgement through on the
#       partitions it still has: it is fenced until it claims again (55000),
#       so an exactly-once consumer never commits half a batch whose other
#       half is handed to the new holder;
#   (B) after an acknowledgement up to P, a held stream moves on from its
#       own first event after P (P may be another stream's position), so the
#       events of the stream that the log scan skipped while it was held are
#       all delivered.
#
# The test waits on state (polls with a deadline), never with a sleep; the
# sleeps in the loops pace the appenders and make some handlers slow.  It
# takes 20 to 40 seconds on two cores.  Run like 020_crash_follower.pl.

use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('subcrash', q{
max_connections = 40
restart_after_crash = on
event_store.worker_enabled = off
});

$node->safe_psql('postgres', 'CREATE EXTENSION event_store');
$node->safe_psql(
	'postgres', q{
SELECT event_store.create_subscription('exact', categories => '{acct,order}', partitions => 8);
SELECT event_store.create_subscription('alo', categories => '{acct,order}', partitions => 8);

-- what the test tells its loops
CREATE TABLE control (
	appenders_stop boolean NOT NULL,	-- appenders end their loop
	drain          boolean NOT NULL,	-- no more appends: consumers end once drained
	consumers_stop boolean NOT NULL		-- consumers end now (the drain took too long)
);
INSERT INTO control VALUES (false, false, false);

CREATE TYPE claimed AS (partition int, attempt int, global_position bigint,
                        stream_id text, stream_version bigint);

-- every event every claim handed out, recorded in the claim's transaction
CREATE TABLE deliveries (
	sub             text NOT NULL,
	consumer        text NOT NULL,
	claim           bigint NOT NULL,
	global_position bigint NOT NULL,
	attempt         int NOT NULL,
	head            bigint NOT NULL,	-- head_position() right after the claim
	at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON deliveries (sub, global_position);
CREATE INDEX ON deliveries (sub, consumer, claim);
CREATE SEQUENCE claims;

-- the exactly-once effect (no unique constraint: a duplicate must be seen, not refused)
CREATE TABLE handled (
	seq             bigserial PRIMARY KEY,	-- handling order
	global_position bigint NOT NULL,
	stream_id       text NOT NULL,
	stream_version  bigint NOT NULL,
	consumer        text NOT NULL,
	attempt         int NOT NULL,
	txid            bigint NOT NULL DEFAULT txid_current()
);
-- the at-least-once effect
CREATE TABLE seen (LIKE handled INCLUDING ALL);

-- what the consumers did besides handling: 'ack' (up to global_position,
-- acknowledging acked of the handled events of its transaction), 'nack',
-- 'refused' (55000), 'release', 'vanish'
CREATE TABLE consumer_log (
	sub             text NOT NULL,
	consumer        text NOT NULL,
	what            text NOT NULL,
	global_position bigint,
	acked           bigint,
	handled         int,
	txid            bigint NOT NULL DEFAULT txid_current(),
	at              timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX ON consumer_log (sub, consumer, at);

-- An appender: 1 to 3 events to one of 39 streams per transaction, every
-- 9th transaction rolled back, until n transactions or asked to stop.
CREATE PROCEDURE es_test_append(w int, n int)
LANGUAGE plpgsql AS $$
DECLARE
	stream text;
	events jsonb;
BEGIN
	FOR i IN 1 .. n LOOP
		EXIT WHEN (SELECT appenders_stop FROM control);
		stream := (ARRAY['acct', 'order', 'noise'])[1 + (i * 7 + w) % 3] || '-' || (i * 5 + w * 3) % 13;
		SELECT jsonb_agg(jsonb_build_object('type', 'Appended', 'data', jsonb_build_object('w', w, 'i', i, 'j', j)))
		  INTO events FROM generate_series(1, 1 + (i + w) % 3) j;
		PERFORM event_store.append(stream, events);
		IF i % 9 = 0 THEN
			ROLLBACK;
		ELSE
			COMMIT;
		END IF;
		PERFORM pg_sleep(0.01);
		COMMIT;
	END LOOP;
END $$;

-- Nothing left to deliver: the appenders are done, every partition has
-- handed out the log up to the head, nothing is pending, nothing held
-- (but a stream that defect B left held, past what it handed out, which
-- no acknowledgement can ever move on)
CREATE FUNCTION es_test_drained(sub text) RETURNS boolean
LANGUAGE sql AS $$
SELECT (SELECT drain FROM control)
   AND (SELECT lag_events = 0 AND in_flight = 0 FROM event_store.subscription_status WHERE name = sub)
   AND NOT EXISTS (SELECT FROM event_store.subscription_streams s
                    WHERE s.subscription = sub
                      AND NOT (s.handed_through IS NOT NULL AND s.global_position > s.handed_through))
$$;

-- One claim (1 to 16 events, lease 300 ms, waiting up to 100 ms), recorded
-- with the head read right after it, in global-position order
CREATE FUNCTION es_test_claim(sub text, me text) RETURNS claimed[]
LANGUAGE plpgsql AS $$
DECLARE
	batch claimed[];
	cl bigint := nextval('claims');
BEGIN
	SELECT array_agg(ROW(c.partition, c.attempt, c.global_position, c.stream_id, c.stream_version)::claimed
	                 ORDER BY c.global_position)
	  INTO batch
	  FROM event_store.claim_events(sub, me, 1 + (random() * 15)::int, '300 ms', '100 ms') c;
	INSERT INTO deliveries (sub, consumer, claim, global_position, attempt, head)
	SELECT sub, me, cl, b.global_position, b.attempt, event_store.head_position()
	  FROM unnest(batch) b;
	RETURN coalesce(batch, '{}');
END $$;

-- Whether to nack an event (once), and the retry delay
CREATE FUNCTION es_test_fails(r claimed, modulus int) RETURNS boolean
LANGUAGE sql AS $$ SELECT r.attempt = 1 AND r.global_position % modulus = 0 $$;
CREATE FUNCTION es_test_retry(r claimed) RETURNS interval
LANGUAGE sql AS $$ SELECT (20 + 20 * (r.global_position % 10)) * interval '1 ms' $$;

-- An exactly-once consumer.  ending: 'drain' (until the subscription is
-- drained), 'release' (after n claims, one more that gets events, then
-- release_events without handling them), 'vanish' (the same, then just
-- stop: the lease expires).
CREATE PROCEDURE es_test_exact(me text, n int, ending text)
LANGUAGE plpgsql AS $$
DECLARE
	batch claimed[];
	r claimed;
	nacked text[];
	i int;
	last int;
	upto bigint;
	lost boolean;
	nhandled int;
	k int := 0;
BEGIN
	LOOP
		EXIT WHEN (SELECT consumers_stop FROM control);
		k := k + 1;
		batch := es_test_claim('exact', me);
		COMMIT;
		IF ending <> 'drain' AND k > n AND cardinality(batch) > 0 THEN
			IF ending = 'release' THEN
				PERFORM event_store.release_events('exact', me);
			END IF;
			INSERT INTO consumer_log (sub, consumer, what) VALUES ('exact', me, ending);
			COMMIT;
			RETURN;
		END IF;
		IF cardinality(batch) = 0 THEN
			EXIT WHEN es_test_drained('exact');
			COMMIT;
			CONTINUE;
		END IF;
		nacked := '{}';
		i := 1;
		lost := false;
		WHILE i <= cardinality(batch) AND NOT lost LOOP
			last := least(i + (random() * 3)::int, cardinality(batch));
			nhandled := 0;
			BEGIN
				FOR j IN i .. last LOOP
					r := batch[j];
					upto := r.global_position;
					CONTINUE WHEN r.stream_id = ANY (nacked);
					IF es_test_fails(r, 17) THEN
						PERFORM event_store.nack_event('exact', me, r.global_position, 'failed on purpose', es_test_retry(r));
						INSERT INTO consumer_log (sub, consumer, what, global_position)
						VALUES ('exact', me, 'nack', r.global_position);
						nacked := nacked || r.stream_id;
					ELSE
						INSERT INTO handled (global_position, stream_id, stream_version, consumer, attempt)
						VALUES (r.global_position, r.stream_id, r.stream_version, me, r.attempt);
						nhandled := nhandled + 1;
					END IF;
				END LOOP;
				-- now and then slower than the lease
				IF random() < 0.05 THEN
					PERFORM pg_sleep(0.4);
				END IF;
				INSERT INTO consumer_log (sub, consumer, what, global_position, acked, handled)
				VALUES ('exact', me, 'ack', upto, event_store.ack_events('exact', me, upto), nhandled);
			EXCEPTION WHEN SQLSTATE '55000' THEN
				-- refused: this transaction's handling is undone; the rest
				-- of the claim goes to the partitions' next holders
				lost := true;
			END;
			IF lost THEN
				INSERT INTO consumer_log (sub, consumer, what, global_position)
				VALUES ('exact', me, 'refused', upto);
			END IF;
			COMMIT;
			i := last + 1;
		END LOOP;
	END LOOP;
END $$;

-- An at-least-once consumer: each event's effect committed on its own, the
-- acknowledgement after every 1 to 4 events in a transaction of its own
CREATE PROCEDURE es_test_alo(me text)
LANGUAGE plpgsql AS $$
DECLARE
	batch claimed[];
	r claimed;
	nacked text[];
	i int;
	last int;
	upto bigint;
	lost boolean;
	nhandled int;
BEGIN
	LOOP
		EXIT WHEN (SELECT consumers_stop FROM control);
		batch := es_test_claim('alo', me);
		COMMIT;
		IF cardinality(batch) = 0 THEN
			EXIT WHEN es_test_drained('alo');
			COMMIT;
			CONTINUE;
		END IF;
		nacked := '{}';
		i := 1;
		lost := false;
		WHILE i <= cardinality(batch) AND NOT lost LOOP
			last := least(i + (random() * 3)::int, cardinality(batch));
			nhandled := 0;
			FOR j IN i .. last LOOP
				r := batch[j];
				upto := r.global_position;
				CONTINUE WHEN r.stream_id = ANY (nacked);
				IF es_test_fails(r, 19) THEN
					BEGIN
						PERFORM event_store.nack_event('alo', me, r.global_position, 'failed on purpose', es_test_retry(r));
						INSERT INTO consumer_log (sub, consumer, what, global_position)
						VALUES ('alo', me, 'nack', r.global_position);
					EXCEPTION WHEN SQLSTATE '55000' THEN
						lost := true;
					END;
					EXIT WHEN lost;
					nacked := nacked || r.stream_id;
				ELSE
					INSERT INTO seen (global_position, stream_id, stream_version, consumer, attempt)
					VALUES (r.global_position, r.stream_id, r.stream_version, me, r.attempt);
					nhandled := nhandled + 1;
				END IF;
				COMMIT;
			END LOOP;
			IF NOT lost THEN
				IF random() < 0.05 THEN
					PERFORM pg_sleep(0.4);
				END IF;
				BEGIN
					INSERT INTO consumer_log (sub, consumer, what, global_position, acked, handled)
					VALUES ('alo', me, 'ack', upto, event_store.ack_events('alo', me, upto), nhandled);
				EXCEPTION WHEN SQLSTATE '55000' THEN
					lost := true;
				END;
			END IF;
			IF lost THEN
				INSERT INTO consumer_log (sub, consumer, what, global_position)
				VALUES ('alo', me, 'refused', upto);
			END IF;
			COMMIT;
			i := last + 1;
		END LOOP;
	END LOOP;
END $$;

-- Defect B's signature for an event never delivered (see the top of the
-- test file): after a nack of its stream, one claim handed out two earlier
-- events of the stream, and the same consumer then acknowledged up to a
-- position between them that is not an event of the stream
CREATE FUNCTION es_test_defect_b(sub text, pos bigint) RETURNS boolean
LANGUAGE sql AS $$
SELECT EXISTS (
	SELECT FROM event_store.events e
	  JOIN event_store.events s1 ON s1.stream_id = e.stream_id AND s1.stream_version < e.stream_version
	  JOIN deliveries d1 ON d1.sub = es_test_defect_b.sub AND d1.global_position = s1.global_position
	  JOIN deliveries d2 ON d2.sub = d1.sub AND d2.consumer = d1.consumer AND d2.claim = d1.claim
	                    AND d2.global_position > d1.global_position AND d2.global_position < e.global_position
	  JOIN event_store.events s2 ON s2.global_position = d2.global_position AND s2.stream_id = e.stream_id
	 CROSS JOIN LATERAL (SELECT coalesce((SELECT n.at FROM deliveries n
	                                       WHERE n.sub = d1.sub AND n.consumer = d1.consumer AND n.claim > d1.claim
	                                       ORDER BY n.claim LIMIT 1), 'infinity') AS until) nx
	  JOIN consumer_log a ON a.sub = d1.sub AND a.consumer = d1.consumer AND a.at > d1.at AND a.at < nx.until
	                     AND a.what = 'ack'
	                     AND a.global_position > d1.global_position AND a.global_position < d2.global_position
	 WHERE e.global_position = pos
	   AND EXISTS (SELECT FROM consumer_log l JOIN event_store.events x ON x.global_position = l.global_position
	                WHERE l.sub = d1.sub AND l.what = 'nack' AND x.stream_id = e.stream_id AND l.at < d1.at)
	   AND NOT EXISTS (SELECT FROM event_store.events x
	                    WHERE x.global_position = a.global_position AND x.stream_id = e.stream_id))
$$;
});

sub query { return $node->safe_psql('postgres', @_); }

# Poll a query until it returns 't', for at most $seconds
sub poll_until
{
	my ($sql, $seconds) = @_;
	my $deadline = time + $seconds;
	while (time < $deadline)
	{
		my ($ret, $out) = $node->psql('postgres', $sql);
		return 1 if $ret == 0 && $out eq 't';
		usleep(50_000);
	}
	return 0;
}

# Background psql sessions running one statement each
my %clients;
sub start_client
{
	my ($name, $sql) = @_;
	my $c = { out => '', err => '' };
	$c->{h} = IPC::Run::start(
		[ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$c->{out}, '2>', \$c->{err},
		IPC::Run::timeout($PostgreSQL::Test::Utils::timeout_default));
	$clients{$name} = $c;
	return;
}

# Wait for a client to end; it must have ended without an error
sub finish_client
{
	my ($name) = @_;
	my $c = delete $clients{$name};
	my $ok = eval { $c->{h}->finish; 1 };
	is($ok && $c->{h}->result == 0 ? $c->{err} : "exit: $c->{err} $@", '', "$name ended without an error");
	return;
}

sub exact_consumer
{
	my ($me, $n, $ending) = @_;
	start_client($me, "CALL es_test_exact('$me', $n, '$ending')");
	return;
}

sub alo_consumer
{
	my ($me) = @_;
	start_client($me, "CALL es_test_alo('$me')");
	return;
}

# Phase 1: appenders, four exact consumers (one leaves with
# release_events, one just stops), two at-least-once consumers
start_client("appender $_", "CALL es_test_append($_, 1000000)") for 1 .. 2;
exact_consumer('e1', 0, 'drain');
exact_consumer('e2', 0, 'drain');
exact_consumer('e3', 30, 'release');
exact_consumer('e4', 20, 'vanish');
alo_consumer('a1');
alo_consumer('a2');

ok( poll_until(
		q{SELECT (SELECT count(DISTINCT consumer) FROM handled) >= 4
		     AND (SELECT count(*) FROM consumer_log WHERE what IN ('release', 'vanish')) = 2}, 60),
	'four exact consumers handled events; one released, one vanished');
finish_client('e3');
finish_client('e4');

# A fifth joins
exact_consumer('e5', 0, 'drain');
ok( poll_until(
		q{SELECT (SELECT count(*) FROM handled WHERE consumer = 'e5') >= 20
		     AND (SELECT count(*) FROM handled) >= 1000
		     AND (SELECT count(*) FROM seen) >= 1000}, 60),
	'a joining consumer handles events too');

# Phase 2: the crash.  Every process of the server goes: the postmaster
# by SIGKILL, its children when they notice.
my @server_pids = split /\n/, query('SELECT pid FROM pg_stat_activity');
note 'before the crash: ' . query(
	q{SELECT (SELECT count(*) FROM handled) || ' events handled, '
	         || (SELECT sum(in_flight) FROM event_store.subscription_status) || ' in flight'});
$node->kill9;
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
usleep(50_000) while time < $deadline && grep { kill 0, $_ } @server_pids;
ok(!(grep { kill 0, $_ } @server_pids), 'every server process ended after the postmaster was killed');

for my $name (sort keys %clients)
{
	my $c = delete $clients{$name};
	eval { $c->{h}->finish; };
	unlike($c->{err}, qr/ERROR/, "$name ended by the crash, not by an error");
}
$node->start;

# The consumers come back under their names once the leases from before
# the crash have run out; the appenders go on for a while
ok( poll_until(
		q{SELECT NOT EXISTS (SELECT FROM event_store.subscription_partitions
		                      WHERE lease_expires_at > now())}, 30),
	'the leases from before the crash expire');
start_client("appender $_", "CALL es_test_append($_, 400)") for 1 .. 2;
exact_consumer($_, 0, 'drain') for qw(e1 e2 e5);
alo_consumer($_) for qw(a1 a2);
finish_client("appender $_") for 1 .. 2;

# Phase 3: drain
query('UPDATE control SET drain = true');
ok( poll_until(
		q{SELECT es_test_drained('exact') AND es_test_drained('alo')
		     AND NOT EXISTS (SELECT FROM pg_stat_activity
		                     WHERE query LIKE 'CALL es_test_%' AND pid <> pg_backend_pid())}, 60),
	'the consumers drained both subscriptions');
query('UPDATE control SET consumers_stop = true');
finish_client($_) for sort keys %clients;

my $events = q{(SELECT * FROM event_store.events
                 WHERE split_part(stream_id, '-', 1) IN ('acct', 'order'))};
my ($nevents, $nhandled, $nseen) = split /\|/, query(
	"SELECT (SELECT count(*) FROM $events e), (SELECT count(*) FROM handled), (SELECT count(*) FROM seen)");
note "$nevents events to deliver: $nhandled handled rows, $nseen seen rows";
cmp_ok($nevents, '>', 1500, 'enough events to say something');

# The events of a subscription never handled: the check and, for a
# failure, each with its stream's events nearby and who was handed them
# (consumer/claim/attempt, N: nacked)
sub missing_count
{
	my ($table) = @_;
	return query(
		"SELECT count(*) FROM $events e WHERE NOT EXISTS (SELECT FROM $table h WHERE h.global_position = e.global_position)");
}

sub missing_report
{
	my ($sub, $table) = @_;
	return "never handled (the stream's events nearby: position vN consumer/claim/attempt):\n" . query(
		qq{SELECT string_agg(e.global_position || ' ' || e.stream_id || ' v' || e.stream_version || ': ' || (
		          SELECT string_agg(o.global_position || ' v' || o.stream_version || coalesce(' ' || (
		                     SELECT string_agg(d.consumer || '/' || d.claim || '/' || d.attempt
		                                       || CASE WHEN EXISTS (SELECT FROM consumer_log l WHERE l.sub = '$sub' AND l.what = 'nack'
		                                                               AND l.global_position = o.global_position AND l.consumer = d.consumer)
		                                               THEN ' N' ELSE '' END, ' ' ORDER BY d.claim)
		                       FROM deliveries d WHERE d.sub = '$sub' AND d.global_position = o.global_position), ''), ', '
		                     ORDER BY o.stream_version)
		            FROM event_store.events o
		           WHERE o.stream_id = e.stream_id AND o.stream_version BETWEEN e.stream_version - 3 AND e.stream_version + 1)
		          || CASE WHEN es_test_defect_b('$sub', e.global_position) THEN ' (defect B)' ELSE '' END,
		          E'\\n' ORDER BY e.global_position)
		    FROM $events e WHERE NOT EXISTS (SELECT FROM $table h WHERE h.global_position = e.global_position)});
}

sub missing_unexplained
{
	my ($sub, $table) = @_;
	return query(
		"WITH m AS MATERIALIZED (SELECT global_position FROM $events e
		                          WHERE NOT EXISTS (SELECT FROM $table h WHERE h.global_position = e.global_position))
		 SELECT count(*) FROM m WHERE NOT es_test_defect_b('$sub', m.global_position)");
}

# Streams still held after the drain: defect B leaves some held past what
# they handed out (global_position > handed_through)
sub held_streams
{
	my ($sub) = @_;
	return query(
		qq{SELECT coalesce(string_agg(stream_id || ' at ' || global_position || ' handed through ' || coalesce(handed_through::text, '-'), ', '), '')
		     FROM event_store.subscription_streams WHERE subscription = '$sub'});
}

# exact
is(missing_count('handled'), '0', 'exact: every committed event of the categories was handled')
  or diag missing_report('exact', 'handled');
is(held_streams('exact'), '', 'exact: no stream stays held');
is(missing_unexplained('exact', 'handled'), '0', 'exact: every event never handled has the signature of defect B');

my $twice = q{(SELECT global_position,
                      count(*) FILTER (WHERE NOT EXISTS (
                          SELECT FROM consumer_log l WHERE l.sub = 'exact' AND l.what = 'ack'
                             AND l.txid = h.txid AND l.acked < l.handled)) AS plain
                 FROM handled h GROUP BY 1 HAVING count(*) > 1)};
is(query("SELECT count(*) FROM $twice t"), '0', 'exact: no event was handled twice')
  or diag "handled twice (position: handlings; deliveries):\n" . query(
	qq{SELECT string_agg(global_position || ': '
	         || (SELECT string_agg(consumer || ' attempt ' || attempt || ' txid ' || txid, ', ' ORDER BY seq)
	               FROM handled h WHERE h.global_position = t.global_position) || '; '
	         || (SELECT string_agg(consumer || ' claim ' || claim || ' attempt ' || attempt, ', ' ORDER BY claim)
	               FROM deliveries v WHERE v.sub = 'exact' AND v.global_position = t.global_position),
	         E'\\n' ORDER BY global_position)
	    FROM $twice t})
  . "\nacknowledgements that counted fewer events than their transaction handled:\n" . query(
	q{SELECT string_agg(consumer || ' txid ' || txid || ': ' || acked || ' of ' || handled || ' up to ' || global_position,
	                    E'\n' ORDER BY at)
	    FROM consumer_log WHERE sub = 'exact' AND what = 'ack' AND acked < handled});
is(query("SELECT count(*) FROM $twice t WHERE plain > 1"),
	'0', 'exact: every event handled twice has the signature of defect A');

is( query(
		"SELECT string_agg(global_position || ' ' || consumer, ', ' ORDER BY seq) FROM handled h WHERE NOT EXISTS (SELECT FROM $events e
		  WHERE e.global_position = h.global_position AND e.stream_id = h.stream_id AND e.stream_version = h.stream_version)"),
	'', 'exact: nothing else was handled (and each event as the event it is)');
is( query(
		q{SELECT string_agg(stream_id || ' v' || stream_version || ' after v' || prev, ', ')
		    FROM (SELECT stream_id, stream_version,
		                 lag(stream_version) OVER (PARTITION BY stream_id ORDER BY first) AS prev
		            FROM (SELECT stream_id, stream_version, min(seq) AS first FROM handled
		                   GROUP BY stream_id, stream_version) f) h
		   WHERE stream_version <= prev}),
	'', 'exact: per stream, versions were handled in increasing order');
cmp_ok(query('SELECT count(DISTINCT consumer) FROM handled'), '>=', 4, 'exact: at least four consumers handled events');
for my $leaver (qw(e3 e4))
{
	is( query(
			qq{SELECT count(*) FROM deliveries d
			    WHERE d.consumer = '$leaver' AND d.claim = (SELECT max(claim) FROM deliveries WHERE consumer = '$leaver')
			      AND NOT EXISTS (SELECT FROM handled h WHERE h.global_position = d.global_position
			                         AND h.consumer <> '$leaver' AND h.attempt > d.attempt)}),
		'0', "exact: what $leaver left unacknowledged was handled by another consumer, as a redelivery");
}
my $nacks = query(q{SELECT count(*) FROM consumer_log WHERE sub = 'exact' AND what = 'nack'});
cmp_ok($nacks, '>', 0, "exact: $nacks events were nacked");
is( query(
		q{SELECT count(*) FROM consumer_log l WHERE sub = 'exact' AND what = 'nack'
		   AND NOT EXISTS (SELECT FROM handled h WHERE h.global_position = l.global_position AND h.attempt > 1)}),
	'0', 'exact: every nacked event was handled later, as a redelivery');
note 'exact: ' . query(
	q{SELECT count(*) || ' acknowledgements refused (55000), '
	         || (SELECT count(*) FROM handled WHERE attempt > 1) || ' events handled as redeliveries'
	    FROM consumer_log WHERE sub = 'exact' AND what = 'refused'});

# alo
is(missing_count('seen'), '0', 'alo: every committed event of the categories was seen')
  or diag missing_report('alo', 'seen');
is(held_streams('alo'), '', 'alo: no stream stays held');
is(missing_unexplained('alo', 'seen'), '0', 'alo: every event never seen has the signature of defect B');
is( query(
		"SELECT count(*) FROM seen s WHERE NOT EXISTS (SELECT FROM $events e
		  WHERE e.global_position = s.global_position AND e.stream_id = s.stream_id AND e.stream_version = s.stream_version)"),
	'0', 'alo: nothing else was seen');
is( query(
		q{SELECT string_agg(stream_id || ' v' || stream_version || ' after v' || prev, ', ')
		    FROM (SELECT stream_id, stream_version,
		                 lag(stream_version) OVER (PARTITION BY stream_id ORDER BY first) AS prev
		            FROM (SELECT stream_id, stream_version, min(seq) AS first FROM seen
		                   GROUP BY stream_id, stream_version) f) s
		   WHERE stream_version <= prev}),
	'', 'alo: per stream, first sightings are in increasing version order');
note 'alo: ' . query('SELECT count(*) - count(DISTINCT global_position) FROM seen') . ' duplicates';

# both
is(query('SELECT count(*) FROM deliveries WHERE global_position > head'),
	'0', 'no claim returned an event above head_position()');
is( query(
		q{SELECT string_agg(name || ': ' || (position = head_position AND lag_events = 0 AND in_flight = 0
		                                     AND retrying_streams = 0 AND parked_streams = 0), ', ' ORDER BY name)
		    FROM event_store.subscription_status}),
	'alo: true, exact: true',
	'subscription_status: position at the head, no lag, nothing in flight, nothing retrying or parked');

# ------------------------------------------------------------------------
# The defects, reproduced
# ------------------------------------------------------------------------

# Regression A.  Consumer A holds both partitions of a subscription (lease 3 s)
# and starts a transaction that handles its claim.  Consumer C is live and
# holds nothing.  A's lease expires.  B claims: with B and C live, its fair
# share is one partition, and it takes one of A's, with what A has not
# acknowledged.  Then A acknowledges in its transaction: A's lease expired
# and it lost a partition, so the acknowledgement is refused (55000), A's
# transaction rolls back, and no event is handled twice.
query(q{
SELECT event_store.create_subscription('dup', categories => '{dup}', partitions => 2);
SELECT event_store.append('dup-' || i, '{"type": "Appended"}') FROM generate_series(1, 16) i;
CREATE TABLE dup_handled (global_position bigint, consumer text);
});
my $session_a = $node->background_psql('postgres', on_error_stop => 0);
$session_a->query_safe(q{CREATE TEMP TABLE a_claim AS SELECT * FROM event_store.claim_events('dup', 'A', 100, '3 seconds')});
is(query(q{SELECT count(*) FROM event_store.claim_events('dup', 'C', 100, '1 minute')}),
	'0', 'defect A: C is live and holds nothing');
$session_a->query_safe(q{BEGIN; INSERT INTO dup_handled SELECT global_position, 'A' FROM a_claim});
is( $session_a->query_safe(
		q{SELECT count(DISTINCT partition) || ' ' || count(*) || ' ' ||
		         (now() < (SELECT max(lease_expires_at) FROM event_store.subscription_partitions WHERE holder = 'A'))
		    FROM a_claim}),
	'2 16 true', 'defect A: A handles 16 events of two partitions in a transaction that started while its lease ran');
ok( poll_until(
		q{SELECT bool_and(lease_expires_at < clock_timestamp()) FROM event_store.subscription_partitions
		   WHERE subscription = 'dup' AND holder = 'A'}, 30),
	"defect A: A's lease expires");
query(q{CREATE TABLE b_claim AS SELECT * FROM event_store.claim_events('dup', 'B', 100, '1 minute')});
is( query(
		q{SELECT count(DISTINCT partition) || ' ' || bool_and(attempt = 2) || ' ' || (count(*) < 16)
		    FROM b_claim}),
	'1 true true', "defect A: B took one of A's partitions, with A's events as redeliveries");
my ($a_out) = $session_a->query(
	q{SELECT event_store.ack_events('dup', 'A', (SELECT max(global_position) FROM a_claim))});
my $a_err = $session_a->{stderr};
$session_a->query('COMMIT');
$session_a->quit;
query(q{
BEGIN;
INSERT INTO dup_handled SELECT global_position, 'B' FROM b_claim;
SELECT event_store.ack_events('dup', 'B', (SELECT max(global_position) FROM b_claim));
COMMIT;
});
note "defect A: A's acknowledgement returned '$a_out', error '$a_err'";
like($a_err, qr/does not hold|lost a partition/, "defect A: A's acknowledgement after its lease expired is refused");
is(query('SELECT count(*) - count(DISTINCT global_position) FROM dup_handled'),
	'0', 'defect A: no event was handled twice');

# Regression B.  One partition, one attempt.  Stream hs-1 is nacked at v1 and
# parked.  Its v2 and v3 are appended between v5 and v6 of ht-1, and the log
# scan goes past them.  replay_parked: the retry hands out hs-1 v1 to v3.  v4 is appended (skipped: the
# stream is held).  The consumer acknowledges up to ht-1 v6 (hs-1 v1 and
# v2), then up to hs-1 v3.  hs-1 v4 must come next (had the stream moved on
# from the version of ht-1 v6, 6, it would have been released and v4 never
# delivered).
sub pos_of
{
	my ($stream, $version) = @_;
	return query("SELECT global_position FROM event_store.events WHERE stream_id = '$stream' AND stream_version = $version");
}
query(q{
SELECT event_store.create_subscription('held', categories => '{ht,hs}', partitions => 1, max_attempts => 1);
SELECT event_store.append('ht-1', '[{"type": "T"}, {"type": "T"}, {"type": "T"}, {"type": "T"}]');
SELECT event_store.append('hs-1', '{"type": "S"}');
SELECT count(*) FROM event_store.claim_events('held', 'c');
});
query("SELECT event_store.ack_events('held', 'c', " . pos_of('ht-1', 4) . ')');
query("SELECT event_store.nack_event('held', 'c', " . pos_of('hs-1', 1) . q{, 'failed')});
query(q{
SELECT event_store.append('ht-1', '{"type": "T"}');
SELECT event_store.append('hs-1', '{"type": "S"}');
SELECT event_store.append('ht-1', '{"type": "T"}');
SELECT event_store.append('hs-1', '{"type": "S"}');
});
is( query(q{SELECT string_agg(stream_id || ' v' || stream_version, ' ' ORDER BY global_position)
              FROM event_store.claim_events('held', 'c')}),
	'ht-1 v5 ht-1 v6', 'defect B: the parked stream is skipped');
query("SELECT event_store.ack_events('held', 'c', " . pos_of('ht-1', 6) . ')');
is(query(q{SELECT event_store.replay_parked('held')}), '1', 'defect B: the stream is replayed');
is( query(q{SELECT string_agg(stream_id || ' v' || stream_version || ' attempt ' || attempt, ', ' ORDER BY global_position)
              FROM event_store.claim_events('held', 'c')}),
	'hs-1 v1 attempt 1, hs-1 v2 attempt 1, hs-1 v3 attempt 1', 'defect B: the retry hands out v1 to v3');
query(q{SELECT event_store.append('hs-1', '{"type": "S"}')});
is(query(q{SELECT count(*) FROM event_store.claim_events('held', 'c')}),
	'0', 'defect B: v4 waits: the stream is held');
is(query("SELECT event_store.ack_events('held', 'c', " . pos_of('ht-1', 6) . ')'),
	'2', 'defect B: acknowledging up to ht-1 v6 acknowledges hs-1 v1 and v2');
is(query("SELECT event_store.ack_events('held', 'c', " . pos_of('hs-1', 3) . ')'),
	'1', 'defect B: then hs-1 v3');
is( query(q{SELECT string_agg(stream_id || ' v' || stream_version, ' ' ORDER BY global_position)
              FROM event_store.claim_events('held', 'c')}),
	'hs-1 v4', 'defect B: hs-1 v4 is delivered next');

$node->stop;
done_testing();
