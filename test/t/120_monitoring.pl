# The monitoring example (examples/monitoring): Debian's real
# prometheus-postgres-exporter, started against a throwaway server with
# examples/monitoring/queries.yaml, connected as a login role of
# event_store_operator (examples/privileges.sql), is scraped over HTTP after
# known work, and its event_store metrics must carry the values the views
# give: two appends of five events and one SE001 conflict, two streams, a
# failed async projection and a running inline one, a subscription with one
# consumer holding five events, two running sagas, and no query error.
# Every metric the Grafana dashboard (dashboard.json) draws is one the
# queries file defines.
#
# Needs /usr/bin/prometheus-postgres-exporter (scripts/deps.sh installs it):
# without it this test FAILS, it does not skip.  The exporter is stopped at
# the end, also on failure.
#
# Run from the top of the tree with the test modules of the installed
# server on PERL5LIB and its bin directory on PATH (as for the other TAP tests).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use HTTP::Tiny;
use JSON::PP;
use Cwd qw(getcwd);
use Time::HiRes qw(time usleep);

use FindBin;
use lib "$FindBin::RealBin/../perl";
use EsTestNode;

my $exporter_bin = $ENV{ES_EXPORTER} // '/usr/bin/prometheus-postgres-exporter';
my $queries = getcwd() . '/examples/monitoring/queries.yaml';
my $dashboard = getcwd() . '/examples/monitoring/dashboard.json';
ok(-x $exporter_bin, "$exporter_bin is installed") or BAIL_OUT('no exporter');

my $node = es_node('monitored', q{
event_store.projection_max_attempts = 1
autovacuum = off
});
$node->safe_psql('postgres', 'CREATE EXTENSION event_store');
$node->safe_psql('postgres', slurp_file(getcwd() . '/examples/privileges.sql'));
$node->safe_psql('postgres', q{
CREATE ROLE metrics LOGIN IN ROLE event_store_operator;
SELECT event_store.append('order-1', '[{"type": "Placed"}, {"type": "Paid"}, {"type": "Shipped"}]', 0);
SELECT event_store.append('order-2', '[{"type": "Placed"}, {"type": "Paid"}]', 0);
CREATE TABLE order_count (n int NOT NULL);
INSERT INTO order_count VALUES (0);
CREATE FUNCTION count_order(e event_store.event) RETURNS void LANGUAGE sql
    AS 'UPDATE public.order_count SET n = n + 1';
CREATE FUNCTION refuse(e event_store.event) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
SELECT event_store.create_projection('counter', 'count_order(event_store.event)', categories => ARRAY['order']);
SELECT event_store.create_subscription('billing', categories => ARRAY['order'], partitions => 1);
SELECT count(*) FROM event_store.claim_events('billing', 'c1', 10);
SELECT event_store.define_saga('fulfil', '{"steps": [{"name": "ship"}]}');
SELECT event_store.start_saga('fulfil', '{"n": 1}');
SELECT event_store.start_saga('fulfil', '{"n": 2}');
ANALYZE event_store.events;
});
# one conflict: order-1 is at version 3
my ($ret) = $node->psql('postgres', q{SELECT event_store.append('order-1', '{"type": "Late"}', 0)});
isnt($ret, 0, 'an append with a wrong expected version fails');
# an async projection whose handler fails becomes failed (one attempt)
$node->safe_psql('postgres', q{
SELECT event_store.pause_projection('counter');
SELECT event_store.create_projection('refuser', 'refuse(event_store.event)', categories => ARRAY['order'], mode => 'async');
});
ok($node->poll_query_until('postgres',
		q{SELECT state = 'failed' FROM event_store.projection_status WHERE name = 'refuser'}),
	'the failing async projection is failed');

# what the views say, as the metrics must
my %want = split /[|\n]/, $node->safe_psql('postgres', q{
SELECT 'appends', appends FROM event_store.stats UNION ALL
SELECT 'appended_events', appended_events FROM event_store.stats UNION ALL
SELECT 'head_position', head_position FROM event_store.stats UNION ALL
SELECT 'streams', streams FROM event_store.stats});

my $port = PostgreSQL::Test::Cluster::get_free_port();
local $ENV{DATA_SOURCE_NAME} =
  'host=' . $node->host . ' port=' . $node->port . ' user=metrics dbname=postgres sslmode=disable';
