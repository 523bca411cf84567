------------------------------------------------------------------------------
-- Monitoring
------------------------------------------------------------------------------

CREATE FUNCTION event_store._counters(OUT appends bigint, OUT appended_events bigint,
                                      OUT conflicts bigint, OUT appends_in_flight int)
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'es_counters';

-- Constant time: nothing here reads event_store.events, and nothing counts
-- history.  The numbers of events, streams, deleted streams and finished
-- sagas are the estimates PostgreSQL keeps (the cumulative statistics
-- system's live rows, ANALYZE's distinct values, null fractions and most
-- common values); the event counters and the horizon are shared memory; the
-- projections' lag is measured in positions; the sagas still open are
-- counted, and the oldest running one found, through the index of open sagas
-- (its size is the work in progress, not the history).
CREATE VIEW event_store.stats AS
SELECT n.events,
       CASE WHEN n.events = 0 THEN 0
            WHEN d.stadistinct > 0 THEN d.stadistinct::bigint
            WHEN d.stadistinct < 0 THEN pg_catalog.round(-d.stadistinct * n.events)::bigint
       END AS streams,
       CASE WHEN m.live = 0 THEN 0
            ELSE pg_catalog.round(m.live * (1 - md.stanullfrac))::bigint
       END AS deleted_streams,
       c.appends,
       c.appended_events,
       c.conflicts,
       h.head AS head_position,
       c.appends_in_flight,
       -- a projection's lag in positions: 0 for a running inline one
       (SELECT pg_catalog.max(CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' AND p.state OPERATOR(pg_catalog.=) 'running' THEN 0
                    ELSE greatest(h.head OPERATOR(pg_catalog.-) CASE WHEN p.partitions OPERATOR(pg_catalog.>) 1
                      THEN (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                             WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                      ELSE p.position END, 0) END)
          FROM event_store.projections p) AS projection_max_lag,
       (SELECT pg_catalog.jsonb_object_agg(p.name, CASE WHEN p.mode OPERATOR(pg_catalog.=) 'inline' AND p.state OPERATOR(pg_catalog.=) 'running' THEN 0
                    ELSE greatest(h.head OPERATOR(pg_catalog.-) CASE WHEN p.partitions OPERATOR(pg_catalog.>) 1
                      THEN (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp
                             WHERE sp.subscription OPERATOR(pg_catalog.=) p.name)
                      ELSE p.position END, 0) END ORDER BY p.name)
          FROM event_store.projections p) AS projection_lag,
       (SELECT COALESCE(pg_catalog.jsonb_object_agg(b.status, b.n ORDER BY b.status), '{}')
          FROM (SELECT s.status, pg_catalog.count(*) AS n
                  FROM event_store.sagas s
                 WHERE s.status IN ('running', 'compensating', 'compensation_failed')
                 GROUP BY s.status
                UNION ALL
                SELECT v.status, pg_catalog.round(v.freq * sg.live)::bigint
                  FROM ROWS FROM (pg_catalog.unnest(sm.vals), pg_catalog.unnest(sm.freqs)) AS v(status, freq)
                 WHERE v.status IN ('completed', 'compensated') AND sg.live > 0) b) AS sagas_by_status,
       LEAST((SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
               WHERE s.status OPERATOR(pg_catalog.=) 'running'),
             (SELECT pg_catalog.min(s.started_at) FROM event_store.sagas s
               WHERE s.status OPERATOR(pg_catalog.=) 'compensating')) AS oldest_running_saga_started_at
  FROM event_store._counters() c
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 -- the hot table and the archived ranges (which inherit from it)
 CROSS JOIN LATERAL (SELECT pg_catalog.sum(pg_catalog.pg_stat_get_live_tuples(r.rel))::bigint AS events
                       FROM (SELECT 'event_store.events'::pg_catalog.regclass AS rel
                             UNION ALL
                             SELECT i.inhrelid::pg_catalog.regclass FROM pg_catalog.pg_inherits i
                              WHERE i.inhparent OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass) r) n
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_live_tuples('event_store.stream_metadata'::pg_catalog.regclass) AS live) m
 CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_live_tuples('event_store.sagas'::pg_catalog.regclass) AS live) sg
  LEFT JOIN LATERAL (SELECT st.stadistinct
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'stream_id')
                      -- with archived ranges, ANALYZE also describes the
                      -- whole inheritance tree: those figures, not the hot
                      -- table's alone
                      ORDER BY st.stainherit DESC LIMIT 1) d ON true
  LEFT JOIN LATERAL (SELECT st.stanullfrac
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.stream_metadata'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.stream_metadata'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'deleted_at')
                        AND NOT st.stainherit) md ON true
  -- the most common statuses and their frequencies (with a handful of
  -- statuses, ANALYZE lists every one it saw)
  LEFT JOIN LATERAL (SELECT (CASE 1 WHEN st.stakind1 THEN st.stavalues1 WHEN st.stakind2 THEN st.stavalues2
                                    WHEN st.stakind3 THEN st.stavalues3 WHEN st.stakind4 THEN st.stavalues4
                                    WHEN st.stakind5 THEN st.stavalues5 END)::text::text[] AS vals,
                            CASE 1 WHEN st.stakind1 THEN st.stanumbers1 WHEN st.stakind2 THEN st.stanumbers2
                                   WHEN st.stakind3 THEN st.stanumbers3 WHEN st.stakind4 THEN st.stanumbers4
                                   WHEN st.stakind5 THEN st.stanumbers5 END AS freqs
                       FROM pg_catalog.pg_statistic st
                      WHERE st.starelid OPERATOR(pg_catalog.=) 'event_store.sagas'::pg_catalog.regclass
                        AND st.staattnum OPERATOR(pg_catalog.=)
                            (SELECT a.attnum FROM pg_catalog.pg_attribute a
                              WHERE a.attrelid OPERATOR(pg_catalog.=) 'event_store.sagas'::pg_catalog.regclass
                                AND a.attname OPERATOR(pg_catalog.=) 'status')
                        AND NOT st.stainherit) sm ON true;
