\set sid random(1, 10000)
SELECT event_store.append('bench-' || :sid, '{"type":"ConsEvent","data":{"n":1}}');
