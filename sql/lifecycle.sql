--
-- Stream lifecycle: soft deletion (tombstone, reads empty, SE003 on append,
-- reopen), purging for erasure requests (behind a superuser-only setting,
-- recorded without the personal data), retention (max_count, max_age), and
-- the stats view.  Purge and retention are the only paths that remove
-- events: plain DELETE stays refused.
--
SELECT event_store.append('life-1', '[{"type": "Opened", "data": {"email": "a@example.com"}},
                                      {"type": "Renamed", "data": {"name": "Ann"}}]', 0);
SELECT event_store.head_position() AS head_before \gset

-- bad input writes nothing
SELECT regress.try($$SELECT event_store.delete_stream(NULL)$$);
SELECT regress.try($$SELECT event_store.delete_stream('')$$);
SELECT regress.try($$SELECT event_store.delete_stream('life-none')$$);
SELECT regress.try($$SELECT event_store.delete_stream('life-1', -1)$$);
SELECT regress.try($$SELECT event_store.delete_stream('life-1', 1)$$);
SELECT regress.try($$SELECT event_store.reopen_stream('life-1')$$);
SELECT regress.try($$SELECT event_store.reopen_stream('life-none')$$);
SELECT event_store.head_position() = :head_before AS nothing_appended,
       (SELECT count(*) FROM event_store.stream_metadata) AS metadata_rows;

-- soft delete: a tombstone, then the stream reads as empty
SELECT event_store.delete_stream('life-1', 2);
SELECT count(*) AS read_stream_rows FROM event_store.read_stream('life-1');
SELECT event_store.stream_version('life-1');
SELECT stream_version, event_type, data FROM event_store.read_all(:head_before - 1)
 WHERE stream_id = 'life-1';
SELECT regress.try($$SELECT event_store.append('life-1', '{"type": "Late"}')$$);
SELECT regress.try($$SELECT event_store.append('life-1', '{"type": "Late"}', 3)$$);
SELECT regress.try($$SELECT event_store.delete_stream('life-1')$$);
SELECT regress.try($$DELETE FROM event_store.events WHERE stream_id = 'life-1'$$);

-- reopen: appends go on after the tombstone, reads start after it
SELECT event_store.reopen_stream('life-1');
SELECT event_store.append('life-1', '{"type": "Back"}', 4);
SELECT stream_version, event_type FROM event_store.read_stream('life-1');
SELECT stream_version, event_type FROM event_store.read_stream('life-1', backward => true, max_count => 1);
SELECT count(*) AS all_versions_kept FROM event_store.events WHERE stream_id = 'life-1';

-- snapshots follow the stream: none of a deleted stream, none from before
-- the tombstone of a reopened one, and none can be saved while deleted
SELECT event_store.save_snapshot('life-1', 4, '{"at": 4}');
SELECT event_store.delete_stream('life-1');
SELECT count(*) AS snapshots_of_deleted FROM event_store.load_snapshot('life-1');
SELECT regress.try($$SELECT event_store.save_snapshot('life-1', 5, '{}')$$);
SELECT event_store.reopen_stream('life-1');
SELECT count(*) AS snapshots_before_tombstone FROM event_store.load_snapshot('life-1');
SELECT regress.try($$SELECT event_store.save_snapshot('life-1', 5, '{}')$$);
SELECT stream_version FROM event_store.read_stream('life-1');

-- purge: off by default; removes events and snapshots, keeps a marker
SELECT event_store.save_snapshot('life-1', 7, '{"email": "a@example.com"}');
SELECT regress.try($$SELECT event_store.purge_stream('life-1')$$);
SET event_store.allow_purge = on;
SELECT regress.try($$SELECT event_store.purge_stream('life-none')$$);
SELECT event_store.purge_stream('life-1');
RESET event_store.allow_purge;
SELECT stream_version, event_type, data, metadata FROM event_store.events WHERE stream_id = 'life-1';
SELECT count(*) AS personal_data_left FROM event_store.events
 WHERE stream_id = 'life-1' AND (data::text LIKE '%example.com%' OR data::text LIKE '%Ann%');
