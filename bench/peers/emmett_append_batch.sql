-- the statement Emmett's appendToStream sends, with the same events (the
-- client wraps it in BEGIN ... COMMIT, two more round trips left out here;
-- the partition's name is written in two parts, or pgbench would read a
-- variable in it)
\set k random(1, :streams)
SELECT * FROM emt_append_to_stream(
      ARRAY[@EMT_IDS@]::text[],
      ARRAY[@EMT_DATA@]::jsonb[],
      ARRAY[@EMT_META@]::jsonb[],
      ARRAY[@EMT_VERSIONS@]::text[],
      ARRAY[@EMT_TYPES@]::text[],
      ARRAY[@EMT_KINDS@]::text[],
      bench.stream_of(:k)::text,
      split_part(bench.stream_of(:k), '-', 1)::text,
      NULL::bigint,
      ('emt:' || 'default')::text
    );
