#!/usr/bin/env bash
#
# bench/sagas.sh - the saga orchestrator under load, against the bare limit
# of the same work done by hand, measured in the same run.
#
# Starts a throwaway cluster (background worker on) and runs three cases:
#
# external  A saga of three external steps (reserve -> charge -> ship, one
#           after the other, each compensated externally).  SAGA_COUNT sagas
#           are started, then driven by SAGA_WORKERS concurrent worker
#           connections.  Each worker loops: claim a batch (under a lease, in
#           its own transaction), then for every claimed step, in a
#           transaction of its own, report the outcome and record the
#           execution in bench.executions:
#             actions:        4% fail retryable, 4% fail for good, 2% are
#                             abandoned (the worker "dies": the lease
#                             expires and the step is handed out again),
#                             the rest complete;
#             compensations:  10% fail retryable, except on their last
#                             attempt, the rest complete.
#           The baseline does the same work by hand: one job table
#           (bench.jobs, a row per saga with its current step), claimed with
#           SELECT ... FOR UPDATE SKIP LOCKED under a lease, an UPDATE per
#           report, one INSERT of a transition row per report into a plain
#           table; same workers, same failure mix.  Rounds es, base, base,
#           es (SAGA_ROUNDS pairs).  Ratio = sagas/s es / sagas/s baseline.
#
# local     A saga of five local steps (no-op PL/pgSQL functions): one
#           start_saga() runs it to its end.  Baseline: the same five calls
#           and five transition inserts in one transaction, by hand (a
#           PL/pgSQL function, one statement per transaction like
#           start_saga).  pgbench, SAGA_CLIENTS clients, interleaved
#           segments.  Ratio = steps/s = tps / tps.
#
# timers    SAGA_TIMERS sagas, each of one timer step ("until") due at the
#           same instant T; started before T, completed by the background
#           worker (woken by its latch timeout at the due time, not by
#           polling).  Reported: how long after T each saga completed (the
#           commit timestamp of its last change minus T): p50, p99, max.
#
# When every external saga has ended, the script checks that every saga
# ended completed or compensated; that no step was handed out twice for the
# same attempt, none again after its completion, none completed twice; that
# attempts are 1, 2, 3 without gaps; that no compensation ran without its
# completed forward step and every completed step of a compensated saga was
# compensated; that the orchestrator's step statuses agree with the
# executions, and every saga's stream ends with SagaCompleted or
# SagaCompensated; the same for the baseline's jobs where they apply.  Exit
# status 0 only when every check holds.
#
# Environment:
#   SAGA_COUNT       external sagas per round (default 10000; e.g. 500 for a smoke run)
#   SAGA_ROUNDS      pairs of external rounds (default 1: es, base, base, es)
#   SAGA_WORKERS     worker connections (default 4)
#   SAGA_BATCH       steps claimed per claim (default 10)
#   SAGA_LEASE       lease of a claim (default '3 seconds')
#   SAGA_TIMEOUT     seconds after which the workers give up (default 1800)
#   SAGA_SEED        seed of the workers' random choices (default 42)
#   SAGA_CLIENTS     pgbench clients of the local case (default 4)
#   SAGA_SECONDS     measured seconds per side of the local case (default 12)
#   SAGA_TIMERS      timer sagas (default 10000)
#   SAGA_CASES       subset of "external local timers" (default all three)
#   SAGA_PORT        port of the throwaway cluster (default 5579)
#   BENCH_SKIP_BUILD set to 1 to use the installed extension as it is
#   PG_CONFIG        pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

COUNT=${SAGA_COUNT:-10000}
ROUNDS=${SAGA_ROUNDS:-1}
WORKERS=${SAGA_WORKERS:-4}
BATCH=${SAGA_BATCH:-10}
LEASE=${SAGA_LEASE:-3 seconds}
TIMEOUT=${SAGA_TIMEOUT:-1800}
SEED=${SAGA_SEED:-42}
CLIENTS=${SAGA_CLIENTS:-4}
LOCAL_SECONDS=${SAGA_SECONDS:-12}
TIMERS=${SAGA_TIMERS:-10000}
CASES=${SAGA_CASES:-external local timers}
PORT=${SAGA_PORT:-5579}
PG_CONFIG=${PG_CONFIG:-pg_config}

log() { printf '%s\n' "$*" >&2; }
die() { log "sagas.sh: $*"; exit 1; }

