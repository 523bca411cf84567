#!/usr/bin/env bash
#
# bench/growth.sh - does event_store cost the same on a large store as on a
# small one?  For each store size, builds a store of realistic events (about
# 500 bytes of JSON each, appended in batches) and a bare table of the same
# shape holding the same rows, then measures the main benchmark's cases on
# both (interleaved pairs, see run.sh) and the bytes on disk per event.
# Prints one table per size and a summary across sizes; written to
# bench/results/growth.txt.
#
# Environment:
#   GROWTH_SIZES    store sizes in events, space-separated (default 200000),
#                   measured in that order; the summaries compare each size
#                   with the smallest
#   GROWTH_STREAMS  streams per store (default: size / 20 below 10M events,
#                   1,000,000 from 10M on)
#   GROWTH_SECONDS  measured seconds per side of a case (default 6)
#   GROWTH_WARMUP   warm-up seconds per side (default GROWTH_SECONDS/5, at least 1)
#   GROWTH_CLIENTS  clients of the multi-client cases (default 8)
#   GROWTH_LOADERS  parallel loading sessions (default: number of cores)
#   GROWTH_CASES    subset of: append_one batch100 read_stream read_all
#                   read_category aggregate followers (default: all)
#   GROWTH_FOLLOW_EVENTS  single appends of the followers case (default 40000)
#   GROWTH_PORT     port of the throwaway cluster (default 5541)
#   GROWTH_KEEP     set to 1 to keep each size's database until the end
#   GROWTH_APART    1: measure the store and the bare table one after the
#                   other, each alone in the cluster (the store's rows are
#                   exported, its database dropped, the bare table loaded
#                   from the export in a database of its own), for sizes
#                   whose two copies do not fit on the disk together; 0:
#                   both in one database, cases as interleaved pairs; auto
#                   (default): 1 for a size whose two copies and the export
#                   would take more than the free disk space
#   GROWTH_ARCHIVE  a fraction (e.g. 0.95): once loaded, the events below that
#                   fraction of the positions are archived with archive_events()
#                   to a tablespace, in GROWTH_ARCHIVE_RANGES ranges (default 4),
#                   and the cases run on the archived store (the baseline
#                   stays one table)
#   GROWTH_HOT      events the hot table keeps while the store grows
#                   (default 1000000; 0 with GROWTH_ARCHIVE; 0: never
#                   archive).  The load goes in rounds of GROWTH_RANGE / 5
#                   events; after each, while the hot table holds more than
#                   GROWTH_HOT + GROWTH_RANGE events, its oldest GROWTH_RANGE
#                   move to an archived range in the default tablespace with
#                   archive_events() and the hot table is vacuumed; after the
#                   load, the events below the last GROWTH_HOT move too and
#                   the hot table's indexes are rebuilt (REINDEX
#                   CONCURRENTLY): what an operator's schedule does to keep a
#                   large store's appends on small indexes
#   GROWTH_RANGE    events per archived range of that policy (default 5000000)
#   BENCH_SKIP_BUILD set to 1 to use the installed extension as it is
#   PG_CONFIG       pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
G="$BENCH_DIR/growth"

SIZES=${GROWTH_SIZES:-200000}
SECONDS_PER_RUN=${GROWTH_SECONDS:-6}
WARMUP=${GROWTH_WARMUP:-$(( SECONDS_PER_RUN / 5 > 1 ? SECONDS_PER_RUN / 5 : 1 ))}
CLIENTS=${GROWTH_CLIENTS:-8}
PORT=${GROWTH_PORT:-5541}
NPROC=$(nproc)
LOADERS=${GROWTH_LOADERS:-$NPROC}
HOT=${GROWTH_HOT:-$([[ -n "${GROWTH_ARCHIVE:-}" ]] && echo 0 || echo 1000000)}
RANGE=${GROWTH_RANGE:-5000000}
CASES=${GROWTH_CASES:-"append_one batch100 read_stream read_all read_category aggregate followers"}
FOLLOW_EVENTS=${GROWTH_FOLLOW_EVENTS:-40000}
PG_CONFIG=${PG_CONFIG:-pg_config}

RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/growth.txt"

log() { printf '%s\n' "$*" >&2; }
die() { log "growth.sh: $*"; exit 1; }

[[ "$HOT" =~ ^[0-9]+$ ]] || die "GROWTH_HOT: $HOT is not a number of events"
[[ "$RANGE" =~ ^[0-9]+$ && "$RANGE" -ge 1000 ]] || die "GROWTH_RANGE: $RANGE is not a number of at least 1000"
for size in $SIZES; do
	[[ "$size" =~ ^[0-9]+$ && "$size" -ge 20000 ]] || die "GROWTH_SIZES: $size is not a number of at least 20000"
done

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build
BUILD_DESC="event_store $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
if ! git -C "$REPO_DIR" diff --quiet HEAD -- src sql Makefile event_store.control 2>/dev/null; then
	BUILD_DESC="$BUILD_DESC with uncommitted changes"
fi

# The same settings as run.sh: shared_buffers far below the large stores, so
# that what does not stay cached shows.  No parallel plans: the appends of the
# cases grow the bare table past its statistics (autovacuum is off), and the
# planner then reads the 1,000 rows of reader-1 with two parallel workers,
# whose start costs more than the read (event_store's reads are one process).
bench_cluster_start es-growth GROWTH_PORT "shared_buffers = 512MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
maintenance_work_mem = 256MB
autovacuum = off
max_parallel_workers_per_gather = 0"

# pair()'s interleaving (see run.sh)
if (( SECONDS_PER_RUN >= 8 )); then
	SEGMENTS=4
	ORDER=(es base base es base es es base)
else
	SEGMENTS=2
	ORDER=(es base base es)
fi
SEGMENT=$(( SECONDS_PER_RUN / SEGMENTS > 1 ? SECONDS_PER_RUN / SEGMENTS : 1 ))
TARGETS_MET=0 TARGETS_TOTAL=0 SYNC_MET=0 SYNC_TOTAL=0

SCRIPTS="$WORK/scripts"
mkdir -p "$SCRIPTS" "$RESULTS_DIR"
declare -A ES_TPS BASE_TPS RATIO ES_CPU CPU_RATIO
KEYS=()
REPORT=()
out() { REPORT+=("$*"); log "$*"; }

# paste the documents into the pgbench scripts (they hold no single quotes)
make_scripts() {
	local one batch f
	one=$("${PSQL[@]}" -Atc "SELECT bench.event_doc('Event1', 424242)")
	batch=$("${PSQL[@]}" -Atc "SELECT jsonb_agg(bench.event_doc('Event' || (i % 7), 900000 + i) ORDER BY i)
	                             FROM generate_series(1, 100) AS i")
	for f in "$G"/es_*.sql "$G"/base_*.sql; do
		awk -v one="$one" -v batch="$batch" '{
			while ((i = index($0, "@ONE@")) > 0) $0 = substr($0, 1, i - 1) one substr($0, i + 5)
			while ((i = index($0, "@BATCH@")) > 0) $0 = substr($0, 1, i - 1) batch substr($0, i + 7)
			print
		}' "$f" >"$SCRIPTS/$(basename "$f")"
	done
}

# archive_store FRACTION RANGES: archive the events below FRACTION of the
# positions to the tablespace bench_cold, in RANGES ranges of equal width,
# then VACUUM ANALYZE every tier
archive_store() {
	local fraction=$1 ranges=$2
	"${PSQL[@]}" -Atc "SELECT 1 FROM pg_tablespace WHERE spcname = 'bench_cold'" | grep -q 1 ||
		"${PSQL[@]}" -c "SET allow_in_place_tablespaces = on" -c "CREATE TABLESPACE bench_cold LOCATION ''" >&2
	"${PSQL[@]}" -Atc "SELECT sum(event_store.archive_events(
	                              (h * $fraction * k / $ranges)::bigint + 1, 'bench_cold'))
	                     FROM (SELECT event_store.head_position() AS h) AS x, generate_series(1, $ranges) AS k" >"$WORK/archived.txt"
	"${PSQL[@]}" -Atc "SELECT format('VACUUM ANALYZE event_store.%I', relation) FROM event_store.archived_ranges" |
		while IFS= read -r stmt; do "${PSQL[@]}" -c "$stmt" >&2; done
	"${PSQL[@]}" -c "VACUUM ANALYZE event_store.events" >&2
	ARCHIVE_DESC="archived $(cat "$WORK/archived.txt") events below $fraction of the positions in $ranges ranges (tablespace bench_cold), "
}

