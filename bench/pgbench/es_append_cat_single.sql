\set sid random(1, 100000)
SELECT event_store.append('hot-' || :sid, '{"type":"BenchEvent","data":{"n":1}}');
