
# Followers of one database are never held back by transactions of another
# database: positions, in-flight appenders and the head are per database.
#
# Run like 020_crash_follower.pl.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $node = es_node('otherdb');
for my $db ('db1', 'db2')
{
	$node->safe_psql('postgres', "CREATE DATABASE $db");
	$node->safe_psql($db, 'CREATE EXTENSION event_store');
}

# db2: an appender in flight, and a long plain transaction holding an xid
my $inflight = $node->background_psql('db2');
$inflight->query_safe(
	q{BEGIN; SELECT event_store.append('slow-1', '{"type": "Slow"}')});
my $long = $node->background_psql('db2');
$long->query_safe(q{BEGIN; SELECT txid_current()});

# db1 is not held back by either of them
$node->safe_psql('db1',
	q{SELECT event_store.append('fast-' || i, '{"type": "Fast"}') FROM generate_series(1, 3) i});
is($node->safe_psql('db1', 'SELECT event_store.head_position()'),
	'3', 'db1: the head covers its own commits');
is($node->safe_psql('db1', 'SELECT count(*) FROM event_store.read_all(0)'),
	'3', 'db1: read_all returns every committed event');
is($node->safe_psql('db1', q{SELECT event_store.wait_for_events(0, '30 seconds')}),
	'3', 'db1: wait_for_events returns at once');

# db2's own followers are held back by db2's in-flight appender (position 1)
$node->safe_psql('db2', q{SELECT event_store.append('quick-1', '{"type": "Quick"}')});
is($node->safe_psql('db2', 'SELECT event_store.head_position()'),
	'0', 'db2: a committed event above an in-flight one is not yet readable');
is($node->safe_psql('db2', 'SELECT count(*) FROM event_store.read_all(0)'),
	'0', 'db2: read_all stops below the in-flight position');

# db1 keeps going meanwhile
$node->safe_psql('db1', q{SELECT event_store.append('fast-9', '{"type": "Fast"}')});
is($node->safe_psql('db1', 'SELECT event_store.head_position()'),
	'4', 'db1: still advancing while db2 has an appender in flight');

$inflight->query_safe('COMMIT');
is($node->safe_psql('db2', 'SELECT event_store.head_position()'),
	'2', 'db2: the head moves once the slow appender commits');
is($node->safe_psql('db2',
		'SELECT string_agg(global_position::text, \',\' ORDER BY global_position) FROM event_store.read_all(0)'),
	'1,2', 'db2: both events, in position order');

$long->query_safe('COMMIT');
$inflight->quit;
$long->quit;
$node->stop;
done_testing();
