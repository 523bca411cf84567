------------------------------------------------------------------------------
-- Services in separate databases: publications and imports
------------------------------------------------------------------------------
-- A producer publishes the events of some categories (a PostgreSQL
-- publication of event_store.events, inserts only); a consumer imports them
-- (a PostgreSQL subscription to it).  The subscription's rows arrive at
-- event_store.events, where triggers enabled for replication only turn each
-- into a local append at the producer's version (services.c).

CREATE TABLE event_store.publications (
    name        text COLLATE "C" PRIMARY KEY,
    categories  text[] NOT NULL,
    event_types text[],
    owner       regrole NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.publications IS
    'Publications of categories to other databases: maintained with create_publication() and drop_publication(); each is a PostgreSQL publication of the same name';
SELECT pg_catalog.pg_extension_config_dump('event_store.publications', '');
REVOKE ALL ON TABLE event_store.publications FROM PUBLIC;

CREATE TABLE event_store.imports (
    name                 text COLLATE "C" PRIMARY KEY,
    publication          text NOT NULL,
    categories           text[] NOT NULL,   -- read-only here (SE004)
    owner                regrole NOT NULL,
    -- written at most once a second (services.c): last_source_position
    -- accounts for the import's events up to the local position
    -- last_local_position; import_status reads the later ones from the store
    last_source_position bigint NOT NULL DEFAULT 0,
    last_local_position  bigint NOT NULL DEFAULT 0,
    last_applied_at      timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE event_store.imports IS
    'Imports of another database''s publication: maintained with create_import() and drop_import(); each is a PostgreSQL subscription of the same name';
SELECT pg_catalog.pg_extension_config_dump('event_store.imports', '');
REVOKE ALL ON TABLE event_store.imports FROM PUBLIC;

CREATE FUNCTION event_store._import_row() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_row';
CREATE FUNCTION event_store._import_copy_begin() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_copy_begin';
CREATE FUNCTION event_store._import_copy_end() RETURNS trigger
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_copy_end';
CREATE TRIGGER events_import_row BEFORE INSERT ON event_store.events
    FOR EACH ROW EXECUTE FUNCTION event_store._import_row();
CREATE TRIGGER events_import_copy_begin BEFORE INSERT ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._import_copy_begin();
CREATE TRIGGER events_import_copy_end AFTER INSERT ON event_store.events
    FOR EACH STATEMENT EXECUTE FUNCTION event_store._import_copy_end();
-- only in the subscription's workers (session_replication_role = replica)
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_row;
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_copy_begin;
ALTER TABLE event_store.events ENABLE REPLICA TRIGGER events_import_copy_end;

CREATE FUNCTION event_store._import_errors(OUT subid oid, OUT failed_at timestamptz, OUT message text)
    RETURNS SETOF record
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_import_errors';

CREATE FUNCTION event_store.create_publication(name text, categories text[], event_types text[] DEFAULT NULL)
    RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_create_publication';
COMMENT ON FUNCTION event_store.create_publication(text, text[], text[]) IS
    'Publishes the events of the categories (and types; the lifecycle markers always) to other databases: a PostgreSQL publication of event_store.events, inserts only; needs wal_level = logical, membership in the extension''s owner and CREATE on the database';

CREATE FUNCTION event_store.drop_publication(name text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_drop_publication';
COMMENT ON FUNCTION event_store.drop_publication(text) IS
    'Drops a publication made by create_publication()';

CREATE FUNCTION event_store.create_import(name text, connection text, publication text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_create_import';
COMMENT ON FUNCTION event_store.create_import(text, text, text) IS
    'Imports every event of another database''s publication, history first, exactly once: same stream ids, versions, ids and data, local positions in the producer''s commit order, "$source" in metadata; its categories become read-only here (superuser only)';

CREATE FUNCTION event_store.drop_import(name text) RETURNS void
    LANGUAGE C AS 'MODULE_PATHNAME', 'es_drop_import';
COMMENT ON FUNCTION event_store.drop_import(text) IS
    'Stops an import: drops its subscription and the producer''s replication slot; the imported events stay (superuser only)';

CREATE VIEW event_store.import_status AS
SELECT i.name,
       i.publication,
       CASE WHEN s.oid IS NULL THEN 'missing'
            WHEN NOT s.subenabled THEN 'disabled'
            WHEN e.message IS NOT NULL THEN 'failing'
            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_subscription_rel r
                          WHERE r.srsubid OPERATOR(pg_catalog.=) s.oid
                            AND r.srsubstate OPERATOR(pg_catalog.<>) 'r') THEN 'copying'
            WHEN st.pid IS NOT NULL THEN 'running'
            ELSE 'starting' END AS state,
       GREATEST(i.last_source_position,
                (SELECT pg_catalog.max((ev.metadata OPERATOR(pg_catalog.->>) '$source')::bigint)
                   FROM event_store.events ev
                  WHERE ev.global_position OPERATOR(pg_catalog.>) i.last_local_position
                    AND pg_catalog.split_part(ev.stream_id, '-', 1) COLLATE pg_catalog."C"
                        OPERATOR(pg_catalog.=) ANY (i.categories)
                    -- an import sharing a category with another one writes
                    -- its progress with every transaction of events
                    AND NOT EXISTS (SELECT 1 FROM event_store.imports o
                                     WHERE o.name OPERATOR(pg_catalog.<>) i.name
                                       AND o.categories OPERATOR(pg_catalog.&&) i.categories)))
           AS last_source_position,
       EXTRACT(epoch FROM pg_catalog.now() OPERATOR(pg_catalog.-) st.last_msg_send_time)::float8 AS lag_seconds,
       e.message AS last_error
  FROM event_store.imports i
  LEFT JOIN pg_catalog.pg_subscription s
         ON s.subname OPERATOR(pg_catalog.=) i.name
        AND s.subdbid OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d
                                               WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
  LEFT JOIN pg_catalog.pg_stat_subscription st
         ON st.subid OPERATOR(pg_catalog.=) s.oid AND st.relid IS NULL
  LEFT JOIN event_store._import_errors() e ON e.subid OPERATOR(pg_catalog.=) s.oid;
COMMENT ON VIEW event_store.import_status IS
    'One row per import: state (copying, running, starting, failing, disabled, missing), the producer''s position of the last event applied, seconds since the producer''s last message (NULL while no worker runs), and the error that stops it (kept in shared memory until an event of the import is applied again)';
