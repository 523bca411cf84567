# The API listings of README.md ("Listing the API") are readable: both sql
# blocks of that section are run with psql (default aligned output) in a
# fresh database with the extension, and each must print every function of
# the API (schema event_store, name without a leading underscore), each
# form once, one line per function, and nothing else but psql's header and
# footer; the listing with descriptions must give each function a
# description (a COMMENT ON FUNCTION), so that a function added without one
# fails here.  The size of \df+ event_store.* (what the listings replace)
# is reported for comparison.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/133_api_listing.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;

my $readme = "$FindBin::RealBin/../../README.md";
my $section = 'Listing the API';

# the ```sql blocks of the section
sub section_blocks
{
	open(my $fh, '<', $readme) or die "cannot open $readme: $!";
	my @lines = <$fh>;
	close $fh;
	my (@blocks, $in, $block);
	foreach my $line (@lines)
	{
		if (defined $block)
		{
			if ($line =~ /^```\s*$/)
			{
				push @blocks, $block;
				undef $block;
			}
			else
			{
				$block .= $line;
			}
		}
		elsif ($line =~ /^#{2,3} /)
		{
			$in = ($line =~ /^### \Q$section\E\s*$/);
		}
		elsif ($in && $line =~ /^```sql\s*$/)
		{
			$block = '';
		}
	}
	return @blocks;
}

my @blocks = section_blocks();
is(scalar @blocks, 2, "README.md's \"$section\" has two sql blocks");
like($blocks[0] // '', qr/^\\df event_store\./, 'the first is a \df command');

my $node = PostgreSQL::Test::Cluster->new('listing',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'event_store'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION event_store');

# the API: one entry per form
my @api = split /\n/, $node->safe_psql('postgres', q{
	SELECT p.proname FROM pg_proc p
	 WHERE p.pronamespace = 'event_store'::regnamespace AND p.proname !~ '^_'
	 ORDER BY 1});
cmp_ok(scalar @api, '>=', 40, 'the API has its functions (' . scalar(@api) . ')');
my $api = join(' ', @api);

# psql as a user runs it: aligned output, no psqlrc
sub psql_out
{
	my ($sql) = @_;
	my ($stdout, $stderr) = ('', '');
	IPC::Run::run(
		[ 'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres') ],
		'<', \$sql, '>', \$stdout, '2>', \$stderr)
	  or die "psql failed on: $sql\n$stderr";
	return $stdout;
}

my $n = scalar @api;

# \df: title, header, rule, one line per function, "(N rows)", blank line
my $df = psql_out($blocks[0] // '');
my @df_lines = split /\n/, $df;
my @df_names = map { /^ event_store \| (\w+)\s/ ? $1 : () } @df_lines;
is(join(' ', sort @df_names), $api, '\df lists each form of each API function once');
cmp_ok(scalar @df_lines, '<=', $n + 5, "\\df prints one line per function ("
	  . scalar(@df_lines) . " lines for $n functions)");

# the listing with descriptions: header, rule, one line per function, footer
my $desc = psql_out($blocks[1] // '');
my @desc_lines = split /\n/, $desc;
my @desc_rows = grep { /^ event_store\.\w+\(.*\|/ } @desc_lines;
is(join(' ', sort map { /^ event_store\.(\w+)\(/; $1 } @desc_rows),
	$api, 'the listing with descriptions names each form of each API function once');
cmp_ok(scalar @desc_lines, '<=', $n + 4, 'the listing with descriptions prints one line per function ('
	  . scalar(@desc_lines) . " lines for $n functions)");
my @bare = grep { /\|\s*$/ } @desc_rows;
is(join("\n", @bare), '', 'every API function has a description');

my $full = psql_out('\df+ event_store.*');
note sprintf('\df+ event_store.*: %d bytes, %d lines; \df event_store.[a-z]*: %d bytes, %d lines;'
	  . ' with descriptions: %d bytes, %d lines',
	length($full), scalar(split /\n/, $full), length($df), scalar @df_lines,
	length($desc), scalar @desc_lines);

$node->stop;
done_testing();
