--
-- archive: archive_events(before_position, tablespace) moves the events
-- below a position into range tables in a tablespace and back; every read
-- sees the same events before and after; positions, versions and event ids
-- stay unique across the tiers; errors and privileges.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- two tablespaces standing for cheaper disks (in-place: no directory needed)
SET allow_in_place_tablespaces = on;
CREATE TABLESPACE archive_cold LOCATION '';
CREATE TABLESPACE archive_colder LOCATION '';
RESET allow_in_place_tablespaces;

-- where a range's table and its indexes are
CREATE FUNCTION archive_places() RETURNS TABLE(relation name, tablespace name)
LANGUAGE sql AS $$
    SELECT c.relname, coalesce(t.spcname, 'pg_default')
      FROM pg_class c LEFT JOIN pg_tablespace t ON t.oid = c.reltablespace
     WHERE c.relnamespace = 'event_store'::regnamespace AND c.relname LIKE 'events_archive%'
     ORDER BY c.relname
$$;

-- 3 categories x 4 streams, 10 events each, interleaved: 120 events
SELECT count(event_store.append(
           (ARRAY['acct', 'order', 'user'])[1 + i % 3] || '-' || (i / 3) % 4,
           jsonb_build_object('type', CASE WHEN i % 2 = 0 THEN 'Even' ELSE 'Odd' END,
                              'data', jsonb_build_object('i', i),
                              'metadata', jsonb_build_object('correlationId', 'corr-' || i % 5))))
  FROM generate_series(0, 119) AS i;
-- one event with the caller's id, at position 121
SELECT event_store.append('acct-9', '{"type": "Given", "id": "11111111-1111-4111-8111-111111111111"}');

