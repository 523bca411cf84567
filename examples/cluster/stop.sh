#!/usr/bin/env bash
# Stop everything examples/cluster/start.sh started (the servers it made,
# whether they were since stopped, killed, restarted or promoted) and remove
# the example's data directory.  Same environment as start.sh
# (ES_CLUSTER_DIR).  Does nothing when no example runs there.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../../scripts/lib.sh"
. "$HERE/lib.sh"

if [ ! -f "$CL_STATE" ]; then
	es_say "no cluster example in $CL_DIR"
	exit 0
fi
es_find_pg_config

# a server still running, in any mode: fast shutdown, else immediate
while read -r kind name pgdata; do
	[ "$kind" = server ] || continue
	if [ -f "$pgdata/postmaster.pid" ]; then
		(cd "$CL_DIR" && { es_as_test_user "$PG_BINDIR/pg_ctl" -D "$pgdata" -m fast -w -t 30 stop ||
			es_as_test_user "$PG_BINDIR/pg_ctl" -D "$pgdata" -m immediate -w -t 30 stop; }) >/dev/null 2>&1 || true
		pid="$(head -n 1 "$pgdata/postmaster.pid" 2>/dev/null || true)"
		if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
			es_say "server $name (pid $pid) did not stop; killing it"
			kill -9 "$pid" 2>/dev/null || true
		fi
	fi
	echo "stopped $name"
done <"$CL_STATE"

rm -f "$CL_STATE"
# the data directory is the example's own: it held nothing before start.sh
rm -rf "$CL_DIR"
