\set sid random(1, 10000)
SELECT event_store.append('bench-' || :sid, '{"type":"FloorEvent","data":{"n":1}}');
