-- event_store_router 0.3.0: the event_store API over several servers.
--
-- Installed in a router database next to plproxy.  Every server runs the
-- unchanged event_store extension; the router keeps the function names and
-- arguments of event_store wherever their meaning holds and routes each call
-- by stream: a stream's bucket is a stable hash of its id (md5, the same on
-- every PostgreSQL version, usable in a publication row filter), a fixed
-- number of buckets (64) is mapped to servers by event_store.buckets.
-- read_all, read_category and head_position work on a vector cursor: one
-- position per server, in server order.
\echo Use "CREATE EXTENSION event_store_router" to load this file. \quit

-- ---------------------------------------------------------------------------
-- Placement
-- ---------------------------------------------------------------------------

-- The servers, numbered from 1 (server n is PL/Proxy partition n - 1).
-- Connection strings may hold passwords: the table is the owner's only.
CREATE TABLE event_store.servers (
    server     int  PRIMARY KEY CHECK (server >= 1),
    connection text NOT NULL
);
REVOKE ALL ON event_store.servers FROM PUBLIC;
GRANT SELECT (server) ON event_store.servers TO PUBLIC;
COMMENT ON TABLE event_store.servers IS
    'The servers of the router, numbered from 1 in the order of the vector cursor; set by configure_cluster';

-- Which server holds each bucket.  Streams never move between buckets;
-- buckets move between servers.
CREATE TABLE event_store.buckets (
    bucket int PRIMARY KEY CHECK (bucket >= 0 AND bucket < 64),
    server int NOT NULL CHECK (server >= 1)
);
REVOKE ALL ON event_store.buckets FROM PUBLIC;
GRANT SELECT ON event_store.buckets TO PUBLIC;
COMMENT ON TABLE event_store.buckets IS
    'The server of each of the 64 buckets of streams (a stream''s bucket: event_store.stream_bucket)';

SELECT pg_catalog.pg_extension_config_dump('event_store.servers', '');
SELECT pg_catalog.pg_extension_config_dump('event_store.buckets', '');

-- The bucket of a stream: the first byte of the md5 of its id, modulo 64.
-- Only immutable built-in functions, so that the same expression can be a
-- publication row filter on a server (event_store.bucket_filter).
CREATE FUNCTION event_store.stream_bucket(stream_id text) RETURNS int
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN pg_catalog.get_byte(pg_catalog.decode(pg_catalog.md5(stream_id), 'hex'), 0) % 64;
COMMENT ON FUNCTION event_store.stream_bucket(text) IS
    'The bucket (0..63) of a stream: get_byte(decode(md5(stream_id), ''hex''), 0) % 64, stable across PostgreSQL versions';

-- A row filter of the events table selecting the given buckets, for a
-- publication on a server (CREATE PUBLICATION ... WHERE (...)).
CREATE FUNCTION event_store.bucket_filter(buckets int[]) RETURNS text
    LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
    SET search_path = pg_catalog
AS $$
BEGIN
    IF buckets IS NULL OR cardinality(buckets) = 0 THEN
        RAISE EXCEPTION 'buckets must be a non-empty array' USING ERRCODE = '22004';
    END IF;
    IF EXISTS (SELECT FROM unnest(buckets) b WHERE b IS NULL OR b < 0 OR b > 63) THEN
        RAISE EXCEPTION 'invalid bucket in %', buckets
            USING ERRCODE = '22023', HINT = 'Buckets are numbered 0 to 63.';
    END IF;
    RETURN format('get_byte(decode(md5(stream_id), ''hex''), 0) %% 64 IN (%s)',
                  (SELECT string_agg(DISTINCT b::text, ', ') FROM unnest(buckets) b));
END
$$;
COMMENT ON FUNCTION event_store.bucket_filter(int[]) IS
    'A row filter of event_store.events selecting the streams of the given buckets (for a publication)';

-- The number of configured servers, or an error saying how to configure
CREATE FUNCTION event_store._server_count() RETURNS int
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog
AS $$
DECLARE
    n int := (SELECT count(*) FROM event_store.servers);
BEGIN
    IF n = 0 THEN
        RAISE EXCEPTION 'the router has no servers'
            USING ERRCODE = '55000',
                  HINT = 'Call event_store.configure_cluster(ARRAY[''<connection string of server 1>'', ...]) first.';
    END IF;
    RETURN n;
