"""Tests of the Python client (the package event_store_client) against a
real server.  test/t/060_clients.pl installs the package into a throwaway
virtual environment and runs them there, from another directory, with
ES_CLIENT_INSTALLED=1:

  - the package: installed (its metadata, version 0.3.0, its dependency on
    psycopg, py.typed) and everything of __all__ there;
  - append_with_retry re-reads and retries after SE001, and gives up after
    max_attempts; it retries a serialization failure and a deadlock
    outside a transaction (the same batch again: written once, also when
    the failed attempt had committed), not inside one; a batch sent again
    on a new connection after a lost one (a backend terminated while its
    append waits), or by a later call, with the same ids, is written once;
  - concurrent appenders (threads) to one stream, with retries, all land:
    versions 1..n without gaps, no event lost or doubled, each writer's
    events in its order;
  - two followers, one woken by wait_for_events() and one by LISTEN
    event_store, see every committed event exactly once and in position
    order, while appenders race, an append is rolled back and one commits
    late (after events with higher positions);
  - sagas defined here, whose external steps two SagaWorkers work,
    complete (one after a retried step); one whose step fails for good
    compensates its completed step (saga_state); one with a pivot and a
    timer step waits for a person after the pivot, and an operator's
    retry_saga lets it complete;
  - three SubscriptionWorkers (threads) share a subscription: every event
    is handled exactly once, each stream in order, never by two workers at
    the same time;
  - a handler that fails twice on one event: the event is retried, then
    its stream parked (subscription_parked), without its later events; the
    other streams go on; replay_parked delivers it again, and the rest of
    the stream after it; skip_parked acknowledges a parked stream;
  - a worker that stops acknowledges what it handled and releases its
    partitions: another one takes over at once and gets the rest of the
    stopped worker's batch again;
  - transactional workers (handler writes and ack in one transaction): a
    worker that stalls past its lease gets its ack refused (55000) and its
    writes rolled back, a handler that fails after writing is rolled back
    to its savepoint, and every event lands exactly once.

Connects with the PG* environment variables (or DATABASE_URL) to a
database where CREATE EXTENSION event_store was done, on a server with
the background worker running (LISTEN and the saga retry need it):

    PGHOST=... PGPORT=... PGDATABASE=... /usr/bin/python3 -m unittest -v
"""

import importlib.metadata
import os
import random
import re
import string
import sys
import threading
import time
import unittest

import psycopg
from psycopg.types.json import Jsonb

