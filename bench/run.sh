#!/usr/bin/env bash
#
# bench/run.sh - pgbench benchmarks of event_store against a bare baseline.
#
# Builds and installs the extension, starts a throwaway cluster with
# shared_preload_libraries = 'event_store', loads the same ~200k events into
# event_store.events and into a plain table of the same shape and indexes,
# then runs every case on both, back to back, and prints ops/s and the ratio
# event_store / baseline.  The table is also written to bench/results/latest.txt.
#
# Environment:
#   BENCH_SECONDS   measured seconds per side of a case, run in segments
#                   interleaved with the other side (default 12; 2 for a smoke run)
#   BENCH_WARMUP    warm-up seconds per side before the measured halves (default: BENCH_SECONDS/5, at least 1)
#   BENCH_CLIENTS   clients of the multi-client cases (default 8)
#   BENCH_PORT      port of the throwaway cluster (default 5540)
#   BENCH_STREAMS   streams in the fixture (default 10000)
#   BENCH_PER_STREAM events per stream in the fixture (default 20)
#   BENCH_CASES     space-separated subset of: append_one batch10 batch100 hot
#                   read_stream read_all followers categories aggregate upcast
#                   snapshot_hook inline_projection async_catchup lag consume
#                   parallel_projections append_with_consumers read_your_writes
#                   (default: all)
#   BENCH_FOLLOW_EVENTS events appended by the writers of the followers case (default 40000)
#   BENCH_AGG_EVENTS length of the aggregate case's streams (default 10000)
#   BENCH_LAG_RATE  appends/s (pgbench -R) of the lag case (default 2000)
#   BENCH_RYW_RATE  appends/s (pgbench -R) of the read_your_writes case (default 2000)
#   BENCH_PAR_REPEATS rounds of parallel_projections (default 3)
#   BENCH_CONSUME_SUBS subscriptions of the consume case (default: enough for
#                   8,000 claims/s during a segment or warm-up)
#   BENCH_SKIP_BUILD set to 1 to use the installed extension as it is
#   BENCH_CATCHUP_REPEATS rounds of async_catchup (default 7; median of the rounds' ratios)
#   BENCH_AMCHECK   set to 1 to verify event_store.events and its indexes with
#                   amcheck after the runs (adds a minute or so)
#   PG_CONFIG       pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

SECONDS_PER_RUN=${BENCH_SECONDS:-12}
WARMUP=${BENCH_WARMUP:-$(( SECONDS_PER_RUN / 5 > 1 ? SECONDS_PER_RUN / 5 : 1 ))}
CLIENTS=${BENCH_CLIENTS:-8}
PORT=${BENCH_PORT:-5540}
STREAMS=${BENCH_STREAMS:-10000}
PER_STREAM=${BENCH_PER_STREAM:-20}
READER_EVENTS=1000
# async_catchup runs before the appending cases: it then covers the fixture only
# (so does parallel_projections, which covers the 'bench' category)
CASES=${BENCH_CASES:-"read_stream read_all async_catchup parallel_projections consume append_one batch10 batch100 hot followers categories aggregate upcast snapshot_hook inline_projection append_with_consumers read_your_writes lag"}
PG_CONFIG=${PG_CONFIG:-pg_config}
NPROC=$(nproc)

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/latest.txt"
LOG_DIR="$RESULTS_DIR/logs"

log() { printf '%s\n' "$*" >&2; }
die() { log "run.sh: $*"; exit 1; }

# ---------------------------------------------------------------------------
# build and install
# ---------------------------------------------------------------------------
# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build

# what was measured: the commit, and whether the extension's sources differed
BUILD_DESC="event_store $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
if ! git -C "$REPO_DIR" diff --quiet HEAD -- src sql Makefile event_store.control 2>/dev/null; then
	BUILD_DESC="$BUILD_DESC with uncommitted changes"
fi
[[ "${BENCH_SKIP_BUILD:-0}" == 1 ]] && BUILD_DESC="$BUILD_DESC (not rebuilt: the installed library was used)"

# ---------------------------------------------------------------------------
# throwaway cluster
# ---------------------------------------------------------------------------
bench_cluster_start es-bench BENCH_PORT "shared_buffers = 512MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
# no background vacuum/analyze landing on one side of a pair: the fixture is
# vacuumed and analysed explicitly before the runs
autovacuum = off"

# ---------------------------------------------------------------------------
# fixture
# ---------------------------------------------------------------------------
log "== loading $((STREAMS * PER_STREAM)) events in $STREAMS streams (+ $READER_EVENTS in reader-1)"
load_start=$(date +%s)
"${PSQL[@]}" -v streams="$STREAMS" -v per_stream="$PER_STREAM" \
	-v reader_events="$READER_EVENTS" -f "$BENCH_DIR/sql/setup.sql" >&2
log "   loaded in $(( $(date +%s) - load_start )) s"

TOTAL_ROWS=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events")
# read_all starts at a random position and always gets a full page
MAXPOS=$(( TOTAL_ROWS - 1000 ))