END
$$;

-- The PL/Proxy partition (server - 1) of a stream.  A NULL stream id goes
-- to the first server, which refuses it with event_store's own error.
-- Every routed call holds its bucket's fence lock (shared, until the end of
-- the router's transaction), so that move_bucket() can wait for the calls
-- in flight and hold new ones back while it switches the bucket; the
-- mapping is read after the lock (a statement of its own: a snapshot taken
-- after the wait).  Run for every routed call, so in C
-- (event_store_router.c): the bucket as stream_bucket() computes it, the
-- lock, one index probe; the configuration is checked only when the bucket
-- has no server.
CREATE FUNCTION event_store._stream_partition(stream_id text) RETURNS int
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'esr_stream_partition';

-- The first key of the buckets' fence locks (advisory locks: key, bucket)
CREATE FUNCTION event_store._fence_key() RETURNS int
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN 1163084370;  -- 'ESBR'

CREATE FUNCTION event_store._saga_partition(saga_id uuid) RETURNS int
    LANGUAGE sql VOLATILE
    RETURN event_store._stream_partition('saga-' || saga_id::text);

-- The server (1..n) holding a stream
CREATE FUNCTION event_store.stream_server(stream_id text) RETURNS int
    LANGUAGE sql STABLE
    RETURN (SELECT b.server FROM event_store.buckets b WHERE b.bucket = event_store.stream_bucket(stream_id));
COMMENT ON FUNCTION event_store.stream_server(text) IS
    'The server (numbered from 1, as in the vector cursor) that holds a stream';

-- Every partition, 0..n-1
CREATE FUNCTION event_store._all_partitions() RETURNS int[]
    LANGUAGE sql STABLE
    RETURN ARRAY(SELECT i - 1 FROM generate_series(1, event_store._server_count()) i);

-- Set the servers (superuser): server n is the n-th connection string.  The
-- first call maps the 64 buckets round-robin; later calls keep the mapping
-- (a server that still holds buckets cannot be removed).
CREATE FUNCTION event_store.configure_cluster(servers text[]) RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    n int;
    opts text;
    old text;
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'only a superuser may configure the router''s servers'
            USING ERRCODE = '42501';
    END IF;
    IF servers IS NULL THEN
        RAISE EXCEPTION 'servers must not be NULL' USING ERRCODE = '22004';
    END IF;
    n := coalesce(cardinality(servers), 0);
    IF n = 0 OR array_ndims(servers) <> 1 THEN
        RAISE EXCEPTION 'servers must be a one-dimensional array of connection strings'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM unnest(servers) c WHERE c IS NULL OR btrim(c) = '') THEN
        RAISE EXCEPTION 'servers must not contain NULL or empty connection strings'
            USING ERRCODE = '22023';
    END IF;
    IF EXISTS (SELECT FROM event_store.buckets b WHERE b.server > n) THEN
        RAISE EXCEPTION 'buckets are mapped to server %, beyond the % servers given',
                        (SELECT max(b.server) FROM event_store.buckets b), n
            USING ERRCODE = '22023',
                  HINT = 'Move those buckets to other servers first.';
    END IF;

    DELETE FROM event_store.servers;
    INSERT INTO event_store.servers (server, connection)
    SELECT i, servers[i + array_lower(servers, 1) - 1] FROM generate_series(1, n) i;

    opts := (SELECT string_agg(format('ADD partition_%s %L', i - 1, servers[i + array_lower(servers, 1) - 1]), ', ')
               FROM generate_series(1, n) i);
    IF EXISTS (SELECT FROM pg_foreign_server WHERE srvname = 'event_store') THEN
        old := (SELECT string_agg(format('DROP %I', split_part(o, '=', 1)), ', ')
                  FROM pg_foreign_server s, unnest(s.srvoptions) o
                 WHERE s.srvname = 'event_store' AND o LIKE 'partition\_%');
        EXECUTE format('ALTER SERVER event_store OPTIONS (%s)', concat_ws(', ', old, opts));
    ELSE
        EXECUTE format('CREATE SERVER event_store FOREIGN DATA WRAPPER plproxy OPTIONS (modular_mapping %L, %s)',
                       '1', replace(opts, 'ADD ', ''));
    END IF;
    IF NOT EXISTS (SELECT FROM pg_user_mappings WHERE srvname = 'event_store' AND usename = 'public') THEN
        EXECUTE 'CREATE USER MAPPING FOR PUBLIC SERVER event_store';
    END IF;

    IF NOT EXISTS (SELECT FROM event_store.buckets) THEN
        INSERT INTO event_store.buckets (bucket, server)
        SELECT b, b % n + 1 FROM generate_series(0, 63) b;
    END IF;
