#!/usr/bin/env bash
# Build, install and test event_store: every suite, on throwaway servers.
#
#   bash scripts/test.sh [SUITE...]     (suites: regress isolation tap pgtap;
#                                        default: all)
#
# Steps: install missing packages (scripts/deps.sh); copy the source tree
# (without .git and build leftovers) into a fresh /tmp/event_store-test.XXXXXX;
# build it there and install it (as root, or through sudo); run every suite
# there with scripts/run-suites.sh, as the "postgres" OS user when started as
# root (initdb refuses root).  The copy is removed at the end; set
# ES_KEEP_TEST_DIR=1 to keep it for a look at the results.
#
# The last line of the output is "N passed, N failed" (one test = one test
# file, see run-suites.sh); the exit status is non-zero when any test failed
# or a suite could not run.
set -uo pipefail

. "$(dirname "$0")/lib.sh"

SUITES=("$@")
for suite in "${SUITES[@]}"; do
	case "$suite" in
	regress | isolation | tap | pgtap) ;;
	*) es_die "unknown suite \"$suite\" (suites: regress isolation tap pgtap)" ;;
	esac
done

WORK=""
cleanup() {
	if [ -n "$WORK" ] && [ -d "$WORK" ]; then
		if [ "${ES_KEEP_TEST_DIR:-}" = 1 ]; then
			es_say "kept $WORK"
		else
			rm -rf "$WORK"
		fi
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Report every test as failed (nothing could run) and stop.
not_run() {
	bash "$ES_SCRIPTS_DIR/run-suites.sh" --not-run "$1" "${SUITES[@]}"
	exit 1
}

printf '======== setup ========\n'
if ! bash "$ES_SCRIPTS_DIR/deps.sh"; then
	cd "$ES_SRC_DIR" && not_run "dependencies could not be installed"
fi
(es_find_pg_config) || { cd "$ES_SRC_DIR" && not_run "pg_config not found"; }
es_find_pg_config
echo "PostgreSQL: $("$PG_CONFIG" --version) ($PG_BINDIR)"

WORK="$(es_mktemp event_store-test)" || { cd "$ES_SRC_DIR" && not_run "no temporary directory"; }
if ! es_copy_tree "$WORK"; then
	cd "$ES_SRC_DIR" && not_run "could not copy the source tree"
fi
echo "test tree: $WORK"

echo "building and installing"
if ! es_build_install "$WORK" "$WORK/build.log"; then
	cd "$WORK" && not_run "the build or the installation failed"
fi
# the installed library is the one just built
echo "installed: $("$PG_CONFIG" --pkglibdir)/event_store.so"

if [ "$(id -u)" -eq 0 ]; then
	chown -R postgres: "$WORK"
	echo "running the suites as OS user postgres"
fi

cd "$WORK" || es_die "cannot enter $WORK"
es_as_test_user bash scripts/run-suites.sh "${SUITES[@]}"
rc=$?
exit "$rc"
