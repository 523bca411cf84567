SELECT * FROM event_store.read_stream('upcsql-1');
