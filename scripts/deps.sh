#!/usr/bin/env bash
# Install the Debian packages needed to build event_store and run its tests.
# Idempotent and quiet: does nothing when everything is there, and shows
# apt's output only when the installation fails.  Runs as root, or through
# sudo as another user; needs no terminal (CI).
set -euo pipefail

. "$(dirname "$0")/lib.sh"

# postgresql-15 / -server-dev-15: server and PGXS (headers, pg_regress,
#   pg_isolation_regress, PostgreSQL::Test::Cluster)
# postgresql-15-pgtap, libtap-parser-sourcehandler-pgtap-perl: pgTAP + pg_prove
# libipc-run-perl: needed by PostgreSQL::Test::Cluster (TAP tests)
# perl: prove; make, gcc: the build; util-linux: runuser; coreutils: timeout
# python3-psycopg: the Python client package (examples/python) and its test
#   (test/t/060_clients.pl); python3-venv, python3-pip, python3-setuptools,
#   python3-wheel: that test installs the package into a virtual environment,
#   built without a download; python3-mypy checks its type hints
# postgresql-15-plproxy: the router extension event_store_router and the
#   cluster example (examples/cluster, test/t/110_router.pl)
# postgresql-15-auto-failover: the cluster example's high availability
# prometheus-postgres-exporter: the monitoring example and its test
#   (test/t/120_monitoring.pl)
# debhelper, dpkg-dev, postgresql-server-dev-all, lintian: `make deb`, which
#   scripts/test.sh uses as root to install the extension as a Debian package
PACKAGES=(
	postgresql-15
	postgresql-server-dev-15
	postgresql-15-pgtap
	libtap-parser-sourcehandler-pgtap-perl
	libipc-run-perl
	perl
	make
	gcc
	util-linux
	coreutils
	tar
	python3-psycopg
	python3-venv
	python3-pip
	python3-setuptools
	python3-wheel
	python3-mypy
	postgresql-15-plproxy
	postgresql-15-auto-failover
	prometheus-postgres-exporter
	debhelper dpkg-dev postgresql-server-dev-all lintian
)

command -v dpkg-query >/dev/null 2>&1 || es_die "dpkg-query not found: this script supports Debian and derivatives only"

missing=()
for pkg in "${PACKAGES[@]}"; do
	status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
	if [ "$status" != "installed" ]; then
		missing+=("$pkg")
	fi
done

# nodejs, npm: the Node.js client package and its test (npm installs its
# development packages from the npm registry when the test runs).  A node and npm
# installed another way (another distribution of Node.js, whose package may
# even conflict with Debian's npm) are used as they are.
if ! command -v node >/dev/null 2>&1; then
	missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
	missing+=(npm)
fi

if [ "${#missing[@]}" -eq 0 ]; then
	exit 0
fi

if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
	es_die "missing Debian packages (${missing[*]}): installing them needs root rights; run this as root, or install sudo and allow this user to use it"
fi
es_say "installing ${#missing[@]} Debian packages and what they need (on a fresh machine about 480 packages, 4 minutes or so; quiet until done): ${missing[*]}"
log="$(mktemp /tmp/event_store-deps.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! es_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$log" 2>&1 ||
	! es_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends "${missing[@]}" >>"$log" 2>&1 </dev/null; then
	cat "$log" >&2
	es_die "package installation failed"
fi
