SELECT * FROM event_store.read_stream('upc-1');
