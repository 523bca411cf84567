\set cid random(1, 1000)
\startpipeline
BEGIN;
SELECT event_store.append('ip' || :cid || '-1', '{"type":"IpEvent","data":{"n":1}}');
INSERT INTO bench.rm_hand AS r VALUES ('ip' || :cid || '-1', 1) ON CONFLICT (key) DO UPDATE SET n = r.n + 1;
COMMIT;
\endpipeline