END
$$;
COMMENT ON FUNCTION event_store.configure_cluster(text[]) IS
    'Set the router''s servers (superuser): server n is the n-th libpq connection string; the first call maps the 64 buckets round-robin';

-- A vector cursor checked: NULL is the beginning; otherwise one
-- non-negative position per server
CREATE FUNCTION event_store._check_cursor(vec bigint[], arg text) RETURNS bigint[]
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog
AS $$
DECLARE
    n int := event_store._server_count();
BEGIN
    IF vec IS NULL THEN
        RETURN array_fill(0::bigint, ARRAY[n]);
    END IF;
    IF coalesce(array_ndims(vec), 1) <> 1 OR cardinality(vec) <> n
       OR array_position(vec, NULL) IS NOT NULL
       OR EXISTS (SELECT FROM unnest(vec) p WHERE p < 0) THEN
        RAISE EXCEPTION '% must list one non-negative position per server (% servers), got %', arg, n, vec
            USING ERRCODE = '22023',
                  HINT = 'Pass NULL to start at the beginning, or a cursor the router returned (head_position() or a row''s cursor).';
    END IF;
    RETURN vec[array_lower(vec, 1):array_upper(vec, 1)];
END
$$;

-- ---------------------------------------------------------------------------
-- Routed by stream
-- ---------------------------------------------------------------------------

CREATE TYPE event_store.event AS (
    global_position bigint,
    stream_id       text,
    stream_version  bigint,
    event_id        uuid,
    event_type      text,
    data            jsonb,
    metadata        jsonb,
    schema_version  int,
    recorded_at     timestamptz
);
COMMENT ON TYPE event_store.event IS
    'An event as a server returns it (global_position is the position on its server)';

-- (the call as a plain SELECT of the function, not PL/Proxy's default
-- "SELECT ... FROM function(...)": the server plans it without a function
-- scan, on every call, as PL/Proxy's statements are not prepared)
CREATE FUNCTION event_store.append(stream_id text, events jsonb, expected_version bigint DEFAULT NULL)
    RETURNS bigint LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
    SELECT event_store.append(stream_id, events, expected_version) AS append;
$$;
COMMENT ON FUNCTION event_store.append(text, jsonb, bigint) IS
    'Append to a stream on its server (committed there at once); returns the stream version after the append';

CREATE FUNCTION event_store.stream_version(stream_id text)
    RETURNS bigint LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
    SELECT event_store.stream_version(stream_id) AS stream_version;
$$;
COMMENT ON FUNCTION event_store.stream_version(text) IS
    'Current version of a stream, from its server (0 when it has no events)';

CREATE FUNCTION event_store.read_stream(stream_id text, from_version bigint DEFAULT NULL,
                                       max_count bigint DEFAULT NULL,
                                       backward boolean DEFAULT false,
                                       raw boolean DEFAULT false)
    RETURNS SETOF event_store.event LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) IS
    'Events of one stream, from its server (arguments as in event_store.read_stream)';

CREATE FUNCTION event_store.load_aggregate(stream_id text, at_version bigint DEFAULT NULL)
    RETURNS TABLE(stream_version bigint, state jsonb) LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.load_aggregate(text, bigint) IS
    'State of a stream''s aggregate, folded on its server';

CREATE FUNCTION event_store.save_snapshot(stream_id text, stream_version bigint, state jsonb,
                                         state_version int DEFAULT 1)
    RETURNS void LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.save_snapshot(text, bigint, jsonb, int) IS
    'Store a snapshot of a stream on its server';

CREATE FUNCTION event_store.load_snapshot(stream_id text, max_version bigint DEFAULT NULL)
    RETURNS TABLE(stream_version bigint, state jsonb, state_version int, created_at timestamptz)
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.load_snapshot(text, bigint) IS
    'The newest snapshot of a stream at or below max_version, from its server';

CREATE FUNCTION event_store.delete_stream(stream_id text, expected_version bigint DEFAULT NULL)
    RETURNS bigint LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.delete_stream(text, bigint) IS
    'Soft-delete a stream on its server (see event_store.delete_stream)';

