# bench/lib.sh - what the benchmark scripts share: building the extension and
# a throwaway cluster (started as the postgres user when run as root, stopped
# and removed on exit, even on failure).
#
# Expects PG_CONFIG, PORT, REPO_DIR, log() and die() to be set by the caller.
# bench_cluster_start NAME PORT_SETTING EXTRA_CONF sets WORK, DATA, SOCK,
# SERVER_LOG, RUNAS and PSQL, exports PGHOST/PGPORT/PGUSER/PGDATABASE and
# creates database "bench".  A caller may define bench_before_stop (called by
# the exit trap before the cluster is stopped).

PGBIN=$("$PG_CONFIG" --bindir)
STARTED=0
WORK=

# rate N SECONDS: N per second, rounded
rate() { awk -v n="$1" -v t="$2" 'BEGIN { printf "%.0f", (t > 0 ? n / t : 0) }'; }

# deps (if the repository has the script), then make and make install
bench_build() {
	if [[ -f "$REPO_DIR/scripts/deps.sh" ]]; then
		bash "$REPO_DIR/scripts/deps.sh"
	fi
	if [[ "${BENCH_SKIP_BUILD:-0}" != 1 ]]; then
		log "== building and installing event_store"
		make -C "$REPO_DIR" -s PG_CONFIG="$PG_CONFIG" >/dev/null
		make -C "$REPO_DIR" -s PG_CONFIG="$PG_CONFIG" install >/dev/null
	fi
}

# exit trap: stop the cluster, show the server log on failure, clean up
bench_cleanup() {
	local rc=$?
	if declare -F bench_before_stop >/dev/null; then
		bench_before_stop || true
	fi
	if [[ $STARTED -eq 1 ]]; then
		"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null 2>&1 ||
			log "could not stop the cluster in $DATA"
	fi
	if [[ $rc -ne 0 && -f "${SERVER_LOG:-}" ]]; then
		log "---- server log (tail) ----"
		tail -n 30 "$SERVER_LOG" >&2 || true
	fi
	[[ -n "$WORK" ]] && rm -rf "$WORK"
	exit $rc
}

# bench_cluster_start NAME PORT_SETTING EXTRA_CONF
bench_cluster_start() {
	local name=$1 port_setting=$2 extra_conf=$3

	if [[ $EUID -eq 0 ]]; then
		RUNAS=(runuser -u postgres --)
	else
		RUNAS=()
	fi
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")
	DATA="$WORK/data"
	SOCK="$WORK"
	SERVER_LOG="$WORK/server.log"
	trap bench_cleanup EXIT
	trap 'exit 130' INT TERM
	[[ $EUID -eq 0 ]] && chown postgres: "$WORK"

	if "$PGBIN/pg_isready" -q -h "$SOCK" -p "$PORT" 2>/dev/null ||
		(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
		die "port $PORT is in use; set $port_setting"
	fi

	log "== starting a throwaway cluster on port $PORT"
	"${RUNAS[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust -E UTF8 \
		--locale=C.UTF-8 >/dev/null
	cat >>"$DATA/postgresql.conf" <<CONF

# $name cluster
port = $PORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'event_store'
max_connections = 40
jit = off
$extra_conf
CONF
	"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$SERVER_LOG" -w start >/dev/null
	STARTED=1

	export PGHOST="$SOCK" PGPORT="$PORT" PGUSER=postgres
	PSQL=("$PGBIN/psql" -X -q -v ON_ERROR_STOP=1)
	"$PGBIN/createdb" bench
	export PGDATABASE=bench
}
