\echo Use "CREATE EXTENSION event_store" to load this file. \quit

-- Everything lives in schema event_store, a member of the extension (so
-- DROP EXTENSION removes it too).
CREATE SCHEMA event_store;
COMMENT ON SCHEMA event_store IS 'event_store: event streams, reads, snapshots, projections and sagas';

-- The library keeps the position horizon in shared memory: refuse to install
-- unless it was preloaded (the error carries the exact setting to add).
CREATE FUNCTION event_store._assert_preloaded() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_assert_preloaded';
SELECT event_store._assert_preloaded();
REVOKE ALL ON FUNCTION event_store._assert_preloaded() FROM PUBLIC;

-- Every function that writes refuses first in a read-only transaction and
-- on a hot standby (25006); the SQL-language ones call this.
CREATE FUNCTION event_store._check_writable(what text) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_check_writable';
REVOKE ALL ON FUNCTION event_store._check_writable(text) FROM PUBLIC;


-- The rules the C functions follow, for the SQL-language ones: a name (a
-- stream id, event type, saga type...) is at most 1024 bytes, the limit of
-- the C side (22001 beyond, with the C side's message); and the one backoff
-- rule of every retry (doubling from base, at most 300 times base, +-25%
-- jitter; a base below 10 ms counts as 10 ms, so the wait is never zero).
CREATE FUNCTION event_store._check_name_length(name text, what text) RETURNS void
    LANGUAGE c IMMUTABLE PARALLEL SAFE AS 'MODULE_PATHNAME', 'es_check_name_length';
CREATE FUNCTION event_store._backoff(base interval, attempts int) RETURNS interval
    LANGUAGE c VOLATILE PARALLEL RESTRICTED AS 'MODULE_PATHNAME', 'es_backoff';
REVOKE ALL ON FUNCTION event_store._check_name_length(text, text), event_store._backoff(interval, int)
  FROM PUBLIC;
