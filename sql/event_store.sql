\echo Use "CREATE EXTENSION event_store" to load this file. \quit

-- The library keeps the position horizon in shared memory: refuse to install
-- unless it was preloaded (the error carries the exact setting to add).
CREATE FUNCTION event_store._assert_preloaded() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_assert_preloaded';
SELECT event_store._assert_preloaded();
REVOKE ALL ON FUNCTION event_store._assert_preloaded() FROM PUBLIC;

------------------------------------------------------------------------------
-- Events
------------------------------------------------------------------------------

-- The row every read returns.
CREATE TYPE event_store.event AS (
    global_position bigint,
    stream_id       text COLLATE "C",
    stream_version  bigint,
    event_id        uuid,
    event_type      text COLLATE "C",
    data            jsonb,
    metadata        jsonb,
    schema_version  int,
    recorded_at     timestamptz
);
COMMENT ON TYPE event_store.event IS 'An event as returned by every read of event_store';

-- The store.  Same columns, same order as event_store.event; rows are immutable.
CREATE TABLE event_store.events (
    global_position bigint      NOT NULL,
    stream_id       text COLLATE "C" NOT NULL CHECK (stream_id <> ''),
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL,
    event_type      text COLLATE "C" NOT NULL CHECK (event_type <> ''),
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL CHECK (jsonb_typeof(metadata) = 'object'),
    schema_version  int         NOT NULL CHECK (schema_version > 0),
    recorded_at     timestamptz NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_stream_id_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);
-- read_category: category = the part of the stream id before the first '-'
CREATE INDEX events_category_position_idx
    ON event_store.events ((pg_catalog.split_part(stream_id, '-', 1)), global_position);
COMMENT ON TABLE event_store.events IS 'All events, immutable; written only by event_store.append()';

SELECT pg_catalog.pg_extension_config_dump('event_store.events', '');

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
-- fire even under session_replication_role = replica
ALTER TABLE event_store.events ENABLE ALWAYS TRIGGER events_immutable;
ALTER TABLE event_store.events ENABLE ALWAYS TRIGGER events_no_truncate;

REVOKE ALL ON TABLE event_store.events FROM PUBLIC;

------------------------------------------------------------------------------
-- Appending
------------------------------------------------------------------------------

