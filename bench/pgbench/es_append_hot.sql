SELECT event_store.append('hot-1', '{"type":"BenchEvent","data":{"n":1}}');
