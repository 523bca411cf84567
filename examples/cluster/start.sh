#!/usr/bin/env bash
# Start the cluster example on this machine: SERVERS PostgreSQL servers, each
# with the event_store extension in database "event_store", and a router
# server whose database "router" has plproxy and event_store_router, its
# cluster configured with those servers.
#
#   bash examples/cluster/start.sh          (as root from the checkout, after
#                                            make && make install; or as any
#                                            user who may run the servers)
#   bash examples/cluster/start.sh --ha     server 1 as a pg_auto_failover group
#                                            (primary and two standbys in the
#                                            replication quorum) with a monitor
#   bash examples/cluster/start.sh --reporting=order,payment
#                                            also a reporting server: database
#                                            "reporting" imports the events of
#                                            these categories from every server
#                                            (publication "reporting" on each,
#                                            import "server_<n>" of each there)
#   bash examples/cluster/stop.sh           stops everything and removes the data
#
# Prints, once every server accepts connections:
#   ROUTER_DSN=<libpq connection string>
#   SERVER_DSN_<n>=...      SERVER_PGDATA_<n>=...      (n = 1..SERVERS)
# and with --ha, once the group reports primary/secondary:
#   MONITOR_PGDATA=...      PRIMARY_PGDATA_<n>=...     (the current primary's)
#   STANDBY_PGDATA_1_<k>=... (k = 1, 2)
# and with --reporting, once every import runs:
#   REPORTING_DSN=...       REPORTING_PGDATA=...
# (with --ha, SERVER_DSN_1 lists the three nodes with
# target_session_attrs=read-write, which the router uses too, and
# SERVER_PGDATA_1 is the first primary's data directory).  Every pg_autoctl
# runs in a process group of its own (its pid is the group's id, in
# ES_CLUSTER_DIR/cluster.state).
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
REPORTING=""
for arg in "$@"; do
	case "$arg" in
	--ha) HA=1 ;;
	--reporting=*)
		REPORTING="${arg#--reporting=}"
		case ",$REPORTING," in
		,, | *,,* | *[!A-Za-z0-9_,]*)
			es_die "--reporting takes a comma-separated list of categories (letters, digits, _), such as --reporting=order,payment"
			;;
		esac
		;;
	--reporting) es_die "--reporting takes the categories to import, such as --reporting=order,payment" ;;
	-h | --help)
		sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*) es_die "unknown argument \"$arg\" (arguments: --ha, --reporting=CATEGORIES)" ;;
	esac
done
# (a logical replication slot stays on the node that made it: after a
# failover the new primary has none, and the import from it stops)
if [ "$HA" = 1 ] && [ -n "$REPORTING" ]; then
	es_die "--reporting and --ha do not go together: PostgreSQL 15 does not carry a logical replication slot over to the promoted standby"
fi

es_find_pg_config
NSERVERS="${ES_CLUSTER_SERVERS:-3}"
case "$NSERVERS" in
'' | *[!0-9]* | 0) es_die "ES_CLUSTER_SERVERS must be a positive number" ;;
esac
[ -f "$PG_PKGLIBDIR/event_store.so" ] || es_die "event_store is not installed in $PG_PKGLIBDIR: run make && make install first"
[ -f "$PG_PKGLIBDIR/plproxy.so" ] || es_die "plproxy is not installed in $PG_PKGLIBDIR: install postgresql-15-plproxy (scripts/deps.sh)"
[ -f "$("$PG_CONFIG" --sharedir)/extension/event_store_router.control" ] ||
	es_die "event_store_router is not installed: run make && make install first"
if [ "$HA" = 1 ]; then
	command -v pg_autoctl >/dev/null 2>&1 ||
		es_die "pg_autoctl not found: install postgresql-15-auto-failover (scripts/deps.sh)"
	[ -f "$PG_PKGLIBDIR/pgautofailover.so" ] ||
		es_die "pgautofailover is not installed in $PG_PKGLIBDIR: install postgresql-15-auto-failover"
fi

cl_prepare_dir
STARTED=0
trap 'if [ "$STARTED" != 1 ]; then es_say "start failed; stopping what was started"; bash "$HERE/stop.sh" >/dev/null 2>&1 || true; fi' EXIT

PORT="${ES_CLUSTER_PORT:-15433}"

# cl_init_server NAME PORT [PRELOAD [nostart]]: a fresh data directory,
# listening on 127.0.0.1:PORT, recorded in the state file before it starts
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
	[ "${4:-}" != nostart ] || return 0
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

# cl_autoctl NAME PGDATA ARGS...: pg_autoctl ARGS in the background, in a
# process group of its own, recorded in the state file (its pid is the
# group's id); output in PGDATA.autoctl.log
cl_autoctl() {
	local name="$1" pgdata="$2" pid
	shift 2
	if [ "$(id -u)" -eq 0 ]; then
		(cd "$CL_DIR" && exec setsid runuser -u postgres -- pg_autoctl "$@" >"$pgdata.autoctl.log" 2>&1 </dev/null) &
	else
		(cd "$CL_DIR" && exec setsid pg_autoctl "$@" >"$pgdata.autoctl.log" 2>&1 </dev/null) &
	fi
	pid=$!
	echo "autoctl $name $pgdata $pid" >>"$CL_STATE"
	CL_LAST_AUTOCTL="$pid"
}

