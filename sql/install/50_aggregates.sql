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

