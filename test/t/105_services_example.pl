# The services example (examples/services/run.sh) end to end: three
# databases of one server (orders, payments, shipping), each owning its
# categories and importing the others' events over logical replication; an
# order saga in the orders database completed by PaymentCaptured and
# ShipmentDispatched events that come from the other two databases, and
# compensated (the order cancelled) when the payments service declines.
# The script waits for the outcome itself (with a deadline) and exits
# non-zero when it is not reached; this test runs it against the installed
# extension (--installed) and checks its exit status and what it printed of
# every service's read model and imports.  The script stops its server and
# removes its files itself, also on failure.
#
# Run from the top of the tree with the installed server's bin directory on
# PATH (as for the other TAP tests).

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Cwd qw(getcwd);

my $port = $ENV{ES_TEST_PORT} // PostgreSQL::Test::Cluster::get_free_port();
my $script = getcwd() . '/examples/services/run.sh';
ok(-f $script, 'examples/services/run.sh is there');

local $ENV{ES_SERVICES_PORT} = $port;
my ($stdout, $stderr) = ('', '');
my $ok = IPC::Run::run([ 'bash', $script, '--installed' ],
	'>', \$stdout, '2>', \$stderr, IPC::Run::timeout(300));
ok($ok, 'run.sh ended with status 0') or diag("stdout:\n$stdout\nstderr:\n$stderr");

like($stdout, qr/^services example: 1001 shipped, 1002 cancelled; sagas compensated,completed$/m,
	'the orders service saw order 1001 shipped and 1002 cancelled, one saga completed, one compensated');
like($stdout, qr/^ 1001\s+\|\s+120\.00\s+\|\s+captured\s*$/m, 'the payments ledger captured 1001');
like($stdout, qr/^ 1002\s+\|\s+5000\.00\s+\|\s+declined\s*$/m, 'the payments ledger declined 1002');
like($stdout, qr/^ 1001\s+\|\s+ann\s*$/m, 'shipping dispatched 1001');
unlike($stdout, qr/^ 1002\s+\|\s+bob\s*$/m, 'shipping dispatched nothing for 1002');
for my $import (qw(orders_from_payments orders_from_shipping payments_from_orders shipping_from_orders))
{
	like($stdout, qr/^ $import\s+\|\s+\w+\s+\|\s+running\s+\|\s+\d+\s+\|\s*$/m,
		"import $import is running, with no error");
}
# the imported events keep the producer's position in "$source", local ones have none
like($stdout, qr/^ payment-1001\s+\|\s+1\s+\|\s+PaymentCaptured\s+\|\s+\d+\s*$/m,
	'PaymentCaptured arrived in the orders database with its producer position');
like($stdout, qr/^ order-1002\s+\|\s+3\s+\|\s+OrderCancelled\s+\|\s*$/m,
	'the compensation appended OrderCancelled locally');

done_testing();
