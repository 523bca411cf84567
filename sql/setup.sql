--
-- setup: install the extension and pin the names, signatures and shapes of
-- its SQL contract.  Any change to a function's arguments, defaults or
-- result, to the event row type or to the events table shows up here.
--
CREATE EXTENSION event_store;

SELECT extname, extversion, extrelocatable
  FROM pg_extension WHERE extname = 'event_store';

-- Everything lives in schema event_store, which belongs to the extension
-- (DROP EXTENSION removes it).
SELECT bool_and(CASE d.classid
                    WHEN 'pg_proc'::regclass THEN
                        (SELECT pronamespace FROM pg_proc WHERE oid = d.objid) = 'event_store'::regnamespace
                    WHEN 'pg_class'::regclass THEN
                        (SELECT relnamespace FROM pg_class WHERE oid = d.objid) = 'event_store'::regnamespace
                    WHEN 'pg_type'::regclass THEN
                        (SELECT typnamespace FROM pg_type WHERE oid = d.objid) = 'event_store'::regnamespace
                    ELSE true END) AS all_members_in_schema,
       bool_or(d.classid = 'pg_namespace'::regclass
               AND d.objid = 'event_store'::regnamespace) AS schema_is_member
  FROM pg_depend d
 WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
   AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'event_store');

-- The tables and views the contract names.
SELECT n AS name, to_regclass(n) IS NOT NULL AS present
  FROM unnest(ARRAY['event_store.events', 'event_store.projection_status',
                    'event_store.sagas', 'event_store.saga_steps']) AS n;

-- Every API function of the schema (internal helpers start with "_"), with
-- its argument list (names and defaults) and its result type.
SELECT p.proname AS name,
       pg_get_function_arguments(p.oid) AS arguments,
       pg_get_function_result(p.oid) AS result
  FROM pg_proc p
 WHERE p.pronamespace = 'event_store'::regnamespace
   AND p.proname NOT LIKE '\_%'
 ORDER BY p.proname, pg_get_function_identity_arguments(p.oid);

-- No function may be STRICT (a NULL argument must raise an error, not
-- silently return NULL) and every API function is documented.
SELECT p.proname AS name, p.proisstrict AS strict,
       obj_description(p.oid, 'pg_proc') IS NOT NULL AS has_comment
  FROM pg_proc p
 WHERE p.pronamespace = 'event_store'::regnamespace
   AND (p.proisstrict
        OR (p.proname NOT LIKE '\_%' AND obj_description(p.oid, 'pg_proc') IS NULL))
 ORDER BY p.proname;

-- The row type every read returns, column by column.
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_attribute a
 WHERE a.attrelid = 'event_store.event'::regclass AND a.attnum > 0
   AND NOT a.attisdropped
 ORDER BY a.attnum;

-- The events table has the same columns in the same order.
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null
  FROM pg_attribute a
 WHERE a.attrelid = 'event_store.events'::regclass AND a.attnum > 0
   AND NOT a.attisdropped
 ORDER BY a.attnum;

SELECT (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
          FROM pg_attribute
         WHERE attrelid = 'event_store.event'::regclass AND attnum > 0 AND NOT attisdropped)
     = (SELECT array_agg(attname::text || ' ' || format_type(atttypid, atttypmod) ORDER BY attnum)
          FROM pg_attribute
         WHERE attrelid = 'event_store.events'::regclass AND attnum > 0 AND NOT attisdropped)
       AS table_matches_row_type;

-- Constraints, indexes and triggers of the events table.
SELECT conname, pg_get_constraintdef(oid) AS definition
  FROM pg_constraint
 WHERE conrelid = 'event_store.events'::regclass
 ORDER BY conname;

SELECT indexrelid::regclass AS index, pg_get_indexdef(indexrelid) AS definition
  FROM pg_index
 WHERE indrelid = 'event_store.events'::regclass
 ORDER BY indexrelid::regclass::text;

-- The immutability triggers; tgenabled 'A': they fire even for replication
-- roles.
SELECT tgname, tgenabled, pg_get_triggerdef(oid) AS definition
  FROM pg_trigger
 WHERE tgrelid = 'event_store.events'::regclass AND NOT tgisinternal
   AND tgfoid = 'event_store._refuse_modification()'::regprocedure
 ORDER BY tgname;

-- The views of the schema, column by column.
SELECT c.relname AS view, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) AS type
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
 WHERE c.relnamespace = 'event_store'::regnamespace AND c.relkind = 'v'
   AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY c.relname, a.attnum;

-- The events table is marked as holding user data, so pg_dump keeps it.
SELECT 'event_store.events'::regclass = ANY (extconfig) AS events_are_dumped
  FROM pg_extension WHERE extname = 'event_store';

-- Only the owner (and superusers) may touch the table directly.
SELECT has_table_privilege('public', 'event_store.events', 'SELECT') AS public_select,
       has_table_privilege('public', 'event_store.events', 'INSERT') AS public_insert;

-- An empty store.
SELECT count(*) AS events FROM event_store.events;
SELECT event_store.head_position();

-- Helpers the other test files share (schema regress outlives the
-- DROP/CREATE EXTENSION those files start with).
CREATE SCHEMA regress;
-- try(sql): run a statement and show the SQLSTATE, message, detail and hint
-- of its error (or "no error").
CREATE FUNCTION regress.try(sql text) RETURNS text
LANGUAGE plpgsql AS $f$
DECLARE
    st  text;
    msg text;
    det text;
    hnt text;
BEGIN
    EXECUTE sql;
    RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
                            det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT;
    RETURN st || ': ' || msg
        || coalesce(E'\nDETAIL: ' || nullif(det, ''), '')
        || coalesce(E'\nHINT: ' || nullif(hnt, ''), '');
END
$f$;
