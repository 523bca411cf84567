\set k random(1, :streams)
INSERT INTO bench.plain_events
       (global_position, stream_id, stream_version, event_id, event_type,
        data, metadata, schema_version, recorded_at)
SELECT nextval('bench.plain_position'), bench.stream_of(:k), currval('bench.plain_position'),
       gen_random_uuid(), e->>'type', coalesce(e->'data', '{}'),
       coalesce(e->'metadata', '{}'), coalesce((e->>'schema_version')::int, 1), now()
  FROM (SELECT '@ONE@'::jsonb AS e) AS one;
