-- growth.sh: schema of one store size.  Run with psql -v ON_ERROR_STOP=1 in
-- a fresh database, before the loaders (load.sql) and finish.sql.

CREATE EXTENSION event_store;
CREATE SCHEMA bench;

-- The baseline: event_store.events without the extension around it (same
-- columns, collations, keys, indexes and column compression).  The indexes
-- are copied from the store's, whatever they are, under names with a
-- "plain_" prefix (e.g. plain_events_pkey).
CREATE TABLE bench.plain_events (
    global_position bigint      NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    schema_version  int         NOT NULL,
    recorded_at     timestamptz NOT NULL
);
SELECT replace(replace(pg_get_indexdef(i.indexrelid),
                       ' INDEX ' || c.relname || ' ON ', ' INDEX plain_' || c.relname || ' ON '),
               ' ON event_store.events USING ', ' ON bench.plain_events USING ')
  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
 WHERE i.indrelid = 'event_store.events'::regclass
\gexec
-- the same compression as the store's columns
SELECT format('ALTER TABLE bench.plain_events ALTER COLUMN %I SET COMPRESSION %s', attname,
              CASE attcompression WHEN 'l' THEN 'lz4' ELSE 'pglz' END)
  FROM pg_attribute
 WHERE attrelid = 'event_store.events'::regclass AND attname IN ('data', 'metadata')
   AND attcompression <> ''
\gexec

-- read_correlated's reads: event_store keeps one row per run of a batch's
-- events sharing a correlation id (event_store.correlations); the bare
-- table serves the same reads the plain way, with an entry per event in an
-- index on the id.  Outside the shape check; both count in the bytes per
-- event and in the appends' cost.
CREATE INDEX plain_events_correlation_position_idx
    ON bench.plain_events ((metadata ->> 'correlationId') COLLATE "C", global_position)
    WHERE (metadata ->> 'correlationId') IS NOT NULL;

-- The shapes must agree (columns, compression, indexes), or the sizes and
-- speeds compared mean nothing.
CREATE FUNCTION pg_temp.table_shape(rel regclass) RETURNS text
LANGUAGE sql AS $$
    SELECT concat_ws(E'\n',
        (SELECT string_agg(format('column %s %s %s%s compression %s', a.attname,
                                  format_type(a.atttypid, a.atttypmod),
                                  coalesce('collate ' || c.collname, ''),
                                  CASE WHEN a.attnotnull THEN ' not null' END,
                                  a.attcompression),
                           E'\n' ORDER BY a.attnum)
           FROM pg_attribute a LEFT JOIN pg_collation c ON c.oid = a.attcollation
          WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped),
        (SELECT string_agg(CASE WHEN indisunique THEN 'unique ' ELSE '' END ||
                           regexp_replace(pg_get_indexdef(indexrelid), '^.* USING ', ''),
                           E'\n' ORDER BY 1)
           FROM pg_index WHERE indrelid = rel
            AND indexrelid::regclass::text <> 'bench.plain_events_correlation_position_idx'))
$$;
SELECT pg_temp.table_shape('event_store.events') = pg_temp.table_shape('bench.plain_events') AS same_shape,
       pg_temp.table_shape('event_store.events') AS store_shape,
       pg_temp.table_shape('bench.plain_events') AS plain_shape
\gset
\if :same_shape
\else
\echo 'bench.plain_events does not mirror event_store.events; update bench/growth/setup.sql'
\echo :store_shape
\echo :plain_shape
SELECT 1/0;
\endif

CREATE SEQUENCE bench.plain_position;
-- and the snapshots of the bare fold (load_aggregate's baseline)
CREATE TABLE bench.plain_snapshots (LIKE event_store.snapshots INCLUDING ALL);

-- A realistic event of about 500 bytes of JSON (data about 350, metadata
-- about 150), varied by n; no single quotes (the batch documents are pasted
-- into pgbench scripts as literals).
CREATE FUNCTION bench.event_doc(type text, n bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'type', type,
        'data', jsonb_build_object(
            'n', n,
            'orderId', md5('o' || n)::uuid,
            'customerId', md5('c' || (n % 100003))::uuid,
            'amount', round(((n % 99991) / 7.0)::numeric, 2),
            'currency', 'EUR',
            'items', jsonb_build_array(
                jsonb_build_object('sku', 'SKU-' || (n % 9973), 'qty', 1 + n % 5, 'price', 19.99, 'name', 'Widget ' || (n % 97)),
                jsonb_build_object('sku', 'SKU-' || (n % 7919), 'qty', 1 + n % 3, 'price', 4.5, 'name', 'Gadget ' || (n % 89))),
            'shipping', jsonb_build_object('city', 'Springfield', 'zip', lpad((n % 99999)::text, 5, '0'),
                                           'country', 'DE')),
        'metadata', jsonb_build_object(
            'correlationId', md5('corr' || (n / 10))::uuid,
            'causationId', md5('cause' || (n - 1))::uuid,
            'userId', 'user-' || (n % 5003),
            'source', 'growth-bench'))
$$;

-- Stream k is "<category>-k", categories round-robin over ten names.
CREATE FUNCTION bench.stream_of(k bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT (ARRAY['order', 'customer', 'cart', 'payment', 'shipment',
                  'invoice', 'account', 'product', 'review', 'session'])[1 + k % 10] || '-' || k
$$;

-- load_aggregate: a 10,037-event stream of a category with snapshots every
-- 100 versions (the newest at 10,000: 37 events to fold after it)
CREATE FUNCTION bench.agg_reduce(state jsonb, e event_store.event)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_build_object(
               'count', coalesce((state->>'count')::bigint, 0) + 1,
               'sum', coalesce((state->>'sum')::numeric, 0) + coalesce((e.data->>'n')::numeric, 0));
END
$$;
SELECT event_store.define_aggregate('aggsnap', 'bench.agg_reduce(jsonb, event_store.event)', '{}', 100);

-- the baseline of load_aggregate: the same fold by hand, from the newest
-- snapshot of the bare snapshot table over the bare table's later events
CREATE FUNCTION bench.bare_load(sid text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    s jsonb;
    v bigint;
    e event_store.event;
BEGIN
    SELECT state, stream_version INTO s, v
      FROM bench.plain_snapshots WHERE stream_id = sid
     ORDER BY stream_version DESC LIMIT 1;
    FOR e IN SELECT * FROM bench.plain_events
              WHERE stream_id COLLATE "C" = sid AND stream_version > coalesce(v, 0)
              ORDER BY stream_version LOOP
        s := bench.agg_reduce(s, e);
    END LOOP;
    RETURN s;
END
$$;