COMMENT ON VIEW event_store.stats IS
    'One row, without reading the history: estimated events, streams, deleted streams and finished sagas; open sagas by status; appends, appended events and SE001 conflicts since the server started (shared memory); the follower horizon (head_position) and appends in flight; each projection''s lag in positions; the oldest running saga';
COMMENT ON COLUMN event_store.stats.events IS
    'Estimate: the live rows of event_store.events and its archived ranges as the cumulative statistics system counts them (pg_stat_get_live_tuples: committed appends minus purged and retained-away events, reset by VACUUM and ANALYZE); sessions report a few seconds late, and a crash resets it until the next ANALYZE';
COMMENT ON COLUMN event_store.stats.streams IS
    'Estimate: the distinct stream ids ANALYZE last found in event_store.events and its archived ranges (pg_statistic), scaled to the events estimate when ANALYZE recorded a fraction; 0 when events is 0; NULL until the table was first analyzed';
COMMENT ON COLUMN event_store.stats.deleted_streams IS
    'Estimate: the live rows of event_store.stream_metadata (the cumulative statistics system''s count, as for events) times the share of them ANALYZE last found deleted; 0 when the table has no rows; NULL until it was first analyzed (exact: SELECT count(*) FROM event_store.stream_metadata WHERE deleted_at IS NOT NULL)';
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
    'Exact, in positions: the largest projection_lag (event_store.projection_status.lag_events counts the events themselves)';
COMMENT ON COLUMN event_store.stats.projection_lag IS
    'Exact, in positions: by projection name, head_position minus the projection''s position (0 for a running inline projection); positions of other categories and of rolled-back appends count too, so it is an upper bound of the events still to apply (event_store.projection_status.lag_events counts them)';
COMMENT ON COLUMN event_store.stats.sagas_by_status IS
    'By status: exact for the open sagas (running, compensating, compensation_failed: counted through the index sagas_open_idx, which holds only them); an estimate for the finished ones (completed, compensated): the live rows of event_store.sagas (the cumulative statistics system''s count) times the share ANALYZE last found among its most common statuses, absent when ANALYZE has not listed it (exact: SELECT status, count(*) FROM event_store.sagas GROUP BY status)';
COMMENT ON COLUMN event_store.stats.oldest_running_saga_started_at IS
    'Exact: when the oldest running or compensating saga started (a probe of the index sagas_open_idx per status)';

