--
-- append_errors: every kind of malformed argument to append() is refused
-- with a class 22 SQLSTATE and a message naming what is wrong (for a batch,
-- the 0-based index of the offending event), and nothing of a refused call
-- is written.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;

-- bad(stream_id, events, expected_version): call append() and show the
-- SQLSTATE (code), message and hint of its error, or "no error".  Every outcome is
-- also kept in pg_temp.outcomes for the checks at the end.
CREATE TEMP TABLE outcomes (code text, message text);
CREATE FUNCTION pg_temp.bad(stream_id text, events jsonb, expected_version bigint DEFAULT NULL,
                            OUT code text, OUT message text, OUT hint text)
LANGUAGE plpgsql AS $f$
BEGIN
    PERFORM event_store.append(stream_id, events, expected_version);
    code := 'no error';
    INSERT INTO pg_temp.outcomes VALUES (code, NULL);
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            hint = PG_EXCEPTION_HINT;
    hint := nullif(hint, '');
    INSERT INTO pg_temp.outcomes VALUES (code, message);
END
$f$;

-- a store with something in it
SELECT event_store.append('good-1', '[{"type": "Created"}, {"type": "Renamed"}]', 0);
SELECT count(*) AS events_before, event_store.head_position() AS head_before
  FROM event_store.events \gset

--
-- stream_id
--
SELECT * FROM pg_temp.bad(NULL, '{"type": "A"}');
SELECT * FROM pg_temp.bad('', '{"type": "A"}');
SELECT * FROM pg_temp.bad('', '{"type": "A"}', 0);

