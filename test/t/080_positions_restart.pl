# Positions are never handed out twice, and the head never moves back:
# across a fast shutdown, a crash (SIGKILL of every server process), with
# and without VACUUM, and across pg_dump / pg_restore, whatever was rolled
# back before.
#
# The way it was found: the last appends before the stop are rolled back
# to a savepoint in a transaction that commits, so the head counts their
# positions while the table has no row there; an async projection catches
# up to that head and checkpoints it.  After the restart, a new event must
# get a position above that checkpoint, and the projection must apply it
# (it skipped it for good when the counter restarted from the highest
# stored position).  The same for an inline projection that is paused,
# resumed (catching up to the head), paused again, and resumed after the
# restart.
#
# Every wait is a poll with a deadline, never a sleep.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH, for instance:
#   PERL5LIB=$(pg_config --pkglibdir)/pgxs/src/test/perl \
#   PATH=$(pg_config --bindir):$PATH prove test/t/080_positions_restart.pl
# (ES_TEST_PORT picks the port; by default a free one is chosen.)

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

# projections are run by hand (run_projections), not by the worker
my $node = es_node('positions', q{
event_store.worker_enabled = off
restart_after_crash = on
});

$node->safe_psql(
	'postgres', q{
CREATE EXTENSION event_store;
CREATE TABLE seen (projection text, position bigint, event_type text);
CREATE FUNCTION see_async(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO seen VALUES ('async', e.global_position, e.event_type) $$;
CREATE FUNCTION see_inline(e event_store.event) RETURNS void
LANGUAGE sql AS $$ INSERT INTO seen VALUES ('inline', e.global_position, e.event_type) $$;
});

sub query { return $node->safe_psql('postgres', @_); }

# One committed event in $stream, then two appends rolled back to a
# savepoint as the last appends of a committing transaction.  Returns the
# head afterwards, which counts the rolled-back positions.
sub append_then_roll_back
{
	my ($stream, $type) = @_;
	query(qq{SELECT event_store.append('$stream', '{"type": "$type"}')});
	query(qq{
BEGIN;
SAVEPOINT s;
SELECT event_store.append('$stream', '{"type": "RolledBack"}');
SELECT event_store.append('$stream', '[{"type": "RolledBack"}, {"type": "RolledBack"}]');
ROLLBACK TO SAVEPOINT s;
COMMIT;
});
	my $head = query('SELECT event_store.head_position()');
	my $max  = query('SELECT max(global_position) FROM event_store.events');
	cmp_ok($head, '>', $max,
		"$stream: the head ($head) passed rolled-back positions above the highest stored one ($max)");
	return $head;
}

# An async projection caught up to the head
sub run_async_to_head
{
	my ($name) = @_;
	ok( $node->poll_query_until(
			'postgres', qq{
SELECT event_store.run_projections() >= 0
   AND (SELECT position = event_store.head_position() FROM event_store.projections WHERE name = '$name')}
		),
		"$name caught up to the head");
}

my $n = 0;
for my $case (
	[ 'fast',      0 ],
	[ 'immediate', 0 ],
	[ 'fast',      1 ],
	[ 'immediate', 1 ])
{
	my ($mode, $vacuum) = @$case;
	$n++;
	my $label = "$mode shutdown" . ($vacuum ? ' after VACUUM' : '');
	my $cat   = "async$n";
	query(qq{SELECT event_store.create_projection('$cat', 'see_async(event_store.event)',
	                                            categories => '{$cat}', mode => 'async')});
	my $head = append_then_roll_back("$cat-1", 'Before');
	run_async_to_head($cat);
	is(query(qq{SELECT position FROM event_store.projections WHERE name = '$cat'}),
		$head, "$label: the projection checkpointed the head $head");
	query('VACUUM event_store.events') if $vacuum;

	my $log_offset = -s $node->logfile;
	$node->stop($mode);
	$node->start;
	ok($node->log_contains(qr/database system was not properly shut down/, $log_offset),
		"$label: crash recovery ran")
	  if $mode eq 'immediate';

	cmp_ok(query('SELECT event_store.head_position()'),
		'>=', $head, "$label: the head did not move back after the restart");
	my $pos = query(qq{
SELECT event_store.append('$cat-1', '{"type": "After"}');
SELECT max(global_position) FROM event_store.events WHERE stream_id = '$cat-1'});
	$pos = (split /\n/, $pos)[1];
	cmp_ok($pos, '>', $head,
		"$label: the new event's position ($pos) is above every position handed out before");
	run_async_to_head($cat);
	is( query(qq{SELECT string_agg(event_type, ' ' ORDER BY position) FROM seen
	              WHERE projection = 'async' AND position IN
	                    (SELECT global_position FROM event_store.events WHERE stream_id = '$cat-1')}),
		'Before After',
		"$label: the async projection applied the event appended after the restart");
}

# A paused inline projection, resumed after a restart
query(q{
SELECT event_store.create_projection('inl', 'see_inline(event_store.event)',
                                     categories => '{inl}', mode => 'inline');
SELECT event_store.pause_projection('inl');
});
my $head = append_then_roll_back('inl-1', 'Before');
query(q{SELECT event_store.resume_projection('inl')});
is(query(q{SELECT position FROM event_store.projections WHERE name = 'inl'}),
	$head, 'inline: resuming caught up to the head');
query(q{SELECT event_store.pause_projection('inl')});
$node->stop('fast');
$node->start;
query(q{SELECT event_store.append('inl-1', '{"type": "After"}')});
query(q{SELECT event_store.resume_projection('inl')});
is( query(q{SELECT string_agg(event_type, ' ' ORDER BY position) FROM seen WHERE projection = 'inline'}),
	'Before After',
	'inline: the paused projection, resumed after the restart, applied the event appended while paused');

# dump and restore: the restored store goes on above what the source
# handed out, even what it rolled back at the end
$head = append_then_roll_back('dumped-1', 'Before');
my $dump = $node->basedir . '/positions.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', 'postgres' ], 'pg_dump -Fc');
query('CREATE DATABASE restored');
$node->command_ok(
	[ 'pg_restore', '--exit-on-error', '--single-transaction', '-d', 'restored', $dump ],
	'pg_restore into a new database');
cmp_ok($node->safe_psql('restored', 'SELECT event_store.head_position()'),
	'>=', $head, 'restored: the head is not below the source\'s');
my $pos = $node->safe_psql(
	'restored', q{
SELECT event_store.append('dumped-1', '{"type": "After"}');
SELECT max(global_position) FROM event_store.events WHERE stream_id = 'dumped-1'});
$pos = (split /\n/, $pos)[1];
cmp_ok($pos, '>', $head,
	"restored: the next event's position ($pos) is above every position the source handed out");

$node->stop;
done_testing();
