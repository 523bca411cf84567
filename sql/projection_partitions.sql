--
-- Async projections on their own subscription: partitions (each stream in
-- order, streams in parallel), on_error 'park' (a failing stream waits, the
-- others go on), parked streams replayed or skipped; read-your-writes with
-- last_appended_position() and wait_for_projection().
--
CREATE TABLE pp_applied (seq bigserial, stream_id text, stream_version bigint, position bigint);
CREATE FUNCTION pp_handler(e event_store.event) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF e.data ->> 'fail' = 'yes' AND NOT EXISTS (SELECT 1 FROM pp_cured WHERE stream_id = e.stream_id) THEN
        RAISE EXCEPTION 'cannot apply % of %', e.event_type, e.stream_id;
    END IF;
    INSERT INTO pp_applied (stream_id, stream_version, position)
    VALUES (e.stream_id, e.stream_version, e.global_position);
END $$;
CREATE TABLE pp_cured (stream_id text);
CREATE FUNCTION pp_batch(events event_store.event[]) RETURNS void
    LANGUAGE sql AS $$ SELECT $$;

-- bad arguments: class 22, nothing written
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', mode => 'async', partitions => 0)$$);
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', mode => 'async', partitions => NULL)$$);
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', mode => 'async', on_error => 'retry')$$);
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', partitions => 2)$$);
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', on_error => 'park')$$);
SELECT regress.try($$SELECT event_store.create_projection('pp', 'pp_batch(event_store.event[])', mode => 'async', on_error => 'park')$$);
SELECT count(*) AS nothing_written FROM event_store.projections WHERE name = 'pp';
SELECT event_store.create_subscription('taken', partitions => 1);
SELECT regress.try($$SELECT event_store.create_projection('taken', 'pp_handler(event_store.event)', mode => 'async')$$);
SELECT event_store.drop_subscription('taken');

-- four partitions: every event applied once, each stream in order
SELECT count(event_store.append('pp-' || i, '[{"type": "A"}, {"type": "B"}, {"type": "C"}]'))
  FROM generate_series(1, 12) i;
SELECT event_store.create_projection('pp', 'pp_handler(event_store.event)', categories => '{pp}',
                                     mode => 'async', partitions => 4, on_error => 'park');
SELECT name, partitions, projection FROM event_store.subscriptions WHERE name = 'pp';
SELECT count(*) AS partitions FROM event_store.subscription_partitions WHERE subscription = 'pp';
SELECT event_store.run_projections() AS applied;
SELECT count(*) AS applied, count(DISTINCT (stream_id, stream_version)) AS distinct_events
  FROM pp_applied;
SELECT count(*) AS out_of_order
  FROM (SELECT stream_version, lag(stream_version) OVER (PARTITION BY stream_id ORDER BY seq) AS prev
          FROM pp_applied) x
 WHERE prev IS NOT NULL AND stream_version <> prev + 1;
SELECT state, position = event_store.head_position() AS at_head, lag_events
  FROM event_store.projection_status WHERE name = 'pp';
-- its subscription is the workers': nobody claims it, nobody drops it
SELECT regress.try($$SELECT * FROM event_store.claim_events('pp', 'me')$$);
SELECT regress.try($$SELECT event_store.drop_subscription('pp')$$);

-- read-your-writes
SELECT event_store.last_appended_position() IS NOT NULL AS known;
SELECT event_store.append('pp-1', '{"type": "D"}');
SELECT event_store.last_appended_position() = event_store.head_position() AS last_is_head;
SELECT event_store.wait_for_projection('pp', event_store.last_appended_position(), '0 s') AS applied_yet;
SELECT event_store.run_projections() AS applied;
SELECT event_store.wait_for_projection('pp', event_store.last_appended_position(), '0 s') AS applied_now;
SELECT regress.try($$SELECT event_store.wait_for_projection('nope', 1)$$);
SELECT regress.try($$SELECT event_store.wait_for_projection('pp', -1)$$);
SELECT regress.try($$SELECT event_store.wait_for_projection('pp', 1, NULL)$$);
-- a retry of an append (same ids) reports where the first call stored it
SELECT event_store.append('pp-retry', '{"type": "A", "id": "6b0a5a4e-8c1b-4a8e-9a55-0d1c2b3a4f50"}');
SELECT event_store.last_appended_position() AS first_time \gset
SELECT event_store.append('pp-1', '{"type": "E"}');
SELECT event_store.append('pp-retry', '{"type": "A", "id": "6b0a5a4e-8c1b-4a8e-9a55-0d1c2b3a4f50"}');
SELECT event_store.last_appended_position() = :first_time AS same_place;

