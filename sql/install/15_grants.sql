------------------------------------------------------------------------------
-- Category ownership
------------------------------------------------------------------------------
-- Once a category has a grant, only holders of "append" may append to its
-- streams and only holders of "read" may read them (the extension owner
-- always may): append() and the read functions check in C, read_all()
-- leaves such events out, and row-level security does the same for a role
-- that was granted SELECT on the tables.

CREATE TABLE event_store.category_grants (
    category   text    NOT NULL CHECK (category <> '' AND strpos(category, '-') = 0),
    grantee    regrole NOT NULL,
    privilege  text    NOT NULL CHECK (privilege IN ('append', 'read')),
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (category, grantee, privilege)
);
COMMENT ON TABLE event_store.category_grants IS 'Who may append to / read which category; maintained with grant_category() / revoke_category()';
SELECT pg_catalog.pg_extension_config_dump('event_store.category_grants', '');
REVOKE ALL ON TABLE event_store.category_grants FROM PUBLIC;

CREATE FUNCTION event_store.grant_category(role regrole, category text,
                                           privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_grant_category';
COMMENT ON FUNCTION event_store.grant_category(regrole, text, text[]) IS
    'Let a role append to and/or read the streams of a category; once a category has grants, only their holders (and the extension owner) may';

CREATE FUNCTION event_store.revoke_category(role regrole, category text,
                                            privileges text[] DEFAULT '{append,read}')
    RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE
    AS 'MODULE_PATHNAME', 'es_revoke_category';
COMMENT ON FUNCTION event_store.revoke_category(regrole, text, text[]) IS
    'Take category privileges back from a role; a category without grants is open to every role that may call the functions';

-- The row-level security policy: may the current user read this stream?
CREATE FUNCTION event_store._may_read(stream_id text) RETURNS boolean
    LANGUAGE c STABLE PARALLEL SAFE
    AS 'MODULE_PATHNAME', 'es_may_read';

ALTER TABLE event_store.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY category_read ON event_store.events FOR SELECT
    USING (event_store._may_read(stream_id));

-- Checks a callback's registration (EXECUTE; its owner has the registrant's rights)
CREATE FUNCTION event_store._check_callback(fn regprocedure, registrant regrole, what text)
    RETURNS void
    LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'es_check_callback';