-- a fold over each stream, to compare load_aggregate with
CREATE FUNCTION archive_reduce(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('sum', (state ->> 'sum')::int + coalesce((event.data ->> 'i')::int, 0),
                              'versions', (state -> 'versions') || to_jsonb(event.stream_version))
$$;
SELECT event_store.define_aggregate('acct', 'archive_reduce(jsonb,event_store.event)',
                                    '{"sum": 0, "versions": []}');

-- every read, as one text per read, before archiving
CREATE FUNCTION archive_reads() RETURNS TABLE(read text, result text)
LANGUAGE sql AS $$
    SELECT 'read_all', string_agg(format('%s:%s:%s:%s:%s', global_position, stream_id, stream_version, event_id, data), ',' ORDER BY global_position)
      FROM event_store.read_all(0, NULL)
    UNION ALL
    SELECT 'read_all pages of 7 from 30', string_agg(global_position::text, ',' ORDER BY global_position)
      FROM event_store.read_all(30, 7)
    UNION ALL
    SELECT 'read_all Even', string_agg(global_position::text, ',' ORDER BY global_position)
      FROM event_store.read_all(0, NULL, '{Even}')
    UNION ALL
    SELECT 'read_category ' || c, string_agg(format('%s:%s', global_position, stream_version), ',' ORDER BY global_position)
      FROM unnest(ARRAY['acct', 'order', 'user']) AS c, event_store.read_category(c, 0, NULL)
     GROUP BY c
    UNION ALL
    SELECT 'read_category order after 50 max 5', string_agg(global_position::text, ',' ORDER BY global_position)
      FROM event_store.read_category('order', 50, 5)
    UNION ALL
    SELECT 'read_stream ' || s, string_agg(format('%s:%s', global_position, stream_version), ',' ORDER BY stream_version)
      FROM (SELECT DISTINCT stream_id FROM event_store.events) AS x(s), event_store.read_stream(s)
     GROUP BY s
    UNION ALL
    SELECT 'read_stream user-1 backward from 8 max 4', string_agg(stream_version::text, ',')
      FROM event_store.read_stream('user-1', 8, 4, true)
    UNION ALL
    SELECT 'read_stream order-2 from 6', string_agg(stream_version::text, ',')
      FROM event_store.read_stream('order-2', 6)
    UNION ALL
    SELECT 'read_correlated ' || c, string_agg(global_position::text, ',' ORDER BY global_position)
      FROM unnest(ARRAY['corr-0', 'corr-3']) AS c, event_store.read_correlated(c) GROUP BY c
    UNION ALL
    SELECT 'read_correlated corr-1 after 50 max 4', string_agg(global_position::text, ',' ORDER BY global_position)
      FROM event_store.read_correlated('corr-1', 50, 4)
    UNION ALL
    SELECT 'stream_version ' || s, event_store.stream_version(s)::text
      FROM (SELECT DISTINCT stream_id FROM event_store.events) AS x(s)
    UNION ALL
    SELECT 'load_aggregate ' || s || ' at ' || coalesce(v::text, 'latest'), a.stream_version || ' ' || a.state
      FROM unnest(ARRAY['acct-0', 'acct-3', 'acct-9']) AS s, unnest(ARRAY[NULL, 2, 9]) AS v,
           event_store.load_aggregate(s, v) AS a
    UNION ALL
    SELECT 'SQL on event_store.events', count(*) || ' ' || min(global_position) || ' ' || max(global_position)
      FROM event_store.events
    ORDER BY 1
$$;
CREATE TEMP TABLE reads_before AS SELECT * FROM archive_reads();
SELECT count(*) AS reads FROM reads_before;

--
-- errors: nothing is moved
--
SELECT regress.try($$SELECT event_store.archive_events(NULL, 'archive_cold')$$);
SELECT regress.try($$SELECT event_store.archive_events(10, NULL)$$);
SELECT regress.try($$SELECT event_store.archive_events(-1, 'archive_cold')$$);
SELECT regress.try($$SELECT event_store.archive_events(10, 'no_such_tablespace')$$);
SELECT regress.try($$SELECT event_store.archive_events(10, 'pg_global')$$);
-- beyond the head: positions above it may still be written
SELECT regress.try($$SELECT event_store.archive_events(event_store.head_position() + 2, 'archive_cold')$$);
-- a transaction snapshot could miss events committed below the position
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT regress.try($$SELECT event_store.archive_events(10, 'archive_cold')$$);
ROLLBACK;
BEGIN READ ONLY;
SELECT regress.try($$SELECT event_store.archive_events(10, 'archive_cold')$$);
ROLLBACK;
-- 0 and 1: nothing below them
SELECT event_store.archive_events(0, 'archive_cold') AS moved, event_store.archive_events(1, 'archive_cold') AS moved;
SELECT count(*) AS ranges FROM event_store.archived_ranges;

--
-- privileges: only a member of the extension's owner, with CREATE on the
-- tablespace
--
CREATE ROLE archive_nobody;
CREATE ROLE archive_executor;
GRANT EXECUTE ON FUNCTION event_store.archive_events(bigint, name) TO archive_executor;
GRANT USAGE ON SCHEMA regress TO archive_nobody, archive_executor;
SET ROLE archive_nobody;
SELECT regress.try($$SELECT event_store.archive_events(40, 'archive_cold')$$);
SELECT regress.try($$SELECT * FROM event_store.archived_ranges$$);
RESET ROLE;
SET ROLE archive_executor;
SELECT regexp_replace(regress.try($$SELECT event_store.archive_events(40, 'archive_cold')$$),
                      'role "[^"]*"', 'role "<owner>"') AS try;
RESET ROLE;
SELECT count(*) AS ranges FROM event_store.archived_ranges;

--
-- archive positions 1 to 40 to archive_cold
--
-- default privileges of the owner in schema event_store (meant for other
-- tables) do not open a range table: it would bypass the category grants
-- and immutability of event_store.events
ALTER DEFAULT PRIVILEGES IN SCHEMA event_store GRANT ALL ON TABLES TO PUBLIC, archive_nobody;
SELECT event_store.archive_events(41, 'archive_cold') AS moved;
ALTER DEFAULT PRIVILEGES IN SCHEMA event_store REVOKE ALL ON TABLES FROM PUBLIC, archive_nobody;
SELECT count(*) AS grants_to_others
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.oid = 'event_store.events_archive_1'::regclass AND a.grantee <> c.relowner;
SET ROLE archive_nobody;
SELECT regress.try($$SELECT count(*) FROM event_store.events_archive_1$$);
SELECT regress.try($$INSERT INTO event_store.events_archive_1 SELECT * FROM event_store.events_archive_1 LIMIT 0$$);
SELECT regress.try($$LOCK TABLE event_store.events_archive_1$$);
RESET ROLE;
SELECT first_position, end_position, relation FROM event_store.archived_ranges ORDER BY 1;
SELECT * FROM archive_places();
SELECT count(*) AS hot_below_41 FROM ONLY event_store.events WHERE global_position < 41;
SELECT count(*) AS archived, min(global_position), max(global_position) FROM event_store.events_archive_1;
-- every read the same
SELECT b.read, b.result IS NOT DISTINCT FROM a.result AS same
  FROM reads_before b FULL JOIN archive_reads() a USING (read)
 WHERE b.result IS DISTINCT FROM a.result;

-- category grants hold for archived events on every read path: a role of
-- the privilege recipe without a grant on category acct (now restricted)
-- reads, follows, subscribes to and projects every other event, archived
-- or not, and none of acct's
\set ECHO none
\i examples/privileges.sql
\set ECHO all
CREATE ROLE archive_reader;
GRANT event_store_operator TO archive_reader;
GRANT USAGE ON SCHEMA regress TO archive_reader;
CREATE SCHEMA archive_own AUTHORIZATION archive_reader;
SELECT event_store.grant_category('archive_executor', 'acct', '{read}');
SET ROLE archive_reader;
SELECT regress.try($$SELECT count(*) FROM event_store.read_stream('acct-1')$$);
SELECT regress.try($$SELECT count(*) FROM event_store.read_category('acct')$$);
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('acct-1')$$);
SELECT count(*) FILTER (WHERE stream_id LIKE 'acct%') AS acct, count(*) AS events,
       count(*) FILTER (WHERE global_position < 41) AS archived
  FROM event_store.read_all(0, NULL);
