#!/usr/bin/env bash
# Run every test suite of event_store in the current source tree, against the
# installed extension, each suite on throwaway servers of its own.  Each
# suite is a make target (see the Makefile); this script runs them with time
# limits and counts what passed:
#
#   regress    pg_regress (sql/ + expected/, REGRESS in the Makefile):
#              `make installcheck`, which starts its own instance with
#              test/event_store.conf
#   isolation  isolation specs (test/isolation/specs/*.spec): `make isolationcheck`
#   tap        TAP scripts (test/t/*.pl) on PostgreSQL::Test::Cluster nodes;
#              each script configures its own nodes: `make tapcheck`, once
#              per script
#   pgtap      pgTAP files (test/pgtap/*.sql) run by pg_prove on a cluster
#              started with test/event_store.conf; every file gets a fresh
#              database in which CREATE EXTENSION pgtap and CREATE EXTENSION
#              event_store are done: `make pgtapcheck`, once per file
#
# One test = one test file: a pg_regress test, an isolation spec, a TAP
# script or a pgTAP file.  A file passes when its runner says so; a file
# that fails, or never reports because its suite broke off or timed out,
# counts as failed.  (TAP and pgTAP assertion totals are shown for
# information.)  The last line of the output is always
#
#   N passed, N failed
#
# and the exit status is non-zero when anything failed.
#
# Usually started by scripts/test.sh, which builds and installs first and
# runs this in a throwaway copy of the tree.  To run it yourself: as a
# non-root user, in a tree where `make install` was done.
#
#   SUITE...           run only these suites (regress, isolation, tap, pgtap);
#                      default: all
#   --not-run REASON   run nothing; report every test as failed because of
#                      REASON (used by test.sh when the build fails)
#
# Environment: PG_CONFIG; ES_SUITE_TIMEOUT (seconds per suite, default 420);
# ES_FILE_TIMEOUT (seconds per TAP/pgTAP file, default 300); ES_REGRESS_PORT and
# ES_PGTAP_PORT (the ports of the regress and pgTAP servers, default 5513 and
# 5511).
set -uo pipefail

. "$(dirname "$0")/lib.sh"

NOT_RUN=""
SUITES=()
while [ "$#" -gt 0 ]; do
	case "$1" in
	--not-run)
		NOT_RUN="${2:-not run}"
		shift
		;;
	regress | isolation | tap | pgtap) SUITES+=("$1") ;;
	*) es_die "unknown suite \"$1\" (suites: regress isolation tap pgtap)" ;;
	esac
	shift
done
[ "${#SUITES[@]}" -gt 0 ] || SUITES=(regress isolation tap pgtap)

if [ -z "$NOT_RUN" ] && [ "$(id -u)" -eq 0 ]; then
	es_die "run this as an unprivileged user (scripts/test.sh does that for you)"
fi

SUITE_TIMEOUT="${ES_SUITE_TIMEOUT:-420}"
FILE_TIMEOUT="${ES_FILE_TIMEOUT:-300}"
PGTAP_PORT="${ES_PGTAP_PORT:-5511}"
REGRESS_PORT="${ES_REGRESS_PORT:-5513}"

# Deterministic locale and messages for every server the suites start
if locale -a 2>/dev/null | grep -qix 'c\.utf-\?8'; then
	export LC_ALL=C.UTF-8 LANG=C.UTF-8
else
	export LC_ALL=C LANG=C
fi
unset PGHOST PGPORT PGDATABASE PGUSER PGSERVICE PGOPTIONS

TOTAL_PASSED=0
TOTAL_FAILED=0
SUMMARY=()

header() { printf '\n======== %s ========\n' "$*"; }

# record SUITE PASSED FAILED [NOTE]
record() {
	TOTAL_PASSED=$((TOTAL_PASSED + $2))
	TOTAL_FAILED=$((TOTAL_FAILED + $3))
	SUMMARY+=("$(printf '%-10s %4d passed, %4d failed%s' "$1" "$2" "$3" "${4:+  ($4)}")")
}

# record_skip SUITE WHY: the suite has no tests at all
record_skip() {
	SUMMARY+=("$(printf '%-10s skipped (%s)' "$1" "$2")")
}

