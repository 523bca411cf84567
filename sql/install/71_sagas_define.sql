-- Invalidate the per-backend cache of watched complete_on/fail_on types
CREATE FUNCTION event_store._saga_definitions_changed() RETURNS void
    LANGUAGE c AS 'MODULE_PATHNAME', 'es_saga_definitions_changed';
REVOKE ALL ON FUNCTION event_store._saga_definitions_changed() FROM PUBLIC;

-- Raise a class-22 error (the API's validation), by the C side's rules:
-- 22004 for a NULL, 22023 (the default) for a malformed value; a name longer
-- than the C side's limit is refused by _check_name_length (22001)
CREATE FUNCTION event_store._saga_bad(msg text, hint text DEFAULT NULL, code text DEFAULT '22023')
    RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF hint IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = msg, ERRCODE = code;
    END IF;
    RAISE EXCEPTION USING MESSAGE = msg, HINT = hint, ERRCODE = code;
END $$;

-- Interval from a definition value, with the step named in the error
CREATE FUNCTION event_store._saga_interval(v jsonb, what text) RETURNS interval
    LANGUAGE plpgsql AS $$
DECLARE
    r interval;
BEGIN
    IF v IS NULL OR jsonb_typeof(v) = 'null' THEN
        RETURN NULL;
    END IF;
    IF jsonb_typeof(v) <> 'string' THEN
        PERFORM event_store._saga_bad(format('%s must be an interval string such as "30 seconds"', what));
    END IF;
    BEGIN
        r := (v #>> '{}')::interval;
    EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR interval_field_overflow THEN
        PERFORM event_store._saga_bad(format('%s is not a valid interval: %s', what, v #>> '{}'));
    END;
    IF r < interval '0' THEN
        PERFORM event_store._saga_bad(format('%s must not be negative', what));
    END IF;
    IF r > interval '100 years' THEN
        PERFORM event_store._saga_bad(format('%s must not exceed 100 years', what));
    END IF;
    RETURN r;
END $$;

-- Resolve a step function name to (saga_id uuid, data jsonb) RETURNS jsonb
CREATE FUNCTION event_store._saga_function(name text, what text, p_owner regrole, p_path text)
    RETURNS regprocedure
    LANGUAGE plpgsql AS $$
DECLARE
    f regprocedure;
    rt oid;
    rs boolean;
BEGIN
    BEGIN
        -- resolved in the search_path of the role that defines the saga
        f := event_store._saga_regprocedure(name || '(uuid, jsonb)', p_path);
    EXCEPTION WHEN syntax_error OR invalid_name OR invalid_parameter_value OR undefined_object
                OR invalid_text_representation OR feature_not_supported THEN
        PERFORM event_store._saga_bad(format('%s "%s" is not a valid function name', what, name),
                                      'Name a function such as "inventory.reserve".');
    END;
    IF f IS NULL THEN
        PERFORM event_store._saga_bad(format('%s function %s(uuid, jsonb) does not exist', what, name),
                                      'A step function takes (saga_id uuid, data jsonb) and returns jsonb.',
                                      '42883');
    END IF;
    SELECT prorettype, proretset INTO rt, rs FROM pg_catalog.pg_proc WHERE oid = f;
    IF rt <> 'jsonb'::regtype OR rs THEN
        PERFORM event_store._saga_bad(format('%s function %s must return a single jsonb', what, f::text));
    END IF;
    PERFORM event_store._check_callback(f, p_owner, 'a saga step function');
    RETURN f;
END $$;

-- The work of define_saga(), which passes the role that calls it (the step
-- functions run as that role) and its search_path (to resolve their names)
CREATE FUNCTION event_store._define_saga(saga_type text, definition jsonb, p_owner regrole, p_path text)
    RETURNS void
    LANGUAGE plpgsql
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    step jsonb;
    k text;
    i int := 0;
    norm jsonb := '[]';
    names text[] := '{}';
    nm text;
    grp int;
    maxatt int;
    act regprocedure;
    comp regprocedure;
    kind text;
    comp_kind text;
    saga_timeout interval;
BEGIN
    IF saga_type IS NULL OR saga_type = '' THEN
        PERFORM event_store._saga_bad('saga_type must not be null or empty', NULL,
                                      CASE WHEN saga_type IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    PERFORM event_store._check_name_length(saga_type, 'saga_type');
    IF definition IS NULL OR jsonb_typeof(definition) <> 'object' THEN
        PERFORM event_store._saga_bad('definition must be a JSON object with "steps"', NULL,
                                      CASE WHEN definition IS NULL THEN '22004' ELSE '22023' END);
    END IF;
    FOR k IN SELECT jsonb_object_keys(definition) LOOP
        IF k NOT IN ('steps', 'timeout') THEN
            PERFORM event_store._saga_bad(format('unknown key "%s" in saga definition', k),
                                          'A saga definition has the keys "steps" and "timeout".');
        END IF;
    END LOOP;
    IF jsonb_typeof(definition -> 'steps') IS DISTINCT FROM 'array' OR jsonb_array_length(definition -> 'steps') = 0 THEN
        PERFORM event_store._saga_bad('saga definition needs a non-empty "steps" array');
    END IF;
    saga_timeout := event_store._saga_interval(definition -> 'timeout', 'saga "timeout"');

    FOR step IN SELECT value FROM jsonb_array_elements(definition -> 'steps') LOOP
        i := i + 1;
        IF jsonb_typeof(step) <> 'object' THEN
            PERFORM event_store._saga_bad(format('step %s must be a JSON object', i));
        END IF;
        FOR k IN SELECT jsonb_object_keys(step) LOOP
            IF k NOT IN ('name', 'action', 'compensation', 'group', 'timeout', 'max_attempts',
                         'backoff', 'complete_on', 'fail_on', 'saga', 'pivot', 'delay', 'until',
                         'compensation_timeout', 'concurrency', 'concurrency_key', 'circuit') THEN
                PERFORM event_store._saga_bad(format('unknown key "%s" in step %s', k, i),
                    'A step has the keys name, action, compensation, group, timeout, max_attempts, backoff, complete_on, fail_on, saga, pivot, delay, until, compensation_timeout, concurrency, concurrency_key and circuit.');
            END IF;
        END LOOP;
        nm := step ->> 'name';
        IF jsonb_typeof(step -> 'name') IS DISTINCT FROM 'string' OR nm = '' THEN
            PERFORM event_store._saga_bad(format('step %s needs a non-empty string "name"', i));
        END IF;
        IF nm = ANY (names) THEN
            PERFORM event_store._saga_bad(format('duplicate step name "%s"', nm));
        END IF;
        names := names || nm;
        FOREACH k IN ARRAY ARRAY['action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
            IF step ? k AND (jsonb_typeof(step -> k) <> 'string' OR step ->> k = '') THEN
                PERFORM event_store._saga_bad(format('"%s" of step "%s" must be a non-empty string', k, nm));
            END IF;
        END LOOP;
        FOREACH k IN ARRAY ARRAY['name', 'action', 'compensation', 'complete_on', 'fail_on', 'saga', 'until',
                                 'concurrency_key'] LOOP
            PERFORM event_store._check_name_length(step ->> k, format('"%s" of step %s', k, i));
        END LOOP;
        IF step ? 'group' THEN
            IF jsonb_typeof(step -> 'group') <> 'number' OR (step ->> 'group')::numeric <> floor((step ->> 'group')::numeric)
               OR (step ->> 'group')::numeric < 1 OR (step ->> 'group')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"group" of step "%s" must be a positive integer', nm));
            END IF;
            grp := (step ->> 'group')::numeric::int;
        ELSE
            grp := i;
        END IF;
        IF step ? 'max_attempts' THEN
            IF jsonb_typeof(step -> 'max_attempts') <> 'number' OR (step ->> 'max_attempts')::numeric <> floor((step ->> 'max_attempts')::numeric)
               OR (step ->> 'max_attempts')::numeric < 1 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be a positive integer', nm));
            END IF;
            IF (step ->> 'max_attempts')::numeric > 100 THEN
                PERFORM event_store._saga_bad(format('"max_attempts" of step "%s" must be at most 100', nm),
                    'Every attempt of a step is an event in the saga''s stream; for a longer wait, use a longer "backoff" (it doubles per attempt).');
            END IF;
            maxatt := (step ->> 'max_attempts')::numeric::int;
        ELSE
            maxatt := 3;
        END IF;
        IF step ? 'pivot' AND jsonb_typeof(step -> 'pivot') <> 'boolean' THEN
            PERFORM event_store._saga_bad(format('"pivot" of step "%s" must be true or false', nm));
        END IF;
        -- a timer step: "delay" or "until", and nothing that runs or waits for an event
        IF step ? 'delay' OR step ? 'until' THEN
            IF step ? 'delay' AND step ? 'until' THEN
                PERFORM event_store._saga_bad(format('timer step "%s" cannot have both "delay" and "until"', nm),
                    'A timer step waits an interval ("delay") or until the time a key of the saga data holds ("until").');
            END IF;
            FOREACH k IN ARRAY ARRAY['action', 'compensation', 'complete_on', 'fail_on', 'saga'] LOOP
                IF step ? k THEN
                    PERFORM event_store._saga_bad(format('timer step "%s" cannot also have "%s"', nm, k),
                        'A timer step completes by itself when it is due: it has no action, compensation, event or nested saga.');
                END IF;
            END LOOP;
            IF step ? 'delay' AND jsonb_typeof(step -> 'delay') = 'null' THEN
                PERFORM event_store._saga_bad(format('"delay" of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            PERFORM event_store._saga_interval(step -> 'delay', format('"delay" of step "%s"', nm));
            IF step ? 'until' AND (jsonb_typeof(step -> 'until') <> 'string' OR step ->> 'until' = '') THEN
                PERFORM event_store._saga_bad(format('"until" of step "%s" must be the name of a key of the saga data', nm),
                    'The key holds the due time as an ISO 8601 timestamp, such as "2030-01-31T12:00:00Z".');
            END IF;
        END IF;
        IF step ? 'concurrency' THEN
            IF jsonb_typeof(step -> 'concurrency') <> 'number'
               OR (step ->> 'concurrency')::numeric <> floor((step ->> 'concurrency')::numeric)
               OR (step ->> 'concurrency')::numeric < 1 OR (step ->> 'concurrency')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"concurrency" of step "%s" must be a positive integer', nm));
            END IF;
        END IF;
        IF step ? 'concurrency_key' THEN
            IF NOT step ? 'concurrency' THEN
                PERFORM event_store._saga_bad(format('step "%s" has "concurrency_key" but no "concurrency"', nm),
                    '"concurrency": n limits the running instances of the step (per value of "concurrency_key").');
            END IF;
            IF jsonb_typeof(step -> 'concurrency_key') <> 'string' OR step ->> 'concurrency_key' = '' THEN
                PERFORM event_store._saga_bad(format('"concurrency_key" of step "%s" must be the name of a key of the saga data', nm));
            END IF;
        END IF;
        IF step ? 'circuit' THEN
            IF jsonb_typeof(step -> 'circuit') <> 'object' OR NOT (step -> 'circuit') ? 'failures'
               OR NOT (step -> 'circuit') ? 'cooldown'
               OR EXISTS (SELECT 1 FROM jsonb_object_keys(step -> 'circuit') ck WHERE ck NOT IN ('failures', 'cooldown')) THEN
                PERFORM event_store._saga_bad(format('"circuit" of step "%s" must be an object {"failures": n, "cooldown": "<interval>"}', nm));
            END IF;
            IF jsonb_typeof(step #> '{circuit,failures}') <> 'number'
               OR (step #>> '{circuit,failures}')::numeric <> floor((step #>> '{circuit,failures}')::numeric)
               OR (step #>> '{circuit,failures}')::numeric < 1 OR (step #>> '{circuit,failures}')::numeric > 2147483647 THEN
                PERFORM event_store._saga_bad(format('"failures" of the circuit of step "%s" must be a positive integer', nm));
            END IF;
            IF jsonb_typeof(step #> '{circuit,cooldown}') = 'null' THEN
                PERFORM event_store._saga_bad(format('"cooldown" of the circuit of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            IF event_store._saga_interval(step #> '{circuit,cooldown}', format('"cooldown" of the circuit of step "%s"', nm)) = interval '0' THEN
                PERFORM event_store._saga_bad(format('"cooldown" of the circuit of step "%s" must be positive', nm));
            END IF;
            IF step ? 'delay' OR step ? 'until' THEN
                PERFORM event_store._saga_bad(format('timer step "%s" cannot also have "circuit"', nm),
                    'A timer step completes by itself when it is due: it has no action, compensation, event or nested saga.');
            END IF;
        END IF;
        IF step ? 'compensation_timeout' THEN
            IF jsonb_typeof(step -> 'compensation_timeout') = 'null' THEN
                PERFORM event_store._saga_bad(format('"compensation_timeout" of step "%s" must be an interval string such as "30 seconds"', nm));
            END IF;
            IF event_store._saga_interval(step -> 'compensation_timeout', format('"compensation_timeout" of step "%s"', nm)) = interval '0' THEN
                PERFORM event_store._saga_bad(format('"compensation_timeout" of step "%s" must be positive', nm));
            END IF;
            -- what the step's compensation is: a function, or external (a step without action, event or saga)
            IF NOT (step ? 'compensation' OR NOT (step ? 'action' OR step ? 'complete_on' OR step ? 'fail_on'
                                                 OR step ? 'saga' OR step ? 'delay' OR step ? 'until')) THEN
                PERFORM event_store._saga_bad(format('step "%s" has "compensation_timeout" but no compensation to time', nm),
                    'A compensation timeout applies to a step''s "compensation" function, or to the external compensation of a step without "action".');
            END IF;
        END IF;
        act := CASE WHEN step ? 'action' THEN event_store._saga_function(step ->> 'action', format('action of step "%s":', nm), p_owner, p_path) END;
        comp := CASE WHEN step ? 'compensation' THEN event_store._saga_function(step ->> 'compensation', format('compensation of step "%s":', nm), p_owner, p_path) END;
        IF step ? 'saga' THEN
            IF step ? 'action' OR step ? 'complete_on' OR step ? 'fail_on' THEN
                PERFORM event_store._saga_bad(format('step "%s" runs a nested saga and cannot also have "action", "complete_on" or "fail_on"', nm));
            END IF;
            IF NOT EXISTS (SELECT 1 FROM event_store.saga_definitions d WHERE d.saga_type = step ->> 'saga')
               OR step ->> 'saga' = _define_saga.saga_type THEN
                PERFORM event_store._saga_bad(format('saga type "%s" of step "%s" is not defined', step ->> 'saga', nm),
                                              'Define the nested saga type first.');
            END IF;
            kind := 'nested';
        ELSIF act IS NOT NULL THEN
            kind := 'local';
        ELSIF step ? 'complete_on' OR step ? 'fail_on' THEN
            kind := 'event';
        ELSIF step ? 'delay' OR step ? 'until' THEN
            kind := 'timer';
        ELSE
            kind := 'external';
        END IF;
        IF kind = 'event' AND NOT step ? 'complete_on' THEN
            PERFORM event_store._saga_bad(format('step "%s" has "fail_on" but no "complete_on" or "action"', nm),
                                          'An event-driven step completes on its "complete_on" event.');
        END IF;
        IF event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)) < interval '10 milliseconds' THEN
            PERFORM event_store._saga_bad(format('"backoff" of step "%s" must be at least 10 milliseconds', nm),
                'A failed attempt is retried by a later saga_tick() or worker round, never in the call that ran it.');
        END IF;
        comp_kind := CASE WHEN comp IS NOT NULL THEN 'local'
                          WHEN kind = 'external' THEN 'external'
                          WHEN kind = 'nested' THEN 'nested'
                          ELSE 'none' END;
        norm := norm || jsonb_build_object(
            'step_no', i, 'name', nm, 'grp', grp, 'kind', kind,
            'action', act::text, 'compensation', comp::text, 'comp_kind', comp_kind,
            'complete_on', step ->> 'complete_on', 'fail_on', step ->> 'fail_on',
            'child_type', step ->> 'saga',
            'timeout', event_store._saga_interval(step -> 'timeout', format('"timeout" of step "%s"', nm)),
            'max_attempts', maxatt,
            'backoff', COALESCE(event_store._saga_interval(step -> 'backoff', format('"backoff" of step "%s"', nm)), interval '1 second'),
            'pivot', COALESCE((step ->> 'pivot')::boolean, false),
            'delay', event_store._saga_interval(step -> 'delay', format('"delay" of step "%s"', nm)),
            'until', step ->> 'until',
            'compensation_timeout', event_store._saga_interval(step -> 'compensation_timeout',
                                                               format('"compensation_timeout" of step "%s"', nm)),
            'concurrency', (step ->> 'concurrency')::numeric::int,
            'concurrency_key', step ->> 'concurrency_key',
            'circuit_failures', (step #>> '{circuit,failures}')::numeric::int,
            'circuit_cooldown', event_store._saga_interval(step #> '{circuit,cooldown}',
                                                           format('"cooldown" of the circuit of step "%s"', nm)));
    END LOOP;

    -- nested sagas must not lead back to this type (a saga would start itself forever)
    IF EXISTS (
        WITH RECURSIVE reach(t) AS (
            SELECT x ->> 'child_type' FROM jsonb_array_elements(norm) x WHERE x ->> 'child_type' IS NOT NULL
            UNION
            SELECT y ->> 'child_type'
              FROM reach r
              JOIN LATERAL (SELECT x.steps FROM event_store.saga_definitions x WHERE x.saga_type = r.t
                             ORDER BY x.version DESC LIMIT 1) d ON true
             CROSS JOIN LATERAL jsonb_array_elements(d.steps) y
             WHERE y ->> 'child_type' IS NOT NULL)
        SELECT 1 FROM reach WHERE t = _define_saga.saga_type) THEN
        PERFORM event_store._saga_bad(format('saga type "%s" would nest itself', _define_saga.saga_type),
                                      'Nested sagas must not form a cycle.');
    END IF;

    INSERT INTO event_store.saga_watched_types (event_type)
    SELECT DISTINCT t FROM jsonb_array_elements(norm) x,
           LATERAL (VALUES (x ->> 'complete_on'), (x ->> 'fail_on')) v(t)
     WHERE t IS NOT NULL
    ON CONFLICT DO NOTHING;

    -- the next version (define_saga locked the newest); running sagas keep theirs
    INSERT INTO event_store.saga_definitions AS d (saga_type, definition, steps, timeout, owner, search_path, version)
    SELECT _define_saga.saga_type, _define_saga.definition, norm, saga_timeout, p_owner, p_path,
           COALESCE(max(x.version), 0) + 1
      FROM event_store.saga_definitions x WHERE x.saga_type = _define_saga.saga_type;
    PERFORM event_store._saga_definitions_changed();
END $$;
CREATE FUNCTION event_store.define_saga(saga_type text, definition jsonb) RETURNS void
    LANGUAGE c VOLATILE PARALLEL UNSAFE AS 'MODULE_PATHNAME', 'es_define_saga';
COMMENT ON FUNCTION event_store.define_saga(text, jsonb) IS
    'Define a saga type, or its next version (for sagas started afterwards): {"steps": [...], "timeout": "1 hour"}';

