\echo Use "CREATE EXTENSION event_store" to load this file. \quit

-- Everything lives in schema event_store, a member of the extension (so
-- DROP EXTENSION removes it too).
CREATE SCHEMA event_store;
COMMENT ON SCHEMA event_store IS 'event_store: event streams, reads, snapshots, projections and sagas';

-- The library keeps the position horizon in shared memory: refuse to install
-- unless it was preloaded (the error carries the exact setting to add).
CREATE FUNCTION event_store._assert_preloaded() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_assert_preloaded';
SELECT event_store._assert_preloaded();
REVOKE ALL ON FUNCTION event_store._assert_preloaded() FROM PUBLIC;

-- Every function that writes refuses first in a read-only transaction and
-- on a hot standby (25006); the SQL-language ones call this.
CREATE FUNCTION event_store._check_writable(what text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_check_writable';
REVOKE ALL ON FUNCTION event_store._check_writable(text) FROM PUBLIC;

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
COMMENT ON TABLE event_store.events IS 'All events, immutable; written only by event_store.append()';

SELECT pg_catalog.pg_extension_config_dump('event_store.events', '');

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

------------------------------------------------------------------------------
-- Category ownership
------------------------------------------------------------------------------
-- Once a category has a grant, only holders of "append" may append to its
-- streams and only holders of "read" may read them (the extension owner
-- always may): append() and the read functions check in C, read_all()
-- leaves such events out, and row-level security does the same for a role
-- that was granted SELECT on the tables.

CREATE TABLE event_store.category_grants (
    category   text    NOT NULL CHECK (category <> '' AND strpos(category, '-') = 0),
    grantee    regrole NOT NULL,
    privilege  text    NOT NULL CHECK (privilege IN ('append', 'read')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, grantee, privilege)
);
COMMENT ON TABLE event_store.category_grants IS 'Who may append to / read which category; maintained with grant_category() / revoke_category()';
SELECT pg_catalog.pg_extension_config_dump('event_store.category_grants', '');
REVOKE ALL ON TABLE event_store.category_grants FROM PUBLIC;

CREATE FUNCTION event_store.grant_category(role regrole, category text,
                                           privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_grant_category';
COMMENT ON FUNCTION event_store.grant_category(regrole, text, text[]) IS
    'Let a role append to and/or read the streams of a category; once a category has grants, only their holders (and the extension owner) may';

CREATE FUNCTION event_store.revoke_category(role regrole, category text,
                                            privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_revoke_category';
COMMENT ON FUNCTION event_store.revoke_category(regrole, text, text[]) IS
    'Take category privileges back from a role; a category without grants is open to every role that may call the functions';

-- The row-level security policy: may the current user read this stream?
CREATE FUNCTION event_store._may_read(stream_id text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'es_may_read';

ALTER TABLE event_store.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY category_read ON event_store.events FOR SELECT
    USING (event_store._may_read(stream_id));

-- Checks a callback's registration (EXECUTE; its owner has the registrant's rights)
CREATE FUNCTION event_store._check_callback(fn regprocedure, registrant regrole, what text)
    RETURNS void
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_check_callback';

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
    LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 100
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

------------------------------------------------------------------------------
-- Upcasting
------------------------------------------------------------------------------

CREATE TABLE event_store.upcasters (
    event_type          text NOT NULL CHECK (event_type <> ''),
    from_schema_version int          NOT NULL CHECK (from_schema_version > 0),
    upcaster            regprocedure NOT NULL,
    to_event_type       text CHECK (to_event_type <> ''),
    registered_at       timestamptz  NOT NULL DEFAULT now(),
    owner               regrole      NOT NULL,  -- registered it; the upcaster runs as this role
    search_path         text         NOT NULL,  -- and with this search_path (pg_temp last)
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
    category       text PRIMARY KEY
                   CHECK (category <> '' AND strpos(category, '-') = 0),
    reducer        regprocedure NOT NULL,
    initial_state  jsonb        NOT NULL,
    snapshot_every int          CHECK (snapshot_every > 0),
    state_version  int          NOT NULL CHECK (state_version > 0),
    defined_at     timestamptz  NOT NULL DEFAULT now(),
    owner          regrole      NOT NULL,  -- defined it; the reducer runs as this role
    search_path    text         NOT NULL   -- and with this search_path (pg_temp last)
);
COMMENT ON TABLE event_store.aggregates IS 'Aggregate definitions per category; maintained with define_aggregate()';
SELECT pg_catalog.pg_extension_config_dump('event_store.aggregates', '');
REVOKE ALL ON TABLE event_store.aggregates FROM PUBLIC;

CREATE TABLE event_store.snapshots (
    stream_id      text NOT NULL,
    stream_version bigint      NOT NULL CHECK (stream_version > 0),
    state          jsonb       NOT NULL,
    state_version  int         NOT NULL CHECK (state_version > 0),
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (stream_id, stream_version, state_version)
);
COMMENT ON TABLE event_store.snapshots IS 'Aggregate state snapshots; written by save_snapshot() and the snapshot hook of append()';
SELECT pg_catalog.pg_extension_config_dump('event_store.snapshots', '');
REVOKE ALL ON TABLE event_store.snapshots FROM PUBLIC;
ALTER TABLE event_store.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY category_read ON event_store.snapshots FOR SELECT
    USING (event_store._may_read(stream_id));

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
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_purge_snapshots';
COMMENT ON FUNCTION event_store.purge_snapshots(text) IS
    'Delete snapshots whose state_version differs from their aggregate''s current one (of one category, or of all on which the caller may append and read); returns how many';

------------------------------------------------------------------------------
-- Projections
------------------------------------------------------------------------------

CREATE TABLE event_store.projections (
    name            text PRIMARY KEY CHECK (name <> ''),
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
    updated_at      timestamptz NOT NULL DEFAULT now(),
    owner           regrole     NOT NULL,  -- created it; handler and reset run as this role
    search_path     text        NOT NULL   -- and with this search_path (pg_temp last)
);
COMMENT ON TABLE event_store.projections IS 'Projections and their checkpoints; maintained with create_projection() and friends';
SELECT pg_catalog.pg_extension_config_dump('event_store.projections', '');
REVOKE ALL ON TABLE event_store.projections FROM PUBLIC;

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
       COALESCE((SELECT greatest(EXTRACT(epoch FROM pg_catalog.now() - e.recorded_at)::double precision, 0)
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

------------------------------------------------------------------------------
-- Sagas
------------------------------------------------------------------------------
-- The orchestrator is SQL/PL/pgSQL glue: it runs once per saga transition,
-- never per appended event.  The only per-event part, matching complete_on /
-- fail_on event types, is done in C by append() and calls in here only for
-- an event that carries metadata.saga_id and a watched type.

CREATE TABLE event_store.saga_definitions (
    saga_type  text PRIMARY KEY CHECK (saga_type <> ''),
    definition jsonb       NOT NULL,   -- as given
    steps      jsonb       NOT NULL,   -- normalised: defaults filled in, functions resolved
    timeout    interval,
    defined_at timestamptz NOT NULL DEFAULT now(),
    owner      regrole     NOT NULL,  -- defined it; the step functions run as this role
    search_path text       NOT NULL   -- and with this search_path (pg_temp last)
);
COMMENT ON TABLE event_store.saga_definitions IS 'Saga types; maintained with define_saga()';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_definitions', '');
REVOKE ALL ON TABLE event_store.saga_definitions FROM PUBLIC;

-- Every event type some saga step ever waited for (complete_on / fail_on):
-- sagas started under an older definition keep waiting for their types.
CREATE TABLE event_store.saga_watched_types (
    event_type text PRIMARY KEY
);
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_watched_types', '');
REVOKE ALL ON TABLE event_store.saga_watched_types FROM PUBLIC;

CREATE TABLE event_store.sagas (
    saga_id        uuid PRIMARY KEY,
    saga_type      text NOT NULL,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'completed', 'compensating', 'compensated', 'compensation_failed')),
    start_data     jsonb NOT NULL,
    data           jsonb NOT NULL,
    timeout        interval,
    deadline       timestamptz,
    parent_saga_id uuid REFERENCES event_store.sagas (saga_id),
    parent_step    text,
    last_error     text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX sagas_active_idx ON event_store.sagas (deadline)
    WHERE status IN ('running', 'compensating');
COMMENT ON TABLE event_store.sagas IS 'Saga instances; their history is also the event stream saga-<saga_id>';
SELECT pg_catalog.pg_extension_config_dump('event_store.sagas', '');
REVOKE ALL ON TABLE event_store.sagas FROM PUBLIC;

CREATE TABLE event_store.saga_steps (
    saga_id          uuid NOT NULL REFERENCES event_store.sagas (saga_id),
    step_no          int  NOT NULL,          -- 1-based position in the definition
    name             text NOT NULL,
    grp              int  NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('local', 'external', 'event', 'nested')),
    action           regprocedure,
    compensation     regprocedure,
    comp_kind        text NOT NULL CHECK (comp_kind IN ('none', 'local', 'external', 'nested')),
    complete_on      text,
    fail_on          text,
    child_type       text,
    timeout          interval,
    max_attempts     int  NOT NULL,
    backoff          interval NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'compensating', 'compensated')),
    attempts         int  NOT NULL DEFAULT 0,
    comp_attempts    int  NOT NULL DEFAULT 0,
    result           jsonb,                  -- the step's result = its compensation data
    last_error       text,
    next_attempt_at  timestamptz,
    deadline         timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    child_saga_id    uuid,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step_no),
    UNIQUE (saga_id, name)
);
CREATE INDEX saga_steps_claimable_idx ON event_store.saga_steps (updated_at)
    WHERE status IN ('running', 'compensating') AND lease_owner IS NULL;