CREATE FUNCTION event_store.reopen_stream(stream_id text)
    RETURNS bigint LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._stream_partition(stream_id);
$$;
COMMENT ON FUNCTION event_store.reopen_stream(text) IS
    'Reopen a soft-deleted stream on its server';

-- Sagas live on the server of their stream saga-<saga_id>
CREATE FUNCTION event_store._start_saga(saga_type text, data jsonb, saga_id uuid)
    RETURNS uuid LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._saga_partition(saga_id);
    TARGET event_store.start_saga;
$$;

CREATE FUNCTION event_store.start_saga(saga_type text, data jsonb, saga_id uuid DEFAULT NULL)
    RETURNS uuid LANGUAGE sql
    RETURN event_store._start_saga(saga_type, data, coalesce(saga_id, gen_random_uuid()));
COMMENT ON FUNCTION event_store.start_saga(text, jsonb, uuid) IS
    'Start a saga on the server of its stream saga-<saga_id> (an id is made here when none is given); idempotent on saga_id';

CREATE FUNCTION event_store.saga_state(saga_id uuid)
    RETURNS jsonb LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._saga_partition(saga_id);
$$;
COMMENT ON FUNCTION event_store.saga_state(uuid) IS
    'A saga''s state, from its server';

CREATE FUNCTION event_store.complete_saga_step(saga_id uuid, step text, result jsonb DEFAULT NULL)
    RETURNS void LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._saga_partition(saga_id);
$$;
COMMENT ON FUNCTION event_store.complete_saga_step(uuid, text, jsonb) IS
    'Complete an external saga step on the saga''s server';

CREATE FUNCTION event_store.fail_saga_step(saga_id uuid, step text, error text, retryable boolean DEFAULT true)
    RETURNS void LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON event_store._saga_partition(saga_id);
$$;
COMMENT ON FUNCTION event_store.fail_saga_step(uuid, text, text, boolean) IS
    'Fail an external saga step on the saga''s server';

-- ---------------------------------------------------------------------------
-- Across servers: the vector cursor
-- ---------------------------------------------------------------------------

-- Every server's head, one parallel call
CREATE FUNCTION event_store._head_parts(parts int[])
    RETURNS TABLE(part int, head bigint) LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    SPLIT parts;
    RUN ON parts;
    SELECT (parts)[1] AS part, event_store.head_position() AS head;
$$;

CREATE FUNCTION event_store.head_position() RETURNS bigint[]
    LANGUAGE sql VOLATILE
BEGIN ATOMIC
    SELECT array_agg(h.head ORDER BY h.part)
      FROM event_store._head_parts(event_store._all_partitions()) h;
END;
COMMENT ON FUNCTION event_store.head_position() IS
    'The vector cursor of every server''s head_position() (one position per server, in server order)';

-- One page of every server, each from its own position, one parallel call.
-- "moved" marks a copy that move_bucket() made of an event of another
-- server (metadata "$moved"): the original stays readable there, so the
-- copy is not returned (it only advances the cursor).
CREATE FUNCTION event_store._read_all_parts(parts int[], afters bigint[], max_count int,
                                           event_types text[], raw boolean)
    RETURNS TABLE(part int, moved boolean, global_position bigint, stream_id text,
                  stream_version bigint, event_id uuid, event_type text, data jsonb,
                  metadata jsonb, schema_version int, recorded_at timestamptz)
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    SPLIT parts, afters;
    RUN ON parts;
    SELECT (parts)[1] AS part, (e.metadata -> '$moved') IS NOT NULL AS moved,
           e.global_position, e.stream_id, e.stream_version, e.event_id,
           e.event_type, e.data, e.metadata, e.schema_version, e.recorded_at
      FROM event_store.read_all((afters)[1], max_count, event_types, raw) AS e;
$$;

CREATE FUNCTION event_store._read_category_parts(parts int[], afters bigint[], category text,
                                                max_count int, event_types text[], raw boolean)
    RETURNS TABLE(part int, moved boolean, global_position bigint, stream_id text,
                  stream_version bigint, event_id uuid, event_type text, data jsonb,
                  metadata jsonb, schema_version int, recorded_at timestamptz)
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    SPLIT parts, afters;
    RUN ON parts;
    SELECT (parts)[1] AS part, (e.metadata -> '$moved') IS NOT NULL AS moved,
           e.global_position, e.stream_id, e.stream_version, e.event_id,
           e.event_type, e.data, e.metadata, e.schema_version, e.recorded_at
      FROM event_store.read_category(category, (afters)[1], max_count, event_types, raw) AS e;
