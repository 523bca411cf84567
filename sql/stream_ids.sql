--
-- Stream ids whose category would be empty (a leading "-") are refused
-- (22023) by every function that takes a stream id: no grant could ever
-- name that category.  SE002 names the stream and version of the event
-- that has the id only to a caller who may read its category.
--
SELECT regress.try($$SELECT event_store.append('-x', '{"type": "A"}')$$) AS append;
SELECT regress.try($$SELECT event_store.append('-', '{"type": "A"}')$$) AS append_dash_only;
SELECT regress.try($$SELECT event_store.stream_version('-x')$$) AS stream_version;
SELECT regress.try($$SELECT * FROM event_store.read_stream('-x')$$) AS read_stream;
SELECT regress.try($$SELECT event_store.delete_stream('-x')$$) AS delete_stream;
SELECT regress.try($$SELECT event_store.reopen_stream('-x')$$) AS reopen_stream;
SET event_store.allow_purge = on;
SELECT regress.try($$SELECT event_store.purge_stream('-x')$$) AS purge_stream;
RESET event_store.allow_purge;
SELECT regress.try($$SELECT event_store.set_stream_retention('-x', 5)$$) AS set_stream_retention;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('-x')$$) AS load_aggregate;
SELECT regress.try($$SELECT event_store.save_snapshot('-x', 1, '{}')$$) AS save_snapshot;
SELECT regress.try($$SELECT * FROM event_store.load_snapshot('-x')$$) AS load_snapshot;
-- nothing was written; a "-" later in the id is fine
SELECT count(*) AS empty_category_events FROM event_store.events WHERE stream_id LIKE '-%';
SELECT event_store.append('ids-a-b', '{"type": "A"}', 0) AS dash_inside;

-- SE002 and grants
SET client_min_messages = warning;
CREATE ROLE ids_secret_owner;
CREATE ROLE ids_writer;
GRANT USAGE ON SCHEMA event_store TO ids_secret_owner, ids_writer;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA event_store TO ids_secret_owner, ids_writer;
GRANT USAGE ON SCHEMA regress TO ids_secret_owner, ids_writer;
RESET client_min_messages;
SELECT event_store.grant_category('ids_secret_owner', 'idssecret');
SELECT event_store.grant_category('ids_writer', 'idsopen', '{append}');
SELECT event_store.grant_category('ids_secret_owner', 'idsopen', '{append,read}');
SELECT event_store.append('idssecret-1', '[{"type": "A"}, {"type": "B", "id": "00000000-0000-4000-8000-00000000e002"}]', 0);
SELECT event_store.append('idsopen-1', '{"type": "A", "id": "00000000-0000-4000-8000-00000000e003"}', 0);
SET ROLE ids_writer;
-- the id is in a category ids_writer may not read: not where
SELECT regress.try($$SELECT event_store.append('idsopen-2', '{"type": "X", "id": "00000000-0000-4000-8000-00000000e002"}')$$) AS unreadable;
-- nor in one it may append to but not read
SELECT regress.try($$SELECT event_store.append('idsopen-2', '{"type": "X", "id": "00000000-0000-4000-8000-00000000e003"}')$$) AS append_only;
RESET ROLE;
SET ROLE ids_secret_owner;
-- a role that may read it is told where
SELECT regress.try($$SELECT event_store.append('idsopen-2', '{"type": "X", "id": "00000000-0000-4000-8000-00000000e002"}')$$) AS readable;
RESET ROLE;
-- and so is the owner
SELECT regress.try($$SELECT event_store.append('idsopen-2', '{"type": "X", "id": "00000000-0000-4000-8000-00000000e003"}')$$) AS owner;

SELECT event_store.revoke_category('ids_secret_owner', 'idssecret');
SELECT event_store.revoke_category('ids_writer', 'idsopen');
SELECT event_store.revoke_category('ids_secret_owner', 'idsopen');
SET client_min_messages = warning;
REVOKE USAGE ON SCHEMA regress FROM ids_secret_owner, ids_writer;
DROP OWNED BY ids_secret_owner, ids_writer;
DROP ROLE ids_secret_owner, ids_writer;
RESET client_min_messages;
