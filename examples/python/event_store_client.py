"""A small Python client of the event_store extension, on psycopg 3.

    append_with_retry(conn, stream_id, events)  optimistic append, retried on SE001
    Follower                                     follows read_all with a cursor, woken
                                                 by wait_for_events() or LISTEN event_store
    SagaWorker                                   works external saga steps:
                                                 claim_saga_steps -> complete / fail

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
