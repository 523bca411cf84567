\echo Use "ALTER EXTENSION event_store UPDATE TO '0.3.0'" to load this file. \quit

-- event_store 0.2.0 -> 0.3.0
--
-- Afterwards the schema is the one a fresh CREATE EXTENSION of 0.3.0 makes:
-- the same objects, definitions, privileges and comments, and the same
-- columns in the same order (new columns of 0.3.0 come last in
-- event_store.sql, so they are added here).  Only the change is carried:
-- each section below names the part of event_store.sql it brings in.
