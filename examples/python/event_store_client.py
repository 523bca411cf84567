"""A small Python client of the event_store extension, on psycopg 3.

    append_with_retry(conn, stream_id, events)  optimistic append, retried on SE001
    Follower                                     follows read_all with a cursor, woken
                                                 by wait_for_events() or LISTEN event_store
    SagaWorker                                   works external saga steps:
                                                 claim_saga_steps -> complete / fail
    SubscriptionWorker                           one consumer of a subscription's group:
                                                 claim_events -> handler -> ack / nack

Connections: connect() uses DATABASE_URL when set, else libpq's PG*
environment variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
Every class here opens connections of its own with it; a psycopg
connection serves one thread at a time.
"""

import datetime
import os
import random
import select
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# SQLSTATE of event_store's wrong_expected_version error
WRONG_EXPECTED_VERSION = "SE001"
QUERY_CANCELED = "57014"


def connect(conninfo=None, **kwargs):
    """An autocommit connection: conninfo, else DATABASE_URL, else the PG* variables."""
    if conninfo is None:
        conninfo = os.environ.get("DATABASE_URL", "")
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(conninfo, **kwargs)


def backoff_delay(attempt, base, cap):
    """Exponential backoff with full jitter, in seconds."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 30)))


@dataclass
class AppendResult:
    version: int  # the stream's version after the append
    attempts: int
    appended: bool


def append_with_retry(conn, stream_id, events, max_attempts=10, base_delay=0.005,
                      max_delay=0.2, on_conflict=None):
    """Append to a stream with optimistic concurrency, retrying on conflicts.

    events is an event dict or a list of them, or a function
    (version, attempt) -> events called with the stream's current version
    before every attempt, so that the caller decides again after a conflict
    (returning None appends nothing).

    Each attempt reads stream_version(), then appends with that version as
    expected_version; on SQLSTATE SE001 (another writer got there first) it
    waits a random, growing delay and starts over.  Other errors, and SE001
    on the last attempt, are raised.  The append runs in conn.transaction():
    its own transaction on an autocommit connection, a savepoint inside an
    open transaction, so that a conflict does not abort the caller's work.
    """
    decide = events if callable(events) else (lambda version, attempt: events)
    attempt = 0
    while True:
        attempt += 1
        expected = conn.execute("SELECT event_store.stream_version(%s)", (stream_id,)).fetchone()[0]
        batch = decide(expected, attempt)
        if batch is None:
            return AppendResult(expected, attempt, False)
        try:
            with conn.transaction():
                version = conn.execute(
                    "SELECT event_store.append(%s, %s, %s)", (stream_id, Jsonb(batch), expected)
                ).fetchone()[0]
            return AppendResult(version, attempt, True)
        except psycopg.Error as err:
            if err.sqlstate != WRONG_EXPECTED_VERSION or attempt >= max_attempts:
                raise
            if on_conflict is not None:
                on_conflict(err, attempt)
        time.sleep(backoff_delay(attempt, base_delay, max_delay))


class Follower:
    """Follows every event of the store in global position order.

    handler(event)  called once per event (a dict by column of event_store.event), in
                    order; the cursor moves past an event only when its
                    handler returned
    after           the position to start after (default 0: from the start)
    batch_size      events per read_all call
    wake            "wait_for_events" (default): block in
                    event_store.wait_for_events(cursor, timeout);
                    "listen": LISTEN event_store, whose notifications the
                    background worker sends with the head position as payload
    wait_timeout    longest wait, in seconds, before reading again anyway

    It uses a connection of its own and pages with read_all(cursor,
    batch_size), keeping the largest global_position it handled as its
    cursor (`position`): read_all is gap-safe, so no event is skipped, even
    one that commits after events with higher positions.  run() follows in
    the calling thread until stop(); start() runs it in a thread.
    """

    def __init__(self, handler, after=0, batch_size=500, wake="wait_for_events",
                 wait_timeout=5.0, conninfo=None):
        if wake not in ("wait_for_events", "listen"):
            raise ValueError(f'wake must be "wait_for_events" or "listen", not {wake!r}')
        self.handler = handler
        self.position = after
        self.batch_size = batch_size
        self.wake = wake
        self.wait_timeout = wait_timeout
        self.conninfo = conninfo
        self.error = None  # what ended a run() in a thread
        self._stopping = threading.Event()
        self._waiting = False
        self._conn = None
        self._thread = None
        self._heard_head = 0
        # stop() writes to this pipe to end a wait of the listen mode
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_lock = threading.Lock()

    def start(self):
        self._thread = threading.Thread(target=self._run_in_thread, name=f"follower-{self.wake}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run_in_thread(self):
        try:
            self.run()
        except BaseException as err:  # noqa: B036 (kept for the caller)
            self.error = err

    def run(self):
        with connect(self.conninfo) as conn:
            self._conn = conn
            try:
                if self.wake == "listen":
                    conn.add_notify_handler(self._on_notify)
                    conn.execute("LISTEN event_store")
                while not self._stopping.is_set():
                    rows = conn.cursor(row_factory=dict_row).execute(
                        "SELECT * FROM event_store.read_all(%s, %s)",
                        (self.position, self.batch_size)).fetchall()
                    for event in rows:
                        self.handler(event)
                        self.position = event["global_position"]
                        if self._stopping.is_set():
                            break
                    if len(rows) < self.batch_size and not self._stopping.is_set():
                        self._wait_for_more(conn)
            except psycopg.Error as err:
                # a wait cancelled by stop() is no error
                if not (self._stopping.is_set() and err.sqlstate == QUERY_CANCELED):
                    raise
            finally:
                self._conn = None
                self._close_pipe()

    def _close_pipe(self):
        with self._pipe_lock:
            if self._wake_w is not None:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = None

    def _on_notify(self, notify):
        if notify.channel == "event_store" and notify.payload.isdigit():
            self._heard_head = max(self._heard_head, int(notify.payload))

    def _wait_for_more(self, conn):
        """Wait until the head passes the cursor, stop() or the time limit."""
        if self.wake == "wait_for_events":
            self._waiting = True
            try:
                conn.execute("SELECT event_store.wait_for_events(%s, %s)",
                             (self.position, datetime.timedelta(seconds=self.wait_timeout)))
            finally:
                self._waiting = False
            return
        if self._heard_head > self.position:
            return  # announced while we were reading
        # a notification makes the socket readable; the next query hands it
        # to _on_notify.  stop() writes to the pipe.
        select.select([conn.fileno(), self._wake_r], [], [], self.wait_timeout)

    def stop(self, timeout=10.0):
        """Stop after the current event and wait for the thread to end.

        A wait_for_events() in progress is cancelled (again, should the
        cancel arrive before the wait began).
        """
        self._stopping.set()
        with self._pipe_lock:
            if self._wake_w is not None:
                os.write(self._wake_w, b"x")
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            conn = self._conn
            if self._waiting and conn is not None:
                conn.cancel()
            self._thread.join(0.1)
        if self._thread.is_alive():
            raise TimeoutError("the follower did not stop")
        if self.error is not None:
            raise self.error


def retry_saga(conn, saga_id):
    """An operator's retry: what stopped the saga (a compensation that failed,
    a step that failed after its pivot, see event_store.saga_problems) gets a
    fresh round of attempts.  Needs the privileges of the saga's owner."""
    conn.execute("SELECT event_store.retry_saga(%s)", (saga_id,))


