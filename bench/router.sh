#!/usr/bin/env bash
# bench/router.sh - the router (event_store_router on PL/Proxy) against one
# server, on the cluster example (examples/cluster/start.sh: a router and
# three servers on this machine), with pgbench:
#
#   append        one event to a random stream of 100,000: through the router
#                 (spread over the three servers) against straight to server 1,
#                 the same number of clients
#   read_all      a page of 1,000 events from the beginning: the router's
#                 read_all (one parallel call, merge, vector cursor) against
#                 server 1's read_all
#
#   floor         the same appends through the least a PL/Proxy router can
#                 be: a plain PL/Proxy function in the router's database that
#                 sends every append to one fixed server (RUN ON 0, no hash,
#                 no bucket map, one server's connections), against straight
#                 to server 1: the most any router on PL/Proxy could reach
#                 on this machine
#
# Both sides with pgbench -M prepared (as bench/run.sh), the same clients,
# interleaved round after round (the machine's load changes by the second).
# Prints per round and case the router's and the server's tps, their ratio,
# and the CPU each side's servers spent per operation (from /proc: the
# router server's processes, the three servers' processes; pgbench aside):
# the per-call costs that the model of bench/README.md starts from.  Run
# after make && make install, as root or as a user who may run servers
# (like start.sh).  Settings: BENCH_SECONDS (default 10), BENCH_CLIENTS
# (default 8), BENCH_ROUNDS (default 3); the cluster goes to a fresh
# temporary directory and is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$HERE/.." && pwd)"
. "$REPO_DIR/scripts/lib.sh"
es_find_pg_config

SECONDS_EACH="${BENCH_SECONDS:-10}"
CLIENTS="${BENCH_CLIENTS:-8}"
ROUNDS="${BENCH_ROUNDS:-3}"
export ES_CLUSTER_DIR
ES_CLUSTER_DIR="$(es_mktemp event_store-bench-router)/cluster"
TMP="$(dirname "$ES_CLUSTER_DIR")"
trap 'bash "$REPO_DIR/examples/cluster/stop.sh" >/dev/null 2>&1 || true; rm -rf "$TMP"' EXIT

out="$(bash "$REPO_DIR/examples/cluster/start.sh")"
ROUTER="$(sed -n 's/^ROUTER_DSN=//p' <<<"$out")"
SERVER1="$(sed -n 's/^SERVER_DSN_1=//p' <<<"$out")"

run_psql() { (cd "$TMP" && es_as_test_user "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d "$1" -c "$2") >/dev/null; }

# 3,000 events per server to read
run_psql "$ROUTER" "SELECT event_store.append('fill-' || i, (SELECT jsonb_agg(jsonb_build_object('type', 'Filled', 'data', jsonb_build_object('k', k))) FROM generate_series(1, 10) k)) FROM generate_series(1, 1000) i"
run_psql "$SERVER1" "SELECT event_store.append('fill-' || i, (SELECT jsonb_agg(jsonb_build_object('type', 'Filled', 'data', jsonb_build_object('k', k))) FROM generate_series(1, 10) k)) FROM generate_series(1001, 1300) i"

cat >"$TMP/append.sql" <<'EOF'
\set s random(1, 100000)
SELECT event_store.append('bench-' || :s, '{"type": "Benched", "data": {"n": 1}}');
EOF
cat >"$TMP/append_floor.sql" <<'EOF'
\set s random(1, 100000)
SELECT bench_floor.append('bench-' || :s, '{"type": "Benched", "data": {"n": 1}}');
EOF
cat >"$TMP/read_all_router.sql" <<'EOF'
SELECT * FROM event_store.read_all(NULL, 1000);
EOF
cat >"$TMP/read_all_server.sql" <<'EOF'
SELECT * FROM event_store.read_all(0, 1000);
EOF
chmod 644 "$TMP"/*.sql
run_psql "$ROUTER" "CREATE SCHEMA bench_floor;
CREATE FUNCTION bench_floor.append(stream_id text, events jsonb) RETURNS bigint LANGUAGE plproxy AS \$f\$
    CLUSTER 'event_store';
    RUN ON 0;
    SELECT event_store.append(stream_id, events) AS append;
\$f\$"

# cpu_ticks NAME...: CPU clock ticks used so far by each named server of the
# example (its postmaster, the children it reaped, the children alive)
cpu_ticks() {
	local n pm t p
	for n in "$@"; do
		pm="$(head -n 1 "$ES_CLUSTER_DIR/$n/postmaster.pid")"
		t=0
		for p in "$pm" $(pgrep -P "$pm"); do
			t=$((t + $(awk '{ print $14 + $15 + $16 + $17 }' "/proc/$p/stat" 2>/dev/null || echo 0)))
		done
		printf '%s ' "$t"
	done
}
HZ="$(getconf CLK_TCK)"

# run DSN SCRIPT: "tps transactions router_ticks server_ticks"
run() {
	local before after out
	before=($(cpu_ticks router server1 server2 server3))
	out="$( (cd "$TMP" && es_as_test_user "$PG_BINDIR/pgbench" -n -M prepared -c "$CLIENTS" -j 2 \
		-T "$SECONDS_EACH" -f "$2" "$1") 2>&1)"
	after=($(cpu_ticks router server1 server2 server3))
	echo "$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out" | head -n 1)" \
		"$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")" \
		"$((after[0] - before[0]))" \
		"$((after[1] + after[2] + after[3] - before[1] - before[2] - before[3]))"
}

echo "a router page from the beginning holds $( (cd "$TMP" && es_as_test_user "$PG_BINDIR/psql" -X -A -t -d "$ROUTER" \
	-c 'SELECT count(*) FROM event_store.read_all(NULL, 1000)')) events, a server's 1000"
printf '%-6s %-9s %11s %11s %6s %16s %16s %16s\n' round case router_tps server_tps ratio \
	router_cpu_ms/op servers_cpu_ms/op direct_cpu_ms/op
for round in $(seq 1 "$ROUNDS"); do
	for c in append read_all floor; do
		if [ "$c" = append ]; then
			r=($(run "$ROUTER" "$TMP/append.sql"))
			s=($(run "$SERVER1" "$TMP/append.sql"))
		elif [ "$c" = floor ]; then
			r=($(run "$ROUTER" "$TMP/append_floor.sql"))
			s=($(run "$SERVER1" "$TMP/append.sql"))
		else
			r=($(run "$ROUTER" "$TMP/read_all_router.sql"))
			s=($(run "$SERVER1" "$TMP/read_all_server.sql"))
		fi
		awk -v round="$round" -v c="$c" -v hz="$HZ" -v rt="${r[0]}" -v rn="${r[1]}" -v rr="${r[2]}" \
			-v rs="${r[3]}" -v st="${s[0]}" -v sn="${s[1]}" -v ss="${s[3]}" 'BEGIN {
			ms = 1000 / hz
			printf "%-6s %-9s %11.0f %11.0f %6.2f %16.3f %16.3f %16.3f\n", round, c, rt, st,
				(st > 0 ? rt / st : 0), (rn > 0 ? rr * ms / rn : 0), (rn > 0 ? rs * ms / rn : 0),
				(sn > 0 ? ss * ms / sn : 0)
		}'
	done
done