$$;

-- read_all and read_category: one parallel call for every server's share
-- of the page (max_count divided by the number of servers, rounded up, so
-- that a page moves about max_count rows whatever the number of servers),
-- merged in C (event_store_router.c) into at most max_count events, each
-- with the vector cursor that resumes after it; a page may hold fewer than
-- max_count events, never none while events follow
CREATE FUNCTION event_store.read_all(after_position bigint[] DEFAULT NULL,
                                    max_count int DEFAULT 1000,
                                    event_types text[] DEFAULT NULL,
                                    raw boolean DEFAULT false)
    RETURNS TABLE(global_position bigint, stream_id text, stream_version bigint,
                  event_id uuid, event_type text, data jsonb, metadata jsonb,
                  schema_version int, recorded_at timestamptz, "cursor" bigint[])
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'esr_read';
COMMENT ON FUNCTION event_store.read_all(bigint[], int, text[], boolean) IS
    'Events of every server after a vector cursor (NULL: the beginning), at most max_count, each with the cursor that resumes after it; gap-safe per server, every stream in order';

CREATE FUNCTION event_store.read_category(category text,
                                         after_position bigint[] DEFAULT NULL,
                                         max_count int DEFAULT 1000,
                                         event_types text[] DEFAULT NULL,
                                         raw boolean DEFAULT false)
    RETURNS TABLE(global_position bigint, stream_id text, stream_version bigint,
                  event_id uuid, event_type text, data jsonb, metadata jsonb,
                  schema_version int, recorded_at timestamptz, "cursor" bigint[])
    LANGUAGE C VOLATILE
    AS 'MODULE_PATHNAME', 'esr_read';
COMMENT ON FUNCTION event_store.read_category(text, bigint[], int, text[], boolean) IS
    'Events of one category on every server after a vector cursor (NULL: the beginning), at most max_count, each with the cursor that resumes after it';

-- ---------------------------------------------------------------------------
-- Moving a bucket to another server while appends go on
-- ---------------------------------------------------------------------------

CREATE TABLE event_store.bucket_moves (
    bucket         int NOT NULL,
    from_server    int NOT NULL,
    to_server      int NOT NULL,
    events_copied  bigint NOT NULL DEFAULT 0,
    fenced_for     interval,                -- NULL until the move is done
    started_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at    timestamptz              -- NULL while it runs (or when it failed)
);
REVOKE ALL ON event_store.bucket_moves FROM PUBLIC;
GRANT SELECT ON event_store.bucket_moves TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('event_store.bucket_moves', '');
COMMENT ON TABLE event_store.bucket_moves IS
    'The bucket moves of move_bucket(), one row per move, written when it starts (its copies exist from then on) and completed when it is done';

CREATE FUNCTION event_store._server_head(part int) RETURNS bigint
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON part;
    SELECT event_store.head_position() AS _server_head;
$$;

CREATE FUNCTION event_store._server_stream_version(part int, stream_id text) RETURNS bigint
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON part;
    SELECT event_store.stream_version(stream_id) AS _server_stream_version;
$$;

CREATE FUNCTION event_store._server_append(part int, stream_id text, events jsonb,
                                          expected_version bigint) RETURNS bigint
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON part;
    SELECT event_store.append(stream_id, events, expected_version) AS _server_append;
$$;

-- The stored (raw) events of a bucket on a server after a position, up to
-- another one when given, in position order
CREATE FUNCTION event_store._bucket_events(part int, bucket int, after_position bigint,
                                          up_to bigint, max_count int)
    RETURNS TABLE(global_position bigint, stream_id text, stream_version bigint,
                  event_id uuid, event_type text, data jsonb, metadata jsonb,
                  schema_version int)
    LANGUAGE plproxy
AS $$
    CLUSTER 'event_store';
    RUN ON part;
    SELECT e.global_position, e.stream_id, e.stream_version, e.event_id, e.event_type,
           e.data, e.metadata, e.schema_version
      FROM event_store.events AS e
     WHERE e.global_position > after_position
       AND (up_to IS NULL OR e.global_position <= up_to)
       AND get_byte(decode(md5(e.stream_id), 'hex'), 0) % 64 = bucket
     ORDER BY e.global_position
     LIMIT max_count;