# load_streams LO HI: streams LO .. HI, per_stream events each, by
# GROWTH_LOADERS sessions at once
load_streams() {
	local lo hi pids=() chunk=$(( ($2 - $1 + LOADERS) / LOADERS ))
	for (( lo = $1; lo <= $2; lo += chunk )); do
		hi=$(( lo + chunk - 1 < $2 ? lo + chunk - 1 : $2 ))
		PGOPTIONS="-c synchronous_commit=off" "${PSQL[@]}" -v lo="$lo" -v hi="$hi" \
			-v per_stream="$per_stream" -f "$G/load.sql" >&2 &
		pids+=($!)
	done
	for p in "${pids[@]}"; do wait "$p" || die "a loader failed"; done
}

# archive_step MIN: when the hot table holds more than GROWTH_HOT + MIN
# settled events, move its oldest (at most GROWTH_RANGE, leaving GROWTH_HOT)
# to a new archived range in the default tablespace and vacuum it; prints the
# number of events moved
archive_step() {
	local moved
	moved=$("${PSQL[@]}" -Atc "SELECT coalesce(sum(event_store.archive_events(least(e + $RANGE, h - $HOT), 'pg_default')), 0)
	          FROM (SELECT coalesce((SELECT max(end_position) FROM event_store.archived_ranges), 1) AS e,
	                       event_store.head_position() + 1 AS h) AS x
	         WHERE h - e > $HOT + $1")
	(( moved == 0 )) || "${PSQL[@]}" -c "VACUUM event_store.events" >&2
	echo "$moved"
}

# archive_policy_finish: after the load, archive all but the last
# GROWTH_HOT events, rebuild the hot table's indexes (the moved entries
# left their pages sparse) and vacuum every range
archive_policy_finish() {
	local moved
	while moved=$(archive_step 0) && (( moved > 0 )); do :; done
	if "${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.archived_ranges" | grep -qx 0; then
		return
	fi
	"${PSQL[@]}" -c "REINDEX TABLE CONCURRENTLY event_store.events" >&2
	"${PSQL[@]}" -Atc "SELECT format('VACUUM ANALYZE event_store.%I', relation) FROM event_store.archived_ranges" |
		while IFS= read -r stmt; do "${PSQL[@]}" -c "$stmt" >&2; done
	"${PSQL[@]}" -c "VACUUM ANALYZE event_store.events" >&2
	ARCHIVE_DESC="$("${PSQL[@]}" -Atc "SELECT count(*) || ' archived ranges (' || min(end_position - first_position) || ' to ' ||
	                    max(end_position - first_position) || ' positions each) below position ' || max(end_position) ||
	                    ' by the policy of GROWTH_HOT=$HOT, GROWTH_RANGE=$RANGE, '
	                  FROM event_store.archived_ranges")"
}

# sizes_of es|base: bytes on disk per event of one side's table (its
# archived ranges included, and for the store the correlation runs that
# read_correlated reads, event_store.correlations, and the archived
# streams' versions that append() reads, event_store.archived_streams), one
# line per part: "part|bytes"
sizes_of() {
	local rels table=bench.plain_events
	if [[ $1 == es ]]; then
		table=event_store.events
		rels="SELECT 'event_store.events'::regclass AS rel, '' AS what
		      UNION ALL SELECT inhrelid::regclass, '' FROM pg_inherits WHERE inhparent = 'event_store.events'::regclass
		      UNION ALL SELECT 'event_store.correlations'::regclass, ' (correlation runs)'
		      UNION ALL SELECT 'event_store.archived_streams'::regclass, ' (archived streams)'"
	else
		rels="SELECT 'bench.plain_events'::regclass AS rel, '' AS what"
	fi
	"${PSQL[@]}" -At -F '|' -c "
	WITH rels AS ($rels),
	n AS (SELECT count(*)::numeric AS n FROM $table),
	parts AS (
	    SELECT 'heap' || what AS part, pg_relation_size(rel) AS bytes FROM rels
	    UNION ALL
	    SELECT 'toast (heap + index)' || what, coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0)
	      FROM rels JOIN pg_class c ON c.oid = rel
	    UNION ALL
	    SELECT 'fsm + vm' || what, pg_relation_size(rel, 'fsm') + pg_relation_size(rel, 'vm') FROM rels
	    UNION ALL
	    SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING btree ', ''),
	           pg_relation_size(i.indexrelid)
	      FROM rels JOIN pg_index i ON i.indrelid = rel)
	SELECT part, sum(bytes) / nullif(n, 0) FROM parts, n GROUP BY part, n ORDER BY part"
}