SELECT count(*) AS snapshots_left FROM event_store.snapshots WHERE stream_id = 'life-1';
SELECT regress.try($$SELECT event_store.append('life-1', '{"type": "Again"}')$$);
-- positions never go back: the marker is above everything purged
SELECT max(global_position) > :head_before AS marker_above FROM event_store.events;
-- a purged stream can be reopened; versions go on
SELECT event_store.reopen_stream('life-1');
SELECT stream_version, event_type FROM event_store.read_stream('life-1');

-- allow_purge is for superusers only
CREATE ROLE life_user;
GRANT USAGE ON SCHEMA regress TO life_user;
SET ROLE life_user;
SELECT regress.try($$SET event_store.allow_purge = on$$);
RESET ROLE;
REVOKE USAGE ON SCHEMA regress FROM life_user;
DROP ROLE life_user;

-- retention: bad settings, then max_count and max_age
SELECT regress.try($$SELECT event_store.set_stream_retention(NULL, 1)$$);
SELECT regress.try($$SELECT event_store.set_stream_retention('life-2', 0)$$);
SELECT regress.try($$SELECT event_store.set_stream_retention('life-2', NULL, '-1 day')$$);
SELECT regress.try($$SELECT event_store.set_stream_retention('life-2', NULL, '0 seconds')$$);
SELECT regress.try($$SELECT event_store.set_stream_retention('life-2', NULL, '7000 years')$$);
SELECT regress.try($$SELECT event_store.set_stream_retention('life-2', NULL, '400000 days')$$);
SELECT event_store.append('life-2', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', i)) FROM generate_series(1, 10) i), 0);
SELECT event_store.append('life-3', (SELECT jsonb_agg(jsonb_build_object('type', 'Tick', 'data', i)) FROM generate_series(1, 3) i), 0);
SELECT event_store.set_stream_retention('life-2', max_count => 4);
SELECT event_store.set_stream_retention('life-3', max_age => '1 hour');
SELECT event_store.enforce_retention();
SELECT stream_version FROM event_store.read_stream('life-2');
SELECT count(*) AS young_events_kept FROM event_store.read_stream('life-3');
-- an age every event exceeds: the newest event of the stream still stays
SELECT event_store.set_stream_retention('life-3', max_age => '1 microsecond');
SELECT pg_sleep(0.01);
SELECT event_store.enforce_retention();
SELECT stream_version FROM event_store.read_stream('life-3');
SELECT event_store.append('life-3', '{"type": "Tock"}', 3);   -- versions go on
-- settings removed: nothing more goes
SELECT event_store.set_stream_retention('life-2');
SELECT event_store.append('life-2', '{"type": "Tock"}', 10);
SELECT event_store.enforce_retention();
SELECT count(*) FROM event_store.read_stream('life-2');

-- stats: counters since start move with appends and conflicts
SELECT appends AS appends_before, appended_events AS events_before, conflicts AS conflicts_before
  FROM event_store.stats \gset
SELECT event_store.append('life-4', '[{"type": "A"}, {"type": "B"}]');
SELECT regress.try($$SELECT event_store.append('life-4', '{"type": "C"}', 0)$$);
SELECT appends - :appends_before AS appends, appended_events - :events_before AS appended_events,
       conflicts - :conflicts_before AS conflicts,
       head_position = event_store.head_position() AS head,
       appends_in_flight
  FROM event_store.stats;
-- deleted streams and finished sagas are estimates too (the view reads no
-- history), exact on tables this small once the statistics system has the
-- session's counts and ANALYZE has run; open sagas are counted
SELECT event_store.append('life-stats', '{"type": "A"}');
SELECT event_store.delete_stream('life-stats');
INSERT INTO event_store.sagas (saga_id, saga_type, start_data, data, status)
VALUES ('00000000-0000-0000-0000-00000000000a', 'stats', '{}', '{}', 'running'),
       ('00000000-0000-0000-0000-00000000000b', 'stats', '{}', '{}', 'completed'),
       ('00000000-0000-0000-0000-00000000000c', 'stats', '{}', '{}', 'completed');
SELECT pg_stat_force_next_flush();
ANALYZE event_store.stream_metadata, event_store.sagas;
SELECT deleted_streams,
       deleted_streams = (SELECT count(*) FROM event_store.stream_metadata
                           WHERE deleted_at IS NOT NULL) AS deleted_exact,
       (SELECT bool_and(COALESCE((sagas_by_status ->> status)::bigint, 0) = n)
          FROM (SELECT status, count(*) n FROM event_store.sagas
                 WHERE status IN ('running', 'compensating', 'compensation_failed')
                 GROUP BY status) x) AS open_sagas_exact,
       (SELECT bool_and(COALESCE((sagas_by_status ->> status)::bigint, 0) <= n)
          FROM (SELECT status, count(*) n FROM event_store.sagas GROUP BY status) x) AS finished_sagas_at_most,
       oldest_running_saga_started_at = (SELECT min(started_at) FROM event_store.sagas
                                          WHERE status IN ('running', 'compensating')) AS oldest_exact
  FROM event_store.stats;
DELETE FROM event_store.sagas WHERE saga_type = 'stats';
-- events and streams are estimates, read without scanning the table: the
-- statistics system's live rows follow appends once a session reports them
-- (before it answers, when forced) ...
SELECT pg_stat_force_next_flush();
SELECT events AS live_before FROM event_store.stats \gset
SELECT event_store.append('life-4', '[{"type": "D"}, {"type": "E"}, {"type": "F"}]', 2);
SELECT pg_stat_force_next_flush();
SELECT events - :live_before AS events_counted FROM event_store.stats;
-- ... and, on a table this small, ANALYZE makes both exact
ANALYZE event_store.events;
SELECT events = (SELECT count(*) FROM event_store.events) AS events_exact,
       streams = (SELECT count(DISTINCT stream_id) FROM event_store.events) AS streams_exact
  FROM event_store.stats;

-- Reads follow the position index wherever the rows lie in the table: after
-- a purge and VACUUM, new events fill the freed space, before older events
-- (and the scans check a page's rows under one lock, a run at a time).
SELECT event_store.head_position() AS scatter_start \gset
SELECT event_store.append('scatter-old', (
    SELECT jsonb_agg(jsonb_build_object('type', 'Pad', 'data', jsonb_build_object('pad', repeat('x', 500))))
      FROM generate_series(1, 300)));
SELECT event_store.append('scatter-keep', (
    SELECT jsonb_agg(jsonb_build_object('type', 'Keep')) FROM generate_series(1, 50)));
SET event_store.allow_purge = on;
SELECT event_store.purge_stream('scatter-old');
RESET event_store.allow_purge;
-- (the purged rows are dead but still indexed: skipped)
SELECT count(*) AS read_after_purge FROM event_store.read_all(:scatter_start, 100000);
VACUUM event_store.events;
SELECT count(event_store.append('scatter-new' || (i % 3), jsonb_build_object('type', 'New', 'data', jsonb_build_object('i', i))))
  FROM generate_series(1, 400) AS i;
-- (the new events do lie before older ones)
SELECT count(*) > 0 AS stored_out_of_order
  FROM (SELECT ctid < lag(ctid) OVER (ORDER BY global_position) AS back
          FROM event_store.events WHERE global_position > :scatter_start) s
 WHERE back;
SELECT (SELECT array_agg(r.global_position ORDER BY r.n)
          FROM event_store.read_all(:scatter_start, 100000) WITH ORDINALITY AS r(global_position, stream_id, stream_version, event_id, event_type, data, metadata, schema_version, recorded_at, n))
     = (SELECT array_agg(global_position ORDER BY global_position)
          FROM event_store.events WHERE global_position > :scatter_start) AS read_all_in_order,
       (SELECT array_agg(r.global_position ORDER BY r.n)
          FROM event_store.read_category('scatter', :scatter_start) WITH ORDINALITY AS r(global_position, stream_id, stream_version, event_id, event_type, data, metadata, schema_version, recorded_at, n))
     = (SELECT array_agg(global_position ORDER BY global_position)
          FROM event_store.events WHERE stream_id LIKE 'scatter-%' AND global_position > :scatter_start) AS read_category_in_order,
       (SELECT array_agg(r.stream_version ORDER BY r.n)
          FROM event_store.read_stream('scatter-new1') WITH ORDINALITY AS r(global_position, stream_id, stream_version, event_id, event_type, data, metadata, schema_version, recorded_at, n))
     = (SELECT array_agg(v) FROM generate_series(1::bigint, 134) v) AS read_stream_in_order,
       (SELECT count(*) FROM event_store.read_all(:scatter_start, 100000)) AS events_read;
