------------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------------

-- The row every read returns.
CREATE TYPE event_store.event AS (
    global_position bigint,
    stream_id       text,
    stream_version  bigint,
    event_id        uuid,
    event_type      text,
    data            jsonb,
    metadata        jsonb,
    schema_version  int,
    recorded_at     timestamptz
);
COMMENT ON TYPE event_store.event IS 'An event as returned by every read of event_store';

-- The store.  Same columns, same order as event_store.event; rows are immutable.
CREATE TABLE event_store.events (
    global_position bigint      NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    schema_version  int         NOT NULL,
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);
-- No CHECK constraints: append() validates every event before it writes,
-- and the executor would re-read each CHECK expression for every append.
-- The columns keep the database's collation (rows compare with any text);
-- the indexes on stream ids compare bytes ("C"): ids are identifiers, and
-- byte comparison keeps the append and read paths fast.  The extension's own
-- scans use these indexes with their collation.
CREATE UNIQUE INDEX events_stream_id_stream_version_key
    ON event_store.events (stream_id COLLATE "C", stream_version);
-- read_category: category = the part of the stream id before the first '-'
CREATE INDEX events_category_position_idx
    ON event_store.events ((pg_catalog.split_part(stream_id, '-', 1) COLLATE "C"), global_position);
-- data and metadata are compressed with lz4 where the server was built with
-- it (faster to compress and to read than pglz, at about the same size);
-- elsewhere they keep the default method.  Only values large enough to be
-- compressed at all (about 2 kB per row) are affected.
DO $lz4$
BEGIN
    ALTER TABLE event_store.events
        ALTER COLUMN data SET COMPRESSION lz4,
        ALTER COLUMN metadata SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    NULL;   -- a server without lz4: keep the default method
END
$lz4$;
COMMENT ON TABLE event_store.events IS 'All events, immutable; written only by event_store.append()';

SELECT pg_catalog.pg_extension_config_dump('event_store.events', '');

-- read_correlated: the events of one correlation (metadata "correlationId"),
-- one row per run, a run being a maximal sequence of consecutive events of
-- one batch whose correlation ids have the same text (what
-- metadata ->> 'correlationId' gives).  A batch's events hold a block of
-- consecutive positions and usually share their correlation id, so an
-- append writes a row or a few where an index on the events would take an
-- entry per event.  Runs of different batches never overlap: ordered by
-- last_position, a correlation's runs are in position order.  Ids compare
-- bytes ("C"), as the stream ids do.  Written only by append() and the
-- imports (one row per run, with the batch) and by the removal of events
-- (a run left without events goes with them).
CREATE TABLE event_store.correlations (
    correlation_id  text COLLATE "C" NOT NULL,
    first_position  bigint NOT NULL,
    last_position   bigint NOT NULL,
    CONSTRAINT correlations_pkey PRIMARY KEY (correlation_id, last_position)
);
COMMENT ON TABLE event_store.correlations IS
    'Runs of consecutive events of one batch with the same metadata "correlationId", for event_store.read_correlated(); written only by event_store';
SELECT pg_catalog.pg_extension_config_dump('event_store.correlations', '');
REVOKE ALL ON TABLE event_store.correlations FROM PUBLIC;

-- The durable high-water mark of global positions: every position ever
-- handed out is at or below it, so none is handed out again after a
-- restart, a crash or a dump and restore, even when its event was rolled
-- back or removed (a follower may have passed it).  append() raises it
-- ahead of need; nothing else should.
CREATE SEQUENCE event_store.position_mark AS bigint MINVALUE 0 START 0;
COMMENT ON SEQUENCE event_store.position_mark IS 'Every global position handed out is at or below its value; raised by event_store.append() only';
SELECT pg_catalog.pg_extension_config_dump('event_store.position_mark', '');
REVOKE ALL ON SEQUENCE event_store.position_mark FROM PUBLIC;

-- Immutability: no UPDATE, DELETE or TRUNCATE, for anybody (owner included).
CREATE FUNCTION event_store._refuse_modification() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_refuse_modification';
REVOKE ALL ON FUNCTION event_store._refuse_modification() FROM PUBLIC;

CREATE TRIGGER events_immutable
    BEFORE UPDATE OR DELETE ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._refuse_modification();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._refuse_modification();
-- Rows written without append() (pg_restore's COPY) make the position
-- counter stale; it is then rebuilt from the table before its next use.
CREATE FUNCTION event_store._events_direct_write() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_events_direct_write';
REVOKE ALL ON FUNCTION event_store._events_direct_write() FROM PUBLIC;
CREATE TRIGGER events_direct_write
    BEFORE INSERT ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._events_direct_write();
ALTER TABLE event_store.events ENABLE ALWAYS TRIGGER events_direct_write;

-- fire even under session_replication_role = replica
ALTER TABLE event_store.events ENABLE ALWAYS TRIGGER events_immutable;
ALTER TABLE event_store.events ENABLE ALWAYS TRIGGER events_no_truncate;

REVOKE ALL ON TABLE event_store.events FROM PUBLIC;

