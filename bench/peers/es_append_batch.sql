\set k random(1, :streams)
SELECT event_store.append(bench.stream_of(:k), '@BATCH@');
