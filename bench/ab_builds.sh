#!/usr/bin/env bash
#
# bench/ab_builds.sh - the same store served in turn by two builds of the
# extension: does a change make the main paths slower?  Both builds are
# installed into installations of the same server (PG_CONFIG_A, PG_CONFIG_B:
# copies of one PostgreSQL install, each with its own build of event_store
# installed); the store is created once with build B's install script, then
# the server is restarted with A's binaries and library and with B's, in
# turn (A B B A A B), and each case is run on each for AB_SECONDS.  Prints
# the tps and the server CPU per operation of each side (the median of its
# runs) and their ratio B / A (read like a tps ratio: below 1 = B costlier).
#
# Environment:
#   PG_CONFIG_A, PG_CONFIG_B   the two installations (required)
#   AB_EVENTS       events in the store (default 200000, streams of 20)
#   AB_SECONDS      seconds per case and turn (default 10)
#   AB_PORT         port of the throwaway cluster (default 5551)
#   AB_CASES        the cases to run (default: append_one read_stream
#                   read_stream_20 read_all read_category; also batch10 and
#                   batch100, a batch of 10 / 100 events of about 500 bytes,
#                   each with a correlationId, to a random stream)
#   AB_ARCHIVE      a fraction: archive the events below it before the runs
#                   (needs build B to have archive_events; both builds then
#                   read the archived store, which only B understands: use it
#                   with two builds that both have archiving)
#
set -euo pipefail

A=${PG_CONFIG_A:?set PG_CONFIG_A}
B=${PG_CONFIG_B:?set PG_CONFIG_B}
EVENTS=${AB_EVENTS:-200000}
SECS=${AB_SECONDS:-10}
PORT=${AB_PORT:-5551}
WORK=$(mktemp -d /tmp/es-ab.XXXXXX)
DATA=$WORK/data
RUNAS=()
if [[ $(id -u) == 0 ]]; then
	chown postgres: "$WORK"
	RUNAS=(runuser -u postgres --)
fi
BINA=$("$A" --bindir)
BINB=$("$B" --bindir)
PSQL=("${RUNAS[@]}" "$BINB/psql" -X -q -h "$WORK" -p "$PORT" -d postgres -v ON_ERROR_STOP=1)
CURRENT=""

stop() { [[ -n "$CURRENT" ]] && "${RUNAS[@]}" "$CURRENT/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null || true; CURRENT=""; }
start() {
	stop
	"${RUNAS[@]}" "$1/pg_ctl" -D "$DATA" -l "$WORK/server.log" -w start >/dev/null
	CURRENT=$1
}
cleanup() { stop; rm -rf "$WORK"; }
trap cleanup EXIT

"${RUNAS[@]}" "$BINB/initdb" -D "$DATA" >/dev/null
cat >>"$DATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$WORK'
listen_addresses = ''
shared_preload_libraries = 'event_store'
event_store.worker_enabled = off
shared_buffers = 512MB
autovacuum = off
synchronous_commit = off
max_wal_size = 4GB
EOF
start "$BINB"
"${PSQL[@]}" -c "CREATE EXTENSION event_store" \
	-c "SELECT count(event_store.append('acct-' || s,
	        (SELECT jsonb_agg(jsonb_build_object('type', 'Deposited', 'data',
	                 jsonb_build_object('amount', i, 'note', repeat('x', 200))))
	           FROM generate_series(1, 20) AS i)))
	      FROM generate_series(1, $EVENTS / 20) AS s" \
	-c "SELECT event_store.append('reader-1', (SELECT jsonb_agg(jsonb_build_object('type', 'R', 'data', jsonb_build_object('i', i))) FROM generate_series(1, 1000) AS i))" >/dev/null
if [[ -n "${AB_ARCHIVE:-}" ]]; then
	"${PSQL[@]}" -c "SET allow_in_place_tablespaces = on" -c "CREATE TABLESPACE ab_cold LOCATION ''" \
		-c "SELECT event_store.archive_events((event_store.head_position() * $AB_ARCHIVE)::bigint + 1, 'ab_cold')" >/dev/null
	"${PSQL[@]}" -Atc "SELECT format('VACUUM ANALYZE event_store.%I', relation) FROM event_store.archived_ranges" |
		while IFS= read -r s; do "${PSQL[@]}" -c "$s"; done
fi
"${PSQL[@]}" -c "VACUUM ANALYZE event_store.events" -c "CHECKPOINT"
MAXPOS=$("${PSQL[@]}" -Atc "SELECT event_store.head_position() - 1000")
STREAMS=$(( EVENTS / 20 ))

