# bench/lib.sh - what the benchmark scripts share: building the extension and
# a throwaway cluster (started as the postgres user when run as root, stopped
# and removed on exit, even on failure).
#
# Expects PG_CONFIG, PORT, REPO_DIR, log() and die() to be set by the caller.
# bench_cluster_start NAME PORT_SETTING EXTRA_CONF sets WORK, DATA, SOCK,
# SERVER_LOG, RUNAS and PSQL, exports PGHOST/PGPORT/PGUSER/PGDATABASE and
# creates database "bench".  A caller may define bench_before_stop (called by
# the exit trap before the cluster is stopped).

PGBIN=$("$PG_CONFIG" --bindir)
STARTED=0
WORK=

# rate N SECONDS: N per second, rounded
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", (t > 0 ? n / t : 0) }'; }

# deps (if the repository has the script), then make and make install
bench_build() {
	if [[ -f "$REPO_DIR/scripts/deps.sh" ]]; then
		bash "$REPO_DIR/scripts/deps.sh"
	fi
	if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
		log "== building and installing event_store"
		make -C "$REPO_DIR" -s PG_CONFIG="$PG_CONFIG" >/dev/null
		make -C "$REPO_DIR" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
	fi
}

# exit trap: stop the cluster, show the server log on failure, clean up
bench_cleanup() {
	local rc=$?
	if declare -F bench_before_stop >/dev/null; then
		bench_before_stop || true
	fi
	if [[ $STARTED -eq 1 ]]; then
		"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 ||
			log "could not stop the cluster in $DATA"
	fi
	if [[ $rc -ne 0 && -f "${SERVER_LOG:-}" ]]; then
		log "---- server log (tail) ----"
		tail -n 30 "$SERVER_LOG" >&2 || true
	fi
	[[ -n "$WORK" ]] && rm -rf "$WORK"
	exit $rc
}