for v in COUNT ROUNDS WORKERS BATCH CLIENTS LOCAL_SECONDS TIMERS; do
	[[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "SAGA_$v must be a positive integer"
done
for c in $CASES; do
	[[ " external local timers " == *" $c "* ]] || die "unknown case \"$c\" in SAGA_CASES"
done
has_case() { [[ " $CASES " == *" $1 "* ]]; }

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build

WORKER_PIDS=()
# the exit trap stops the worker connections before the cluster
bench_before_stop() {
	local pid
	for pid in "${WORKER_PIDS[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
}

bench_cluster_start es-saga-bench SAGA_PORT "event_store.naptime = '200ms'
shared_buffers = 256MB
max_wal_size = 4GB
synchronous_commit = off
autovacuum_naptime = 5s
track_commit_timestamp = on"
NPROC=$(nproc)

# cluster_cpu_ticks and CLK_TCK: bench/lib.sh
# us_per TICKS N: CPU microseconds per item
us_per() { awk -v t="$1" -v n="$2" -v hz="$CLK_TCK" 'BEGIN { printf "%.0f", (n > 0 ? t * 1e6 / hz / n : 0) }'; }
now_s() { date +%s.%N; }
secs_since() { awk -v a="$1" -v b="$(now_s)" 'BEGIN { printf "%.3f", b - a }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
verdict() { awk -v r="$1" -v t="$2" 'BEGIN { print (r >= t ? ">= " t " ok" : ">= " t " MISSED") }'; }

# ---------------------------------------------------------------------------
# the sagas, the executions log, the workers (event_store and baseline)
# ---------------------------------------------------------------------------
"${PSQL[@]}" >/dev/null <<'SQL'
CREATE EXTENSION event_store;
CREATE SCHEMA bench;

SELECT event_store.define_saga('order', '{
    "steps": [
      {"name": "reserve", "max_attempts": 3, "backoff": "10 milliseconds"},
      {"name": "charge",  "max_attempts": 3, "backoff": "10 milliseconds"},
      {"name": "ship",    "max_attempts": 3, "backoff": "10 milliseconds"}
    ]}');

-- One row per step execution a worker was handed (side: es or base): the
-- primary key refuses a step handed out twice for the same attempt, the
-- partial unique index a second completion of a step (or of its
-- compensation).
CREATE TABLE bench.executions (
    side     text NOT NULL,
    saga_id  uuid NOT NULL,
    step     text NOT NULL,
    kind     text NOT NULL,        -- action | compensation
    attempt  int  NOT NULL,
    worker   text NOT NULL,
    outcome  text NOT NULL CHECK (outcome IN ('completed', 'failed_retryable', 'failed_final',
                                              'abandoned', 'refused')),
    claimed_at  timestamptz NOT NULL,  -- when the claim returned (before it committed)
    reported_at timestamptz NOT NULL DEFAULT clock_timestamp(),  -- before the report committed
    PRIMARY KEY (saga_id, step, kind, attempt)
);
CREATE UNIQUE INDEX executions_completed_once ON bench.executions (saga_id, step, kind)
    WHERE outcome = 'completed';

CREATE TYPE bench.claim AS (saga_id uuid, step text, kind text, attempt int, claimed_at timestamptz);

-- The outcome a worker decides for a step it was handed
CREATE FUNCTION bench.outcome(kind text, attempt int) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r float8 := random();
BEGIN
    IF kind = 'action' THEN
        RETURN CASE WHEN r < 0.04 THEN 'failed_retryable' WHEN r < 0.08 THEN 'failed_final'
                    WHEN r < 0.10 THEN 'abandoned' ELSE 'completed' END;
    END IF;
    RETURN CASE WHEN r < 0.10 AND attempt < 3 THEN 'failed_retryable' ELSE 'completed' END;
END $$;

-- An event_store worker: claim a batch, then execute each claimed step in
-- a transaction of its own (report + record), until no saga is active or
-- the deadline.
CREATE PROCEDURE bench.worker(w text, batch int, lease interval, deadline timestamptz, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
    claimed bench.claim[];
    c bench.claim;
    outcome text;
BEGIN
    PERFORM setseed(seed);
    LOOP
        SELECT array_agg(ROW(k.saga_id, k.step, k.kind, k.attempt, clock_timestamp())::bench.claim)
          INTO claimed
          FROM event_store.claim_saga_steps(w, batch, NULL, lease) k;
        COMMIT;
        IF claimed IS NULL THEN
            EXIT WHEN NOT EXISTS (SELECT 1 FROM event_store.sagas WHERE status IN ('running', 'compensating'))
                   OR clock_timestamp() > deadline;
            PERFORM pg_sleep(0.01);
            CONTINUE;
        END IF;
        FOREACH c IN ARRAY claimed LOOP
            outcome := bench.outcome(c.kind, c.attempt);
            BEGIN
                IF outcome = 'failed_retryable' THEN
                    PERFORM event_store.fail_saga_step(c.saga_id, c.step, 'transient failure', true);
                ELSIF outcome = 'failed_final' THEN
                    PERFORM event_store.fail_saga_step(c.saga_id, c.step, 'permanent failure', false);
                ELSIF outcome = 'completed' AND c.kind = 'action' THEN
                    PERFORM event_store.complete_saga_step(c.saga_id, c.step,
                        jsonb_build_object(c.step || '_by', w, c.step || '_attempt', c.attempt));
                ELSIF outcome = 'completed' THEN
                    PERFORM event_store.complete_saga_step(c.saga_id, c.step);
                END IF;
                -- abandoned: no report, the lease will expire
            EXCEPTION WHEN object_not_in_prerequisite_state THEN
                outcome := 'refused';
            END;
            INSERT INTO bench.executions (side, saga_id, step, kind, attempt, worker, outcome, claimed_at)
            VALUES ('es', c.saga_id, c.step, c.kind, c.attempt, w, outcome, c.claimed_at);
            COMMIT;
        END LOOP;
    END LOOP;
END $$;

-- Start n sagas, committing every 500
CREATE PROCEDURE bench.start(n int, round int)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        PERFORM event_store.start_saga('order', jsonb_build_object('order', i, 'round', round));
        IF i % 500 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;

-- The baseline: the same sagas as one job table by hand.  A row per saga:
-- its current step (1..3) and whether it runs forward or compensates, the
-- attempts of that step, a retry's due time, the lease.
CREATE TABLE bench.jobs (
    saga_id          uuid PRIMARY KEY,
    status           text NOT NULL DEFAULT 'running',  -- running | compensating | completed | compensated | compensation_failed
    step             int  NOT NULL DEFAULT 1,
    attempt          int  NOT NULL DEFAULT 0,
    data             jsonb NOT NULL,
    next_at          timestamptz,
    lease_owner      text,
    lease_expires_at timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_claimable ON bench.jobs (updated_at)
    WHERE status IN ('running', 'compensating') AND lease_owner IS NULL;
CREATE INDEX jobs_leased ON bench.jobs (lease_expires_at) WHERE lease_owner IS NOT NULL;
-- the transitions: a plain table, one row per report
CREATE TABLE bench.transitions (
    saga_id uuid NOT NULL,
    step    int NOT NULL,
    event   text NOT NULL,
    data    jsonb,
    at      timestamptz NOT NULL DEFAULT now()
);

-- A failed attempt of the job's current step (locked by the caller):
-- retried after the backoff while attempts remain, else the saga
-- compensates the steps before it (a compensation never gives up)
CREATE FUNCTION bench.base_fail(j bench.jobs, retryable boolean, error text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF retryable AND j.attempt < 3 THEN
        UPDATE bench.jobs SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now(),
               next_at = now() + event_store._backoff('10 milliseconds', j.attempt)
         WHERE saga_id = j.saga_id;
    ELSIF j.status = 'compensating' THEN
        UPDATE bench.jobs SET status = 'compensation_failed', lease_owner = NULL, lease_expires_at = NULL,
               updated_at = now()
         WHERE saga_id = j.saga_id;
    ELSE
        UPDATE bench.jobs SET status = CASE WHEN j.step = 1 THEN 'compensated' ELSE 'compensating' END,
               step = greatest(j.step - 1, 1), attempt = 0, next_at = NULL,
               lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE saga_id = j.saga_id;
    END IF;
    INSERT INTO bench.transitions (saga_id, step, event, data)
    VALUES (j.saga_id, j.step, 'failed', jsonb_build_object('error', error, 'attempt', j.attempt));
END $$;

CREATE TYPE bench.base_claim AS (saga_id uuid, step int, kind text, attempt int, claimed_at timestamptz);

-- A baseline worker: the same loop, the same outcomes
CREATE PROCEDURE bench.base_worker(w text, batch int, lease interval, deadline timestamptz, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
    names text[] := ARRAY['reserve', 'charge', 'ship'];
    claimed bench.base_claim[];
    cl bench.base_claim;
    jr bench.jobs;
    outcome text;
BEGIN
    PERFORM setseed(seed);
    LOOP
        -- expired leases: a failed attempt
        FOR jr IN SELECT * FROM bench.jobs
                  WHERE lease_owner IS NOT NULL AND lease_expires_at <= now() FOR UPDATE SKIP LOCKED LOOP
            PERFORM bench.base_fail(jr, true, 'lease expired');
        END LOOP;
        WITH u AS (
            UPDATE bench.jobs j SET lease_owner = w, lease_expires_at = now() + lease, next_at = NULL,
                   attempt = j.attempt + 1, updated_at = now()
             WHERE j.saga_id = ANY (ARRAY(
                       SELECT saga_id FROM bench.jobs
                        WHERE status IN ('running', 'compensating') AND lease_owner IS NULL
                          AND (next_at IS NULL OR next_at <= now())
                        ORDER BY updated_at LIMIT batch
                          FOR UPDATE SKIP LOCKED))
            RETURNING j.saga_id, j.step, j.status, j.attempt)
        SELECT array_agg(ROW(u.saga_id, u.step, CASE WHEN u.status = 'running' THEN 'action' ELSE 'compensation' END,
                             u.attempt, clock_timestamp())::bench.base_claim)
          INTO claimed FROM u;
        COMMIT;
        IF claimed IS NULL THEN
            EXIT WHEN NOT EXISTS (SELECT 1 FROM bench.jobs WHERE status IN ('running', 'compensating'))
                   OR clock_timestamp() > deadline;
            PERFORM pg_sleep(0.01);
            CONTINUE;
        END IF;
        FOREACH cl IN ARRAY claimed LOOP
            outcome := bench.outcome(cl.kind, cl.attempt);
            IF outcome <> 'abandoned' THEN
                -- a report after the lease expired (or was taken over) is refused
                SELECT * INTO jr FROM bench.jobs
                 WHERE saga_id = cl.saga_id AND lease_owner = w AND step = cl.step AND attempt = cl.attempt
                   AND status = CASE WHEN cl.kind = 'action' THEN 'running' ELSE 'compensating' END
                   FOR UPDATE;
                IF NOT FOUND THEN
                    outcome := 'refused';
                ELSIF outcome = 'failed_retryable' THEN
                    PERFORM bench.base_fail(jr, true, 'transient failure');
                ELSIF outcome = 'failed_final' THEN
                    PERFORM bench.base_fail(jr, false, 'permanent failure');
                ELSIF cl.kind = 'action' THEN
                    UPDATE bench.jobs
                       SET status = CASE WHEN step = 3 THEN 'completed' ELSE status END,
                           step = least(step + 1, 3), attempt = 0, lease_owner = NULL, lease_expires_at = NULL,
                           updated_at = now(),
                           data = data || jsonb_build_object(names[cl.step] || '_by', w,
                                                             names[cl.step] || '_attempt', cl.attempt)
                     WHERE saga_id = cl.saga_id;
                    INSERT INTO bench.transitions (saga_id, step, event) VALUES (cl.saga_id, cl.step, 'completed');
                ELSE
                    UPDATE bench.jobs
                       SET status = CASE WHEN step = 1 THEN 'compensated' ELSE status END,
                           step = greatest(step - 1, 1), attempt = 0, lease_owner = NULL, lease_expires_at = NULL,
                           updated_at = now()
                     WHERE saga_id = cl.saga_id;
                    INSERT INTO bench.transitions (saga_id, step, event) VALUES (cl.saga_id, cl.step, 'compensated');
                END IF;
            END IF;
            INSERT INTO bench.executions (side, saga_id, step, kind, attempt, worker, outcome, claimed_at)
            VALUES ('base', cl.saga_id, names[cl.step], cl.kind, cl.attempt, w, outcome, cl.claimed_at);
            COMMIT;
        END LOOP;
    END LOOP;
END $$;

CREATE PROCEDURE bench.base_start(n int, round int)
LANGUAGE plpgsql AS $$
DECLARE
    id uuid;
BEGIN
    FOR i IN 1 .. n LOOP
        id := gen_random_uuid();
        INSERT INTO bench.jobs (saga_id, data) VALUES (id, jsonb_build_object('order', i, 'round', round));
        INSERT INTO bench.transitions (saga_id, step, event) VALUES (id, 0, 'started');
        IF i % 500 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;

-- The local case: five no-op steps
CREATE FUNCTION bench.noop(saga_id uuid, data jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    RETURN '{}';
END $$;
SELECT event_store.define_saga('local5', '{
    "steps": [
      {"name": "s1", "action": "bench.noop"},
      {"name": "s2", "action": "bench.noop"},
      {"name": "s3", "action": "bench.noop"},
      {"name": "s4", "action": "bench.noop"},
      {"name": "s5", "action": "bench.noop"}
    ]}');
CREATE TABLE bench.local_transitions (
    saga_id uuid NOT NULL,
    step    int NOT NULL,
    result  jsonb,
    at      timestamptz NOT NULL DEFAULT now()
);
-- ... by hand: the same five calls, a transition row after each
CREATE FUNCTION bench.local_by_hand(data jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    id uuid := gen_random_uuid();
    r jsonb;
BEGIN
    FOR i IN 1 .. 5 LOOP
        r := bench.noop(id, data);
        INSERT INTO bench.local_transitions (saga_id, step, result) VALUES (id, i, r);
    END LOOP;
    RETURN id;
END $$;
-- ... and the least any implementation of the saga contract writes for
-- the same saga, in plain SQL with nothing checked or locked: each call in a
-- subtransaction (a failed local step must leave no trace), the saga row and
-- its five step rows once (in their final state), and its seven transition
-- events (started, five steps completed, completed) in one multi-row insert
-- into a table of the events' shape and four indexes
CREATE TABLE bench.floor_sagas (
    saga_id uuid PRIMARY KEY, saga_type text NOT NULL, status text NOT NULL,
    data jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE bench.floor_steps (
    saga_id uuid NOT NULL, step_no int NOT NULL, name text NOT NULL, status text NOT NULL,
    result jsonb, updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (saga_id, step_no)
);
CREATE SEQUENCE bench.floor_position;
CREATE TABLE bench.floor_events (
    global_position bigint NOT NULL, stream_id text NOT NULL, stream_version bigint NOT NULL,
    event_id uuid NOT NULL, event_type text NOT NULL, data jsonb NOT NULL, metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX ON bench.floor_events (global_position);
CREATE UNIQUE INDEX ON bench.floor_events (stream_id, stream_version);
CREATE UNIQUE INDEX ON bench.floor_events (event_id);
CREATE INDEX ON bench.floor_events ((split_part(stream_id, '-', 1)), global_position);
CREATE FUNCTION bench.local_floor(data jsonb) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    id uuid := gen_random_uuid();
    r jsonb;
    results jsonb[] := '{}';
BEGIN
    FOR i IN 1 .. 5 LOOP
        BEGIN
            r := bench.noop(id, data);
        EXCEPTION WHEN OTHERS THEN
            RAISE;
        END;
        results := results || r;
    END LOOP;
    INSERT INTO bench.floor_sagas (saga_id, saga_type, status, data) VALUES (id, 'local5', 'completed', data);
    INSERT INTO bench.floor_steps (saga_id, step_no, name, status, result)
    SELECT id, i, 's' || i, 'completed', results[i] FROM generate_series(1, 5) AS i;
    INSERT INTO bench.floor_events (global_position, stream_id, stream_version, event_id, event_type, data)
    SELECT nextval('bench.floor_position'), 'saga-' || id, v, gen_random_uuid(),
           CASE v WHEN 1 THEN 'SagaStarted' WHEN 7 THEN 'SagaCompleted' ELSE 'SagaStepCompleted' END,
           jsonb_build_object('step', v)
      FROM generate_series(1, 7) AS v;
    RETURN id;
END $$;

-- The timer case: one step, due at the time the saga data holds
SELECT event_store.define_saga('timer', '{"steps": [{"name": "wait", "until": "due"}]}');
CREATE PROCEDURE bench.start_timers(n int, due timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        PERFORM event_store.start_saga('timer', jsonb_build_object('n', i, 'due', due));
        IF i % 1000 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;
SQL

RESULTS=()
FAILED=0

# ---------------------------------------------------------------------------
# external steps
# ---------------------------------------------------------------------------
# external_round SIDE ROUND: start COUNT sagas, drive them; prints
# "start_secs drive_secs executions cpu_ticks"
external_round() {
	local side=$1 round=$2 start proc t0 s_secs d_secs c0 c1 n0 n1 i failed=0
	if [[ $side == es ]]; then start=bench.start proc=bench.worker; else start=bench.base_start proc=bench.base_worker; fi
	# the tables that hold rows (an empty table vacuumed would be planned as
	# empty for as long as no ANALYZE tells otherwise)
	tables=$("${PSQL[@]}" -Atc "SELECT string_agg(c.oid::regclass::text, ', ') FROM pg_class c
	         WHERE c.relnamespace IN ('event_store'::regnamespace, 'bench'::regnamespace)
	           AND c.relkind = 'r' AND pg_relation_size(c.oid) > 0")
	[[ -z "$tables" ]] || "${PSQL[@]}" -c "VACUUM ANALYZE $tables" >/dev/null
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	# (500 per session, as clients would: a session's plans are made for the
	# tables as they are when it begins, and its statistics reach autovacuum
	# when it is idle)
	t0=$(now_s)
	for ((k = 0; k < COUNT; k += 500)); do
		"${PSQL[@]}" -c "CALL $start($((COUNT - k < 500 ? COUNT - k : 500)), $round)"
	done
	s_secs=$(secs_since "$t0")
	n0=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.executions")
	sleep 0.1
	c0=$(cluster_cpu_ticks)
	t0=$(now_s)
	for i in $(seq 1 "$WORKERS"); do
		"${PSQL[@]}" -c "CALL $proc('w$i', $BATCH, '$LEASE',
		                   clock_timestamp() + interval '$TIMEOUT seconds', $SEED / 1000.0 + $i / 100.0 + $round / 10.0)" \
			>"$WORK/$side-worker$i.log" 2>&1 &
		WORKER_PIDS+=($!)
	done
	for i in "${!WORKER_PIDS[@]}"; do
		if ! wait "${WORKER_PIDS[$i]}"; then
			log "$side worker w$((i + 1)) failed:"
			cat "$WORK/$side-worker$((i + 1)).log" >&2
			failed=1
		fi
	done
	WORKER_PIDS=()
	d_secs=$(secs_since "$t0")
	sleep 0.1
	c1=$(cluster_cpu_ticks)
	[[ $failed -eq 0 ]] || die "a worker failed"
	n1=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.executions")
	echo "$s_secs $d_secs $((n1 - n0)) $((c1 - c0))"
}

if has_case external; then
	log "== external: $COUNT sagas per round, $WORKERS workers (batch $BATCH, lease '$LEASE'), rounds es base base es x $ROUNDS"
	declare -a es_rates=() base_rates=() es_steps=() base_steps=() es_starts=() base_starts=()
	es_ticks=0 es_execs=0 base_ticks=0 base_execs=0 round=0
	for ((p = 0; p < ROUNDS; p++)); do
		for side in es base base es; do
			round=$((round + 1))
			read -r s_secs d_secs execs ticks < <(external_round "$side" "$round")
			log "   round $round ($side): start $s_secs s, driving $d_secs s, $execs step executions"
			if [[ $side == es ]]; then
				es_rates+=("$(rate "$COUNT" "$d_secs")"); es_steps+=("$(rate "$execs" "$d_secs")")
				es_starts+=("$(rate "$COUNT" "$s_secs")")
				es_ticks=$((es_ticks + ticks)); es_execs=$((es_execs + execs))
			else
				base_rates+=("$(rate "$COUNT" "$d_secs")"); base_steps+=("$(rate "$execs" "$d_secs")")
				base_starts+=("$(rate "$COUNT" "$s_secs")")
				base_ticks=$((base_ticks + ticks)); base_execs=$((base_execs + execs))
			fi
		done
	done

	log "== checking"
	# each check: a name and a query returning the number of violations
	declare -a CHECKS=(
	"every saga ended completed or compensated|
	 SELECT count(*) FROM event_store.sagas WHERE saga_type = 'order' AND status NOT IN ('completed', 'compensated')"
	"all sagas are there|
	 SELECT abs(count(*) - $COUNT * $ROUNDS * 2) FROM event_store.sagas WHERE saga_type = 'order'"
	"baseline: every job ended completed or compensated, all are there|
	 SELECT count(*) FILTER (WHERE status NOT IN ('completed', 'compensated')) + abs(count(*) - $COUNT * $ROUNDS * 2)
	   FROM bench.jobs"
	"no step handed out again after its completion|
	 SELECT count(*) FROM bench.executions e
	   JOIN bench.executions d ON (d.saga_id, d.step, d.kind) = (e.saga_id, e.step, e.kind)
	        AND d.outcome = 'completed'
	  WHERE e.claimed_at > d.reported_at"
	"no step completed twice|
	 SELECT count(*) FROM (SELECT 1 FROM bench.executions WHERE outcome = 'completed'
	                        GROUP BY saga_id, step, kind HAVING count(*) > 1) x"
	"attempts handed out are 1, 2, 3 without gaps|
	 SELECT count(*) FROM (SELECT saga_id, step, kind FROM bench.executions GROUP BY 1, 2, 3
	                        HAVING max(attempt) <> count(*) OR max(attempt) > 3) x"
	"no compensation without its completed forward step|
	 SELECT count(*) FROM bench.executions c
	  WHERE c.kind = 'compensation'
	    AND NOT EXISTS (SELECT 1 FROM bench.executions a
	                     WHERE (a.saga_id, a.step) = (c.saga_id, c.step)
	                       AND a.kind = 'action' AND a.outcome = 'completed')"
	"every completed step of a compensated saga was compensated|
	 SELECT count(*) FROM bench.executions a
	   LEFT JOIN event_store.sagas s USING (saga_id) LEFT JOIN bench.jobs j USING (saga_id)
	  WHERE COALESCE(s.status, j.status) = 'compensated' AND a.kind = 'action' AND a.outcome = 'completed'
	    AND NOT EXISTS (SELECT 1 FROM bench.executions c
	                     WHERE (c.saga_id, c.step) = (a.saga_id, a.step)
	                       AND c.kind = 'compensation' AND c.outcome = 'completed')"
	"a completed saga has all three steps completed (and nothing compensated)|
	 SELECT count(*) FROM (SELECT saga_id, status FROM event_store.sagas WHERE saga_type = 'order'
	                       UNION ALL SELECT saga_id, status FROM bench.jobs) s
	  WHERE s.status = 'completed'
	    AND ((SELECT count(*) FROM bench.executions a
	           WHERE a.saga_id = s.saga_id AND a.kind = 'action' AND a.outcome = 'completed') <> 3
	      OR EXISTS (SELECT 1 FROM bench.executions c WHERE c.saga_id = s.saga_id AND c.kind = 'compensation'))"
	"step statuses agree with the executions|
	 SELECT count(*) FROM event_store.saga_steps st JOIN event_store.sagas s USING (saga_id)
	  WHERE s.saga_type = 'order' AND st.status <> CASE
	          WHEN EXISTS (SELECT 1 FROM bench.executions c WHERE (c.saga_id, c.step, c.kind, c.outcome)
	                                                          = (st.saga_id, st.name, 'compensation', 'completed'))
	               THEN 'compensated'
	          WHEN EXISTS (SELECT 1 FROM bench.executions a WHERE (a.saga_id, a.step, a.kind, a.outcome)
	                                                          = (st.saga_id, st.name, 'action', 'completed'))
	               THEN 'completed'
	          WHEN EXISTS (SELECT 1 FROM bench.executions a WHERE (a.saga_id, a.step) = (st.saga_id, st.name))
	               THEN 'failed'
	          ELSE 'pending' END
	    -- a step the orchestrator failed on a lease expiry was never reported
	    AND NOT (st.status = 'failed' AND st.last_error = 'lease expired')"
	"every saga's stream ends with SagaCompleted or SagaCompensated|
	 SELECT count(*) FROM event_store.sagas s
	  WHERE s.saga_type = 'order'
	    AND (SELECT event_type FROM event_store.read_stream('saga-' || s.saga_id, backward => true, max_count => 1))
	        <> CASE s.status WHEN 'completed' THEN 'SagaCompleted' ELSE 'SagaCompensated' END"
	)
	for check in "${CHECKS[@]}"; do
		name=${check%%|*}
		query=${check#*|}
		n=$("${PSQL[@]}" -Atc "$query")
		if [[ "$n" == 0 ]]; then
			printf '  ok    %s\n' "$name"
		else
			printf '  FAIL  %s (%s violations)\n' "$name" "$n"
			FAILED=1
		fi
	done
	echo
	echo "external: $COUNT sagas of 3 external steps per round, $WORKERS workers, batch $BATCH, lease '$LEASE'"
	"${PSQL[@]}" -c "SELECT side, kind, outcome, count(*) AS executions FROM bench.executions
	                 GROUP BY side, kind, outcome ORDER BY side, kind, outcome"
	"${PSQL[@]}" -c "SELECT 'es' AS side, status, count(*) AS sagas FROM event_store.sagas
	                  WHERE saga_type = 'order' GROUP BY status
	                 UNION ALL SELECT 'base', status, count(*) FROM bench.jobs GROUP BY status ORDER BY 1, 2"
	es_rate=$(median "${es_rates[@]}"); base_rate=$(median "${base_rates[@]}")
	es_cpu=$(us_per "$es_ticks" "$es_execs"); base_cpu=$(us_per "$base_ticks" "$base_execs")
	printf 'sagas/s per round:  es %s | baseline %s\n' "${es_rates[*]}" "${base_rates[*]}"
	printf 'steps/s per round:  es %s | baseline %s\n' "${es_steps[*]}" "${base_steps[*]}"
	printf 'starts/s per round: es %s | baseline %s\n' "${es_starts[*]}" "${base_starts[*]}"
	printf 'server CPU per step execution: es %s us | baseline %s us\n' "$es_cpu" "$base_cpu"
	r=$(ratio "$es_rate" "$base_rate")
	RESULTS+=("$(printf '%-28s | %10s | %10s | %6s | %8s | %8s | %6s | %s' "external, sagas/s" \
		"$es_rate" "$base_rate" "$r" "$es_cpu" "$base_cpu" "$(ratio "$base_cpu" "$es_cpu")" "$(verdict "$r" 0.5)")")
fi

# ---------------------------------------------------------------------------
# local steps
# ---------------------------------------------------------------------------
# pgbench_secs SCRIPT SECS LOGNAME: prints "tps transactions"
pgbench_secs() {
	local out="$WORK/$3.log" jobs=$((CLIENTS < NPROC ? CLIENTS : NPROC))
	"$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$jobs" -T "$2" -f "$1" >"$out" 2>&1 ||
		{ tail -n 20 "$out" >&2; die "pgbench failed for $1"; }
	if grep -q '^number of failed transactions: [1-9]' "$out"; then
		tail -n 20 "$out" >&2
		die "pgbench reported failed transactions for $1"
	fi
	awk '/^tps = / { t = $3 } /^number of transactions actually processed:/ { n = $6 }
	     END { print t, n }' "$out"
}

if has_case local; then
	log "== local: 5-step saga of no-op local functions, $CLIENTS clients"
	echo "SELECT event_store.start_saga('local5', '{\"n\": 1}');" >"$WORK/local_es.sql"
	echo "SELECT bench.local_by_hand('{\"n\": 1}');" >"$WORK/local_base.sql"
	echo "SELECT bench.local_floor('{\"n\": 1}');" >"$WORK/local_floor.sql"
	seg=$((LOCAL_SECONDS / 4 > 1 ? LOCAL_SECONDS / 4 : 1))
	pgbench_secs "$WORK/local_es.sql" 2 warmup-es >/dev/null
	pgbench_secs "$WORK/local_base.sql" 2 warmup-base >/dev/null
	pgbench_secs "$WORK/local_floor.sql" 2 warmup-floor >/dev/null
	declare -a les=() lbase=() lfloor=()
	les_ticks=0 les_n=0 lbase_ticks=0 lbase_n=0 lfloor_ticks=0 lfloor_n=0 i=0
	for side in es base floor floor base es es floor base base es floor; do
		i=$((i + 1))
		"${PSQL[@]}" -c CHECKPOINT >/dev/null
		sleep 0.1
		c0=$(cluster_cpu_ticks)
		read -r tps n < <(pgbench_secs "$WORK/local_$side.sql" "$seg" "local-$side-$i")
		sleep 0.1
		c1=$(cluster_cpu_ticks)
		if [[ $side == es ]]; then
			les+=("$tps"); les_ticks=$((les_ticks + c1 - c0)); les_n=$((les_n + n))
		elif [[ $side == floor ]]; then
			lfloor+=("$tps"); lfloor_ticks=$((lfloor_ticks + c1 - c0)); lfloor_n=$((lfloor_n + n))
		else
			lbase+=("$tps"); lbase_ticks=$((lbase_ticks + c1 - c0)); lbase_n=$((lbase_n + n))
		fi
	done
	bad=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.sagas WHERE saga_type = 'local5' AND status <> 'completed'")
	[[ $bad == 0 ]] || { echo "  FAIL  $bad local sagas did not complete"; FAILED=1; }
	es_tps=$(median "${les[@]}"); base_tps=$(median "${lbase[@]}"); floor_tps=$(median "${lfloor[@]}")
	es_cpu=$(us_per "$les_ticks" "$les_n"); base_cpu=$(us_per "$lbase_ticks" "$lbase_n")
	floor_cpu=$(us_per "$lfloor_ticks" "$lfloor_n")
	echo
	printf 'local: tps per segment: es %s | baseline %s | contract floor %s (x5 = steps/s)\n' \
		"${les[*]}" "${lbase[*]}" "${lfloor[*]}"
	printf 'server CPU per saga (5 steps): es %s us | baseline %s us | contract floor %s us\n' \
		"$es_cpu" "$base_cpu" "$floor_cpu"
	r=$(ratio "$es_tps" "$base_tps")
	RESULTS+=("$(printf '%-28s | %10.0f | %10.0f | %6s | %8s | %8s | %6s | %s' "local 5 steps, steps/s" \
		"$(awk -v t="$es_tps" 'BEGIN { print t * 5 }')" "$(awk -v t="$base_tps" 'BEGIN { print t * 5 }')" \
		"$r" "$es_cpu" "$base_cpu" "$(ratio "$base_cpu" "$es_cpu")" "$(verdict "$r" 0.5)")")
	# the same ratio for the contract's least writes: the most any
	# implementation could reach (no verdict: it is not event_store)
	r=$(ratio "$floor_tps" "$base_tps")
	RESULTS+=("$(printf '%-28s | %10.0f | %10.0f | %6s | %8s | %8s | %6s | %s' "local, contract floor" \
		"$(awk -v t="$floor_tps" 'BEGIN { print t * 5 }')" "$(awk -v t="$base_tps" 'BEGIN { print t * 5 }')" \
		"$r" "$floor_cpu" "$base_cpu" "$(ratio "$base_cpu" "$floor_cpu")" "-")")
fi

# ---------------------------------------------------------------------------
# timers
# ---------------------------------------------------------------------------
if has_case timers; then
	log "== timers: $TIMERS sagas, one timer step each, all due at the same instant"
	# due well after the starts end: at 250 starts/s and more, with room
	lead=$(( TIMERS / 250 + 5 ))
	due=$("${PSQL[@]}" -Atc "SELECT date_trunc('second', clock_timestamp()) + interval '$lead seconds'")
	t0=$(now_s)
	for ((k = 0; k < TIMERS; k += 1000)); do
		"${PSQL[@]}" -c "CALL bench.start_timers($((TIMERS - k < 1000 ? TIMERS - k : 1000)), '$due')"
	done
	s_secs=$(secs_since "$t0")
	# (as autovacuum would soon after so many new rows: plans fit the tables)
	"${PSQL[@]}" -c "VACUUM ANALYZE event_store.sagas, event_store.saga_steps"
	late=$("${PSQL[@]}" -Atc "SELECT clock_timestamp() >= '$due'::timestamptz")
	[[ $late == f ]] || die "starting the timer sagas took past their due time; lower SAGA_TIMERS"
	c0=$(cluster_cpu_ticks)
	# wait until they have all completed (the worker completes them: this only looks)
	deadline=$(( $(date +%s) + lead + 120 ))
	while :; do
		left=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.sagas WHERE saga_type = 'timer' AND status = 'running'")
		[[ $left == 0 ]] && break
		(( $(date +%s) < deadline )) || die "$left timer sagas still running 120 s after their due time"
		sleep 0.5
	done
	c1=$(cluster_cpu_ticks)
	read -r p50 p99 pmax early n_done < <("${PSQL[@]}" -At -F ' ' -c "
		WITH d AS (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - '$due'::timestamptz) AS s,
		                  status
		             FROM event_store.sagas WHERE saga_type = 'timer')
		SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY s)::numeric, 3),
		       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY s)::numeric, 3),
		       round(max(s)::numeric, 3), count(*) FILTER (WHERE s < 0),
		       count(*) FILTER (WHERE status = 'completed')
		  FROM d")
	[[ $early == 0 ]] || { echo "  FAIL  $early timer sagas completed before their due time"; FAILED=1; }
	[[ $n_done == "$TIMERS" ]] || { echo "  FAIL  $n_done of $TIMERS timer sagas completed"; FAILED=1; }
	echo
	printf 'timers: %s sagas started in %.1f s, due at %s; completed after the due time: p50 %s s, p99 %s s, max %s s\n' \
		"$TIMERS" "$s_secs" "$due" "$p50" "$p99" "$pmax"
	printf 'server CPU per timer from the end of the starts to the last completion: %s us\n' "$(us_per "$((c1 - c0))" "$TIMERS")"
	RESULTS+=("$(printf '%-28s | %10s | %10s | %6s | %8s | %8s | %6s | %s' "timers, p99 delay (s)" \
		"$p99" "-" "-" "$(us_per "$((c1 - c0))" "$TIMERS")" "-" "-" \
		"$(awk -v m="$p99" 'BEGIN { print (m <= 2 ? "<= 2 s ok" : "<= 2 s MISSED") }')")")
fi

echo
printf '%-28s | %10s | %10s | %6s | %8s | %8s | %6s | %s\n' case event_store baseline ratio "es cpu" "base cpu" "cpu r." target
printf '%s\n' "${RESULTS[@]}"
echo "(cpu = server CPU us per step execution (external), per saga (local), per timer (timers); cpu r. = base / es)"

if [[ $FAILED -ne 0 ]]; then
	die "some checks failed"
fi
echo "all checks passed"
