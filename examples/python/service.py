"""A small order service on the package event_store_client: it owns the saga type
"checkout" (steps reserve, charge, ship, worked here), prints every event
of the store as its follower sees it, sends a receipt for every order as
one consumer of the subscription "order-receipts" (run the service twice
and the two share the orders), and with --orders N places N orders (an
OrderPlaced event appended with retries, and a checkout saga each), then
stops once their sagas have ended and their receipts are sent.  Without
--orders it runs until Ctrl-C.

    PGHOST=... PGPORT=... PGDATABASE=... /usr/bin/python3 service.py [--orders N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Dict, List, Set

import psycopg
from psycopg.types.json import Jsonb

from event_store_client import (
    Follower,
    PermanentError,
    SagaWorker,
    SubscriptionWorker,
    Connection,
    Event,
    StepFunction,
    StepResult,
    append_with_retry,
    connect,
)

CHECKOUT = {
    "steps": [{"name": "reserve"}, {"name": "charge", "max_attempts": 3, "backoff": "1 second"},
              {"name": "ship"}],
    "timeout": "1 hour",
}


def charge(data: Dict[str, Any], step: Dict[str, Any]) -> StepResult:
    if data["total"] > 100:
        raise PermanentError(f"card declined for {data['total']}")
    return {"payment": f"P-{data['order']}"}


HANDLERS: Dict[str, Dict[str, StepFunction]] = {
    "reserve": {"action": lambda data, step: {"reservation": f"R-{data['order']}"},
                "compensate": lambda data, step: {"released": data["reservation"]}},
    "charge": {"action": charge},
    "ship": {"action": lambda data, step: {"tracking": f"T-{data['order']}"}},
}


def show(e: Event) -> None:
    print(f"{e['global_position']} {e['stream_id']}@{e['stream_version']} {e['event_type']} "
          f"{json.dumps(e['data'])}", flush=True)


def scalar(conn: Connection, query: str, params: Any = None) -> Any:
    """The first column of the query's first row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=0, help="place N orders, then stop when their sagas end")
    args = parser.parse_args()

    conn = connect()
    conn.execute("SELECT event_store.define_saga('checkout', %s)", (Jsonb(CHECKOUT),))
    start = scalar(conn, "SELECT event_store.head_position()")
    follower = Follower(show, after=start, wake="listen", wait_timeout=1.0).start()
    worker = SagaWorker(f"python-service-{os.getpid()}", HANDLERS).start()

    # receipts: every OrderPlaced, once, shared by all running services
    try:
        conn.execute("SELECT event_store.create_subscription('order-receipts', categories => ARRAY['order'],"
                     " event_types => ARRAY['OrderPlaced'])")
    except psycopg.errors.DuplicateObject:
        pass  # it exists already
    receipted: Set[str] = set()

    def receipt(e: Event, c: object) -> None:
        print(f"receipt for {e['stream_id']}: {e['data']['total']} (attempt {e['attempt']})", flush=True)
        receipted.add(e["stream_id"])

    receipts = SubscriptionWorker("order-receipts", f"python-service-{os.getpid()}", receipt).start()
    try:
        if args.orders <= 0:
            while True:
                time.sleep(3600)
        sagas: List[Any] = []
        placed: List[str] = []
        for n in range(1, args.orders + 1):
            order = f"{int(time.time() * 1000):x}-{n}"
            total = 40 * n  # the third order and later are declined: their sagas compensate
            append_with_retry(conn, f"order-{order}", lambda version, attempt: {"type": "OrderPlaced",
                                                                               "data": {"total": total}})
            placed.append(f"order-{order}")
            sagas.append(scalar(conn, "SELECT event_store.start_saga('checkout', %s)",
                                (Jsonb({"order": order, "total": total}),)))
        while scalar(conn, "SELECT count(*) FROM event_store.sagas WHERE saga_id = ANY (%s)"
                     " AND status IN ('running', 'compensating')", (sagas,)):
            time.sleep(0.2)
        # let the follower print the last saga events
        end = scalar(conn, "SELECT max(e.global_position) FROM unnest(%s::uuid[]) id,"
                     " event_store.read_stream('saga-' || id) e", (sagas,))

        def receipts_sent() -> bool:
            # (another service may have sent some of them)
            return all(s in receipted for s in placed) or bool(scalar(
                conn, "SELECT in_flight = 0 AND lag_events = 0 FROM event_store.subscription_status"
                " WHERE name = 'order-receipts'"))

        while follower.position < end or not receipts_sent():
            time.sleep(0.05)
        for saga_id in sagas:
            state = scalar(conn, "SELECT event_store.saga_state(%s)", (saga_id,))
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
