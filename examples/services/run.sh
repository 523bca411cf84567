#!/usr/bin/env bash
# Three services, three databases, one order saga across them.
#
#   bash examples/services/run.sh [--installed] [--keep]
#
# Builds and installs event_store (as scripts/demo.sh does; --installed uses
# the extension already installed), starts a throwaway server with
# wal_level = logical and three databases: orders, payments and shipping.
# Each database gets its service (orders.sql, payments.sql, shipping.sql):
# its own categories, its read models and its publication; then each imports
# the others' events it needs over logical replication:
#
#   orders   --order-->    payments, shipping
#   payments --payment-->  orders
#   shipping --shipment--> orders
#
# Two orders are placed in the orders database.  The order saga asks the
# payments service for the money (its answer comes back as an imported
# event that completes the saga's waiting step), then shipping for the
# parcel; the second order is above the card limit, is declined, and the
# saga compensates by cancelling it.  The script waits (at most 120 s) until
# every service shows the outcome, prints each one's read model, and stops
# the server and removes its files, also on failure.  With --keep it leaves
# the server running and prints how to connect and how to stop it.
#
# ES_SERVICES_PORT sets the (socket-only) port, default 5514.  Runs the
# server as the "postgres" OS user when started as root.
set -uo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../../scripts/lib.sh"

INSTALLED=0
KEEP=0
for arg in "$@"; do
	case "$arg" in
	--installed) INSTALLED=1 ;;
	--keep) KEEP=1 ;;
	*) es_die "unknown argument \"$arg\" (arguments: --installed --keep)" ;;
	esac
done

PORT="${ES_SERVICES_PORT:-5514}"
BUILD=""
DIR=""
cleanup() {
	if [ -n "$BUILD" ]; then
		rm -rf "$BUILD"
	fi
	if [ -n "$DIR" ] && [ -d "$DIR" ] && [ "$KEEP" = 0 ]; then
		es_cluster_stop "$DIR/data"
		rm -rf "$DIR"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$INSTALLED" = 0 ]; then
	bash "$ES_SCRIPTS_DIR/deps.sh" || es_die "dependencies could not be installed"
	es_find_pg_config
	BUILD="$(es_mktemp event_store-build)" || exit 1
	es_copy_tree "$BUILD" || es_die "could not copy the source tree"
	es_say "building and installing event_store"
	es_build_install "$BUILD" "$BUILD/build.log" || exit 1
else
	es_find_pg_config
fi

DIR="$(es_mktemp event_store-services)" || exit 1
cp "$HERE"/orders.sql "$HERE"/payments.sql "$HERE"/shipping.sql "$DIR"/
cat >"$DIR/services.conf" <<CONF
shared_preload_libraries = 'event_store'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
max_logical_replication_workers = 12
max_worker_processes = 40
wal_retrieve_retry_interval = '200ms'
event_store.naptime = '200ms'
CONF
if [ "$(id -u)" -eq 0 ]; then
	chown -R postgres: "$DIR"
fi

psql_in() { # psql_in DATABASE ARGS...: psql on one service's database
	local db="$1"
	shift
	(cd "$DIR" && es_as_test_user "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 \
		-h "$DIR" -p "$PORT" -U postgres -d "$db" "$@")
}

es_say "starting a throwaway server in $DIR (port $PORT, socket only, wal_level = logical)"
if ! es_cluster_init "$DIR/data" "$PORT" "$DIR/services.conf" || ! es_cluster_start "$DIR/data"; then
	es_die "could not start the server"
fi

for svc in orders payments shipping; do
	es_say "service $svc: database, categories, read models, publication"
	psql_in postgres -c "CREATE DATABASE $svc" || es_die "could not create database $svc"
	psql_in "$svc" -f "$svc.sql" >/dev/null || es_die "could not set up service $svc"
done

# import NAME CONSUMER PRODUCER PUBLICATION.  Within one server the slot is
# made on the producer first (creating it from create_import would wait for
# create_import's own transaction); across servers create_import makes it.
import() {
	local name="$1" consumer="$2" producer="$3" publication="$4"
	es_say "$consumer imports $publication from $producer"
	psql_in "$producer" -c "SELECT pg_create_logical_replication_slot('$name', 'pgoutput')" >/dev/null &&
		psql_in "$consumer" -o /dev/null -c "SELECT event_store.create_import('$name',
			'host=$DIR port=$PORT dbname=$producer user=postgres', '$publication')"
}
import payments_from_orders payments orders orders_out || es_die "import failed"
import shipping_from_orders shipping orders orders_out || es_die "import failed"
import orders_from_payments orders payments payments_out || es_die "import failed"
import orders_from_shipping orders shipping shipping_out || es_die "import failed"

es_say "placing order 1001 (120.00) and order 1002 (5000.00, above the card limit)"
psql_in orders -c "SELECT orders.place_order('1001', 'ann', 120.00)" \
	-c "SELECT orders.place_order('1002', 'bob', 5000.00)" >/dev/null || es_die "could not place the orders"

# wait for the outcome in every service, at most 120 s
outcome_sql="SELECT string_agg(order_id || ' ' || status, ', ' ORDER BY order_id) FROM orders.order_summary"
want="1001 shipped, 1002 cancelled"
deadline=$((SECONDS + 120))
got=""
while [ "$SECONDS" -lt "$deadline" ]; do
	got="$(psql_in orders -A -t -c "$outcome_sql")"
	sagas="$(psql_in orders -A -t -c "SELECT string_agg(status, ',' ORDER BY status) FROM event_store.sagas")"
	if [ "$got" = "$want" ] && [ "$sagas" = "compensated,completed" ]; then
		break
	fi
	sleep 0.5
done

for svc in orders payments shipping; do
	echo
	echo "======== $svc ========"
	psql_in "$svc" -c "SELECT name, publication, state, last_source_position, last_error FROM event_store.import_status ORDER BY name"
	case "$svc" in
	orders)
		psql_in orders -c "SELECT order_id, customer, amount, status FROM orders.order_summary ORDER BY order_id" \
			-c "SELECT start_data->>'orderId' AS order_id, saga_type, status FROM event_store.sagas ORDER BY 1"
		psql_in orders -c "SELECT stream_id, stream_version, event_type, metadata->'\$source' AS source_position
		                     FROM event_store.read_all(0, 100) WHERE stream_id NOT LIKE 'saga-%' ORDER BY global_position"
		;;
	payments) psql_in payments -c "SELECT order_id, amount, outcome FROM payments.ledger ORDER BY order_id" ;;
	shipping) psql_in shipping -c "SELECT order_id, customer FROM shipping.dispatches ORDER BY order_id" ;;
	esac
done

if [ "$got" != "$want" ] || [ "$sagas" != "compensated,completed" ]; then
	es_say "the services did not reach the outcome within 120 s: orders \"$got\", sagas \"$sagas\" (expected \"$want\", \"compensated,completed\")"
	exit 1
fi
echo
echo "services example: $want; sagas $sagas"
if [ "$KEEP" = 1 ]; then
	echo "ORDERS_DSN=host=$DIR port=$PORT dbname=orders user=postgres"
	echo "PAYMENTS_DSN=host=$DIR port=$PORT dbname=payments user=postgres"
	echo "SHIPPING_DSN=host=$DIR port=$PORT dbname=shipping user=postgres"
	echo "stop it with: $PG_BINDIR/pg_ctl -D $DIR/data stop && rm -rf $DIR"
fi