# bytes_table ES_FILE BASE_FILE: the two sides' sizes_of, part by part, and
# their totals
bytes_table() {
	awk -F'|' 'NR == FNR { es[$1] = $2; order[++n] = $1; next }
		{ base[$1] = $2; if (!($1 in es)) order[++n] = $1 }
		END {
			printf "%-70s | %11s | %11s | %s\n", "bytes per event", "event_store", "baseline", "ratio"
			for (i = 1; i <= n; i++) {
				p = order[i]; te += es[p]; tb += base[p]
				printf "%-70s | %11.1f | %11.1f | %s\n", p, es[p], base[p], (base[p] > 0 ? sprintf("%.3f", es[p] / base[p]) : "-")
			}
			printf "%-70s | %11.1f | %11.1f | %.3f\n", "total", te, tb, te / tb
		}' "$1" "$2"
}

# at_clients "CLIENT COUNTS" KEY NAME SCRIPT ITEMS UNIT CMD...: CMD KEY NAME
# ES_SCRIPT BASE_SCRIPT CLIENTS ITEMS UNIT for each client count, with the
# scripts es_SCRIPT and base_SCRIPT and the client count in the key
at_clients() {
	local n
	for n in $1; do
		"${@:7}" "$2 c$n" "$3" "es_$4" "base_$4" "$n" "$5" "$6"
	done
}

# run_cases CMD...: at_clients for each case of GROWTH_CASES
run_cases() {
	local c
	for c in $CASES; do
		case $c in
		append_one) at_clients "1 $CLIENTS" "append1" "append 1" append_one.sql 1 events "$@" ;;
		batch100) at_clients "1 $CLIENTS" "batch100" "append batch 100" append_batch.sql 100 events "$@" ;;
		read_stream) at_clients 1 "read_stream 1000" "read_stream 1000" read_stream.sql 1000 rows "$@" ;;
		read_all) at_clients "1 $CLIENTS" "read_all page" "read_all page 1000" read_all.sql 1000 rows "$@" ;;
		read_category) at_clients "1 $CLIENTS" "read_category page" "read_category 1000" read_category.sql 1000 rows "$@" ;;
		aggregate) at_clients 1 "load_aggregate snap" "load_aggregate 10037" load_aggregate.sql 1 loads "$@" ;;
		followers) ;;	# the store's alone (followers_row)
		*) die "unknown case $c" ;;
		esac
	done
}

