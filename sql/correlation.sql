--
-- correlation: read_correlated (order, paging, gap-safe horizon, grants,
-- upcasting, argument errors, the runs it reads); sagas stamp their events with
-- correlationId (the saga id) and causationId (the event that caused the
-- transition); saga_diagram of a saga type and of a saga.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
DROP SCHEMA IF EXISTS corr CASCADE;
DROP ROLE IF EXISTS corr_reader;
DROP ROLE IF EXISTS corr_outsider;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

CREATE ROLE corr_reader;
CREATE ROLE corr_outsider;
GRANT USAGE ON SCHEMA regress TO corr_reader, corr_outsider;
GRANT EXECUTE ON FUNCTION event_store.read_correlated(text, bigint, int),
    event_store.saga_diagram(uuid), event_store.saga_diagram(text),
    event_store.saga_state(uuid) TO corr_reader, corr_outsider;

--
-- read_correlated: every event of one correlation, in position order,
-- across streams and categories; events of other correlations and events
-- without one are left out
--
SELECT event_store.append('corrorder-1', '[{"type": "OrderPlaced", "metadata": {"correlationId": "c-1"}},
                                           {"type": "Unrelated"}]');
SELECT event_store.append('corrpay-1', '{"type": "PaymentTaken", "metadata": {"correlationId": "c-1", "causationId": "x"}}');
SELECT event_store.append('corrorder-2', '{"type": "OrderPlaced", "metadata": {"correlationId": "c-2"}}');
SELECT event_store.append('corrship-1', '{"type": "Shipped", "metadata": {"correlationId": "c-1"}}');
SELECT event_store.append('corrorder-1', '{"type": "OrderClosed", "metadata": {"correlationId": "c-1"}}');
-- a number is a correlation id too (its text)
SELECT event_store.append('corrorder-3', '{"type": "OrderPlaced", "metadata": {"correlationId": 42}}');
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
SELECT stream_id, event_type FROM event_store.read_correlated('42');
SELECT count(*) FROM event_store.read_correlated('c-none');
-- paging: after_position and max_count
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 0, 2);
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 3, 2);
SELECT global_position, event_type FROM event_store.read_correlated('c-1', 6, 2);
SELECT count(*) FROM event_store.read_correlated('c-1', 1000);
-- the rows are whole events
SELECT e.* = r.* AS same_rows
  FROM event_store.read_correlated('c-1') r
  JOIN event_store.events e ON e.global_position = r.global_position
 ORDER BY r.global_position LIMIT 1;

