# The README's tour runs as pasted: every ```sql block of the section
# "A short tour of the SQL API" of README.md, in order, is written to one
# script and run with psql -v ON_ERROR_STOP=1 in a fresh database where
# CREATE EXTENSION event_store was just run (server with the library
# preloaded, background worker on, wal_level = logical).
#
# A block is left out only when the line right before its fence is
# <!-- tour: skip (reason) -->; a block whose fence is indented (inside a
# list item) is taken with that indentation removed.  On failure the test
# names the failing block: its number, its line in README.md and its first
# line.  The extractor itself is checked too: the tour must yield a
# sensible number of blocks, with few skipped, so that a broken extractor
# (or a README reorganised under another heading) cannot pass vacuously.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/131_readme_tour.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $readme = "$FindBin::RealBin/../../README.md";
my $section = 'A short tour of the SQL API';

# The ```sql blocks of the tour: a list of {line, first, sql}, and the
# number of blocks marked skip.
sub tour_blocks
{
	my ($file) = @_;
	open(my $fh, '<', $file) or die "cannot open $file: $!";
	my @lines = <$fh>;
	close $fh;

	my (@blocks, $skipped, $in_tour, $block, $indent, $prev);
	$skipped = 0;
	my $lineno = 0;
	foreach my $line (@lines)
	{
		$lineno++;
		if (defined $block)
		{
			if ($line =~ /^\s*```\s*$/)
			{
				push @blocks, $block;
				undef $block;
			}
			else
			{
				my $l = $line;
				$l =~ s/^ {0,$indent}//;
				$block->{sql} .= $l;
				$block->{first} //= $l if $l =~ /\S/;
			}
		}
		elsif ($line =~ /^## /)
		{
			$in_tour = ($line =~ /^## \Q$section\E\s*$/);
		}
		elsif ($in_tour && $line =~ /^( *)```sql\s*$/)
		{
			$indent = length($1);
			if (defined $prev && $prev =~ /^\s*<!-- tour: skip \(.+\) -->\s*$/)
			{
				$skipped++;
				$block = { line => $lineno, sql => '', skip => 1 };
			}
			else
			{
				$block = { line => $lineno, sql => '' };
			}
		}
		elsif ($in_tour && $line =~ /^\s*```/)
		{
			# another language's block: step over it, so that its lines
			# are never taken for a fence
			$block = { line => $lineno, sql => '', skip => 1, other => 1 };
			$indent = 0;
		}
		$prev = $line;
	}
	die "README.md: the block at line $block->{line} is not closed" if defined $block;
	return ([ grep { !$_->{skip} } @blocks ], $skipped);
}

my ($blocks, $skipped) = tour_blocks($readme);
my $n = scalar @$blocks;
note "the tour has $n sql blocks to run, $skipped marked skip";
cmp_ok($n, '>=', 12, "the tour's sql blocks are found ($n)");
cmp_ok($skipped, '<=', 5, "few blocks are marked skip ($skipped)");
ok(!(grep { $_->{sql} !~ /\S/ } @$blocks), 'no sql block is empty');
# every part of the tour is among what runs
my $all = join('', map { $_->{sql} } @$blocks);
foreach my $call (
	qw(append read_stream register_upcaster define_aggregate create_projection
	wait_for_projection define_saga claim_saga_steps create_subscription
	claim_events delete_stream purge_stream create_publication stats))
{
	like($all, qr/event_store\.\Q$call\E\b/, "the tour runs event_store.$call");
}

# One script: each block announced by an \echo, so that the last one
# printed names the failing block.
my $script = '';
for my $i (0 .. $#$blocks)
{
	$script .= "\\echo tour-block $i\n" . $blocks->[$i]{sql} . "\n";
}
$script .= "\\echo tour-end\n";
my $file = "${PostgreSQL::Test::Utils::tmp_check}/readme_tour.sql";
PostgreSQL::Test::Utils::append_to_file($file, $script);

my $node = PostgreSQL::Test::Cluster->new('tour',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
$node->init(allows_streaming => 'logical');
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'event_store'\n");
$node->start;
is($node->safe_psql('postgres', 'SHOW wal_level'), 'logical', 'wal_level is logical');
$node->safe_psql('postgres', 'CREATE DATABASE tour');
$node->safe_psql('tour', 'CREATE EXTENSION event_store');

my ($stdout, $stderr) = ('', '');
my $ok = IPC::Run::run(
	[
		'psql', '-X', '-v', 'ON_ERROR_STOP=1', '-f', $file,
		'-d', $node->connstr('tour')
	],
	'>', \$stdout, '2>', \$stderr);
my @seen = ($stdout =~ /^tour-block (\d+)$/mg);
my $failed = @seen ? $seen[-1] : 0;
if ($ok && $stdout =~ /^tour-end$/m)
{
	pass("every sql block of the tour runs, in order ($n blocks)");
}
else
{
	my $b = $blocks->[$failed];
	chomp(my $first = $b->{first} // '');
	fail("every sql block of the tour runs, in order ($n blocks)");
	diag("README.md's tour fails in its block $failed (README.md line $b->{line}): $first");
	diag("psql said: $stderr");
}

$node->stop;
done_testing();