-- a failing event holds back its stream only (on_error 'park')
SELECT event_store.append('pp-3', '[{"type": "Bad", "data": {"fail": "yes"}}, {"type": "After"}]');
SELECT event_store.append('pp-4', '{"type": "Fine"}');
SELECT event_store.append('pp-3', '{"type": "Later"}');
SELECT event_store.run_projections() AS applied;
SELECT e.stream_id, e.event_type FROM event_store.events e
  JOIN pp_applied a ON a.position = e.global_position
 WHERE e.stream_id IN ('pp-3', 'pp-4') AND e.stream_version > 3 ORDER BY a.seq;
SELECT stream_id, attempts, last_error, parked_at IS NULL AS retrying
  FROM event_store.subscription_streams WHERE subscription = 'pp';
SELECT state, last_error FROM event_store.projections WHERE name = 'pp';
SELECT event_store.wait_for_projection('pp', event_store.head_position(), '0 s') AS all_applied;
-- parked: replay it once the handler can apply it; the held events follow in order
UPDATE event_store.subscription_streams SET parked_at = now(), next_attempt_at = NULL
 WHERE subscription = 'pp';
SELECT subscription, stream_id, event_type, attempts FROM event_store.subscription_parked;
SELECT event_store.run_projections() AS nothing_while_parked;
INSERT INTO pp_cured VALUES ('pp-3');
SELECT event_store.replay_parked('pp') AS replayed;
-- max_events caps a run: the replayed stream's held events are applied
-- whole (its hold ends once it caught up), and the log waits for the next run
SELECT count(event_store.append('pp-4', '{"type": "Capped"}')) AS appended FROM generate_series(1, 3);
SELECT event_store.run_projections(1) AS applied_capped;
SELECT count(*) AS capped_applied FROM pp_applied a JOIN event_store.events e ON e.global_position = a.position
 WHERE e.event_type = 'Capped';
SELECT event_store.run_projections() AS applied;
SELECT e.event_type FROM event_store.events e JOIN pp_applied a ON a.position = e.global_position
 WHERE e.stream_id = 'pp-3' AND e.stream_version > 3 ORDER BY a.seq;
SELECT count(*) AS held FROM event_store.subscription_streams WHERE subscription = 'pp';
SELECT event_store.wait_for_projection('pp', event_store.head_position(), '0 s') AS all_applied;

-- rebuild: every partition starts again from 0
TRUNCATE pp_applied;
SELECT event_store.rebuild_projection('pp');
SELECT max(position) AS positions FROM event_store.subscription_partitions WHERE subscription = 'pp';
SELECT event_store.run_projections() > 0 AS applied;
SELECT count(*) = (SELECT count(*) FROM event_store.events WHERE stream_id LIKE 'pp-%') AS all_again
  FROM pp_applied;

-- drop: its subscription goes with it
SELECT event_store.drop_projection('pp');
SELECT count(*) AS left FROM event_store.subscriptions WHERE name = 'pp';

-- on_error 'fail' with partitions: the projection stops as before
SELECT event_store.create_projection('pf', 'pp_handler(event_store.event)', categories => '{pf}',
                                     mode => 'async', partitions => 2);
SELECT event_store.append('pf-1', '{"type": "Bad", "data": {"fail": "yes"}}');
SELECT event_store.run_projections() AS applied;
SELECT state, attempts, last_error, error_position = event_store.head_position() AS at_bad
  FROM event_store.projections WHERE name = 'pf';
SELECT event_store.drop_projection('pf');

-- partitions at different positions, applied in one scan: each from its own
-- position (partition 0 has applied everything up to "before" already)
TRUNCATE pp_applied;
SELECT count(event_store.append('pq-' || i, '[{"type": "A"}, {"type": "B"}]')) FROM generate_series(1, 12) i;
SELECT event_store.create_projection('pq', 'pp_handler(event_store.event)', categories => '{pq}',
                                     mode => 'async', partitions => 4);