-- argument errors: negative 22023, NULL 22004; nothing is read
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, 0)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, -5)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated(NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('c-1', 0, NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_correlated('')$$);
-- append keeps correlation ids fit for the runs' index
SELECT regress.try($$SELECT event_store.append('corrorder-9', '{"type": "X", "metadata": {"correlationId": {"a": 1}}}')$$);
SELECT regress.try(format($$SELECT event_store.append('corrorder-9', '{"type": "X", "metadata": {"correlationId": "%s"}}')$$, repeat('c', 1025)));
SELECT stream_version FROM event_store.read_stream('corrorder-9');

-- the runs: one row of event_store.correlations per maximal sequence of
-- consecutive events of one batch with the same correlation id (its text);
-- a batch A,A,B,A,(none),A has the runs A[1-2], B[3], A[4], A[6]
SELECT max(global_position) AS base FROM event_store.events \gset
SELECT event_store.append('corrruns-1', '[{"type": "R1", "metadata": {"correlationId": "c-run-a"}},
                                          {"type": "R2", "metadata": {"correlationId": "c-run-a", "x": 1}},
                                          {"type": "R3", "metadata": {"correlationId": "c-run-b"}},
                                          {"type": "R4", "metadata": {"correlationId": "c-run-a"}},
                                          {"type": "R5", "metadata": {"correlationId": null}},
                                          {"type": "R6", "metadata": {"correlationId": "c-run-a"}}]');
SELECT correlation_id, first_position - :base AS first, last_position - :base AS last
  FROM event_store.correlations WHERE last_position > :base ORDER BY last_position;
-- a number and its string are one id (the same text); another batch of the
-- same id is a run of its own, even right after
SELECT event_store.append('corrruns-2', '[{"type": "N1", "metadata": {"correlationId": 7.50}},
                                          {"type": "N2", "metadata": {"correlationId": "7.50"}},
                                          {"type": "N3", "metadata": {"correlationId": true}}]');
SELECT event_store.append('corrruns-2', '{"type": "N4", "metadata": {"correlationId": "true"}}');
SELECT correlation_id, first_position - :base AS first, last_position - :base AS last
  FROM event_store.correlations WHERE last_position > :base + 6 ORDER BY last_position;
SELECT event_type FROM event_store.read_correlated('7.50');
SELECT event_type FROM event_store.read_correlated('true');
-- paging inside a run: after_position in its middle, max_count cutting it
SELECT global_position - :base AS pos, event_type FROM event_store.read_correlated('c-run-a', :base, 1);
SELECT global_position - :base AS pos, event_type FROM event_store.read_correlated('c-run-a', :base + 1, 2);
SELECT global_position - :base AS pos, event_type FROM event_store.read_correlated('c-run-a', :base + 4, 5);
SELECT global_position - :base AS pos, event_type FROM event_store.read_correlated('c-run-a', :base + 6, 5);
SELECT global_position - :base AS pos, event_type FROM event_store.read_correlated('c-run-b', :base + 2);
SELECT event_store.append('corrruns-3', (SELECT jsonb_agg(jsonb_build_object('type', 'L' || i,
           'metadata', jsonb_build_object('correlationId', 'c-run-long')) ORDER BY i)
      FROM generate_series(1, 7) AS i));
SELECT min(global_position) - 1 AS long_base FROM event_store.events WHERE stream_id = 'corrruns-3' \gset
SELECT count(*) AS long_runs FROM event_store.correlations WHERE correlation_id = 'c-run-long';
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('c-run-long', 0, 3);
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('c-run-long', :long_base + 3, 3);
SELECT string_agg(event_type, ' ' ORDER BY global_position) FROM event_store.read_correlated('c-run-long', :long_base + 6, 3);
-- the events at a run's positions are checked again: a run whose positions
-- hold events of other ids (or none) reads nothing
INSERT INTO event_store.correlations VALUES ('c-ghost', :base + 1, :base + 6), ('c-ghost', :base + 1000, :base + 2000);
SELECT count(*) AS ghost_events FROM event_store.read_correlated('c-ghost');
DELETE FROM event_store.correlations WHERE correlation_id = 'c-ghost';

-- read_correlated scans the runs' index and the events' position index,
-- never the events sequentially
SELECT pg_stat_force_next_flush();
SELECT (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'correlations_pkey') AS runs_before,
       (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'events_pkey') AS positions_before,
       (SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'event_store.events'::regclass) AS seq_before
\gset
SELECT count(*) FROM event_store.read_correlated('c-1');
SELECT count(*) FROM event_store.read_correlated('c-run-a');
SELECT pg_stat_force_next_flush();
SELECT (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'correlations_pkey') > :runs_before
           AS runs_index_scanned,
       (SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'events_pkey') > :positions_before
           AS position_index_scanned,
       (SELECT seq_scan FROM pg_stat_user_tables WHERE relid = 'event_store.events'::regclass) = :seq_before
           AS no_sequential_scan;
-- no index on the events for correlations (the runs replace it)
SELECT count(*) AS correlation_indexes_on_events FROM pg_indexes
 WHERE schemaname = 'event_store' AND indexdef LIKE '%correlationId%';

-- upcasting applies as on every read
CREATE SCHEMA corr;
CREATE FUNCTION corr.shipped_v2(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE sql IMMUTABLE
    AS $$ SELECT data || '{"carrier": "unknown"}' $$;
SELECT event_store.register_upcaster('Shipped', 1, 'corr.shipped_v2(jsonb, jsonb)');
SELECT event_type, data, schema_version FROM event_store.read_correlated('c-1') WHERE event_type = 'Shipped';

-- grants: a reader of some categories sees only their events
SELECT event_store.grant_category('corr_reader', 'corrorder', '{read}');
SELECT event_store.grant_category(current_user::regrole, 'corrpay', '{append,read}');
SET ROLE corr_reader;
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
RESET ROLE;
SET ROLE corr_outsider;
SELECT global_position, stream_id, event_type FROM event_store.read_correlated('c-1');
RESET ROLE;
SELECT event_store.revoke_category('corr_reader', 'corrorder', '{read}');
SELECT event_store.revoke_category(current_user::regrole, 'corrpay', '{append,read}');

-- the runs are the extension's: a role can neither read nor write them,
-- even one that may read their events; read_correlated applies the grants
-- of the events' categories
SELECT event_store.grant_category('corr_reader', 'corrruns', '{read}');
SET ROLE corr_reader;
SELECT regress.try($$SELECT count(*) FROM event_store.correlations$$);
SELECT regress.try($$INSERT INTO event_store.correlations VALUES ('c-1', 1, 1)$$);
SELECT regress.try($$UPDATE event_store.correlations SET last_position = 0$$);
SELECT regress.try($$DELETE FROM event_store.correlations$$);
SELECT string_agg(event_type, ' ' ORDER BY global_position) AS reader_reads
  FROM event_store.read_correlated('c-run-a');
-- hostile: the reader's own temporary "correlations" and "events" with fake
-- runs and rows, first on its search_path, change nothing read_correlated
-- reads (it finds the extension's relations by their schema, not by name
-- lookup); it cannot lock the runs to stall appends, and the error names
-- only the table
CREATE TEMP TABLE correlations (correlation_id text, first_position bigint, last_position bigint);
INSERT INTO pg_temp.correlations VALUES ('c-run-a', 1, 1000000);
CREATE TEMP TABLE events (global_position bigint, stream_id text, event_type text, metadata jsonb);
INSERT INTO pg_temp.events VALUES (1, 'corrruns-1', 'FAKE', '{"correlationId": "c-run-a"}');
SET search_path = pg_temp, event_store, regress;
SELECT string_agg(event_type, ' ' ORDER BY global_position) AS reader_reads_shadowed
  FROM event_store.read_correlated('c-run-a');
RESET search_path;
DROP TABLE pg_temp.correlations, pg_temp.events;
SELECT regress.try($$LOCK TABLE event_store.correlations IN SHARE MODE$$);
RESET ROLE;
SET ROLE corr_outsider;
SELECT regress.try($$SELECT count(*) FROM event_store.correlations$$);
SELECT count(*) AS outsider_reads FROM event_store.read_correlated('c-run-a');
RESET ROLE;
SELECT event_store.revoke_category('corr_reader', 'corrruns', '{read}');

-- purge_stream removes the runs of the events it removes: the erased
-- stream's correlation ids do not stay behind; runs of other streams stay,
-- and a run some of whose events are left still reads them
SET event_store.allow_purge = on;
SELECT event_store.append('corrpurge-1', '[{"type": "P1", "metadata": {"correlationId": "c-erased"}},
                                           {"type": "P2", "metadata": {"correlationId": "c-erased"}},
                                           {"type": "P3", "metadata": {"correlationId": "c-kept"}}]');
SELECT event_store.append('corrpurge-2', '{"type": "Q1", "metadata": {"correlationId": "c-kept"}}');
SELECT correlation_id, count(*) FROM event_store.correlations
 WHERE correlation_id IN ('c-erased', 'c-kept') GROUP BY 1 ORDER BY 1;
SELECT event_store.purge_stream('corrpurge-1');
SELECT correlation_id, count(*) FROM event_store.correlations
 WHERE correlation_id IN ('c-erased', 'c-kept') GROUP BY 1 ORDER BY 1;
SELECT count(*) AS erased_events FROM event_store.read_correlated('c-erased');
SELECT stream_id, event_type FROM event_store.read_correlated('c-kept');
RESET event_store.allow_purge;
-- retention removes the older events of a run: the run stays for the rest
SELECT event_store.append('corrkeep-1', '[{"type": "K1", "metadata": {"correlationId": "c-retained"}},
                                          {"type": "K2", "metadata": {"correlationId": "c-retained"}},
                                          {"type": "K3", "metadata": {"correlationId": "c-retained"}}]');
SELECT event_store.set_stream_retention('corrkeep-1', max_count => 1);
SELECT event_store.enforce_retention() AS removed;
SELECT count(*) AS retained_runs FROM event_store.correlations WHERE correlation_id = 'c-retained';
SELECT event_type FROM event_store.read_correlated('c-retained');

-- a saga's shape: one run per event (each its own append), the events of
-- other correlations between them, first close together (a few positions
-- apart, read by one pass of the position index) and then far apart (a
-- pass each), over more than a leaf page of the index; and a batch of the
-- same id at the end
SELECT max(global_position) AS saga_base FROM event_store.events \gset
SELECT count(event_store.append('corrsaga-' || i % 3,
           jsonb_build_object('type', 'S' || i, 'metadata', jsonb_build_object('correlationId',
               CASE WHEN (i <= 400 AND i % 5 = 0) OR i % 50 = 0 THEN 'c-saga' ELSE 'c-between' END))))
  FROM generate_series(1, 700) AS i;
SELECT event_store.append('corrsaga-b', (SELECT jsonb_agg(jsonb_build_object('type', 'B' || i,
           'metadata', jsonb_build_object('correlationId', 'c-saga')) ORDER BY i)
      FROM generate_series(1, 8) AS i));
SELECT count(*) AS saga_runs FROM event_store.correlations WHERE correlation_id = 'c-saga';
-- the types of what read_correlated reads, and of what the correlation
-- holds, from the events themselves
CREATE FUNCTION pg_temp.corr_types(id text, after bigint, max_count int) RETURNS text
    LANGUAGE sql AS $$
    SELECT string_agg(event_type, ' ' ORDER BY global_position)
      FROM event_store.read_correlated(id, after, max_count)
$$;
CREATE FUNCTION pg_temp.corr_expected(id text, after bigint, max_count int) RETURNS text
    LANGUAGE sql AS $$
    SELECT string_agg(event_type, ' ' ORDER BY global_position)
      FROM (SELECT event_type, global_position FROM event_store.events
             WHERE metadata ->> 'correlationId' = id AND global_position > after
             ORDER BY global_position LIMIT max_count) e
$$;
-- every page of max_count events, after_position the last page's last
CREATE FUNCTION pg_temp.saga_pages(max_count int) RETURNS TABLE (pages bigint, types text)
    LANGUAGE sql AS $$
    WITH RECURSIVE page(no, after, types) AS (
        SELECT 0, 0::bigint, NULL::text
        UNION ALL
        SELECT p.no + 1, r.last, r.types
          FROM page p,
               LATERAL (SELECT max(global_position) AS last,
                               string_agg(event_type, ' ' ORDER BY global_position) AS types
                          FROM event_store.read_correlated('c-saga', p.after, max_count)) r
         WHERE r.last IS NOT NULL)
    SELECT count(*), string_agg(types, ' ' ORDER BY no) FROM page WHERE no > 0
$$;
SELECT pg_temp.corr_types('c-saga', 0, 1000);
SELECT pg_temp.corr_types('c-saga', 0, 1000) = pg_temp.corr_expected('c-saga', 0, 1000) AS whole,
       pg_temp.corr_types('c-saga', 0, 3) AS first_three,
       pg_temp.corr_types('c-saga', :saga_base + 13, 4) AS after_13,
       pg_temp.corr_types('c-saga', :saga_base + 395, 3) AS close_then_far,
       pg_temp.corr_types('c-saga', :saga_base + 695, 5) AS into_the_batch,
       pg_temp.corr_types('c-saga', :saga_base + 703, 2) AS inside_the_batch;
SELECT pages, types = pg_temp.corr_expected('c-saga', 0, 1000) AS in_order FROM pg_temp.saga_pages(7);
SELECT pages, types = pg_temp.corr_expected('c-saga', 0, 1000) AS in_order FROM pg_temp.saga_pages(1);
-- every after_position and max_count around the runs
SELECT count(*) AS mismatches
  FROM generate_series(:saga_base - 2, :saga_base + 712) AS a, unnest(ARRAY[1, 2, 5, 13]) AS m
 WHERE pg_temp.corr_types('c-saga', a, m) IS DISTINCT FROM pg_temp.corr_expected('c-saga', a, m);
-- across an archived range: the positions below one in the middle of the
-- close runs, and one inside the batch's run, move into range tables; the
-- batch's run straddles two tiers.  The reads are the same.
SELECT pg_temp.corr_types('c-saga', 0, 1000) AS before_archiving \gset
SELECT event_store.archive_events(:saga_base + 200, 'pg_default') > 0 AS archived;
SELECT event_store.archive_events(:saga_base + 705, 'pg_default') > 0 AS archived;
SELECT count(*) AS ranges FROM event_store.archived_ranges;
SELECT count(*) AS saga_events_archived FROM event_store.events
 WHERE tableoid <> 'event_store.events'::regclass AND metadata ->> 'correlationId' = 'c-saga';
SELECT pg_temp.corr_types('c-saga', 0, 1000) = :'before_archiving' AS same_after_archiving,
       pg_temp.corr_types('c-saga', :saga_base + 190, 4) AS across_ranges,
       pg_temp.corr_types('c-saga', :saga_base + 702, 4) AS straddling_run;
SELECT pages, types = :'before_archiving' AS in_order FROM pg_temp.saga_pages(7);
SELECT pages, types = :'before_archiving' AS in_order FROM pg_temp.saga_pages(1);
SELECT count(*) AS mismatches
  FROM generate_series(:saga_base - 2, :saga_base + 712) AS a, unnest(ARRAY[1, 2, 5, 13]) AS m
 WHERE pg_temp.corr_types('c-saga', a, m) IS DISTINCT FROM pg_temp.corr_expected('c-saga', a, m);

-- a batch's shape: runs of several events each, a few positions apart (a
-- descent of the index each), read whole, paged and at every after_position
-- and max_count
SELECT max(global_position) AS batches_base FROM event_store.events \gset
SELECT count(event_store.append('corrbatch-' || b, (SELECT jsonb_agg(jsonb_build_object('type', 'T' || b || '.' || i,
           'metadata', jsonb_build_object('correlationId', CASE WHEN i <= 6 THEN 'c-batches' ELSE 'c-between' END))
           ORDER BY i) FROM generate_series(1, 6 + b % 3) AS i)))
  FROM generate_series(1, 12) AS b;
SELECT count(*) AS batch_runs FROM event_store.correlations WHERE correlation_id = 'c-batches';
SELECT pg_temp.corr_types('c-batches', 0, 1000) = pg_temp.corr_expected('c-batches', 0, 1000) AS whole,
       pg_temp.corr_types('c-batches', :batches_base + 4, 5) AS across_runs;
SELECT count(*) AS mismatches
  FROM generate_series(:batches_base - 1, :batches_base + 100) AS a, unnest(ARRAY[1, 4, 7, 100]) AS m
 WHERE pg_temp.corr_types('c-batches', a, m) IS DISTINCT FROM pg_temp.corr_expected('c-batches', a, m);

--
-- Sagas stamp their events: correlationId = the saga id, causationId = the
-- event that caused the transition
--
CREATE FUNCTION corr.reserve(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{"reserved": true}'::jsonb $$;
CREATE FUNCTION corr.release(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{}'::jsonb $$;
CREATE FUNCTION corr.notify(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql
    AS $$ SELECT '{"notified": true}'::jsonb $$;
SELECT event_store.define_saga('corr_payment', '{"steps": [
    {"name": "authorize"}]}');
SELECT event_store.define_saga('corr_order', '{"steps": [
    {"name": "reserve", "action": "corr.reserve", "compensation": "corr.release"},
    {"name": "pay", "complete_on": "PaymentReceived", "fail_on": "PaymentDeclined"},
    {"name": "invoice", "group": 3},
    {"name": "notify", "group": 3, "action": "corr.notify"},
    {"name": "payment", "saga": "corr_payment"}]}');

SELECT event_store.saga_diagram('corr_order');
SELECT event_store.saga_diagram('corr_payment');

SELECT event_store.start_saga('corr_order', '{"order": 7}', '00000000-0000-4000-8000-000000000007');
-- the payment event of another stream completes "pay"
SELECT event_store.append('corrpay-7', '{"type": "PaymentReceived", "metadata": {"saga_id": "00000000-0000-4000-8000-000000000007"}}');
SELECT event_store.complete_saga_step('00000000-0000-4000-8000-000000000007', 'invoice');

CREATE FUNCTION pg_temp.stamps(id uuid)
    RETURNS TABLE (version bigint, event_type text, step text, correlated boolean, caused_by text)
    LANGUAGE sql AS $$
    SELECT e.stream_version, e.event_type, e.data ->> 'step',
           e.metadata ->> 'correlationId' = id::text,
           COALESCE((SELECT c.stream_id || '@' || c.stream_version || ' ' || c.event_type
                       FROM event_store.events c
                      WHERE c.event_id::text = e.metadata ->> 'causationId'),
                    e.metadata ->> 'causationId')
      FROM event_store.events e
     WHERE e.stream_id = 'saga-' || id
     ORDER BY e.stream_version
$$;
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000007', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000007');
-- read_correlated finds the saga's events by its id
SELECT count(*) = (SELECT count(*) FROM event_store.events
                    WHERE stream_id = 'saga-00000000-0000-4000-8000-000000000007') AS all_saga_events
  FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
-- the nested saga's events carry its own id
SELECT child_saga_id AS child FROM event_store.saga_steps
 WHERE saga_id = '00000000-0000-4000-8000-000000000007' AND name = 'payment' \gset
SELECT version, event_type, step, correlated, caused_by FROM pg_temp.stamps(:'child');

SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid);

