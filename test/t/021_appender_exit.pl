
# An appender whose backend goes away in the middle of its transaction.
#
# Terminated (pg_terminate_backend): its transaction aborts and its
# positions are released on the way out, so followers are not held back.
# Killed (SIGKILL): the postmaster reinitialises shared memory after the
# crash; the position counter is rebuilt from the table, the head covers
# every committed event and new appends land above every stored position.
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

my $node = es_node('exit', q{
restart_after_crash = on
});
$node->safe_psql('postgres', 'CREATE EXTENSION event_store');

sub positions
{
	return $node->safe_psql('postgres',
		q{SELECT string_agg(global_position || ':' || stream_id, ' ' ORDER BY global_position) FROM event_store.read_all(0)});
}

# An appender holding position 1 in an open transaction.
my $doomed = $node->background_psql('postgres');
my $pid = $doomed->query_safe('SELECT pg_backend_pid()');
$doomed->query_safe(
	q{BEGIN; SELECT event_store.append('doomed-1', '{"type": "Doomed"}')});

$node->safe_psql('postgres',
	q{SELECT event_store.append('kept-1', '{"type": "Kept"}')});
is($node->safe_psql('postgres', 'SELECT event_store.head_position()'),
	'0', 'an open appender below a committed event holds the head back');
is(positions(), '', 'and read_all returns nothing yet');

# Terminate it: the head moves on, position 1 stays a hole.
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
ok($node->poll_query_until('postgres', 'SELECT event_store.head_position() = 2'),
	'the head passes a terminated appender');
is(positions(), '2:kept-1', 'the committed event is readable, the aborted one never');
$doomed->quit;

# Another open appender (position 3), then a committed event (4), then the
# appender's backend is killed: the whole server restarts its backends.
my $killed = $node->background_psql('postgres', on_error_stop => 0);
$pid = $killed->query_safe('SELECT pg_backend_pid()');
$killed->query_safe(
	q{BEGIN; SELECT event_store.append('doomed-2', '[{"type": "Doomed"}, {"type": "Doomed"}]')});
$node->safe_psql('postgres',
	q{SELECT event_store.append('kept-2', '{"type": "Kept"}')});
is($node->safe_psql('postgres', 'SELECT event_store.head_position()'),
	'2', 'the open batch holds the head back');

my $log_offset = -s $node->logfile;
kill 'KILL', $pid;
ok($node->poll_query_until('postgres', 'SELECT true'),
	'the server accepts connections again after the crash of a backend');
ok($node->log_contains(qr/all server processes terminated; reinitializing/, $log_offset),
	'the postmaster reinitialised shared memory');
$killed->quit;

cmp_ok($node->safe_psql('postgres', 'SELECT event_store.head_position()'),
	'>=', 5, 'after the restart the head covers every committed event (it never moves back)');
is(positions(), '2:kept-1 5:kept-2', 'only committed events are readable');

is($node->safe_psql('postgres',
		q{SELECT event_store.append('after-1', '{"type": "After"}')}),
	'1', 'appending works after the restart');
cmp_ok($node->safe_psql('postgres',
		q{SELECT global_position FROM event_store.read_stream('after-1')}),
	'>', 5, 'and lands above every stored position');

$node->stop;
done_testing();
