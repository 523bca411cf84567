------------------------------------------------------------------------------
-- Archived position ranges
------------------------------------------------------------------------------
-- archive_events() moves the events below a position into tables of their
-- own, one per range of positions, in a tablespace (a cheaper disk), and
-- moves whole ranges between tablespaces later.  Each range table inherits
-- from event_store.events and has its four indexes; the reads visit the
-- ranges and then the hot table event_store.events in position order.
CREATE TABLE event_store.archived_ranges (
    first_position bigint      NOT NULL PRIMARY KEY,
    end_position   bigint      NOT NULL,
    relation       name        NOT NULL UNIQUE,
    archived_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (first_position OPERATOR(pg_catalog.<) end_position)
);
COMMENT ON TABLE event_store.archived_ranges IS
    'The archived ranges of positions: the events at positions [first_position, end_position) are in table event_store.<relation>; written only by event_store.archive_events()';
SELECT pg_catalog.pg_extension_config_dump('event_store.archived_ranges', '');
REVOKE ALL ON TABLE event_store.archived_ranges FROM PUBLIC;

-- The version of each stream's newest archived event: append() reads a
-- stream's version here when the hot table holds none of its events, with
-- one probe, rather than descending the stream index of every range.
-- archive_events() writes it with each range it makes; removals leave it
-- right, since a stream's newest event is never removed.
CREATE TABLE event_store.archived_streams (
    stream_id      text   COLLATE "C" NOT NULL,
    stream_version bigint NOT NULL,
    CONSTRAINT archived_streams_pkey PRIMARY KEY (stream_id) INCLUDE (stream_version)
);
COMMENT ON TABLE event_store.archived_streams IS
    'The version of the newest archived event of each stream with archived events, which append() reads when the hot table holds none of the stream''s events; written only by event_store.archive_events()';
SELECT pg_catalog.pg_extension_config_dump('event_store.archived_streams', '');
REVOKE ALL ON TABLE event_store.archived_streams FROM PUBLIC;

-- Every write of the ranges (archive_events(), pg_restore's COPY) makes the
-- other sessions read them again.
CREATE FUNCTION event_store._archived_ranges_write() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_archived_ranges_write';
REVOKE ALL ON FUNCTION event_store._archived_ranges_write() FROM PUBLIC;
CREATE TRIGGER archived_ranges_write
    BEFORE INSERT OR UPDATE OR DELETE ON event_store.archived_ranges
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._archived_ranges_write();
ALTER TABLE event_store.archived_ranges ENABLE ALWAYS TRIGGER archived_ranges_write;

CREATE FUNCTION event_store.archive_events(before_position bigint, tablespace name)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_archive_events';
COMMENT ON FUNCTION event_store.archive_events(bigint, name) IS
    'Move the events below a position (whole ranges) to a tablespace, pg_default to bring them back; reads see them as before; returns the number of events moved';
REVOKE ALL ON FUNCTION event_store.archive_events(bigint, name) FROM PUBLIC;