# run_logged LOG SECONDS CMD...: run CMD with a time limit, its output shown
# as it comes and kept in LOG; returns CMD's status (124: timed out).
# timeout(1) puts CMD in a process group of its own and, on expiry or when
# it gets SIGTERM (see on_signal), signals that whole group, so servers a
# runner started go down with it.
# (Both run in the background: the shell's wait is where a trapped signal
# gets through at once.)
CHILD=""
TAILER=""
run_logged() {
	local log="$1" secs="$2" rc
	shift 2
	: >"$log"
	timeout -k 30 "$secs" "$@" >"$log" 2>&1 </dev/null &
	CHILD=$!
	tail -n +1 -f --pid="$CHILD" "$log" &
	TAILER=$!
	wait "$CHILD"
	rc=$?
	wait "$TAILER"
	CHILD=""
	TAILER=""
	return "$rc"
}

# stop_leftover_servers DIR...: a runner that was killed (time limit,
# signal) can leave its temporary servers running (a postmaster detaches
# from its parent's process group); stop every server under DIR.
stop_leftover_servers() {
	local pidfile
	while IFS= read -r pidfile; do
		echo "stopping a leftover server in ${pidfile%/postmaster.pid}"
		"$PG_BINDIR/pg_ctl" -D "${pidfile%/postmaster.pid}" -m immediate -w stop >/dev/null 2>&1 || true
	done < <(find "$@" -name postmaster.pid -type f 2>/dev/null)
}

# Value of a Makefile variable (falls back to reading the assignment)
make_var() {
	local v
	if v="$(printf 'es-print-var:\n\t@echo $(%s)\n' "$1" |
		make -s --no-print-directory -f Makefile -f - es-print-var 2>/dev/null)"; then
		echo "$v"
	else
		sed -n "s/^$1[[:space:]]*=[[:space:]]*//p" Makefile | head -n 1
	fi
}

# print_file FILE MAXLINES [head|tail]: show a diagnostics file, capped to
# its first (diffs) or last (logs, the default) lines
print_file() {
	local f="$1" max="$2" end="${3:-tail}" n
	[ -s "$f" ] || return 0
	n="$(wc -l <"$f")"
	printf -- '---- %s' "$f"
	if [ "$n" -gt "$max" ]; then
		if [ "$end" = head ]; then
			printf ' (first %d of %d lines)' "$max" "$n"
		else
			printf ' (last %d of %d lines)' "$max" "$n"
		fi
	fi
	printf ' ----\n'
	"$end" -n "$max" "$f"
}

# Statuses pg_regress / pg_isolation_regress reported, as "NAME ok|fail"
# lines: PG <= 15 prints "test NAME ... ok" (or "     NAME ... FAILED" in a
# parallel group), PG >= 16 prints "ok 1 - NAME" / "not ok 1 - NAME".
parse_pg_regress() {
	local line
	while IFS= read -r line; do
		if [[ $line =~ ^(test[[:space:]]+|[[:space:]]+)([^[:space:]]+)[[:space:]]+\.\.\.[[:space:]]+(ok|FAILED|failed) ]]; then
			if [ "${BASH_REMATCH[3]}" = ok ]; then
				echo "${BASH_REMATCH[2]} ok"
			else
				echo "${BASH_REMATCH[2]} fail"
			fi
		elif [[ $line =~ ^(not[[:space:]]+)?ok[[:space:]]+[0-9]+[[:space:]]+[-+][[:space:]]+([^[:space:]]+) ]]; then
			if [ -z "${BASH_REMATCH[1]}" ]; then
				echo "${BASH_REMATCH[2]} ok"
			else
				echo "${BASH_REMATCH[2]} fail"
			fi
		fi
	done <"$1"
}

