\set cid random(1, 1000)
SELECT event_store.append('ip' || :cid || '-1', '{"type":"IpEvent","data":{"n":1}}');
