#!/usr/bin/env bash
# Run pgTAP files on a throwaway cluster: what `make pgtapcheck` does.
#
#   bash scripts/pgtapcheck.sh DIR FILE...
#
# Creates a cluster in DIR/data (removing whatever DIR held) with
# test/event_store.conf, listening only on a socket in DIR on port
# ES_PGTAP_PORT (default 5511), and runs each FILE with pg_prove in a fresh
# database of its own where CREATE EXTENSION pgtap and CREATE EXTENSION
# event_store were done; the database is dropped after its file.  The
# cluster is stopped at the end, also when a file fails or the script is
# interrupted.  Server log: DIR/data.log.  Exit status: non-zero when the
# cluster could not be set up or any file failed.
set -uo pipefail

. "$(dirname "$0")/lib.sh"

[ "$#" -ge 2 ] || es_die "usage: pgtapcheck.sh DIR FILE..."
DIR="$1"
shift
PORT="${ES_PGTAP_PORT:-5511}"

es_find_pg_config
export PATH="$PG_BINDIR:$PATH"
command -v pg_prove >/dev/null 2>&1 || es_die "pg_prove not found"

rm -rf "$DIR"
mkdir -p "$DIR" || es_die "cannot create $DIR"
DIR="$(cd "$DIR" && pwd)"

trap 'es_cluster_stop "$DIR/data"' EXIT
trap 'exit 130' INT TERM

if ! es_cluster_init "$DIR/data" "$PORT" "$ES_SRC_DIR/test/event_store.conf" ||
	! es_cluster_start "$DIR/data"; then
	es_die "could not set up the pgTAP cluster in $DIR/data"
fi

psql_pgtap() {
	"$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"
}

failed=0
i=0
for f in "$@"; do
	i=$((i + 1))
	db="es_pgtap_$i"
	# (not copied from a template database: a background worker may be
	# connected to it, and CREATE DATABASE would refuse to copy it)
	if ! psql_pgtap -d postgres -c "CREATE DATABASE $db" ||
		! psql_pgtap -d "$db" -c 'CREATE EXTENSION pgtap' -c 'CREATE EXTENSION event_store'; then
		es_say "$f: could not set up its database"
		failed=$((failed + 1))
	elif ! pg_prove --norc --nocolor --failures --comments \
		-h "$DIR" -p "$PORT" -U postgres -d "$db" "$f"; then
		failed=$((failed + 1))
	fi
	psql_pgtap -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
done

if [ "$failed" -gt 0 ]; then
	es_say "$failed of $# pgTAP files failed (server log: $DIR/data.log)"
	exit 1
fi
