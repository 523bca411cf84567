------------------------------------------------------------------------------
-- Upcasting
------------------------------------------------------------------------------

CREATE TABLE event_store.upcasters (
    event_type          text NOT NULL CHECK (event_type <> ''),
    from_schema_version int          NOT NULL CHECK (from_schema_version > 0),
    upcaster            regprocedure NOT NULL,
    to_event_type       text CHECK (to_event_type <> ''),
    registered_at       timestamptz  NOT NULL DEFAULT now(),
    owner               regrole      NOT NULL,  -- registered it; the upcaster runs as this role
    search_path         text         NOT NULL,  -- and with this search_path (pg_temp last)
    PRIMARY KEY (event_type, from_schema_version)
);
COMMENT ON TABLE event_store.upcasters IS 'Registered upcasters; maintained with register_upcaster() / drop_upcaster()';
SELECT pg_catalog.pg_extension_config_dump('event_store.upcasters', '');
REVOKE ALL ON TABLE event_store.upcasters FROM PUBLIC;

CREATE FUNCTION event_store.register_upcaster(event_type text, from_schema_version int,
                                              upcaster regprocedure,
                                              to_event_type text DEFAULT NULL)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_register_upcaster';
COMMENT ON FUNCTION event_store.register_upcaster(text, int, regprocedure, text) IS
    'Register (or replace) the upcaster (data jsonb, metadata jsonb) RETURNS jsonb that turns event_type at from_schema_version into the next version';

CREATE FUNCTION event_store.drop_upcaster(event_type text, from_schema_version int)
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_drop_upcaster';
COMMENT ON FUNCTION event_store.drop_upcaster(text, int) IS
    'Remove the upcaster of event_type at from_schema_version';