def resolve_saga(conn, saga_id, status, note):
    """A person settles a stuck saga as "completed" or "compensated"; the
    note is recorded in its stream (SagaResolved)."""
    conn.execute("SELECT event_store.resolve_saga(%s, %s, %s)", (saga_id, status, note))


class PermanentError(Exception):
    """A handler error that must not be retried: the step fails for good and
    the saga compensates its completed steps."""

    retryable = False


class SagaWorker:
    """Works external saga steps.

    name        the worker's name, recorded as the lease owner
    handlers    {step_name: {"action": fn, "compensate": fn}}: action(data,
                step) gets the saga's data, compensate(data, step) the step's
                compensation data (its action's result); both return the
                step's result (a dict, or None).  A step without
                "compensate" needs nothing undone: its compensation is
                reported done at once.
    max_count   steps claimed at a time (default 10)
    lease       how long a claim is held (default '30 seconds'): a step whose
                worker did not report within it is handed out again
    poll_interval  pause, in seconds, when nothing was claimable
    on_error(err, step)  a step report failed (e.g. its lease expired and
                another worker had it); default: print it

    Each round calls claim_saga_steps(name, max_count, <step names>, lease)
    and reports each claimed step with complete_saga_step(saga_id, step,
    result), or, when its handler raised, fail_saga_step(saga_id, step,
    message, retryable), retryable unless the exception has
    retryable = False (see PermanentError).  run() works in the calling
    thread until stop(); start() runs it in a thread.  The worker has a
    connection of its own.
    """

    def __init__(self, name, handlers, max_count=10, lease="30 seconds", poll_interval=0.2,
                 on_error=None, conninfo=None):
        self.name = name
        self.handlers = handlers
        self.step_names = list(handlers)
        self.max_count = max_count
        self.lease = lease
        self.poll_interval = poll_interval
        self.on_error = on_error or (lambda err, step: print(
            f"{name}: {step.get('step')} of saga {step.get('saga_id')}: {err}"))
        self.conninfo = conninfo
        self.error = None
        self._stopping = threading.Event()
        self._thread = None

    def run_once(self, conn):
        """Claim and work one batch; returns the number of steps claimed."""
        steps = conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM event_store.claim_saga_steps(%s, %s, %s::text[], %s::interval)",
            (self.name, self.max_count, self.step_names, self.lease)).fetchall()
        for step in steps:
            self._work(conn, step)
        return len(steps)

    def _work(self, conn, step):
        handler = self.handlers.get(step["step"], {})
        fn = handler.get("action" if step["kind"] == "action" else "compensate")
        try:
            result = fn(step["data"], step) if fn else None
        except Exception as err:  # the step failed
            retryable = getattr(err, "retryable", True) is not False
            self._report(conn, "SELECT event_store.fail_saga_step(%s, %s, %s, %s)",
                         (step["saga_id"], step["step"], str(err) or type(err).__name__, retryable),
                         step)
            return
        self._report(conn, "SELECT event_store.complete_saga_step(%s, %s, %s)",
                     (step["saga_id"], step["step"], None if result is None else Jsonb(result)),
                     step)

    def _report(self, conn, sql, params, step):
        try:
            conn.execute(sql, params)
        except psycopg.Error as err:
            self.on_error(err, step)

    def run(self):
        with connect(self.conninfo) as conn:
            while not self._stopping.is_set():
                claimed = self.run_once(conn)
                if claimed < self.max_count:
                    self._stopping.wait(self.poll_interval)

    def start(self):
        def target():
            try:
                self.run()
            except BaseException as err:  # noqa: B036 (kept for the caller)
                self.error = err
        self._thread = threading.Thread(target=target, name=f"saga-worker-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout=10.0):
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the saga worker did not stop")
        if self.error is not None:
            raise self.error


class _AckPosition:
    """Where one ack_events call may acknowledge a batch up to.

    A claim hands out redeliveries and retried streams before new events,
    so a batch is not in global position order: acknowledging up to the
    highest position handled is right only when no event below it was left
    unhandled (the batch broke off at stop()).  Events a nack took back are
    not pending any more and do not count.
    """

    def __init__(self):
        self.highest = None  # highest position handled
        self.lowest_left = None  # lowest position left unhandled

    def handled(self, event):
        p = event["global_position"]
        self.highest = p if self.highest is None else max(self.highest, p)

    def left(self, event):
        p = event["global_position"]
        self.lowest_left = p if self.lowest_left is None else min(self.lowest_left, p)

    def position(self):
        """The position to acknowledge up to, or None: nothing to acknowledge."""
        if self.highest is None:
            return None
        if self.lowest_left is not None and self.lowest_left <= self.highest:
            # handled events above it stay pending: delivered again after release
            return self.lowest_left - 1 if self.lowest_left > 1 else None
        return self.highest


# Cancels a claim only while it waits for events (never a statement after it)
_CANCEL_WAITING_CLAIM = """
SELECT pg_cancel_backend(pid) FROM pg_stat_activity
 WHERE pid = %s AND state = 'active' AND wait_event_type = 'Extension'
   AND query LIKE '%%event_store.claim_events(%%'
"""


class SubscriptionWorker:
    """One consumer of a subscription (a consumer group on the log, made with
    event_store.create_subscription): several workers with different names,
    in this process or anywhere else, share the subscription's partitions.

    subscription    the subscription's name
    consumer        this worker's name in the group (unique among its workers)
    handler(event, conn)  called once per event, in order; event is a dict by
                    column of claim_events (partition, attempt,
                    global_position, stream_id, stream_version, event_id,
                    event_type, data, metadata, schema_version, recorded_at),
                    conn the worker's connection.  Raising fails the event.
    max_count       events claimed at a time (default 100)
    lease           how long the partitions stay ours without a claim
                    (default '30 seconds'): longer than a batch takes to
                    handle, plus wait
    wait            how long, in seconds, a claim waits for events (default
                    1.0).  A waiting claim is one transaction: partitions it
                    takes or gives back, and a new worker's arrival, show
                    only when it returns, so wait is also how fast
                    partitions move between workers.
    transactional   False (default): each event's handler runs on its own,
                    the ack follows the batch (at-least-once: after a crash
                    or an expired lease, events are handled again;
                    deduplicate by event_id).  True: the batch is one
                    transaction, each handler inside a savepoint, the ack its
                    last statement, so the handler's writes in this database
                    and the ack commit together (exactly-once); a refused ack
                    (55000: the lease expired and another worker has the
                    events) rolls them back.
    on_error(err, what)  a call of the worker failed (what: "claim", "batch"
                    or "release"); default: print it

    Each round claims with claim_events(subscription, consumer, max_count,
    lease, wait) and hands the events to the handler in order.  When a
    handler raises, the worker nacks that event with nack_event(...,
    error): it comes again after the subscription's backoff, and the stream
    is parked after its max_attempts.  The later events of that stream in
    the batch are not handled (nack_event took them back: they follow the
    retry); the other streams go on.  One ack_events call per batch
    acknowledges up to the highest position handled (see _AckPosition).
    When a batch breaks off (a refused ack, a lost connection) the worker
    releases its partitions, so that what it did not acknowledge is
    delivered again: claim_events never hands a consumer its own
    unacknowledged events again.  stop() lets the event in hand finish,
    acknowledges what was handled and releases the partitions with
    release_events(): another worker takes over at once, and the rest of
    the batch goes to it.  run() works in the calling thread until stop()
    or a failed claim (no such subscription, no privilege, the server
    gone); start() runs it in a thread.  The worker has a connection of
    its own.
    """

    def __init__(self, subscription, consumer, handler, max_count=100, lease="30 seconds",
                 wait=1.0, transactional=False, on_error=None, conninfo=None):
        if not subscription or not consumer or not callable(handler):
            raise ValueError("subscription, consumer and a handler function are required")
        self.subscription = subscription
        self.consumer = consumer
        self.handler = handler
        self.max_count = max_count
        self.lease = lease
        self.wait = wait
        self.transactional = transactional
        self.on_error = on_error or (lambda err, what: print(
            f"{subscription}/{consumer}: {what}: {err}"))
        self.conninfo = conninfo
        self.acknowledged = 0  # events acknowledged so far
        self.error = None  # what ended a run() in a thread
        self._stopping = threading.Event()
        self._claiming = False
        self._pid = None
        self._thread = None

    def run(self):
        with connect(self.conninfo) as conn:
            self._pid = conn.info.backend_pid
            try:
                while not self._stopping.is_set():
                    events = self._claim(conn)
                    if events is None:
                        break  # a wait cancelled by stop()
                    if events:
                        self._handle_batch(conn, events)
            finally:
                self._release(conn)
                self._pid = None

    def _claim(self, conn):
        """One claim: the events, or None when stop() cancelled its wait."""
        self._claiming = True
        try:
            return conn.cursor(row_factory=dict_row).execute(
                "SELECT * FROM event_store.claim_events(%s, %s, %s, %s::interval, %s)",
                (self.subscription, self.consumer, self.max_count, self.lease,
                 datetime.timedelta(seconds=self.wait))).fetchall()
        except psycopg.Error as err:
            if self._stopping.is_set() and err.sqlstate == QUERY_CANCELED:
                return None
            self.on_error(err, "claim")
            raise
        finally:
            self._claiming = False

    def _handle_batch(self, conn, events):
        """Hand a batch to the handler, nack what failed, ack what was handled."""
        failed_streams = set()
        up_to = _AckPosition()
        acknowledged = 0
        in_transaction = conn.transaction if self.transactional else nullcontext
        try:
            with in_transaction():
                for event in events:
                    if self._stopping.is_set():
                        up_to.left(event)  # goes to the next holder
                        continue
                    if event["stream_id"] in failed_streams:
                        continue  # taken back by the nack: follows the retry
                    try:
                        with in_transaction():  # a savepoint
                            self.handler(event, conn)
                    except Exception as err:  # the event failed
                        failed_streams.add(event["stream_id"])
                        conn.execute("SELECT event_store.nack_event(%s, %s, %s, %s)",
                                     (self.subscription, self.consumer, event["global_position"],
                                      str(err) or type(err).__name__))
                        continue
                    up_to.handled(event)
                position = up_to.position()
                if position is not None:
                    acknowledged = conn.execute("SELECT event_store.ack_events(%s, %s, %s)",
                                                (self.subscription, self.consumer, position)).fetchone()[0]
            self.acknowledged += acknowledged
        except psycopg.Error as err:
            self.on_error(err, "batch")
            # what we did not acknowledge goes out again, to whoever claims next
            self._release(conn)

    def _release(self, conn):
        try:
            conn.execute("SELECT event_store.release_events(%s, %s)", (self.subscription, self.consumer))
        except psycopg.Error as err:
            self.on_error(err, "release")

    def start(self):
        def target():
            try:
                self.run()
            except BaseException as err:  # noqa: B036 (kept for the caller)
                self.error = err
        self._thread = threading.Thread(target=target, name=f"subscription-worker-{self.consumer}",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def stopping(self):
        """True once stop() was called."""
        return self._stopping.is_set()

    def _cancel_wait(self):
        pid = self._pid
        if pid is None:
            return
        try:
            with connect(self.conninfo) as other:
                other.execute(_CANCEL_WAITING_CLAIM, (pid,))
        except psycopg.Error:
            pass  # the wait then ends after `wait` seconds

    def stop(self, timeout=10.0):
        """Stop after the event in hand: what was handled is acknowledged, the
        partitions are released; wait for the thread to end.  A claim
        waiting for events is cancelled, only while it waits."""
        self._stopping.set()
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            if self._claiming:
                self._cancel_wait()
            self._thread.join(0.05)
        if self._thread.is_alive():
            raise TimeoutError("the subscription worker did not stop")
        if self.error is not None:
            raise self.error
