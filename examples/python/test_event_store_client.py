"""Tests of the Python client (event_store_client.py) against a real server:

  - append_with_retry re-reads and retries after SE001, and gives up after
    max_attempts;
  - concurrent appenders (threads) to one stream, with retries, all land:
    versions 1..n without gaps, no event lost or doubled, each writer's
    events in its order;
  - two followers, one woken by wait_for_events() and one by LISTEN
    event_store, see every committed event exactly once and in position
    order, while appenders race, an append is rolled back and one commits
    late (after events with higher positions);
  - sagas defined here, whose external steps two SagaWorkers work,
    complete (one after a retried step); one whose step fails for good
    compensates its completed step (saga_state).

Connects with the PG* environment variables (or DATABASE_URL) to a
database where CREATE EXTENSION event_store was done, on a server with
the background worker running (LISTEN and the saga retry need it):

    PGHOST=... PGPORT=... PGDATABASE=... /usr/bin/python3 -m unittest -v
"""

import random
import string
import threading
import time
import unittest

from psycopg.types.json import Jsonb

from event_store_client import (
    Follower,
    PermanentError,
    SagaWorker,
    append_with_retry,
    connect,
)

# names of this run, so that the tests can run again in the same database
RUN = "".join(random.choices(string.ascii_lowercase + string.digits, k=8))

conn = None


def setUpModule():
    global conn
    conn = connect()
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'event_store'").fetchone()
    if row is None:
        raise RuntimeError("event_store is not installed in this database (CREATE EXTENSION event_store)")


def tearDownModule():
    conn.close()


def sql(text, params=()):
    return conn.execute(text, params).fetchall()


def head():
    return sql("SELECT event_store.head_position()")[0][0]


def last_visible():
    """The position of the last event at or below the head: where a follower
    that read everything stands (the head itself can be a hole left by an
    aborted append)."""
    return sql("SELECT coalesce(max(global_position), 0) FROM event_store.events"
               " WHERE global_position <= event_store.head_position()")[0][0]