mkdir -p "$WORK/s"
echo "\\set k random(1, $STREAMS)
SELECT event_store.append('acct-' || :k, '{\"type\": \"Withdrawn\", \"data\": {\"amount\": 1}}');" >"$WORK/s/append_one.sql"
echo "SELECT count(*) FROM event_store.read_stream('reader-1');" >"$WORK/s/read_stream.sql"
echo "\\set k random(1, $STREAMS)
SELECT count(*) FROM event_store.read_stream('acct-' || :k);" >"$WORK/s/read_stream_20.sql"
echo "\\set p random(0, $MAXPOS)
SELECT count(*) FROM event_store.read_all(:p, 1000);" >"$WORK/s/read_all.sql"
echo "\\set p random(0, $MAXPOS)
SELECT count(*) FROM event_store.read_category('acct', :p, 1000);" >"$WORK/s/read_category.sql"
for n in 10 100; do
	batch=$("${PSQL[@]}" -Atc "SELECT jsonb_agg(jsonb_build_object('type', 'Deposited',
	            'data', jsonb_build_object('amount', i, 'note', repeat('x', 400)),
	            'metadata', jsonb_build_object('correlationId', md5('c' || i / 10)::uuid)))
	          FROM generate_series(1, $n) AS i")
	echo "\\set k random(1, $STREAMS)
SELECT event_store.append('acct-' || :k, '$batch');" >"$WORK/s/batch$n.sql"
done
chown -R postgres: "$WORK/s" 2>/dev/null || true

# cluster_cpu_ticks (of $DATA's cluster)
# shellcheck source=bench/cpu.sh
. "$(dirname "${BASH_SOURCE[0]}")/cpu.sh"

declare -A TPS CPU
read -r -a CASES <<<"${AB_CASES:-append_one read_stream read_stream_20 read_all read_category}"
for c in "${CASES[@]}"; do
	[[ -f "$WORK/s/$c.sql" ]] || { echo "ab_builds.sh: unknown case $c" >&2; exit 1; }
done
for side in A B B A A B; do
	[[ $side == A ]] && start "$BINA" || start "$BINB"
	for c in "${CASES[@]}"; do
		"${RUNAS[@]}" "$BINB/pgbench" -n -h "$WORK" -p "$PORT" -M prepared -c 1 -T 2 -f "$WORK/s/$c.sql" postgres >/dev/null 2>&1
		sleep 0.1	# let the postmaster reap the warm-up's backend
		t0=$(cluster_cpu_ticks)
		out=$("${RUNAS[@]}" "$BINB/pgbench" -n -h "$WORK" -p "$PORT" -M prepared -c 1 -T "$SECS" -f "$WORK/s/$c.sql" postgres 2>&1)
		sleep 0.1	# ... and the measured run's
		t1=$(cluster_cpu_ticks)
		tps=$(awk '/^tps/ { print $3 }' <<<"$out")
		n=$(awk '/actually processed/ { print $NF }' <<<"$out")
		TPS[$side|$c]+="$tps "
		CPU[$side|$c]+="$(awk -v d=$(( t1 - t0 )) -v n="$n" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz * 1e6 / n }') "
	done
done
stop

for c in "${CASES[@]}"; do
	echo "$c: A tps ${TPS[A|$c]}| B tps ${TPS[B|$c]}| A cpu/op ${CPU[A|$c]}| B cpu/op ${CPU[B|$c]}"
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
printf '%-16s | %10s | %10s | %7s | %11s | %11s | %7s\n' case "A tps" "B tps" "B/A" "A cpu/op us" "B cpu/op us" "A/B cpu"
for c in "${CASES[@]}"; do
	ta=$(median <<<"${TPS[A|$c]}") tb=$(median <<<"${TPS[B|$c]}")
	ca=$(median <<<"${CPU[A|$c]}") cb=$(median <<<"${CPU[B|$c]}")
	printf '%-16s | %10.1f | %10.1f | %7.3f | %11.1f | %11.1f | %7.3f\n' "$c" "$ta" "$tb" \
		"$(awk -v a="$ta" -v b="$tb" 'BEGIN { print b / a }')" "$ca" "$cb" \
		"$(awk -v a="$ca" -v b="$cb" 'BEGIN { print a / b }')"
done
echo "(A B B A A B turns of ${SECS}s per case; the median of each side's three; store of $EVENTS events${AB_ARCHIVE:+, archived below $AB_ARCHIVE})"
