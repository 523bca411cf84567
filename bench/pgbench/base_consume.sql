SELECT * FROM bench.plain_events
 WHERE global_position > (SELECT pos FROM bench.consume_ckpt WHERE consumer = :client_id)
 ORDER BY global_position LIMIT 100 \aset
UPDATE bench.consume_ckpt SET pos = CASE WHEN :global_position > :wrap THEN 0 ELSE :global_position END
 WHERE consumer = :client_id;
