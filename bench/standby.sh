#!/usr/bin/env bash
#
# bench/standby.sh - a follower on a hot standby: read_all pages on a
# streaming physical standby against the same pages on its primary.
#
# Builds and installs the extension, starts a throwaway primary
# (wal_level = replica) with the fixture of bench/run.sh (sql/setup.sql:
# 200,000 events in 10,000 streams), makes a streaming standby of it with
# pg_basebackup, waits until the standby has replayed everything, then runs
# pgbench/es_read_all.sql (a page of 1,000 events at a random position) on
# the standby and on the primary, warmed up, then interleaved in segments
# (S P P S, or S P P S P S S P with 8 or more seconds per side), each after a
# CHECKPOINT (a restartpoint on the standby).  A side's tps is the median of
# its segments; the ratio standby / primary has the target 0.9.  With
# STANDBY_WRITE_RATE > 0 a writer appends that many events per second on
# the primary during every segment (pgbench -R), so that the standby reads
# while it replays and its head moves (the primary's side reads while it
# appends too).
#
# Environment:
#   BENCH_SECONDS      measured seconds per side (default 12; 2 for a smoke run)
#   BENCH_WARMUP       warm-up seconds per side (default BENCH_SECONDS/5, at least 1)
#   BENCH_CLIENTS      reading clients (default 8)
#   BENCH_STREAMS      streams in the fixture (default 10000)
#   BENCH_PER_STREAM   events per stream in the fixture (default 20)
#   STANDBY_WRITE_RATE appends/s on the primary during the segments (default 0)
#   STANDBY_PORT       port of the primary (default 5583; the standby uses the next)
#   BENCH_SKIP_BUILD   set to 1 to use the installed extension as it is
#   PG_CONFIG          pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

SECONDS_PER_RUN=${BENCH_SECONDS:-12}
WARMUP=${BENCH_WARMUP:-$(( SECONDS_PER_RUN / 5 > 1 ? SECONDS_PER_RUN / 5 : 1 ))}
CLIENTS=${BENCH_CLIENTS:-8}
STREAMS=${BENCH_STREAMS:-10000}
PER_STREAM=${BENCH_PER_STREAM:-20}
WRITE_RATE=${STANDBY_WRITE_RATE:-0}
PORT=${STANDBY_PORT:-5583}
STANDBY_PORT=$((PORT + 1))
PG_CONFIG=${PG_CONFIG:-pg_config}
NPROC=$(nproc)
TARGET=0.9

log() { printf '%s\n' "$*" >&2; }
die() { log "standby.sh: $*"; exit 1; }

[[ "$CLIENTS" =~ ^[1-9][0-9]*$ ]] || die "BENCH_CLIENTS must be a positive integer"
[[ "$WRITE_RATE" =~ ^[0-9]+$ ]] || die "STANDBY_WRITE_RATE must be a number of appends per second"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build

STANDBY_DATA=
STANDBY_STARTED=0
WRITER_PID=
# the exit trap stops the writer and the standby before the primary
bench_before_stop() {
	[[ -n "$WRITER_PID" ]] && kill "$WRITER_PID" 2>/dev/null
	if [[ $STANDBY_STARTED -eq 1 ]]; then
		"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$STANDBY_DATA" -m fast -w stop >/dev/null 2>&1 ||
			log "could not stop the standby in $STANDBY_DATA"
	fi
	return 0
}

bench_cluster_start es-standby-bench STANDBY_PORT "shared_buffers = 256MB
max_wal_size = 4GB
checkpoint_timeout = 30min
wal_level = replica
max_wal_senders = 4
hot_standby = on
autovacuum = off"

if "$PGBIN/pg_isready" -q -h "$SOCK" -p "$STANDBY_PORT" 2>/dev/null ||
	(exec 3<>"/dev/tcp/127.0.0.1/$STANDBY_PORT") 2>/dev/null; then
	die "port $STANDBY_PORT (the standby's) is in use; set STANDBY_PORT"
