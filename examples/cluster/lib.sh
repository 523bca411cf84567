# What start.sh and stop.sh of the cluster example share.  Source it after
# scripts/lib.sh.
# shellcheck shell=bash

CL_DIR="${ES_CLUSTER_DIR:-/tmp/event_store_cluster}"
case "$CL_DIR" in
/*) ;;
*) CL_DIR="$PWD/$CL_DIR" ;;
esac
# one line per thing started: "server NAME PGDATA" (stop.sh reads it)
CL_STATE="$CL_DIR/cluster.state"

# A fresh directory for the example's data, owned by the user that runs the
# servers; refuses when an example is still running there
cl_prepare_dir() {
	if [ -f "$CL_STATE" ]; then
		es_die "a cluster example is running in $CL_DIR: run examples/cluster/stop.sh first"
	fi
	if [ -e "$CL_DIR" ] && [ -n "$(ls -A "$CL_DIR" 2>/dev/null)" ]; then
		es_die "$CL_DIR exists and is not empty: remove it or set ES_CLUSTER_DIR"
	fi
	mkdir -p "$CL_DIR"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$CL_DIR"
	fi
	chmod 700 "$CL_DIR"
	: >"$CL_STATE"
}

# The first port from $1 on that nothing listens on at 127.0.0.1
cl_free_port() {
	local port="$1"
	while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || [ -e "$CL_DIR/.s.PGSQL.$port" ]; do
		port=$((port + 1))
		[ "$port" -lt 65000 ] || es_die "no free port found"
	done
	echo "$port"
}
