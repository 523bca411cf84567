--
-- read_results: the rows a set-returning function returns are kept in
-- memory the backend holds from one call to the next (the context
-- "event_store results"): the next read reuses it, a query that leaves more
-- than 4 MB gives the excess back when it ends, an aborted read leaves
-- nothing behind, and no reset frees rows a query is still reading.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

-- 1,000 events of about 500 bytes in big-1, 5,000 more in other streams,
-- and brittle-1, whose upcaster fails at its 500th event
SELECT event_store.append('big-1',
         (SELECT jsonb_agg(jsonb_build_object('type', 'Noted',
                   'data', jsonb_build_object('n', i, 'pad', repeat('x', 480))))
            FROM generate_series(1, 1000) i), 0);
SELECT count(*) FROM (
  SELECT event_store.append('other-' || s,
           (SELECT jsonb_agg(jsonb_build_object('type', 'Noted',
                     'data', jsonb_build_object('n', i, 'pad', repeat('y', 480))))
              FROM generate_series(1, 100) i), 0)
    FROM generate_series(1, 50) s) appended;
SELECT event_store.append('brittle-1',
         (SELECT jsonb_agg(jsonb_build_object('type', 'Brittle',
                   'data', jsonb_build_object('n', i, 'pad', repeat('z', 480))))
            FROM generate_series(1, 1000) i), 0);
CREATE FUNCTION brittle_v2(data jsonb, metadata jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF (data ->> 'n')::int = 500 THEN
        RAISE EXCEPTION 'brittle event 500 cannot be upcast';
    END IF;
    RETURN data;
END
$$;
SELECT event_store.register_upcaster('Brittle', 1, 'brittle_v2(jsonb, jsonb)');

CREATE VIEW results_memory AS
  SELECT total_bytes, used_bytes
    FROM pg_backend_memory_contexts WHERE name = 'event_store results';

-- a read of 1,000 events: its rows were freed when the query ended, and
-- the memory is kept for the next read
\c
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT total_bytes > 500000 AS kept, used_bytes < 8192 AS nothing_left
  FROM results_memory;
CREATE TEMP TABLE first_read AS SELECT total_bytes FROM results_memory;
-- the same read five more times, and two smaller ones: no new memory
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT count(*) FROM event_store.read_stream('big-1', 300);
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT count(*) FROM event_store.read_stream('big-1', NULL, 10, true);
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT count(*) FROM event_store.read_stream('big-1');
SELECT r.total_bytes = f.total_bytes AS reused, r.used_bytes < 8192 AS nothing_left
  FROM results_memory r, first_read f;

-- 5,000 events in one result (work_mem permitting) is more than is kept:
-- given back when the query ends
SET work_mem = '64MB';
SELECT count(*) FROM event_store.read_category('other', 0, NULL);
SELECT total_bytes < 4 * 1024 * 1024 AS given_back, used_bytes < 8192 AS nothing_left
  FROM results_memory;
RESET work_mem;

-- a read that fails halfway, at the top level and in a subtransaction:
-- the rows it had made are not left behind
SELECT count(*) FROM event_store.read_stream('brittle-1');
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;
SELECT regress.try($$SELECT count(*) FROM event_store.read_stream('brittle-1')$$);
SELECT regress.try($$SELECT count(*) FROM event_store.read_stream('brittle-1')$$);
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;
BEGIN;
SELECT count(*) FROM event_store.read_stream('big-1');
SAVEPOINT s;
SELECT count(*) FROM event_store.read_stream('brittle-1');
ROLLBACK TO s;
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;
COMMIT;

-- rows still being read survive another read's abort, and the reads that
-- follow it: a loop over big-1 fails a read of brittle-1 in a subtransaction
-- at its second row, then reads 5,000 events, then checks every row of big-1
CREATE FUNCTION read_across_abort() RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r     record;
    seen  int := 0;
    wrong int := 0;
    other bigint;
BEGIN
    FOR r IN SELECT stream_version, data FROM event_store.read_stream('big-1') LOOP
        seen := seen + 1;
        IF seen = 2 THEN
            BEGIN
                PERFORM count(*) FROM event_store.read_stream('brittle-1');
            EXCEPTION WHEN raise_exception THEN
                NULL;
            END;
            SELECT count(*) INTO other FROM event_store.read_category('other', 0, NULL);
        END IF;
        IF (r.data ->> 'n')::bigint <> r.stream_version
           OR r.data ->> 'pad' <> repeat('x', 480) THEN
            wrong := wrong + 1;
        END IF;
    END LOOP;
    RETURN format('%s rows read, %s wrong, %s others read', seen, wrong, other);
END
$$;
SET work_mem = '64MB';
SELECT read_across_abort();
-- a cursor, the same way, at the top level
BEGIN;
DECLARE c CURSOR FOR
  SELECT stream_version, (data ->> 'n')::bigint = stream_version AND data ->> 'pad' = repeat('x', 480) AS intact
    FROM event_store.read_stream('big-1');
FETCH 2 FROM c;
SAVEPOINT s;
SELECT count(*) FROM event_store.read_stream('brittle-1');
ROLLBACK TO s;
SELECT count(*) FROM event_store.read_category('other', 0, NULL);
SELECT count(*) FROM event_store.read_stream('other-7');
SELECT count(*) AS still_open FROM pg_cursors WHERE name = 'c';
MOVE FORWARD 990 FROM c;
FETCH ALL FROM c;
COMMIT;
RESET work_mem;
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;

-- read_all's results live there too
SELECT count(*) FROM event_store.read_all(0, 2000);
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;

-- another role in the same session (a pooled connection that switches
-- roles) gets only its own reads' rows: with the owner's cursor over big-1
-- still holding rows in the context, a role of the privilege recipe without
-- a grant on the restricted category big is refused big-1 (saying nothing of
-- its events), and its read of other-7 returns other-7's rows alone
\set ECHO none
\i examples/privileges.sql
\set ECHO all
CREATE ROLE results_reader IN ROLE event_store_reader;
CREATE ROLE results_owner;
GRANT USAGE ON SCHEMA regress TO results_reader;
SELECT event_store.grant_category('results_owner', 'big', '{read}');
BEGIN;
DECLARE c CURSOR FOR
  SELECT stream_version, (data ->> 'n')::bigint = stream_version AND data ->> 'pad' = repeat('x', 480) AS intact
    FROM event_store.read_stream('big-1');
FETCH 1 FROM c;
SET LOCAL ROLE results_reader;
SELECT regress.try($$SELECT count(*) FROM event_store.read_stream('big-1')$$);
SELECT count(*) AS rows, count(*) FILTER (WHERE stream_id = 'other-7' AND data ->> 'pad' = repeat('y', 480)) AS other_7
  FROM event_store.read_stream('other-7');
SELECT count(*) FILTER (WHERE stream_id LIKE 'big-%') AS big, count(*) AS events
  FROM event_store.read_all(0, 2000);
RESET ROLE;
MOVE FORWARD 996 FROM c;
FETCH ALL FROM c;
COMMIT;
SELECT used_bytes < 8192 AS nothing_left FROM results_memory;
SELECT event_store.revoke_category('results_owner', 'big', '{read}');
REVOKE USAGE ON SCHEMA regress FROM results_reader;
DROP ROLE results_reader, results_owner;
SET client_min_messages = warning;
DROP OWNED BY event_store_reader, event_store_writer, event_store_operator;
DROP ROLE event_store_reader, event_store_writer, event_store_operator;
RESET client_min_messages;

SELECT event_store.drop_upcaster('Brittle', 1);
