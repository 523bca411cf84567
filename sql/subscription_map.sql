--
-- subscription_map: a backend that claims the same part of the log for
-- several subscriptions of as many partitions reads its own partitions'
-- events where its earlier claims saw them (by TID); events archived since,
-- or whose row's place was reused, are still handed out once each, in
-- order per partition.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

SET allow_in_place_tablespaces = on;
CREATE TABLESPACE map_cold LOCATION '';
RESET allow_in_place_tablespaces;

-- 16 streams x 10 events, interleaved: 160 events
SELECT count(event_store.append('m-' || i % 16, jsonb_build_object('type', 'E', 'data', jsonb_build_object('i', i))))
  AS appended FROM generate_series(1, 160) i;

-- one round: a fresh 4-partition subscription, consumers a and b (2
-- partitions each, balanced as a claim does), claims of 7 until both are dry
CREATE TABLE map_got (sub text, partition int, global_position bigint, stream_id text,
                      ord bigserial);
CREATE FUNCTION map_round(s text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c text;
    n bigint;
    last bigint;
    dry int := 0;
BEGIN
    PERFORM event_store.create_subscription(s, partitions => 4);
    FOREACH c IN ARRAY ARRAY['a', 'b', 'a', 'b'] LOOP
        PERFORM event_store.claim_events(s, c, 0);
    END LOOP;
    FOR round IN 1..200 LOOP
        c := (ARRAY['a', 'b'])[1 + round % 2];
        WITH claimed AS (
            INSERT INTO map_got (sub, partition, global_position, stream_id)
            SELECT s, e.partition, e.global_position, e.stream_id
              FROM event_store.claim_events(s, c, 7) e
            RETURNING global_position)
        SELECT count(*), max(global_position) INTO STRICT n, last FROM claimed;
        IF n > 0 THEN
            PERFORM event_store.ack_events(s, c, last);
            dry := 0;
        ELSE
            dry := dry + 1;
        END IF;
        IF dry = 2 THEN
            RETURN (SELECT string_agg(holder, ' ' ORDER BY partition)
                      FROM event_store.subscription_partitions WHERE subscription = s);
        END IF;
    END LOOP;
    RAISE EXCEPTION 'subscription % still handing out events after 200 claims', s;
END $$;
-- what a round handed out: every event once, and per partition in log order
CREATE FUNCTION map_check(s text) RETURNS TABLE (events bigint, distinct_events bigint,
                                                 log_events bigint, out_of_order bigint)
LANGUAGE sql AS $$
    SELECT count(*), count(DISTINCT global_position), (SELECT count(*) FROM event_store.events),
           (SELECT count(*) FROM (SELECT global_position < lag(global_position)
                                         OVER (PARTITION BY partition ORDER BY ord) AS back
                                    FROM map_got WHERE sub = s) x WHERE back)
      FROM map_got WHERE sub = s
$$;

-- the first round reads the log by position, the second where the first saw it
SELECT map_round('map1') AS holders;
SELECT * FROM map_check('map1');
SELECT map_round('map2') AS holders;
SELECT * FROM map_check('map2');
SELECT count(*) AS same_partitions FROM map_got a JOIN map_got b USING (global_position, partition)
 WHERE a.sub = 'map1' AND b.sub = 'map2';

-- the first 40 events move to an archive range: their rows in the hot table
-- are gone, so they are looked up by position
SELECT event_store.archive_events(41, 'map_cold') AS moved;
SELECT map_round('map3') AS holders;
SELECT * FROM map_check('map3');
SELECT count(*) FILTER (WHERE global_position < 41) AS archived_handed_out FROM map_got WHERE sub = 'map3';

-- their places in the hot table freed and taken by new events
VACUUM event_store.events;
SELECT count(event_store.append('m-' || i % 16, jsonb_build_object('type', 'E', 'data', jsonb_build_object('i', i))))
  AS appended FROM generate_series(161, 200) i;
SELECT map_round('map4') AS holders;
SELECT * FROM map_check('map4');

-- a claim as large as max_count allows: the known log read a part at a time
SELECT event_store.create_subscription('map5', partitions => 4);
SELECT count(*) AS events, count(DISTINCT global_position) AS distinct_events,
       count(*) = (SELECT count(*) FROM event_store.events) AS whole_log
  FROM event_store.claim_events('map5', 'solo', 2147483647);
SELECT event_store.drop_subscription('map5');
-- the same over more events than one part: 1,200 more, seen once by a
-- claim that scans them, then handed out again through what it saw
SELECT count(event_store.append('m-' || i % 16, jsonb_build_object('type', 'E', 'data', jsonb_build_object('i', i))))
  AS appended FROM generate_series(201, 1400) i;
SELECT event_store.create_subscription('map6', partitions => 4);
SELECT count(*) AS events FROM event_store.claim_events('map6', 'solo', 2147483647);
SELECT event_store.create_subscription('map7', partitions => 4);
SELECT count(*) AS events, count(DISTINCT global_position) AS distinct_events,
       count(*) = (SELECT count(*) FROM event_store.events) AS whole_log
  FROM event_store.claim_events('map7', 'solo', 2147483647);
SELECT event_store.drop_subscription('map6');
SELECT event_store.drop_subscription('map7');

-- clean up
DROP FUNCTION map_round(text);
DROP FUNCTION map_check(text);
DROP TABLE map_got;
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
RESET client_min_messages;
DROP TABLESPACE map_cold;