CREATE FUNCTION event_store.append(stream_id text, events jsonb,
                                   expected_version bigint DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_append';
COMMENT ON FUNCTION event_store.append(text, jsonb, bigint) IS
    'Append one event or an array of events to a stream; expected_version NULL = any, 0 = new stream, n = exact version; returns the stream version after the append';

------------------------------------------------------------------------------
-- Reading
------------------------------------------------------------------------------

CREATE FUNCTION event_store.stream_version(stream_id text)
    RETURNS bigint
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'es_stream_version';
COMMENT ON FUNCTION event_store.stream_version(text) IS
    'Current version of a stream (0 when it has no events)';

CREATE FUNCTION event_store.read_stream(stream_id text, from_version bigint DEFAULT NULL,
                                        max_count bigint DEFAULT NULL,
                                        backward boolean DEFAULT false,
                                        raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c STABLE PARALLEL SAFE ROWS 100
    AS 'MODULE_PATHNAME', 'es_read_stream';
COMMENT ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) IS
    'Events of one stream, forward from from_version (default 1) or backward from it (default: the last), at most max_count';

CREATE FUNCTION event_store.read_all(after_position bigint DEFAULT 0,
                                     max_count int DEFAULT 1000,
                                     event_types text[] DEFAULT NULL,
                                     raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1000
    AS 'MODULE_PATHNAME', 'es_read_all';
COMMENT ON FUNCTION event_store.read_all(bigint, int, text[], boolean) IS
    'Events after a global position in position order, gap-safe: a follower keeping the largest position seen never skips an event';

CREATE FUNCTION event_store.read_category(category text, after_position bigint DEFAULT 0,
                                          max_count int DEFAULT 1000,
                                          event_types text[] DEFAULT NULL,
                                          raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1000
    AS 'MODULE_PATHNAME', 'es_read_category';
COMMENT ON FUNCTION event_store.read_category(text, bigint, int, text[], boolean) IS
    'Events of one category (stream id prefix before the first "-") after a global position, gap-safe';

CREATE FUNCTION event_store.head_position()
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_head_position';
COMMENT ON FUNCTION event_store.head_position() IS
    'The highest global position a follower may safely read to';

CREATE FUNCTION event_store.wait_for_events(after_position bigint,
                                            timeout interval DEFAULT '10 seconds')
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_wait_for_events';
COMMENT ON FUNCTION event_store.wait_for_events(bigint, interval) IS
    'Block until head_position() exceeds after_position (woken at commit) or the timeout passes; returns head_position()';

------------------------------------------------------------------------------
-- Upcasting
------------------------------------------------------------------------------

CREATE TABLE event_store.upcasters (
    event_type          text COLLATE "C" NOT NULL CHECK (event_type <> ''),
    from_schema_version int          NOT NULL CHECK (from_schema_version > 0),
    upcaster            regprocedure NOT NULL,
    to_event_type       text COLLATE "C" CHECK (to_event_type <> ''),
    registered_at       timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, from_schema_version)
);
COMMENT ON TABLE event_store.upcasters IS 'Registered upcasters; maintained with register_upcaster() / drop_upcaster()';
SELECT pg_catalog.pg_extension_config_dump('event_store.upcasters', '');
REVOKE ALL ON TABLE event_store.upcasters FROM PUBLIC;

CREATE FUNCTION event_store.register_upcaster(event_type text, from_schema_version int,
                                              upcaster regprocedure,
                                              to_event_type text DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_register_upcaster';
COMMENT ON FUNCTION event_store.register_upcaster(text, int, regprocedure, text) IS
    'Register (or replace) the upcaster (data jsonb, metadata jsonb) RETURNS jsonb that turns event_type at from_schema_version into the next version';

CREATE FUNCTION event_store.drop_upcaster(event_type text, from_schema_version int)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_drop_upcaster';
COMMENT ON FUNCTION event_store.drop_upcaster(text, int) IS
    'Remove the upcaster of event_type at from_schema_version';

------------------------------------------------------------------------------
-- Aggregates and snapshots
------------------------------------------------------------------------------

CREATE TABLE event_store.aggregates (
    category       text COLLATE "C" PRIMARY KEY
                   CHECK (category <> '' AND strpos(category, '-') = 0),
    reducer        regprocedure NOT NULL,
    initial_state  jsonb        NOT NULL,
    snapshot_every int          CHECK (snapshot_every > 0),
    state_version  int          NOT NULL CHECK (state_version > 0),
    defined_at     timestamptz  NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.aggregates IS 'Aggregate definitions per category; maintained with define_aggregate()';
SELECT pg_catalog.pg_extension_config_dump('event_store.aggregates', '');
REVOKE ALL ON TABLE event_store.aggregates FROM PUBLIC;

CREATE TABLE event_store.snapshots (
    stream_id      text COLLATE "C" NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    state          jsonb       NOT NULL,
    state_version  int         NOT NULL CHECK (state_version > 0),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (stream_id, stream_version, state_version)
);
COMMENT ON TABLE event_store.snapshots IS 'Aggregate state snapshots; written by save_snapshot() and the snapshot hook of append()';
SELECT pg_catalog.pg_extension_config_dump('event_store.snapshots', '');
REVOKE ALL ON TABLE event_store.snapshots FROM PUBLIC;

CREATE FUNCTION event_store.define_aggregate(category text, reducer regprocedure,
                                             initial_state jsonb DEFAULT '{}',
                                             snapshot_every int DEFAULT NULL,
                                             state_version int DEFAULT 1)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_define_aggregate';
COMMENT ON FUNCTION event_store.define_aggregate(text, regprocedure, jsonb, int, int) IS
    'Define (or replace) the aggregate of a category: reducer (state jsonb, event event_store.event) RETURNS jsonb, optional automatic snapshots every N versions';

CREATE FUNCTION event_store.load_aggregate(stream_id text, at_version bigint DEFAULT NULL)
    RETURNS TABLE(stream_version bigint, state jsonb)
    LANGUAGE c STABLE PARALLEL UNSAFE ROWS 1
    AS 'MODULE_PATHNAME', 'es_load_aggregate';
COMMENT ON FUNCTION event_store.load_aggregate(text, bigint) IS
    'State of a stream''s aggregate (at at_version for time travel): newest usable snapshot plus the later events through the reducer';

CREATE FUNCTION event_store.save_snapshot(stream_id text, stream_version bigint, state jsonb,
                                          state_version int DEFAULT 1)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_save_snapshot';
COMMENT ON FUNCTION event_store.save_snapshot(text, bigint, jsonb, int) IS
    'Store a snapshot of a stream''s state at a version';

CREATE FUNCTION event_store.load_snapshot(stream_id text, max_version bigint DEFAULT NULL)
    RETURNS TABLE(stream_version bigint, state jsonb, state_version int, created_at timestamptz)
    LANGUAGE c STABLE PARALLEL UNSAFE ROWS 1
    AS 'MODULE_PATHNAME', 'es_load_snapshot';
COMMENT ON FUNCTION event_store.load_snapshot(text, bigint) IS
    'The newest snapshot of a stream at or below max_version, whatever its state_version (at most one row)';

CREATE FUNCTION event_store.purge_snapshots(category text DEFAULT NULL)
    RETURNS bigint
    LANGUAGE sql VOLATILE
    AS $$
    WITH purged AS (
        DELETE FROM event_store.snapshots s
         USING event_store.aggregates a
         WHERE pg_catalog.split_part(s.stream_id, '-', 1) OPERATOR(pg_catalog.=) a.category
           AND s.state_version OPERATOR(pg_catalog.<>) a.state_version
           AND ($1 IS NULL OR a.category OPERATOR(pg_catalog.=) $1)
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM purged
$$;
COMMENT ON FUNCTION event_store.purge_snapshots(text) IS
    'Delete snapshots whose state_version differs from their aggregate''s current one (of one category, or all); returns how many';

------------------------------------------------------------------------------
-- Projections
------------------------------------------------------------------------------

CREATE TABLE event_store.projections (
    name            text COLLATE "C" PRIMARY KEY CHECK (name <> ''),
    handler         regprocedure NOT NULL,
    event_types     text[],
    categories      text[],
    mode            text        NOT NULL CHECK (mode IN ('inline', 'async')),
    reset           regprocedure,
    state           text        NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'paused', 'failed')),
    position        bigint      NOT NULL DEFAULT 0,
    attempts        int         NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text,
    error_position  bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.projections IS 'Projections and their checkpoints; maintained with create_projection() and friends';
SELECT pg_catalog.pg_extension_config_dump('event_store.projections', '');
REVOKE ALL ON TABLE event_store.projections FROM PUBLIC;

-- Inline projections: one statement-level trigger with the appended rows as a
-- transition table.  Enabled only while an inline projection exists.
CREATE FUNCTION event_store._apply_inline_projections() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_projection_trigger';
REVOKE ALL ON FUNCTION event_store._apply_inline_projections() FROM PUBLIC;
CREATE TRIGGER events_inline_projections
    AFTER INSERT ON event_store.events
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._apply_inline_projections();
ALTER TABLE event_store.events DISABLE TRIGGER events_inline_projections;

CREATE FUNCTION event_store.create_projection(name text, handler regprocedure,
                                              event_types text[] DEFAULT NULL,
                                              categories text[] DEFAULT NULL,
                                              mode text DEFAULT 'inline',
                                              reset regprocedure DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_create_projection';
COMMENT ON FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure) IS
    'Create a projection: handler (event event_store.event) RETURNS void, applied inline (in the appending transaction) or async (by the background worker)';

CREATE FUNCTION event_store.rebuild_projection(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_rebuild_projection';
COMMENT ON FUNCTION event_store.rebuild_projection(text) IS
    'Call the projection''s reset function and replay it from position 0 (inline: before returning)';

CREATE FUNCTION event_store.pause_projection(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_pause_projection';
COMMENT ON FUNCTION event_store.pause_projection(text) IS 'Stop applying a projection';

CREATE FUNCTION event_store.resume_projection(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_resume_projection';
COMMENT ON FUNCTION event_store.resume_projection(text) IS
    'Apply a paused (or failed) projection again; an inline one first replays what it missed';

CREATE FUNCTION event_store.drop_projection(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_drop_projection';
COMMENT ON FUNCTION event_store.drop_projection(text) IS 'Remove a projection (its read model tables are left alone)';

CREATE FUNCTION event_store.run_projections(max_events int DEFAULT 10000) RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_run_projections';
COMMENT ON FUNCTION event_store.run_projections(int) IS
    'Apply pending events to the async projections now (what the background worker does); returns the number of events handed to handlers';

CREATE VIEW event_store.projection_status AS
SELECT p.name,
       p.mode,
       p.state,
       x.pos AS position,
       h.head AS head_position,
       (SELECT pg_catalog.count(*) FROM event_store.events e
         WHERE e.global_position > x.pos AND e.global_position <= h.head) AS lag_events,
       COALESCE((SELECT EXTRACT(epoch FROM pg_catalog.now() - e.recorded_at)::double precision
                   FROM event_store.events e
                  WHERE e.global_position > x.pos AND e.global_position <= h.head
                  ORDER BY e.global_position LIMIT 1), 0) AS lag_seconds,
       p.last_error,
       p.updated_at
  FROM event_store.projections p
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 CROSS JOIN LATERAL (SELECT CASE WHEN p.mode = 'inline' AND p.state = 'running'
                                 THEN h.head ELSE p.position END AS pos) x;
COMMENT ON VIEW event_store.projection_status IS 'Projections with their position, lag and last error';

-- Tell the background launcher that this database now has the extension.
CREATE FUNCTION event_store._worker_rescan() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_worker_rescan';
REVOKE ALL ON FUNCTION event_store._worker_rescan() FROM PUBLIC;
SELECT event_store._worker_rescan();
