# Without shared_preload_libraries the extension refuses to install, with a
# message and a hint that say exactly which setting to add, and leaves
# nothing behind.  A store created with the preload and a server restarted
# without it refuses to append or read positions, with the same hint, and
# works again once the preload is back.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $hint = qr/HINT:\s+Add event_store to shared_preload_libraries/;

my $node = PostgreSQL::Test::Cluster->new('no_preload');
$node->init;
$node->start;

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'the server runs without the preload');

# What an install attempt leaves behind (must be nothing)
my $leftovers = q{
SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'event_store')
     + (SELECT count(*) FROM pg_namespace WHERE nspname = 'event_store')
     + (SELECT count(*) FROM pg_proc WHERE probin LIKE '%event_store%')
     + (SELECT count(*) FROM pg_class WHERE relname = 'events')
     + (SELECT count(*) FROM pg_type WHERE typname = 'event')};

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	'CREATE EXTENSION event_store',
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
isnt($ret, 0, 'CREATE EXTENSION fails without the preload');
like($stderr, qr/ERROR:\s+55000: .*shared_preload_libraries/,
	'the error names shared_preload_libraries (SQLSTATE 55000)');
like($stderr, $hint, 'the hint says exactly which setting to add');
is($node->safe_psql('postgres', $leftovers), '0',
	'the failed CREATE EXTENSION leaves nothing behind');

# loading the library into the session is not enough
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{LOAD 'event_store'; CREATE EXTENSION event_store});
isnt($ret, 0, 'CREATE EXTENSION fails after LOAD too');
like($stderr, $hint, 'with the same hint');

$node->append_conf('postgresql.conf',
	"session_preload_libraries = 'event_store'");
$node->reload;
($ret, $stdout, $stderr) =
  $node->psql('postgres', q{CREATE EXTENSION event_store});
isnt($ret, 0, 'CREATE EXTENSION fails with session_preload_libraries');
like($stderr, $hint, 'with the same hint');
$node->append_conf('postgresql.conf', "session_preload_libraries = ''");
$node->reload;

# inside a transaction block: the same refusal, and the block is rolled back
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{BEGIN; CREATE SCHEMA app; CREATE EXTENSION event_store; COMMIT;});
like($stderr, $hint, 'refused inside a transaction block too');
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM pg_namespace WHERE nspname = 'app'}),
	'0',
	'and the transaction is rolled back');
is($node->safe_psql('postgres', $leftovers), '0', 'still nothing left behind');

# following the hint works
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'event_store'");
$node->restart;
$node->safe_psql('postgres', 'CREATE EXTENSION event_store');
is( $node->safe_psql(
		'postgres',
		q{SELECT event_store.append('order-1', '[{"type": "A"}, {"type": "B"}]', 0)}),
	'2',
	'with the preload the extension installs and appends');

# the same store on a server restarted without the preload
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'restarted without the preload');
for my $call (
	q{SELECT event_store.append('order-1', '{"type": "C"}')},
	q{SELECT event_store.head_position()},
	q{SELECT count(*) FROM event_store.read_all()},
	q{SELECT count(*) FROM event_store.read_category('order')},
	q{SELECT event_store.wait_for_events(0, '10 ms')})
{
	($ret, $stdout, $stderr) = $node->psql('postgres', $call);
	isnt($ret, 0, "refused without the preload: $call");
	like($stderr, $hint, 'with the hint');
}
is( $node->safe_psql(
		'postgres', q{SELECT count(*) FROM event_store.events}),
	'2',
	'the stored events are intact');

# and everything works again once the preload is back
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'event_store'");
$node->restart;
is( $node->safe_psql(
		'postgres', q{SELECT event_store.append('order-1', '{"type": "C"}', 2)}),
	'3',
	'appends work again after restarting with the preload');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(event_type, ' ' ORDER BY global_position) || ' ' || (min(global_position) FILTER (WHERE event_type = 'C') > 2)
		    FROM event_store.read_all()}
	),
	'A B C true',
	'positions continue after the restart, above the ones before');

$node->stop;
done_testing();
