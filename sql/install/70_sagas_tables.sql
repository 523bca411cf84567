------------------------------------------------------------------------------
-- Sagas
------------------------------------------------------------------------------
-- The orchestrator runs once per saga transition, never per appended event.
-- Its step loop, which calls the local steps, is C (src/saga_run.c); the
-- API and the rarer transitions are SQL/PL/pgSQL.  The only per-event part,
-- matching complete_on / fail_on event types, is done in C by append() and
-- calls in here only for an event that carries metadata.saga_id and a
-- watched type.

CREATE TABLE event_store.saga_definitions (
    saga_type  text NOT NULL CHECK (saga_type <> ''),
    definition jsonb       NOT NULL,   -- as given
    steps      jsonb       NOT NULL,   -- normalised: defaults filled in, functions resolved
    timeout    interval,
    defined_at timestamptz NOT NULL DEFAULT now(),
    owner      regrole     NOT NULL,  -- defined it; the step functions run as this role
    search_path text       NOT NULL,  -- and with this search_path (pg_temp last)
    version    int         NOT NULL,  -- 1, 2, ...: define_saga of a defined type adds a version
    CONSTRAINT saga_definitions_pkey PRIMARY KEY (saga_type, version)
);
COMMENT ON TABLE event_store.saga_definitions IS 'Saga types, one row per version; maintained with define_saga()';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_definitions', '');
REVOKE ALL ON TABLE event_store.saga_definitions FROM PUBLIC;

-- Every event type some saga step ever waited for (complete_on / fail_on):
-- sagas started under an older definition keep waiting for their types.
CREATE TABLE event_store.saga_watched_types (
    event_type text PRIMARY KEY
);
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_watched_types', '');
REVOKE ALL ON TABLE event_store.saga_watched_types FROM PUBLIC;

CREATE TABLE event_store.sagas (
    saga_id        uuid PRIMARY KEY,
    saga_type      text NOT NULL,
    status         text NOT NULL DEFAULT 'running'
                   CHECK (status IN ('running', 'completed', 'compensating', 'compensated', 'compensation_failed')),
    start_data     jsonb NOT NULL,
    data           jsonb NOT NULL,
    timeout        interval,
    deadline       timestamptz,
    parent_saga_id uuid REFERENCES event_store.sagas (saga_id),
    parent_step    text,
    last_error     text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    version        int NOT NULL DEFAULT 1  -- of its saga type: the saga runs on it to its end
);
CREATE INDEX sagas_active_idx ON event_store.sagas (deadline)
    WHERE status IN ('running', 'compensating');
-- the open sagas by status, and the oldest running one (event_store.stats)
CREATE INDEX sagas_open_idx ON event_store.sagas (status, started_at)
    WHERE status IN ('running', 'compensating', 'compensation_failed');
COMMENT ON TABLE event_store.sagas IS 'Saga instances; their history is also the event stream saga-<saga_id>';
SELECT pg_catalog.pg_extension_config_dump('event_store.sagas', '');
REVOKE ALL ON TABLE event_store.sagas FROM PUBLIC;

CREATE TABLE event_store.saga_steps (
    saga_id          uuid NOT NULL REFERENCES event_store.sagas (saga_id),
    step_no          int  NOT NULL,          -- 1-based position in the definition
    name             text NOT NULL,
    grp              int  NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('local', 'external', 'event', 'nested', 'timer')),
    action           regprocedure,
    compensation     regprocedure,
    comp_kind        text NOT NULL CHECK (comp_kind IN ('none', 'local', 'external', 'nested')),
    complete_on      text,
    fail_on          text,
    child_type       text,
    timeout          interval,
    max_attempts     int  NOT NULL,
    backoff          interval NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'completed', 'failed', 'compensating', 'compensated')),
    attempts         int  NOT NULL DEFAULT 0,
    comp_attempts    int  NOT NULL DEFAULT 0,
    result           jsonb,                  -- the step's result = its compensation data
    last_error       text,
    next_attempt_at  timestamptz,
    deadline         timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    child_saga_id    uuid,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    pivot            boolean NOT NULL DEFAULT false,  -- forward recovery once it completed
    delay            interval,               -- a timer step: due this long after it started
    until_key        text,                   -- ... or at the timestamp the saga data holds here
    due_at           timestamptz,            -- a running timer step completes then
    comp_timeout     interval,               -- a compensation attempt longer than this failed
    concurrency      int,                    -- at most this many instances of the step run
    concurrency_key  text,                   -- ... per value of this key of the saga data
    slot_wait        boolean NOT NULL DEFAULT false,  -- pending: waits for a concurrency slot
    circuit_failures int,                    -- its circuit opens after this many failures in a row
    circuit_cooldown interval,               -- ... for this long
    circuit_wait     boolean NOT NULL DEFAULT false,  -- pending: waits for its circuit to close
    PRIMARY KEY (saga_id, step_no),
    UNIQUE (saga_id, name)
);
-- the external steps and compensations that wait to be claimed, in the
-- order claim_saga_steps hands them out (a claim reads no further than the
-- steps it takes, however many sagas started in the same transaction)
CREATE INDEX saga_steps_claimable_idx ON event_store.saga_steps (updated_at, saga_id, step_no)
    WHERE lease_owner IS NULL AND ((status = 'running' AND kind = 'external')
                                   OR (status = 'compensating' AND comp_kind = 'external'));
