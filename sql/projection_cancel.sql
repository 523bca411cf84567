--
-- A cancel is no handler failure: a statement timeout while an async
-- projection's handler runs in run_projections() goes through to the
-- caller (as PL/pgSQL's WHEN OTHERS lets it through), the batch is rolled
-- back, and the projection counts no attempt, records no error and is
-- never marked failed, however often it happens.
--
SET client_min_messages = warning;
CREATE TABLE slow_applied (position bigint);
CREATE FUNCTION slow_handler(e event_store.event) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(5);
    INSERT INTO slow_applied VALUES (e.global_position);
END $$;
SELECT event_store.create_projection('slow', 'slow_handler(event_store.event)',
                                     categories => '{slowcat}', mode => 'async');
RESET client_min_messages;
SELECT event_store.append('slowcat-1', '[{"type": "A"}, {"type": "B"}]', 0);

\set VERBOSITY terse
SET statement_timeout = '100ms';
SELECT event_store.run_projections();
SELECT event_store.run_projections();
SELECT event_store.run_projections();
RESET statement_timeout;
\set VERBOSITY default

SELECT state, attempts, last_error, error_position, position = 0 AS at_start
  FROM event_store.projections WHERE name = 'slow';
SELECT count(*) AS applied FROM slow_applied;

-- the projection still runs once the handler is quick
CREATE OR REPLACE FUNCTION slow_handler(e event_store.event) RETURNS void
    LANGUAGE sql AS $$ INSERT INTO slow_applied VALUES (e.global_position) $$;
SELECT event_store.run_projections() AS handed;
SELECT state, attempts, last_error, position = event_store.head_position() AS at_head
  FROM event_store.projections WHERE name = 'slow';
SELECT count(*) AS applied FROM slow_applied;

SET client_min_messages = warning;
SELECT event_store.drop_projection('slow');
DROP FUNCTION slow_handler(event_store.event);
DROP TABLE slow_applied;
RESET client_min_messages;
