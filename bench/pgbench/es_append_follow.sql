\set sid random(1, 10000)
SELECT event_store.append('follow-' || :sid, '{"type":"FollowEvent","data":{"n":1}}');
