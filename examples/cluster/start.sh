#!/usr/bin/env bash
# Start the cluster example on this machine: SERVERS PostgreSQL servers, each
# with the event_store extension in database "event_store", and a router
# server whose database "router" has plproxy and event_store_router, its
# cluster configured with those servers.
#
#   bash examples/cluster/start.sh          (as root from the checkout, after
#                                            make && make install; or as any
#                                            user who may run the servers)
#   bash examples/cluster/stop.sh           stops everything and removes the data
#
# Prints, once every server accepts connections:
#   ROUTER_DSN=<libpq connection string>
#   SERVER_DSN_<n>=...      SERVER_PGDATA_<n>=...      (n = 1..SERVERS)
#
# Environment: PG_CONFIG (else pg_config on PATH, else PostgreSQL 15's);
# ES_CLUSTER_DIR (where the throwaway data goes, default
# /tmp/event_store_cluster); ES_CLUSTER_SERVERS (default 3); ES_CLUSTER_PORT
# (the first port tried, default 15433: the router and the servers take the
# next free loopback ports from there).  Servers run as the invoking user, or
# as "postgres" when started as root; they listen on 127.0.0.1 only and trust
# local connections: an example, not a production setup.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../../scripts/lib.sh"
. "$HERE/lib.sh"

HA=0
for arg in "$@"; do
	case "$arg" in
	--ha) HA=1 ;;
	-h | --help)
		sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) es_die "unknown argument \"$arg\" (arguments: --ha)" ;;
	esac
done
[ "$HA" = 0 ] || es_die "--ha is not available yet in this version of the example"

es_find_pg_config
NSERVERS="${ES_CLUSTER_SERVERS:-3}"
case "$NSERVERS" in
'' | *[!0-9]* | 0) es_die "ES_CLUSTER_SERVERS must be a positive number" ;;
esac
[ -f "$PG_PKGLIBDIR/event_store.so" ] || es_die "event_store is not installed in $PG_PKGLIBDIR: run make && make install first"
[ -f "$PG_PKGLIBDIR/plproxy.so" ] || es_die "plproxy is not installed in $PG_PKGLIBDIR: install postgresql-15-plproxy (scripts/deps.sh)"
[ -f "$("$PG_CONFIG" --sharedir)/extension/event_store_router.control" ] ||
	es_die "event_store_router is not installed: run make && make install first"

cl_prepare_dir
trap 'es_say "start failed; stopping what was started"; bash "$HERE/stop.sh" >/dev/null 2>&1 || true' ERR

PORT="${ES_CLUSTER_PORT:-15433}"

# cl_init_server NAME PORT [PRELOAD]: a fresh data directory, listening on
# 127.0.0.1:PORT, recorded in the state file before it starts
cl_init_server() {
	local name="$1" port="$2" preload="${3:-}" pgdata="$CL_DIR/$1"
	(cd "$CL_DIR" && es_as_test_user "$PG_BINDIR/initdb" -D "$pgdata" -U postgres -A trust -E UTF8 \
		--no-locale --no-sync) >"$pgdata.initdb.log" 2>&1 || {
		cat "$pgdata.initdb.log" >&2
		return 1
	}
	{
		echo "# event_store cluster example: $name"
		echo "port = $port"
		echo "listen_addresses = '127.0.0.1'"
		echo "unix_socket_directories = '$CL_DIR'"
		echo "max_connections = 60"
		echo "shared_buffers = 32MB"
		echo "fsync = off"
		if [ -n "$preload" ]; then
			echo "shared_preload_libraries = '$preload'"
			echo "wal_level = logical"
			echo "max_wal_senders = 10"
			echo "max_replication_slots = 10"
		fi
	} >>"$pgdata/postgresql.conf"
	echo "server $name $pgdata" >>"$CL_STATE"
	(cd "$CL_DIR" && es_as_test_user "$PG_BINDIR/pg_ctl" -D "$pgdata" -l "$pgdata.log" -w -t 60 start) >/dev/null 2>&1 || {
		cat "$pgdata.log" >&2
		return 1
	}
}

# psql on a server of the example: cl_psql PORT DB SQL
cl_psql() {
	(cd "$CL_DIR" && es_as_test_user "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
		-h 127.0.0.1 -p "$1" -U postgres -d "$2" -c "$3") >/dev/null
}

dsns=()
conns=()
for n in $(seq 1 "$NSERVERS"); do
	PORT="$(cl_free_port "$PORT")"
	cl_init_server "server$n" "$PORT" event_store
	cl_psql "$PORT" postgres "CREATE DATABASE event_store"
	cl_psql "$PORT" event_store "CREATE EXTENSION event_store"
	dsns+=("host=127.0.0.1 port=$PORT dbname=event_store user=postgres")
	conns+=("host=127.0.0.1 port=$PORT dbname=event_store user=postgres connect_timeout=5")
	PORT=$((PORT + 1))
done

PORT="$(cl_free_port "$PORT")"
ROUTER_PORT="$PORT"
cl_init_server router "$ROUTER_PORT"
cl_psql "$ROUTER_PORT" postgres "CREATE DATABASE router"
servers_sql="$(printf "'%s'," "${conns[@]}")"
cl_psql "$ROUTER_PORT" router "CREATE EXTENSION plproxy;
CREATE EXTENSION event_store_router;
SELECT event_store.configure_cluster(ARRAY[${servers_sql%,}]);"

trap - ERR
echo "ROUTER_DSN=host=127.0.0.1 port=$ROUTER_PORT dbname=router user=postgres"
for n in $(seq 1 "$NSERVERS"); do
	echo "SERVER_DSN_$n=${dsns[$((n - 1))]}"
	echo "SERVER_PGDATA_$n=$CL_DIR/server$n"
done
