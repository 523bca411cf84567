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
# Prints "case  router tps  server tps  ratio".  Run after make && make
# install, as root or as a user who may run servers (like start.sh).
# Settings: BENCH_SECONDS (default 10), BENCH_CLIENTS (default 8); the
# cluster goes to a fresh temporary directory and is stopped on exit.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
REPO_DIR="$(cd "$HERE/.." && pwd)"
. "$REPO_DIR/scripts/lib.sh"
es_find_pg_config

SECONDS_EACH="${BENCH_SECONDS:-10}"
CLIENTS="${BENCH_CLIENTS:-8}"
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
cat >"$TMP/read_all_router.sql" <<'EOF'
SELECT * FROM event_store.read_all(NULL, 1000);
EOF
cat >"$TMP/read_all_server.sql" <<'EOF'
SELECT * FROM event_store.read_all(0, 1000);
EOF
chmod 644 "$TMP"/*.sql

# tps DSN SCRIPT
tps() {
	(cd "$TMP" && es_as_test_user "$PG_BINDIR/pgbench" -n -c "$CLIENTS" -j 2 -T "$SECONDS_EACH" \
		-f "$2" "$1") 2>&1 | sed -n 's/^tps = \([0-9.]*\) .*/\1/p' | head -n 1
}

printf '%-10s %12s %12s %7s\n' case router_tps server_tps ratio
for c in append read_all; do
	if [ "$c" = append ]; then
		r="$(tps "$ROUTER" "$TMP/append.sql")"
		s="$(tps "$SERVER1" "$TMP/append.sql")"
	else
		r="$(tps "$ROUTER" "$TMP/read_all_router.sql")"
		s="$(tps "$SERVER1" "$TMP/read_all_server.sql")"
	fi
	printf '%-10s %12.0f %12.0f %7.2f\n' "$c" "$r" "$s" "$(awk -v a="$r" -v b="$s" 'BEGIN { print (b > 0 ? a / b : 0) }')"
done