SELECT count(*) FILTER (WHERE stream_id LIKE 'acct%') AS acct, count(*) AS events,
       count(*) FILTER (WHERE global_position < 41) AS archived
  FROM event_store.read_correlated('corr-0');
SELECT count(*) AS order_archived FROM event_store.read_category('order', 0, 20);
SELECT event_store.create_subscription('archive_sub');
-- the claimed rows, archived or not, are read_all's, every column
CREATE TABLE archive_own.claimed AS SELECT * FROM event_store.claim_events('archive_sub', 'c1', 1000);
SELECT count(*) FILTER (WHERE stream_id LIKE 'acct%') AS acct, count(*) AS events,
       count(*) FILTER (WHERE global_position < 41) AS archived
  FROM archive_own.claimed;
SELECT count(*) AS claimed,
       count(*) FILTER (WHERE (g.stream_id, g.stream_version, g.event_id, g.event_type, g.data,
                               g.metadata, g.schema_version, g.recorded_at)
                              IS NOT DISTINCT FROM
                              (r.stream_id, r.stream_version, r.event_id, r.event_type, r.data,
                               r.metadata, r.schema_version, r.recorded_at)) AS as_read
  FROM archive_own.claimed g LEFT JOIN event_store.read_all(0, NULL) r USING (global_position)
 WHERE g.global_position < 41;
