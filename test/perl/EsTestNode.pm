# EsTestNode: what the TAP tests of event_store share.
#
#   my $node = es_node('name', q{event_store.naptime = '200ms'});
#       a PostgreSQL::Test::Cluster node, initialised and started, with
#       shared_preload_libraries = 'event_store' and the given settings
#       (ES_TEST_PORT picks its port; by default a free one is chosen)
#   es_query($node, $db, $sql)
#       the query's output, or "ERROR: " and its error text, so that a
#       failing check shows the error and the later checks still run
package EsTestNode;

use strict;
use warnings;

use Exporter 'import';
use PostgreSQL::Test::Cluster;

our @EXPORT = qw(es_node es_query);

sub es_node
{
	my ($name, $settings) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name,
		defined $ENV{ES_TEST_PORT} ? (port => $ENV{ES_TEST_PORT}) : ());
	$node->init;
	$node->append_conf('postgresql.conf',
		"shared_preload_libraries = 'event_store'\n" . ($settings // ''));
	$node->start;
	return $node;
}

sub es_query
{
	my ($node, $db, $sql) = @_;
	my ($ret, $stdout, $stderr) = $node->psql($db, $sql);
	return $ret == 0 ? $stdout : "ERROR: $stderr";
}

1;