my ($out, $err) = ('', '');
my $exporter = IPC::Run::start(
	[ $exporter_bin, "--extend.query-path=$queries", '--disable-default-metrics',
	  '--disable-settings-metrics', "--web.listen-address=127.0.0.1:$port" ],
	'>', \$out, '2>', \$err);
END { $exporter->kill_kill if $exporter && $exporter->pumpable; }

# scrape until the store's metrics are there (the exporter needs a moment)
my $http = HTTP::Tiny->new(timeout => 10);
my $body = '';
my $deadline = time + 60;
while (time < $deadline)
{
	my $res = $http->get("http://127.0.0.1:$port/metrics");
	$body = $res->{content} // '';
	last if $res->{success} && $body =~ /^event_store_stats_events\{/m && $body =~ /^event_store_sagas_sagas\{/m;
	usleep(200_000);
}

# the value of a metric (with labels containing the text given), or undef
sub metric
{
	my ($name, $labels) = @_;
	$labels //= '';
	for my $line (split /\n/, $body)
	{
		next if $line =~ /^#/;
		if (my ($have, $value) = $line =~ /^\Q$name\E\{([^}]*)\} (\S+)$/)
		{
			return $value if $labels eq '' || index($have, $labels) >= 0;
		}
		elsif ($labels eq '' && $line =~ /^\Q$name\E (\S+)$/)
		{
			return $1;
		}
	}
	return undef;
}

is(metric('pg_exporter_last_scrape_error'), '0', 'every query of the file ran without error')
  or diag("stderr: $err\n$body");
is(metric('event_store_stats_appends'), $want{appends}, 'appends as event_store.stats counts them');
is(metric('event_store_stats_appended_events'), $want{appended_events}, 'appended events as stats counts them');
cmp_ok($want{appended_events}, '>=', 5, 'which include the five order events');
is(metric('event_store_stats_conflicts'), '1', 'one SE001 conflict');
is(metric('event_store_stats_head_position'), $want{head_position}, 'the follower horizon');
is(metric('event_store_stats_streams'), $want{streams}, 'the streams estimate of the last ANALYZE');
is(metric('event_store_projection_failed', 'name="refuser"'), '1', 'the failing projection is reported failed');
is(metric('event_store_projection_running', 'name="refuser"'), '0', '... and not running');
is(metric('event_store_projection_running', 'name="counter"'), '0', 'the paused projection is not running');
is(metric('event_store_subscription_consumers', 'name="billing"'), '1', 'one live consumer of billing');
is(metric('event_store_subscription_in_flight', 'name="billing"'), '5', 'five events in flight');
is(metric('event_store_subscription_parked_streams', 'name="billing"'), '0', 'no parked stream');
is(metric('event_store_sagas_sagas', 'status="running"'), '2', 'two running sagas');
is(metric('event_store_saga_problems_sagas'), '0', 'no saga needs a person');
cmp_ok(metric('event_store_stats_oldest_running_saga_age_seconds') // -1, '>', 0,
	'the oldest running saga has an age');

# every metric the dashboard draws is defined by the queries file
my %defined;
{
	my $prefix;
	for my $line (split /\n/, slurp_file($queries))
	{
		$prefix = $1 if $line =~ /^([a-z_]+):\s*$/;
		$defined{"${prefix}_$1"} = 1 if defined $prefix && $line =~ /^    - ([a-z_]+):\s*$/;
	}
}
my $dash = decode_json(slurp_file($dashboard));
my @drawn = map { $_->{expr} =~ /(event_store_[a-z_]+)/g } map { @{ $_->{targets} } } @{ $dash->{panels} };
ok(@drawn >= 10, 'the dashboard draws metrics');
is(join(',', grep { !$defined{$_} } @drawn), '', 'every metric of the dashboard is in the queries file');
# and each of those the work above produced is scraped (imports have no rows here)
is(join(',', grep { !/^event_store_import_/ && $body !~ /^\Q$_\E[{ ]/m } @drawn), '',
	'every metric of the dashboard but the imports\' is scraped');

$exporter->kill_kill;
$node->stop;
done_testing();
