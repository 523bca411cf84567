
------------------------------------------------------------------------------
-- Subscriptions: consumer groups on the log
------------------------------------------------------------------------------
-- A subscription is a durable position in the log shared by its consumers.
-- Streams are hashed into partitions; a partition is leased to one consumer
-- at a time.  Per partition the table keeps how far the log was handed out
-- (position) and what was handed out and not yet acknowledged (pending);
-- a stream held back by a failed event has a row in subscription_streams
-- until its events have all been handed out again.  Delivery is in C
-- (subscription.c).

CREATE TABLE event_store.subscriptions (
    name           text COLLATE "C" PRIMARY KEY,
    categories     text[],
    event_types    text[],
    partitions     int NOT NULL CHECK (partitions BETWEEN 1 AND 1024),
    start_position bigint NOT NULL CHECK (start_position >= 0),
    max_attempts   int NOT NULL CHECK (max_attempts >= 1),
    retry_backoff  interval NOT NULL,
    owner          regrole NOT NULL,
    projection     boolean NOT NULL DEFAULT false,  -- an async projection's own (same name)
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.subscriptions IS
    'Subscriptions (consumer groups): maintained with create_subscription() and drop_subscription(); an async projection consumes one of its own name';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscriptions', '');
REVOKE ALL ON TABLE event_store.subscriptions FROM PUBLIC;

CREATE TABLE event_store.subscription_partitions (
    subscription     text COLLATE "C" NOT NULL
                     REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    partition        int NOT NULL,
    position         bigint NOT NULL,          -- the log is handed out up to here
    holder           text COLLATE "C",         -- the consumer holding the lease
    lease_expires_at timestamptz,
    pending          bigint[] NOT NULL DEFAULT '{}',   -- handed to the holder, not acknowledged
    pending_attempts int[] NOT NULL DEFAULT '{}',
    redeliver        bigint[] NOT NULL DEFAULT '{}',   -- to hand out again (a lease expired)
    redeliver_attempts int[] NOT NULL DEFAULT '{}',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, partition)
);
-- a consumer's claims, acks and nacks find its partitions by holder
CREATE INDEX subscription_partitions_holder_idx
    ON event_store.subscription_partitions (subscription, holder, partition);
COMMENT ON TABLE event_store.subscription_partitions IS
    'The partitions of every subscription: lease holder, position, events handed out and not acknowledged';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_partitions', '');
REVOKE ALL ON TABLE event_store.subscription_partitions FROM PUBLIC;

CREATE TABLE event_store.subscription_consumers (
    subscription     text COLLATE "C" NOT NULL
                     REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    consumer         text COLLATE "C" NOT NULL,
    lease_expires_at timestamptz NOT NULL,     -- live while its last claim's lease runs
    claimed_at       timestamptz NOT NULL,     -- when its last claim began
    PRIMARY KEY (subscription, consumer)
);
COMMENT ON TABLE event_store.subscription_consumers IS
    'The consumers of every subscription and when their last claim''s lease expires';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_consumers', '');
REVOKE ALL ON TABLE event_store.subscription_consumers FROM PUBLIC;

CREATE TABLE event_store.subscription_fences (
    subscription text COLLATE "C" NOT NULL
                 REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    consumer     text COLLATE "C" NOT NULL,
    fenced_at    timestamptz NOT NULL            -- a partition of it was taken over then
);
CREATE INDEX subscription_fences_consumer_idx ON event_store.subscription_fences (subscription, consumer);
COMMENT ON TABLE event_store.subscription_fences IS
    'Consumers whose expired partition another consumer took over: their acks and nacks are refused until they claim again';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_fences', '');
REVOKE ALL ON TABLE event_store.subscription_fences FROM PUBLIC;

CREATE TABLE event_store.subscription_streams (
    subscription    text COLLATE "C" NOT NULL
                    REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    stream_id       text COLLATE "C" NOT NULL,
    partition       int NOT NULL,
    global_position bigint NOT NULL,           -- the stream's next event to hand out
    attempts        int NOT NULL DEFAULT 0,    -- of that event
    next_attempt_at timestamptz,
    last_error      text,
    parked_at       timestamptz,               -- set: waits for replay_parked / skip_parked
    handed_through  bigint,                    -- set: handed out up to here, not yet acknowledged
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subscription, stream_id)
);
COMMENT ON TABLE event_store.subscription_streams IS
    'Streams held back in a subscription: retrying (nacked) or parked, and the streams catching up after either';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_streams', '');
REVOKE ALL ON TABLE event_store.subscription_streams FROM PUBLIC;

