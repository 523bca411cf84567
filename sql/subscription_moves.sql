--
-- subscription_moves: claims that read events where an earlier claim of
-- the backend saw them (by TID) while rows move or go away under them --
-- a purged stream whose places are taken by new events, a rolled-back
-- append seen by a claim of its own transaction, the events table rewritten
-- (VACUUM FULL, CLUSTER) -- hand out every event once, in order per
-- partition, never above head_position(), filtered, upcast and restricted to
-- the owner's categories exactly as a claim that scans the log does, per
-- partition count and from any start position, around a nacked stream, and
-- several calls in one statement; and look-alike tables in
-- pg_temp change nothing.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- two categories, 16 streams x 10 events, interleaved; 'Old' events are
-- upcast to 'New' with a mark in their data
CREATE FUNCTION mv_upcast(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT data || '{"upcast": true}' $$;
SELECT event_store.register_upcaster('Old', 1, 'mv_upcast(jsonb,jsonb)', 'New');
CREATE FUNCTION mv_append(first int, last int, streams text DEFAULT '') RETURNS bigint
LANGUAGE sql AS $$
    SELECT count(event_store.append((ARRAY['mva-', 'mvb-'])[1 + i % 2] || (i % 16) || streams,
                                    jsonb_build_object('type', (ARRAY['Old', 'Other', 'Other'])[1 + i % 3],
                                                       'data', jsonb_build_object('i', i))))
      FROM generate_series(first, last) i
$$;
SELECT mv_append(1, 160) AS appended;

-- a role that may read only the category mva
CREATE ROLE mv_owner;
CREATE ROLE mv_other;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA event_store TO mv_owner;
SELECT event_store.grant_category('mv_owner', 'mva', '{read}');
SELECT event_store.grant_category('mv_other', 'mvb', '{read}');

-- what rounds handed out
CREATE TABLE mv_got (sub text, partition int, global_position bigint, stream_id text,
                     event_type text, data jsonb, ord bigserial);
GRANT ALL ON mv_got TO mv_owner;
GRANT ALL ON SEQUENCE mv_got_ord_seq TO mv_owner;

-- one round: consumers a and b (2 of the 4 partitions each), claims of 7
-- until both are dry; every claim's events at or below head_position()
CREATE FUNCTION mv_round(s text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    c text;
    n bigint;
    last bigint;
    above bigint;
    dry int := 0;
    claims bigint := 0;
BEGIN
    FOREACH c IN ARRAY ARRAY['a', 'b', 'a', 'b'] LOOP
        PERFORM event_store.claim_events(s, c, 0);
    END LOOP;
    FOR round IN 1..200 LOOP
        c := (ARRAY['a', 'b'])[1 + round % 2];
        WITH claimed AS (
            INSERT INTO mv_got (sub, partition, global_position, stream_id, event_type, data)
            SELECT s, e.partition, e.global_position, e.stream_id, e.event_type, e.data
              FROM event_store.claim_events(s, c, 7) e
            RETURNING global_position)
        SELECT count(*), max(global_position),
               count(*) FILTER (WHERE global_position > event_store.head_position())
          INTO STRICT n, last, above FROM claimed;
        IF above > 0 THEN
            RAISE EXCEPTION 'subscription % handed out % events above the head', s, above;
        END IF;
        IF n > 0 THEN
            claims := claims + 1;
            PERFORM event_store.ack_events(s, c, last);
            dry := 0;
        ELSE
            dry := dry + 1;
        END IF;
        IF dry = 2 THEN
            RETURN claims;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'subscription % still handing out events after 200 claims', s;
END $$;
GRANT EXECUTE ON FUNCTION mv_round(text) TO mv_owner;

-- a round compared with what it should have handed out (computed from the
-- stored rows): missing, extra and repeated events, partitions out of
-- order, events of a partition other than their stream's
CREATE FUNCTION mv_check(s text, only_category text DEFAULT NULL, only_upcast bool DEFAULT false)
RETURNS TABLE (events bigint, missing bigint, extra bigint, repeated bigint, out_of_order bigint,
               mixed_partitions bigint)
LANGUAGE sql AS $$
    WITH want AS (
        SELECT global_position FROM event_store.events
         WHERE (only_category IS NULL OR stream_id LIKE only_category || '-%')
           AND (NOT only_upcast OR (event_type = 'Old' AND schema_version = 1))
    ), got AS (SELECT * FROM mv_got WHERE sub = s)
    SELECT (SELECT count(*) FROM got),
           (SELECT count(*) FROM want w WHERE NOT EXISTS (SELECT 1 FROM got g
                                                           WHERE g.global_position = w.global_position)),
           (SELECT count(*) FROM got g WHERE NOT EXISTS (SELECT 1 FROM want w
                                                          WHERE w.global_position = g.global_position)),
           (SELECT count(*) - count(DISTINCT global_position) FROM got),
           (SELECT count(*) FROM (SELECT global_position < lag(global_position)
                                         OVER (PARTITION BY partition ORDER BY ord) AS back
                                    FROM got) x WHERE back),
           (SELECT count(*) FROM (SELECT stream_id FROM got GROUP BY stream_id
                                  HAVING count(DISTINCT partition) > 1) x)
$$;

-- the first round scans the log (and learns where each event is)
SELECT event_store.create_subscription('mv1', partitions => 4);
SELECT mv_round('mv1') > 0 AS claimed;
SELECT * FROM mv_check('mv1');

-- read by TID now, for an owner who may read mva only, through a type
-- filter that matches the upcast type: exactly the upcast Old events of mva
SET ROLE mv_owner;
SELECT event_store.create_subscription('mv2', event_types => '{New}', partitions => 4);
SELECT mv_round('mv2') > 0 AS claimed;
-- its owner cannot lock (nor read) the subscription's rows to hold up claims
SELECT partition FROM event_store.subscription_partitions WHERE subscription = 'mv2' FOR UPDATE;
SELECT consumer FROM event_store.subscription_consumers WHERE subscription = 'mv2' FOR KEY SHARE;
BEGIN;
LOCK TABLE event_store.subscription_partitions IN SHARE MODE;
ROLLBACK;
RESET ROLE;
SELECT * FROM mv_check('mv2', 'mva', true);
SELECT bool_and(event_type = 'New' AND data ? 'upcast') AS all_upcast,
       bool_and(stream_id LIKE 'mva-%') AS only_mva
  FROM mv_got WHERE sub = 'mv2';
-- and the same subscription run by the superuser: the map is not the owner's
SELECT event_store.create_subscription('mv2s', event_types => '{New}', partitions => 4);
SELECT mv_round('mv2s') > 0 AS claimed;
SELECT * FROM mv_check('mv2s', NULL, true);
-- raw stored types never match a filter on the upcast one
SELECT event_store.create_subscription('mv2o', event_types => '{Old}', partitions => 4);
SELECT mv_round('mv2o') > 0 AS claimed;
SELECT count(*) AS old_handed_out FROM mv_got WHERE sub = 'mv2o';

-- a purged stream: its rows gone, VACUUM frees their places, new events of
-- new streams take them; the map's entries for the purged positions point
-- at rows that are other events now
SELECT string_agg(ctid::text, ' ') AS purged_tids FROM event_store.events
 WHERE stream_id = 'mva-4' \gset
SELECT event_store.delete_stream('mva-4');
SET event_store.allow_purge = on;
SELECT event_store.purge_stream('mva-4');
RESET event_store.allow_purge;
VACUUM event_store.events;
SELECT mv_append(161, 200, 'n') AS appended;
SELECT count(*) > 0 AS places_reused FROM event_store.events
 WHERE ctid::text = ANY (string_to_array(:'purged_tids', ' ')) AND stream_id <> 'mva-4';
SELECT event_store.create_subscription('mv3', partitions => 4);
SELECT mv_round('mv3') > 0 AS claimed;
SELECT * FROM mv_check('mv3');
SELECT count(*) AS purged_handed_out_marker_only FROM mv_got WHERE sub = 'mv3' AND stream_id = 'mva-4';

-- an append rolled back after a claim of its own transaction saw it: the
-- map learnt its rows, then VACUUM frees them and new events take them
BEGIN;
SELECT mv_append(201, 240, 'n') AS appended;
SELECT event_store.create_subscription('mv4tx', partitions => 4);
SELECT count(*) > 0 AS own_events_claimed FROM event_store.claim_events('mv4tx', 'a', 1000);
SELECT string_agg(ctid::text, ' ') AS rolled_back_tids, min(global_position) AS rolled_back_from
  FROM event_store.events WHERE (data ->> 'i')::int BETWEEN 201 AND 240 \gset
ROLLBACK;
VACUUM event_store.events;
SELECT mv_append(241, 280, 'n') AS appended;
SELECT count(*) > 0 AS places_reused FROM event_store.events
 WHERE ctid::text = ANY (string_to_array(:'rolled_back_tids', ' '))
   AND global_position > :rolled_back_from;
SELECT event_store.create_subscription('mv4', partitions => 4);
SELECT mv_round('mv4') > 0 AS claimed;
SELECT * FROM mv_check('mv4');

-- the events table rewritten: every row has another TID
VACUUM FULL event_store.events;
SELECT event_store.create_subscription('mv5', partitions => 4);
SELECT mv_round('mv5') > 0 AS claimed;
SELECT * FROM mv_check('mv5');
-- rewritten in another order; new events after it
CLUSTER event_store.events USING events_stream_id_stream_version_key;
SELECT mv_append(281, 300, 'n') AS appended;
SELECT event_store.create_subscription('mv6', partitions => 4);
SELECT mv_round('mv6') > 0 AS claimed;
SELECT * FROM mv_check('mv6');
-- the first subscription goes on after the purge and the rewrites: every
-- event there is now handed out once (and the purged ones before)
SELECT mv_round('mv1') > 0 AS claimed;
SELECT * FROM mv_check('mv1');
SELECT count(*) AS purged_handed_out_before FROM mv_got WHERE sub = 'mv1' AND stream_id = 'mva-4';

-- the map is per partition count: a subscription of 3 partitions scans,
-- the next one reads by TID, both hand out what they should
SELECT event_store.create_subscription('mv8', partitions => 3);
SELECT mv_round('mv8') > 0 AS claimed;
SELECT * FROM mv_check('mv8');
SELECT event_store.create_subscription('mv9', partitions => 3);
SELECT mv_round('mv9') > 0 AS claimed;
SELECT * FROM mv_check('mv9');
SELECT count(*) AS other_partitions FROM mv_got a JOIN mv_got b USING (global_position)
 WHERE a.sub = 'mv8' AND b.sub = 'mv9' AND a.partition <> b.partition;
-- from a start position in the middle of what the map knows: nothing at
-- or below it, everything above
SELECT min(global_position) + 100 AS mid FROM event_store.events \gset
SELECT event_store.create_subscription('mv10', partitions => 4, start_position => :mid);
SELECT mv_round('mv10') > 0 AS claimed;
SELECT count(*) FILTER (WHERE global_position <= :mid) AS at_or_below_start,
       count(*) - count(DISTINCT global_position) AS repeated,
       (SELECT count(*) FROM event_store.events WHERE global_position > :mid) - count(*) AS missing
  FROM mv_got WHERE sub = 'mv10';

-- a nacked stream read through the map: held back, its event retried
-- (attempt 2) before its later events, every other stream goes on
CREATE FUNCTION mv_nack_round(s text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint;
    last bigint;
    dry int := 0;
    first bigint;
    nacked bigint;
BEGIN
    PERFORM event_store.create_subscription(s, partitions => 4, retry_backoff => '10 ms');
    FOR round IN 1..200 LOOP
        WITH claimed AS (
            INSERT INTO mv_got (sub, partition, global_position, stream_id, event_type, data)
            SELECT s, e.partition, e.global_position, e.stream_id, e.event_type,
                   jsonb_build_object('attempt', e.attempt)
              FROM event_store.claim_events(s, 'a', 7,
                       -- while the nacked event waits for its retry, the claim waits for it
                       wait => CASE WHEN EXISTS (SELECT FROM event_store.subscription_streams
                                                  WHERE subscription = s AND handed_through IS NULL)
                                    THEN interval '1 minute' ELSE interval '0' END) e
            RETURNING global_position)
        SELECT count(*), max(global_position), min(global_position) INTO STRICT n, last, first FROM claimed;
        IF n > 0 THEN
            IF round = 1 THEN
                nacked := first;
                PERFORM event_store.nack_event(s, 'a', nacked, 'failed once', retry_after => '10 ms');
            END IF;
            PERFORM event_store.ack_events(s, 'a', last);
            dry := 0;
        ELSE
            dry := dry + 1;
            IF dry >= 2 THEN
                IF EXISTS (SELECT FROM event_store.subscription_streams WHERE subscription = s) THEN
                    RAISE EXCEPTION 'subscription % dry with a stream still held', s;
                END IF;
                RETURN nacked;
            END IF;
        END IF;
    END LOOP;
    RAISE EXCEPTION 'subscription % still handing out events after 200 claims', s;
END $$;
SELECT mv_nack_round('mv11') > 0 AS done;
SELECT count(*) AS deliveries, count(DISTINCT global_position) AS events,
       (SELECT count(*) FROM event_store.events) AS log_events,
       count(*) FILTER (WHERE data ->> 'attempt' = '2') AS retried
  FROM mv_got WHERE sub = 'mv11';
-- per stream, the deliveries never go back in the log
SELECT count(*) AS stream_out_of_order
  FROM (SELECT global_position < lag(global_position) OVER (PARTITION BY stream_id ORDER BY ord) AS back
          FROM mv_got WHERE sub = 'mv11') x WHERE back;
-- the retried event is the nacked one, and its stream's later events came after it
SELECT count(*) FILTER (WHERE g.data ->> 'attempt' = '2') AS retried_first_event,
       count(*) FILTER (WHERE g.ord > r.ord) = count(*) FILTER (WHERE g.global_position > r.global_position)
         AS later_events_after_retry
  FROM mv_got g
  JOIN (SELECT stream_id, global_position, ord FROM mv_got
         WHERE sub = 'mv11' AND data ->> 'attempt' = '2') r USING (stream_id)
 WHERE g.sub = 'mv11'
   AND r.global_position = (SELECT min(global_position) FROM mv_got WHERE sub = 'mv11');
DROP FUNCTION mv_nack_round(text);

-- several calls in one statement each see what the one before wrote
SELECT event_store.create_subscription('mv12', partitions => 2);
WITH c AS (SELECT * FROM event_store.claim_events('mv12', 'a', 5))
SELECT count(*) AS claimed, event_store.ack_events('mv12', 'a', max(global_position)) AS acked FROM c;
SELECT (SELECT count(*) FROM event_store.claim_events('mv12', 'a', 3)) AS first,
       (SELECT count(*) FROM event_store.claim_events('mv12', 'a', 3)) AS second;
SELECT sum(event_store.ack_events('mv12', 'a', p)) AS acked
  FROM (VALUES (0::bigint), (event_store.head_position())) v(p);
SELECT sum(cardinality(pending)) AS pending FROM event_store.subscription_partitions
 WHERE subscription = 'mv12';

-- look-alike tables in pg_temp, first in search_path, are never read nor
-- written: the subscription's own rows are
CREATE TEMP TABLE subscription_partitions (subscription text, partition int, holder text,
                                           position bigint);
CREATE TEMP TABLE subscription_consumers (subscription text, consumer text);
CREATE TEMP TABLE events (global_position bigint, stream_id text);
INSERT INTO pg_temp.events VALUES (100000, 'mva-1');
SET search_path = pg_temp, event_store, public;
SELECT event_store.create_subscription('mv7', partitions => 4);
SELECT mv_round('mv7') > 0 AS claimed;
SELECT * FROM mv_check('mv7');
SELECT (SELECT count(*) FROM pg_temp.subscription_partitions) AS temp_partitions,
       (SELECT count(*) FROM pg_temp.subscription_consumers) AS temp_consumers,
       (SELECT count(*) FROM event_store.subscription_partitions WHERE subscription = 'mv7') AS partitions;
RESET search_path;
DROP TABLE pg_temp.subscription_partitions, pg_temp.subscription_consumers, pg_temp.events;

-- clean up
DROP FUNCTION mv_round(text);
DROP FUNCTION mv_check(text, text, bool);
DROP TABLE mv_got;
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
RESET client_min_messages;
DROP FUNCTION mv_append(int, int, text);
DROP FUNCTION mv_upcast(jsonb, jsonb);
REVOKE ALL ON SCHEMA public FROM mv_owner;
DROP ROLE mv_owner, mv_other;