# bench_cluster_start NAME PORT_SETTING EXTRA_CONF
bench_cluster_start() {
	local name=$1 port_setting=$2 extra_conf=$3

	if [[ $EUID -eq 0 ]]; then
		RUNAS=(runuser -u postgres --)
	else
		RUNAS=()
	fi
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")
	DATA="$WORK/data"
	SOCK="$WORK"
	SERVER_LOG="$WORK/server.log"
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	[[ $EUID -eq 0 ]] && chown postgres: "$WORK"

	if "$PGBIN/pg_isready" -q -h "$SOCK" -p "$PORT" 2>/dev/null ||
		(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		die "port $PORT is in use; set $port_setting"
	fi

	log "== starting a throwaway cluster on port $PORT"
	"${RUNAS[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 \
		--locale=C.UTF-8 >/dev/null
	cat >>"$DATA/postgresql.conf" <<CONF

# $name cluster
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'event_store'
max_connections = 40
jit = off
$extra_conf
CONF
	"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$SERVER_LOG" -w start >/dev/null
	STARTED=1

	export PGHOST="$SOCK" PGPORT="$PORT" PGUSER=postgres
	PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
	"$PGBIN/createdb" bench
	export PGDATABASE=bench
}

# ---------------------------------------------------------------------------
# measuring: pgbench runs and interleaved pairs (run.sh, growth.sh)
#
# Expect LOG_DIR, SCRIPTS, NPROC, MAXPOS, DATA, PSQL, WARMUP, ORDER, SEGMENT,
# LOG_DIR and the ROWS / TARGETS_* / SYNC_* counters to be set by the caller.
# ---------------------------------------------------------------------------
# pgbench_run LOGNAME SCRIPT CLIENTS SYNC [pgbench options] -> prints tps
pgbench_run() {
	local logname=$1 script=$2 clients=$3 sync=$4
	shift 4
	local jobs=$(( clients < NPROC ? clients : NPROC ))
	local out="$LOG_DIR/$logname.log"

	if ! PGOPTIONS="-c synchronous_commit=$sync" "$PGBIN/pgbench" -n -M prepared \
		-c "$clients" -j "$jobs" "$@" -f "$SCRIPTS/$script" >"$out" 2>&1; then
		log "pgbench failed for $script (clients $clients, sync $sync, $*):"
		tail -n 20 "$out" >&2
		return 1
	fi
	if grep -q '^number of failed transactions: [1-9]' "$out"; then
		log "pgbench reported failed transactions for $script:"
		tail -n 20 "$out" >&2
		return 1
	fi
	awk '/^tps = / { print $3; exit }' "$out"
}

# followers_start H0: two followers (bench.follow of bench/sql/followers.sql,
# loaded) page read_all from position H0 in the background, recording what
# they see; their pids in FOLLOWER_PIDS
followers_start() {
	local h0=$1 k
	FOLLOWER_PIDS=()
	"${PSQL[@]}" -c "TRUNCATE bench.follow_ctl, bench.follower, bench.seen_1, bench.seen_2" \
		-c "INSERT INTO bench.follow_ctl VALUES (false)" \
		-c "INSERT INTO bench.follower VALUES (1, $h0), (2, $h0)" >/dev/null
	for k in 1 2; do
		timeout 600 "${PSQL[@]}" -c "CALL bench.follow($k)" >"$LOG_DIR/follower-$k.log" 2>&1 &
		FOLLOWER_PIDS+=($!)
	done
}

# followers_finish H0 EXPECTED RC: the writers are done (RC: theirs, 0 or
# 1); the followers drain to the head and end, then each must have seen
# every position above H0 once, EXPECTED of them.  Sets FOLLOW_STATUS (PASS
# or FAIL) and FOLLOW_NOTE.
followers_finish() {
	local h0=$1 expected=$2 rc=$3 pid check n m1 x1 d1 m2 x2 d2 pages
	"${PSQL[@]}" -c "UPDATE bench.follow_ctl SET done = true" >/dev/null
	for pid in "${FOLLOWER_PIDS[@]}"; do
		wait "$pid" || { rc=1; log "   a follower failed: $(cat "$LOG_DIR"/follower-*.log)"; }
	done
	check=$("${PSQL[@]}" -At -F ' ' -c "
		WITH ev AS (SELECT global_position AS p FROM event_store.events WHERE global_position > $h0)
		SELECT (SELECT count(*) FROM ev),
		       (SELECT count(*) FROM ev WHERE NOT EXISTS (SELECT FROM bench.seen_1 WHERE position = p)),
		       (SELECT count(*) FROM bench.seen_1 WHERE NOT EXISTS (SELECT FROM ev WHERE p = position)),
		       (SELECT coalesce(sum(dups), 0) FROM bench.seen_1),
		       (SELECT count(*) FROM ev WHERE NOT EXISTS (SELECT FROM bench.seen_2 WHERE position = p)),
		       (SELECT count(*) FROM bench.seen_2 WHERE NOT EXISTS (SELECT FROM ev WHERE p = position)),
		       (SELECT coalesce(sum(dups), 0) FROM bench.seen_2),
		       (SELECT string_agg(pages::text, '/' ORDER BY k) FROM bench.follower)")
	read -r n m1 x1 d1 m2 x2 d2 pages <<<"$check"
	if [[ $rc == 0 && $n == "$expected" && "$m1 $x1 $d1 $m2 $x2 $d2" == "0 0 0 0 0 0" ]]; then
		FOLLOW_STATUS=PASS
	else
		FOLLOW_STATUS=FAIL
	fi
	FOLLOW_NOTE="followers: $FOLLOW_STATUS - $n events written with followers (expected $expected); follower 1: $m1 missing, $x1 extra, $d1 duplicates; follower 2: $m2 missing, $x2 extra, $d2 duplicates; pages $pages"
}

# Extra pgbench options of the pair being run (-D of its scripts), and a
# function called around each of its runs (see pair); both empty but for the
# cases that need them
PAIR_EXTRA=()
PAIR_HOOK=
# A pair's third side, when set: "SCRIPT|ROW NAME", a floor (the same work by
# the cheapest means, no target) run against the same baseline, in the order
# ORDER_FLOOR (set by the caller), its ratio on a row of its own
PAIR_FLOOR=

# pgbench SCRIPT CLIENTS SYNC SECONDS LOGNAME -> prints tps
run_pgbench() {
	pgbench_run "$5" "$1" "$2" "$3" -T "$4" -D maxpos="$MAXPOS" "${PAIR_EXTRA[@]}"
}

# median_ratio "A RUNS" "B RUNS": the median of each side's runs, A / B, and
# the noise (the larger spread, max - min, of one side over its median)
median_ratio() {
	awk -v a="$1" -v b="$2" '
		function median(str, v, n, i, j, t) {
			n = split(str, v, " ")
			for (i = 2; i <= n; i++)
				for (j = i; j > 1 && v[j - 1] + 0 > v[j] + 0; j--) { t = v[j]; v[j] = v[j - 1]; v[j - 1] = t }
			lo = v[1]; hi = v[n]
			return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		}
		BEGIN {
			ma = median(a); na = (hi - lo) / ma
			mb = median(b); nb = (hi - lo) / mb
			printf "%.1f %.1f %.3f %.0f%%\n", ma, mb, ma / mb, 100 * (na > nb ? na : nb)
		}'
}

# pair_hook WHEN SIDE LOGNAME: PAIR_HOOK, if set, before or after a run
pair_hook() {
	[[ -z "$PAIR_HOOK" ]] || "$PAIR_HOOK" "$@"
}

# cluster_cpu_ticks (of $DATA's cluster)
# shellcheck source=bench/cpu.sh
. "$(dirname "${BASH_SOURCE[0]}")/cpu.sh"

# checkpoint, then measure: every measured run starts from a clean state.
# Prints "tps cpu_ticks transactions".
measure() {
	local script=$1 clients=$2 sync=$3 secs=$4 logname=$5
	local tps t0 t1 n
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	sleep 0.1	# let the postmaster reap the backend of that psql
	t0=$(cluster_cpu_ticks)
	tps=$(run_pgbench "$script" "$clients" "$sync" "$secs" "$logname")
	sleep 0.1	# ... and those of the pgbench run
	t1=$(cluster_cpu_ticks)
	n=$(awk '/^number of transactions actually processed:/ { print $6; exit }' "$LOG_DIR/$logname.log")
	echo "$tps $((t1 - t0)) ${n:-0}"
}

# pair_row NAME CLIENTS SYNC ITEMS_PER_OP ITEM_UNIT TARGET "ES RUNS" ES_TICKS
#          ES_XACTS "BASE RUNS" BASE_TICKS BASE_XACTS [SEGMENTS_SUFFIX]
#
# A pair's figures from its measured runs (each side's tps per segment, CPU
# ticks and transactions summed over its segments): one line of
# segments.txt, the verdict against TARGET ("-": none) and the row appended
# to ROWS.  Sets PAIR_BASE_CPU (us per operation of the baseline).
pair_row() {
	local name=$1 clients=$2 sync=$3 items=$4 unit=$5 target=$6
	local es_runs=$7 es_ticks=$8 es_xacts=$9 base_runs=${10} base_ticks=${11} base_xacts=${12} suffix=${13:-}
	local es_cpu base_cpu cpu_ratio es_tps base_tps ratio noise verdict es_items base_items

	read -r es_cpu base_cpu cpu_ratio < <(awk -v et="$es_ticks" -v ex="$es_xacts" \
		-v bt="$base_ticks" -v bx="$base_xacts" -v hz="$CLK_TCK" 'BEGIN {
			e = et * 1e6 / hz / ex; b = bt * 1e6 / hz / bx
			printf "%.1f %.1f %.3f\n", e, b, b / e
		}')
	PAIR_BASE_CPU=$base_cpu
	printf '%s, %s client(s), synchronous_commit=%s: event_store %s | baseline %s | cpu us/op %s | %s%s\n' \
		"$name" "$clients" "$sync" "$es_runs" "$base_runs" "$es_cpu" "$base_cpu" "$suffix" \
		>>"$LOG_DIR/segments.txt"
	read -r es_tps base_tps ratio noise < <(median_ratio "$es_runs" "$base_runs")
	if [[ "$target" == - ]]; then
		verdict="-"
	elif awk -v r="$ratio" -v t="$target" 'BEGIN { exit !(r >= t) }'; then
		verdict=">= $target ok"
	else
		verdict=">= $target MISS"
	fi
	if [[ "$target" != - ]]; then
		# the targets are about the primary (synchronous_commit = off) figures
		if [[ "$sync" == off ]]; then
			TARGETS_TOTAL=$((TARGETS_TOTAL + 1))
			[[ "$verdict" == *ok ]] && TARGETS_MET=$((TARGETS_MET + 1))
		else
			SYNC_TOTAL=$((SYNC_TOTAL + 1))
			[[ "$verdict" == *ok ]] && SYNC_MET=$((SYNC_MET + 1))
		fi
	fi
	if [[ "$items" -gt 1 ]]; then
		es_items=$(awk -v a="$es_tps" -v n="$items" 'BEGIN { printf "%.0f", a * n }')
		base_items=$(awk -v a="$base_tps" -v n="$items" 'BEGIN { printf "%.0f", a * n }')
	else
		es_items="-"
		base_items="-"
	fi
	ROWS+=("$(table_row \
		"$name" "$clients" "$sync" "$es_tps" "$base_tps" "$ratio" "$noise" \
		"$es_cpu" "$base_cpu" "$cpu_ratio" "$unit" "$es_items" "$base_items" "$verdict")")
}

# table_row CASE CLIENTS SYNC ES_TPS BASE_TPS RATIO NOISE ES_CPU BASE_CPU CPU_RATIO
#   UNIT ES_ITEMS BASE_ITEMS TARGET: one line of the result tables (and their
#   header), in their columns; a tps that is a number is shown to one decimal
table_row() {
	local es=$4 base=$5
	[[ ! "$es" =~ ^[0-9.]+$ ]] || es=$(printf '%.1f' "$es")
	[[ ! "$base" =~ ^[0-9.]+$ ]] || base=$(printf '%.1f' "$base")
	printf '%-22s | %7s | %-11s | %15s | %12s | %6s | %5s | %9s | %9s | %6s | %-8s | %11s | %11s | %s' \
		"$1" "$2" "$3" "$es" "$base" "${@:6}"
}

# pair NAME ES_SCRIPT BASE_SCRIPT CLIENTS SYNC ITEMS_PER_OP ITEM_UNIT TARGET
#
# Both sides are warmed up, then measured segment by segment in the order
# above, so that a change in the machine's load during the pair hits both
# sides alike.  A side's tps is the median of its segments (robust against one
# disturbed segment); "noise" is the larger spread (max - min) of one side's
# segments relative to its median.  PAIR_HOOK, when set, is called as
# "$PAIR_HOOK before|after es|base LOGNAME" around every run, warm-ups
# included, outside what is timed (before the segment's CHECKPOINT, after its
# CPU reading); PAIR_EXTRA holds more pgbench options for both scripts.
pair() {
	local name=$1 es=$2 base=$3 clients=$4 sync=$5 items=$6 unit=$7 target=$8
	local tag
	local -a es_runs=() base_runs=()
	local side script i=0 tps ticks xacts base_tps ratio noise
	local es_ticks=0 es_xacts=0 base_ticks=0 base_xacts=0
	local floor_script="" floor_name="" floor_ticks=0 floor_xacts=0 floor_tps floor_cpu floor_line=""
	local -a floor_runs=() order=("${ORDER[@]}")

	if [[ -n "$PAIR_FLOOR" ]]; then
		floor_script=${PAIR_FLOOR%%|*}
		floor_name=${PAIR_FLOOR#*|}
		order=("${ORDER_FLOOR[@]}")
	fi

	tag=${es#es_}
	tag="${tag%.sql}-c$clients-$sync"
	log "   $name, $clients client(s), synchronous_commit=$sync"
	pair_hook before es "warmup-es-$tag"
	run_pgbench "$es" "$clients" "$sync" "$WARMUP" "warmup-es-$tag" >/dev/null
	pair_hook after es "warmup-es-$tag"
	pair_hook before base "warmup-base-$tag"
	run_pgbench "$base" "$clients" "$sync" "$WARMUP" "warmup-base-$tag" >/dev/null
	pair_hook after base "warmup-base-$tag"
	if [[ -n "$floor_script" ]]; then
		pair_hook before floor "warmup-floor-$tag"
		run_pgbench "$floor_script" "$clients" "$sync" "$WARMUP" "warmup-floor-$tag" >/dev/null
		pair_hook after floor "warmup-floor-$tag"
	fi
	for side in "${order[@]}"; do
		i=$((i + 1))
		case $side in
		es) script=$es ;;
		floor) script=$floor_script ;;
		*) script=$base ;;
		esac
		pair_hook before "$side" "$side-$tag-$i"
		read -r tps ticks xacts < <(measure "$script" "$clients" "$sync" "$SEGMENT" "$side-$tag-$i")
		[[ -n "$tps" ]] || die "no result for $script"
		pair_hook after "$side" "$side-$tag-$i"
		if [[ $side == es ]]; then
			es_runs+=("$tps")
			es_ticks=$((es_ticks + ticks))
			es_xacts=$((es_xacts + xacts))
		elif [[ $side == floor ]]; then
			floor_runs+=("$tps")
			floor_ticks=$((floor_ticks + ticks))
			floor_xacts=$((floor_xacts + xacts))
		else
			base_runs+=("$tps")
			base_ticks=$((base_ticks + ticks))
			base_xacts=$((base_xacts + xacts))
		fi
	done
	if [[ -n "$floor_script" ]]; then
		floor_cpu=$(awk -v t="$floor_ticks" -v x="$floor_xacts" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", t * 1e6 / hz / x }')
		floor_line=" | floor ${floor_runs[*]} | floor cpu us/op $floor_cpu"
	fi
	pair_row "$name" "$clients" "$sync" "$items" "$unit" "$target" \
		"${es_runs[*]}" "$es_ticks" "$es_xacts" "${base_runs[*]}" "$base_ticks" "$base_xacts" "$floor_line"
	if [[ -n "$floor_script" ]]; then
		# the floor's row: its ratio bounds what the es side could reach, no verdict
		read -r floor_tps base_tps ratio noise < <(median_ratio "${floor_runs[*]}" "${base_runs[*]}")
		ROWS+=("$(table_row \
			"$floor_name" "$clients" "$sync" "$floor_tps" "$base_tps" "$ratio" "$noise" \
			"$floor_cpu" "$PAIR_BASE_CPU" "$(awk -v b="$PAIR_BASE_CPU" -v f="$floor_cpu" 'BEGIN { printf "%.3f", b / f }')" \
			"$unit" - - "floor, no target")")
	fi
}
