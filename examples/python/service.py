"""A small order service on event_store_client.py: it owns the saga type
"checkout" (steps reserve, charge, ship, worked here), prints every event
of the store as its follower sees it, sends a receipt for every order as
one consumer of the subscription "order-receipts" (run the service twice
and the two share the orders), and with --orders N places N orders (an
OrderPlaced event appended with retries, and a checkout saga each), then
stops once their sagas have ended and their receipts are sent.  Without
--orders it runs until Ctrl-C.

    PGHOST=... PGPORT=... PGDATABASE=... /usr/bin/python3 service.py [--orders N]
"""

import argparse
import json
import os
import time

import psycopg
from psycopg.types.json import Jsonb

from event_store_client import (
    Follower,
    PermanentError,
    SagaWorker,
    SubscriptionWorker,
    append_with_retry,
    connect,
)

CHECKOUT = {
    "steps": [{"name": "reserve"}, {"name": "charge", "max_attempts": 3, "backoff": "1 second"},
              {"name": "ship"}],
    "timeout": "1 hour",
}


def charge(data, step):
    if data["total"] > 100:
        raise PermanentError(f"card declined for {data['total']}")
    return {"payment": f"P-{data['order']}"}


HANDLERS = {
    "reserve": {"action": lambda data, step: {"reservation": f"R-{data['order']}"},
                "compensate": lambda data, step: {"released": data["reservation"]}},
    "charge": {"action": charge},
    "ship": {"action": lambda data, step: {"tracking": f"T-{data['order']}"}},
}


def show(e):
    print(f"{e['global_position']} {e['stream_id']}@{e['stream_version']} {e['event_type']} "
          f"{json.dumps(e['data'])}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=0, help="place N orders, then stop when their sagas end")
    args = parser.parse_args()

    conn = connect()
    conn.execute("SELECT event_store.define_saga('checkout', %s)", (Jsonb(CHECKOUT),))
    start = conn.execute("SELECT event_store.head_position()").fetchone()[0]
    follower = Follower(show, after=start, wake="listen", wait_timeout=1.0).start()
    worker = SagaWorker(f"python-service-{os.getpid()}", HANDLERS).start()

    # receipts: every OrderPlaced, once, shared by all running services
    try:
        conn.execute("SELECT event_store.create_subscription('order-receipts', categories => ARRAY['order'],"
                     " event_types => ARRAY['OrderPlaced'])")
    except psycopg.errors.DuplicateObject:
        pass  # it exists already
    receipted = set()

    def receipt(e, c):
        print(f"receipt for {e['stream_id']}: {e['data']['total']} (attempt {e['attempt']})", flush=True)
        receipted.add(e["stream_id"])

    receipts = SubscriptionWorker("order-receipts", f"python-service-{os.getpid()}", receipt).start()
    try:
        if args.orders <= 0:
            while True:
                time.sleep(3600)
        sagas = []
        placed = []
        for n in range(1, args.orders + 1):
            order = f"{int(time.time() * 1000):x}-{n}"
            total = 40 * n  # the third order and later are declined: their sagas compensate
            append_with_retry(conn, f"order-{order}", lambda version, attempt: {"type": "OrderPlaced",
                                                                               "data": {"total": total}})
            placed.append(f"order-{order}")
            sagas.append(conn.execute("SELECT event_store.start_saga('checkout', %s)",
                                      (Jsonb({"order": order, "total": total}),)).fetchone()[0])
        while conn.execute("SELECT count(*) FROM event_store.sagas WHERE saga_id = ANY (%s)"
                           " AND status IN ('running', 'compensating')", (sagas,)).fetchone()[0]:
            time.sleep(0.2)
        # let the follower print the last saga events
        end = conn.execute("SELECT max(e.global_position) FROM unnest(%s::uuid[]) id,"
                           " event_store.read_stream('saga-' || id) e", (sagas,)).fetchone()[0]

        def receipts_sent():
            # (another service may have sent some of them)
            return all(s in receipted for s in placed) or conn.execute(
                "SELECT in_flight = 0 AND lag_events = 0 FROM event_store.subscription_status"
                " WHERE name = 'order-receipts'").fetchone()[0]

        while follower.position < end or not receipts_sent():
            time.sleep(0.05)
        for saga_id in sagas:
            state = conn.execute("SELECT event_store.saga_state(%s)", (saga_id,)).fetchone()[0]
            steps = ", ".join(f"{s['stepType']} {s['status']}" for s in state["steps"])
            print(f"saga {saga_id}: {state['status']} ({steps})")
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()
        worker.stop()
        receipts.stop()
        conn.close()


if __name__ == "__main__":
    main()