CREATE TABLE event_store.subscription_skipped (
    subscription    text COLLATE "C" NOT NULL
                    REFERENCES event_store.subscriptions (name) ON DELETE CASCADE,
    stream_id       text COLLATE "C" NOT NULL,
    global_position bigint NOT NULL,           -- the parked event; its stream's later events went with it
    through_position bigint NOT NULL,          -- ... up to here
    last_error      text,
    skipped_by      regrole NOT NULL,
    skipped_at      timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.subscription_skipped IS
    'Parked events acknowledged without delivery by skip_parked(), and who skipped them';
SELECT pg_catalog.pg_extension_config_dump('event_store.subscription_skipped', '');
REVOKE ALL ON TABLE event_store.subscription_skipped FROM PUBLIC;

CREATE FUNCTION event_store.create_subscription(name text, categories text[] DEFAULT NULL,
                                                event_types text[] DEFAULT NULL, partitions int DEFAULT 8,
                                                start_position bigint DEFAULT 0, max_attempts int DEFAULT 5,
                                                retry_backoff interval DEFAULT '1 second')
    RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_create_subscription';
COMMENT ON FUNCTION event_store.create_subscription(text, text[], text[], int, bigint, int, interval) IS
    'Create a subscription (consumer group) delivering the events after start_position that match the filters and its owner may read';

CREATE FUNCTION event_store.drop_subscription(name text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_drop_subscription';
COMMENT ON FUNCTION event_store.drop_subscription(text) IS 'Drop a subscription with its partitions, consumers and held streams';

CREATE FUNCTION event_store.claim_events(subscription text, consumer text, max_count int DEFAULT 100,
                                         lease interval DEFAULT '30 seconds', wait interval DEFAULT '0 seconds')
    RETURNS TABLE(partition int, attempt int, global_position bigint, stream_id text, stream_version bigint,
                  event_id uuid, event_type text, data jsonb, metadata jsonb, schema_version int,
                  recorded_at timestamptz)
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_claim_events';
COMMENT ON FUNCTION event_store.claim_events(text, text, int, interval, interval) IS
    'Renew the consumer''s leases, take free partitions up to a fair share, and return up to max_count events of its partitions: redeliveries first, then new events, never past head_position()';

CREATE FUNCTION event_store.ack_events(subscription text, consumer text, up_to_position bigint)
    RETURNS bigint LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_ack_events';
COMMENT ON FUNCTION event_store.ack_events(text, text, bigint) IS
    'Acknowledge every event handed to the consumer up to up_to_position (except those it nacked); returns how many';

CREATE FUNCTION event_store.nack_event(subscription text, consumer text, global_position bigint, error text,
                                       retry_after interval DEFAULT NULL)
    RETURNS void LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_nack_event';
COMMENT ON FUNCTION event_store.nack_event(text, text, bigint, text, interval) IS
    'The event failed: deliver it again after retry_after (default: retry_backoff doubled per attempt, with jitter), holding back the later events of its stream; parked after max_attempts';

CREATE FUNCTION event_store.release_events(subscription text, consumer text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_release_events';
COMMENT ON FUNCTION event_store.release_events(text, text) IS
    'Give the consumer''s partitions up now; what it did not acknowledge is delivered again';

CREATE FUNCTION event_store.replay_parked(subscription text, stream_id text DEFAULT NULL) RETURNS int
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_replay_parked';
COMMENT ON FUNCTION event_store.replay_parked(text, text) IS
    'Deliver parked streams (one, or all) again from their parked event, attempts reset; returns the number of streams';

CREATE FUNCTION event_store.skip_parked(subscription text, stream_id text DEFAULT NULL) RETURNS int
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_skip_parked';
COMMENT ON FUNCTION event_store.skip_parked(text, text) IS
    'Acknowledge the held events of parked streams (one, or all) without delivering them, recording who skipped them; returns the number of streams';

CREATE VIEW event_store.subscription_status AS
SELECT s.name,
       s.partitions,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_consumers c
         WHERE c.subscription OPERATOR(pg_catalog.=) s.name
           AND c.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.now())::int AS consumers,
       p.position,
       h.head AS head_position,
       greatest(h.head OPERATOR(pg_catalog.-) p.position, 0) AS lag_events,
       p.in_flight,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_streams t
         WHERE t.subscription OPERATOR(pg_catalog.=) s.name AND t.parked_at IS NULL
           AND t.last_error IS NOT NULL)::int AS retrying_streams,
       (SELECT pg_catalog.count(*) FROM event_store.subscription_streams t
         WHERE t.subscription OPERATOR(pg_catalog.=) s.name AND t.parked_at IS NOT NULL)::int AS parked_streams,
       greatest(s.updated_at, p.updated_at) AS updated_at
  FROM event_store.subscriptions s
 CROSS JOIN LATERAL (SELECT event_store.head_position() AS head) h
 CROSS JOIN LATERAL (SELECT pg_catalog.min(x.position) AS position,
                            pg_catalog.sum(pg_catalog.cardinality(x.pending)
                                           OPERATOR(pg_catalog.+) pg_catalog.cardinality(x.redeliver))::bigint AS in_flight,
                            pg_catalog.max(x.updated_at) AS updated_at
                       FROM event_store.subscription_partitions x
                      WHERE x.subscription OPERATOR(pg_catalog.=) s.name) p;
COMMENT ON VIEW event_store.subscription_status IS
    'Subscriptions: live consumers, position (every partition has handed out the log up to it), lag in positions behind head_position, events handed out and not acknowledged, retrying and parked streams';

CREATE VIEW event_store.subscription_parked AS
SELECT t.subscription, t.stream_id, t.global_position, e.event_type, t.attempts, t.last_error, t.parked_at
  FROM event_store.subscription_streams t
  LEFT JOIN event_store.events e ON e.global_position OPERATOR(pg_catalog.=) t.global_position
 WHERE t.parked_at IS NOT NULL;
COMMENT ON VIEW event_store.subscription_parked IS
    'Parked streams of every subscription, with the event they stopped at';
