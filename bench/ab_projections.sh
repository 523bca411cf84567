#!/usr/bin/env bash
#
# bench/ab_projections.sh - the parallel_projections case of bench/run.sh
# (catch-up of the fixture's 200,000 'bench' events by an async projection
# with a per-event PL/pgSQL upsert, event_store.max_workers = 2, 4 partitions
# against 1) served in turn by two builds of the extension, as
# bench/ab_builds.sh does: PG_CONFIG_A and PG_CONFIG_B are two installations of
# the same server, each with its own build of event_store installed; the store
# is created once with build B, and the server is restarted with A's binaries
# and library and with B's in turn (A B, then B A, ...).  After each restart
# one 4-partition catch-up warms the caches up (not counted), then the
# 1-partition and the 4-partition catch-ups are timed, in an order that
# alternates between rounds.  Prints every run (seconds from create_projection
# to wait_for_projection returning true, server CPU us per event), then per
# side the median of its rounds' ratios (1 partition seconds / 4 partitions
# seconds, like events/s) and the median CPU per event.
#
# Environment:
#   PG_CONFIG_A, PG_CONFIG_B   the two installations (required)
#   AB_ROUNDS       rounds (default 4; each runs both sides)
#   AB_PORT         port of the throwaway cluster (default 5552)
#
set -euo pipefail

A=${PG_CONFIG_A:?set PG_CONFIG_A}
B=${PG_CONFIG_B:?set PG_CONFIG_B}
ROUNDS=${AB_ROUNDS:-4}
PORT=${AB_PORT:-5552}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/es-abproj.XXXXXX")
DATA=$WORK/data
RUNAS=()
if [[ $(id -u) == 0 ]]; then
	chown postgres: "$WORK"
	RUNAS=(runuser -u postgres --)
fi
BINA=$("$A" --bindir)
BINB=$("$B" --bindir)
PSQL=("$BINB/psql" -X -q -h "$WORK" -p "$PORT" -U postgres -d bench -v ON_ERROR_STOP=1)
CURRENT=""

stop() { [[ -n "$CURRENT" ]] && "${RUNAS[@]}" "$CURRENT/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true; CURRENT=""; }
start() {
	stop
	"${RUNAS[@]}" "$1/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w start >/dev/null
	CURRENT=$1
}
cleanup() { stop; rm -rf "$WORK"; }
trap cleanup EXIT

# cluster_cpu_ticks (of $DATA's cluster)
# shellcheck source=bench/cpu.sh
. "$BENCH_DIR/cpu.sh"

"${RUNAS[@]}" "$BINB/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$WORK'
shared_preload_libraries = 'event_store'
max_connections = 40
jit = off
shared_buffers = 512MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
autovacuum = off
synchronous_commit = off
event_store.worker_enabled = on
event_store.max_workers = 2
EOF
start "$BINB"
"${RUNAS[@]}" "$BINB/createdb" -h "$WORK" -p "$PORT" -U postgres bench
"${PSQL[@]}" -v streams=10000 -v per_stream=20 -v reader_events=1000 -f "$BENCH_DIR/sql/setup.sql" >/dev/null
"${PSQL[@]}" -f "$BENCH_DIR/sql/subscriptions.sql" >/dev/null
HEAD=$("${PSQL[@]}" -Atc "SELECT event_store.head_position()")
EVENTS=$("${PSQL[@]}" -Atc "SELECT count(*) FROM event_store.events
                            WHERE split_part(stream_id, '-', 1) = 'bench' AND global_position <= $HEAD")

# one catch-up with PARTS partitions: prints "seconds cpu_us_per_event"
catch_up() {
	local parts=$1 out t0 t1 k diff
	# a helper of the previous run leaves by itself: gone before this one
	for ((k = 0; k < 300; k++)); do
		[[ $("${PSQL[@]}" -Atc "SELECT count(*) FROM pg_stat_activity
		                        WHERE backend_type = 'event_store helper'") == 0 ]] && break
		sleep 0.1
	done
	"${PSQL[@]}" -c "TRUNCATE bench.rm_par" -c CHECKPOINT >/dev/null
	sleep 0.1
	t0=$(cluster_cpu_ticks)
	out=$("${PSQL[@]}" -At <<-SQL
		SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset
		\o /dev/null
		SELECT event_store.create_projection('bench_par', 'bench.count_par(event_store.event)',
		           categories => ARRAY['bench'], mode => 'async', partitions => $parts);
		\o
		SELECT event_store.wait_for_projection('bench_par', $HEAD, '60 seconds') AS ok \gset
		SELECT :'ok', round(extract(epoch FROM clock_timestamp()) - :t0, 6);
	SQL
	)
	sleep 0.1
	t1=$(cluster_cpu_ticks)
	diff=$("${PSQL[@]}" -Atc "SELECT count(*) FROM bench.rm_par a
		FULL JOIN (SELECT stream_id AS key, count(*) AS n FROM event_store.events
		            WHERE split_part(stream_id, '-', 1) = 'bench' AND global_position <= $HEAD
		            GROUP BY stream_id) b USING (key)
		WHERE a.n IS DISTINCT FROM b.n")
	"${PSQL[@]}" -c "SELECT event_store.drop_projection('bench_par')" >/dev/null
	if [[ $diff != 0 || ${out%%|*} != t ]]; then
		echo "ab_projections.sh: $parts partition(s): wait_for_projection ${out%%|*}, $diff read model rows differ" >&2
		exit 1
	fi
	echo "${out##*|} $(awk -v t="$((t1 - t0))" -v hz="$CLK_TCK" -v n="$EVENTS" 'BEGIN { printf "%.2f", t * 1e6 / hz / n }')"
}

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A RATIOS CPU1 CPU4
for ((r = 0; r < ROUNDS; r++)); do
	if ((r % 2 == 0)); then sides="A B" parts_order="1 4"; else sides="B A" parts_order="4 1"; fi
	for side in $sides; do
		[[ $side == A ]] && start "$BINA" || start "$BINB"
		catch_up 4 >/dev/null
		declare -A secs=()
		for parts in $parts_order; do
			res=$(catch_up "$parts")
			secs[$parts]=${res% *}
			if [[ $parts == 1 ]]; then CPU1[$side]+="${res#* } "; else CPU4[$side]+="${res#* } "; fi
			echo "round $((r + 1)) $side, $parts partition(s): ${res% *} s, ${res#* } us CPU per event"
		done
		RATIOS[$side]+="$(awk -v a="${secs[1]}" -v b="${secs[4]}" 'BEGIN { printf "%.3f", a / b }') "
	done
done
stop
for side in A B; do
	echo "$side: ratio per round ${RATIOS[$side]}(median $(median <<<"${RATIOS[$side]}")); CPU us per event, median: 1 partition $(median <<<"${CPU1[$side]}"), 4 partitions $(median <<<"${CPU4[$side]}")"
done
echo "($ROUNDS rounds; $EVENTS events; event_store.max_workers = 2)"
