#!/usr/bin/env bash
# Show event_store at work: build and install it, start a throwaway server
# with the library preloaded, run examples/walkthrough.sql with psql (every
# statement is echoed before its result), then stop the server and remove
# its files, also when something fails.
#
#   bash scripts/demo.sh
#
# Runs the server as the "postgres" OS user when started as root.  Set
# ES_DEMO_PORT to change the (socket-only) port, default 5512.
set -uo pipefail

. "$(dirname "$0")/lib.sh"

PORT="${ES_DEMO_PORT:-5512}"
BUILD=""
DEMO=""
cleanup() {
	if [ -n "$DEMO" ] && [ -d "$DEMO" ]; then
		es_cluster_stop "$DEMO/data"
		rm -rf "$DEMO"
	fi
	if [ -n "$BUILD" ]; then
		rm -rf "$BUILD"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bash "$ES_SCRIPTS_DIR/deps.sh" || es_die "dependencies could not be installed"
es_find_pg_config

# Build from a copy, so the source tree gets no build products
BUILD="$(es_mktemp event_store-build)" || exit 1
es_copy_tree "$BUILD" || es_die "could not copy the source tree"
es_say "building and installing event_store"
es_build_install "$BUILD" "$BUILD/build.log" || exit 1

DEMO="$(es_mktemp event_store-demo)" || exit 1
cp "$ES_SRC_DIR/examples/walkthrough.sql" "$DEMO/walkthrough.sql" || es_die "examples/walkthrough.sql missing"
echo "shared_preload_libraries = 'event_store'" >"$DEMO/event_store.conf"
if [ "$(id -u)" -eq 0 ]; then
	chown -R postgres: "$DEMO"
fi

es_say "starting a throwaway server in $DEMO (port $PORT, socket only)"
if ! es_cluster_init "$DEMO/data" "$PORT" "$DEMO/event_store.conf" ||
	! es_cluster_start "$DEMO/data" ||
	! (cd "$DEMO" && es_as_test_user "$PG_BINDIR/psql" -X -q -h "$DEMO" -p "$PORT" \
		-U postgres -d postgres -c 'CREATE DATABASE walkthrough'); then
	es_die "could not start the server"
fi

es_say "running examples/walkthrough.sql"
echo
(cd "$DEMO" && es_as_test_user "$PG_BINDIR/psql" -X -a -v ON_ERROR_STOP=1 \
	-h "$DEMO" -p "$PORT" -U postgres -d walkthrough -f walkthrough.sql)
rc=$?
echo
if [ "$rc" -eq 0 ]; then
	es_say "walkthrough finished; stopping the server"
else
	es_say "walkthrough failed (psql exit status $rc)"
fi
exit "$rc"