fi
echo "local replication all trust" >>"$DATA/pg_hba.conf"
"${PSQL[@]}" -c 'SELECT pg_reload_conf()' >/dev/null

log "== loading $((STREAMS * PER_STREAM)) events in $STREAMS streams on the primary"
"${PSQL[@]}" -v streams="$STREAMS" -v per_stream="$PER_STREAM" \
	-v reader_events=1000 -f "$BENCH_DIR/sql/setup.sql" >&2
TOTAL_ROWS=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events")
MAXPOS=$(( TOTAL_ROWS - 1000 ))

log "== making a streaming standby on port $STANDBY_PORT"
STANDBY_DATA="$WORK/standby"
"${RUNAS[@]}" "$PGBIN/pg_basebackup" -h "$SOCK" -p "$PORT" -U postgres -D "$STANDBY_DATA" \
	-R -X stream -c fast >/dev/null
cat >>"$STANDBY_DATA/postgresql.conf" <<CONF
port = $STANDBY_PORT
CONF
"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$STANDBY_DATA" -l "$WORK/standby.log" -w start >/dev/null
STANDBY_STARTED=1

# one append after the standby started: it then follows the primary's horizon
"${PSQL[@]}" -c "SELECT event_store.append('standby-1', '{\"type\": \"Started\"}')" >/dev/null
target_lsn=$("${PSQL[@]}" -Atc 'SELECT pg_current_wal_lsn()')
deadline=$(( $(date +%s) + 300 ))
until [[ $("${PSQL[@]}" -p "$STANDBY_PORT" -Atc \
		"SELECT coalesce(pg_last_wal_replay_lsn() >= '$target_lsn', false)
		        AND event_store.head_position() >= (SELECT max(global_position) - 1 FROM event_store.events)") == t ]]; do
	(( $(date +%s) < deadline )) || die "the standby did not catch up within 300 s"
	sleep 0.1
done
[[ $("${PSQL[@]}" -p "$STANDBY_PORT" -Atc 'SELECT pg_is_in_recovery()') == t ]] ||
	die "the standby is not in recovery"

SCRIPTS="$WORK/scripts"
LOG_DIR="$BENCH_DIR/results/standby-logs"
mkdir -p "$SCRIPTS" "$LOG_DIR"
rm -f "$LOG_DIR"/*.log
cp "$BENCH_DIR/pgbench/es_read_all.sql" "$SCRIPTS/"
cat >"$SCRIPTS/writer.sql" <<'SQL'
\set sid random(1, 10000)
SELECT event_store.append('bench-' || :sid, '{"type": "BenchEvent", "data": {"n": 1}}');
SQL

# read PORT SECONDS LOGNAME -> prints tps
read_pages() {
	local port=$1 secs=$2 logname=$3 out="$LOG_DIR/$3.log"
	local jobs=$(( CLIENTS < NPROC ? CLIENTS : NPROC ))
	if ! "$PGBIN/pgbench" -n -M prepared -h "$SOCK" -p "$port" -c "$CLIENTS" -j "$jobs" \
		-T "$secs" -D maxpos="$MAXPOS" -f "$SCRIPTS/es_read_all.sql" >"$out" 2>&1; then
		log "pgbench failed on port $port:"
		tail -n 20 "$out" >&2
		return 1
	fi
	awk '/^tps = / { print $3; exit }' "$out"
}

# writer_start SECONDS LOGNAME: appends at WRITE_RATE on the primary, in the background
writer_start() {
	(( WRITE_RATE > 0 )) || return 0
	PGOPTIONS="-c synchronous_commit=off" "$PGBIN/pgbench" -n -M prepared -h "$SOCK" -p "$PORT" \
		-c 2 -j 1 -R "$WRITE_RATE" -T "$1" -f "$SCRIPTS/writer.sql" >"$LOG_DIR/$2.log" 2>&1 &
	WRITER_PID=$!
}
writer_wait() {
	[[ -n "$WRITER_PID" ]] || return 0
	wait "$WRITER_PID" || log "the writer failed: see $LOG_DIR"
	WRITER_PID=
}

# segment SIDE SECONDS LOGNAME -> prints tps
segment() {
	local side=$1 secs=$2 logname=$3 port tps
	if [[ $side == standby ]]; then port=$STANDBY_PORT; else port=$PORT; fi
	"${PSQL[@]}" -c CHECKPOINT >/dev/null
	"${PSQL[@]}" -p "$STANDBY_PORT" -c CHECKPOINT >/dev/null
	writer_start "$secs" "writer-$logname"
	tps=$(read_pages "$port" "$secs" "$logname")
	writer_wait
	echo "$tps"
}

if (( SECONDS_PER_RUN >= 8 )); then
	ORDER=(standby primary primary standby primary standby standby primary)
else
	ORDER=(standby primary primary standby)
fi
SEGMENT=$(( SECONDS_PER_RUN * 2 / ${#ORDER[@]} > 1 ? SECONDS_PER_RUN * 2 / ${#ORDER[@]} : 1 ))

log "== read_all pages of 1000, $CLIENTS client(s), standby against primary (writer: $WRITE_RATE appends/s)"
segment standby "$WARMUP" warmup-standby >/dev/null
segment primary "$WARMUP" warmup-primary >/dev/null
S_RUNS=()
P_RUNS=()
i=0
for side in "${ORDER[@]}"; do
	i=$((i + 1))
	tps=$(segment "$side" "$SEGMENT" "$side-$i")
	[[ -n "$tps" ]] || die "no result for the $side segment $i"
	if [[ $side == standby ]]; then S_RUNS+=("$tps"); else P_RUNS+=("$tps"); fi
done

# every page the standby served was gap-safe: its head never passed a position
# the primary had not settled, so the standby and the primary hold the same events
"${PSQL[@]}" -p "$STANDBY_PORT" -Atc 'SELECT 1' >/dev/null
target_lsn=$("${PSQL[@]}" -Atc 'SELECT pg_current_wal_lsn()')
deadline=$(( $(date +%s) + 300 ))
until [[ $("${PSQL[@]}" -p "$STANDBY_PORT" -Atc "SELECT pg_last_wal_replay_lsn() >= '$target_lsn'") == t ]]; do
	(( $(date +%s) < deadline )) || die "the standby did not catch up after the runs"
	sleep 0.1
done
check="SELECT count(*) || ' ' || max(global_position) || ' ' || sum(hashtext(event_id::text)::bigint) FROM event_store.events"
[[ $("${PSQL[@]}" -Atc "$check") == $("${PSQL[@]}" -p "$STANDBY_PORT" -Atc "$check") ]] ||
	die "the standby's events differ from the primary's after catching up"

read -r s_tps p_tps ratio noise < <(median_ratio "${S_RUNS[*]}" "${P_RUNS[*]}")
if awk -v r="$ratio" -v t="$TARGET" 'BEGIN { exit !(r >= t) }'; then
	verdict=">= $TARGET ok"
else
	verdict=">= $TARGET MISS"
fi
BUILD_DESC="event_store $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
{
	printf '%s, %s, %d x %d s per side, %s client(s), writer %s appends/s\n' \
		"$BUILD_DESC" "$(date -u '+%Y-%m-%d %H:%M UTC')" "$(( ${#ORDER[@]} / 2 ))" "$SEGMENT" "$CLIENTS" "$WRITE_RATE"
	printf 'segments (pages/s): standby %s | primary %s\n' "${S_RUNS[*]}" "${P_RUNS[*]}"
	printf '%-26s | %13s | %13s | %6s | %5s | %s\n' case standby primary ratio noise target
	printf '%-26s | %13s | %13s | %6s | %5s | %s\n' "read_all page of 1000" "$s_tps" "$p_tps" "$ratio" "$noise" "$verdict"
} | tee "$BENCH_DIR/results/standby.txt"