# followers_row: GROWTH_CLIENTS writers append GROWTH_FOLLOW_EVENTS single
# events to random streams (the append case's script), alone and then with 2
# followers paging read_all from the head (bench/sql/followers.sql, as in
# run.sh); the followers must have seen exactly the positions written
# meanwhile.  The store's side only: the bare table has no followers.  Sets
# FOLLOW_ROW, a row of the table whose "baseline" is the same appends
# without followers (the CPU with followers includes theirs).
followers_row() {
	local per=$(( FOLLOW_EVENTS / CLIENTS )) alone with h0 rc=0
	local t0 t1 t2 t3 n1 cpu_alone cpu_with
	"${PSQL[@]}" -f "$BENCH_DIR/sql/followers.sql" >&2
	log "   followers: $CLIENTS writers x $per appends, alone, then with 2 followers"
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	t0=$(cluster_cpu_ticks)
	alone=$(pgbench_run follow-alone es_append_one.sql "$CLIENTS" off -t "$per" "${PAIR_EXTRA[@]}")
	sleep 0.1
	t1=$(cluster_cpu_ticks)
	h0=$("${PSQL[@]}" -Atc "SELECT event_store.head_position()")
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	t2=$(cluster_cpu_ticks)
	followers_start "$h0"
	with=$(pgbench_run follow-with es_append_one.sql "$CLIENTS" off -t "$per" "${PAIR_EXTRA[@]}") || rc=1
	followers_finish "$h0" $(( per * CLIENTS )) "$rc"
	sleep 0.1
	t3=$(cluster_cpu_ticks)
	n1=$(( per * CLIENTS ))
	read -r cpu_alone cpu_with < <(awk -v a=$(( t1 - t0 )) -v w=$(( t3 - t2 )) -v n="$n1" -v hz="$CLK_TCK" \
		'BEGIN { printf "%.1f %.1f\n", a * 1e6 / hz / n, w * 1e6 / hz / n }')
	FOLLOW_ROW=$(table_row \
		"append w/ 2 followers" "$CLIENTS" off "${with:-0}" "$alone" \
		"$(awk -v a="${with:-0}" -v b="$alone" 'BEGIN { printf "%.3f", a / b }')" "-" \
		"$cpu_with" "$cpu_alone" "$(awk -v a="$cpu_alone" -v w="$cpu_with" 'BEGIN { printf "%.3f", a / w }')" \
		events - - "check $FOLLOW_STATUS")
}

# follow_case: followers_row when GROWTH_CASES has it; follow_keep: its row
# into ROWS and the summary
FOLLOW_ROW="" FOLLOW_NOTE=""
follow_case() {
	FOLLOW_ROW="" FOLLOW_NOTE=""
	[[ " $CASES " != *" followers "* ]] || followers_row
}
follow_keep() {
	[[ -n "$FOLLOW_ROW" ]] || return 0
	ROWS+=("$FOLLOW_ROW")
	keep_row "followers c$CLIENTS"
}

# keep_row KEY: the summary's figures of the row just added to ROWS
keep_row() {
	local key=$1 row=${ROWS[-1]}
	[[ " ${KEYS[*]} " == *" $key "* ]] || KEYS+=("$key")
	ES_TPS[$size|$key]=$(awk -F'|' '{ gsub(/ /, "", $4); print $4 }' <<<"$row")
	BASE_TPS[$size|$key]=$(awk -F'|' '{ gsub(/ /, "", $5); print $5 }' <<<"$row")
	RATIO[$size|$key]=$(awk -F'|' '{ gsub(/ /, "", $6); print $6 }' <<<"$row")
	ES_CPU[$size|$key]=$(awk -F'|' '{ gsub(/ /, "", $8); print $8 }' <<<"$row")
	CPU_RATIO[$size|$key]=$(awk -F'|' '{ gsub(/ /, "", $10); print $10 }' <<<"$row")
}

# growth_pair KEY NAME ES BASE CLIENTS ITEMS UNIT: one interleaved pair
growth_pair() {
	pair "$2" "$3" "$4" "$5" off "$6" "$7" -
	keep_row "$1"
}

# When the sides are measured apart: one side's warm-up and as many
# segments as a pair gives it, one after the other.
# side_runs es|base KEY NAME ES BASE CLIENTS ITEMS UNIT
declare -A SIDE_RUNS SIDE_TICKS SIDE_XACTS
side_runs() {
	local side=$1 key=$2 name=$3 clients=$6 script tag k tps ticks xacts
	local runs="" sum_ticks=0 sum_xacts=0
	script=$4
	[[ $side == es ]] || script=$5
	tag="${script%.sql}-c$clients-off"
	log "   $name, $clients client(s), $side side"
	run_pgbench "$script" "$clients" off "$WARMUP" "warmup-$tag" >/dev/null
	for (( k = 1; k <= SEGMENTS; k++ )); do
		read -r tps ticks xacts < <(measure "$script" "$clients" off "$SEGMENT" "$side-$tag-$k")
		[[ -n "$tps" ]] || die "no result for $script"
		runs+="${runs:+ }$tps"
		sum_ticks=$(( sum_ticks + ticks ))
		sum_xacts=$(( sum_xacts + xacts ))
	done
	SIDE_RUNS[$side|$key]=$runs
	SIDE_TICKS[$side|$key]=$sum_ticks
	SIDE_XACTS[$side|$key]=$sum_xacts
}

