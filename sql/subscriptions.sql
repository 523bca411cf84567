--
-- Subscriptions: consumer groups on the log.  Streams are hashed into
-- partitions, a partition is leased to one consumer at a time, a failing
-- event holds back only its own stream, and what a consumer did not
-- acknowledge goes to the next holder with attempt + 1.
--
CREATE FUNCTION regress.wait_for_lease_expiry(sub text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- waits on the state it needs: every lease of the subscription expired
    WHILE clock_timestamp() <= (SELECT max(lease_expires_at) FROM event_store.subscription_partitions
                                 WHERE subscription = sub) LOOP
        PERFORM pg_sleep(0.005);
    END LOOP;
END $$;

SELECT count(event_store.append('sub-' || i, '[{"type": "Opened"}, {"type": "Closed"}]')) AS appended FROM generate_series(1, 8) i;
SELECT event_store.append('other-1', '{"type": "Opened"}');
SELECT event_store.head_position() AS sub_start \gset
SELECT min(global_position) - 1 AS sub_from FROM event_store.events WHERE stream_id = 'sub-1' \gset

-- bad arguments: class 22, nothing written
SELECT regress.try($$SELECT event_store.create_subscription(NULL)$$);
SELECT regress.try($$SELECT event_store.create_subscription('')$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', partitions => 0)$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', partitions => 1025)$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', start_position => -1)$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', max_attempts => 0)$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', retry_backoff => '1 ms')$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', categories => '{a-b}')$$);
SELECT regress.try($$SELECT event_store.create_subscription('s', event_types => '{}')$$);
SELECT count(*) AS nothing_written FROM event_store.subscriptions;

SELECT event_store.create_subscription('orders', categories => '{sub}', partitions => 4,
                                       start_position => :sub_from, max_attempts => 2,
                                       retry_backoff => '10 ms');
SELECT regress.try($$SELECT event_store.create_subscription('orders')$$);
SELECT name, categories, partitions, start_position = :sub_from AS from_start, max_attempts
  FROM event_store.subscriptions;
