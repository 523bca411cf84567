# The extension the suites run against is the Debian package's, when
# scripts/test.sh installed it as one (`make deb`, `dpkg -i`: it exports
# ES_INSTALLED_PACKAGE, the package's name); after `make install` there is
# no package to check and the test is skipped.
#
#   - the library, the control file and every install and upgrade script of
#     this tree are owned by the package (dpkg -S), whose version is the
#     control file's default_version, and are as the package shipped them
#     (dpkg --verify: no later `make install` wrote over them);
#   - the package's install script is this tree's (sql/install/*.sql, in
#     order), not one of another build;
#   - a server loads that library and creates the extension at that version.
use strict;
use warnings;

use FindBin;
use PostgreSQL::Test::Utils;
use Test::More;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $package = $ENV{ES_INSTALLED_PACKAGE} // '';
# ES_DPKG_ROOT: the package went into the dpkg installation under that
# directory (dpkg --root), with a copy of PostgreSQL (see scripts/test.sh)
my $root = $ENV{ES_DPKG_ROOT} // '';
my $dpkg_root = $root eq '' ? '' : "--root='$root'";
plan skip_all =>
  'the extension was installed with make install, not as a Debian package'
  if $package eq '';

my $top = "$FindBin::RealBin/../..";

sub slurp_file_raw
{
	my ($path) = @_;
	open(my $fh, '<:raw', $path) or die "cannot read $path: $!";
	local $/;
	my $text = <$fh>;
	close $fh;
	return $text;
}

# the one version source
my ($version) = slurp_file_raw("$top/event_store.control") =~
  /^\s*default_version\s*=\s*'([^']+)'/m;
ok(defined $version, "event_store.control has a default_version");
$version //= '';

my $pkglibdir = `pg_config --pkglibdir`;
my $sharedir = `pg_config --sharedir`;
chomp($pkglibdir, $sharedir);
ok($pkglibdir ne '' && $sharedir ne '', 'pg_config names the directories');

# the package is installed, at the control file's version
my $status = `dpkg-query $dpkg_root -W -f='\${Version} \${db:Status-Status}' '$package' 2>&1`;
is($status, "$version installed",
	"$package is installed at version $version");

# every file of the extension belongs to the package
my @scripts = map { s{.*/}{}r } glob("$top/sql/event_store--*.sql");
ok(@scripts >= 2, 'the tree has frozen install and upgrade scripts');
my @files = (
	"$pkglibdir/event_store.so",
	"$sharedir/extension/event_store.control",
	"$sharedir/extension/event_store--$version.sql",
	map { "$sharedir/extension/$_" } @scripts);
for my $file (@files)
{
	ok(-f $file, "$file is installed");
	my $path =
	  index($file, $root) == 0 ? substr($file, length($root)) : $file;
	my $owner = `dpkg-query $dpkg_root -S '$path' 2>&1`;
	chomp $owner;
	is($owner, "$package: $path", "$path belongs to $package");
}

# the files on disk are the package's (checksums of its md5sums file)
my $verify = `dpkg $dpkg_root --verify '$package' 2>&1`;
is($?, 0, "dpkg --verify $package succeeds");
is($verify, '', 'no file of the package was changed since it was installed');

# the package was built from this tree: its install script is this tree's
my $fragments = join('',
	map { slurp_file_raw($_) } sort glob("$top/sql/install/*.sql"));
ok(slurp_file_raw("$sharedir/extension/event_store--$version.sql") eq $fragments,
	"the package's event_store--$version.sql is this tree's sql/install/*.sql");

# a server loads the package's library and creates the extension
my $node = es_node('package');
is( es_query(
		$node, 'postgres',
		q{CREATE EXTENSION event_store;
		  SELECT extversion FROM pg_extension WHERE extname = 'event_store'}),
	$version,
	"CREATE EXTENSION event_store installs version $version");
is( es_query(
		$node, 'postgres',
		q{SELECT count(*) > 0 FROM pg_proc
		  WHERE probin = '$libdir/event_store'}),
	't',
	'its functions live in $libdir/event_store, the package\'s library');
is($node->safe_psql('postgres', q{SHOW dynamic_library_path}),
	'$libdir', 'and $libdir is the only library directory');
$node->stop;

done_testing();
