\echo Use "ALTER EXTENSION event_store UPDATE TO '0.3.0'" to load this file. \quit

-- event_store 0.2.0 -> 0.3.0
--
-- Afterwards the schema is the one a fresh CREATE EXTENSION of 0.3.0 makes:
-- the same objects, definitions, privileges and comments, and the same
-- columns in the same order (new columns of 0.3.0 come last in
-- event_store.sql, so they are added here).  Only the change is carried:
-- each section below names the part of event_store.sql it brings in.

------------------------------------------------------------------------------
-- Events: the durable high-water mark of global positions
------------------------------------------------------------------------------
CREATE SEQUENCE event_store.position_mark AS bigint MINVALUE 0 START 0;
COMMENT ON SEQUENCE event_store.position_mark IS 'Every global position handed out is at or below its value; raised by event_store.append() only';
SELECT pg_catalog.pg_extension_config_dump('event_store.position_mark', '');
REVOKE ALL ON SEQUENCE event_store.position_mark FROM PUBLIC;
-- What 0.2.0 may have handed out and a follower may have passed: the
-- highest stored position and the highest projection checkpoint.  A running
-- server reserves above its own counter before its next append.
SELECT pg_catalog.setval('event_store.position_mark',
       GREATEST((SELECT max(global_position) FROM event_store.events),
                (SELECT max(position) FROM event_store.projections), 0), true);