# cl_alive PID PGDATA: pg_autoctl still runs (else show its log and fail)
cl_alive() {
	kill -0 "$1" 2>/dev/null && return 0
	es_say "pg_autoctl of $2 stopped:"
	tail -n 30 "$2.autoctl.log" >&2
	return 1
}

# cl_query PORT DB SQL: one value (empty when the server does not answer)
cl_query() {
	(cd "$CL_DIR" && es_as_test_user "$PG_BINDIR/psql" -X -A -t -h 127.0.0.1 -p "$1" -U postgres \
		-d "$2" -c "$3") 2>/dev/null || true
}

# cl_wait WHAT SECONDS COMMAND...: until COMMAND succeeds, or fail
cl_wait() {
	local what="$1" deadline=$((SECONDS + $2))
	shift 2
	until "$@"; do
		if [ -n "${CL_WATCH:-}" ]; then
			for w in $CL_WATCH; do
				cl_alive "${w%%:*}" "${w#*:}" || return 1
			done
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			es_say "timed out waiting for $what"
			return 1
		fi
		sleep 0.5
	done
}

dsns=()
conns=()
ports=()
first=1
if [ "$HA" = 1 ]; then
	# the monitor
	PORT="$(cl_free_port "$PORT")"
	MONITOR_PORT="$PORT"
	MONITOR_PGDATA="$CL_DIR/monitor"
	cl_autoctl monitor "$MONITOR_PGDATA" create monitor --pgdata "$MONITOR_PGDATA" \
		--pgport "$MONITOR_PORT" --pgctl "$PG_BINDIR/pg_ctl" --hostname 127.0.0.1 \
		--auth trust --no-ssl --run
	CL_WATCH="$CL_LAST_AUTOCTL:$MONITOR_PGDATA"
	echo "server monitor $MONITOR_PGDATA" >>"$CL_STATE"
	monitor_up() { [ "$(cl_query "$MONITOR_PORT" pg_auto_failover 'SELECT 1 FROM pgautofailover.formation LIMIT 1')" = 1 ]; }
	cl_wait "the monitor" 120 monitor_up || { cat "$MONITOR_PGDATA.autoctl.log" >&2; false; }
	MONITOR_URI="postgres://autoctl_node@127.0.0.1:$MONITOR_PORT/pg_auto_failover?sslmode=disable"
	# health checks and failover decisions in seconds rather than tens of
	# seconds (loopback, one machine)
	# (a primary that the monitor cannot reach is replaced after about 20
	# seconds; a write needs a synchronous standby's ack, so an old primary
	# cut off from its standbys acknowledges nothing)
	for setting in health_check_period=2000 health_check_timeout=2000 health_check_retry_delay=1000 \
		node_considered_unhealthy_timeout=8000 primary_demote_timeout=10000; do
		cl_psql "$MONITOR_PORT" pg_auto_failover "ALTER SYSTEM SET pgautofailover.${setting%%=*} = ${setting#*=}"
	done
	cl_psql "$MONITOR_PORT" pg_auto_failover "SELECT pg_reload_conf()"
	PORT=$((PORT + 1))

	# server 1: a primary made from a data directory of ours (the library
	# preloaded), then two standbys (pg_basebackup copies its settings)
	ha_ports=()
	ha_pgdata=()
	for k in a b c; do
		PORT="$(cl_free_port "$PORT")"
		ha_ports+=("$PORT")
		ha_pgdata+=("$CL_DIR/server1$k")
		if [ "$k" = a ]; then
			cl_init_server server1a "$PORT" event_store nostart
			# (pg_basebackup waits for a checkpoint: a quick one)
			printf '%s\n' "hot_standby = on" "checkpoint_completion_target = 0.05" \
				>>"$CL_DIR/server1a/postgresql.conf"
		else
			echo "server server1$k $CL_DIR/server1$k" >>"$CL_STATE"
		fi
		cl_autoctl "server1$k" "$CL_DIR/server1$k" create postgres --pgdata "$CL_DIR/server1$k" \
			--pgport "$PORT" --pgctl "$PG_BINDIR/pg_ctl" --hostname 127.0.0.1 --listen 127.0.0.1 \
			--pghost "$CL_DIR" \
			--username postgres --dbname event_store --name "server1$k" --auth trust --no-ssl \
			--monitor "$MONITOR_URI" --replication-quorum true --run
		CL_WATCH="$CL_WATCH $CL_LAST_AUTOCTL:$CL_DIR/server1$k"
		if [ "$k" = a ]; then
			primary_up() { [ "$(cl_query "$MONITOR_PORT" pg_auto_failover "SELECT reportedstate FROM pgautofailover.node WHERE nodename = 'server1a'")" = single ]; }
			cl_wait "server 1's primary" 150 primary_up || { cat "$CL_DIR/server1a.autoctl.log" >&2; false; }
			cl_psql "${ha_ports[0]}" event_store "CREATE EXTENSION IF NOT EXISTS event_store"
		fi
		PORT=$((PORT + 1))
	done
	group_up() {
		[ "$(cl_query "$MONITOR_PORT" pg_auto_failover "SELECT count(*) FILTER (WHERE reportedstate = 'primary' AND goalstate = 'primary') || ',' || count(*) FILTER (WHERE reportedstate = 'secondary' AND goalstate = 'secondary') FROM pgautofailover.node WHERE groupid = 0")" = 1,2 ]
	}
	cl_wait "server 1's primary and two secondaries" 200 group_up || {
		tail -n 20 "$CL_DIR"/server1?.autoctl.log >&2
		false
	}
	hosts="127.0.0.1,127.0.0.1,127.0.0.1"
	hports="$(IFS=,; echo "${ha_ports[*]}")"
	dsns+=("host=$hosts port=$hports dbname=event_store user=postgres target_session_attrs=read-write")
	conns+=("host=$hosts port=$hports dbname=event_store user=postgres target_session_attrs=read-write connect_timeout=5")
	first=2
