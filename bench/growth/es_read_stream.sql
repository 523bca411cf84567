SELECT * FROM event_store.read_stream('reader-1');
