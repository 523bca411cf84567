#!/usr/bin/env bash
# Packages of event_store, built from a clean copy of the source tree under
# build/ (nothing is written into the tree itself).  The version has one
# source: default_version in event_store.control.
#
#   bash scripts/package.sh version     print the version
#   bash scripts/package.sh metacheck   fail when META.json disagrees with
#                                       event_store.control (version, name)
#   bash scripts/package.sh deb         the Debian package (debian/, built by
#                                       dpkg-buildpackage with pg_buildext),
#                                       checked by lintian: fails on any
#                                       lintian error or warning
#   bash scripts/package.sh dist        the PGXN distribution: a zip with
#                                       META.json at its top
#
# Usually run through the Makefile: `make deb`, `make dist`.  Output:
# build/deb/postgresql-<PG>-event-store_<version>_<arch>.deb,
# build/dist/event_store-<version>.zip.  ES_BUILD_DIR chooses another build
# directory.
set -euo pipefail

. "$(dirname "$0")/lib.sh"

SRC="$ES_SRC_DIR"
BUILD="${ES_BUILD_DIR:-$SRC/build}"

# default_version of event_store.control
es_version() {
	local v
	v="$(sed -n "s/^[[:space:]]*default_version[[:space:]]*=[[:space:]]*'\([^']*\)'.*/\1/p" \
		"$SRC/event_store.control")"
	[[ $v =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
		es_die "event_store.control: default_version \"$v\" is not a version like 1.2.3"
	echo "$v"
}

# META.json must name the extension and carry the control file's version in
# every place it has one (the distribution, provides.event_store, its file).
metacheck() {
	local version="$1"
	command -v perl >/dev/null 2>&1 || es_die "perl not found"
	perl -MJSON::PP -e '
		my ($file, $version) = @ARGV;
		open(my $fh, "<", $file) or die "cannot read $file: $!\n";
		my $m = eval { JSON::PP->new->decode(do { local $/; <$fh> }) }
			or die "$file is not valid JSON: $@";
		my @bad;
		push @bad, "name is \"$m->{name}\", not \"event_store\"" if ($m->{name} // "") ne "event_store";
		push @bad, "version is \"$m->{version}\"" if ($m->{version} // "") ne $version;
		my $p = $m->{provides}{event_store} // {};
		push @bad, "provides.event_store.version is \"" . ($p->{version} // "") . "\""
			if ($p->{version} // "") ne $version;
		push @bad, "provides.event_store.file is \"" . ($p->{file} // "") . "\", not \"event_store.control\""
			if ($p->{file} // "") ne "event_store.control";
		for my $k (qw(abstract maintainer license prereqs meta-spec)) {
			push @bad, "no \"$k\"" unless defined $m->{$k};
		}
		push @bad, "meta-spec version is not 1.0.0"
			if (($m->{"meta-spec"} // {})->{version} // "") ne "1.0.0";
		die "$file disagrees with event_store.control (default_version $version): "
			. join("; ", @bad) . "\n" if @bad;
	' "$SRC/META.json" "$version" || es_die "fix META.json (the version lives in event_store.control)"
}

# A clean copy of the source tree (what git tracks, or, without git, the tree
# less build and test leftovers) in DEST
copy_source() {
	local dest="$1"
	mkdir -p "$dest"
	if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
		# tracked files as they are in the work tree (uncommitted changes
		# included, untracked files not)
		(cd "$SRC" && git ls-files -z --cached | xargs -0 -r sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh |
			tar --null -T - -cf -) | tar -xf - -C "$dest"
	else
		es_copy_tree "$dest"
		rm -f "$dest"/event_store--*.sql # built by make (the frozen ones are in sql/)
	fi
}

# The newest entry of debian/changelog, for VERSION, dated like the source:
# the last commit, else event_store.control's modification time
write_changelog() {
	local dir="$1" version="$2" date maint
	date="$(git -C "$SRC" log -1 --format=%aD 2>/dev/null || true)"
	[ -n "$date" ] || date="$(date -R -r "$SRC/event_store.control")"
	maint="$(sed -n 's/^Maintainer:[[:space:]]*//p' "$dir/debian/control.in")"
	cat >"$dir/debian/changelog" <<-EOF
		event-store ($version) unstable; urgency=medium

		  * event_store $version (written by \`make deb\` from event_store.control).

		 -- $maint  $date
	EOF
}

build_deb() {
	local version="$1" out="$BUILD/deb" dir changes
	for tool in dpkg-buildpackage dh pg_buildext lintian; do
		command -v "$tool" >/dev/null 2>&1 ||
			es_die "$tool not found: install debhelper, dpkg-dev, postgresql-server-dev-all and lintian (scripts/deps.sh does)"
	done
	rm -rf "$out"
	dir="$out/event-store-$version"
	copy_source "$dir"
	write_changelog "$dir" "$version"
	echo "building the Debian package of event_store $version in $out"
	(cd "$dir" && dpkg-buildpackage -us -uc -j"$(nproc 2>/dev/null || echo 2)") >"$out/build.log" 2>&1 || {
		tail -n 40 "$out/build.log" >&2
		es_die "dpkg-buildpackage failed (log: $out/build.log)"
	}
	changes="$(ls "$out"/*.changes)"
	# lintian on the source and binary packages: any error or warning fails
	if ! lintian --fail-on error,warning --display-info "$changes" >"$out/lintian.log" 2>&1; then
		cat "$out/lintian.log" >&2
		es_die "lintian reported errors or warnings (log: $out/lintian.log)"
	fi
	# (what lintian found at the info level, if anything; not its remark
	# about running as root, as CI does)
	grep -v 'running with root privileges' "$out/lintian.log" | sed 's/^/lintian: /' || true
	rm -rf "$dir"
	ls "$out"/*.deb
}

build_dist() {
	local version="$1" out="$BUILD/dist" name
	command -v zip >/dev/null 2>&1 || es_die "zip not found"
	name="event_store-$version"
	rm -rf "$out"
	copy_source "$out/$name"
	(cd "$out" && zip -q -r "$name.zip" "$name")
	rm -rf "${out:?}/$name"
	echo "$out/$name.zip"
}

version="$(es_version)"
case "${1:-}" in
version) echo "$version" ;;
metacheck) metacheck "$version" ;;
deb)
	metacheck "$version"
	build_deb "$version"
	;;
dist)
	metacheck "$version"
	build_dist "$version"
	;;
*) es_die "usage: $0 version|metacheck|deb|dist" ;;
esac