SELECT event_store.head_position() AS before \gset
UPDATE event_store.subscription_partitions SET position = :before
 WHERE subscription = 'pq' AND partition = 0;
SELECT count(event_store.append('pq-' || i, '{"type": "C"}')) FROM generate_series(1, 12) i;
SELECT event_store.run_projections() AS applied;
-- a stream of partition 0 got its last event only, every other one all three
SELECT count(*) FILTER (WHERE n = 3 AND versions = '{1,2,3}') AS streams_in_full,
       count(*) FILTER (WHERE n = 1 AND versions = '{3}') AS streams_of_partition_0,
       count(*) AS streams
  FROM (SELECT stream_id, count(*) AS n, array_agg(stream_version ORDER BY seq) AS versions
          FROM pp_applied GROUP BY stream_id) s;
SELECT count(*) = count(DISTINCT position) AS no_repeats FROM pp_applied;
SELECT count(*) FILTER (WHERE position = event_store.head_position()) AS partitions_at_head
  FROM event_store.subscription_partitions WHERE subscription = 'pq';
SELECT event_store.wait_for_projection('pq', event_store.head_position(), '0 s') AS all_applied;
SELECT event_store.drop_projection('pq');

-- a rebuild without downtime (the recipe of the README): the next version
-- of a projection fills new tables while the old one serves; once it caught
-- up, a view switches in one transaction
CREATE TABLE pp_totals_v1 (stream_id text PRIMARY KEY, n int);
CREATE TABLE pp_totals_v2 (stream_id text PRIMARY KEY, n int);
CREATE FUNCTION pp_totals_v1(e event_store.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO pp_totals_v1 VALUES (e.stream_id, 1)
    ON CONFLICT (stream_id) DO UPDATE SET n = pp_totals_v1.n + 1 $$;
CREATE FUNCTION pp_totals_v2(e event_store.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO pp_totals_v2 VALUES (e.stream_id, 10)
    ON CONFLICT (stream_id) DO UPDATE SET n = pp_totals_v2.n + 10 $$;
SELECT event_store.create_projection('totals_v1', 'pp_totals_v1(event_store.event)', categories => '{pp}',
                                     mode => 'async');
SELECT event_store.run_projections() > 0 AS applied;
CREATE VIEW pp_totals AS SELECT * FROM pp_totals_v1;
SELECT event_store.create_projection('totals_v2', 'pp_totals_v2(event_store.event)', categories => '{pp}',
                                     mode => 'async', partitions => 2);
SELECT event_store.run_projections() > 0 AS applied;
SELECT event_store.wait_for_projection('totals_v2', event_store.head_position(), '10 s') AS caught_up;
BEGIN;
CREATE OR REPLACE VIEW pp_totals AS SELECT * FROM pp_totals_v2;
SELECT event_store.drop_projection('totals_v1');
DROP TABLE pp_totals_v1;
COMMIT;
SELECT bool_and(t.n = 10 * (SELECT count(*) FROM event_store.events e WHERE e.stream_id = t.stream_id)) AS switched
  FROM pp_totals t;
SELECT event_store.drop_projection('totals_v2');
DROP VIEW pp_totals;
DROP TABLE pp_totals_v2, pp_applied, pp_cured;

-- one scan over partitions at very different positions (one far behind, as
-- after a rebuild, the others at the head), a handler failing in it: the scan
-- is rolled back and each partition applied on its own.  The handler refuses
-- an event applied twice or one after a gap in its stream; an event that
-- fails once only (the first call) is applied at the next try, a poison event
-- holds back its stream while every other event is applied once.
CREATE TABLE pr_seen (stream_id text, stream_version bigint, position bigint,
                      PRIMARY KEY (stream_id, stream_version));
CREATE TABLE pr_cured (stream_id text);
CREATE SEQUENCE pr_once;
CREATE FUNCTION pr_strict(e event_store.event) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pr_seen WHERE stream_id = e.stream_id AND stream_version = e.stream_version) THEN
        RAISE EXCEPTION 'repeat of % %', e.stream_id, e.stream_version;
    END IF;
    IF e.stream_version > 1 AND NOT EXISTS (SELECT 1 FROM pr_seen
                                             WHERE stream_id = e.stream_id AND stream_version = e.stream_version - 1) THEN
        RAISE EXCEPTION 'gap before % %', e.stream_id, e.stream_version;
    END IF;
    IF e.data ->> 'fail' IS NOT DISTINCT FROM 'yes'
       AND NOT EXISTS (SELECT 1 FROM pr_cured c WHERE c.stream_id = e.stream_id) THEN
        RAISE EXCEPTION 'cannot apply % of %', e.event_type, e.stream_id;
    END IF;
    IF e.data ->> 'once' IS NOT DISTINCT FROM 'yes' THEN
        IF nextval('pr_once') = 1 THEN
            RAISE EXCEPTION 'not yet';
        END IF;
    END IF;
    INSERT INTO pr_seen VALUES (e.stream_id, e.stream_version, e.global_position);
END $$;
SELECT count(event_store.append('pr-' || i, '[{"type": "A"}, {"type": "B"}]')) FROM generate_series(1, 8) i;
SELECT event_store.create_projection('pr', 'pr_strict(event_store.event)', categories => '{pr}',
                                     mode => 'async', partitions => 4, on_error => 'park');
SELECT event_store.run_projections() AS applied;
-- the partition of each stream, as a subscription with as many partitions has it
SELECT event_store.create_subscription('pr_map', categories => '{pr}', partitions => 4);
CREATE TABLE pr_map AS SELECT DISTINCT stream_id, partition FROM event_store.claim_events('pr_map', 'me', 1000);
SELECT event_store.drop_subscription('pr_map');
-- pr-1's partition far behind: back at 0, its streams' read model gone
UPDATE event_store.subscription_partitions SET position = 0
 WHERE subscription = 'pr' AND partition = (SELECT partition FROM pr_map WHERE stream_id = 'pr-1');
DELETE FROM pr_seen WHERE stream_id IN (SELECT stream_id FROM pr_map
                                         WHERE partition = (SELECT partition FROM pr_map WHERE stream_id = 'pr-1'));
SELECT count(DISTINCT partition) AS partitions_with_streams FROM pr_map;
SELECT count(*) FILTER (WHERE position = event_store.head_position()) AS partitions_at_head,
       count(*) FILTER (WHERE position = 0) AS partitions_at_0
  FROM event_store.subscription_partitions WHERE subscription = 'pr';
SELECT event_store.append('pr-3', '{"type": "Once", "data": {"once": "yes"}}');
SELECT event_store.append('pr-2', '{"type": "Bad", "data": {"fail": "yes"}}');
SELECT event_store.append('pr-2', '{"type": "After"}');
SELECT count(event_store.append('pr-' || i, '{"type": "C"}')) FROM generate_series(1, 8) i;
SELECT event_store.head_position() AS pr_head \gset
SELECT event_store.run_projections() > 0 AS applied;
-- everything but pr-2's Bad and what follows it, once and in order
SELECT count(*) AS applied,
       (SELECT count(*) FROM event_store.events e WHERE e.stream_id LIKE 'pr-%'
         AND NOT (e.stream_id = 'pr-2' AND e.stream_version >= 3)) AS expected
  FROM pr_seen;
-- the event failing once failed at its first call and was applied after it
SELECT last_value > 1 AS failed_then_applied,
       EXISTS (SELECT 1 FROM pr_seen WHERE stream_id = 'pr-3' AND stream_version = 3) AS once_applied
  FROM pr_once;
SELECT stream_id, attempts, last_error, parked_at IS NULL AS retrying
  FROM event_store.subscription_streams WHERE subscription = 'pr';
SELECT count(*) FILTER (WHERE position = :pr_head) AS partitions_at_head
  FROM event_store.subscription_partitions WHERE subscription = 'pr';
SELECT position = :pr_head AS at_head, lag_events
  FROM event_store.projection_status WHERE name = 'pr';
SELECT state, attempts FROM event_store.projections WHERE name = 'pr';
SELECT event_store.wait_for_projection('pr', :pr_head, '0 s') AS all_applied;
-- parked: visible, replayed once cured; the held events follow in order
UPDATE event_store.subscription_streams SET parked_at = now(), next_attempt_at = NULL
 WHERE subscription = 'pr';
SELECT subscription, stream_id, event_type, attempts FROM event_store.subscription_parked
 WHERE subscription = 'pr';
SELECT event_store.run_projections() AS nothing_while_parked;
INSERT INTO pr_cured VALUES ('pr-2');
SELECT event_store.replay_parked('pr', 'pr-2') AS replayed;
SELECT event_store.run_projections() AS applied;
SELECT array_agg(stream_version ORDER BY position) AS pr_2 FROM pr_seen WHERE stream_id = 'pr-2';
SELECT count(*) = (SELECT count(*) FROM event_store.events e WHERE e.stream_id LIKE 'pr-%') AS all_once
  FROM pr_seen;
SELECT event_store.wait_for_projection('pr', :pr_head, '0 s') AS all_applied;
SELECT event_store.drop_projection('pr');

-- on_error 'fail': the same poison in one scan from 0 stops the projection;
-- what the partitions applied before it is kept, nothing twice, and a retry
-- once the handler can apply it applies the rest
TRUNCATE pr_seen, pr_cured;
SELECT event_store.create_projection('prf', 'pr_strict(event_store.event)', categories => '{pr}',
                                     mode => 'async', partitions => 4);
SELECT event_store.run_projections() >= 0 AS ran;
SELECT state, attempts, error_position = :pr_head - 9 AS at_bad, last_error
  FROM event_store.projections WHERE name = 'prf';
SELECT count(*) FILTER (WHERE stream_id = 'pr-2' AND stream_version >= 3) AS bad_applied,
       count(*) <= (SELECT count(*) FROM event_store.events e WHERE e.stream_id LIKE 'pr-%') - 2 AS not_all
  FROM pr_seen;
INSERT INTO pr_cured VALUES ('pr-2');
SELECT event_store.run_projections() > 0 AS applied;
SELECT count(*) = (SELECT count(*) FROM event_store.events e WHERE e.stream_id LIKE 'pr-%') AS all_once
  FROM pr_seen;
SELECT state, attempts, last_error FROM event_store.projections WHERE name = 'prf';
SELECT event_store.wait_for_projection('prf', :pr_head, '0 s') AS all_applied;
SELECT event_store.drop_projection('prf');
DROP TABLE pr_seen, pr_cured, pr_map;
DROP SEQUENCE pr_once;
DROP FUNCTION pr_strict(event_store.event);

-- partitions = 1 keeps the global order across streams: with parking (the
-- partitioned way, one partition) and without, over several batches
CREATE TABLE po_seen (seq bigserial, proj text, position bigint);
CREATE FUNCTION po_park(e event_store.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO po_seen (proj, position) VALUES ('park', e.global_position) $$;
CREATE FUNCTION po_fail(e event_store.event) RETURNS void LANGUAGE sql AS $$
    INSERT INTO po_seen (proj, position) VALUES ('fail', e.global_position) $$;
SELECT count(event_store.append('po-' || (i % 7), '{"type": "A"}')) FROM generate_series(1, 60) i;
SELECT event_store.create_projection('po_park', 'po_park(event_store.event)', categories => '{po}',
                                     mode => 'async', on_error => 'park');
SELECT event_store.create_projection('po_fail', 'po_fail(event_store.event)', categories => '{po}',
                                     mode => 'async');
SELECT event_store.run_projections(50) AS applied;
SELECT count(event_store.append('po-' || (i % 5), '{"type": "B"}')) FROM generate_series(1, 20) i;
SELECT event_store.run_projections() AS applied;
SELECT proj, count(*) AS applied, count(DISTINCT position) AS distinct_events,
       count(*) FILTER (WHERE position < prev) AS out_of_global_order
  FROM (SELECT proj, position, lag(position) OVER (PARTITION BY proj ORDER BY seq) AS prev FROM po_seen) x
 GROUP BY proj ORDER BY proj;
SELECT event_store.drop_projection('po_park');
SELECT event_store.drop_projection('po_fail');
DROP TABLE po_seen;
DROP FUNCTION po_park(event_store.event), po_fail(event_store.event);
