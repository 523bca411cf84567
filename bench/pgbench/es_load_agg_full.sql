SELECT * FROM event_store.load_aggregate('aggfull-1');
