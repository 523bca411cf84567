--
-- read_all, read_category, head_position and wait_for_events: position
-- order, paging with a cursor, max_count, event_types filters, categories,
-- the head and waiting for it, and bad arguments.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

-- an empty store: nothing to read, head 0
SELECT count(*) FROM event_store.read_all();
SELECT count(*) FROM event_store.read_category('order');
SELECT event_store.head_position();
SELECT event_store.wait_for_events(0, '10 ms');

-- events in several streams and categories (a stream id without "-" is its
-- own category; "orders-1" is not in category "order")
SELECT event_store.append('order-1', '[{"type": "OrderPlaced"}, {"type": "ItemAdded"}]');
SELECT event_store.append('customer', '{"type": "CustomerRegistryOpened"}');
SELECT event_store.append('customer-7', '{"type": "CustomerRegistered"}');
SELECT event_store.append('order-2', '{"type": "OrderPlaced"}');
SELECT event_store.append('orders-1', '{"type": "OrderPlaced"}');
SELECT event_store.append('order-1', '{"type": "OrderShipped"}');
SELECT event_store.append('customer-7', '{"type": "CustomerMoved"}');
SELECT event_store.append('order-2-b', '{"type": "ItemAdded"}');
SELECT event_store.append('payment', '{"type": "PaymentTaken"}');

-- the returned row type
SELECT * FROM event_store.read_all() \gdesc
SELECT * FROM event_store.read_category('order') \gdesc

-- everything, in position order
SELECT global_position, stream_id, stream_version, event_type
  FROM event_store.read_all();
-- exactly the stored rows
SELECT array_agg(r::text ORDER BY r.global_position)
     = (SELECT array_agg(e::text ORDER BY e.global_position) FROM event_store.events e)
       AS same_as_stored
  FROM event_store.read_all() r;

-- after_position and max_count
SELECT global_position, stream_id, event_type FROM event_store.read_all(3);
SELECT global_position, stream_id, event_type FROM event_store.read_all(0, 2);
SELECT global_position, stream_id, event_type FROM event_store.read_all(2, 3);
SELECT global_position, stream_id, event_type FROM event_store.read_all(9);
SELECT global_position, stream_id, event_type FROM event_store.read_all(10);
SELECT global_position, stream_id, event_type FROM event_store.read_all(1000);
SELECT global_position, stream_id, event_type FROM event_store.read_all(0, 0);
-- NULL max_count: no limit
SELECT count(*) FROM event_store.read_all(0, NULL);

-- event_types: only those types; max_count counts the matching events
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(0, 1000, ARRAY['OrderPlaced']);
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(0, 1000, ARRAY['ItemAdded', 'CustomerMoved']);
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(1, 2, ARRAY['OrderPlaced', 'ItemAdded']);
SELECT global_position, stream_id, event_type
  FROM event_store.read_all(event_types => ARRAY['PaymentTaken']);
SELECT count(*) FROM event_store.read_all(0, 1000, ARRAY['NoSuchType']);
SELECT count(*) FROM event_store.read_all(0, 1000, ARRAY[]::text[]);
SELECT count(*) FROM event_store.read_all(0, 1000, NULL);
-- type names are matched exactly
SELECT count(*) FROM event_store.read_all(0, 1000, ARRAY['orderplaced', 'OrderPlaced ']);

-- read_category: the streams whose id is the category or starts with it and "-"
SELECT global_position, stream_id, event_type FROM event_store.read_category('order');
SELECT global_position, stream_id, event_type FROM event_store.read_category('customer');
SELECT global_position, stream_id, event_type FROM event_store.read_category('orders');
SELECT global_position, stream_id, event_type FROM event_store.read_category('payment');
SELECT count(*) FROM event_store.read_category('Order');
SELECT count(*) FROM event_store.read_category('ord');
SELECT count(*) FROM event_store.read_category('shipment');
SELECT global_position, stream_id, event_type FROM event_store.read_category('order', 2);
SELECT global_position, stream_id, event_type FROM event_store.read_category('order', 0, 2);
SELECT global_position, stream_id, event_type
  FROM event_store.read_category('order', 0, 10, ARRAY['ItemAdded']);
SELECT global_position, stream_id, event_type
  FROM event_store.read_category(category => 'customer', after_position => 3,
                                 event_types => ARRAY['CustomerMoved', 'CustomerRegistered']);
SELECT count(*) FROM event_store.read_category('order', 0, 0);
SELECT count(*) FROM event_store.read_category('order', 0, NULL);
-- every category read together is the whole store
SELECT (SELECT array_agg(global_position ORDER BY global_position)
          FROM (SELECT * FROM event_store.read_category('order')
                UNION ALL SELECT * FROM event_store.read_category('orders')
                UNION ALL SELECT * FROM event_store.read_category('customer')
                UNION ALL SELECT * FROM event_store.read_category('payment')) c)
     = (SELECT array_agg(global_position ORDER BY global_position) FROM event_store.events)
       AS categories_cover_store;

-- head_position: the highest stored position when nothing is in flight
SELECT event_store.head_position() AS head,
       (SELECT max(global_position) FROM event_store.events) AS max_position;