CREATE INDEX saga_steps_timers_idx ON event_store.saga_steps (saga_id)
    WHERE status IN ('pending', 'running', 'compensating');
-- the timers of unfinished steps: the first of a step's timeout, its lease's
-- expiry, its retry and its due time (a timer step) -- saga_tick, the
-- worker's next wake-up
CREATE INDEX saga_steps_next_timer_idx
    ON event_store.saga_steps ((LEAST(deadline, lease_expires_at, next_attempt_at, due_at)))
    WHERE status IN ('pending', 'running', 'compensating')
      AND LEAST(deadline, lease_expires_at, next_attempt_at, due_at) IS NOT NULL;
-- the pending steps that wait for a concurrency slot or a circuit (saga_tick)
CREATE INDEX saga_steps_waiting_idx ON event_store.saga_steps (saga_id)
    WHERE status = 'pending' AND (slot_wait OR circuit_wait);
-- the running timer steps by due time (saga_tick, the worker's next wake-up)
CREATE INDEX saga_steps_due_idx ON event_store.saga_steps (due_at)
    WHERE status = 'running' AND due_at IS NOT NULL;
COMMENT ON TABLE event_store.saga_steps IS 'Steps of saga instances';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_steps', '');
REVOKE ALL ON TABLE event_store.saga_steps FROM PUBLIC;

-- Sagas that need a person, and why (reason): compensation_failed (a
-- compensation ran out of attempts; step is the one that stopped it), or
-- forward_recovery_failed (a step of a saga past its pivot ran out of
-- attempts; the saga stays running).  retry_saga or resolve_saga settles them.
CREATE VIEW event_store.saga_problems AS
SELECT s.saga_id, s.saga_type, s.status, s.last_error AS saga_error,
       st.name AS step, st.status AS step_status, st.comp_attempts, st.last_error AS step_error,
       s.updated_at,
       CASE WHEN s.status = 'compensation_failed' THEN 'compensation_failed'
            ELSE 'forward_recovery_failed' END AS reason,
       s.version, st.attempts
  FROM event_store.sagas s
  LEFT JOIN event_store.saga_steps st
    ON st.saga_id = s.saga_id
   AND st.status = CASE WHEN s.status = 'compensation_failed' THEN 'compensating' ELSE 'failed' END
 WHERE s.status = 'compensation_failed'
    OR (s.status = 'running'
        AND EXISTS (SELECT 1 FROM event_store.saga_steps f
                     WHERE f.saga_id = s.saga_id AND f.status = 'failed'));
COMMENT ON VIEW event_store.saga_problems IS 'Sagas that need a person, and why (reason: compensation_failed, forward_recovery_failed), with the step that stopped them; settled with retry_saga or resolve_saga';


-- Saga types, one row per version: running counts the version's sagas
-- that have not ended (running, or compensating what they did)
CREATE VIEW event_store.saga_types AS
SELECT d.saga_type, d.version, d.owner, d.defined_at,
       (SELECT count(*) FROM event_store.sagas s
         WHERE s.saga_type = d.saga_type AND s.version = d.version
           AND s.status IN ('running', 'compensating')) AS running
  FROM event_store.saga_definitions d;
COMMENT ON VIEW event_store.saga_types IS 'Saga types, one row per version (define_saga of a defined type adds the next), with how many of its sagas still run';

-- The circuit breakers of saga steps ("circuit" in a definition), one per
-- saga type and step name: closed (failures counts the failed attempts in
-- a row), open (no instance runs or is handed out until retry_at),
-- half_open (one trial, of trial_saga, decides).
CREATE TABLE event_store.saga_circuit_state (
    saga_type  text NOT NULL,
    step       text NOT NULL,
    state      text NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures   int  NOT NULL,
    opened_at  timestamptz,
    retry_at   timestamptz,
    trial_saga uuid,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (saga_type, step)
);
COMMENT ON TABLE event_store.saga_circuit_state IS 'Circuit breakers of saga steps; see the view saga_circuits';
SELECT pg_catalog.pg_extension_config_dump('event_store.saga_circuit_state', '');
REVOKE ALL ON TABLE event_store.saga_circuit_state FROM PUBLIC;

-- The circuits that are not closed: open (until retry_at) or half-open (a
-- trial attempt runs), with the sagas whose step waits for them
CREATE VIEW event_store.saga_circuits AS
SELECT c.saga_type, c.step, c.state, c.failures, c.opened_at, c.retry_at, c.trial_saga,
       (SELECT count(*) FROM event_store.saga_steps st JOIN event_store.sagas s ON s.saga_id = st.saga_id
         WHERE s.saga_type = c.saga_type AND st.name = c.step AND st.circuit_wait) AS waiting
  FROM event_store.saga_circuit_state c
 WHERE c.state <> 'closed';
COMMENT ON VIEW event_store.saga_circuits IS 'Open and half-open circuit breakers of saga steps, with how many instances wait for them';
