------------------------------------------------------------------------------
-- Privileges
------------------------------------------------------------------------------
-- PUBLIC may name the schema's objects and nothing else: no function runs
-- and no table is readable until granted (README: "Privileges").  The
-- tables are never writable except by the extension's owner: all writes go
-- through the functions.  Functions written in SQL that touch the tables
-- are SECURITY DEFINER with search_path pinned to pg_catalog, pg_temp; the
-- C functions check privileges themselves and run their SQL as the
-- extension's owner with every name qualified.
GRANT USAGE ON SCHEMA event_store TO PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA event_store FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA event_store FROM PUBLIC;
-- the row-level security policy runs as whoever reads the tables
GRANT EXECUTE ON FUNCTION event_store._may_read(text) TO PUBLIC;
