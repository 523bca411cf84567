-- growth.sh loader: streams :lo .. :hi, :per_stream events each, one append
-- (a batch) per stream, 500 streams per transaction.
\o /dev/null
SELECT format($q$
SELECT count(event_store.append(bench.stream_of(s),
           (SELECT jsonb_agg(bench.event_doc('Event' || (i %% 7), s * 1000 + i))
              FROM generate_series(1, %s) AS i)))
  FROM generate_series(%s, %s) AS s$q$,
              :per_stream, lo, least(lo + 499, :hi))
  FROM generate_series(:lo, :hi, 500) AS lo
\gexec
\o