--
-- Paging: a follower keeping the largest position it has seen as its
-- cursor collects every event exactly once, in position order.
--
SELECT count(event_store.append('bulk-' || (i % 7), jsonb_build_object('type', 'T' || (i % 3))))
  FROM generate_series(1, 200) AS i;
CREATE FUNCTION pg_temp.follow(page int, category text DEFAULT NULL, types text[] DEFAULT NULL,
                               OUT pages int, OUT positions bigint[])
LANGUAGE plpgsql AS $f$
DECLARE
    cursor_pos bigint := 0;
    got bigint[];
BEGIN
    pages := 0;
    positions := '{}';
    LOOP
        IF category IS NULL THEN
            SELECT array_agg(global_position ORDER BY global_position) INTO got
              FROM event_store.read_all(cursor_pos, page, types);
        ELSE
            SELECT array_agg(global_position ORDER BY global_position) INTO got
              FROM event_store.read_category(category, cursor_pos, page, types);
        END IF;
        EXIT WHEN got IS NULL;
        pages := pages + 1;
        positions := positions || got;
        cursor_pos := got[array_upper(got, 1)];
    END LOOP;
END
$f$;
SELECT f.pages,
       f.positions = (SELECT array_agg(global_position ORDER BY global_position)
                        FROM event_store.events) AS all_events_in_order
  FROM pg_temp.follow(7) f;
SELECT f.pages,
       f.positions = (SELECT array_agg(global_position ORDER BY global_position)
                        FROM event_store.events WHERE stream_id LIKE 'bulk-%') AS category_in_order
  FROM pg_temp.follow(9, 'bulk') f;
SELECT f.pages,
       f.positions = (SELECT array_agg(global_position ORDER BY global_position)
                        FROM event_store.events WHERE event_type IN ('T1', 'OrderPlaced'))
         AS filtered_in_order
  FROM pg_temp.follow(5, NULL, ARRAY['T1', 'OrderPlaced']) f;
SELECT f.pages,
       f.positions = (SELECT array_agg(global_position ORDER BY global_position)
                        FROM event_store.events WHERE stream_id LIKE 'bulk-%' AND event_type = 'T2')
         AS filtered_category_in_order
  FROM pg_temp.follow(4, 'bulk', ARRAY['T2']) f;
-- the default page size is 1000
SELECT count(*) FROM event_store.read_all();
SELECT event_store.append('bulk-big',
       (SELECT jsonb_agg(jsonb_build_object('type', 'Big')) FROM generate_series(1, 1200)));
SELECT count(*) AS first_page, max(global_position) AS cursor FROM event_store.read_all() \gset
SELECT :first_page AS first_page, count(*) AS second_page FROM event_store.read_all(:cursor);
SELECT count(*) FROM event_store.read_category('bulk');

--
-- A rolled back append leaves a hole in the positions; it never stalls
-- followers, and the next event is found after the cursor.
--
SELECT max(global_position) AS seen FROM event_store.events \gset
BEGIN;
SELECT event_store.append('order-3', '{"type": "OrderPlaced"}');
-- our own uncommitted event is visible to ourselves
SELECT stream_id, event_type FROM event_store.read_all(:seen);
ROLLBACK;
SELECT count(*) FROM event_store.read_all(:seen);
SELECT event_store.head_position() >= :seen AS head_not_behind;
SELECT event_store.append('order-3', '{"type": "OrderPlacedAgain"}');
SELECT global_position > :seen + 1 AS after_the_hole, stream_id, event_type
  FROM event_store.read_all(:seen);
SELECT event_store.head_position() = max(global_position) AS head_is_max
  FROM event_store.events;

--
-- wait_for_events returns the head: at once when it is past after_position,
-- otherwise when the timeout expires (then the head is unchanged)
--
SELECT event_store.head_position() AS head \gset
-- (a wait that should end at once but does not runs into statement_timeout)
SET statement_timeout = '60s';
SELECT event_store.wait_for_events(0) = :head AS immediate;
SELECT event_store.wait_for_events(:head - 1, '1 hour') = :head AS immediate;
SELECT event_store.wait_for_events(:head, '10 ms') = :head AS timed_out;
SELECT event_store.wait_for_events(:head + 100, '0 s') = :head AS timed_out;
SELECT event_store.wait_for_events(after_position => :head, timeout => '1 ms') = :head AS timed_out;
RESET statement_timeout;

--
-- bad arguments: class 22
--
SELECT regress.try($$SELECT * FROM event_store.read_all(NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_all(-1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_all(0, -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_all(0, 10, ARRAY['A', NULL])$$);
SELECT regress.try($$SELECT * FROM event_store.read_all(0, 10, ARRAY[['A'], ['B']])$$);
SELECT regress.try($$SELECT * FROM event_store.read_category(NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('')$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('order-1')$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('-')$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('order', NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('order', -5)$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('order', 0, -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_category('order', 0, 10, ARRAY[NULL]::text[])$$);
SELECT regress.try($$SELECT event_store.wait_for_events(NULL)$$);
SELECT regress.try($$SELECT event_store.wait_for_events(-1, '10 ms')$$);
SELECT regress.try($$SELECT event_store.wait_for_events(0, NULL)$$);
SELECT regress.try($$SELECT event_store.wait_for_events(0, '-1 s')$$);
