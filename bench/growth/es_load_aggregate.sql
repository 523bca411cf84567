SELECT * FROM event_store.load_aggregate('aggsnap-1');
