# bench/cpu.sh - sourced by the bench scripts (lib.sh, ab_builds.sh,
# ab_projections.sh): the CPU a throwaway cluster used.
#
# cluster_cpu_ticks: CPU time (clock ticks, CLK_TCK a second) used so far by
# the whole cluster of the data directory $DATA: the postmaster, its live
# children (backends, WAL writer, checkpointer, event_store workers...) and
# the children it has reaped (the backends of finished runs).
CLK_TCK=$(getconf CLK_TCK)
cluster_cpu_ticks() {
	local pm
	pm=$(head -n 1 "$DATA/postmaster.pid")
	# cat skips the processes that exit meanwhile; awk would stop at them
	cat /proc/[0-9]*/stat 2>/dev/null | awk -v pm="$pm" '
		$1 == pm { t += $14 + $15 + $16 + $17 }
		$4 == pm { t += $14 + $15 }
		END { print t + 0 }' || true
}
