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
    search_path     text        NOT NULL,  -- and with this search_path (pg_temp last)
    partitions      int         NOT NULL DEFAULT 1 CHECK (partitions BETWEEN 1 AND 1024),
    on_error        text        NOT NULL DEFAULT 'fail' CHECK (on_error IN ('fail', 'park'))
);
COMMENT ON TABLE event_store.projections IS 'Projections and their checkpoints; maintained with create_projection() and friends';
SELECT pg_catalog.pg_extension_config_dump('event_store.projections', '');
REVOKE ALL ON TABLE event_store.projections FROM PUBLIC;

CREATE FUNCTION event_store.create_projection(name text, handler regprocedure,
                                              event_types text[] DEFAULT NULL,
                                              categories text[] DEFAULT NULL,
                                              mode text DEFAULT 'inline',
                                              reset regprocedure DEFAULT NULL,
                                              partitions int DEFAULT 1,
                                              on_error text DEFAULT 'fail')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_create_projection';
COMMENT ON FUNCTION event_store.create_projection(text, regprocedure, text[], text[], text, regprocedure, int, text) IS
    'Create a projection: handler (event event_store.event) RETURNS void, applied inline (in the appending transaction) or async (by the background workers, in partitions, parking failing streams with on_error => ''park'')';

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

CREATE FUNCTION event_store.wait_for_projection(name text, "position" bigint,
                                                timeout interval DEFAULT '10 seconds')
    RETURNS boolean
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_wait_for_projection';
COMMENT ON FUNCTION event_store.wait_for_projection(text, bigint, interval) IS
    'Wait until the projection applied (or passed) every event up to position (woken at the projection''s commit); false at the timeout';

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
 CROSS JOIN LATERAL (SELECT CASE WHEN p.mode = 'inline' AND p.state = 'running' THEN h.head
                                 -- several partitions: the lowest of them, as committed
                                 WHEN p.partitions > 1 THEN
                                      (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                                        WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                                 ELSE p.position END AS pos) x;
COMMENT ON VIEW event_store.projection_status IS 'Projections with their position, lag and last error';

-- Tell the background launcher that this database now has the extension.
CREATE FUNCTION event_store._worker_rescan() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_worker_rescan';
REVOKE ALL ON FUNCTION event_store._worker_rescan() FROM PUBLIC;
SELECT event_store._worker_rescan();

