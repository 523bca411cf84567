\set k random(1, :streams)
INSERT INTO bench.plain_events
       (global_position, stream_id, stream_version, event_id, event_type,
        data, metadata, schema_version, recorded_at)
SELECT p, bench.stream_of(:k), p,
       gen_random_uuid(), e->>'type', coalesce(e->'data', '{}'),
       coalesce(e->'metadata', '{}'), coalesce((e->>'schema_version')::int, 1), now()
  FROM (SELECT nextval('bench.plain_position') AS p, e
          FROM jsonb_array_elements('@BATCH@'::jsonb) AS e) AS batch;