SELECT regress.try($$SELECT * FROM event_store.claim_events('nope', 'c1')$$);
SELECT regress.try($$SELECT * FROM event_store.claim_events('orders', NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.claim_events('orders', 'c1', -1)$$);
SELECT regress.try($$SELECT * FROM event_store.claim_events('orders', 'c1', lease => '0 s')$$);
SELECT regress.try($$SELECT * FROM event_store.claim_events('orders', 'c1', wait => '-1 s')$$);

-- the first consumer takes every partition, and gets the events of its
-- category in global order, each stream's in order
CREATE TABLE got AS
SELECT 'c1' AS consumer, * FROM event_store.claim_events('orders', 'c1', 100);
SELECT count(*) AS events, count(DISTINCT stream_id) AS streams,
       bool_and(stream_id LIKE 'sub-%') AS only_category, bool_and(attempt = 1) AS first_attempts,
       array_agg(global_position ORDER BY global_position) = array_agg(global_position) AS in_order
  FROM got;
SELECT count(*) = 4 AS holds_all FROM event_store.subscription_partitions WHERE holder = 'c1';
-- a stream's events are all in one partition
SELECT count(*) AS streams_in_two_partitions
  FROM (SELECT stream_id FROM got GROUP BY stream_id HAVING count(DISTINCT partition) > 1) x;

-- nothing more until new events come; never past head_position()
SELECT count(*) AS more FROM event_store.claim_events('orders', 'c1');
SELECT event_store.append('sub-1', '{"type": "Reopened"}');
SELECT stream_id, event_type, attempt FROM event_store.claim_events('orders', 'c1');

-- acknowledging: of this consumer, up to a position; an ack by another
-- consumer changes nothing (55000)
SELECT regress.try($$SELECT event_store.ack_events('orders', 'c2', 1000000)$$);
SELECT event_store.ack_events('orders', 'c1', (SELECT min(global_position) FROM got)) AS acked_one;
SELECT event_store.ack_events('orders', 'c1', event_store.head_position()) AS acked_rest;
SELECT sum(cardinality(pending)) AS pending FROM event_store.subscription_partitions;

-- a second consumer: the first gives back what is beyond its fair share
-- (idle partitions) when it claims next; the second takes them
SELECT count(*) FROM event_store.claim_events('orders', 'c2');
SELECT count(*) FROM event_store.claim_events('orders', 'c1');
SELECT count(*) FROM event_store.claim_events('orders', 'c2');
SELECT holder, count(*) FROM event_store.subscription_partitions GROUP BY holder ORDER BY holder;
SELECT consumers FROM event_store.subscription_status WHERE name = 'orders';

-- a failing event holds back only its own stream
SELECT count(event_store.append('sub-' || i, '{"type": "Paid"}')) AS appended FROM generate_series(1, 8) i;
CREATE TABLE batch AS
SELECT 'c1' AS consumer, * FROM event_store.claim_events('orders', 'c1')
UNION ALL
SELECT 'c2', * FROM event_store.claim_events('orders', 'c2');
SELECT count(*) AS paid, count(DISTINCT consumer) AS consumers FROM batch;
SELECT consumer AS failing_consumer, stream_id AS failing_stream, global_position AS failing_position
  FROM batch ORDER BY global_position LIMIT 1 \gset
SELECT regexp_replace(regress.try($$SELECT event_store.nack_event('orders', 'nobody', $$ || :failing_position || $$, 'x')$$),
                      'position \d+', 'position N');
SELECT regress.try(format('SELECT event_store.nack_event(%L, %L, 0, %L)', 'orders', :'failing_consumer', 'x'));
SELECT regress.try(format('SELECT event_store.nack_event(%L, %L, %s, NULL)', 'orders', :'failing_consumer', :failing_position));
SELECT event_store.nack_event('orders', :'failing_consumer', :failing_position, 'card declined', '0 s');
SELECT stream_id = :'failing_stream' AS failing_stream, global_position = :failing_position AS at_event,
       attempts, last_error, parked_at IS NULL AS not_parked
  FROM event_store.subscription_streams;
SELECT event_store.ack_events('orders', consumer, event_store.head_position())
  FROM (SELECT DISTINCT consumer FROM batch) c ORDER BY 1;
SELECT retrying_streams, parked_streams, in_flight FROM event_store.subscription_status;
-- a later event of that stream waits; the other streams go on
SELECT event_store.append(:'failing_stream', '{"type": "Shipped"}');
SELECT event_store.append('sub-8', '{"type": "Shipped"}');
SELECT stream_id = :'failing_stream' AS failing_stream, event_type, attempt
  FROM (SELECT * FROM event_store.claim_events('orders', 'c1')
        UNION ALL SELECT * FROM event_store.claim_events('orders', 'c2')) x
 ORDER BY global_position;
-- (the retry came, attempt 2; its stream's later event waits until it is
-- acknowledged)
-- its second failure parks the stream (max_attempts 2)
SELECT event_store.nack_event('orders', :'failing_consumer', :failing_position, 'card declined again');
SELECT stream_id = :'failing_stream' AS failing_stream, global_position = :failing_position AS at_event,
       event_type, attempts, last_error, parked_at IS NOT NULL AS parked
  FROM event_store.subscription_parked;
SELECT event_store.ack_events('orders', c, event_store.head_position()) FROM unnest('{c1,c2}'::text[]) c;
SELECT count(*) AS parked_not_delivered
  FROM (SELECT * FROM event_store.claim_events('orders', 'c1')
        UNION ALL SELECT * FROM event_store.claim_events('orders', 'c2')) x;
SELECT retrying_streams, parked_streams FROM event_store.subscription_status;

-- replay: delivered again from the parked event, attempts reset
SELECT event_store.replay_parked('orders', 'sub-nope') AS none;
SELECT event_store.replay_parked('orders') AS replayed;
SELECT event_type, attempt
  FROM (SELECT * FROM event_store.claim_events('orders', 'c1')
        UNION ALL SELECT * FROM event_store.claim_events('orders', 'c2')) x
 ORDER BY global_position;
-- park it once more, then skip: acknowledged without delivery, recorded
SELECT event_store.nack_event('orders', :'failing_consumer', :failing_position, 'no', '0 s');
SELECT event_store.ack_events('orders', c, event_store.head_position()) FROM unnest('{c1,c2}'::text[]) c;
SELECT count(*) FROM (SELECT * FROM event_store.claim_events('orders', 'c1')
                      UNION ALL SELECT * FROM event_store.claim_events('orders', 'c2')) x;
SELECT event_store.nack_event('orders', :'failing_consumer', :failing_position, 'still no', '0 s');
SELECT event_store.skip_parked('orders') AS skipped;
SELECT stream_id = :'failing_stream' AS failing_stream, global_position = :failing_position AS at_event,
       last_error, skipped_by::text = current_user AS by_me
  FROM event_store.subscription_skipped;
SELECT count(*) AS held FROM event_store.subscription_streams;
SELECT event_store.append(:'failing_stream', '{"type": "Refunded"}');
SELECT stream_id = :'failing_stream' AS failing_stream, event_type, attempt
  FROM (SELECT * FROM event_store.claim_events('orders', 'c1')
        UNION ALL SELECT * FROM event_store.claim_events('orders', 'c2')) x;
SELECT event_store.ack_events('orders', c, event_store.head_position()) FROM unnest('{c1,c2}'::text[]) c;

-- a lease that expires: what was not acknowledged goes to the next holder,
-- attempt + 1; the old holder's ack changes nothing (55000)
SELECT count(event_store.append('sub-' || i, '{"type": "Archived"}')) AS appended FROM generate_series(1, 8) i;
SELECT count(*) AS handed FROM event_store.claim_events('orders', 'c1', lease => '20 ms');
SELECT count(*) AS handed FROM event_store.claim_events('orders', 'c2', lease => '20 ms');
SELECT regress.wait_for_lease_expiry('orders');
SELECT regress.try($$SELECT event_store.ack_events('orders', 'c1', event_store.head_position())$$);
SELECT count(*) AS redelivered, min(attempt) AS attempt, count(DISTINCT stream_id) AS streams,
       bool_and(event_type = 'Archived') AS archived
  FROM event_store.claim_events('orders', 'c3');
SELECT event_store.ack_events('orders', 'c3', event_store.head_position()) AS acked;
SELECT holder, count(*) FROM event_store.subscription_partitions GROUP BY holder ORDER BY holder;

-- release: unacknowledged events go to the next holder at once
SELECT count(event_store.append('sub-' || i, '{"type": "Deleted"}')) AS appended FROM generate_series(1, 8) i;
SELECT count(*) AS handed FROM event_store.claim_events('orders', 'c3');
SELECT event_store.release_events('orders', 'c3');
SELECT count(*) AS holders FROM event_store.subscription_partitions WHERE holder IS NOT NULL;
SELECT count(*) AS redelivered, min(attempt) AS attempt FROM event_store.claim_events('orders', 'c4');
SELECT event_store.ack_events('orders', 'c4', event_store.head_position()) AS acked;

-- a claim with wait returns when the wait is over, with nothing
SELECT count(*) AS nothing FROM event_store.claim_events('orders', 'c4', wait => '30 ms');

-- event types filter, and the owner's category grants decide what is delivered
SELECT event_store.create_subscription('paid', event_types => '{Paid}', partitions => 1,
                                       start_position => :sub_from);
SELECT count(*) AS paid, bool_and(event_type = 'Paid') AS only_paid
  FROM event_store.claim_events('paid', 'c1', 1000);

-- who may use a subscription: members of its owner (42501 otherwise)
CREATE ROLE sub_owner;
CREATE ROLE sub_stranger;
GRANT USAGE ON SCHEMA regress TO sub_owner, sub_stranger;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA event_store TO sub_owner, sub_stranger;
SET ROLE sub_owner;
SELECT event_store.create_subscription('mine', partitions => 2);
RESET ROLE;
SET ROLE sub_stranger;
SELECT regress.try($$SELECT * FROM event_store.claim_events('mine', 'x')$$);
SELECT regress.try($$SELECT event_store.ack_events('mine', 'x', 1)$$);
SELECT regress.try($$SELECT event_store.nack_event('mine', 'x', 1, 'e')$$);
SELECT regress.try($$SELECT event_store.release_events('mine', 'x')$$);
SELECT regress.try($$SELECT event_store.replay_parked('mine')$$);
SELECT regress.try($$SELECT event_store.skip_parked('mine')$$);
SELECT regress.try($$SELECT event_store.drop_subscription('mine')$$);
RESET ROLE;
SET ROLE sub_owner;
SELECT count(*) > 0 AS owner_claims FROM event_store.claim_events('mine', 'x', 1);
SELECT event_store.drop_subscription('mine');
RESET ROLE;
-- grants on a category bind the owner's subscriptions too
SELECT event_store.grant_category('sub_stranger', 'sub', '{read}');
SET ROLE sub_owner;
SELECT event_store.create_subscription('mine', partitions => 1);
SELECT count(*) FILTER (WHERE stream_id LIKE 'sub-%') AS sub_events, count(*) > 0 AS others
  FROM event_store.claim_events('mine', 'x', 10000);
RESET ROLE;
SELECT event_store.revoke_category('sub_stranger', 'sub', '{read}');
SELECT event_store.drop_subscription('mine');
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_store FROM sub_owner, sub_stranger;
REVOKE USAGE ON SCHEMA regress FROM sub_owner, sub_stranger;
DROP ROLE sub_owner, sub_stranger;

-- claims and acks write their partition rows back from C (holders changed
-- above, so some of those updates were not HOT): both indexes find every row
CREATE TEMP TABLE part_rows AS
    SELECT subscription, partition, holder FROM event_store.subscription_partitions;
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS part_rows,
       count(*) FILTER (WHERE EXISTS (SELECT 1 FROM event_store.subscription_partitions p
                                       WHERE p.subscription = r.subscription
                                         AND p.partition = r.partition)) AS found_by_key,
       count(*) FILTER (WHERE r.holder IS NULL OR EXISTS (
                           SELECT 1 FROM event_store.subscription_partitions p
                            WHERE p.subscription = r.subscription AND p.holder = r.holder
                              AND p.partition = r.partition)) AS found_by_holder,
       count(*) FILTER (WHERE r.holder IS NOT NULL) > 0 AS some_held
  FROM part_rows r;
RESET enable_seqscan;
RESET enable_bitmapscan;
DROP TABLE part_rows;

-- a claimed event's row is the event as stored, every column, with its
-- partition (its stream id's hash) and attempt: small data, data stored
-- compressed in the row, and data stored out of line
SELECT count(event_store.append('rows-' || i,
         jsonb_build_object('type', 'Sized', 'data', jsonb_build_object('blob',
           CASE WHEN i = 6 THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 400) g)
                ELSE repeat(md5(i::text), i * i * 20) END)))) AS appended
  FROM generate_series(1, 6) i;
