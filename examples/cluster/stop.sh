#!/usr/bin/env bash
# Stop everything examples/cluster/start.sh started, in either mode (the
# servers it made and, with --ha, every pg_autoctl and the monitor, whether
# they were since stopped, killed, restarted or promoted) and remove the
# example's data directory.  Same environment as start.sh
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

# pg_autoctl first (else a keeper restarts the server it watches), the nodes
# before the monitor, the nodes together: ask each to stop, then end the
# process groups that are still there; a keeper started since by someone
# else is found by its data directory (pg_autoctl stop --pgdata)
# a process group with a process that is not a zombie
group_alive() {
	ps -o stat= -g "$1" 2>/dev/null | grep -q '^[^Z]'
}

stop_keepers() {
	local kind name pgdata pid left
	local -a pids=()
	while read -r kind name pgdata pid; do
		[ "$kind" = autoctl ] || continue
		if [ "$1" = monitor ] && [ "$name" != monitor ]; then continue; fi
		if [ "$1" = nodes ] && [ "$name" = monitor ]; then continue; fi
		(cd "$CL_DIR" && es_as_test_user pg_autoctl stop --fast --pgdata "$pgdata") >/dev/null 2>&1 &
		pids+=("$pid")
		echo "stopping pg_autoctl of $name"
	done <"$CL_STATE"
	wait
	[ "${#pids[@]}" -gt 0 ] || return 0
	for _ in $(seq 1 60); do
		left=0
		for pid in "${pids[@]}"; do
			if group_alive "$pid"; then left=1; fi
		done
		[ "$left" = 1 ] || return 0
		sleep 0.25
	done
	for pid in "${pids[@]}"; do
		kill -TERM -- "-$pid" 2>/dev/null || true
	done
	sleep 1
	for pid in "${pids[@]}"; do
		kill -KILL -- "-$pid" 2>/dev/null || true
	done
}
stop_keepers nodes
stop_keepers monitor

# a server still running, in any mode: fast shutdown, else immediate
while read -r kind name pgdata _; do
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

# pg_autoctl's own files about these data directories (configuration, state,
# pid file), kept outside them
home="$(getent passwd "$(es_test_user)" | cut -d: -f6)"
while read -r kind name pgdata _; do
	[ "$kind" = autoctl ] || continue
	case "$pgdata" in /*) ;; *) continue ;; esac
	for d in "$home/.config/pg_autoctl$pgdata" "$home/.local/share/pg_autoctl$pgdata" \
		"${XDG_RUNTIME_DIR:-/tmp}/pg_autoctl$pgdata" "/tmp/pg_autoctl$pgdata"; do
		[ -n "$home" ] || continue
		rm -rf "$d"
		rmdir "$(dirname "$d")" 2>/dev/null || true
	done
done <"$CL_STATE"

rm -f "$CL_STATE"
# the data directory is the example's own: it held nothing before start.sh
rm -rf "$CL_DIR"