fi

for n in $(seq "$first" "$NSERVERS"); do
	PORT="$(cl_free_port "$PORT")"
	cl_init_server "server$n" "$PORT" event_store
	cl_psql "$PORT" postgres "CREATE DATABASE event_store"
	cl_psql "$PORT" event_store "CREATE EXTENSION event_store"
	dsns+=("host=127.0.0.1 port=$PORT dbname=event_store user=postgres")
	ports+=("$PORT")
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

if [ -n "$REPORTING" ]; then
	# every server publishes the categories; the reporting server imports
	# each publication (history first, then live), into one store
	cats="$(sed "s/[^,]*/'&'/g" <<<"$REPORTING")"
	for n in $(seq 1 "$NSERVERS"); do
		cl_psql "${ports[$((n - 1))]}" event_store "SELECT event_store.create_publication('reporting', ARRAY[$cats])"
	done
	PORT="$(cl_free_port "$PORT")"
	REPORTING_PORT="$PORT"
	cl_init_server reporting "$REPORTING_PORT" event_store nostart
	# an apply worker per import, and a table copy for each at the start
	printf '%s\n' "max_worker_processes = 24" "max_logical_replication_workers = 16" \
		"max_sync_workers_per_subscription = 1" >>"$CL_DIR/reporting/postgresql.conf"
	(cd "$CL_DIR" && es_as_test_user "$PG_BINDIR/pg_ctl" -D "$CL_DIR/reporting" -l "$CL_DIR/reporting.log" \
		-w -t 60 start) >/dev/null 2>&1 || {
		cat "$CL_DIR/reporting.log" >&2
		false
	}
	cl_psql "$REPORTING_PORT" postgres "CREATE DATABASE reporting"
	cl_psql "$REPORTING_PORT" reporting "CREATE EXTENSION event_store"
	for n in $(seq 1 "$NSERVERS"); do
		cl_psql "$REPORTING_PORT" reporting "SELECT event_store.create_import('server_$n', '${dsns[$((n - 1))]}', 'reporting')"
	done
	imports_running() {
		[ "$(cl_query "$REPORTING_PORT" reporting "SELECT count(*) FROM event_store.import_status WHERE state = 'running'")" = "$NSERVERS" ]
	}
	cl_wait "the reporting database's imports" 120 imports_running || {
		cl_query "$REPORTING_PORT" reporting "SELECT * FROM event_store.import_status" >&2
		false
	}
	PORT=$((PORT + 1))
fi

STARTED=1
echo "ROUTER_DSN=host=127.0.0.1 port=$ROUTER_PORT dbname=router user=postgres"
for n in $(seq 1 "$NSERVERS"); do
	echo "SERVER_DSN_$n=${dsns[$((n - 1))]}"
	if [ "$HA" = 1 ] && [ "$n" = 1 ]; then
		echo "SERVER_PGDATA_1=$CL_DIR/server1a"
	else
		echo "SERVER_PGDATA_$n=$CL_DIR/server$n"
	fi
done
if [ "$HA" = 1 ]; then
	echo "MONITOR_PGDATA=$MONITOR_PGDATA"
	echo "PRIMARY_PGDATA_1=$CL_DIR/server1a"
	echo "STANDBY_PGDATA_1_1=$CL_DIR/server1b"
	echo "STANDBY_PGDATA_1_2=$CL_DIR/server1c"
	for n in $(seq 2 "$NSERVERS"); do
		echo "PRIMARY_PGDATA_$n=$CL_DIR/server$n"
	done
fi
if [ -n "$REPORTING" ]; then
	echo "REPORTING_DSN=host=127.0.0.1 port=$REPORTING_PORT dbname=reporting user=postgres"
	echo "REPORTING_PGDATA=$CL_DIR/reporting"
fi