--
-- events: one object or a non-empty array of objects
--
SELECT * FROM pg_temp.bad('bad-1', NULL);
SELECT * FROM pg_temp.bad('good-1', NULL, 2);
SELECT e.events, b.*
  FROM (VALUES ('"OrderPlaced"'), ('42'), ('null'), ('true'), ('false'),
               ('[]')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

--
-- one event object: type, id, metadata, schema_version, unknown keys
--
SELECT e.events, b.*
  FROM (VALUES ('{}'),
               ('{"data": {"x": 1}}'),
               ('{"type": ""}'),
               ('{"type": 42}'),
               ('{"type": null}'),
               ('{"type": {"name": "A"}}'),
               ('{"type": ["A"]}'),
               ('{"type": true}')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

-- id: a uuid string (the forms uuid input accepts), nothing else
SELECT e.events, b.*
  FROM (VALUES ('{"type": "A", "id": "not-a-uuid"}'),
               ('{"type": "A", "id": ""}'),
               ('{"type": "A", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"}'),
               ('{"type": "A", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a111"}'),
               ('{"type": "A", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1g"}'),
               ('{"type": "A", "id": "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}'),
               ('{"type": "A", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}"}'),
               ('{"type": "A", "id": "-a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}'),
               ('{"type": "A", "id": "a0eebc99--9c0b-4ef8-bb6d-6bb9bd380a11"}'),
               ('{"type": "A", "id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-"}'),
               ('{"type": "A", "id": " a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}'),
               ('{"type": "A", "id": 42}'),
               ('{"type": "A", "id": null}'),
               ('{"type": "A", "id": {"uuid": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}}'),
               ('{"type": "A", "id": true}')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

-- metadata: an object or null
SELECT e.events, b.*
  FROM (VALUES ('{"type": "A", "metadata": []}'),
               ('{"type": "A", "metadata": [{"a": 1}]}'),
               ('{"type": "A", "metadata": "user=1"}'),
               ('{"type": "A", "metadata": 7}'),
               ('{"type": "A", "metadata": false}')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

-- schema_version: a positive integer
SELECT e.events, b.*
  FROM (VALUES ('{"type": "A", "schema_version": 0}'),
               ('{"type": "A", "schema_version": -1}'),
               ('{"type": "A", "schema_version": 1.5}'),
               ('{"type": "A", "schema_version": "2"}'),
               ('{"type": "A", "schema_version": null}'),
               ('{"type": "A", "schema_version": 2147483648}'),
               ('{"type": "A", "schema_version": 99999999999999999999999}'),
               ('{"type": "A", "schema_version": true}'),
               ('{"type": "A", "schema_version": [1]}')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

-- unknown keys: typos must not pass silently (keys are case-sensitive)
SELECT e.events, b.*
  FROM (VALUES ('{"tpye": "A"}'),
               ('{"type": "A", "Data": {}}'),
               ('{"type": "A", "Type": "B"}'),
               ('{"type": "A", "event_type": "A"}'),
               ('{"type": "A", "meta": {}}'),
               ('{"type": "A", "schemaVersion": 2}'),
               ('{"type": "A", "data": {}, "extra": 1}')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;

--
-- batches: the message names the 0-based index of the first bad event
--
SELECT e.events, b.*
  FROM (VALUES ('[{"type": ""}]'),
               ('[{"type": "A"}, 5]'),
               ('[{"type": "A"}, null]'),
               ('[{"type": "A"}, "B"]'),
               ('[[{"type": "A"}]]'),
               ('[{"type": "A"}, {"type": "B"}, {}]'),
               ('[{"type": "A"}, {"type": "B"}, {"type": "C", "metadata": []}]'),
               ('[{"type": "A"}, {"type": "B", "id": "nope"}, {"type": ""}]'),
               ('[{"type": "A"}, {"type": "B"}, {"type": "C"}, {"type": "D", "schema_version": 0}]'),
               ('[{"type": "A"}, {"tpye": "B"}]')) AS e(events),
       LATERAL pg_temp.bad('bad-1', e.events::jsonb) AS b;
-- a long batch whose last event is bad: nothing of it is written
SELECT b.*
  FROM pg_temp.bad('bad-1',
         (SELECT jsonb_agg(CASE WHEN i < 500 THEN jsonb_build_object('type', 'Tick')
                                ELSE jsonb_build_object('type', 'Tick', 'data', 1, 'size', 2) END
                           ORDER BY i)
            FROM generate_series(1, 500) AS i)) AS b;
SELECT b.*
  FROM pg_temp.bad('good-1',
         (SELECT jsonb_agg(CASE WHEN i < 500 THEN jsonb_build_object('type', 'Tick')
                                ELSE jsonb_build_object('type', '') END
                           ORDER BY i)
            FROM generate_series(1, 500) AS i), 2) AS b;

--
-- expected_version: negative values are invalid, with a hint naming NULL and 0
--
SELECT * FROM pg_temp.bad('bad-1', '{"type": "A"}', -1);
SELECT * FROM pg_temp.bad('good-1', '{"type": "A"}', -2);
SELECT * FROM pg_temp.bad('good-1', '{"type": "A"}', -9223372036854775808);

--
-- Every refusal above was a class 22 error ...
--
SELECT code AS sqlstate, count(*) AS cases
  FROM pg_temp.outcomes GROUP BY code ORDER BY code;
SELECT count(*) AS cases,
       count(*) FILTER (WHERE code !~ '^22') AS not_class_22,
       count(*) FILTER (WHERE message IS NULL OR message = '') AS without_message
  FROM pg_temp.outcomes;

-- ... and nothing was written.
SELECT count(*) - :events_before AS events_written,
       event_store.head_position() - :head_before AS head_moved
  FROM event_store.events;
SELECT event_store.stream_version('bad-1') AS bad_1,
       event_store.stream_version('good-1') AS good_1;
SELECT stream_id, stream_version, event_type FROM event_store.events ORDER BY global_position;

-- the store still takes good appends, at the next position
SELECT event_store.append('good-1', '{"type": "Closed"}', 2);
SELECT global_position - :head_before AS position_after_head
  FROM event_store.events WHERE stream_id = 'good-1' AND stream_version = 3;
