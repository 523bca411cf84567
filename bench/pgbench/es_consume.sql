\set s random(1, :subs)
SELECT * FROM event_store.claim_events('bench_consume_' || :s, 'consumer-' || :client_id, 100) \aset
SELECT event_store.ack_events('bench_consume_' || :s, 'consumer-' || :client_id, :global_position);
