"""A small order service on event_store_client.py: it owns the saga type
"checkout" (steps reserve, charge, ship, worked here), prints every event
of the store as its follower sees it, and with --orders N places N orders
(an OrderPlaced event appended with retries, and a checkout saga each),
then stops once their sagas have ended.  Without --orders it runs until
Ctrl-C.

    PGHOST=... PGPORT=... PGDATABASE=... /usr/bin/python3 service.py [--orders N]
"""

import argparse
import json
import os
import time

from psycopg.types.json import Jsonb

from event_store_client import Follower, PermanentError, SagaWorker, append_with_retry, connect

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
    try:
        if args.orders <= 0:
            while True:
                time.sleep(3600)
        sagas = []
        for n in range(1, args.orders + 1):
            order = f"{int(time.time() * 1000):x}-{n}"
            total = 40 * n  # the third order and later are declined: their sagas compensate
            append_with_retry(conn, f"order-{order}", lambda version, attempt: {"type": "OrderPlaced",
                                                                               "data": {"total": total}})
            sagas.append(conn.execute("SELECT event_store.start_saga('checkout', %s)",
                                      (Jsonb({"order": order, "total": total}),)).fetchone()[0])
        while conn.execute("SELECT count(*) FROM event_store.sagas WHERE saga_id = ANY (%s)"
                           " AND status IN ('running', 'compensating')", (sagas,)).fetchone()[0]:
            time.sleep(0.2)
        # let the follower print the last saga events
        end = conn.execute("SELECT max(e.global_position) FROM unnest(%s::uuid[]) id,"
                           " event_store.read_stream('saga-' || id) e", (sagas,)).fetchone()[0]
        while follower.position < end:
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
        conn.close()


if __name__ == "__main__":
    main()
