# The README's table of the privilege recipe is what examples/privileges.sql
# grants: the script is run (twice) in a fresh database with the extension,
# then, for each role of the table in README.md ("Privileges and category
# ownership"), the functions of schema event_store it may execute and the
# relations it may SELECT must be exactly those its row names (a row that
# starts with "the reader's functions, plus" adds the reader's).  The line
# "Granted to none of them:" must name exactly the functions without an
# underscore that none of the roles may execute, and PUBLIC may execute
# event_store._may_read and nothing else of the schema, nor read any of its
# relations.  A function added to the recipe but not to the README (or the
# other way round) fails here, naming it.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/132_privileges_recipe.pl

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;

my $top = "$FindBin::RealBin/../..";
my $section = 'Privileges and category ownership';
my @roles = qw(event_store_reader event_store_writer event_store_operator);

# The section's table rows: role => {functions => [...], views => [...],
# inherits => 0/1}; and the names on the "Granted to none of them" line.
sub readme_table
{
	open(my $fh, '<', "$top/README.md") or die "cannot open README.md: $!";
	my @lines = <$fh>;
	close $fh;

	my (%rows, @none, $in, $none_text);
	foreach my $line (@lines)
	{
		if ($line =~ /^## /)
		{
			$in = ($line =~ /^## \Q$section\E\s*$/);
			next;
		}
		next unless $in;
		if ($line =~ /^\|\s*`(event_store_\w+)`\s*\|(.*)\|(.*)\|\s*$/)
		{
			my ($role, $functions, $views) = ($1, $2, $3);
			# names in parentheses are remarks, not grants
			my @f = ($functions =~ /`(\w+)`/g);
			my @v = ($views =~ /`(\w+)`/g);
			$rows{$role} = {
				functions => \@f,
				views => \@v,
				inherits => ($functions =~ /^\s*the reader's functions, plus/ ? 1 : 0)
			};
		}
		elsif ($line =~ /^\*\*Granted to none of them:\*\*/)
		{
			$none_text = $line;
		}
		elsif (defined $none_text)
		{
			last if $line !~ /\S/;
			$none_text .= $line;
		}
	}
	die "README.md: no \"Granted to none of them\" line in \"$section\""
	  unless defined $none_text;
	@none = ($none_text =~ /`(\w+)`/g);
	@none = grep { $_ ne 'CREATE' } @none;
	return (\%rows, \@none);
}

my ($rows, $none) = readme_table();
foreach my $role (@roles)
{
	ok(exists $rows->{$role}, "README.md's table has a row for $role");
}
cmp_ok(scalar @{ $rows->{event_store_reader}{functions} // [] },
	'>=', 10, 'the reader row names its functions');
cmp_ok(scalar @$none, '>=', 4, 'the "granted to none" line names functions');

my $node = PostgreSQL::Test::Cluster->new('recipe',
	defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'event_store'\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION event_store');
my $recipe = slurp_file("$top/examples/privileges.sql");
# running it twice changes nothing (and does not fail)
$node->safe_psql('postgres', $recipe);
$node->safe_psql('postgres', $recipe);

sub names
{
	my ($sql) = @_;
	return join(' ', sort split /\n/, $node->safe_psql('postgres', $sql));
}

sub uniq_sorted
{
	my %seen;
	return join(' ', sort grep { !$seen{$_}++ } @_);
}

my %expected_functions;
foreach my $role (@roles)
{
	my @f = @{ $rows->{$role}{functions} // [] };
	push @f, @{ $rows->{event_store_reader}{functions} } if $rows->{$role}{inherits};
	$expected_functions{$role} = uniq_sorted(@f);

	# every overload counts: a name is listed only when the role may run
	# each of its forms
	my $may = names(qq{
		SELECT p.proname FROM pg_proc p
		 WHERE p.pronamespace = 'event_store'::regnamespace
		   AND p.proname <> '_may_read'
		 GROUP BY p.proname
		HAVING bool_and(has_function_privilege('$role', p.oid, 'EXECUTE'))});
	my $some = names(qq{
		SELECT DISTINCT p.proname FROM pg_proc p
		 WHERE p.pronamespace = 'event_store'::regnamespace
		   AND p.proname <> '_may_read'
		   AND has_function_privilege('$role', p.oid, 'EXECUTE')});
	is($may, $expected_functions{$role},
		"$role may execute exactly the functions README.md's table names");
	is($some, $may, "$role may execute every form of each function it may execute");

	my $views = names(qq{
		SELECT c.relname FROM pg_class c
		 WHERE c.relnamespace = 'event_store'::regnamespace
		   AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
		   AND has_table_privilege('$role', c.oid, 'SELECT')});
	is($views, uniq_sorted(@{ $rows->{$role}{views} // [] }),
		"$role may SELECT exactly the views README.md's table names");
	my $writes = names(qq{
		SELECT c.relname FROM pg_class c
		 WHERE c.relnamespace = 'event_store'::regnamespace
		   AND c.relkind IN ('r', 'v', 'm', 'p', 'f', 'S')
		   AND has_table_privilege('$role', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')});
	is($writes, '', "$role may write no table of the schema");
}

# the functions no role of the recipe gets (internal ones aside)
my $roles_sql = join(', ', map { "'$_'" } @roles);
is( names(qq{
		SELECT DISTINCT p.proname FROM pg_proc p
		 WHERE p.pronamespace = 'event_store'::regnamespace
		   AND p.proname !~ '^_'
		   AND NOT EXISTS (SELECT FROM unnest(ARRAY[$roles_sql]) r
		                    WHERE has_function_privilege(r, p.oid, 'EXECUTE'))}),
	uniq_sorted(@$none),
	'README.md\'s "granted to none of them" names exactly the functions no role gets');

# PUBLIC: _may_read only, no relation
my $public = "SELECT FROM aclexplode(coalesce(%s, acldefault('%s', %s))) a WHERE a.grantee = 0";
is( names(
		"SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'event_store'::regnamespace AND EXISTS ("
		  . sprintf($public, 'p.proacl', 'f', 'p.proowner')
		  . " AND a.privilege_type = 'EXECUTE')"),
	'_may_read',
	'PUBLIC may execute _may_read and nothing else');
is( names(
		"SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'event_store'::regnamespace AND EXISTS ("
		  . sprintf($public, 'c.relacl', 'r', 'c.relowner') . ")"),
	'',
	'PUBLIC has no privilege on any relation of the schema');

$node->stop;
done_testing();