$$;

-- One round of copying: the bucket's events of server from_server after
-- after_position (up to up_to when given), at most max_count, appended to
-- their streams on to_server after what it already has, with the same ids,
-- types, data and schema versions and "$moved" (the original's server and
-- position) in metadata.  Returns the position scanned up to and the
-- number of events scanned and copied.
CREATE FUNCTION event_store._copy_round(bucket int, from_server int, to_server int,
                                       after_position bigint, up_to bigint, max_count int,
                                       OUT scanned_to bigint, OUT scanned int, OUT copied int)
    LANGUAGE plpgsql
    SET search_path = pg_catalog
AS $$
DECLARE
    batch jsonb[];
    st record;
    evs jsonb;
    have bigint;
    got bigint;
BEGIN
    batch := ARRAY(SELECT to_jsonb(r) FROM event_store._bucket_events(from_server - 1, bucket,
                          after_position, up_to, max_count) r);
    scanned := coalesce(cardinality(batch), 0);
    copied := 0;
    IF scanned = max_count THEN
        scanned_to := (batch[scanned] ->> 'global_position')::bigint;
    ELSE
        scanned_to := coalesce(up_to, (batch[scanned] ->> 'global_position')::bigint, after_position);
    END IF;
    FOR st IN
        SELECT r ->> 'stream_id' AS stream_id,
               min((r ->> 'global_position')::bigint) AS first_position,
               array_agg(r ORDER BY (r ->> 'stream_version')::bigint) AS events
          FROM unnest(batch) r
         GROUP BY r ->> 'stream_id'
         ORDER BY first_position
    LOOP
        have := event_store._server_stream_version(to_server - 1, st.stream_id);
        SELECT jsonb_agg(jsonb_build_object(
                   'type', e ->> 'event_type',
                   'data', e -> 'data',
                   'metadata', coalesce(nullif(e -> 'metadata', 'null'), '{}')
                               || jsonb_build_object('$moved', jsonb_build_object(
                                      'server', from_server,
                                      'position', (e ->> 'global_position')::bigint)),
                   'id', e ->> 'event_id',
                   'schema_version', (e ->> 'schema_version')::int)
                 ORDER BY (e ->> 'stream_version')::bigint),
               min((e ->> 'stream_version')::bigint)
          INTO evs, got
          FROM unnest(st.events) e
         WHERE (e ->> 'stream_version')::bigint > have;
        CONTINUE WHEN got IS NULL;
        IF got <> have + 1 THEN
            RAISE EXCEPTION 'stream "%" has version % on server %, its next event to copy has version %',
                            st.stream_id, have, to_server, got
                USING ERRCODE = '55000',
                      HINT = 'Events of the stream were appended to that server outside the router.';
        END IF;
        PERFORM event_store._server_append(to_server - 1, st.stream_id, evs, have);
        copied := copied + jsonb_array_length(evs);
    END LOOP;
END
$$;

-- Move a bucket to another server while appends go on (superuser; CALL it
-- outside a transaction block):
--  1. copy the bucket's events, round after round, each up to the source's
--     head_position() at the round's start (gap-safe), committing between
--     rounds, until a round finds little left;
--  2. fence the bucket: take its fence lock (exclusive), which waits for the
--     router's calls to it in flight and holds new ones back;
--  3. copy what is left (no append to the bucket is in flight now);
--  4. switch the bucket to the new server and commit, which lifts the fence.
-- The held-back calls then go to the new server, where every stream goes on
-- at its version.  The source keeps its events (followers still read them
-- there); the copies carry "$moved" and are not returned by the router's
-- read_all and read_category.
CREATE PROCEDURE event_store.move_bucket(bucket int, to_server int, fence_timeout interval DEFAULT '10 seconds')
    LANGUAGE plpgsql
AS $$
DECLARE
    from_server int;
    after_pos bigint := 0;
    up_to bigint;
    r record;
    total bigint := 0;
    pass_copied bigint;
    passes int := 0;
    started timestamptz := pg_catalog.clock_timestamp();
    fenced timestamptz;
