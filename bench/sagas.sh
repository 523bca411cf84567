#!/usr/bin/env bash
#
# bench/sagas.sh - load check of the saga orchestrator.
#
# Starts a throwaway cluster (background worker on), defines a saga of three
# external steps (reserve -> charge -> ship, one after the other, each
# compensated externally), starts SAGA_COUNT sagas and drives them with
# SAGA_WORKERS concurrent worker connections.  Each worker loops:
# claim_saga_steps (a batch, under a lease, in its own transaction), then
# for every claimed step, in a transaction of its own, records the execution
# in bench.executions and reports the outcome:
#   actions:        4% fail retryable, 4% fail for good (non-retryable),
#                   2% are abandoned (the worker "dies": the lease expires and
#                   the background worker hands the step out again), the
#                   rest complete;
#   compensations:  10% fail retryable, except on their last attempt (a
#                   compensation is never given up), the rest complete.
# A report the orchestrator refuses (55000: the lease expired meanwhile) is
# recorded as "refused".  When every saga has ended, the script checks:
#   - every saga ended completed or compensated;
#   - no step was handed out twice for the same attempt, none was handed
#     out again after its completion, and none completed twice (unique keys on
#     bench.executions, re-checked afterwards);
#   - no compensation ran without its completed forward step, and every
#     completed step of a compensated saga was compensated;
#   - the orchestrator's step statuses agree with the executions log, and
#     every saga's stream ends with SagaCompleted or SagaCompensated;
# and prints sagas/s and steps/s (executions handled per second) of the
# driving phase, and the start rate.  Exit status 0 only when every check
# holds.
#
# Environment:
#   SAGA_COUNT       sagas to run (default 10000; e.g. 500 for a smoke run)
#   SAGA_WORKERS     worker connections (default 4)
#   SAGA_BATCH       steps claimed per claim_saga_steps call (default 10)
#   SAGA_LEASE       lease of a claim (default '3 seconds')
#   SAGA_TIMEOUT     seconds after which the workers give up (default 1800)
#   SAGA_SEED        seed of the workers' random choices (default 42)
#   SAGA_PORT        port of the throwaway cluster (default 5579)
#   BENCH_SKIP_BUILD set to 1 to use the installed extension as it is
#   PG_CONFIG        pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

COUNT=${SAGA_COUNT:-10000}
WORKERS=${SAGA_WORKERS:-4}
BATCH=${SAGA_BATCH:-10}
LEASE=${SAGA_LEASE:-3 seconds}
TIMEOUT=${SAGA_TIMEOUT:-1800}
SEED=${SAGA_SEED:-42}
PORT=${SAGA_PORT:-5579}
PG_CONFIG=${PG_CONFIG:-pg_config}

log() { printf '%s\n' "$*" >&2; }
die() { log "sagas.sh: $*"; exit 1; }