# count_pg_regress_suite SUITE LOG RC DIFFS SERVERLOG TESTS...: count and report
count_pg_regress_suite() {
	local suite="$1" log="$2" rc="$3" diffs="$4" serverlog="$5"
	shift 5
	local passed=0 failed=0 unreported=() statuses t st note=""
	statuses="$(parse_pg_regress "$log")"
	for t in "$@"; do
		st="$(awk -v t="$t" '$1 == t { s = $2 } END { print s }' <<<"$statuses")"
		case "$st" in
		ok) passed=$((passed + 1)) ;;
		fail) failed=$((failed + 1)) ;;
		*)
			failed=$((failed + 1))
			unreported+=("$t")
			;;
		esac
	done
	if [ "${#unreported[@]}" -gt 0 ]; then
		note="never reported: ${unreported[*]}"
	fi
	if [ "$rc" -eq 124 ]; then
		note="timed out after ${SUITE_TIMEOUT}s${note:+; $note}"
	fi
	if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
		# the runner failed although every test said ok: still a failure
		failed=1
		note="runner exited with status $rc${note:+; $note}"
	fi
	if [ "$failed" -gt 0 ]; then
		echo
		echo "$suite: $failed failed${note:+ ($note)}"
		print_file "$diffs" 600 head
		print_file "$serverlog" 60
	fi
	record "$suite" "$passed" "$failed" "$note"
}

# suite_start SUITE TITLE UNIT EMPTY_MESSAGE SKIP_WHY COUNT: print the
# suite's header; return 1, with the outcome recorded, when it has no tests
# or cannot run (the build failed)
suite_start() {
	local suite=$1 title=$2 unit=$3 empty=$4 why=$5 n=$6
	header "$suite: $title ($n $unit)"
	if [ "$n" -eq 0 ]; then
		echo "$empty"
		record_skip "$suite" "$why"
		return 1
	fi
	if [ -n "$NOT_RUN" ]; then
		echo "not run: $NOT_RUN"
		record "$suite" 0 "$n" "not run: $NOT_RUN"
		return 1
	fi
}

# ---------------------------------------------------------------- regress
suite_regress() {
	local tests log rc
	read -r -a tests <<<"$(make_var REGRESS)"
	suite_start regress "pg_regress" tests "no REGRESS tests in the Makefile" \
		"no REGRESS tests" "${#tests[@]}" || return
	rm -rf tmp_check results regression.diffs regression.out
	log="$(mktemp)"
	run_logged "$log" "$SUITE_TIMEOUT" make -s --no-print-directory installcheck \
		PG_CONFIG="$PG_CONFIG" \
		EXTRA_REGRESS_OPTS="--port=$REGRESS_PORT ${EXTRA_REGRESS_OPTS:-}"
	rc=$?
	stop_leftover_servers tmp_check
	count_pg_regress_suite regress "$log" "$rc" regression.diffs \
		tmp_check/log/postmaster.log "${tests[@]}"
	rm -f "$log"
}

# ---------------------------------------------------------------- isolation
suite_isolation() {
	local tests=() f log rc
	for f in test/isolation/specs/*.spec; do
		[ -e "$f" ] || continue
		f="${f##*/}"
		tests+=("${f%.spec}")
	done
	suite_start isolation "isolation specs" specs "no test/isolation/specs/*.spec" \
		"no specs" "${#tests[@]}" || return
	rm -rf tmp_check_iso test/isolation/output_iso
	log="$(mktemp)"
	run_logged "$log" "$SUITE_TIMEOUT" make -s --no-print-directory isolationcheck \
		PG_CONFIG="$PG_CONFIG"
	rc=$?
	stop_leftover_servers tmp_check_iso
	count_pg_regress_suite isolation "$log" "$rc" test/isolation/output_iso/regression.diffs \
		tmp_check_iso/log/postmaster.log "${tests[@]}"
	rm -f "$log"
}

# Assertion count of a prove / pg_prove run ("Files=1, Tests=12, ...")
tap_assertions() {
	sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$1" | tail -n 1
}

