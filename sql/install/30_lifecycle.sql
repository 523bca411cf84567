------------------------------------------------------------------------------
-- Stream lifecycle: deletion, purging, retention
------------------------------------------------------------------------------
-- The only paths that remove events are purge_stream() and retention;
-- the immutability trigger lets their own DELETE through and nothing else.

CREATE TABLE event_store.stream_metadata (
    stream_id   text COLLATE "C" PRIMARY KEY,
    deleted_at  timestamptz,                 -- set: deleted, append() refused (SE003)
    start_after bigint NOT NULL DEFAULT 0,   -- read_stream shows versions above this
    max_count   bigint CHECK (max_count > 0),
    max_age     interval CHECK (max_age > interval '0'),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.stream_metadata IS 'Deleted streams and retention settings; maintained with delete_stream(), reopen_stream(), purge_stream() and set_stream_retention()';
SELECT pg_catalog.pg_extension_config_dump('event_store.stream_metadata', '');
REVOKE ALL ON TABLE event_store.stream_metadata FROM PUBLIC;

CREATE FUNCTION event_store.delete_stream(stream_id text, expected_version bigint DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_delete_stream';
COMMENT ON FUNCTION event_store.delete_stream(text, bigint) IS
    'Soft-delete a stream: appends the tombstone $StreamDeleted, then read_stream returns nothing and append() is refused (SE003) until reopen_stream(); returns the tombstone''s version';

CREATE FUNCTION event_store.reopen_stream(stream_id text)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_reopen_stream';
COMMENT ON FUNCTION event_store.reopen_stream(text) IS
    'Allow appends to a deleted stream again: appends $StreamReopened; read_stream then shows only what follows the tombstone';

CREATE FUNCTION event_store.purge_stream(stream_id text)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_purge_stream';
COMMENT ON FUNCTION event_store.purge_stream(text) IS
    'Erase a stream''s events and snapshots for good (only while event_store.allow_purge is on); leaves the event $StreamPurged without their data and the stream deleted; returns how many events were removed';

CREATE FUNCTION event_store.set_stream_retention(stream_id text, max_count bigint DEFAULT NULL,
                                                 max_age interval DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_set_stream_retention';
COMMENT ON FUNCTION event_store.set_stream_retention(text, bigint, interval) IS
    'Keep only the newest max_count events of a stream and/or those younger than max_age (the newest always stays); enforced by the background worker';

CREATE FUNCTION event_store.enforce_retention()
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_enforce_retention';
COMMENT ON FUNCTION event_store.enforce_retention() IS
    'Remove the events that retention settings no longer keep (what the background worker does every event_store.retention_interval); returns how many';