-- a failing saga: the compensation shows
SELECT event_store.start_saga('corr_order', '{"order": 8}', '00000000-0000-4000-8000-000000000008');
SELECT event_store.append('corrpay-8', '{"type": "PaymentDeclined", "metadata": {"saga_id": "00000000-0000-4000-8000-000000000008"}}');
SELECT event_store.saga_state('00000000-0000-4000-8000-000000000008') ->> 'status' AS status;
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000008', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000008');
SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000008'::uuid);

-- local steps one after the other: each is caused by the completion before
-- it; a step its worker fails for good causes the compensation
SELECT event_store.define_saga('corr_chain', '{"steps": [
    {"name": "one", "action": "corr.reserve", "compensation": "corr.release"},
    {"name": "two", "action": "corr.notify"},
    {"name": "three"}]}');
SELECT event_store.start_saga('corr_chain', '{}', '00000000-0000-4000-8000-000000000009');
SELECT event_store.fail_saga_step('00000000-0000-4000-8000-000000000009', 'three', 'refused', false);
SELECT version, event_type, step, correlated,
       replace(caused_by, '00000000-0000-4000-8000-000000000009', '<id>') AS caused_by
  FROM pg_temp.stamps('00000000-0000-4000-8000-000000000009');

-- saga_diagram: bad input
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-00000000ffff'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('no_such_type')$$);
-- an untyped literal is a saga type: a saga id given so is pointed out
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007')$$);
SELECT regress.try($$SELECT event_store.saga_diagram(NULL::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram(NULL::text)$$);
-- labels are Mermaid text: quotes and brackets cannot break out
SELECT event_store.define_saga('corr "odd" <b>', '{"steps": [{"name": "a\"]-->x[\"#1"}]}');
SELECT event_store.saga_diagram('corr "odd" <b>');

-- grants: with category "saga" under grants, a role without read on it
-- learns nothing, not even whether the saga exists
SELECT event_store.grant_category('corr_reader', 'saga', '{read}');
SET ROLE corr_outsider;
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-00000000ffff'::uuid)$$);
SELECT regress.try($$SELECT event_store.saga_diagram('corr_order')$$);
SELECT count(*) FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
RESET ROLE;
SET ROLE corr_reader;
SELECT length(event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)) > 0 AS reader_sees;
SELECT count(*) > 0 AS reader_reads FROM event_store.read_correlated('00000000-0000-4000-8000-000000000007');
RESET ROLE;
-- without EXECUTE: PostgreSQL's own 42501
REVOKE EXECUTE ON FUNCTION event_store.saga_diagram(uuid) FROM corr_outsider;
SET ROLE corr_outsider;
SELECT regress.try($$SELECT event_store.saga_diagram('00000000-0000-4000-8000-000000000007'::uuid)$$);
RESET ROLE;

SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
DROP SCHEMA corr CASCADE;
REVOKE USAGE ON SCHEMA regress FROM corr_reader, corr_outsider;
DROP ROLE corr_reader;
DROP ROLE corr_outsider;
