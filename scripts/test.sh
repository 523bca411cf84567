#!/usr/bin/env bash
# Build, install and test event_store: every suite, on throwaway servers.
#
#   bash scripts/test.sh [SUITE...]     (suites: regress isolation tap pgtap;
#                                        default: all)
#
# Steps: install missing packages (scripts/deps.sh); copy the source tree
# (without .git and build leftovers) into a fresh /tmp/event_store-test.XXXXXX;
# build it there and install it: as root on Debian, into Debian's PostgreSQL,
# as the Debian package that `make deb` builds (dpkg -i), else with
# `make install` (as root, or through sudo); run every suite
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

# Install as a Debian package (`make deb`, then `dpkg -i`) when that is
# possible: as root, on Debian, into the PostgreSQL of Debian's packages (the
# package installs under /usr/lib/postgresql/N and /usr/share/postgresql/N);
# else with `make install`.  ES_INSTALL=make forces `make install`,
# ES_INSTALL=deb the package (failing when it cannot be used).
# ES_DPKG_ROOT=DIR tries the package route without touching the system: the
# package goes into the dpkg installation under DIR (dpkg --root=DIR, its
# dependencies not checked: DIR's dpkg database has no PostgreSQL), for a
# PG_CONFIG of a copy of Debian's PostgreSQL under DIR/usr.
DPKG_ROOT_DIR="${ES_DPKG_ROOT:-}"
install_route() {
	local major
	case "${ES_INSTALL:-auto}" in
	make)
		echo "make install (ES_INSTALL=make)"
		return
		;;
	deb | auto) ;;
	*) es_die "ES_INSTALL=${ES_INSTALL}: use make, deb or auto" ;;
	esac
	major="$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')"
	if [ "$(id -u)" -ne 0 ]; then
		echo "make install (not root: dpkg -i needs root)"
	elif [ ! -f /etc/debian_version ] || ! command -v dpkg-buildpackage >/dev/null 2>&1; then
		echo "make install (not Debian, or no dpkg-buildpackage)"
	elif [ "$("$PG_CONFIG" --pkglibdir)" != "$DPKG_ROOT_DIR/usr/lib/postgresql/$major/lib" ] ||
		[ "$("$PG_CONFIG" --sharedir)" != "$DPKG_ROOT_DIR/usr/share/postgresql/$major" ]; then
		echo "make install (PG_CONFIG=$PG_CONFIG is not Debian's PostgreSQL $major${DPKG_ROOT_DIR:+ under $DPKG_ROOT_DIR}, which the package installs into)"
	else
		echo "deb"
		return
	fi
	if [ "${ES_INSTALL:-auto}" = deb ]; then
		es_say "ES_INSTALL=deb, but the package cannot be used here"
		return 1
	fi
}

# es_install_deb DIR LOG: build the Debian package in DIR (under DIR/build,
# warnings being errors, checked by lintian) and install it; exports
# ES_INSTALLED_PACKAGE, the package's name, which test/t/130_package.pl checks.
# The suites need nothing built in the tree: they run against what the
# package installed.
es_install_deb() {
	local dir="$1" log="$2" major deb
	major="$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')"
	if ! env ES_WERROR=1 make -C "$dir" PG_CONFIG="$PG_CONFIG" deb >"$log" 2>&1; then
		cat "$log" >&2
		es_say "make deb failed"
		return 1
	fi
	deb="$(ls "$dir"/build/deb/postgresql-"$major"-event-store_*.deb 2>/dev/null | head -n 1)"
	if [ -z "$deb" ]; then
		cat "$log" >&2
		es_say "make deb built no package for PostgreSQL $major (see debian/pgversions)"
		return 1
	fi
	if ! env DEBIAN_FRONTEND=noninteractive dpkg ${DPKG_ROOT_DIR:+--root="$DPKG_ROOT_DIR" --force-depends} \
		-i "$deb" >>"$log" 2>&1; then
		tail -n 20 "$log" >&2
		es_say "dpkg -i $deb failed"
		return 1
	fi
	ES_INSTALLED_PACKAGE="postgresql-$major-event-store"
	export ES_INSTALLED_PACKAGE
	echo "installed the Debian package $(basename "$deb") (lintian clean)${DPKG_ROOT_DIR:+ under $DPKG_ROOT_DIR}"
}

route="$(install_route)" || { cd "$ES_SRC_DIR" && not_run "no way to install with ES_INSTALL=${ES_INSTALL:-auto} (see above)"; }
if [ "$route" = deb ]; then
	echo "building the Debian package (make deb) and installing it (dpkg -i), in place of make install"
	if ! es_install_deb "$WORK" "$WORK/build.log"; then
		cd "$WORK" && not_run "the Debian package could not be built or installed"
	fi
else
	echo "building and installing: $route"
	unset ES_INSTALLED_PACKAGE ES_DPKG_ROOT
	if ! es_build_install "$WORK" "$WORK/build.log"; then
		cd "$WORK" && not_run "the build or the installation failed"
	fi
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