SELECT event_store.create_subscription('rows', categories => '{rows}', partitions => 4);
CREATE TABLE rows_got AS SELECT * FROM event_store.claim_events('rows', 'r1', 100);
SELECT count(*) AS events,
       count(*) FILTER (WHERE (g.stream_id, g.stream_version, g.event_id, g.event_type, g.data,
                               g.metadata, g.schema_version, g.recorded_at)
                              IS NOT DISTINCT FROM
                              (e.stream_id, e.stream_version, e.event_id, e.event_type, e.data,
                               e.metadata, e.schema_version, e.recorded_at)) AS as_stored,
       bool_and(g.partition = ((hashtextextended(g.stream_id, 0) % 4) + 4) % 4) AS partitions_by_hash,
       bool_and(g.attempt = 1) AS first_attempts,
       count(*) FILTER (WHERE pg_column_compression(e.data) IS NOT NULL) AS compressed
  FROM rows_got g JOIN event_store.events e USING (global_position);
SELECT event_store.ack_events('rows', 'r1', event_store.head_position()) AS acked;
SELECT event_store.drop_subscription('rows');
DROP TABLE rows_got;

-- upcast events and a type filter on the upcast type: the claimed rows are
-- read_all's (upcast) rows, every column, with or without an upcaster on
-- the event, stored small, compressed or out of line; so are the rows a
-- claim delivers again (attempt 2)
CREATE FUNCTION sub_upcast(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data || '{"upcast": true}' $$;
SELECT count(event_store.append('urows-' || i,
         jsonb_build_object('type', CASE WHEN i % 2 = 0 THEN 'UOld' ELSE 'UKept' END,
                            'metadata', jsonb_build_object('i', i),
                            'data', jsonb_build_object('blob',
           CASE WHEN i = 8 THEN (SELECT string_agg(md5(i::text || g), '') FROM generate_series(1, 400) g)
                ELSE repeat(md5(i::text), i * i * 20) END)))) AS appended
  FROM generate_series(1, 8) i;
SELECT event_store.register_upcaster('UOld', 1, 'sub_upcast(jsonb,jsonb)', 'UNew');
SELECT event_store.create_subscription('urows', categories => '{urows}', partitions => 3);
SELECT event_store.create_subscription('unew', event_types => '{UNew}', partitions => 2);
CREATE TABLE urows_got AS
  SELECT 'urows' AS sub, * FROM event_store.claim_events('urows', 'u1', 100)
  UNION ALL SELECT 'unew', * FROM event_store.claim_events('unew', 'u1', 100);
SELECT event_store.release_events('urows', 'u1');
INSERT INTO urows_got SELECT 'urows again', * FROM event_store.claim_events('urows', 'u2', 100);
SELECT g.sub, count(*) AS events,
       count(*) FILTER (WHERE (g.global_position, g.stream_id, g.stream_version, g.event_id, g.event_type,
                               g.data, g.metadata, g.schema_version, g.recorded_at)
                              IS NOT DISTINCT FROM
                              (r.global_position, r.stream_id, r.stream_version, r.event_id, r.event_type,
                               r.data, r.metadata, r.schema_version, r.recorded_at)) AS as_read,
       count(*) FILTER (WHERE g.event_type = 'UNew' AND g.data ? 'upcast') AS upcast,
       count(*) FILTER (WHERE pg_column_size(g.data) > 2000) AS large,
       min(g.attempt) AS attempt
  FROM urows_got g
  LEFT JOIN event_store.read_all(0, 100000) r ON r.global_position = g.global_position
 GROUP BY g.sub ORDER BY g.sub;
SELECT event_store.drop_subscription('urows');
SELECT event_store.drop_subscription('unew');
SELECT event_store.drop_upcaster('UOld', 1);
DROP TABLE urows_got;
DROP FUNCTION sub_upcast(jsonb, jsonb);

-- churn in one transaction (no version can be pruned, so pages fill up and
-- updates written from C stop being HOT), partitions moving between
-- consumers (the holder is indexed): every row version has its entry in
-- every index (amcheck, heapallindexed), and each consumer still finds its
-- partitions by holder
CREATE EXTENSION IF NOT EXISTS amcheck;
SELECT count(event_store.append('churn-' || (i % 40), jsonb_build_object('type', 'Churned')))
       AS appended FROM generate_series(1, 400) i;
SELECT event_store.create_subscription('churn', categories => '{churn}', partitions => 16);
BEGIN;
DO $$
DECLARE
    c text;
BEGIN
    FOR r IN 1..40 LOOP
        FOREACH c IN ARRAY ARRAY['k1', 'k2', 'k3', 'k4'] LOOP
            PERFORM count(*) FROM event_store.claim_events('churn', c, 3, lease => '1 hour');
            IF r % 3 = 0 AND EXISTS (SELECT 1 FROM event_store.subscription_partitions
                                     WHERE subscription = 'churn' AND holder = c) THEN
                PERFORM event_store.ack_events('churn', c, event_store.head_position());
            END IF;
        END LOOP;
        -- one consumer goes: its partitions are taken by the others' next claims
        PERFORM event_store.release_events('churn', (ARRAY['k1', 'k2', 'k3', 'k4'])[1 + r % 4]);
    END LOOP;
END $$;
SELECT relname, n_tup_upd - n_tup_hot_upd > 0 AS not_hot_updates
  FROM pg_stat_xact_user_tables
 WHERE relname IN ('subscription_partitions', 'subscription_consumers') ORDER BY relname;
SELECT c.relname AS index, bool_and(true) AS checked
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid,
       LATERAL bt_index_check(i.indexrelid, true)
 WHERE i.indrelid IN ('event_store.subscription_partitions'::regclass,
                      'event_store.subscription_consumers'::regclass)
 GROUP BY c.relname ORDER BY c.relname;
COMMIT;
-- each consumer's claim finds what it holds: the partitions by holder
-- (index) are those a sequential scan finds, and the acks take every event
SELECT sum(n) AS acked
  FROM (SELECT event_store.ack_events('churn', c, event_store.head_position()) AS n
          FROM unnest(ARRAY['k1', 'k2', 'k3', 'k4']) c
         WHERE EXISTS (SELECT 1 FROM event_store.subscription_partitions
                        WHERE subscription = 'churn' AND holder = c)) a;
SELECT sum(cardinality(pending)) AS pending FROM event_store.subscription_partitions
 WHERE subscription = 'churn';
SELECT event_store.drop_subscription('churn');
DROP EXTENSION amcheck;

-- drop removes everything of it
SELECT regress.try($$SELECT event_store.drop_subscription('nope')$$);
SELECT event_store.drop_subscription('orders');
SELECT event_store.drop_subscription('paid');
SELECT (SELECT count(*) FROM event_store.subscription_partitions) AS partitions,
       (SELECT count(*) FROM event_store.subscription_consumers) AS consumers,
       (SELECT count(*) FROM event_store.subscription_streams) AS streams,
       (SELECT count(*) FROM event_store.subscription_skipped) AS skipped;
DROP TABLE got, batch;