CREATE TABLE archive_own.seen (global_position bigint, stream_id text);
CREATE FUNCTION archive_own.see(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO archive_own.seen VALUES (e.global_position, e.stream_id) $$;
SELECT event_store.create_projection('archive_proj', 'archive_own.see(event_store.event)', mode => 'async');
SELECT event_store.run_projections() >= 0 AS ran;
SELECT event_store.wait_for_projection('archive_proj', event_store.head_position()) AS caught_up;
SELECT count(*) FILTER (WHERE stream_id LIKE 'acct%') AS acct, count(*) AS events,
       count(*) FILTER (WHERE global_position < 41) AS archived
  FROM archive_own.seen;
RESET ROLE;
SELECT event_store.drop_projection('archive_proj');
SELECT event_store.drop_subscription('archive_sub');
SELECT event_store.revoke_category('archive_executor', 'acct', '{read}');
DROP SCHEMA archive_own CASCADE;
REVOKE USAGE ON SCHEMA regress FROM archive_reader;
DROP ROLE archive_reader;
SET client_min_messages = warning;
DROP OWNED BY event_store_reader, event_store_writer, event_store_operator;
DROP ROLE event_store_reader, event_store_writer, event_store_operator;
RESET client_min_messages;

-- a second range, 41 to 80, to archive_colder: the first range moves along.
-- The caller's search_path has a split_part of its own: the range's
-- category index still uses pg_catalog's (read_category compares below).
-- Another index of event_store.events is copied to the new range too.
CREATE SCHEMA archive_evil;
CREATE FUNCTION archive_evil.split_part(text, text, int) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'evil' $$;
CREATE INDEX events_type_idx ON event_store.events (event_type);
SET search_path = archive_evil, pg_catalog, public;
SELECT event_store.archive_events(81, 'archive_colder') AS moved;
RESET search_path;
DROP SCHEMA archive_evil CASCADE;
SELECT first_position, end_position, relation FROM event_store.archived_ranges ORDER BY 1;
SELECT * FROM archive_places();
SELECT b.read FROM reads_before b FULL JOIN archive_reads() a USING (read)
 WHERE b.result IS DISTINCT FROM a.result;
SELECT pg_get_indexdef('event_store.events_archive_41_type_idx'::regclass);
DROP INDEX event_store.events_type_idx;

-- ranges move whole
SELECT regress.try($$SELECT event_store.archive_events(60, 'archive_cold')$$);
-- the first range alone back to archive_cold, then both to pg_default
SELECT event_store.archive_events(41, 'archive_cold') AS moved;
SELECT event_store.archive_events(41, 'archive_cold') AS moved_again;
SELECT relation, tablespace FROM archive_places() WHERE relation LIKE 'events_archive_1%' OR relation = 'events_archive_41';
SELECT event_store.archive_events(81, 'pg_default') AS moved;
SELECT DISTINCT tablespace FROM archive_places();
SELECT b.read FROM reads_before b FULL JOIN archive_reads() a USING (read)
 WHERE b.result IS DISTINCT FROM a.result;

--
-- appends after archiving: versions continue, ids stay unique
--
-- an archived id, appended elsewhere: the same error as before archiving
SELECT event_store.append('acct-9', '{"type": "Given2", "id": "22222222-2222-4222-8222-222222222222"}');
SELECT event_store.archive_events(event_store.head_position() + 1, 'archive_cold') AS moved;
SELECT regress.try($$SELECT event_store.append('user-5', '{"type": "Again", "id": "11111111-1111-4111-8111-111111111111"}')$$);
SELECT regress.try($$SELECT event_store.append('user-5', '[{"type": "Fresh"}, {"type": "Again", "id": "22222222-2222-4222-8222-222222222222"}]')$$);
-- an exact retry of an archived batch is recognised as such
SELECT event_store.append('acct-9', '{"type": "Given2", "id": "22222222-2222-4222-8222-222222222222"}');
SELECT count(*) AS "user-5 events" FROM event_store.read_stream('user-5');
-- the whole store is archived: the hot table is empty, appends go on,
-- versions follow the archived ones
SELECT count(*) AS hot FROM ONLY event_store.events;
SELECT event_store.append('order-0', '{"type": "Later"}', 10);
SELECT regress.try($$SELECT event_store.append('order-0', '{"type": "Later"}', 10)$$);
SELECT global_position, stream_version FROM event_store.read_stream('order-0', 9);
SELECT count(*) AS events, count(DISTINCT event_id) AS ids, count(DISTINCT global_position) AS positions
  FROM event_store.events;
-- event_store.stats counts the streams of every tier: with most streams
-- archived, the estimate is not the hot table's alone
SELECT count(event_store.append('order-0', '{"type": "Later"}')) FROM generate_series(1, 100);
ANALYZE event_store.events;
SELECT s.streams, (SELECT count(DISTINCT stream_id) FROM event_store.events) AS distinct_streams
  FROM event_store.stats s;

--
-- a hostile caller's environment: a tablespace whose name needs quoting;
-- a search_path with pg_temp first, temporary look-alikes of the
-- extension's tables, and a schema whose lower() shadows pg_catalog's,
-- while an index of event_store.events calls a function (of another
-- schema) that calls lower(): the range's copy of that index holds what
-- the hot table's would
--
SET allow_in_place_tablespaces = on;
CREATE TABLESPACE "Cold ""Q"" Space" LOCATION '';
RESET allow_in_place_tablespaces;
CREATE SCHEMA archive_fn;
CREATE FUNCTION archive_fn.kind(t text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT lower(t) $$;
CREATE INDEX events_kind_idx ON event_store.events (archive_fn.kind(event_type));
CREATE SCHEMA archive_evil;
CREATE FUNCTION archive_evil.lower(text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'evil' $$;
CREATE TEMP TABLE archived_ranges (first_position bigint, end_position bigint, relation name);
CREATE TEMP TABLE events (global_position bigint);
CREATE TEMP TABLE archived_streams (stream_id text, stream_version bigint);
SET search_path = pg_temp, archive_evil, archive_fn, pg_catalog, public;
SELECT event_store.archive_events(event_store.head_position() + 1, 'Cold "Q" Space') AS moved;
RESET search_path;
SELECT * FROM archive_places() WHERE relation LIKE 'events_archive_123%';
SELECT pg_get_indexdef('event_store.events_archive_123_kind_idx'::regclass);
SET enable_seqscan = off;
SET enable_bitmapscan = off;
SELECT count(*) AS later_by_index FROM event_store.events_archive_123 WHERE archive_fn.kind(event_type) = 'later';
RESET enable_seqscan;
RESET enable_bitmapscan;
SELECT count(*) AS later FROM event_store.events_archive_123 WHERE event_type = 'Later';
SELECT count(*) AS temp_look_alikes FROM pg_temp.archived_ranges, pg_temp.events, pg_temp.archived_streams;
DROP TABLE pg_temp.archived_ranges, pg_temp.events, pg_temp.archived_streams;

--
-- a stream none of whose events is hot: its version is the newest archived
-- one, kept in archived_streams by every archive_events() that makes a range
--
SELECT count(*) AS hot_events FROM ONLY event_store.events;
SELECT count(*) AS archived_streams,
       count(*) FILTER (WHERE a.stream_version IS DISTINCT FROM s.newest) AS wrong_versions
  FROM (SELECT stream_id, max(stream_version) AS newest FROM event_store.events GROUP BY stream_id) AS s
  FULL JOIN event_store.archived_streams a USING (stream_id);
SELECT stream_id, stream_version FROM event_store.archived_streams WHERE stream_id IN ('acct-9', 'order-2') ORDER BY 1;
-- append() takes it: the current version passes, another fails naming it
SELECT regress.try($$SELECT event_store.append('order-2', '{"type": "AfterArchive"}', 9)$$);
SELECT event_store.append('order-2', '{"type": "AfterArchive"}', 10) AS version;
SELECT regress.try($$SELECT event_store.append('acct-9', '{"type": "AfterArchive"}', 0)$$);
SELECT event_store.append('acct-9', '{"type": "AfterArchive"}', 2) AS version;
SELECT stream_id, stream_version, global_position = event_store.head_position() AS newest
  FROM event_store.read_stream('acct-9') ORDER BY stream_version;
-- it is what the version is read from, not the ranges' indexes (an edit by
-- the superuser, rolled back)
BEGIN;
UPDATE event_store.archived_streams SET stream_version = 99 WHERE stream_id = 'user-2';
SELECT event_store.stream_version('user-2') AS from_archived_streams;
ROLLBACK;
SELECT event_store.stream_version('user-2') AS user_2;
-- a stream's events above its newest archived version are all hot: a read
-- from such a version (a stream read, an aggregate after its snapshot)
-- descends no range's index.  Every stream read from every version, either
-- way, is what the events hold.
SELECT count(*) AS stream_reads,
       count(*) FILTER (WHERE got IS DISTINCT FROM want) AS wrong
  FROM (SELECT s.stream_id, v, b,
               (SELECT array_agg(r.global_position ORDER BY r.global_position)
                  FROM event_store.read_stream(s.stream_id, v, NULL, b) AS r) AS got,
               (SELECT array_agg(e.global_position ORDER BY e.global_position)
                  FROM event_store.events e
                 WHERE e.stream_id = s.stream_id
                   AND CASE WHEN b THEN e.stream_version <= v ELSE e.stream_version >= v END) AS want
          FROM (SELECT stream_id, max(stream_version) AS newest
                  FROM event_store.events GROUP BY stream_id) AS s,
               generate_series(1, s.newest + 1) AS v, (VALUES (false), (true)) AS d(b)) AS x;
SELECT stream_version, global_position >= (SELECT max(end_position) FROM event_store.archived_ranges) AS hot
  FROM event_store.read_stream('acct-9', 2) ORDER BY stream_version;
-- that the ranges are skipped by archived_streams shows when it says less
-- (the superuser's edit, rolled back): the archived events go unread
BEGIN;
UPDATE event_store.archived_streams SET stream_version = 1 WHERE stream_id = 'acct-9';
SELECT array_agg(stream_version ORDER BY stream_version) AS from_2_with_edit
  FROM event_store.read_stream('acct-9', 2);
SELECT array_agg(stream_version ORDER BY stream_version) AS from_1_with_edit
  FROM event_store.read_stream('acct-9', 1);
ROLLBACK;
-- another role, with a temporary look-alike of archived_streams first on
-- its search_path (saying order-2 has 99 archived versions, acct-9 none):
-- it reads both streams' archived events all the same
GRANT EXECUTE ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) TO archive_nobody;
SET ROLE archive_nobody;
CREATE TEMP TABLE archived_streams (stream_id text, stream_version bigint);
INSERT INTO pg_temp.archived_streams VALUES ('order-2', 99), ('acct-9', 0);
SET search_path = pg_temp, event_store, public;
SELECT array_agg(stream_version ORDER BY stream_version) AS order_2_from_2
  FROM event_store.read_stream('order-2', 2);
SELECT array_agg(stream_version ORDER BY stream_version) AS acct_9_from_2
  FROM event_store.read_stream('acct-9', 2);
RESET search_path;
DROP TABLE pg_temp.archived_streams;
RESET ROLE;
REVOKE EXECUTE ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) FROM archive_nobody;
-- nobody else reads or locks it
SET ROLE archive_nobody;
SELECT regress.try($$SELECT * FROM event_store.archived_streams$$);
SELECT regress.try($$LOCK TABLE event_store.archived_streams$$);
RESET ROLE;
DROP SCHEMA archive_evil CASCADE;
DROP SCHEMA archive_fn CASCADE;

--
-- archived events stay immutable; purge reaches them
--
SELECT regress.try($$UPDATE event_store.events_archive_1 SET data = '{}'$$);
SELECT regress.try($$DELETE FROM event_store.events_archive_1$$);
SELECT regress.try($$TRUNCATE event_store.events_archive_1$$);
SELECT regress.try($$DELETE FROM event_store.events WHERE global_position = 1$$);
SET event_store.allow_purge = on;
SELECT event_store.purge_stream('user-1') AS purged;
RESET event_store.allow_purge;
SELECT stream_version, event_type FROM event_store.events WHERE stream_id = 'user-1';
SELECT count(*) AS "user-1 archived" FROM event_store.events_archive_1 WHERE stream_id = 'user-1';
-- and the correlation runs of its events, archived or not, went with them:
-- every run left has an event of its id at one of its positions
SELECT count(*) AS runs_without_events FROM event_store.correlations r
 WHERE NOT EXISTS (SELECT FROM event_store.events e
                    WHERE e.global_position BETWEEN r.first_position AND r.last_position
                      AND (e.metadata ->> 'correlationId') COLLATE "C" = r.correlation_id);

--
-- the lifecycle of streams whose events are partly archived
--
SELECT event_store.append('user-2', '{"type": "Hot"}', 10) AS version;
SELECT tableoid::regclass AS tier, count(*) FROM event_store.events WHERE stream_id = 'user-2' GROUP BY 1 ORDER BY 1;
-- deleted: appends refused, reads empty; reopened: versions go on
SELECT event_store.delete_stream('user-2', 11) AS deleted_at_version;
SELECT regress.try($$SELECT event_store.append('user-2', '{"type": "Refused"}')$$);
SELECT count(*) AS "user-2 reads deleted" FROM event_store.read_stream('user-2');
SELECT event_store.stream_version('user-2') AS version;
SELECT event_store.reopen_stream('user-2') AS reopened_at_version;
SELECT event_store.append('user-2', '{"type": "Again"}') AS version;
SELECT stream_version, event_type FROM event_store.read_stream('user-2');
-- retention removes archived events like the others, never the newest
SELECT event_store.set_stream_retention('order-1', 3, NULL);
SELECT event_store.enforce_retention() AS removed;
SELECT stream_version, tableoid::regclass AS tier FROM event_store.events WHERE stream_id = 'order-1' ORDER BY 1;
SELECT string_agg(stream_version::text, ',') AS "order-1 reads" FROM event_store.read_stream('order-1');
SELECT event_store.append('order-1', '{"type": "After"}', 10) AS version;

--
-- archive_events() rolled back leaves nothing behind: no range, no table,
-- every event where it was; so does a savepoint rolled back, and the
-- transaction reads every event after it
--
SELECT count(*) AS ranges, (SELECT count(*) FROM ONLY event_store.events) AS hot
  FROM event_store.archived_ranges;
BEGIN;
SELECT event_store.archive_events(event_store.head_position() + 1, 'archive_cold') > 0 AS moved;
ROLLBACK;
BEGIN;
SAVEPOINT s;
SELECT event_store.archive_events(event_store.head_position() + 1, 'archive_cold') > 0 AS moved;
ROLLBACK TO SAVEPOINT s;
SELECT count(*) AS "read_all in the transaction", (SELECT count(*) FROM event_store.events) AS events
  FROM event_store.read_all(0, NULL);
COMMIT;
SELECT count(*) AS ranges, (SELECT count(*) FROM ONLY event_store.events) AS hot,
       (SELECT count(*) FROM pg_class WHERE relnamespace = 'event_store'::regnamespace
           AND relname LIKE 'events_archive%' AND relkind = 'r') AS range_tables
  FROM event_store.archived_ranges;

-- clean up
DROP FUNCTION archive_places();
DROP FUNCTION archive_reads();
SET client_min_messages = warning;
DROP EXTENSION event_store CASCADE;
RESET client_min_messages;
DROP TABLESPACE archive_cold;
DROP TABLESPACE archive_colder;
DROP TABLESPACE "Cold ""Q"" Space";
REVOKE USAGE ON SCHEMA regress FROM archive_nobody, archive_executor;
DROP ROLE archive_nobody;
DROP ROLE archive_executor;