# The batch documents: one literal per size, the same text on both sides.
SCRIPTS="$WORK/scripts"
mkdir -p "$SCRIPTS"
cp "$BENCH_DIR"/pgbench/*.sql "$SCRIPTS/"
for n in 10 100; do
	doc=$("${PSQL[@]}" -Atc "
		SELECT jsonb_agg(jsonb_build_object(
		           'type', 'BenchEvent',
		           'data', jsonb_build_object('n', i, 'note', 'benchmark payload'),
		           'metadata', jsonb_build_object('batch', $n)) ORDER BY i)
		  FROM generate_series(1, $n) AS i")
	for side in es base; do
		# the document has no single quotes, so it is a valid SQL literal
		awk -v doc="$doc" '{
			while ((i = index($0, "@BATCH@")) > 0)
				$0 = substr($0, 1, i - 1) doc substr($0, i + 7)
			print
		}' \
			"$BENCH_DIR/pgbench/${side}_append_batch.sql.in" >"$SCRIPTS/${side}_append_batch$n.sql"
	done
done

# ---------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR"/*.log "$LOG_DIR/segments.txt"

# pgbench_run, run_pgbench, measure and pair (the interleaved pairs) are in lib.sh

ROWS=()
TARGETS_MET=0
TARGETS_TOTAL=0
SYNC_MET=0
SYNC_TOTAL=0
# Each side runs its measured time in segments, interleaved with the other
# side's: E B B E (2 segments per side) or E B B E B E E B (4 segments, when
# there are at least 2 seconds per segment), every segment after a CHECKPOINT.
if (( SECONDS_PER_RUN >= 8 )); then
	SEGMENTS=4
	ORDER=(es base base es base es es base)
	# a pair with a floor side (PAIR_FLOOR, see lib.sh)
	ORDER_FLOOR=(es base floor floor base es es floor base base es floor)
else
	SEGMENTS=2
	ORDER=(es base base es)
	ORDER_FLOOR=(es base floor floor base es)
fi
SEGMENT=$(( SECONDS_PER_RUN / SEGMENTS > 1 ? SECONDS_PER_RUN / SEGMENTS : 1 ))

# ---------------------------------------------------------------------------
# cases beyond one pgbench pair: followers, aggregates, projections
# ---------------------------------------------------------------------------
NOTES=()
FOLLOW_EVENTS=${BENCH_FOLLOW_EVENTS:-40000}
AGG_EVENTS=${BENCH_AGG_EVENTS:-10000}
UPCAST_EVENTS=1000
LAG_RATE=${BENCH_LAG_RATE:-2000}
LAG_CLIENTS=4
AGG_LOADED=0
PROJ_LOADED=0

# pgbench_opts LOGNAME SCRIPT CLIENTS [pgbench options] -> prints tps
# (synchronous_commit = off, like the primary figures of the pairs)
pgbench_opts() {
	local logname=$1 script=$2 clients=$3
	shift 3
	pgbench_run "$logname" "$script" "$clients" off "$@"
}

median() {
	printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 }
		END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# judge RATIO TARGET: sets VERDICT and counts the target (synchronous_commit = off)
judge() {
	local ratio=$1 target=$2
	if [[ "$target" == - ]]; then
		VERDICT="-"
		return
	fi
	TARGETS_TOTAL=$((TARGETS_TOTAL + 1))
	if awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r >= t) }'; then
		VERDICT=">= $target ok"
		TARGETS_MET=$((TARGETS_MET + 1))
	else
		VERDICT=">= $target MISS"
	fi
}

# add_row NAME CLIENTS ES_TPS BASE_TPS RATIO UNIT ES_ITEMS BASE_ITEMS VERDICT
add_row() {
	ROWS+=("$(table_row "$1" "$2" off "$3" "$4" "$5" - - - - "$6" "$7" "$8" "$9")")
}

# wait_caught_up PROJECTION SECONDS: until its lag_events is 0
wait_caught_up() {
	local name=$1 limit=$2 i lag
	for ((i = 0; i < limit * 10; i++)); do
		lag=$("${PSQL[@]}" -Atc "SELECT lag_events FROM event_store.projection_status WHERE name = '$name'")
		[[ "$lag" == 0 ]] && return 0
		sleep 0.1
	done
	log "   projection $name still lags by $lag events after ${limit}s"
	return 1
}

ensure_aggregates() {
	if [[ $AGG_LOADED == 0 ]]; then
		"${PSQL[@]}" -v agg_events="$AGG_EVENTS" -v upcast_events="$UPCAST_EVENTS" \
			-f "$BENCH_DIR/sql/aggregates.sql" >&2
		AGG_LOADED=1
	fi
}

ensure_projections() {
	if [[ $PROJ_LOADED == 0 ]]; then
		"${PSQL[@]}" -f "$BENCH_DIR/sql/projections.sql" >&2
		PROJ_LOADED=1
	fi
}

# followers: CLIENTS writers append FOLLOW_EVENTS single events in total
# (pgbench -t), alone and then with 2 followers paging read_all; the
# followers must have seen exactly the positions written meanwhile.
case_followers() {
	local per=$(( FOLLOW_EVENTS / CLIENTS )) alone with h0 rc=0 status ratio
	"${PSQL[@]}" -f "$BENCH_DIR/sql/followers.sql" >&2
	log "   followers: $CLIENTS writers x $per appends, alone, then with 2 followers"
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	alone=$(pgbench_opts follow-alone es_append_follow.sql "$CLIENTS" -t "$per")
	h0=$("${PSQL[@]}" -Atc "SELECT event_store.head_position()")
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	followers_start "$h0"
	with=$(pgbench_opts follow-with es_append_follow.sql "$CLIENTS" -t "$per") || rc=1
	followers_finish "$h0" $((per * CLIENTS)) "$rc"
	status=$FOLLOW_STATUS
	NOTES+=("$FOLLOW_NOTE")
	ratio=$(awk -v a="${with:-0}" -v b="$alone" 'BEGIN { printf "%.3f", a / b }')
	add_row "append w/ 2 followers" "$CLIENTS" "${with:-0}" "$alone" "$ratio" "-" - - "check $status"
}

# inline_projection: append + a counter upsert written by hand in the same
# transaction (no projection defined), then the append alone with an inline
# projection doing that upsert; sequential, not interleaved.
case_inline_projection() {
	local i e_tps b_tps ratio check
	local -a b=() e=()
	ensure_projections
	log "   inline projection: hand-written upsert first, then the inline projection"
	pgbench_opts warmup-inline-hand base_append_inline_hand.sql "$CLIENTS" -T "$WARMUP" >/dev/null
	for ((i = 1; i <= SEGMENTS; i++)); do
		"${PSQL[@]}" -c CHECKPOINT >/dev/null
		b+=("$(pgbench_opts "base-inline-hand-$i" base_append_inline_hand.sql "$CLIENTS" -T "$SEGMENT")")
	done
	"${PSQL[@]}" -c "TRUNCATE bench.rm_inline" -c "SELECT event_store.create_projection('bench_inline',
		'bench.count_inline(event_store.event)', ARRAY['IpEvent'])" >/dev/null
	pgbench_opts warmup-inline-es es_append_inline.sql "$CLIENTS" -T "$WARMUP" >/dev/null
	for ((i = 1; i <= SEGMENTS; i++)); do
		"${PSQL[@]}" -c CHECKPOINT >/dev/null
		e+=("$(pgbench_opts "es-inline-$i" es_append_inline.sql "$CLIENTS" -T "$SEGMENT")")
	done
	check=$("${PSQL[@]}" -Atc "
		SELECT format('read model %s', CASE WHEN
		       (SELECT coalesce(sum(n), 0) FROM bench.rm_inline) =
		       (SELECT count(*) FROM event_store.events WHERE event_type = 'IpEvent')
		       THEN 'complete' ELSE 'INCOMPLETE' END)")
	"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_inline')" >/dev/null
	printf 'inline projection: event_store %s | baseline %s\n' "${e[*]}" "${b[*]}" >>"$LOG_DIR/segments.txt"
	e_tps=$(median "${e[@]}")
	b_tps=$(median "${b[@]}")
	ratio=$(awk -v a="$e_tps" -v b="$b_tps" 'BEGIN { printf "%.3f", a / b }')
	judge "$ratio" 0.9
	add_row "append + inline proj." "$CLIENTS" "$e_tps" "$b_tps" "$ratio" "-" - - "$VERDICT"
	NOTES+=("inline_projection: baseline (hand-written upsert) segments ${b[*]}, then projection segments ${e[*]}; $check")
}

# async_catchup: run_projections over the whole store with the worker off,
# against one INSERT ... GROUP BY computing the same read model.  Each side is
# timed by the server (clock_timestamp() around the statement) in a session
# that has just done the same work once (steady state, as in the long-lived
# worker; connection start-up and first-use costs are left out of both).
# CATCHUP_REPEATS rounds, each timing the baseline and then each handler from
# an empty read model; the ratio is the median of the rounds' ratios.
CATCHUP_REPEATS=${BENCH_CATCHUP_REPEATS:-7}

# timed_sql WARMUP SQL: in one session (no parallel workers), run WARMUP and a
# checkpoint, then print SQL's output and the seconds the server took for it
timed_sql() {
	PGOPTIONS="-c max_parallel_workers_per_gather=0" "${PSQL[@]}" -At <<SQL
\o /dev/null
$1
CHECKPOINT;
\o
SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
$2
SELECT round(extract(epoch FROM clock_timestamp()) - :t0, 6);
SQL
}

case_async_catchup() {
	local i r n got events base_s es_s ratio diff kind kinds=(event array table)
	local -A handler table label target times ratios
	handler[event]='bench.count_async(event_store.event)' table[event]=bench.rm_async
	label[event]="catch-up, per event" target[event]=-
	handler[array]='bench.count_batch(event_store.event[])' table[array]=bench.rm_batch
	label[array]="catch-up, array" target[array]=-
	handler[table]='bench.count_table()' table[table]=bench.rm_table
	label[table]="catch-up, trans. table" target[table]=0.5
	ensure_projections
	"${PSQL[@]}" -c "ALTER SYSTEM SET event_store.worker_enabled = off" -c "SELECT pg_reload_conf()" >/dev/null
	sleep 1
	events=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events")
	log "   async catch-up over $events events, $CATCHUP_REPEATS rounds"
	local group_by="INSERT INTO bench.rm_bare SELECT stream_id, count(*) FROM event_store.events GROUP BY stream_id;"
	local drop="SELECT event_store.drop_projection('bench_async');"
	local run="SELECT event_store.run_projections(1000000);"
	# each round times the baseline, then each handler: a ratio per round
	for ((r = 0; r < CATCHUP_REPEATS; r++)); do
		base_s=$(timed_sql "TRUNCATE bench.rm_bare; $group_by TRUNCATE bench.rm_bare;" "$group_by")
		times[base]+="$base_s "
		for kind in "${kinds[@]}"; do
			local create="SELECT event_store.create_projection('bench_async', '${handler[$kind]}', mode => 'async');"
			# (per-event handler (the DESIGN.md signature), array handler, trigger
			# function reading the transition table new_events)
			# one call takes the whole backlog; the loop only guards against a short one
			n=0 es_s=0
			for ((i = 0; i < 20; i++)); do
				if ((i == 0)); then
					got=$(timed_sql "TRUNCATE ${table[$kind]}; $create $run $drop TRUNCATE ${table[$kind]}; $create" "$run")
				else
					got=$(timed_sql "" "$run")
				fi
				n=$((n + ${got%%$'\n'*}))
				es_s=$(awk -v a="$es_s" -v b="${got##*$'\n'}" 'BEGIN { print a + b }')
				[[ "${got%%$'\n'*}" == 0 ]] && break
			done
			diff=$("${PSQL[@]}" -Atc "SELECT count(*) FROM ${table[$kind]} a FULL JOIN bench.rm_bare b USING (key)
				WHERE a.n IS DISTINCT FROM b.n")
			"${PSQL[@]}" -c "$drop" >/dev/null
			[[ "$n" == "$events" && "$diff" == 0 ]] ||
				die "async catch-up ($kind handler) handed over $n of $events events; $diff read model rows differ"
			times[$kind]+="$es_s "
			ratios[$kind]+="$(awk -v a="$base_s" -v b="$es_s" 'BEGIN { printf "%.3f", a / b }') "
		done
	done
	# shellcheck disable=SC2086 # the lists are words
	base_s=$(median ${times[base]})
	for kind in "${kinds[@]}"; do
		# shellcheck disable=SC2086
		es_s=$(median ${times[$kind]})
		# shellcheck disable=SC2086
		ratio=$(median ${ratios[$kind]})
		judge "$ratio" "${target[$kind]}"
		add_row "${label[$kind]}" 1 - - "$ratio" "events/s" "$(rate "$events" "$es_s")" \
			"$(rate "$events" "$base_s")" "$VERDICT"
		NOTES+=("async_catchup ($kind handler): $events events, read model equal to the GROUP BY's in every round; server seconds per round: run_projections ${times[$kind]}, INSERT ... GROUP BY ${times[base]}; ratio per round ${ratios[$kind]}(median $ratio)")
	done
	"${PSQL[@]}" -c "ALTER SYSTEM RESET event_store.worker_enabled" -c "SELECT pg_reload_conf()" >/dev/null
}

# lag: an async projection applied by the worker under a steady append load;
# the handler records clock_timestamp() - recorded_at of every event.
case_lag() {
	local tps stats
	ensure_projections
	"${PSQL[@]}" -c "TRUNCATE bench.lag_samples" -c "SELECT event_store.create_projection('bench_lag',
		'bench.record_lag(event_store.event)', ARRAY['LagEvent'], mode => 'async')" >/dev/null
	log "   lag: waiting for the worker to pass the history"
	wait_caught_up bench_lag 300 || true
	log "   lag: $LAG_CLIENTS clients at -R $LAG_RATE for ${SECONDS_PER_RUN}s"
	tps=$(pgbench_opts lag es_append_lag.sql "$LAG_CLIENTS" -R "$LAG_RATE" -T "$SECONDS_PER_RUN")
	wait_caught_up bench_lag 120 || true
	stats=$("${PSQL[@]}" -Atc "
		SELECT format('%s events, delay recorded_at -> handler p50 %s s, p99 %s s, max %s s',
		       count(*),
		       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delay))::numeric, 4),
		       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM delay))::numeric, 4),
		       round(max(extract(epoch FROM delay)), 4))
		  FROM bench.lag_samples")
	"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_lag')" >/dev/null
	NOTES+=("lag: async projection under $LAG_CLIENTS clients at -R $LAG_RATE (achieved $tps tps) for ${SECONDS_PER_RUN}s, worker naptime $("${PSQL[@]}" -Atc "SHOW event_store.naptime"): $stats")
}

# ---------------------------------------------------------------------------
# subscriptions and partitioned projections
# ---------------------------------------------------------------------------
SUBS_LOADED=0
ensure_subscriptions() {
	if [[ $SUBS_LOADED == 0 ]]; then
		"${PSQL[@]}" -f "$BENCH_DIR/sql/subscriptions.sql" >&2
		SUBS_LOADED=1
	fi
}

# worker_settings on|reset: the background worker on, with the database
# worker and one helper (event_store.max_workers = 2), or the defaults again
worker_settings() {
	if [[ $1 == on ]]; then
		"${PSQL[@]}" -c "ALTER SYSTEM SET event_store.worker_enabled = on" \
			-c "ALTER SYSTEM SET event_store.max_workers = 2" -c "SELECT pg_reload_conf()" >/dev/null
	else
		"${PSQL[@]}" -c "ALTER SYSTEM RESET event_store.worker_enabled" \
			-c "ALTER SYSTEM RESET event_store.max_workers" -c "SELECT pg_reload_conf()" >/dev/null
	fi
	sleep 0.5
}

# consume: CLIENTS consumers, one per pgbench client (consumer-<client_id>),
# each transaction a claim of up to 100 events of a 16-partition subscription
# and the ack of the last position claimed; against each client reading the
# 100 rows after its checkpoint row in bench.plain_events and moving the
# checkpoint there.  Every claim must get 100 events: each es run (warm-up and
# segments) starts on CONSUME_SUBS fresh subscriptions over the whole store,
# each client picking one at random per transaction, and is checked
# afterwards (events handed out = 100 x transactions).
CONSUME_PARTITIONS=16
case_consume() {
	local events rows
	ensure_subscriptions
	events=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events")
	# enough for a run at 8,000 transactions/s (about what the bare
	# reads reach here), with 15% to spare for the partitions' hash imbalance
	CONSUME_SUBS=${BENCH_CONSUME_SUBS:-$(awk -v s="$(( SEGMENT > WARMUP ? SEGMENT : WARMUP ))" -v n="$events" \
		'BEGIN { k = s * 8000 * 100 / (0.85 * n); k = (k == int(k) ? k : int(k) + 1); print (k < 2 ? 2 : k) }')}
	CONSUME_EVENTS=$events
	CONSUME_RUNS=()
	log "   consume: $CLIENTS consumers on $CONSUME_SUBS fresh $CONSUME_PARTITIONS-partition subscriptions per run ($events events each)"
	PAIR_EXTRA=(-D subs="$CONSUME_SUBS" -D wrap="$((TOTAL_ROWS - 100))")
	PAIR_HOOK=consume_hook
	pair "claim+ack 100 events" es_consume.sql base_consume.sql "$CLIENTS" off 100 "events/s" 0.6
	PAIR_EXTRA=()
	PAIR_HOOK=
	"${PSQL[@]}" -c "SELECT event_store.drop_subscription(name) FROM event_store.subscriptions
	                 WHERE name LIKE 'bench\_consume\_%'" >/dev/null
	rows=$(( TOTAL_ROWS / CLIENTS ))
	NOTES+=("consume: $CLIENTS consumers (consumer-<client_id>) on $CONSUME_SUBS subscriptions of $CONSUME_PARTITIONS partitions, created afresh before each es run and balanced ($(( (CONSUME_PARTITIONS + CLIENTS - 1) / CLIENTS )) partitions per consumer) before it is timed, each over the $CONSUME_EVENTS events of the store; every claim got 100 events (checked per run: ${CONSUME_RUNS[*]}); baseline clients start $rows rows apart and go round the $TOTAL_ROWS fixture rows")
}

# consume_hook WHEN SIDE LOGNAME (see pair)
consume_hook() {
	local when=$1 side=$2 logname=$3 xacts check delivered inflight
	case "$when $side" in
		"before es")
			"${PSQL[@]}" >/dev/null <<-SQL
				SELECT event_store.drop_subscription(name) FROM event_store.subscriptions
				 WHERE name LIKE 'bench\_consume\_%';
				SELECT event_store.create_subscription('bench_consume_' || s, partitions => $CONSUME_PARTITIONS)
				  FROM generate_series(1, $CONSUME_SUBS) AS s;
				-- every consumer live (the first takes all partitions), then each
				-- takes its fair share (the first gives back what is beyond it)
				SELECT count(*) FROM generate_series(1, $CONSUME_SUBS) AS s, generate_series(0, $CLIENTS - 1) AS c,
				       event_store.claim_events('bench_consume_' || s, 'consumer-' || c, 0);
				SELECT count(*) FROM generate_series(1, $CONSUME_SUBS) AS s, generate_series(0, $CLIENTS - 1) AS c,
				       event_store.claim_events('bench_consume_' || s, 'consumer-' || c, 0);
				VACUUM event_store.subscriptions, event_store.subscription_partitions,
				       event_store.subscription_consumers, event_store.subscription_streams;
			SQL
			;;
		"after es")
			xacts=$(awk '/^number of transactions actually processed:/ { print $6; exit }' "$LOG_DIR/$logname.log")
			# handed out = every event at or below its partition's position
			# (a claim hashes stream ids as hashtextextended(stream_id, 0) does)
			check=$("${PSQL[@]}" -At -F ' ' -c "
				SELECT (SELECT count(*) FROM event_store.events e
				          JOIN event_store.subscription_partitions p
				            ON p.subscription LIKE 'bench\_consume\_%'
				           AND p.partition = ((hashtextextended(e.stream_id, 0) % $CONSUME_PARTITIONS)
				                              + $CONSUME_PARTITIONS) % $CONSUME_PARTITIONS
				           AND e.global_position <= p.position),
				       (SELECT coalesce(sum(cardinality(pending) + cardinality(redeliver)), 0)
				          FROM event_store.subscription_partitions
				         WHERE subscription LIKE 'bench\_consume\_%')")
			read -r delivered inflight <<<"$check"
			[[ "$delivered" == $((xacts * 100)) && "$inflight" == 0 ]] ||
				die "consume ($logname): $xacts transactions, but $delivered events handed out (expected $((xacts * 100))) and $inflight not acknowledged; raise BENCH_CONSUME_SUBS (now $CONSUME_SUBS)"
			CONSUME_RUNS+=("$xacts x 100")
			;;
		"before base")
			"${PSQL[@]}" >/dev/null <<-SQL
				TRUNCATE bench.consume_ckpt;
				INSERT INTO bench.consume_ckpt SELECT c, c * ($TOTAL_ROWS / $CLIENTS) FROM generate_series(0, $CLIENTS - 1) AS c;
				VACUUM bench.consume_ckpt;
			SQL
			;;
	esac
}

# parallel_projections: catch-up of the 'bench' category (the fixture's
# 200,000 events when run before the appending cases) by an async projection
# with a per-event PL/pgSQL counter upsert, applied by the background workers
# (event_store.max_workers = 2), with 4 partitions against 1 partition; timed
# by the server from create_projection to wait_for_projection(name, head)
# returning true.  A third variant (no target) creates the 4-partition
# projection while the helper is already running: an idle partitioned
# projection (of an event type no event has) keeps it up.  PAR_REPEATS
# rounds, each running the three in a rotated order; ratio = median of the
# rounds' (4-partition events/s / 1-partition events/s).
PAR_REPEATS=${BENCH_PAR_REPEATS:-3}
PAR_WAIT=60
case_parallel_projections() {
	local head events r i cfg parts out ok secs diff t0 t1 ratio s1 s4 s4h helpers k stale=""
	local -a configs=(1 4 4h)
	local -A times cpus round_s ratios
	ensure_subscriptions
	worker_settings on
	head=$("${PSQL[@]}" -Atc "SELECT event_store.head_position()")
	events=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events
	                            WHERE split_part(stream_id, '-', 1) = 'bench' AND global_position <= $head")
	log "   parallel projections: $events events, $PAR_REPEATS rounds of 1, 4 and 4 partitions (helper up)"
	for ((r = 0; r < PAR_REPEATS; r++)); do
		for ((i = 0; i < 3; i++)); do
			cfg=${configs[$(( (i + r) % 3 ))]}
			parts=${cfg%h}
			helpers=0
			if [[ $cfg == *h ]]; then
				"${PSQL[@]}" -c "SELECT event_store.create_projection('bench_par_idle', 'bench.count_par(event_store.event)',
				                     event_types => ARRAY['NoSuchEvent'], mode => 'async', partitions => 2)" >/dev/null
				for ((k = 0; k < 100 && helpers == 0; k++)); do
					sleep 0.1
					helpers=$("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'event_store helper'")
				done
				[[ $helpers != 0 ]] || die "parallel projections: no helper started for a partitioned projection"
			else
				# the previous run's helper leaves by itself: gone before this one
				for ((k = 0; k < 300; k++)); do
					[[ $("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_stat_activity
					                        WHERE backend_type = 'event_store helper'") == 0 ]] && break
					sleep 0.1
				done
			fi
			"${PSQL[@]}" -c "TRUNCATE bench.rm_par" -c CHECKPOINT >/dev/null
			sleep 0.1
			t0=$(cluster_cpu_ticks)
			out=$("${PSQL[@]}" -At <<-SQL
				SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
				\o /dev/null
				SELECT event_store.create_projection('bench_par', 'bench.count_par(event_store.event)',
				           categories => ARRAY['bench'], mode => 'async', partitions => $parts);
				\o
				SELECT event_store.wait_for_projection('bench_par', $head, '$PAR_WAIT seconds') AS ok \gset
				SELECT :'ok', round(extract(epoch FROM clock_timestamp()) - :t0, 6);
			SQL
			)
			sleep 0.1
			t1=$(cluster_cpu_ticks)
			ok=${out%%|*} secs=${out##*|}
			diff=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.rm_par a
				FULL JOIN (SELECT stream_id AS key, count(*) AS n FROM event_store.events
				            WHERE split_part(stream_id, '-', 1) = 'bench' AND global_position <= $head
				            GROUP BY stream_id) b USING (key)
				WHERE a.n IS DISTINCT FROM b.n")
			"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_par')" >/dev/null
			if [[ $cfg == *h ]]; then
				"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_par_idle')" >/dev/null
			fi
			[[ "$diff" == 0 ]] || die "parallel projections ($cfg): $diff read model rows differ"
			if [[ "$ok" != t ]]; then
				# every event applied, and wait_for_projection still false: the
				# projection's position is behind its partitions' (see below)
				stale+="$cfg/round $((r + 1)) "
				secs=-1
			fi
			times[$cfg]+="$secs "
			round_s[$cfg]=$secs
			cpus[$cfg]+="$(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$events" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }') "
		done
		# (a run whose wait timed out has no ratio)
		for cfg in 4 4h; do
			if [[ ${round_s[1]} != -1 && ${round_s[$cfg]} != -1 ]]; then
				ratios[$cfg]+="$(awk -v a="${round_s[1]}" -v b="${round_s[$cfg]}" 'BEGIN { printf "%.3f", a / b }') "
			fi
		done
	done
	# shellcheck disable=SC2086,SC2046 # the lists are words
	s1=$(median $(printf '%s\n' ${times[1]} | grep -v '^-1$'))
	# shellcheck disable=SC2086,SC2046
	s4=$(median $(printf '%s\n' ${times[4]} | grep -v '^-1$'))
	# shellcheck disable=SC2086,SC2046
	s4h=$(median $(printf '%s\n' ${times[4h]} | grep -v '^-1$'))
	worker_settings reset
	# shellcheck disable=SC2086
	ratio=$(median ${ratios[4]})
	judge "$ratio" 1.6
	add_row "projection, 4 part." 2 - - "$ratio" "events/s" "$(rate "$events" "$s4")" "$(rate "$events" "$s1")" "$VERDICT"
	# shellcheck disable=SC2086
	ratio=$(median ${ratios[4h]})
	add_row "proj., 4 p., helper up" 2 - - "$ratio" "events/s" "$(rate "$events" "$s4h")" "$(rate "$events" "$s1")" "-"
	NOTES+=("parallel_projections: $events events, per-event PL/pgSQL upsert, event_store.max_workers = 2 (ratio = 4 partitions / 1 partition, events/s; 'baseline' column = 1 partition); seconds from create_projection to wait_for_projection true: 1 partition ${times[1]}, 4 partitions ${times[4]}, 4 partitions with the helper already up ${times[4h]}; ratio per round ${ratios[4]}(helper up: ${ratios[4h]}); server CPU us per event: 1 partition ${cpus[1]}, 4 partitions ${cpus[4]}, helper up ${cpus[4h]}; read model equal to a GROUP BY every time; runs where wait_for_projection was still false after ${PAR_WAIT}s with every event applied (-1 above, left out): ${stale:-none}")
}

# partitions_caught_up LIKE N: until the N async projections whose names are
# LIKE the pattern have every partition at the head (subscription_status of
# their subscriptions).  Not wait_for_projection: the projection's own
# position can stay behind its partitions' (see bench/RESULTS.md), and it
# would wait for its timeout.
partitions_caught_up() {
	local i
	for ((i = 0; i < 6000; i++)); do
		[[ $("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.subscription_status
		                        WHERE name LIKE '$1' AND lag_events = 0") == "$2" ]] && return 0
		sleep 0.1
	done
	die "async projections $1 not caught up after 600 s"
}

# append_with_consumers: single-event appends (CLIENTS clients) of type
# ConsEvent while 3 subscriptions on that type are consumed (a consumer loop
# per subscription in a session of its own, claiming up to 100 and acking)
# and 2 async projections of it with 4 partitions each are applied by the
# background workers (event_store.max_workers = 2); against the same appends
# of type BenchEvent alone.  Interleaved as the other pairs: before every es
# run the consumer loops start and the projections are resumed; after it the
# lags are recorded, then (untimed) the loops drain and leave and the
# projections catch up and are paused, so the baseline runs alone.
# A third side, the floor (no target): the same appends, of type FloorEvent,
# while the same work is done with none of the store's machinery: 3 plain
# consumer loops (read the events after a checkpoint row, move it) and a
# plain loop per projection calling its per-event PL/pgSQL upsert from one
# statement per batch (bench.floor_loop);
# before and after each floor run as around es runs.
CONS_SUBS=3
CONS_PROJECTIONS=2
case_append_with_consumers() {
	local head check n k expected got base_tps sustained floor_expected floor_check
	ensure_subscriptions
	worker_settings on
	head=$("${PSQL[@]}" -Atc "SELECT event_store.head_position()")
	"${PSQL[@]}" >/dev/null <<-SQL
		TRUNCATE bench.consumed, bench.rm_cons_1, bench.rm_cons_2, bench.consume_ctl;
		INSERT INTO bench.consume_ctl VALUES (true);
		SELECT event_store.create_subscription('bench_cons_' || k, event_types => ARRAY['ConsEvent'],
		                                       start_position => $head)
		  FROM generate_series(1, $CONS_SUBS) AS k;
		SELECT event_store.create_projection('bench_cproj_1', 'bench.count_cons_1(event_store.event)',
		           event_types => ARRAY['ConsEvent'], mode => 'async', partitions => 4);
		SELECT event_store.create_projection('bench_cproj_2', 'bench.count_cons_2(event_store.event)',
		           event_types => ARRAY['ConsEvent'], mode => 'async', partitions => 4);
		TRUNCATE bench.floor_ckpt, bench.rm_floor_1, bench.rm_floor_2;
		INSERT INTO bench.floor_ckpt (name, pos)
		SELECT 'floor_cons_' || k, $head FROM generate_series(1, $CONS_SUBS) AS k
		UNION ALL
		SELECT 'floor_proj_' || k, $head FROM generate_series(1, $CONS_PROJECTIONS) AS k;
	SQL
	partitions_caught_up 'bench\_cproj\_%' "$CONS_PROJECTIONS"
	"${PSQL[@]}" -c "SELECT event_store.pause_projection('bench_cproj_' || k)
	                   FROM generate_series(1, $CONS_PROJECTIONS) AS k" >/dev/null
	CONS_PIDS=()
	CONS_LAGS=()
	CONS_STALE=0
	CONS_DRAIN=()
	CONS_SUSTAINED=()
	FLOOR_LAGS=()
	FLOOR_DRAIN=()
	FLOOR_SUSTAINED=()
	log "   appends with $CONS_SUBS consumed subscriptions and $CONS_PROJECTIONS partitioned projections (and the floor)"
	PAIR_HOOK=cons_hook
	PAIR_FLOOR="floor_append_consumed.sql|  floor, no machinery"
	pair "append w/ consumers" es_append_consumed.sql es_append_one.sql "$CLIENTS" off 1 "-" 0.75
	PAIR_HOOK=
	PAIR_FLOOR=
	# the same against the baseline's median (from the pair's segments line)
	# shellcheck disable=SC2046 # the segments are words
	base_tps=$(median $(tail -n 1 "$LOG_DIR/segments.txt" | sed 's/.*| baseline \([^|]*\) |.*/\1/'))
	sustained=$(median "${CONS_SUSTAINED[@]}")
	add_row "  incl. catching up" "$CLIENTS" "$sustained" "$base_tps" \
		"$(awk -v a="$sustained" -v b="$base_tps" 'BEGIN { printf "%.3f", a / b }')" "-" - - "-"
	sustained=$(median "${FLOOR_SUSTAINED[@]}")
	add_row "  floor incl. catch-up" "$CLIENTS" "$sustained" "$base_tps" \
		"$(awk -v a="$sustained" -v b="$base_tps" 'BEGIN { printf "%.3f", a / b }')" "-" - - "floor, no target"
	# every ConsEvent consumed once by each subscription, counted by each projection
	expected=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events
	                              WHERE global_position > $head AND event_type = 'ConsEvent'")
	got=$("${PSQL[@]}" -Atc "
		SELECT string_agg(format('%s %s events in %s claims', subscription, events, claims), ', '
		                  ORDER BY subscription)
		  FROM bench.consumed")
	check=$("${PSQL[@]}" -Atc "
		SELECT (SELECT count(*) FROM bench.consumed WHERE events = $expected) = $CONS_SUBS
		   AND (SELECT sum(n) FROM bench.rm_cons_1) = $expected
		   AND (SELECT sum(n) FROM bench.rm_cons_2) = $expected")
	# the floor's loops: every FloorEvent read once by each, counted once by both handlers
	floor_expected=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events
	                                    WHERE global_position > $head AND event_type = 'FloorEvent'")
	floor_check=$("${PSQL[@]}" -Atc "
		SELECT (SELECT count(*) FROM bench.floor_ckpt WHERE events = $floor_expected) = $((CONS_SUBS + CONS_PROJECTIONS))
		   AND (SELECT sum(n) FROM bench.rm_floor_1) = $floor_expected
		   AND (SELECT sum(n) FROM bench.rm_floor_2) = $floor_expected")
	"${PSQL[@]}" >/dev/null <<-SQL
		SELECT event_store.drop_projection('bench_cproj_' || k) FROM generate_series(1, $CONS_PROJECTIONS) AS k;
		SELECT event_store.drop_subscription('bench_cons_' || k) FROM generate_series(1, $CONS_SUBS) AS k;
	SQL
	worker_settings reset
	[[ "$check" == t ]] || die "append_with_consumers: $expected ConsEvents appended; consumers: $got; read models $("${PSQL[@]}" -Atc "SELECT (SELECT sum(n) FROM bench.rm_cons_1), (SELECT sum(n) FROM bench.rm_cons_2)")"
	[[ "$floor_check" == t ]] || die "append_with_consumers, floor: $floor_expected FloorEvents appended; loops: $("${PSQL[@]}" -Atc "SELECT string_agg(name || ' ' || events, ', ' ORDER BY name) FROM bench.floor_ckpt"); read models $("${PSQL[@]}" -Atc "SELECT (SELECT sum(n) FROM bench.rm_floor_1), (SELECT sum(n) FROM bench.rm_floor_2)")"
	NOTES+=("append_with_consumers, floor (no target): $floor_expected FloorEvents, each read once by every plain consumer loop and counted once by both plain projection loops; lag when each floor run ended (positions behind the head: consumers; projections): ${FLOOR_LAGS[*]} seconds the loops took to catch up after each floor run: ${FLOOR_DRAIN[*]}; 'floor incl. catch-up' = appends of a floor run / (its seconds + those), median of ${FLOOR_SUSTAINED[*]}")
	NOTES+=("append_with_consumers: $expected ConsEvents, each consumed once by every subscription ($got) and counted once by both projections; projections whose position (projection_status) stayed behind their partitions' (subscription_status) once caught up, summed over the es runs: $CONS_STALE; lag when each es run ended (positions behind the head: subscriptions; projections): ${CONS_LAGS[*]} seconds the consumers and projections took to catch up after each es run: ${CONS_DRAIN[*]}; 'incl. catching up' = appends of an es run / (its seconds + those), median ${CONS_SUSTAINED[*]}")
}

# wait_for_calls PATTERN N: until N sessions run a statement LIKE PATTERN
# (loops started in the background are in their first statement), 10 s at most
wait_for_calls() {
	local i
	for ((i = 0; i < 100; i++)); do
		[[ $("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '$1'") == "$2" ]] && return 0
		sleep 0.1
	done
}

# cons_hook WHEN SIDE LOGNAME (see pair): consumers and projections around es runs
cons_hook() {
	local when=$1 side=$2 logname=$3 k i pid lag t0 xacts drain
	if [[ $side == floor ]]; then
		floor_hook "$@"
		return 0
	fi
	[[ $side == es ]] || return 0
	if [[ $when == before ]]; then
		"${PSQL[@]}" -c "UPDATE bench.consume_ctl SET stop = false" \
			-c "SELECT event_store.resume_projection('bench_cproj_' || k) FROM generate_series(1, $CONS_PROJECTIONS) AS k" >/dev/null
		for ((k = 1; k <= CONS_SUBS; k++)); do
			timeout 900 "${PSQL[@]}" -c "CALL bench.consume_loop('bench_cons_$k', 'loop-$k')" \
				>"$LOG_DIR/consumer-$logname-$k.log" 2>&1 &
			CONS_PIDS+=($!)
		done
		# the loops are in their first claim
		wait_for_calls 'CALL bench.consume_loop%' "$CONS_SUBS"
		return 0
	fi
	lag=$("${PSQL[@]}" -Atc "
		SELECT (SELECT string_agg(lag_events::text, '/' ORDER BY name) FROM event_store.subscription_status
		         WHERE name LIKE 'bench\_cons\_%') || '; ' ||
		       (SELECT string_agg(lag_events::text, '/' ORDER BY name) FROM event_store.projection_status
		         WHERE name LIKE 'bench\_cproj\_%')")
	CONS_LAGS+=("$logname: $lag;")
	t0=$(date +%s.%N)
	"${PSQL[@]}" -c "UPDATE bench.consume_ctl SET stop = true" >/dev/null
	for pid in "${CONS_PIDS[@]}"; do
		wait "$pid" || die "a consumer loop failed: $(cat "$LOG_DIR"/consumer-"$logname"-*.log)"
	done
	CONS_PIDS=()
	partitions_caught_up 'bench\_cproj\_%' "$CONS_PROJECTIONS"
	# what the appends of the run cost, consumption included: the run's
	# appends over its time plus the time the consumers and projections took
	# to finish their part afterwards
	xacts=$(awk '/^number of transactions actually processed:/ { print $6; exit }' "$LOG_DIR/$logname.log")
	drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	CONS_DRAIN+=("$drain")
	[[ $logname == warmup-* ]] ||
		CONS_SUSTAINED+=("$(awk -v n="$xacts" -v t="$SEGMENT" -v d="$drain" 'BEGIN { printf "%.1f", n / (t + d) }')")
	CONS_STALE=$((CONS_STALE + $("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.projection_status p
	                                                JOIN event_store.subscription_status s USING (name)
	                                               WHERE p.position < s.position")))
	"${PSQL[@]}" -c "SELECT event_store.pause_projection('bench_cproj_' || k)
	                   FROM generate_series(1, $CONS_PROJECTIONS) AS k" >/dev/null
}

# floor_hook WHEN floor LOGNAME (from cons_hook): the floor's plain loops
# around a floor run, as cons_hook does around an es run
floor_hook() {
	local when=$1 logname=$3 k i pid lag t0 xacts drain
	local loops=$((CONS_SUBS + CONS_PROJECTIONS))
	if [[ $when == before ]]; then
		"${PSQL[@]}" -c "UPDATE bench.consume_ctl SET stop = false" >/dev/null
		for ((k = 1; k <= CONS_SUBS; k++)); do
			timeout 900 "${PSQL[@]}" -c "CALL bench.floor_loop('floor_cons_$k', 0)" \
				>"$LOG_DIR/floor-$logname-c$k.log" 2>&1 &
			CONS_PIDS+=($!)
		done
		for ((k = 1; k <= CONS_PROJECTIONS; k++)); do
			timeout 900 "${PSQL[@]}" -c "CALL bench.floor_loop('floor_proj_$k', $k)" \
				>"$LOG_DIR/floor-$logname-p$k.log" 2>&1 &
			CONS_PIDS+=($!)
		done
		wait_for_calls 'CALL bench.floor\_loop%' "$loops"
		return 0
	fi
	lag=$("${PSQL[@]}" -Atc "
		SELECT string_agg((event_store.head_position() - pos)::text, '/' ORDER BY name)
		  FROM bench.floor_ckpt")
	FLOOR_LAGS+=("$logname: $lag;")
	t0=$(date +%s.%N)
	"${PSQL[@]}" -c "UPDATE bench.consume_ctl SET stop = true" >/dev/null
	for pid in "${CONS_PIDS[@]}"; do
		wait "$pid" || die "a floor loop failed: $(cat "$LOG_DIR"/floor-"$logname"-*.log)"
	done
	CONS_PIDS=()
	xacts=$(awk '/^number of transactions actually processed:/ { print $6; exit }' "$LOG_DIR/$logname.log")
	drain=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
	FLOOR_DRAIN+=("$drain")
	[[ $logname == warmup-* ]] ||
		FLOOR_SUSTAINED+=("$(awk -v n="$xacts" -v t="$SEGMENT" -v d="$drain" 'BEGIN { printf "%.1f", n / (t + d) }')")
}

# read_your_writes: CLIENTS clients at pgbench -R RYW_RATE, each transaction
# an append (committed), then wait_for_projection(p, last_appended_position())
# for an async projection of those events (per-event PL/pgSQL upsert, applied
# by the background worker), its latency (server side, from the statement's
# start to the wait's return) logged in bench.ryw_waits.  With 1 partition
# (the target line) and with 4.
RYW_RATE=${BENCH_RYW_RATE:-2000}
case_read_your_writes() {
	local parts tps stats p50 p99 tx verdict
	ensure_subscriptions
	worker_settings on
	for parts in 1 4; do
		"${PSQL[@]}" >/dev/null <<-SQL
			TRUNCATE bench.ryw_waits, bench.rm_ryw;
			SELECT event_store.create_projection('bench_ryw', 'bench.count_ryw(event_store.event)',
			           event_types => ARRAY['RywEvent'], mode => 'async', partitions => $parts);
		SQL
		partitions_caught_up bench_ryw 1
		"${PSQL[@]}" -c CHECKPOINT >/dev/null
		log "   read-your-writes: $CLIENTS clients at -R $RYW_RATE for ${SECONDS_PER_RUN}s, $parts partition(s)"
		rm -f "$LOG_DIR/ryw-p$parts".*
		tps=$(pgbench_opts "ryw-p$parts" es_read_your_writes.sql "$CLIENTS" -R "$RYW_RATE" -T "$SECONDS_PER_RUN" \
			-D parts="$parts" -l --log-prefix="$LOG_DIR/ryw-p$parts")
		read -r p50 p99 stats <<<"$("${PSQL[@]}" -At -F ' ' -c "
			SELECT round(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM wait))::numeric * 1000, 2),
			       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM wait))::numeric * 1000, 2),
			       format('%s waits, %s timed out, max %s ms', count(*), count(*) FILTER (WHERE NOT ok),
			              round(max(extract(epoch FROM wait))::numeric * 1000, 2))
			  FROM bench.ryw_waits")"
		# the whole transaction (append + wait) as the client saw it, from its
		# scheduled start (pgbench -R), in microseconds
		tx=$(cat "$LOG_DIR/ryw-p$parts".* | awk '{ print $3 }' | sort -n | awk '{ v[NR] = $1 }
			END { printf "transaction (append + wait, from its scheduled start) p50 %.2f ms, p99 %.2f ms",
			             v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
		rm -f "$LOG_DIR/ryw-p$parts".*
		"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_ryw')" >/dev/null
		if [[ $parts == 1 ]]; then
			TARGETS_TOTAL=$((TARGETS_TOTAL + 1))
			if awk -v v="$p99" 'BEGIN { exit !(v <= 5) }'; then
				verdict="<= 5 ms ok"
				TARGETS_MET=$((TARGETS_MET + 1))
			else
				verdict="<= 5 ms MISS"
			fi
		else
			verdict="-"
		fi
		add_row "wait_for_proj. p99, ${parts}p" "$CLIENTS" "$tps" - "$p99" "ms p50" "$p50" - "$verdict"
		NOTES+=("read_your_writes ($parts partition(s)): $CLIENTS clients at -R $RYW_RATE (achieved $tps tps) for ${SECONDS_PER_RUN}s; wait_for_projection p50 $p50 ms, p99 $p99 ms, $stats; $tx")
	done
	worker_settings reset
}

log "== measuring: per side ${WARMUP}s of warm-up, then $SEGMENTS x ${SEGMENT}s in the order ${ORDER[*]}"
for c in $CASES; do
	case $c in
		read_stream)
			for cl in 1 "$CLIENTS"; do
				pair "read_stream 1000" es_read_stream.sql base_read_stream.sql "$cl" off \
					"$READER_EVENTS" "rows/s" 0.9
			done
			;;
		read_all)
			for cl in 1 "$CLIENTS"; do
				pair "read_all page 1000" es_read_all.sql base_read_all.sql "$cl" off \
					1000 "rows/s" 0.9
			done
			;;
		append_one)
			for sync in off on; do
				pair "append 1 event" es_append_one.sql base_append_one.sql 1 "$sync" 1 "-" -
				pair "append 1 event" es_append_one.sql base_append_one.sql "$CLIENTS" "$sync" 1 "-" 0.85
			done
			;;
		batch10)
			for sync in off on; do
				pair "append batch of 10" es_append_batch10.sql base_append_batch10.sql \
					"$CLIENTS" "$sync" 10 "events/s" -
			done
			;;
		batch100)
			for sync in off on; do
				pair "append batch of 100" es_append_batch100.sql base_append_batch100.sql \
					"$CLIENTS" "$sync" 100 "events/s" 0.9
			done
			;;
		hot)
			for sync in off on; do
				pair "append 1 to hot-1" es_append_hot.sql base_append_hot.sql \
					"$CLIENTS" "$sync" 1 "-" -
			done
			;;
		followers)
			case_followers
			;;
		categories)
			pair "append 1, one category" es_append_cat_single.sql es_append_cat_many.sql \
				"$CLIENTS" off 1 "-" 0.9
			;;
		aggregate)
			ensure_aggregates
			pair "load_aggregate $AGG_EVENTS" es_load_agg_snap.sql es_load_agg_full.sql 1 off \
				1 "-" 20
			;;
		upcast)
			ensure_aggregates
			# the target line: a LANGUAGE sql upcaster, which is inlined
			pair "read_stream upcast sql" es_read_upcast_sql.sql es_read_upcast_raw.sql 1 off \
				"$UPCAST_EVENTS" "rows/s" 0.667
			pair "read_stream upcast plpgsql" es_read_upcast.sql es_read_upcast_raw.sql 1 off \
				"$UPCAST_EVENTS" "rows/s" -
			;;
		snapshot_hook)
			ensure_aggregates
			pair "append 1, snapshots" es_append_snap.sql es_append_nosnap.sql "$CLIENTS" off \
				1 "-" 0.91
			;;
		inline_projection)
			case_inline_projection
			;;
		async_catchup)
			case_async_catchup
			;;
		lag)
			case_lag
			;;
		consume)
			case_consume
			;;
		parallel_projections)
			case_parallel_projections
			;;
		append_with_consumers)
			case_append_with_consumers
			;;
		read_your_writes)
			case_read_your_writes
			;;
		*)
			die "unknown case \"$c\""
			;;
	esac
