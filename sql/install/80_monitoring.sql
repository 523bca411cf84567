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

