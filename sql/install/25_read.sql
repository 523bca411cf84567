------------------------------------------------------------------------------
-- Reading
------------------------------------------------------------------------------

CREATE FUNCTION event_store.stream_version(stream_id text)
    RETURNS bigint
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'es_stream_version';
COMMENT ON FUNCTION event_store.stream_version(text) IS
    'Current version of a stream (0 when it has no events)';

CREATE FUNCTION event_store.read_stream(stream_id text, from_version bigint DEFAULT NULL,
                                        max_count bigint DEFAULT NULL,
                                        backward boolean DEFAULT false,
                                        raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c STABLE PARALLEL RESTRICTED ROWS 100
    AS 'MODULE_PATHNAME', 'es_read_stream';
COMMENT ON FUNCTION event_store.read_stream(text, bigint, bigint, boolean, boolean) IS
    'Events of one stream, forward from from_version (default 1) or backward from it (default: the last), at most max_count';

CREATE FUNCTION event_store.read_all(after_position bigint DEFAULT 0,
                                     max_count int DEFAULT 1000,
                                     event_types text[] DEFAULT NULL,
                                     raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1000
    AS 'MODULE_PATHNAME', 'es_read_all';
COMMENT ON FUNCTION event_store.read_all(bigint, int, text[], boolean) IS
    'Events after a global position in position order, gap-safe: a follower keeping the largest position seen never skips an event';

CREATE FUNCTION event_store.read_category(category text, after_position bigint DEFAULT 0,
                                          max_count int DEFAULT 1000,
                                          event_types text[] DEFAULT NULL,
                                          raw boolean DEFAULT false)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 1000
    AS 'MODULE_PATHNAME', 'es_read_category';
COMMENT ON FUNCTION event_store.read_category(text, bigint, int, text[], boolean) IS
    'Events of one category (stream id prefix before the first "-") after a global position, gap-safe';

CREATE FUNCTION event_store.read_correlated(correlation_id text, after_position bigint DEFAULT 0,
                                            max_count int DEFAULT 1000)
    RETURNS SETOF event_store.event
    LANGUAGE c VOLATILE PARALLEL UNSAFE ROWS 100
    AS 'MODULE_PATHNAME', 'es_read_correlated';
COMMENT ON FUNCTION event_store.read_correlated(text, bigint, int) IS
    'Events whose metadata "correlationId" is correlation_id, after a global position in position order, gap-safe (sagas stamp theirs with the saga id)';

CREATE FUNCTION event_store.head_position()
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_head_position';
COMMENT ON FUNCTION event_store.head_position() IS
    'The highest global position a follower may safely read to';

CREATE FUNCTION event_store.wait_for_events(after_position bigint,
                                            timeout interval DEFAULT '10 seconds')
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_wait_for_events';
COMMENT ON FUNCTION event_store.wait_for_events(bigint, interval) IS
    'Block until head_position() exceeds after_position (woken at commit) or the timeout passes; returns head_position()';