BEGIN
    IF NOT (SELECT rl.rolsuper FROM pg_catalog.pg_roles rl WHERE rl.rolname = current_user) THEN
        RAISE EXCEPTION 'only a superuser may move buckets' USING ERRCODE = '42501';
    END IF;
    IF bucket IS NULL OR to_server IS NULL OR fence_timeout IS NULL THEN
        RAISE EXCEPTION 'bucket, to_server and fence_timeout must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF bucket < 0 OR bucket > 63 THEN
        RAISE EXCEPTION 'bucket % does not exist', bucket
            USING ERRCODE = '22023', HINT = 'Buckets are numbered 0 to 63.';
    END IF;
    IF NOT EXISTS (SELECT FROM event_store.servers s WHERE s.server = to_server) THEN
        RAISE EXCEPTION 'server % does not exist', to_server
            USING ERRCODE = '22023', HINT = 'Servers are numbered from 1, as in event_store.servers.';
    END IF;
    SELECT b.server INTO from_server FROM event_store.buckets b WHERE b.bucket = move_bucket.bucket;
    IF from_server = to_server THEN
        RAISE EXCEPTION 'bucket % is already on server %', bucket, to_server USING ERRCODE = '22023';
    END IF;
    IF NOT pg_catalog.pg_try_advisory_lock(event_store._fence_key() + 1, bucket) THEN
        RAISE EXCEPTION 'bucket % is being moved by another session', bucket USING ERRCODE = '55P03';
    END IF;
    -- (from now on the new server may hold copies: the reads pass over them)
    INSERT INTO event_store.bucket_moves (bucket, from_server, to_server, started_at)
    VALUES (bucket, from_server, to_server, started);
    COMMIT;

    -- 1. copy while appends go on
    LOOP
        passes := passes + 1;
        pass_copied := 0;
        up_to := event_store._server_head(from_server - 1);
        LOOP
            SELECT * INTO r FROM event_store._copy_round(bucket, from_server, to_server, after_pos, up_to, 1000);
            after_pos := r.scanned_to;
            pass_copied := pass_copied + r.copied;
            COMMIT;
            EXIT WHEN r.scanned < 1000;
        END LOOP;
        total := total + pass_copied;
        EXIT WHEN pass_copied < 100 OR passes >= 20;
    END LOOP;

    -- 2. fence, 3. copy the rest, 4. switch
    PERFORM pg_catalog.set_config('lock_timeout', (extract(epoch FROM fence_timeout) * 1000)::bigint::text, true);
    PERFORM pg_catalog.pg_advisory_xact_lock(event_store._fence_key(), bucket);
    fenced := pg_catalog.clock_timestamp();
    LOOP
        SELECT * INTO r FROM event_store._copy_round(bucket, from_server, to_server, after_pos, NULL, 1000);
        after_pos := r.scanned_to;
        total := total + r.copied;
        EXIT WHEN r.scanned < 1000;
    END LOOP;
    UPDATE event_store.buckets b SET server = to_server WHERE b.bucket = move_bucket.bucket;
    UPDATE event_store.bucket_moves m
       SET events_copied = total, fenced_for = pg_catalog.clock_timestamp() - fenced,
           finished_at = pg_catalog.clock_timestamp()
     WHERE m.bucket = move_bucket.bucket AND m.started_at = started AND m.finished_at IS NULL;
    COMMIT;
    -- (a move that fails keeps this lock until its session ends)
    PERFORM pg_catalog.pg_advisory_unlock(event_store._fence_key() + 1, bucket);
END
$$;
COMMENT ON PROCEDURE event_store.move_bucket(int, int, interval) IS
    'Move a bucket to another server while appends go on: copy its events, fence it briefly, copy the rest, switch (superuser; CALL outside a transaction block)';

-- ---------------------------------------------------------------------------
-- Rights: nothing for PUBLIC but the placement functions.  Grant EXECUTE to
-- the roles that use the router, and map them to roles on the servers
-- (CREATE USER MAPPING FOR role SERVER event_store OPTIONS (user '...')):
-- the servers then apply their own grants.
-- ---------------------------------------------------------------------------
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'event_store'::regnamespace
                AND p.proname NOT IN ('stream_bucket', 'bucket_filter')
    LOOP
        EXECUTE format('REVOKE ALL ON ROUTINE %s FROM PUBLIC', f);
    END LOOP;
END
$$;