done

# The baseline inserts must have done what they claim: one position per row,
# used as its version too.
bad=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.plain_events
                         WHERE global_position > $TOTAL_ROWS AND stream_version <> global_position")
[[ "$bad" == 0 ]] || die "baseline rows with stream_version <> global_position: $bad"

# What event_store wrote under all that concurrency must be whole: versions
# 1..n without gaps in every stream, positions unique and without gaps (no
# append of the benchmark aborts).
INTEGRITY=$("${PSQL[@]}" -Atc "
	SELECT format('%s events, %s streams, %s streams with version gaps, positions %s',
	              sum(n), count(*), count(*) FILTER (WHERE maxv <> n),
	              CASE WHEN (SELECT max(global_position) = count(*) FROM event_store.events)
	                   THEN 'dense' ELSE 'NOT dense' END)
	  FROM (SELECT stream_id, count(*) AS n, max(stream_version) AS maxv
	          FROM event_store.events GROUP BY stream_id) AS s")
log "   integrity: $INTEGRITY"

# Optionally let amcheck verify the events table and every index on it
# (each index entry and each heap tuple matched): append writes them itself.
if [[ "${BENCH_AMCHECK:-0}" == 1 ]]; then
	log "   amcheck of event_store.events and its indexes"
	"${PSQL[@]}" >&2 <<-'EOF'
		CREATE EXTENSION IF NOT EXISTS amcheck;
		SELECT count(*) = 0 AS heap_ok FROM verify_heapam('event_store.events') \gset
		\if :heap_ok
		\else
		\echo 'verify_heapam found problems in event_store.events'
		SELECT 1/0;
		\endif
		\o /dev/null
		SELECT bt_index_check(indexrelid, true) FROM pg_index
		 WHERE indrelid = 'event_store.events'::regclass;
		\o
	EOF
	INTEGRITY="$INTEGRITY, amcheck: ok"
fi

# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------
report() {
	local settings
	settings=$("${PSQL[@]}" -Atc "
		SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name)
		  FROM pg_settings
		 WHERE name IN ('shared_buffers', 'max_wal_size', 'fsync', 'wal_level',
		                'full_page_writes', 'autovacuum', 'jit', 'work_mem')")
	echo "event_store benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "server:   $("${PSQL[@]}" -Atc 'SELECT version()')"
	echo "build:    $BUILD_DESC"
	echo "machine:  $(uname -sm), nproc=$NPROC, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo)"
	echo "settings: $settings"
	echo "pgbench:  -M prepared, -j min(clients, $NPROC); per side ${WARMUP}s warm-up, then $SEGMENTS segments of -T $SEGMENT,"
	echo "          each after a CHECKPOINT, in the order ${ORDER[*]} (es = event_store)"
	echo "fixture:  $((STREAMS * PER_STREAM)) events in $STREAMS streams + $READER_EVENTS in reader-1, same rows in the baseline table, VACUUM ANALYZE"
	echo "ratio = event_store tps / baseline tps (for reads and batches also the rows/s and events/s ratio)"
	echo "tps = median of a side's segments; noise = larger spread (max - min) of one side's segments / median"
	echo "cpu/op = CPU time (us) of the whole server (backends, WAL writer, event_store worker...) per transaction,"
	echo "         over all segments of a side; cpu r. = baseline cpu/op / event_store cpu/op (like ratio: < 1 = costlier),"
	echo "         much less sensitive than tps to other load on the machine"
	echo
	table_row "case" "clients" "sync_commit" "event_store tps" "baseline tps" "ratio" "noise" \
		"es cpu/op" "base cpu" "cpu r." "unit" "event_store" "baseline" "target"
	echo
	printf '%s\n' "-----------------------+---------+-------------+-----------------+--------------+--------+-------+-----------+-----------+--------+----------+-------------+-------------+----------------"
	printf '%s\n' "${ROWS[@]}"
	if [[ ${#NOTES[@]} -gt 0 ]]; then
		echo
		printf '%s\n' "${NOTES[@]}"
	fi
	echo
	echo "targets met (synchronous_commit = off, the primary figures): $TARGETS_MET of $TARGETS_TOTAL"
	if [[ $SYNC_TOTAL -gt 0 ]]; then
		echo "same targets with synchronous_commit = on (for information): $SYNC_MET of $SYNC_TOTAL"
	fi
	echo "event_store.events after the run: $INTEGRITY"
}

mkdir -p "$RESULTS_DIR"
report | tee "$RESULT_FILE"