[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || die "SAGA_COUNT must be a positive integer"
[[ "$WORKERS" =~ ^[1-9][0-9]*$ ]] || die "SAGA_WORKERS must be a positive integer"
[[ "$BATCH" =~ ^[1-9][0-9]*$ ]] || die "SAGA_BATCH must be a positive integer"

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
synchronous_commit = off"

# ---------------------------------------------------------------------------
# the saga, the executions log and the worker
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

-- One row per step execution a worker was handed: the primary key refuses
-- a step handed out twice for the same attempt, the partial unique index a
-- second completion of a step (or of its compensation).
CREATE TABLE bench.executions (
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

-- A worker: claim a batch, then execute each claimed step in a transaction
-- of its own (record + report), until no saga is active or the deadline.
CREATE PROCEDURE bench.worker(w text, batch int, lease interval, deadline timestamptz, seed float8)
LANGUAGE plpgsql AS $$
DECLARE
    claimed bench.claim[];
    c bench.claim;
    r float8;
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
            r := random();
            BEGIN
                IF c.kind = 'action' THEN
                    IF r < 0.04 THEN
                        outcome := 'failed_retryable';
                        PERFORM event_store.fail_saga_step(c.saga_id, c.step, 'transient failure', true);
                    ELSIF r < 0.08 THEN
                        outcome := 'failed_final';
                        PERFORM event_store.fail_saga_step(c.saga_id, c.step, 'permanent failure', false);
                    ELSIF r < 0.10 THEN
                        outcome := 'abandoned';      -- the lease will expire
                    ELSE
                        outcome := 'completed';
                        PERFORM event_store.complete_saga_step(c.saga_id, c.step,
                            jsonb_build_object(c.step || '_by', w, c.step || '_attempt', c.attempt));
                    END IF;
                ELSE
                    IF r < 0.10 AND c.attempt < 3 THEN
                        outcome := 'failed_retryable';
                        PERFORM event_store.fail_saga_step(c.saga_id, c.step, 'transient failure', true);
                    ELSE
                        outcome := 'completed';
                        PERFORM event_store.complete_saga_step(c.saga_id, c.step);
                    END IF;
                END IF;
            EXCEPTION WHEN object_not_in_prerequisite_state THEN
                outcome := 'refused';
            END;
            INSERT INTO bench.executions (saga_id, step, kind, attempt, worker, outcome, claimed_at)
            VALUES (c.saga_id, c.step, c.kind, c.attempt, w, outcome, c.claimed_at);
            COMMIT;
        END LOOP;
    END LOOP;
END $$;

-- Start n sagas, committing every 500
CREATE PROCEDURE bench.start(n int)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        PERFORM event_store.start_saga('order', jsonb_build_object('order', i));
        IF i % 500 = 0 THEN
            COMMIT;
        END IF;
    END LOOP;
END $$;
SQL

now_s() { date +%s.%N; }

log "== starting $COUNT sagas"
t0=$(now_s)
"${PSQL[@]}" -c "CALL bench.start($COUNT)"
t1=$(now_s)
start_secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')

log "== driving them with $WORKERS workers (batch $BATCH, lease '$LEASE')"
t0=$(now_s)
for i in $(seq 1 "$WORKERS"); do
	"${PSQL[@]}" -c "CALL bench.worker('w$i', $BATCH, '$LEASE',
	                   clock_timestamp() + interval '$TIMEOUT seconds', $SEED / 1000.0 + $i / 100.0)" \
		>"$WORK/worker$i.log" 2>&1 &
	WORKER_PIDS+=($!)
done
failed=0
for i in "${!WORKER_PIDS[@]}"; do
	if ! wait "${WORKER_PIDS[$i]}"; then
		log "worker w$((i + 1)) failed:"
		cat "$WORK/worker$((i + 1)).log" >&2
		failed=1
	fi
done
WORKER_PIDS=()
t1=$(now_s)
drive_secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')
[[ $failed -eq 0 ]] || die "a worker failed"

# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------
log "== checking"
# each check: a name and a query returning the number of violations
declare -a CHECKS=(
"every saga ended completed or compensated|
 SELECT count(*) FROM event_store.sagas WHERE status NOT IN ('completed', 'compensated')"
"all sagas are there|
 SELECT abs(count(*) - $COUNT) FROM event_store.sagas"
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
 SELECT count(*) FROM bench.executions a JOIN event_store.sagas s USING (saga_id)
  WHERE s.status = 'compensated' AND a.kind = 'action' AND a.outcome = 'completed'
    AND NOT EXISTS (SELECT 1 FROM bench.executions c
                     WHERE (c.saga_id, c.step) = (a.saga_id, a.step)
                       AND c.kind = 'compensation' AND c.outcome = 'completed')"
"a completed saga has all three steps completed (and nothing compensated)|
 SELECT count(*) FROM event_store.sagas s
  WHERE s.status = 'completed'
    AND ((SELECT count(*) FROM bench.executions a
           WHERE a.saga_id = s.saga_id AND a.kind = 'action' AND a.outcome = 'completed') <> 3
      OR EXISTS (SELECT 1 FROM bench.executions c WHERE c.saga_id = s.saga_id AND c.kind = 'compensation'))"
"step statuses agree with the executions|
 SELECT count(*) FROM event_store.saga_steps st
  WHERE st.status <> CASE
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
  WHERE (SELECT event_type FROM event_store.read_stream('saga-' || s.saga_id, backward => true, max_count => 1))
        <> CASE s.status WHEN 'completed' THEN 'SagaCompleted' ELSE 'SagaCompensated' END"
)
bad=0
for check in "${CHECKS[@]}"; do
	name=${check%%|*}
	query=${check#*|}
	n=$("${PSQL[@]}" -Atc "$query")
	if [[ "$n" == 0 ]]; then
		printf '  ok    %s\n' "$name"
	else
		printf '  FAIL  %s (%s violations)\n' "$name" "$n"
		bad=1
	fi
done

# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------
executions=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.executions")
echo
echo "sagas: $COUNT of 3 external steps, $WORKERS workers, batch $BATCH, lease '$LEASE'"
"${PSQL[@]}" -c "SELECT status, count(*) AS sagas FROM event_store.sagas GROUP BY status ORDER BY status"
"${PSQL[@]}" -c "SELECT kind, outcome, count(*) AS executions FROM bench.executions
                 GROUP BY kind, outcome ORDER BY kind, outcome"
printf 'start:   %s sagas in %.1f s = %s sagas/s\n' "$COUNT" "$start_secs" "$(rate "$COUNT" "$start_secs")"
printf 'driving: %s step executions in %.1f s = %s steps/s, %s sagas/s\n' \
	"$executions" "$drive_secs" "$(rate "$executions" "$drive_secs")" "$(rate "$COUNT" "$drive_secs")"

if [[ $bad -ne 0 ]]; then
	die "some checks failed"
fi
echo "all checks passed"
