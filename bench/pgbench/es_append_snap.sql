\set sid random(1, 100)
SELECT event_store.append('snap-' || :sid, '{"type":"BenchEvent","data":{"n":1}}');
