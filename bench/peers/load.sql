-- peers.sh: the same events in Message DB's and Emmett's stores, written by
-- their own write functions (write_message per message, emt_append_to_stream
-- per stream), streams :lo .. :hi.
\o /dev/null
SELECT count(message_store.write_message(gen_random_uuid()::text, e.stream_id, e.event_type, e.data, e.metadata))
  FROM generate_series(:lo, :hi) AS k,
       LATERAL (SELECT * FROM event_store.events
                 WHERE stream_id COLLATE "C" = bench.stream_of(k) ORDER BY stream_version) AS e;
SELECT count(r.*)
  FROM generate_series(:lo, :hi) AS k,
       LATERAL (SELECT array_agg(gen_random_uuid()::text ORDER BY stream_version) AS ids,
                       array_agg(data ORDER BY stream_version) AS data,
                       array_agg(metadata ORDER BY stream_version) AS metadata,
                       array_agg('1'::text ORDER BY stream_version) AS versions,
                       array_agg(event_type ORDER BY stream_version) AS types,
                       array_agg('E'::text ORDER BY stream_version) AS kinds
                  FROM event_store.events WHERE stream_id COLLATE "C" = bench.stream_of(k)) AS a,
       LATERAL emt_append_to_stream(a.ids, a.data, a.metadata, a.versions, a.types, a.kinds,
                                    bench.stream_of(k), split_part(bench.stream_of(k), '-', 1),
                                    NULL::bigint, 'emt:default'::text) AS r;
\o
