# Shared helpers of the scripts in this directory.  Source it, don't run it.
# shellcheck shell=bash
#
# Conventions:
#   - PG_CONFIG selects the PostgreSQL installation (default: pg_config on PATH,
#     else /usr/lib/postgresql/15/bin/pg_config).
#   - Everything that starts a server runs as an unprivileged OS user: the
#     invoking user, or "postgres" when the script runs as root (initdb and
#     postgres refuse to run as root).

ES_SCRIPTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ES_SRC_DIR="$(cd "$ES_SCRIPTS_DIR/.." && pwd)"

# Messages go to stderr, prefixed with the script's name.
es_say() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
es_die() { es_say "error: $*"; exit 1; }

# Locate pg_config (and with it the server's bin directory).
es_find_pg_config() {
	if [ -n "${PG_CONFIG:-}" ]; then
		command -v "$PG_CONFIG" >/dev/null 2>&1 || es_die "PG_CONFIG=$PG_CONFIG not found"
	elif command -v pg_config >/dev/null 2>&1; then
		PG_CONFIG=pg_config
	elif [ -x /usr/lib/postgresql/15/bin/pg_config ]; then
		PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
	else
		es_die "pg_config not found; run scripts/deps.sh or set PG_CONFIG"
	fi
	export PG_CONFIG
	PG_BINDIR="$("$PG_CONFIG" --bindir)"
	PG_PKGLIBDIR="$("$PG_CONFIG" --pkglibdir)"
	export PG_BINDIR PG_PKGLIBDIR
}

# Run a command with root rights: directly as root, else through sudo.
es_as_root() {
	if [ "$(id -u)" -eq 0 ]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		es_say "error: need root rights for: $* (run as root or install sudo)"
		return 1
	fi
}

# The OS user that runs servers and tests.
es_test_user() {
	if [ "$(id -u)" -eq 0 ]; then
		echo postgres
	else
		id -un
	fi
}

# Run a command as the test user, keeping the environment.  As root, the
# current directory should be one the postgres user may enter.
es_as_test_user() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

# A fresh temporary directory owned by the test user: es_mktemp PREFIX
es_mktemp() {
	local dir
	dir="$(mktemp -d "/tmp/$1.XXXXXX")" || es_die "mktemp failed"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$dir"
	fi
	echo "$dir"
}

# Copy the source tree (tracked or not) without .git and without build or
# test leftovers, nor the clients' installed packages (node_modules, which
# the tests install afresh), their build leftovers and bytecode and type
# checker caches: es_copy_tree DEST
es_copy_tree() {
	(cd "$ES_SRC_DIR" && tar -cf - \
		--exclude=./.git \
		--exclude='*.o' --exclude='*.bc' --exclude='*.so' \
		--exclude=./build --exclude=./tmp_check --exclude=./tmp_check_iso --exclude=./tmp_tap --exclude=./tmp_pgtap \
		--exclude=./results --exclude=./log \
		--exclude=./regression.diffs --exclude=./regression.out \
		--exclude=./test/isolation/output_iso \
		--exclude=node_modules --exclude=__pycache__ --exclude=.mypy_cache \
		--exclude='*.egg-info' --exclude=./examples/python/build \
		.) | tar -xf - -C "$1"
}

# Build in DIR, warnings being errors (ES_WERROR=1), and install into the
# PostgreSQL installation: es_build_install DIR LOG
# Output goes to LOG, which is printed when something fails.
es_build_install() {
	local dir="$1" log="$2" jobs
	jobs="$(nproc 2>/dev/null || echo 2)"
	if ! make -C "$dir" -j"$jobs" PG_CONFIG="$PG_CONFIG" ES_WERROR=1 >"$log" 2>&1; then
		cat "$log" >&2
		es_say "build failed"
		return 1
	fi
	if ! es_as_root make -C "$dir" PG_CONFIG="$PG_CONFIG" install >>"$log" 2>&1; then
		tail -n 20 "$log" >&2
		es_say "make install failed"
		return 1
	fi
}

# Throwaway cluster helpers.  The server runs as the test user; it gets a
# private socket directory (the parent of DATADIR, which the test user must
# own) and no TCP listener, so it never collides with another server.
#
# es_cluster_init DATADIR PORT [EXTRA_CONF_FILE]
es_cluster_init() {
	local datadir="$1" port="$2" extra="${3:-}"
	(cd "$(dirname "$datadir")" &&
		es_as_test_user "$PG_BINDIR/initdb" -D "$datadir" -U postgres -A trust -E UTF8 \
			--no-locale --no-sync) >"$datadir.initdb.log" 2>&1 || {
		cat "$datadir.initdb.log" >&2
		return 1
	}
	{
		echo "# throwaway cluster"
		echo "port = $port"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$(dirname "$datadir")'"
		echo "fsync = off"
		echo "synchronous_commit = off"
		echo "full_page_writes = off"
		if [ -n "$extra" ]; then
			cat "$extra"
		fi
	} >>"$datadir/postgresql.conf"
}

# es_cluster_start DATADIR (server log: DATADIR.log)
es_cluster_start() {
	(cd "$(dirname "$1")" &&
		es_as_test_user "$PG_BINDIR/pg_ctl" -D "$1" -l "$1.log" -w -t 60 start) >/dev/null 2>&1 || {
		cat "$1.log" >&2
		return 1
	}
}

# es_cluster_stop DATADIR (quiet; does nothing when the server is not running)
es_cluster_stop() {
	if [ -f "$1/postmaster.pid" ]; then
		(
			cd "$(dirname "$1")" &&
				{ es_as_test_user "$PG_BINDIR/pg_ctl" -D "$1" -m fast -w -t 60 stop ||
					es_as_test_user "$PG_BINDIR/pg_ctl" -D "$1" -m immediate -w stop; }
		) >/dev/null 2>&1 || true
	fi
}