# apart_row KEY NAME ES BASE CLIENTS ITEMS UNIT: the row of a case measured apart
apart_row() {
	pair_row "$2" "$5" off "$6" "$7" - \
		"${SIDE_RUNS[es|$1]}" "${SIDE_TICKS[es|$1]}" "${SIDE_XACTS[es|$1]}" \
		"${SIDE_RUNS[base|$1]}" "${SIDE_TICKS[base|$1]}" "${SIDE_XACTS[base|$1]}"
	keep_row "$1"
}

# check_store: the store after the cases (counts, gapless versions)
check_store() {
	"${PSQL[@]}" -Atc "SELECT 'after the cases: ' || count(*) || ' events, versions gapless: ' ||
	    (SELECT bool_and(n = v) FROM (SELECT count(*) AS n, max(stream_version) AS v FROM event_store.events GROUP BY stream_id) AS s)
	    FROM event_store.events"
}

# the compressor of the store's export (sides measured apart): the export
# shares the disk with the store, so the densest of the fast ones
if command -v zstd >/dev/null; then
	PACK="zstd -q -1 -T0" UNPACK="zstd -q -d"
elif command -v lz4 >/dev/null; then
	PACK="lz4 -q" UNPACK="lz4 -dq"
else
	PACK="gzip -1" UNPACK="gzip -d"
fi