CREATE INDEX saga_steps_timers_idx ON event_store.saga_steps (saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
COMMENT ON TABLE event_store.saga_steps IS 'Steps of saga instances';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_steps', '');
REVOKE ALL ON TABLE event_store.saga_steps FROM PUBLIC;

-- Sagas parked for a person: compensation ran out of attempts.
CREATE VIEW event_store.saga_problems AS
SELECT s.saga_id, s.saga_type, s.status, s.last_error AS saga_error,
       st.name AS step, st.status AS step_status, st.comp_attempts, st.last_error AS step_error,
       s.updated_at
  FROM event_store.sagas s
  LEFT JOIN event_store.saga_steps st
    ON st.saga_id = s.saga_id AND st.status = 'compensating'
 WHERE s.status = 'compensation_failed';
COMMENT ON VIEW event_store.saga_problems IS 'Sagas whose compensation failed, with the error, left for a person';

-- Invalidate the per-backend cache of watched complete_on/fail_on types
CREATE FUNCTION event_store._saga_definitions_changed() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_definitions_changed';
REVOKE ALL ON FUNCTION event_store._saga_definitions_changed() FROM PUBLIC;

-- Raise a class-22 error (the API's validation)
CREATE FUNCTION event_store._saga_bad(msg text, hint text DEFAULT NULL, code text DEFAULT '22023')
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = code;
    END IF;
    RAISE EXCEPTION USING MESSAGE = msg, HINT = hint, ERRCODE = code;
END $$;

-- Interval from a definition value, with the step named in the error
CREATE FUNCTION event_store._saga_interval(v jsonb, what text) RETURNS interval
    LANGUAGE plpgsql AS $$
DECLARE
    r interval;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM event_store._saga_bad(format('%s must be an interval string such as "30 seconds"', what));
    END IF;
    BEGIN
        r := (v #>> '{}')::interval;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
        PERFORM event_store._saga_bad(format('%s is not a valid interval: %s', what, v #>> '{}'));
    END;
    IF r < interval '0' THEN
        PERFORM event_store._saga_bad(format('%s must not be negative', what));
    END IF;
    IF r > interval '100 years' THEN
        PERFORM event_store._saga_bad(format('%s must not exceed 100 years', what));
    END IF;
    RETURN r;
END $$;

-- Resolve a step function name to (saga_id uuid, data jsonb) RETURNS jsonb
CREATE FUNCTION event_store._saga_function(name text, what text, p_owner regrole, p_path text)
    RETURNS regprocedure
    LANGUAGE plpgsql AS $$
DECLARE
    f regprocedure;
    rt oid;
    rs boolean;
BEGIN
    BEGIN
        -- resolved in the search_path of the role that defines the saga
        f := event_store._saga_regprocedure(name || '(uuid, jsonb)', p_path);
    EXCEPTION WHEN syntax_error OR invalid_name OR invalid_parameter_value OR undefined_object
                OR invalid_text_representation OR feature_not_supported THEN
        PERFORM event_store._saga_bad(format('%s "%s" is not a valid function name', what, name),
                                      'Name a function such as "inventory.reserve".');
    END;
    IF f IS NULL THEN
        PERFORM event_store._saga_bad(format('%s function %s(uuid, jsonb) does not exist', what, name),
                                      'A step function takes (saga_id uuid, data jsonb) and returns jsonb.',
                                      '42883');
    END IF;
    SELECT prorettype, proretset INTO rt, rs FROM pg_catalog.pg_proc WHERE oid = f;
    IF rt <> 'jsonb'::regtype OR rs THEN
        PERFORM event_store._saga_bad(format('%s function %s must return a single jsonb', what, f::text));
    END IF;
    PERFORM event_store._check_callback(f, p_owner, 'a saga step function');
    RETURN f;
END $$;

-- The work of define_saga(), which passes the role that calls it (the step
-- functions run as that role) and its search_path (to resolve their names)
CREATE FUNCTION event_store._define_saga(saga_type text, definition jsonb, p_owner regrole, p_path text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    step jsonb;
    k text;
    i int := 0;
    norm jsonb := '[]';
    names text[] := '{}';
    nm text;
    grp int;
    maxatt int;
    act regprocedure;
    comp regprocedure;
    kind text;
    comp_kind text;
    saga_timeout interval;
BEGIN
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF octet_length(saga_type) > 1024 THEN
        PERFORM event_store._saga_bad(format('saga_type is too long (%s bytes; the maximum is 1024)',
                                             octet_length(saga_type)), NULL, '22001');
    END IF;
    IF definition IS NULL OR jsonb_typeof(definition) <> 'object' THEN
        PERFORM event_store._saga_bad('definition must be a JSON object with "steps"', NULL,
                                      CASE WHEN definition IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    FOR k IN SELECT jsonb_object_keys(definition) LOOP
        IF k NOT IN ('steps', 'timeout') THEN
            PERFORM event_store._saga_bad(format('unknown key "%s" in saga definition', k),
                                          'A saga definition has the keys "steps" and "timeout".');
        END IF;
    END LOOP;
    IF jsonb_typeof(definition -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(definition -> 'steps') = 0 THEN
        PERFORM event_store._saga_bad('saga definition needs a non-empty "steps" array');
    END IF;
    saga_timeout := event_store._saga_interval(definition -> 'timeout', 'saga "timeout"');

    FOR step IN SELECT value FROM jsonb_array_elements(definition -> 'steps') LOOP
        i := i + 1;
        IF jsonb_typeof(step) <> 'object' THEN
            PERFORM event_store._saga_bad(format('step %s must be a JSON object', i));
        END IF;
        FOR k IN SELECT jsonb_object_keys(step) LOOP
            IF k NOT IN ('name', 'action', 'compensation', 'group', 'timeout', 'max_attempts',
                         'backoff', 'complete_on', 'fail_on', 'saga') THEN
                PERFORM event_store._saga_bad(format('unknown key "%s" in step %s', k, i),
                    'A step has the keys name, action, compensation, group, timeout, max_attempts, backoff, complete_on, fail_on and saga.');
            END IF;
        END LOOP;
        nm := step ->> 'name';
        IF jsonb_typeof(step -> 'name') IS DISTINCT FROM 'string' OR nm = '' THEN
            PERFORM event_store._saga_bad(format('step %s needs a non-empty string "name"', i));
        END IF;
        IF nm = ANY (names) THEN
            PERFORM event_store._saga_bad(format('duplicate step name "%s"', nm));
        END IF;
        names := names || nm;
        FOREACH k IN ARRAY ARRAY['action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
            IF step ? k AND (jsonb_typeof(step -> k) <> 'string' OR step ->> k = '') THEN
                PERFORM event_store._saga_bad(format('"%s" of step "%s" must be a non-empty string', k, nm));
            END IF;
        END LOOP;
        FOREACH k IN ARRAY ARRAY['name', 'action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
            IF octet_length(step ->> k) > 1024 THEN
                PERFORM event_store._saga_bad(format('"%s" of step %s is too long (%s bytes; the maximum is 1024)',
                                                     k, i, octet_length(step ->> k)), NULL, '22001');
            END IF;
        END LOOP;
        IF step ? 'group' THEN
            IF jsonb_typeof(step -> 'group') <> 'number' OR (step ->> 'group')::numeric <> floor((step ->> 'group')::numeric)
               OR (step ->> 'group')::numeric < 1 OR (step ->> 'group')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"group" of step "%s" must be a positive integer', nm));
            END IF;
            grp := (step ->> 'group')::numeric::int;
        ELSE
            grp := i;
        END IF;
        IF step ? 'max_attempts' THEN
            IF jsonb_typeof(step -> 'max_attempts') <> 'number' OR (step ->> 'max_attempts')::numeric <> floor((step ->> 'max_attempts')::numeric)
               OR (step ->> 'max_attempts')::numeric < 1 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be a positive integer', nm));
            END IF;
            IF (step ->> 'max_attempts')::numeric > 100 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be at most 100', nm),
                    'Every attempt of a step is an event in the saga''s stream; for a longer wait, use a longer "backoff" (it doubles per attempt).');
            END IF;
            maxatt := (step ->> 'max_attempts')::numeric::int;
        ELSE
            maxatt := 3;
        END IF;
        act := CASE WHEN step ? 'action' THEN event_store._saga_function(step ->> 'action', format('action of step "%s":', nm), p_owner, p_path) END;
        comp := CASE WHEN step ? 'compensation' THEN event_store._saga_function(step ->> 'compensation', format('compensation of step "%s":', nm), p_owner, p_path) END;
        IF step ? 'saga' THEN
            IF step ? 'action' OR step ? 'complete_on' OR step ? 'fail_on' THEN
                PERFORM event_store._saga_bad(format('step "%s" runs a nested saga and cannot also have "action", "complete_on" or "fail_on"', nm));
            END IF;
            IF NOT EXISTS (SELECT 1 FROM event_store.saga_definitions d WHERE d.saga_type = step ->> 'saga')
               OR step ->> 'saga' = _define_saga.saga_type THEN
                PERFORM event_store._saga_bad(format('saga type "%s" of step "%s" is not defined', step ->> 'saga', nm),
                                              'Define the nested saga type first.');
            END IF;
            kind := 'nested';
        ELSIF act IS NOT NULL THEN
            kind := 'local';
        ELSIF step ? 'complete_on' OR step ? 'fail_on' THEN
            kind := 'event';
        ELSE
            kind := 'external';
        END IF;
        IF kind = 'event' AND NOT step ? 'complete_on' THEN
            PERFORM event_store._saga_bad(format('step "%s" has "fail_on" but no "complete_on" or "action"', nm),
                                          'An event-driven step completes on its "complete_on" event.');
        END IF;
        IF event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)) < interval '10 milliseconds' THEN
            PERFORM event_store._saga_bad(format('"backoff" of step "%s" must be at least 10 milliseconds', nm),
                'A failed attempt is retried by a later saga_tick() or worker round, never in the call that ran it.');
        END IF;
        comp_kind := CASE WHEN comp IS NOT NULL THEN 'local'
                          WHEN kind = 'external' THEN 'external'
                          WHEN kind = 'nested' THEN 'nested'
                          ELSE 'none' END;
        norm := norm || jsonb_build_object(
            'step_no', i, 'name', nm, 'grp', grp, 'kind', kind,
            'action', act::text, 'compensation', comp::text, 'comp_kind', comp_kind,
            'complete_on', step ->> 'complete_on', 'fail_on', step ->> 'fail_on',
            'child_type', step ->> 'saga',
            'timeout', event_store._saga_interval(step -> 'timeout', format('"timeout" of step "%s"', nm)),
            'max_attempts', maxatt,
            'backoff', COALESCE(event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)), interval '1 second'));
    END LOOP;

    -- nested sagas must not lead back to this type (a saga would start itself forever)
    IF EXISTS (
        WITH RECURSIVE reach(t) AS (
            SELECT x ->> 'child_type' FROM jsonb_array_elements(norm) x WHERE x ->> 'child_type' IS NOT NULL
            UNION
            SELECT y ->> 'child_type'
              FROM reach r
              JOIN event_store.saga_definitions d ON d.saga_type = r.t
             CROSS JOIN LATERAL jsonb_array_elements(d.steps) y
             WHERE y ->> 'child_type' IS NOT NULL)
        SELECT 1 FROM reach WHERE t = _define_saga.saga_type) THEN
        PERFORM event_store._saga_bad(format('saga type "%s" would nest itself', _define_saga.saga_type),
                                      'Nested sagas must not form a cycle.');
    END IF;

    INSERT INTO event_store.saga_watched_types (event_type)
    SELECT DISTINCT t FROM jsonb_array_elements(norm) x,
           LATERAL (VALUES (x ->> 'complete_on'), (x ->> 'fail_on')) v(t)
     WHERE t IS NOT NULL
    ON CONFLICT DO NOTHING;

    INSERT INTO event_store.saga_definitions AS d (saga_type, definition, steps, timeout, owner, search_path)
    VALUES (_define_saga.saga_type, definition, norm, saga_timeout, p_owner, p_path)
    ON CONFLICT ON CONSTRAINT saga_definitions_pkey DO UPDATE
       SET definition = EXCLUDED.definition, steps = EXCLUDED.steps,
           timeout = EXCLUDED.timeout, owner = EXCLUDED.owner,
           search_path = EXCLUDED.search_path, defined_at = now();
    PERFORM event_store._saga_definitions_changed();
END $$;
CREATE FUNCTION event_store.define_saga(saga_type text, definition jsonb) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_define_saga';
COMMENT ON FUNCTION event_store.define_saga(text, jsonb) IS
    'Define (or replace, for sagas started afterwards) a saga type: {"steps": [...], "timeout": "1 hour"}';

-- The role a saga type's step functions run as
CREATE FUNCTION event_store._saga_owner(p_type text) RETURNS regrole
    LANGUAGE plpgsql STABLE AS $$
DECLARE
    r regrole;
BEGIN
    SELECT d.owner INTO r FROM event_store.saga_definitions d WHERE d.saga_type = p_type;
    IF r IS NULL THEN
        RAISE EXCEPTION 'saga type "%" is not defined', p_type
            USING ERRCODE = '42704', HINT = 'Define it with event_store.define_saga().';
    END IF;
    RETURN r;
END $$;

-- Append a transition to the saga's own stream
CREATE FUNCTION event_store._saga_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE sql AS $$
    SELECT event_store.append('saga-' || p_saga::text,
                              jsonb_build_object('type', p_type,
                                                 'data', jsonb_build_object('saga_id', p_saga) || COALESCE(p_data, '{}')));
$$;

-- Call a step function (saga_id uuid, data jsonb) RETURNS jsonb as run_as
CREATE FUNCTION event_store._saga_call(fn regprocedure, run_as regrole, p_saga uuid, p_data jsonb)
    RETURNS jsonb
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_call';

-- to_regprocedure() in a given search_path
CREATE FUNCTION event_store._saga_regprocedure(signature text, search_path text) RETURNS regprocedure
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_saga_regprocedure';

-- Backoff before attempt n+1: base doubling per attempt (at most a day), with
-- +-25% jitter.  Never zero (a base below 10 ms, possible in definitions made
-- before that minimum, counts as 10 ms): a retry is due after now(), the
-- start of the transaction, so it never runs in the call that failed.
CREATE FUNCTION event_store._saga_backoff(base interval, attempts int) RETURNS interval
    LANGUAGE sql AS $$
    SELECT least(greatest(base, interval '10 milliseconds')
                 * power(2, least(greatest(attempts - 1, 0), 40))::double precision,
                 interval '1 day') * (0.75 + random() * 0.5)
$$;

-- The step completed with a result
CREATE FUNCTION event_store._saga_step_done(p_saga uuid, p_step text, p_result jsonb) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.saga_steps
       SET status = 'completed', result = p_result, lease_owner = NULL, lease_expires_at = NULL,
           deadline = NULL, next_attempt_at = NULL, updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    UPDATE event_store.sagas
       SET data = CASE WHEN jsonb_typeof(p_result) = 'object' THEN data || p_result ELSE data END,
           updated_at = now()
     WHERE saga_id = p_saga;
    PERFORM event_store._saga_event(p_saga, 'SagaStepCompleted',
                                    jsonb_build_object('step', p_step, 'result', p_result));
END $$;

-- The saga fails: compensate what completed
CREATE FUNCTION event_store._saga_fail(p_saga uuid, p_reason text) RETURNS void
    LANGUAGE plpgsql AS $$
DECLARE
    st record;
BEGIN
    UPDATE event_store.sagas SET status = 'compensating', last_error = p_reason, deadline = NULL,
           updated_at = now()
     WHERE saga_id = p_saga AND status = 'running';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- whatever is still running is cancelled (a nested saga is failed in turn)
    FOR st IN SELECT * FROM event_store.saga_steps
               WHERE saga_id = p_saga AND status IN ('running', 'pending') ORDER BY step_no LOOP
        IF st.status = 'running' THEN
            UPDATE event_store.saga_steps SET status = 'failed', last_error = 'cancelled: ' || p_reason,
                   lease_owner = NULL, lease_expires_at = NULL, deadline = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
            IF st.child_saga_id IS NOT NULL THEN
                PERFORM event_store._saga_fail(st.child_saga_id, 'parent saga failed');
                PERFORM event_store._saga_advance(st.child_saga_id);
            END IF;
        ELSE
            UPDATE event_store.saga_steps SET next_attempt_at = NULL, updated_at = now()
             WHERE saga_id = p_saga AND step_no = st.step_no;
        END IF;
    END LOOP;
    PERFORM event_store._saga_event(p_saga, 'SagaCompensating', jsonb_build_object('reason', p_reason));
END $$;

-- A step attempt failed: retry with backoff, or fail the saga
CREATE FUNCTION event_store._saga_step_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    retry boolean;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    retry := p_retryable AND st.attempts < st.max_attempts;
    -- the step lets go of its nested saga first, so that saga's end is not
    -- reported back to this attempt
    UPDATE event_store.saga_steps
       SET status = CASE WHEN retry THEN 'pending' ELSE 'failed' END,
           last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, deadline = NULL,
           child_saga_id = NULL,
           next_attempt_at = CASE WHEN retry THEN now() + event_store._saga_backoff(st.backoff, st.attempts) END,
           updated_at = now()
     WHERE saga_id = p_saga AND name = p_step;
    PERFORM event_store._saga_event(p_saga, 'SagaStepFailed',
        jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.attempts, 'retrying', retry));
    -- a nested step gives up on its child saga: fail (and so compensate) it
    IF st.child_saga_id IS NOT NULL THEN
        PERFORM event_store._saga_fail(st.child_saga_id, format('step "%s" of the parent saga failed', p_step));
        PERFORM event_store._saga_advance(st.child_saga_id);
    END IF;
    IF NOT retry THEN
        PERFORM event_store._saga_fail(p_saga, format('step "%s" failed: %s', p_step, p_error));
    END IF;
END $$;

-- A compensation attempt failed: retry, or park the saga for a person
CREATE FUNCTION event_store._saga_comp_failed(p_saga uuid, p_step text, p_error text, p_retryable boolean)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    st record;
    s record;
BEGIN
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF p_retryable AND st.comp_attempts < st.max_attempts THEN
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL,
               next_attempt_at = now() + event_store._saga_backoff(st.backoff, st.comp_attempts),
               updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', true));
    ELSE
        UPDATE event_store.saga_steps
           SET last_error = p_error, lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = NULL,
               updated_at = now()
         WHERE saga_id = p_saga AND name = p_step;
        UPDATE event_store.sagas
           SET status = 'compensation_failed', finished_at = now(), updated_at = now(),
               last_error = format('compensation of step "%s" failed: %s', p_step, p_error)
         WHERE saga_id = p_saga
        RETURNING * INTO s;
        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensationFailed',
            jsonb_build_object('step', p_step, 'error', p_error, 'attempt', st.comp_attempts, 'retrying', false));
        PERFORM event_store._saga_event(p_saga, 'SagaCompensationFailed', jsonb_build_object('step', p_step, 'error', p_error));
        IF s.parent_saga_id IS NOT NULL THEN
            PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
        END IF;
    END IF;
END $$;

-- A nested saga reached an end: move its parent step on
CREATE FUNCTION event_store._saga_child_finished(p_parent uuid, p_step text, p_child uuid)
    RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    c record;
    st record;
BEGIN
    SELECT * INTO c FROM event_store.sagas WHERE saga_id = p_child;
    PERFORM 1 FROM event_store.sagas WHERE saga_id = p_parent FOR UPDATE;
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_parent AND name = p_step;
    IF st.child_saga_id IS DISTINCT FROM p_child THEN
        RETURN;
    END IF;
    IF st.status = 'running' THEN
        IF c.status = 'completed' THEN
            PERFORM event_store._saga_step_done(p_parent, p_step, c.data);
        ELSE
            PERFORM event_store._saga_step_failed(p_parent, p_step,
                format('nested saga %s ended %s', p_child, c.status), false);
        END IF;
    ELSIF st.status = 'compensating' THEN
        IF c.status = 'compensated' THEN
            UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
             WHERE saga_id = p_parent AND name = p_step;
            PERFORM event_store._saga_event(p_parent, 'SagaStepCompensated', jsonb_build_object('step', p_step));
        ELSIF c.status = 'compensation_failed' THEN
            PERFORM event_store._saga_comp_failed(p_parent, p_step,
                format('nested saga %s ended compensation_failed', p_child), false);
        END IF;
    END IF;
    PERFORM event_store._saga_advance(p_parent);
END $$;

-- Start a compensation of a completed nested saga
CREATE FUNCTION event_store._saga_compensate_child(p_child uuid) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.sagas SET status = 'compensating', last_error = 'parent saga compensating',
           finished_at = NULL, updated_at = now()
     WHERE saga_id = p_child AND status = 'completed';
    IF FOUND THEN
        PERFORM event_store._saga_event(p_child, 'SagaCompensating',
                                        jsonb_build_object('reason', 'parent saga compensating'));
    END IF;
    PERFORM event_store._saga_advance(p_child);
END $$;

-- Lock a saga and its ancestors, root first.  Every entry point that may
-- touch a parent and a child (nested sagas) locks in this order, so a child's
-- completion and its parent's timeout never deadlock.
CREATE FUNCTION event_store._saga_lock_tree(p_saga uuid) RETURNS boolean
    LANGUAGE plpgsql AS $$
DECLARE
    chain uuid[] := '{}';
    cur uuid := p_saga;
    id uuid;
BEGIN
    WHILE cur IS NOT NULL LOOP
        chain := cur || chain;
        SELECT parent_saga_id INTO cur FROM event_store.sagas WHERE saga_id = cur;
    END LOOP;
    FOREACH id IN ARRAY chain LOOP
        PERFORM 1 FROM event_store.sagas WHERE saga_id = id FOR UPDATE;
    END LOOP;
    RETURN EXISTS (SELECT 1 FROM event_store.sagas WHERE saga_id = p_saga);
END $$;

-- Run whatever is ready: the next group's steps, compensations, the end
CREATE FUNCTION event_store._saga_advance(p_saga uuid) RETURNS int
    LANGUAGE plpgsql AS $$
DECLARE
    s record;
    st record;
    g int;
    res jsonb;
    progressed boolean;
    n int := 0;
    ok boolean;
    err text;
BEGIN
    LOOP
        progressed := false;
        SELECT * INTO s FROM event_store.sagas WHERE saga_id = p_saga FOR UPDATE;
        IF NOT FOUND THEN
            RETURN n;
        END IF;

        IF s.status = 'running' THEN
            SELECT min(grp) INTO g FROM event_store.saga_steps
             WHERE saga_id = p_saga AND status <> 'completed';
            IF g IS NULL THEN
                UPDATE event_store.sagas SET status = 'completed', finished_at = now(), deadline = NULL,
                       updated_at = now()
                 WHERE saga_id = p_saga;
                PERFORM event_store._saga_event(p_saga, 'SagaCompleted', jsonb_build_object('data', s.data));
                IF s.parent_saga_id IS NOT NULL THEN
                    PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
                END IF;
                RETURN n + 1;
            END IF;
            FOR st IN SELECT step_no FROM event_store.saga_steps
                       WHERE saga_id = p_saga AND grp = g AND status = 'pending'
                         AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                       ORDER BY step_no LOOP
                -- re-read: a nested call may have moved things on
                SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = st.step_no;
                CONTINUE WHEN st.status <> 'pending';
                EXIT WHEN (SELECT status FROM event_store.sagas WHERE saga_id = p_saga) <> 'running';
                n := n + 1;
                progressed := true;
                UPDATE event_store.saga_steps
                   SET status = 'running', next_attempt_at = NULL, updated_at = now(),
                       attempts = attempts + CASE WHEN kind IN ('local', 'nested', 'event') THEN 1 ELSE 0 END,
                       deadline = CASE WHEN timeout IS NULL THEN NULL ELSE now() + timeout END
                 WHERE saga_id = p_saga AND step_no = st.step_no;
                SELECT data INTO s.data FROM event_store.sagas WHERE saga_id = p_saga;
                IF st.kind = 'local' THEN
                    ok := true;
                    BEGIN
                        res := event_store._saga_call(st.action, event_store._saga_owner(s.saga_type), p_saga, s.data);
                    EXCEPTION WHEN OTHERS THEN
                        ok := false;
                        err := SQLERRM;
                    END;
                    IF NOT ok THEN
                        PERFORM event_store._saga_step_failed(p_saga, st.name, err, true);
                    ELSIF st.complete_on IS NULL THEN
                        PERFORM event_store._saga_step_done(p_saga, st.name, res);
                    ELSE
                        -- done its part; now waits for its completion event
                        UPDATE event_store.saga_steps SET result = res, updated_at = now()
                         WHERE saga_id = p_saga AND step_no = st.step_no;
                    END IF;
                ELSIF st.kind = 'nested' THEN
                    UPDATE event_store.saga_steps SET child_saga_id = gen_random_uuid()
                     WHERE saga_id = p_saga AND step_no = st.step_no
                    RETURNING child_saga_id INTO st.child_saga_id;
                    PERFORM event_store._saga_start(st.child_type, s.data, st.child_saga_id, p_saga, st.name);
                END IF;
                -- external steps wait to be claimed, event-driven ones for their event
            END LOOP;

        ELSIF s.status = 'compensating' THEN
            SELECT max(grp) INTO g FROM event_store.saga_steps
             WHERE saga_id = p_saga AND status IN ('completed', 'compensating');
            IF g IS NULL THEN
                UPDATE event_store.sagas SET status = 'compensated', finished_at = now(), updated_at = now()
                 WHERE saga_id = p_saga;
                PERFORM event_store._saga_event(p_saga, 'SagaCompensated', jsonb_build_object('reason', s.last_error));
                IF s.parent_saga_id IS NOT NULL THEN
                    PERFORM event_store._saga_child_finished(s.parent_saga_id, s.parent_step, p_saga);
                END IF;
                RETURN n + 1;
            END IF;
            FOR st IN SELECT step_no FROM event_store.saga_steps
                       WHERE saga_id = p_saga AND grp = g
                         AND (status = 'completed'
                              OR (status = 'compensating' AND comp_kind = 'local'
                                  AND (next_attempt_at IS NULL OR next_attempt_at <= now())))
                       ORDER BY step_no DESC LOOP
                SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND step_no = st.step_no;
                EXIT WHEN (SELECT status FROM event_store.sagas WHERE saga_id = p_saga) <> 'compensating';
                n := n + 1;
                progressed := true;
                IF st.status = 'completed' THEN
                    UPDATE event_store.saga_steps SET status = 'compensating', updated_at = now()
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                END IF;
                IF st.comp_kind = 'none' THEN
                    UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                    PERFORM event_store._saga_event(p_saga, 'SagaStepCompensated', jsonb_build_object('step', st.name));
                ELSIF st.comp_kind = 'local' THEN
                    UPDATE event_store.saga_steps SET comp_attempts = comp_attempts + 1, next_attempt_at = NULL
                     WHERE saga_id = p_saga AND step_no = st.step_no;
                    ok := true;
                    BEGIN
                        PERFORM event_store._saga_call(st.compensation, event_store._saga_owner(s.saga_type), p_saga, st.result);
                    EXCEPTION WHEN OTHERS THEN
                        ok := false;
                        err := SQLERRM;
                    END;
                    IF ok THEN
                        UPDATE event_store.saga_steps SET status = 'compensated', updated_at = now()
                         WHERE saga_id = p_saga AND step_no = st.step_no;
                        PERFORM event_store._saga_event(p_saga, 'SagaStepCompensated', jsonb_build_object('step', st.name));
                    ELSE
                        PERFORM event_store._saga_comp_failed(p_saga, st.name, err, true);
                    END IF;
                ELSIF st.comp_kind = 'nested' AND st.status = 'completed' THEN
                    PERFORM event_store._saga_compensate_child(st.child_saga_id);
                ELSE
                    -- external compensation: waits to be claimed
                    progressed := st.status = 'completed';
                END IF;
            END LOOP;
        ELSE
            RETURN n;
        END IF;
        EXIT WHEN NOT progressed;
    END LOOP;
    RETURN n;
END $$;

-- Create a saga instance and run what is ready
CREATE FUNCTION event_store._saga_start(p_type text, p_data jsonb, p_id uuid, p_parent uuid, p_parent_step text)
    RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    d record;
BEGIN
    SELECT * INTO d FROM event_store.saga_definitions WHERE saga_type = p_type;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga type "%s" is not defined', p_type),
                                      'Define it with event_store.define_saga().');
    END IF;
    INSERT INTO event_store.sagas (saga_id, saga_type, start_data, data, timeout, deadline, parent_saga_id, parent_step)
    VALUES (p_id, p_type, p_data, p_data, d.timeout, now() + d.timeout, p_parent, p_parent_step);
    INSERT INTO event_store.saga_steps (saga_id, step_no, name, grp, kind, action, compensation, comp_kind,
                                        complete_on, fail_on, child_type, timeout, max_attempts, backoff)
    SELECT p_id, (x ->> 'step_no')::int, x ->> 'name', (x ->> 'grp')::int, x ->> 'kind',
           (x ->> 'action')::regprocedure, (x ->> 'compensation')::regprocedure, x ->> 'comp_kind',
           x ->> 'complete_on', x ->> 'fail_on', x ->> 'child_type',
           (x ->> 'timeout')::interval, (x ->> 'max_attempts')::int, (x ->> 'backoff')::interval
      FROM jsonb_array_elements(d.steps) x;
    PERFORM event_store._saga_event(p_id, 'SagaStarted',
        jsonb_build_object('saga_type', p_type, 'data', p_data, 'parent_saga_id', p_parent));
    PERFORM event_store._saga_advance(p_id);
    RETURN p_id;
END $$;

-- The work of start_saga(), which checks the caller's grants on category
-- "saga" and serialises starts with the same id (a lock of the extension's
-- own, out of reach of the SQL advisory-lock functions); p_may_read: may the
-- caller read category "saga"?
CREATE FUNCTION event_store._start_saga(saga_type text, data jsonb, saga_id uuid, p_may_read boolean)
    RETURNS uuid LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    existing record;
    id uuid := COALESCE(_start_saga.saga_id, gen_random_uuid());
BEGIN
    PERFORM event_store._check_writable('start_saga()');
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF data IS NULL OR jsonb_typeof(data) <> 'object' THEN
        PERFORM event_store._saga_bad('data must be a JSON object', NULL,
                                      CASE WHEN data IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    -- idempotent on saga_id
    SELECT * INTO existing FROM event_store.sagas s WHERE s.saga_id = id;
    IF FOUND THEN
        IF NOT p_may_read THEN
            -- whether type and data match would tell what the saga holds
            RAISE EXCEPTION 'saga % already exists', id
                USING ERRCODE = '42501',
                      DETAIL = 'Category "saga" has grants, and the current role may not read it, so whether the saga was started with this type and data is not disclosed.',
                      HINT = 'Start the saga with a new id, or have the extension owner grant "read" on category "saga".';
        END IF;
        IF existing.saga_type = _start_saga.saga_type AND existing.start_data = _start_saga.data THEN
            RETURN id;
        END IF;
        PERFORM event_store._saga_bad(format('saga %s already exists with a different type or data', id),
                                      'Starting a saga again with its id is idempotent only with the same type and data.');
    END IF;
    RETURN event_store._saga_start(_start_saga.saga_type, _start_saga.data, id, NULL, NULL);
END $$;
CREATE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_start_saga';
COMMENT ON FUNCTION event_store.start_saga(text, jsonb, uuid) IS
    'Start a saga (idempotent on saga_id) and run its ready local steps; returns the saga id';

-- Lock a saga and find its step, or raise
CREATE FUNCTION event_store._saga_lock_step(p_saga uuid, p_step text) RETURNS event_store.saga_steps
    LANGUAGE plpgsql AS $$
DECLARE
    st event_store.saga_steps;
BEGIN
    IF p_saga IS NULL THEN
        PERFORM event_store._saga_bad('saga_id must not be null', NULL, '22004');
    END IF;
    IF p_step IS NULL OR p_step = '' THEN
        PERFORM event_store._saga_bad('step must not be null or empty', NULL,
                                      CASE WHEN p_step IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF NOT event_store._saga_lock_tree(p_saga) THEN
        PERFORM event_store._saga_bad(format('saga %s does not exist', p_saga));
    END IF;
    SELECT * INTO st FROM event_store.saga_steps WHERE saga_id = p_saga AND name = p_step;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga %s has no step "%s"', p_saga, p_step));
    END IF;
    RETURN st;
END $$;

CREATE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(complete_saga_step.saga_id, complete_saga_step.step);
    sstatus text;
BEGIN
    PERFORM event_store._check_writable('complete_saga_step()');
    SELECT status INTO sstatus FROM event_store.sagas s WHERE s.saga_id = st.saga_id;
    IF st.kind = 'nested' THEN
        RAISE EXCEPTION 'step "%" of saga % is completed by its nested saga', st.name, st.saga_id
            USING ERRCODE = '55000',
                  HINT = 'Complete the steps of the nested saga instead.';
    END IF;
    IF st.status = 'running' AND sstatus = 'running' THEN
        PERFORM event_store._saga_step_done(st.saga_id, st.name, COALESCE(result, '{}'));
    ELSIF st.status = 'compensating' AND st.comp_kind = 'external' AND sstatus = 'compensating' THEN
        UPDATE event_store.saga_steps SET status = 'compensated', lease_owner = NULL, lease_expires_at = NULL,
               updated_at = now()
         WHERE saga_steps.saga_id = st.saga_id AND name = st.name;
        PERFORM event_store._saga_event(st.saga_id, 'SagaStepCompensated', jsonb_build_object('step', st.name));
    ELSE
        RAISE EXCEPTION 'step "%" of saga % cannot be completed: it is %', st.name, st.saga_id, st.status
            USING ERRCODE = '55000',
                  DETAIL = format('The saga is %s.', sstatus),
                  HINT = 'Only a running step (or a step whose external compensation is running) can be completed.';
    END IF;
    PERFORM event_store._saga_advance(st.saga_id);
END $$;
COMMENT ON FUNCTION event_store.complete_saga_step(uuid, text, jsonb) IS
    'Report a step (or its external compensation) done; the result becomes its compensation data and is merged into the saga data';

CREATE FUNCTION event_store.fail_saga_step(saga_id uuid, step text, error text, retryable boolean DEFAULT true)
    RETURNS void LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st event_store.saga_steps := event_store._saga_lock_step(fail_saga_step.saga_id, fail_saga_step.step);
    sstatus text;
BEGIN
    PERFORM event_store._check_writable('fail_saga_step()');
    IF error IS NULL THEN
        PERFORM event_store._saga_bad('error must not be null', NULL, '22004');
    END IF;
    IF retryable IS NULL THEN
        PERFORM event_store._saga_bad('retryable must not be null', NULL, '22004');
    END IF;
    SELECT status INTO sstatus FROM event_store.sagas s WHERE s.saga_id = st.saga_id;
    IF st.status = 'running' AND sstatus = 'running' THEN
        PERFORM event_store._saga_step_failed(st.saga_id, st.name, error, retryable);
    ELSIF st.status = 'compensating' AND st.comp_kind = 'external' AND sstatus = 'compensating' THEN
        PERFORM event_store._saga_comp_failed(st.saga_id, st.name, error, retryable);
    ELSE
        RAISE EXCEPTION 'step "%" of saga % cannot fail: it is %', st.name, st.saga_id, st.status
            USING ERRCODE = '55000',
                  DETAIL = format('The saga is %s.', sstatus),
                  HINT = 'Only a running step (or a step whose external compensation is running) can fail.';
    END IF;
    PERFORM event_store._saga_advance(st.saga_id);
END $$;
COMMENT ON FUNCTION event_store.fail_saga_step(uuid, text, text, boolean) IS
    'Report a step (or its external compensation) failed; retried with backoff while attempts remain and retryable';

CREATE FUNCTION event_store.claim_saga_steps(worker text, max_count int DEFAULT 10, step_names text[] DEFAULT NULL,
                                             lease interval DEFAULT '30 seconds')
    RETURNS TABLE(saga_id uuid, saga_type text, step text, kind text, attempt int, data jsonb)
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
BEGIN
    PERFORM event_store._check_writable('claim_saga_steps()');
    IF worker IS NULL OR worker = '' THEN
        PERFORM event_store._saga_bad('worker must not be null or empty', NULL,
                                      CASE WHEN worker IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF max_count IS NULL OR max_count < 0 THEN
        PERFORM event_store._saga_bad('max_count must be a non-negative integer', NULL,
                                      CASE WHEN max_count IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF lease IS NULL OR lease <= interval '0' THEN
        PERFORM event_store._saga_bad('lease must be a positive interval', NULL,
                                      CASE WHEN lease IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    IF array_ndims(step_names) > 1 THEN
        PERFORM event_store._saga_bad('step_names must be a one-dimensional array', NULL, '2202E');
    END IF;
    IF array_position(step_names, NULL) IS NOT NULL THEN
        PERFORM event_store._saga_bad('step_names must not contain nulls', NULL, '22004');
    END IF;
    RETURN QUERY
    WITH c AS (
        SELECT st.saga_id AS sid, st.step_no AS sno
          FROM event_store.saga_steps st
          JOIN event_store.sagas s ON s.saga_id = st.saga_id
         WHERE st.lease_owner IS NULL
           AND ((st.status = 'running' AND st.kind = 'external' AND s.status = 'running')
             OR (st.status = 'compensating' AND st.comp_kind = 'external' AND s.status = 'compensating'
                 AND (st.next_attempt_at IS NULL OR st.next_attempt_at <= now())))
           AND (step_names IS NULL OR st.name = ANY (step_names))
         ORDER BY st.updated_at, st.saga_id, st.step_no
         LIMIT max_count
           FOR UPDATE OF st SKIP LOCKED),
    u AS (
        UPDATE event_store.saga_steps st
           SET lease_owner = worker, lease_expires_at = now() + lease, updated_at = now(),
               attempts = st.attempts + CASE WHEN st.status = 'running' THEN 1 ELSE 0 END,
               comp_attempts = st.comp_attempts + CASE WHEN st.status = 'compensating' THEN 1 ELSE 0 END
          FROM c
         WHERE st.saga_id = c.sid AND st.step_no = c.sno
        RETURNING st.*)
    SELECT u.saga_id, s.saga_type, u.name,
           CASE WHEN u.status = 'running' THEN 'action' ELSE 'compensation' END,
           CASE WHEN u.status = 'running' THEN u.attempts ELSE u.comp_attempts END,
           CASE WHEN u.status = 'running' THEN s.data ELSE u.result END
      FROM u JOIN event_store.sagas s ON s.saga_id = u.saga_id
     ORDER BY u.updated_at, u.saga_id, u.step_no;
END $$;
COMMENT ON FUNCTION event_store.claim_saga_steps(text, int, text[], interval) IS
    'Claim external saga steps (actions or compensations) for a worker under a lease; concurrent workers never get the same step';

-- Timers: saga and step timeouts, lease expiry, due retries
-- A saga's timer transition failed (say, a callback raised while its
-- transition was appended): saga_tick() rolled back that saga's changes and
-- goes on with the others; the error is kept on the saga and the timer is
-- tried again at the next tick.
CREATE FUNCTION event_store._saga_tick_failed(p_saga uuid, p_sqlstate text, p_error text) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    UPDATE event_store.sagas
       SET last_error = format('timer transition failed (%s): %s', p_sqlstate, p_error), updated_at = now()
     WHERE saga_id = p_saga;
    RAISE WARNING 'event_store saga %: timer transition failed: %', p_saga, p_error;
END $$;

CREATE FUNCTION event_store.saga_tick() RETURNS int
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    PERFORM event_store._check_writable('saga_tick()');
    FOR r IN SELECT s.saga_id FROM event_store.sagas s
              WHERE s.status = 'running' AND s.deadline <= now() ORDER BY s.deadline LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            PERFORM 1 FROM event_store.sagas WHERE saga_id = r.saga_id AND status = 'running' AND deadline <= now();
            CONTINUE WHEN NOT FOUND;
            PERFORM event_store._saga_event(r.saga_id, 'SagaTimedOut', '{}');
            PERFORM event_store._saga_fail(r.saga_id, 'saga timed out');
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    FOR r IN SELECT st.saga_id, st.name, st.status, st.deadline, st.lease_expires_at
               FROM event_store.saga_steps st
              WHERE st.status IN ('running', 'compensating')
                AND (st.deadline <= now() OR st.lease_expires_at <= now())
              ORDER BY st.updated_at LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            -- re-check under the lock: the step may have completed meanwhile
            PERFORM 1 FROM event_store.saga_steps st
              WHERE st.saga_id = r.saga_id AND st.name = r.name AND st.status = r.status
                AND (st.deadline <= now() OR st.lease_expires_at <= now());
            CONTINUE WHEN NOT FOUND;
            IF r.status = 'running' THEN
                -- an external step nobody claimed still used up an attempt by timing out
                UPDATE event_store.saga_steps SET attempts = attempts + 1
                 WHERE saga_id = r.saga_id AND name = r.name AND kind = 'external' AND lease_owner IS NULL;
                PERFORM event_store._saga_step_failed(r.saga_id, r.name,
                    CASE WHEN r.deadline <= now() THEN 'step timed out' ELSE 'lease expired' END, true);
            ELSE
                PERFORM event_store._saga_comp_failed(r.saga_id, r.name, 'lease expired', true);
            END IF;
            n := n + 1 + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    FOR r IN SELECT DISTINCT st.saga_id FROM event_store.saga_steps st
              WHERE st.status IN ('pending', 'compensating') AND st.next_attempt_at <= now() LOOP
        BEGIN
            PERFORM event_store._saga_lock_tree(r.saga_id);
            n := n + event_store._saga_advance(r.saga_id);
        EXCEPTION WHEN OTHERS THEN
            PERFORM event_store._saga_tick_failed(r.saga_id, SQLSTATE, SQLERRM);
        END;
    END LOOP;
    RETURN n;
END $$;
COMMENT ON FUNCTION event_store.saga_tick() IS
    'Fire due saga timers (timeouts, lease expiry, retries) and run ready local steps; the background worker calls it';

-- Event-driven steps: called by append() for an event with metadata.saga_id
-- whose type is some step's complete_on or fail_on
CREATE FUNCTION event_store._saga_on_event(p_saga uuid, p_type text, p_data jsonb) RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    st record;
BEGIN
    PERFORM event_store._saga_lock_tree(p_saga);
    PERFORM 1 FROM event_store.sagas WHERE saga_id = p_saga AND status = 'running';
    IF NOT FOUND THEN
        RETURN;
    END IF;
    FOR st IN SELECT * FROM event_store.saga_steps
               WHERE saga_id = p_saga AND status = 'running' AND (complete_on = p_type OR fail_on = p_type)
               ORDER BY step_no LOOP
        IF st.fail_on = p_type THEN
            PERFORM event_store._saga_step_failed(p_saga, st.name, format('event %s', p_type), false);
        ELSE
            PERFORM event_store._saga_step_done(p_saga, st.name, p_data);
        END IF;
    END LOOP;
    PERFORM event_store._saga_advance(p_saga);
END $$;

-- ISO 8601 in UTC
CREATE FUNCTION event_store._iso8601(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- The work of saga_state(), which checks the caller's grants on category "saga"
CREATE FUNCTION event_store._saga_state(saga_id uuid) RETURNS jsonb
    LANGUAGE plpgsql STABLE
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    s record;
    cur text;
BEGIN
    IF saga_id IS NULL THEN
        PERFORM event_store._saga_bad('saga_id must not be null', NULL, '22004');
    END IF;
    SELECT * INTO s FROM event_store.sagas x WHERE x.saga_id = _saga_state.saga_id;
    IF NOT FOUND THEN
        PERFORM event_store._saga_bad(format('saga %s does not exist', saga_id));
    END IF;
    SELECT name INTO cur FROM event_store.saga_steps st
     WHERE st.saga_id = s.saga_id
       AND st.status IN (CASE WHEN s.status = 'running' THEN 'running' ELSE 'compensating' END,
                         CASE WHEN s.status = 'running' THEN 'pending' ELSE 'compensating' END)
     ORDER BY CASE WHEN s.status = 'running' THEN st.step_no ELSE -st.step_no END
     LIMIT 1;
    RETURN jsonb_build_object(
        'sagaId', s.saga_id,
        'sagaType', s.saga_type,
        'status', s.status,
        'currentStep', cur,
        'startTime', event_store._iso8601(s.started_at),
        'steps', COALESCE((SELECT jsonb_agg(jsonb_build_object(
                     'stepId', st.step_no,
                     'stepType', st.name,
                     'status', st.status,
                     'timestamp', event_store._iso8601(st.updated_at),
                     'compensationData', st.result) ORDER BY st.step_no)
                   FROM event_store.saga_steps st WHERE st.saga_id = s.saga_id), '[]'));
END $$;
CREATE FUNCTION event_store.saga_state(saga_id uuid) RETURNS jsonb
    LANGUAGE c STABLE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_saga_state';
COMMENT ON FUNCTION event_store.saga_state(uuid) IS
    'A saga''s state: {"sagaId","sagaType","status","currentStep","startTime","steps":[...]}';

-- Internal functions are not for PUBLIC
REVOKE ALL ON FUNCTION event_store._saga_bad(text, text, text), event_store._saga_interval(jsonb, text),
    event_store._saga_function(text, text, regrole, text), event_store._saga_event(uuid, text, jsonb),
    event_store._saga_call(regprocedure, regrole, uuid, jsonb), event_store._saga_backoff(interval, int),
    event_store._saga_step_done(uuid, text, jsonb), event_store._saga_fail(uuid, text),
    event_store._saga_step_failed(uuid, text, text, boolean), event_store._saga_comp_failed(uuid, text, text, boolean),
    event_store._saga_child_finished(uuid, text, uuid), event_store._saga_compensate_child(uuid),
    event_store._saga_advance(uuid), event_store._saga_start(text, jsonb, uuid, uuid, text),
    event_store._saga_lock_step(uuid, text), event_store._saga_on_event(uuid, text, jsonb),
    event_store._saga_lock_tree(uuid), event_store._start_saga(text, jsonb, uuid, boolean),
    event_store._saga_state(uuid)
  FROM PUBLIC;

------------------------------------------------------------------------------
-- Monitoring
------------------------------------------------------------------------------

CREATE FUNCTION event_store._counters(OUT appends bigint, OUT appended_events bigint,
                                      OUT conflicts bigint, OUT appends_in_flight int)
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'es_counters';

-- Constant time: nothing here reads event_store.events.  The row count and
-- the number of streams are the estimates PostgreSQL keeps (the cumulative
-- statistics system's live rows, ANALYZE's number of distinct stream ids);
-- the other event counters are shared memory.
CREATE VIEW event_store.stats AS
SELECT n.events,
       CASE WHEN n.events = 0 THEN 0
            WHEN d.stadistinct > 0 THEN d.stadistinct::bigint
            WHEN d.stadistinct < 0 THEN pg_catalog.round(-d.stadistinct * n.events)::bigint
       END AS streams,
       (SELECT pg_catalog.count(*) FROM event_store.stream_metadata m
         WHERE m.deleted_at IS NOT NULL) AS deleted_streams,
       c.appends,
       c.appended_events,
       c.conflicts,
       h.head AS head_position,
       c.appends_in_flight,
       (SELECT pg_catalog.max(p.lag_events) FROM event_store.projection_status p) AS projection_max_lag,
       (SELECT pg_catalog.jsonb_object_agg(p.name, p.lag_events ORDER BY p.name)
          FROM event_store.projection_status p) AS projection_lag,
       COALESCE((SELECT pg_catalog.jsonb_object_agg(b.status, b.n ORDER BY b.status)
                   FROM (SELECT s.status, pg_catalog.count(*) AS n
                           FROM event_store.sagas s GROUP BY s.status) b), '{}') AS sagas_by_status,
       (SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
         WHERE s.status IN ('running', 'compensating')) AS oldest_running_saga_started_at
  FROM event_store._counters() c
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_live_tuples('event_store.events'::pg_catalog.regclass) AS events) n
  LEFT JOIN LATERAL (SELECT st.stadistinct
                       FROM pg_catalog.pg_attribute a
                       JOIN pg_catalog.pg_statistic st
                         ON st.starelid OPERATOR(pg_catalog.=) a.attrelid
                        AND st.staattnum OPERATOR(pg_catalog.=) a.attnum
                        AND NOT st.stainherit
                      WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass
                        AND a.attname OPERATOR(pg_catalog.=) 'stream_id') d ON true;
COMMENT ON VIEW event_store.stats IS
    'One row, in constant time for the events: estimated events and streams; exact deleted streams; appends, appended events and SE001 conflicts since the server started (shared memory); the follower horizon (head_position) and appends in flight; projection lag; sagas by status and the oldest running one';
COMMENT ON COLUMN event_store.stats.events IS
    'Estimate: the live rows of event_store.events as the cumulative statistics system counts them (pg_stat_get_live_tuples: committed appends minus purged and retained-away events, reset by VACUUM and ANALYZE); sessions report a few seconds late, and a crash resets it until the next ANALYZE';
COMMENT ON COLUMN event_store.stats.streams IS
    'Estimate: the distinct stream ids ANALYZE last found in event_store.events (pg_statistic), scaled to the events estimate when ANALYZE recorded a fraction; 0 when events is 0; NULL until the table was first analyzed';
COMMENT ON COLUMN event_store.stats.deleted_streams IS
    'Exact: the deleted streams (tombstones in event_store.stream_metadata, which holds only deleted streams and retention settings)';
COMMENT ON COLUMN event_store.stats.appends IS
    'Exact counter since the server started (shared memory, this database): append() calls that wrote events';
COMMENT ON COLUMN event_store.stats.appended_events IS
    'Exact counter since the server started (shared memory, this database): events written by append()';
COMMENT ON COLUMN event_store.stats.conflicts IS
    'Exact counter since the server started (shared memory, this database): appends refused with SE001 (wrong expected version)';
COMMENT ON COLUMN event_store.stats.head_position IS
    'Exact: the follower horizon, head_position(); every event at or below it is committed or will never be';
COMMENT ON COLUMN event_store.stats.appends_in_flight IS
    'Exact at the moment of reading (shared memory): transactions of this database that hold positions not yet committed or aborted';
COMMENT ON COLUMN event_store.stats.projection_max_lag IS
    'Exact: the largest lag_events of event_store.projection_status (counts each projection''s pending events)';
COMMENT ON COLUMN event_store.stats.projection_lag IS
    'Exact: lag_events of every projection, by name (counts each projection''s pending events)';
COMMENT ON COLUMN event_store.stats.sagas_by_status IS
    'Exact: the number of sagas in each status (counts event_store.sagas)';
COMMENT ON COLUMN event_store.stats.oldest_running_saga_started_at IS
    'Exact: when the oldest running or compensating saga started';

------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------
-- PUBLIC may name the schema's objects and nothing else: no function runs
-- and no table is readable until granted (README: "Privileges").  The
-- tables are never writable except by the extension's owner: all writes go
-- through the functions.  Functions written in SQL that touch the tables
-- are SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp; the
-- C functions check privileges themselves and run their SQL as the
-- extension's owner with every name qualified.
GRANT USAGE ON SCHEMA event_store TO PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_store FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA event_store FROM PUBLIC;
-- the row-level security policy runs as whoever reads the tables
GRANT EXECUTE ON FUNCTION event_store._may_read(text) TO PUBLIC;