# ---------------------------------------------------------------- TAP
suite_tap() {
	local files=() f lf name log rc passed=0 failed=0 asserts=0 n failed_files=()
	local tapdir perllib
	for f in test/t/*.pl; do
		[ -e "$f" ] && files+=("$f")
	done
	suite_start tap "TAP scripts" files "no test/t/*.pl" "no test/t/*.pl" "${#files[@]}" || return
	perllib="$PG_PKGLIBDIR/pgxs/src/test/perl"
	if [ ! -f "$perllib/PostgreSQL/Test/Cluster.pm" ]; then
		echo "PostgreSQL::Test::Cluster not found under $perllib"
		record tap 0 "${#files[@]}" "PostgreSQL::Test::Cluster missing"
		return
	fi
	# `make tapcheck` runs prove with TESTDIR=tmp_tap: the logs land in
	# tmp_tap/tmp_check/log
	tapdir="$PWD/tmp_tap"
	log="$(mktemp)"
	for f in "${files[@]}"; do
		name="$(basename "$f" .pl)"
		run_logged "$log" "$FILE_TIMEOUT" make -s --no-print-directory tapcheck \
			PG_CONFIG="$PG_CONFIG" ES_TAP_FILES="$f"
		rc=$?
		stop_leftover_servers "$tapdir/tmp_check"
		n="$(tap_assertions "$log")"
		asserts=$((asserts + ${n:-0}))
		if [ "$rc" -eq 0 ]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			failed_files+=("$name")
			[ "$rc" -ne 124 ] || echo "$f: timed out after ${FILE_TIMEOUT}s"
			echo "$f: FAILED; logs follow"
			print_file "$tapdir/tmp_check/log/regress_log_$name" 150
			for lf in "$tapdir/tmp_check/log/${name}"_*.log; do
				[ -e "$lf" ] && print_file "$lf" 60
			done
		fi
	done
	rm -f "$log"
	record tap "$passed" "$failed" "$asserts assertions${failed_files:+; failed: ${failed_files[*]}}"
}

# ---------------------------------------------------------------- pgTAP
suite_pgtap() {
	local files=() f name log rc passed=0 failed=0 asserts=0 n failed_files=()
	for f in test/pgtap/*.sql; do
		[ -e "$f" ] && files+=("$f")
	done
	suite_start pgtap "pgTAP files" files "no test/pgtap/*.sql" "no test/pgtap/*.sql" "${#files[@]}" || return
	if ! command -v pg_prove >/dev/null 2>&1; then
		echo "pg_prove not found"
		record pgtap 0 "${#files[@]}" "pg_prove missing"
		return
	fi
	log="$(mktemp)"
	# one `make pgtapcheck` per file: a cluster of its own under tmp_pgtap
	# (stopped by scripts/pgtapcheck.sh, or here after a time limit)
	for f in "${files[@]}"; do
		name="$(basename "$f" .sql)"
		run_logged "$log" "$FILE_TIMEOUT" make -s --no-print-directory pgtapcheck \
			PG_CONFIG="$PG_CONFIG" ES_PGTAP_PORT="$PGTAP_PORT" ES_PGTAP_FILES="$f"
		rc=$?
		stop_leftover_servers tmp_pgtap
		n="$(tap_assertions "$log")"
		asserts=$((asserts + ${n:-0}))
		if [ "$rc" -eq 0 ]; then
			passed=$((passed + 1))
		else
			failed=$((failed + 1))
			failed_files+=("$name")
			[ "$rc" -ne 124 ] || echo "$f: timed out after ${FILE_TIMEOUT}s"
			print_file tmp_pgtap/data.log 30
		fi
	done
	rm -f "$log"
	record pgtap "$passed" "$failed" "$asserts assertions${failed_files:+; failed: ${failed_files[*]}}"
}

# ---------------------------------------------------------------- main
on_signal() {
	if [ -n "$CHILD" ]; then
		kill -TERM "$CHILD" 2>/dev/null
		wait "$CHILD" 2>/dev/null
	fi
	if [ -n "$TAILER" ]; then
		kill "$TAILER" 2>/dev/null
	fi
	stop_leftover_servers tmp_check tmp_check_iso tmp_tap tmp_pgtap
	echo "interrupted"
	exit 130
}
trap on_signal INT TERM

if [ -z "$NOT_RUN" ]; then
	es_find_pg_config
	export PATH="$PG_BINDIR:$PATH"
fi

for suite in "${SUITES[@]}"; do
	"suite_$suite"
done

header "summary (one test = one test file)"
for line in "${SUMMARY[@]}"; do
	echo "$line"
done
echo "$TOTAL_PASSED passed, $TOTAL_FAILED failed"
[ "$TOTAL_FAILED" -eq 0 ]
