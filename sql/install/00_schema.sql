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

