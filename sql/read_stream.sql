--
-- read_stream and stream_version: forward and backward reads, from_version,
-- max_count, named arguments, unknown streams and bad arguments.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

-- account-1 gets five events, interleaved with other streams whose ids
-- start the same way or differ only in case
SELECT event_store.append('account-1', '{"type": "Opened", "id": "00000000-0000-4000-8000-000000000101", "data": {"owner": "ann"}}', 0);
SELECT event_store.append('account-10', '{"type": "Opened", "id": "00000000-0000-4000-8000-000000001001"}', 0);
SELECT event_store.append('account-1', '[{"type": "Deposited", "id": "00000000-0000-4000-8000-000000000102", "data": {"amount": 100}},
                                         {"type": "Withdrawn", "id": "00000000-0000-4000-8000-000000000103", "data": {"amount": 30}, "metadata": {"by": "atm"}}]', 1);
SELECT event_store.append('Account-1', '{"type": "Opened", "id": "00000000-0000-4000-8000-000000000201"}', 0);
SELECT event_store.append('account-1', '{"type": "Deposited", "id": "00000000-0000-4000-8000-000000000104", "data": {"amount": 5}, "schema_version": 2}', 3);
SELECT event_store.append('account-1', '{"type": "Closed", "id": "00000000-0000-4000-8000-000000000105"}', 4);

-- the returned row type, column by column (event_store.event)
SELECT * FROM event_store.read_stream('account-1') \gdesc

-- forward, everything
SELECT global_position, stream_id, stream_version, event_id, event_type, data, metadata, schema_version
  FROM event_store.read_stream('account-1');
-- exactly the stored rows, recorded_at included
SELECT array_agg(r::text ORDER BY r.stream_version)
     = (SELECT array_agg(e::text ORDER BY e.stream_version)
          FROM event_store.events e WHERE e.stream_id = 'account-1') AS same_as_stored
  FROM event_store.read_stream('account-1') r;
SELECT pg_typeof(r) FROM event_store.read_stream('account-1', max_count => 1) r;

-- from_version and max_count
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 3);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 0);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 6);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', NULL, 2);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 2, 2);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 4, 10);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 1, 0);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', NULL, NULL);

-- backward: from the last event, or from from_version down
SELECT stream_version, event_type FROM event_store.read_stream('account-1', NULL, NULL, true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 3, NULL, true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 3, 2, true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 99, 2, true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 0, NULL, true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', NULL, NULL, false);

-- named arguments
SELECT stream_version, event_type FROM event_store.read_stream(stream_id => 'account-1', backward => true);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', max_count => 1, backward => true);
SELECT stream_version, event_type FROM event_store.read_stream(max_count => 2, from_version => 2, stream_id => 'account-1');

-- other streams are not mixed in
SELECT stream_id, stream_version, event_id FROM event_store.read_stream('account-10');
SELECT stream_id, stream_version, event_id FROM event_store.read_stream('Account-1');

-- unknown streams: empty, version 0
SELECT count(*) FROM event_store.read_stream('account-2');
SELECT count(*) FROM event_store.read_stream('account-2', 1, 10, true);
SELECT count(*) FROM event_store.read_stream('account');
SELECT event_store.stream_version('account-2') AS unknown,
       event_store.stream_version('account-1') AS account_1,
       event_store.stream_version('account-10') AS account_10,
       event_store.stream_version(stream_id => 'Account-1') AS capital_account_1;

-- the reads see the caller's own uncommitted appends, and forget them on rollback
BEGIN;
SELECT event_store.append('account-1', '{"type": "Reopened"}', 5);
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 5);
SELECT event_store.stream_version('account-1');
ROLLBACK;
SELECT stream_version, event_type FROM event_store.read_stream('account-1', 5);
SELECT event_store.stream_version('account-1');

-- bad arguments: class 22
SELECT regress.try($$SELECT * FROM event_store.read_stream(NULL)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('')$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('account-1', -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('account-1', -1, NULL, true)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('account-1', 1, -1)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('account-1', NULL, -5, true)$$);
SELECT regress.try($$SELECT * FROM event_store.read_stream('account-1', 1, 1, NULL)$$);
SELECT regress.try($$SELECT event_store.stream_version(NULL)$$);
SELECT regress.try($$SELECT event_store.stream_version('')$$);

-- reads work under parallel query settings too: in a fresh session the
-- registry caches are loaded inside the (parallel-mode) query
\c
SET force_parallel_mode = on;
SELECT count(*) AS events FROM event_store.read_stream('account-1');
SET parallel_setup_cost = 0;
SELECT (SELECT count(*) FROM event_store.events WHERE stream_id = 'account-1') AS stored,
       (SELECT count(*) FROM event_store.read_stream('account-1')) AS read;
RESET parallel_setup_cost;
RESET force_parallel_mode;
