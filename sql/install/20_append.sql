------------------------------------------------------------------------------
-- Appending
------------------------------------------------------------------------------

CREATE FUNCTION event_store.append(stream_id text, events jsonb,
                                   expected_version bigint DEFAULT NULL)
    RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_append';
COMMENT ON FUNCTION event_store.append(text, jsonb, bigint) IS
    'Append one event or an array of events to a stream; expected_version NULL = any, 0 = new stream, n = exact version; returns the stream version after the append';

CREATE FUNCTION event_store.last_appended_position() RETURNS bigint
    LANGUAGE c VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_last_appended_position';
COMMENT ON FUNCTION event_store.last_appended_position() IS
    'The highest global position this session''s last append stored (NULL before any): what wait_for_projection() waits for';