import event_store_client
from event_store_client import (
    Follower,
    PermanentError,
    SagaWorker,
    SubscriptionWorker,
    append_with_retry,
    connect,
    replay_parked,
    retry_saga,
    skip_parked,
    with_event_ids,
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


class PackageTest(unittest.TestCase):

    def test_the_package_is_installed_with_its_metadata(self):
        for name in event_store_client.__all__:
            self.assertTrue(hasattr(event_store_client, name), name)
        self.assertEqual(event_store_client.__version__, "0.3.0")
        here = os.path.dirname(event_store_client.__file__)
        self.assertTrue(os.path.isfile(os.path.join(here, "py.typed")), "py.typed is in the package")
        if os.environ.get("ES_CLIENT_INSTALLED") == "1":
            self.assertNotEqual(sys.prefix, sys.base_prefix, "in a virtual environment")
            self.assertTrue(here.startswith(sys.prefix + os.sep) and "site-packages" in here,
                            f"the installed package is tested ({here})")
            self.assertEqual(importlib.metadata.version("event-store-client"), "0.3.0")
            requires = [re.sub(r"[\s()]", "", r) for r in importlib.metadata.requires("event-store-client") or []]
            self.assertIn("psycopg>=3.1", requires)


class FailingConnection:
    """A connection whose execute() runs fail(query, run) for appends."""

    def __init__(self, conn, fail):
        self._conn = conn
        self._fail = fail

    def __getattr__(self, name):
        return getattr(self._conn, name)

    def execute(self, query, params=None):
        if "event_store.append(" in query:
            return self._fail(query, lambda: self._conn.execute(query, params))
        return self._conn.execute(query, params)


def stream_events(stream):
    return sql("SELECT stream_version, event_id::text, event_type, data FROM event_store.read_stream(%s)",
               (stream,))


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

    def test_serialization_failures_and_deadlocks_are_retried_outside_a_transaction(self):
        stream = f"account-{RUN}transient"
        calls = []

        def fail(query, run):
            calls.append(query)
            if len(calls) == 1:
                raise psycopg.errors.DeadlockDetected("deadlock detected")
            if len(calls) == 2:
                run()  # committed, and yet the outcome reported is a failure
                raise psycopg.errors.SerializationFailure("could not serialize access")
            return run()

        retried = []
        with connect() as c:
            sql("""SELECT event_store.append(%s, '{"type": "Opened"}')""", (stream,))
            result = append_with_retry(FailingConnection(c, fail), stream,
                                       [{"type": "Deposited"}, {"type": "Deposited"}],
                                       on_retry=lambda err, attempt: retried.append(err.sqlstate))
        self.assertEqual(retried, ["40P01", "40001"])
        self.assertEqual((result.version, result.attempts), (3, 3))
        events = stream_events(stream)
        self.assertEqual([e[2] for e in events], ["Opened", "Deposited", "Deposited"],
                         "the batch that committed in a failed attempt was not written again")
        self.assertEqual([e[1] for e in events[1:]], result.event_ids)

        # inside a transaction the transaction is the caller's to retry
        def always(query, run):
            raise psycopg.errors.SerializationFailure("could not serialize access")

        with connect(autocommit=False) as c:
            with self.assertRaises(psycopg.errors.SerializationFailure):
                append_with_retry(FailingConnection(c, always), stream, {"type": "Deposited"})
            c.rollback()
        self.assertEqual(len(stream_events(stream)), 3)

    def test_a_batch_sent_again_after_a_lost_connection_is_written_once(self):
        stream = f"account-{RUN}lost"
        app = f"es-victim-{RUN}"
        batch = with_event_ids([{"type": "Deposited", "data": {"n": 1}}, {"type": "Deposited", "data": {"n": 2}}])
        self.assertTrue(all(len(e["id"]) == 36 for e in batch))
        outcome = []
        with connect() as blocker:
            # an open append to the stream: the client's append waits for its lock
            blocker.execute("BEGIN")
            blocker.execute("""SELECT event_store.append(%s, '{"type": "Opened"}')""", (stream,))

            def appender():
                with connect(application_name=app) as victim:
                    try:
                        append_with_retry(victim, stream, batch)
                        outcome.append("appended")
                    except psycopg.OperationalError as err:
                        outcome.append(err)

            thread = threading.Thread(target=appender)
            thread.start()
            try:
                pid = wait_until("the append to wait for the stream", lambda: sql(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                    " AND query LIKE '%%event_store.append(%%'", (app,)))[0][0]
                self.assertEqual(sql("SELECT pg_terminate_backend(%s)", (pid,)), [(True,)])
            finally:
                thread.join(30)
            blocker.execute("ROLLBACK")
        self.assertEqual(len(outcome), 1)
        self.assertIsInstance(outcome[0], psycopg.OperationalError, "the lost connection is raised")
        with connect() as c:
            first = append_with_retry(c, stream, batch)
            sql("""SELECT event_store.append(%s, '{"type": "Withdrawn"}')""", (stream,))
            # the answer to `first` was lost, say: the caller sends the batch again
            again = append_with_retry(c, stream, batch)
        self.assertEqual((first.version, again.version), (2, 2), "the version after the batch, both times")
        self.assertEqual(again.event_ids, [e["id"] for e in batch])
        self.assertEqual([(e[0], e[2]) for e in stream_events(stream)],
                         [(1, "Deposited"), (2, "Deposited"), (3, "Withdrawn")])
        # an id of the batch elsewhere, or in another batch: SE002, nothing written
        with self.assertRaises(psycopg.Error) as raised:
            append_with_retry(conn, f"account-{RUN}other", [{"type": "Deposited", "id": batch[1]["id"]}])
        self.assertEqual(raised.exception.sqlstate, "SE002")
        with self.assertRaises(psycopg.Error) as raised:
            append_with_retry(conn, stream, [batch[1], {"type": "Withdrawn"}])
        self.assertEqual(raised.exception.sqlstate, "SE002")
        self.assertEqual(len(stream_events(stream)), 3)
        self.assertEqual(stream_events(f"account-{RUN}other"), [])
        # a fixed expected version: a conflict is the caller's
        with self.assertRaises(psycopg.Error) as raised:
            append_with_retry(conn, stream, {"type": "Withdrawn"}, expected_version=1)
        self.assertEqual(raised.exception.sqlstate, "SE001")
        self.assertEqual(append_with_retry(conn, stream, {"type": "Withdrawn"}, expected_version=3).version, 4)

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

    def test_a_timer_a_pivot_and_an_operator_retry(self):
        # charge is the pivot: after it, ship's failure is not compensated;
        # the saga waits for a person, whose retry_saga gives ship another
        # round.  cool_off is a timer step the background worker completes.
        saga_type = f"python_long_haul_{RUN}"
        sql("SELECT event_store.define_saga(%s, %s)", (saga_type, Jsonb({"steps": [
            {"name": "charge", "pivot": True},
            {"name": "cool_off", "delay": "300 milliseconds"},
            {"name": "ship", "max_attempts": 1}]})))
        saga_id = sql("SELECT event_store.start_saga(%s, %s)", (saga_type, Jsonb({"order": 9})))[0][0]
        couriers = []

        def ship(data, step):
            if not couriers:
                raise PermanentError("no courier")
            return {"courier": couriers[0]}

        errors = []
        worker = SagaWorker("python-long-haul", {"charge": {"action": lambda data, step: {"charged": True}},
                                                 "ship": {"action": ship}},
                            poll_interval=0.05, on_error=lambda err, step: errors.append(str(err))).start()
        try:
            wait_until("the saga to need a person", lambda: sql(
                "SELECT count(*) FROM event_store.saga_problems WHERE saga_id = %s"
                " AND reason = 'forward_recovery_failed' AND step = 'ship'", (saga_id,))[0][0] == 1)
            state = saga_state(saga_id)
            self.assertEqual(state["status"], "running", "past the pivot, nothing is compensated")
            self.assertEqual([(s["stepType"], s["status"]) for s in state["steps"]],
                             [("charge", "completed"), ("cool_off", "completed"), ("ship", "failed")])
            self.assertEqual(sql("SELECT due_at <= updated_at FROM event_store.saga_steps"
                                 " WHERE saga_id = %s AND name = 'cool_off'", (saga_id,))[0][0], True,
                             "the timer completed when it was due, not before")
            couriers.append("C-1")
            with connect() as conn:
                retry_saga(conn, saga_id)
            wait_until("the saga to complete", lambda: saga_state(saga_id)["status"] == "completed")
        finally:
            worker.stop()
        self.assertEqual(errors, [], "every step report was accepted")
        self.assertEqual(sql("SELECT data FROM event_store.sagas WHERE saga_id = %s", (saga_id,))[0][0],
                         {"order": 9, "charged": True, "courier": "C-1"})
        self.assertIn("SagaRetried", [r[0] for r in sql(
            "SELECT event_type FROM event_store.read_stream('saga-' || %s)", (str(saga_id),))])


# Subscriptions: each test has a category and a subscription of its own
def subscription_names(tag):
    return f"sub{RUN}{tag}", f"python_{tag}_{RUN}"


def create_subscription(subscription, category, partitions=8, max_attempts=5, retry_backoff="1 second"):
    sql("SELECT event_store.create_subscription(%s, categories => ARRAY[%s], partitions => %s,"
        " max_attempts => %s, retry_backoff => %s::interval)",
        (subscription, category, partitions, max_attempts, retry_backoff))


def append_steps(streams, count, first=1):
    """Append count events (type Step, data {n}) to each stream, one batch per stream."""
    for stream in streams:
        append_with_retry(conn, stream, [{"type": "Step", "data": {"n": first + i}} for i in range(count)])


def category_events(category):
    """(global_position, stream_id, stream_version, event_id) of the category, in order."""
    return sql("SELECT global_position, stream_id, stream_version, event_id"
               " FROM event_store.read_category(%s, 0, 100000) ORDER BY global_position", (category,))


def in_flight(subscription):
    """Events handed out and not acknowledged."""
    return sql("SELECT in_flight FROM event_store.subscription_status WHERE name = %s", (subscription,))[0][0]


def versions_by_stream(rows):
    """Each stream's versions, in the order of rows ((stream_id, stream_version, ...) tuples)."""
    streams = {}
    for row in rows:
        streams.setdefault(row[0], []).append(row[1])
    return streams


def stop_all(workers):
    """Stop every worker (each releases its partitions), then report the first error."""
    errors = []
    for w in workers:
        try:
            w.stop()
        except BaseException as err:  # noqa: B036 (re-raised below)
            errors.append(err)
    if errors:
        raise errors[0]


class SubscriptionWorkerTest(unittest.TestCase):

    def test_workers_share_a_subscription_each_event_once_each_stream_in_order(self):
        category, subscription = subscription_names("group")
        create_subscription(subscription, category, partitions=8)
        lock = threading.Lock()
        handled = []
        in_hand = {}  # stream -> the worker handling one of its events now
        overlaps = []
        errors = []

        def handler_for(name):
            def handler(event, c):
                stream = event["stream_id"]
                with lock:
                    if stream in in_hand:
                        overlaps.append(f"{stream}@{event['stream_version']}: {name} while {in_hand[stream]} has it")
                    in_hand[stream] = name
                # a round trip, so that the workers' handlers interleave
                c.execute("SELECT event_store.stream_version(%s)", (stream,))
                with lock:
                    del in_hand[stream]
                    handled.append((stream, event["stream_version"], event["global_position"],
                                    event["attempt"], name))
            return handler

        workers = [SubscriptionWorker(subscription, f"python-{name}", handler_for(name), wait=0.2,
                                      on_error=lambda err, what, name=name: errors.append(f"{name} {what}: {err}"))
                   for name in ("a", "b", "c")]
        for w in workers:
            w.start()
        try:
            wait_until("the partitions to be spread over the three workers", lambda: sql(
                "SELECT count(DISTINCT holder) = 3 AND count(holder) = 8"
                " FROM event_store.subscription_partitions WHERE subscription = %s", (subscription,))[0][0])

            # 32 streams of 5 events, appended one at a time by 4 concurrent writers
            def writer(w):
                with connect() as c:
                    for n in range(1, 6):
                        for s in range(w, 32, 4):
                            append_with_retry(c, f"{category}-{s}", {"type": "Step", "data": {"n": n}})
            in_threads(4, writer)
            events = category_events(category)
            self.assertEqual(len(events), 160)
            wait_until("every event to be handled and acknowledged",
                       lambda: len(handled) >= len(events) and in_flight(subscription) == 0)
        finally:
            stop_all(workers)
        self.assertEqual(errors, [])
        self.assertEqual(overlaps, [], "no stream was in two workers' hands at once")
        self.assertEqual(sorted(h[2] for h in handled), [e[0] for e in events], "every event handled exactly once")
        self.assertEqual(versions_by_stream(handled), versions_by_stream([e[1:] for e in events]),
                         "each stream in order")
        self.assertTrue(all(h[3] == 1 for h in handled), "nothing delivered twice")
        per_worker = [sum(1 for h in handled if h[4] == name) for name in ("a", "b", "c")]
        self.assertTrue(all(n > 0 for n in per_worker), f"all three workers handled events: {per_worker}")
        self.assertEqual(sql("SELECT count(holder), (SELECT count(*) FROM event_store.subscription_consumers"
                             " WHERE subscription = %s) FROM event_store.subscription_partitions"
                             " WHERE subscription = %s", (subscription, subscription)),
                         [(0, 0)], "the stopped workers released everything")

    def test_a_failing_event_is_retried_then_parked_and_replayed(self):
        category, subscription = subscription_names("park")
        create_subscription(subscription, category, partitions=4, max_attempts=2, retry_backoff="50 milliseconds")
        bad = f"{category}-bad"
        others = [f"{category}-{i}" for i in range(1, 6)]
        # each stream's events in one append: they come in one claim
        append_steps([bad] + others, 3)
        bad_position = next(e[0] for e in category_events(category) if e[1] == bad and e[2] == 2)
        failing = threading.Event()
        failing.set()
        lock = threading.Lock()
        handled = []
        errors = []

        def handler(event, c):
            fails = failing.is_set() and event["global_position"] == bad_position
            with lock:
                handled.append((event["stream_id"], event["stream_version"], event["attempt"], not fails))
            if fails:
                raise RuntimeError(f"cannot handle {event['stream_id']}@{event['stream_version']}")

        def of(stream):
            with lock:
                return [h[1:] for h in handled if h[0] == stream]

        def parked():
            return sql("SELECT stream_id, global_position, event_type, attempts, last_error"
                       " FROM event_store.subscription_parked WHERE subscription = %s", (subscription,))

        workers = [SubscriptionWorker(subscription, f"python-{name}", handler, wait=0.2,
                                      on_error=lambda err, what, name=name: errors.append(f"{name} {what}: {err}"))
                   for name in ("a", "b", "c")]
        for w in workers:
            w.start()
        try:
            wait_until("the stream to be parked", lambda: len(parked()) == 1)
            # the other streams go on; the parked one gets nothing, not even a new event
            append_steps(others + [bad], 1, first=4)
            wait_until("the other streams to be handled",
                       lambda: sum(len([h for h in of(s) if h[2]]) for s in others) >= len(others) * 4
                       and in_flight(subscription) == 0)
            self.assertEqual(parked(), [(bad, bad_position, "Step", 2, f"cannot handle {bad}@2")])
            self.assertEqual(of(bad), [(1, 1, True), (2, 1, False), (2, 2, False)],
                             "the failing event twice (retried once), then parked;"
                             " the later events of its stream held back")
            self.assertEqual(sql("SELECT retrying_streams, parked_streams FROM event_store.subscription_status"
                                 " WHERE name = %s", (subscription,)), [(0, 1)])

            failing.clear()
            self.assertEqual(replay_parked(conn, subscription, bad), 1)
            wait_until("the replayed stream to be handled",
                       lambda: len(of(bad)) >= 6 and in_flight(subscription) == 0)
        finally:
            stop_all(workers)
        self.assertEqual(errors, [])
        self.assertEqual(of(bad), [(1, 1, True), (2, 1, False), (2, 2, False), (2, 1, True), (3, 1, True),
                                   (4, 1, True)],
                         "replayed from the parked event (attempts reset), then the rest of the stream in order")
        for stream in others:
            self.assertEqual(of(stream), [(v, 1, True) for v in range(1, 5)], f"{stream}: every event once, in order")
        self.assertEqual(parked(), [])

    def test_skip_parked_acknowledges_a_parked_stream(self):
        category, subscription = subscription_names("skip")
        create_subscription(subscription, category, partitions=1, max_attempts=1)
        stream = f"{category}-1"
        append_steps([stream], 2)
        handled = []
        errors = []

        def handler(event, c):
            handled.append((event["stream_version"], event["attempt"]))
            if event["data"]["n"] == 1:
                raise RuntimeError("never handled")

        def status():
            return sql("SELECT parked_streams, in_flight FROM event_store.subscription_status WHERE name = %s",
                       (subscription,))[0]

        worker = SubscriptionWorker(subscription, "python-skip", handler, wait=0.2,
                                    on_error=lambda err, what: errors.append(f"{what}: {err}")).start()
        try:
            wait_until("the stream to be parked", lambda: status()[0] == 1)
            self.assertEqual(skip_parked(conn, subscription, stream), 1)
            append_steps([stream], 1, first=3)
            wait_until("the new event to be handled", lambda: len(handled) >= 2 and status()[1] == 0)
        finally:
            worker.stop()
        self.assertEqual(errors, [])
        self.assertEqual(handled, [(1, 1), (3, 1)], "the skipped events never came again; the new one did")
        self.assertEqual(status()[0], 0)

    def test_a_worker_that_stops_releases_and_another_takes_over(self):
        category, subscription = subscription_names("handover")
        create_subscription(subscription, category, partitions=2)
        streams = [f"{category}-{i}" for i in range(1, 5)]
        append_steps(streams, 3)
        events = category_events(category)
        fifth = events[4][0]
        handled = {"a": [], "b": []}
        errors = []
        in_fifth = threading.Event()
        gate = threading.Event()

        def handler_for(name):
            def handler(event, c):
                if name == "a" and event["global_position"] == fifth:
                    in_fifth.set()
                    gate.wait(60)
                handled[name].append((event["stream_id"], event["stream_version"], event["global_position"],
                                      event["attempt"]))
            return handler

        def worker(name):
            return SubscriptionWorker(subscription, f"python-{name}", handler_for(name), wait=0.2,
                                      on_error=lambda err, what: errors.append(f"{name} {what}: {err}"))

        # a takes the whole log in one claim and holds on in its fifth event
        a, b = worker("a").start(), worker("b")
        try:
            wait_until("worker a to be in its fifth event", in_fifth.is_set)
            b.start()
            stopping = threading.Thread(target=a.stop)
            stopping.start()
            wait_until("a.stop() to be waiting for the event in hand", lambda: a.stopping)
            gate.set()
            stopping.join()
            # released at once, not left to expire
            self.assertEqual(sql("SELECT count(*) FILTER (WHERE holder = 'python-a'),"
                                 " (SELECT count(*) FROM event_store.subscription_consumers"
                                 "   WHERE subscription = %s AND consumer = 'python-a')"
                                 " FROM event_store.subscription_partitions WHERE subscription = %s",
                                 (subscription, subscription)), [(0, 0)],
                             "a released its partitions when it stopped")
            wait_until("b to take over the rest of the batch",
                       lambda: len(handled["b"]) >= 7 and in_flight(subscription) == 0)
            append_steps(streams, 1, first=4)
            wait_until("b to handle the new events",
                       lambda: len(handled["b"]) >= 11 and in_flight(subscription) == 0)
        finally:
            gate.set()
            stop_all([a, b])
        self.assertEqual(errors, [])
        self.assertEqual([(h[2], h[3]) for h in handled["a"]], [(e[0], 1) for e in events[:5]],
                         "a handled its batch up to the event it was in when it stopped")
        everything = category_events(category)
        self.assertEqual(sorted(h[2] for h in handled["b"]), [e[0] for e in everything[5:]],
                         "b handled everything after it, once")
        self.assertEqual(sorted(h[2] for h in handled["b"] if h[3] == 2), [e[0] for e in events[5:]],
                         "the rest of the stopped batch came again (attempt 2)")
        self.assertEqual(versions_by_stream(handled["a"] + handled["b"]),
                         versions_by_stream([e[1:] for e in everything]), "each stream in order")

    def test_transactional_workers_land_every_event_exactly_once(self):
        category, subscription = subscription_names("once")
        create_subscription(subscription, category, partitions=2, retry_backoff="20 milliseconds")
        table = f"landed_{RUN}"
        conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,"
            " stream_version bigint NOT NULL, consumer text NOT NULL)")
        streams = [f"{category}-{i}" for i in range(1, 5)]
        append_steps(streams, 3)
        events = category_events(category)
        stall = events[5][0]  # where the slow worker stalls
        flaky = events[8][0]  # fails once after writing (in a fast worker)
        lock = threading.Lock()
        calls = []
        slow_errors = []
        errors = []
        stalled = threading.Event()
        gate = threading.Event()
        flaky_failed = threading.Event()

        def handler_for(name):
            def handler(event, c):
                with lock:
                    calls.append((name, event["global_position"], event["attempt"]))
                c.execute(f"INSERT INTO {table} (event_id, stream_id, stream_version, consumer)"
                          " VALUES (%s, %s, %s, %s)",
                          (event["event_id"], event["stream_id"], event["stream_version"], name))
                if name != "slow" and event["global_position"] == flaky and not flaky_failed.is_set():
                    flaky_failed.set()
                    raise RuntimeError("failed after writing")
                if name == "slow" and event["global_position"] == stall:
                    stalled.set()
                    gate.wait(60)
            return handler

        def landed():
            return sql(f"SELECT count(DISTINCT event_id) FROM {table} WHERE stream_id LIKE %s",
                       (f"{category}-%",))[0][0]

        # the slow worker takes every event in one claim, with a short lease,
        # and stalls in the sixth one, its transaction open, until the lease
        # is long gone
        slow = SubscriptionWorker(subscription, "python-slow", handler_for("slow"), transactional=True,
                                  lease="1 second", wait=0.2,
                                  on_error=lambda err, what: slow_errors.append(f"{what} {err.sqlstate}"))
        fast = [SubscriptionWorker(subscription, f"python-{name}", handler_for(name), transactional=True, wait=0.2,
                                   on_error=lambda err, what, name=name: errors.append(f"{name} {what}: {err}"))
                for name in ("f1", "f2")]
        slow.start()
        try:
            wait_until("the slow worker to stall", stalled.is_set)
            for w in fast:
                w.start()
            # its lease expires: the others take its partitions and its events again
            wait_until("every event to land, committed by the other workers",
                       lambda: landed() == len(events) and in_flight(subscription) == 0)
            gate.set()
            wait_until("the slow worker's ack to be refused", lambda: len(slow_errors) > 0)
            append_steps(streams, 1, first=4)
            wait_until("the new events to land",
                       lambda: landed() == len(events) + len(streams) and in_flight(subscription) == 0)
        finally:
            gate.set()
            stop_all([slow] + fast)
        self.assertEqual(errors, [])
        self.assertEqual(slow_errors, ["batch 55000"], "the slow worker's ack was refused: its lease had expired")
        self.assertEqual([(p, attempt) for name, p, attempt in calls if name == "slow" and p <= events[-1][0]],
                         [(e[0], 1) for e in events], "the slow worker handled its whole batch in its transaction")
        everything = category_events(category)
        rows = sql(f"SELECT stream_id, stream_version, event_id, consumer FROM {table} ORDER BY id")
        self.assertEqual(sorted(r[2] for r in rows), sorted(e[3] for e in everything),
                         "every event landed exactly once")
        self.assertEqual([r for r in rows if r[3] == "slow" and r[1] <= 3], [],
                         "nothing of the refused batch landed")
        self.assertEqual(versions_by_stream(rows), versions_by_stream([e[1:] for e in everything]),
                         "each stream landed in order")
        self.assertEqual(len([c for c in calls if c[0] != "slow" and c[1] == flaky]), 2,
                         "the event that failed after writing was handled again, and landed once")


if __name__ == "__main__":
    unittest.main(verbosity=2)