for size in $SIZES; do
	if [[ -n "${GROWTH_STREAMS:-}" ]]; then
		streams=$GROWTH_STREAMS
	elif (( size >= 10000000 )); then
		streams=1000000
	else
		streams=$(( size / 20 ))
	fi
	per_stream=$(( size / streams ))
	(( per_stream >= 1 )) || die "GROWTH_STREAMS=$streams is more than $size events"
	db="growth_$size"
	LOG_DIR="$RESULTS_DIR/growth-logs/$size"
	mkdir -p "$LOG_DIR"
	rm -f "$LOG_DIR"/*.log "$LOG_DIR/segments.txt"
	ROWS=()
	apart=${GROWTH_APART:-auto}
	if [[ $apart == auto ]]; then
		# two copies of about 1 kB per event, the export, WAL
		free_kb=$(df -Pk "$DATA" | awk 'NR == 2 { print $4 }')
		apart=$(awk -v n="$size" -v f="$free_kb" 'BEGIN { print (n * 2.5 + 12e6 > f) ? 1 : 0 }')
	fi

	log "== $size events: $streams streams of $per_stream events, $LOADERS loaders$( (( apart )) && echo ', sides measured apart')"
	"$PGBIN/createdb" "$db"
	export PGDATABASE=$db
	"${PSQL[@]}" -f "$G/setup.sql" >&2
	t0=$(date +%s)
	# with the archiving policy, in rounds of GROWTH_RANGE / 5 events, each
	# followed by the policy's step (the loaders wait while a range moves:
	# the hot table never holds much more than GROWTH_HOT + GROWTH_RANGE)
	round=$streams
	if (( HOT > 0 )); then
		round=$(( RANGE / 5 / per_stream > 1 ? RANGE / 5 / per_stream : 1 ))
	fi
	for (( rlo = 1; rlo <= streams; rlo += round )); do
		load_streams "$rlo" $(( rlo + round - 1 < streams ? rlo + round - 1 : streams ))
		if (( HOT > 0 )); then
			while moved=$(archive_step "$RANGE") && (( moved > 0 )); do :; done
		fi
	done
	t1=$(date +%s)
	"${PSQL[@]}" -f "$G/finish_store.sql" >&2
	ARCHIVE_DESC=""
	if (( HOT > 0 )); then
		archive_policy_finish
	fi
	if [[ -n "${GROWTH_ARCHIVE:-}" ]]; then
		archive_store "$GROWTH_ARCHIVE" "${GROWTH_ARCHIVE_RANGES:-4}"
	fi
	TOTAL_ROWS=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events")
	ES_STATE=$("${PSQL[@]}" -Atc "SELECT state FROM event_store.load_aggregate('aggsnap-1')")
	MAXPOS=$("${PSQL[@]}" -Atc "SELECT max(global_position) - 1000 FROM event_store.events")
	CATMAX=$("${PSQL[@]}" -Atc "SELECT min(global_position) FROM (SELECT global_position FROM event_store.events
	          WHERE split_part(stream_id, '-', 1) COLLATE \"C\" = 'order' ORDER BY global_position DESC LIMIT 1000) AS l")
	PAIR_EXTRA=(-D streams="$streams" -D catmax="$CATMAX")
	make_scripts
	sizes_of es >"$WORK/es-sizes.txt"
	if (( apart )); then
		# the store's rows and snapshots for the bare table, then the
		# store's side of every case
		"${PSQL[@]}" -c "COPY (SELECT * FROM event_store.events) TO STDOUT" | $PACK >"$WORK/events.export"
		"${PSQL[@]}" -c "COPY event_store.snapshots TO STDOUT" >"$WORK/snapshots.export"
		t2=$(date +%s)
		HOW="exported ($PACK) in $(( t2 - t1 )) s"
		run_cases side_runs es
		follow_case
		sizes_of es >"$WORK/es-sizes-after.txt"
		check_store >"$WORK/check.txt"
		export PGDATABASE=bench
		"$PGBIN/dropdb" --force "$db"
		db="${db}_bare"
		"$PGBIN/createdb" "$db"
		export PGDATABASE=$db
		"${PSQL[@]}" -f "$G/setup.sql" >&2
		$UNPACK <"$WORK/events.export" | "${PSQL[@]}" -c "COPY bench.plain_events FROM STDIN"
		"${PSQL[@]}" -c "COPY bench.plain_snapshots FROM STDIN" <"$WORK/snapshots.export"
		rm -f "$WORK/events.export" "$WORK/snapshots.export"
		t3=$(date +%s)
		"${PSQL[@]}" -v apart=1 -v store_rows="$TOTAL_ROWS" -v es_state="$ES_STATE" -f "$G/finish.sql" >&2
		HOW+=", the store's side of every case, the store dropped, the baseline loaded from the export in a database of its own in $(( t3 - t2 )) s"
		run_cases side_runs base
		sizes_of base >"$WORK/base-sizes.txt"
		run_cases apart_row
		follow_keep
	else
		"${PSQL[@]}" -v apart=0 -v store_rows="$TOTAL_ROWS" -v es_state="$ES_STATE" -f "$G/finish.sql" >&2
		t2=$(date +%s)
		HOW="baseline copied in $(( t2 - t1 )) s"
		sizes_of base >"$WORK/base-sizes.txt"
		bytes_table "$WORK/es-sizes.txt" "$WORK/base-sizes.txt" >"$WORK/bytes-before.txt"
		run_cases growth_pair
		follow_case
		follow_keep
		sizes_of es >"$WORK/es-sizes-after.txt"
		check_store >"$WORK/check.txt"
	fi
	load_rate=$(rate $(( streams * per_stream )) $(( t1 - t0 )))

	out ""
	out "== store of $TOTAL_ROWS events ($streams streams of $per_stream + reader-1 (1,000) + aggsnap-1 (10,037))"
	out "   loaded by append() in batches of $per_stream at $load_rate events/s ($LOADERS sessions, $(( t1 - t0 )) s), ${ARCHIVE_DESC}$HOW (with VACUUM ANALYZE)"
	(( apart )) && out "   the two sides measured apart: each case's store side (warm-up, $SEGMENTS segments) with the store alone in the cluster, then its baseline side with the bare table alone"
	[[ -s "$WORK/bytes-before.txt" ]] || bytes_table "$WORK/es-sizes.txt" "$WORK/base-sizes.txt" >"$WORK/bytes-before.txt"
	while IFS= read -r line; do out "   $line"; done <"$WORK/bytes-before.txt"
	rm -f "$WORK/bytes-before.txt"
	out ""
	out "$(table_row \
		"case" "clients" "sync_commit" "event_store tps" "baseline tps" "ratio" "noise" \
		"es cpu/op" "base cpu" "cpu r." "unit" "event_store" "baseline" "target")"
	for r in "${ROWS[@]}"; do out "$r"; done
	[[ -z "$FOLLOW_NOTE" ]] || out "   $FOLLOW_NOTE"
	out "   bytes per event after the cases (event_store's appends make time-ordered ids, the baseline's random ones):"
	sizes_of base >"$WORK/base-sizes-after.txt"
	while IFS= read -r line; do out "   $line"; done < <(bytes_table "$WORK/es-sizes-after.txt" "$WORK/base-sizes-after.txt")
	while IFS= read -r line; do out "   $line"; done <"$WORK/check.txt"
	if [[ "${GROWTH_KEEP:-0}" != 1 ]]; then
		export PGDATABASE=bench
		"$PGBIN/dropdb" --force "$db"
	fi
done

report() {
	echo "event_store growth benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "server:   $("${PSQL[@]}" -d bench -Atc 'SELECT version()')"
	echo "build:    $BUILD_DESC"
	echo "machine:  $(uname -sm), nproc=$NPROC, $(awk '/MemTotal/ { printf "%.0f GB RAM", $2 / 1048576 }' /proc/meminfo)"
	echo "settings: shared_buffers=512MB, synchronous_commit=off, autovacuum=off; pgbench -M prepared;"
	echo "          per side ${WARMUP}s warm-up, then $SEGMENTS segments of -T $SEGMENT in the order ${ORDER[*]}"
	printf '%s\n' "${REPORT[@]}"
	echo
	echo "== summary, event_store tps per size: tps (tps / tps of the smallest size), ratio to the baseline"
	summary_table ES_TPS RATIO "%9.1f (%5.3f) vs %5.3f" up
	echo
	echo "== summary, server CPU per operation (us): event_store cpu/op (smallest size's / this one), cpu ratio to the baseline"
	echo "   (steadier than tps on a busy machine; both ratios read like tps ratios: below 1 = costlier)"
	summary_table ES_CPU CPU_RATIO "%9.1f (%5.3f) vs %5.3f" down
	echo
	echo "== summary, the bare table's tps per size: tps (tps / tps of the smallest size)"
	echo "   (what the machine's caches and disk take from the same work as the store grows, with no event store around it)"
	summary_table BASE_TPS "" "%9.1f (%5.3f)" up
}

# summary_table VALUES RATIOS FORMAT up|down: one line per case, one column per size
#   (RATIOS "": no ratio column)
summary_table() {
	local -n vals=$1
	local fmt=$3 dir=$4 first key s line sizes r
	[[ -z "$2" ]] || local -n ratios=$2
	# in size order, the smallest the reference, whatever the order of the runs
	sizes=$(tr ' ' '\n' <<<"$SIZES" | sort -n | tr '\n' ' ')
	first=${sizes%% *}
	line=$(printf '%-26s' "case")
	for s in $sizes; do line+=$(printf ' | %26s' "$s events"); done
	echo "$line"
	for key in "${KEYS[@]}"; do
		line=$(printf '%-26s' "$key")
		for s in $sizes; do
			if [[ -n "${vals[$s|$key]:-}" ]]; then
				r=""
				[[ -z "$2" ]] || r=${ratios[$s|$key]}
				line+=" | "$(awk -v t="${vals[$s|$key]}" -v f="${vals[$first|$key]}" -v r="$r" \
					-v fmt="$fmt" -v dir="$dir" 'BEGIN { printf fmt, t, (dir == "up" ? t / f : f / t), r }')
			fi
		done
		echo "$line"
	done
}
report | tee "$RESULT_FILE"