def wait_until(what, fn, timeout=30.0):
    """Poll fn until it returns a true value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.025)


def in_threads(n, fn):
    """Run fn(i) for i in range(n) in n threads; re-raise the first error."""
    errors = []

    def target(i):
        try:
            fn(i)
        except BaseException as err:  # noqa: B036 (re-raised below)
            errors.append(err)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class AppendWithRetryTest(unittest.TestCase):

    def test_retries_after_a_conflict(self):
        stream = f"account-{RUN}a"
        versions_seen = []
        conflicts = []

        def decide(version, attempt):
            versions_seen.append(version)
            if attempt == 1:
                # another writer gets there first
                sql("""SELECT event_store.append(%s, '{"type": "Deposited", "data": {"by": "other"}}')""",
                    (stream,))
            return {"type": "Deposited", "data": {"by": "us", "basedOn": version}}

        with connect() as c:
            result = append_with_retry(c, stream, decide,
                                       on_conflict=lambda err, attempt: conflicts.append(err.sqlstate))
        self.assertEqual((result.version, result.attempts, result.appended), (2, 2, True))
        self.assertEqual(versions_seen, [0, 1], "the second attempt saw the other writer")
        self.assertEqual(conflicts, ["SE001"])
        self.assertEqual(sql("SELECT stream_version, data FROM event_store.read_stream(%s)", (stream,)),
                         [(1, {"by": "other"}), (2, {"by": "us", "basedOn": 1})])

    def test_gives_up_after_max_attempts(self):
        stream = f"account-{RUN}b"
        calls = []

        def decide(version, attempt):
            calls.append(attempt)
            sql("""SELECT event_store.append(%s, '{"type": "Deposited", "data": {"by": "other"}}')""",
                (stream,))
            return {"type": "Deposited", "data": {"by": "us"}}

        with connect() as c:
            with self.assertRaises(Exception) as raised:
                append_with_retry(c, stream, decide, max_attempts=3, base_delay=0.001)
        self.assertEqual(raised.exception.sqlstate, "SE001")
        self.assertIn("wrong expected version", str(raised.exception))
        self.assertEqual(calls, [1, 2, 3])
        self.assertEqual(sql("SELECT data ->> 'by' FROM event_store.read_stream(%s)", (stream,)),
                         [("other",)] * 3)

    def test_inside_a_transaction_a_conflict_rolls_back_only_the_append(self):
        stream = f"account-{RUN}t"

        def decide(version, attempt):
            if attempt == 1:
                sql("""SELECT event_store.append(%s, '{"type": "Deposited"}')""", (stream,))
            return {"type": "Deposited", "data": {"by": "us"}}

        with connect(autocommit=False) as c:
            c.execute("CREATE TEMP TABLE audit (note text)")
            c.execute("INSERT INTO audit VALUES ('before')")
            result = append_with_retry(c, stream, decide)
            c.execute("INSERT INTO audit VALUES ('after')")
            self.assertEqual(c.execute("SELECT note FROM audit ORDER BY note").fetchall(),
                             [("after",), ("before",)], "the transaction went on")
            c.commit()
        self.assertEqual((result.version, result.attempts), (2, 2))
        self.assertEqual(sql("SELECT data FROM event_store.read_stream(%s)", (stream,)), [({},), ({"by": "us"},)])

    def test_concurrent_appenders_all_land_with_consecutive_versions(self):
        stream = f"account-{RUN}c"
        writers, per_writer = 6, 15

        def writer(w):
            with connect() as c:
                for seq in range(per_writer):
                    append_with_retry(c, stream, {"type": "Deposited", "data": {"writer": w, "seq": seq}},
                                      max_attempts=40)

        in_threads(writers, writer)
        events = sql("SELECT stream_version, data FROM event_store.read_stream(%s)", (stream,))
        self.assertEqual([v for v, _ in events], list(range(1, writers * per_writer + 1)),
                         "versions 1..n without gaps")
        self.assertEqual(sql("SELECT event_store.stream_version(%s)", (stream,))[0][0], writers * per_writer)
        for w in range(writers):
            self.assertEqual([d["seq"] for _, d in events if d["writer"] == w], list(range(per_writer)),
                             f"writer {w}: every event once, in its order")


def traffic(tag, writers, rounds):
    """Append batches of 1-3 events to a few streams from concurrent writers."""
    def writer(w):
        with connect() as c:
            for i in range(rounds):
                batch = [{"type": "Moved", "data": {"tag": tag, "w": w, "i": i, "k": k}}
                         for k in range(1 + (w + i) % 3)]
                append_with_retry(c, f"cargo-{RUN}-{(w + i) % 3}", batch, max_attempts=40)
    in_threads(writers, writer)


class FollowerTest(unittest.TestCase):

    def test_followers_see_every_committed_event_once_in_order(self):
        start = head()
        seen = {"wait_for_events": [], "listen": []}
        # no periodic wakeup: only wait_for_events() or a NOTIFY move them
        followers = [Follower(seen[wake].append, after=start, wake=wake, wait_timeout=120).start()
                     for wake in seen]
        try:
            traffic("before", 4, 10)
            # a transaction that takes a position now and commits after later ones
            with connect(autocommit=False) as slow:
                slow.execute("""SELECT event_store.append(%s, '{"type": "Delayed"}')""", (f"cargo-{RUN}-slow",))
                slow_position = slow.execute("SELECT global_position FROM event_store.events WHERE stream_id = %s",
                                             (f"cargo-{RUN}-slow",)).fetchone()[0]
                traffic("during", 4, 10)
                # and an append that is rolled back: a hole in the numbering
                with connect(autocommit=False) as aborted:
                    aborted.execute("""SELECT event_store.append(%s, '{"type": "Aborted"}')""",
                                    (f"cargo-{RUN}-aborted",))
                    aborted.rollback()

                later = sql("SELECT count(*) FROM event_store.events WHERE global_position > %s",
                            (slow_position,))[0][0]
                self.assertGreater(later, 0, "events with higher positions committed before the delayed one")
                self.assertLess(head(), slow_position, "the open append holds the head below its position")
                reachable = last_visible()
                wait_until("the followers to reach the head",
                           lambda: all(f.position >= reachable for f in followers))
                for f in followers:
                    self.assertLess(f.position, slow_position, f"{f.wake}: not past the uncommitted position")
                slow.commit()

            traffic("after", 4, 5)
            end = last_visible()
            wait_until("the followers to catch up", lambda: all(f.position >= end for f in followers))
        finally:
            for f in followers:
                f.stop()

        committed = sql("SELECT global_position, event_id FROM event_store.events"
                        " WHERE global_position > %s AND global_position <= %s ORDER BY global_position",
                        (start, end))
        self.assertIn(slow_position, [p for p, _ in committed], "the delayed event is in the store")
        for wake, events in seen.items():
            positions = [e["global_position"] for e in events]
            self.assertTrue(all(a < b for a, b in zip(positions, positions[1:])),
                            f"{wake}: positions strictly increasing (in order, none twice)")
            self.assertEqual([(e["global_position"], e["event_id"]) for e in events if e["global_position"] <= end],
                             committed, f"{wake}: exactly the committed events")


# Saga steps: reserve, charge (retried up to 3 times), ship, all external.
# An external step without "compensation" is compensated externally too.
SAGA_DEFINITION = {
    "steps": [{"name": "reserve"},
              {"name": "charge", "max_attempts": 3, "backoff": "50 milliseconds"},
              {"name": "ship"}],
    "timeout": "10 minutes",
}


def saga_handlers(calls):
    """Handlers that record every call as (saga, step, kind, attempt, data)."""
    lock = threading.Lock()

    def record(step, data):
        with lock:
            calls.append((step["saga_id"], step["step"], step["kind"], step["attempt"], data))

    def reserve(data, step):
        record(step, data)
        return {"reservation": f"R-{data['order']}"}

    def release(data, step):
        record(step, data)
        return {"released": data["reservation"]}

    def charge(data, step):
        record(step, data)
        if data["amount"] > 1000:
            raise PermanentError("card declined")
        if data.get("flaky") and step["attempt"] == 1:
            raise ConnectionError("payment service unavailable")
        return {"payment": f"P-{data['order']}"}

    def ship(data, step):
        record(step, data)
        return {"tracking": f"T-{data['order']}"}

    return {"reserve": {"action": reserve, "compensate": release},
            "charge": {"action": charge},
            "ship": {"action": ship}}


def start_sagas(saga_type, orders):
    sql("SELECT event_store.define_saga(%s, %s)", (saga_type, Jsonb(SAGA_DEFINITION)))
    return [sql("SELECT event_store.start_saga(%s, %s)", (saga_type, Jsonb(o)))[0][0] for o in orders]


def saga_state(saga_id):
    return sql("SELECT event_store.saga_state(%s)", (saga_id,))[0][0]


class SagaWorkerTest(unittest.TestCase):

    def work_until_finished(self, ids, calls):
        errors = []
        workers = [SagaWorker(name, saga_handlers(calls), max_count=4, poll_interval=0.05,
                              on_error=lambda err, step: errors.append(f"{step['step']}: {err}")).start()
                   for name in ("python-a", "python-b")]
        try:
            wait_until("the sagas to finish", lambda: sql(
                "SELECT count(*) FROM event_store.sagas WHERE saga_id = ANY (%s)"
                " AND status IN ('completed', 'compensated', 'compensation_failed')", (ids,))[0][0] == len(ids))
        finally:
            for w in workers:
                w.stop()
        self.assertEqual(errors, [], "every step report was accepted")

    def test_sagas_whose_steps_the_workers_do_complete(self):
        saga_type = f"python_checkout_{RUN}"
        orders = [{"order": n, "amount": 10 * n} for n in range(1, 6)]
        orders.append({"order": 6, "amount": 60, "flaky": True})
        ids = start_sagas(saga_type, orders)
        calls = []
        self.work_until_finished(ids, calls)

        for saga_id, data in zip(ids, orders):
            order = data["order"]
            state = saga_state(saga_id)
            self.assertEqual(state["status"], "completed", f"saga of order {order} completed")
            self.assertEqual(state["sagaType"], saga_type)
            self.assertEqual([(s["stepType"], s["status"], s["compensationData"]) for s in state["steps"]],
                             [("reserve", "completed", {"reservation": f"R-{order}"}),
                              ("charge", "completed", {"payment": f"P-{order}"}),
                              ("ship", "completed", {"tracking": f"T-{order}"})])
            mine = [c for c in calls if c[0] == saga_id]
            expected = [("reserve", "action", 1), ("charge", "action", 1)]
            if data.get("flaky"):
                expected.append(("charge", "action", 2))
            expected.append(("ship", "action", 1))
            self.assertEqual([c[1:4] for c in mine], expected,
                             f"order {order}: every step worked once (a failed attempt again)")
            self.assertEqual(mine[1][4]["reservation"], f"R-{order}",
                             "charge saw the result of reserve in the saga data")
            self.assertEqual(sql("SELECT data FROM event_store.sagas WHERE saga_id = %s", (saga_id,))[0][0],
                             {**data, "reservation": f"R-{order}", "payment": f"P-{order}",
                              "tracking": f"T-{order}"})

    def test_a_saga_whose_step_fails_for_good_compensates(self):
        ids = start_sagas(f"python_refused_{RUN}", [{"order": 7, "amount": 5000}])
        calls = []
        self.work_until_finished(ids, calls)

        state = saga_state(ids[0])
        self.assertEqual(state["status"], "compensated")
        self.assertEqual([(s["stepType"], s["status"]) for s in state["steps"]],
                         [("reserve", "compensated"), ("charge", "failed"), ("ship", "pending")])
        self.assertEqual([c[1:3] for c in calls],
                         [("reserve", "action"), ("charge", "action"), ("reserve", "compensation")],
                         "charge was not retried; reserve was undone; ship never ran")
        self.assertEqual(calls[2][4], {"reservation": "R-7"}, "the compensation got the result of reserve")
        self.assertEqual(sql("SELECT last_error FROM event_store.saga_steps WHERE saga_id = %s AND name = 'charge'",
                             (ids[0],))[0][0], "card declined")


if __name__ == "__main__":
    unittest.main(verbosity=2)
