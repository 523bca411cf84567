\set cid random(1, 100000)
SELECT event_store.append('c' || :cid || '-1', '{"type":"BenchEvent","data":{"n":1}}');
