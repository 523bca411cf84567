SELECT * FROM bench.plain_events WHERE stream_id COLLATE "C" = 'reader-1' ORDER BY stream_version;
