\set sid random(1, 10000)
SELECT event_store.append('lag-' || :sid, '{"type":"LagEvent","data":{"n":1}}');
