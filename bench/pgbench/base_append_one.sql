\set sid random(1, 10000)
INSERT INTO bench.plain_events
       (global_position, stream_id, stream_version, event_id, event_type,
        data, metadata, schema_version, recorded_at)
VALUES (nextval('bench.plain_position'), 'bench-' || :sid, currval('bench.plain_position'),
        gen_random_uuid(), 'BenchEvent', '{"n":1}', '{}', 1, now());
