"""event_store_client: a Python client of the event_store PostgreSQL
extension, on psycopg 3.

    append_with_retry(conn, stream_id, events)  append with optimistic concurrency,
                                                 retried on SE001, 40001 and 40P01,
                                                 idempotent by event id
    Follower                                     follows read_all with a cursor, woken
                                                 by wait_for_events() or LISTEN event_store
    SubscriptionWorker                           one consumer of a subscription's group:
                                                 claim_events (long polling) -> handler
                                                 -> ack_events / nack_event
    SagaWorker                                   works external saga steps:
                                                 claim_saga_steps -> complete / fail
    retry_saga, resolve_saga,                    operator calls
    replay_parked, skip_parked

Connections: connect() uses DATABASE_URL when set, else libpq's PG*
environment variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD).
Every class here opens connections of its own with it; a psycopg
connection serves one thread at a time.
"""

from __future__ import annotations

import datetime
import enum
import os
import random
import select
import threading
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Union

import psycopg
from psycopg import pq
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

__version__ = "0.3.0"

__all__ = [
    "AppendResult",
    "Connection",
    "Decide",
    "DEADLOCK_DETECTED",
    "DUPLICATE_EVENT_ID",
    "Event",
    "Events",
    "QUERY_CANCELED",
    "SERIALIZATION_FAILURE",
    "StepFunction",
    "StepResult",
    "WRONG_EXPECTED_VERSION",
    "Follower",
    "PermanentError",
    "READ_VERSION",
    "SagaWorker",
    "SubscriptionWorker",
    "append_with_retry",
    "connect",
    "replay_parked",
    "resolve_saga",
    "retry_saga",
    "skip_parked",
    "with_event_ids",
]

# SQLSTATEs the client acts on
WRONG_EXPECTED_VERSION = "SE001"  # another writer appended first
DUPLICATE_EVENT_ID = "SE002"  # an event id is in the store already
SERIALIZATION_FAILURE = "40001"
DEADLOCK_DETECTED = "40P01"
QUERY_CANCELED = "57014"  # a wait ended by stop()
TRANSIENT = frozenset((SERIALIZATION_FAILURE, DEADLOCK_DETECTED))

Connection = psycopg.Connection[Any]
Event = Dict[str, Any]  # an event object of event_store.append, or a row
Events = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]
Decide = Callable[[int, int], Optional[Events]]
StepResult = Optional[Mapping[str, Any]]
StepFunction = Callable[[Dict[str, Any], Dict[str, Any]], StepResult]


def connect(conninfo: Optional[str] = None, **kwargs: Any) -> Connection:
    """An autocommit connection: conninfo, else DATABASE_URL, else the PG* variables."""
    if conninfo is None:
        conninfo = os.environ.get("DATABASE_URL", "")
    kwargs.setdefault("autocommit", True)
    return psycopg.connect(conninfo, **kwargs)


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Exponential backoff with full jitter, in seconds."""
    return random.uniform(0, min(cap, base * 2 ** min(attempt - 1, 30)))


@dataclass
class AppendResult:
    version: int  # the stream's version after the events
    attempts: int
    appended: bool  # False only when the decide function returned None
    event_ids: List[str] = field(default_factory=list)  # the batch's ids, in its order


class _Read(enum.Enum):
    VERSION = 0


# append_with_retry's default: read stream_version() before an attempt
READ_VERSION = _Read.VERSION


def with_event_ids(events: Events) -> List[Event]:
    """The events as a list, each with an "id" (a random uuid for those that
    have none): the ids make a repeated append of the same batch write
    nothing the second time.  The caller's dicts are not changed."""
    items = [events] if isinstance(events, Mapping) else list(events)
    return [dict(e) if "id" in e else {**e, "id": str(uuid.uuid4())} for e in items]


def _own_transactions(conn: Connection) -> bool:
    """Does each statement of the connection run in a transaction of its own
    (autocommit, outside a transaction)?"""
    return conn.autocommit and conn.info.transaction_status == pq.TransactionStatus.IDLE


def append_with_retry(conn: Connection, stream_id: str, events: Union[Events, Decide],
                      max_attempts: int = 10, base_delay: float = 0.005, max_delay: float = 0.2,
                      on_conflict: Optional[Callable[[psycopg.Error, int], None]] = None, *,
                      expected_version: Union[int, None, _Read] = READ_VERSION,
                      on_retry: Optional[Callable[[psycopg.Error, int], None]] = None) -> AppendResult:
    """Append to a stream with optimistic concurrency, retrying what can be retried.

    events is an event dict ({"type", "data", "metadata", "id",
    "schema_version"}) or a list of them, or a function (version, attempt)
    -> events called with the stream's current version before an attempt
    (again after a conflict), so that the caller decides again (returning
    None appends nothing).  expected_version fixes the version the stream
    must have (0: it must not exist yet; None: any): stream_version() is
    then not read, and a conflict (SE001) is raised, not retried.

    Every event gets an id before the first attempt (one of its own is
    kept), so the append is idempotent.  Each attempt reads
    stream_version(), then appends with that version as expected_version;
    on SQLSTATE SE001 (another writer got there first) it waits a random,
    growing delay, reads again and decides again.  A serialization failure
    (40001) or a deadlock (40P01) sends the same batch with the same
    expected version again, on an autocommit connection outside a
    transaction (otherwise the transaction is the caller's to retry).  SE002 for one
    of the batch's ids is checked once: when that very batch is in the
    stream already (an earlier call sent it), the append succeeds without
    writing.  Other errors, a lost connection and any error on the last
    attempt are raised: to send a batch again on another connection, give
    it ids first (with_event_ids) and pass the same list again.  The append
    runs in conn.transaction(): its own transaction on an autocommit
    connection, a savepoint inside an open transaction, so that a conflict
    does not abort the caller's work.  on_conflict(err, attempt) is called
    before retrying after SE001, on_retry(err, attempt) before every retry.
    """
    fixed_version = not isinstance(expected_version, _Read)
    retry_transient = _own_transactions(conn)
    decide: Optional[Decide] = events if callable(events) else None
    fixed = None if callable(events) else with_event_ids(events)
    expected: Optional[int] = None
    batch: Optional[List[Event]] = None  # decided and not known to be refused
    attempt = 0
    while True:
        attempt += 1
        if batch is None:
            expected = (_stream_version(conn, stream_id) if isinstance(expected_version, _Read)
                        else expected_version)
            if decide is not None:
                version = _stream_version(conn, stream_id) if expected is None else expected
                decided = decide(version, attempt)
                if decided is None:
                    return AppendResult(version, attempt, False, [])
                batch = with_event_ids(decided)
            else:
                assert fixed is not None
                batch = fixed
        event_ids = [str(e["id"]) for e in batch]
        try:
            return AppendResult(_append(conn, stream_id, batch, expected), attempt, True, event_ids)
        except psycopg.Error as failure:
            err = failure
            if err.sqlstate == DUPLICATE_EVENT_ID and expected is not None:
                # sent before (a lost answer, an earlier call)?  With no
                # expected version the same batch anywhere in the stream is a
                # success, and anything else SE002 again: this never writes.
                try:
                    return AppendResult(_append(conn, stream_id, batch, None), attempt, True, event_ids)
                except psycopg.Error as again:
                    if again.sqlstate not in TRANSIENT or not retry_transient:
                        raise failure from None
                    err = again
            conflict = err.sqlstate == WRONG_EXPECTED_VERSION and not fixed_version
            transient = err.sqlstate in TRANSIENT and retry_transient
            if not (conflict or transient) or attempt >= max_attempts:
                raise err
            if conflict:
                batch = None  # refused: read and decide again
                if on_conflict is not None:
                    on_conflict(err, attempt)
            if on_retry is not None:
                on_retry(err, attempt)
        time.sleep(backoff_delay(attempt, base_delay, max_delay))


def _stream_version(conn: Connection, stream_id: str) -> int:
    row = conn.execute("SELECT event_store.stream_version(%s)", (stream_id,)).fetchone()
    assert row is not None
    return int(row[0])


def _append(conn: Connection, stream_id: str, batch: List[Event], expected: Optional[int]) -> int:
    with conn.transaction():
        row = conn.execute("SELECT event_store.append(%s, %s, %s)",
                           (stream_id, Jsonb(batch), expected)).fetchone()
    assert row is not None
    return int(row[0])


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

    def __init__(self, handler: Callable[[Event], None], after: int = 0, batch_size: int = 500,
                 wake: str = "wait_for_events", wait_timeout: float = 5.0,
                 conninfo: Optional[str] = None) -> None:
        if wake not in ("wait_for_events", "listen"):
            raise ValueError(f'wake must be "wait_for_events" or "listen", not {wake!r}')
        self.handler = handler
        self.position = after
        self.batch_size = batch_size
        self.wake = wake
        self.wait_timeout = wait_timeout
        self.conninfo = conninfo
        self.error: Optional[BaseException] = None  # what ended a run() in a thread
        self._stopping = threading.Event()
        self._waiting = False
        self._conn: Optional[Connection] = None
        self._thread: Optional[threading.Thread] = None
        self._heard_head = 0
        # stop() writes to this pipe to end a wait of the listen mode
        self._wake_r: Optional[int]
        self._wake_w: Optional[int]
        self._wake_r, self._wake_w = os.pipe()
        self._pipe_lock = threading.Lock()

    def start(self) -> Follower:
        self._thread = threading.Thread(target=self._run_in_thread, name=f"follower-{self.wake}",
                                        daemon=True)
        self._thread.start()
        return self

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as err:  # noqa: B036 (kept for the caller)
            self.error = err

    def run(self) -> None:
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

    def _close_pipe(self) -> None:
        with self._pipe_lock:
            if self._wake_r is not None and self._wake_w is not None:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = None

    def _on_notify(self, notify: psycopg.Notify) -> None:
        if notify.channel == "event_store" and notify.payload.isdigit():
            self._heard_head = max(self._heard_head, int(notify.payload))

    def _wait_for_more(self, conn: Connection) -> None:
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
        wake_r = self._wake_r
        select.select([conn.fileno()] + ([] if wake_r is None else [wake_r]), [], [], self.wait_timeout)

    def stop(self, timeout: float = 10.0) -> None:
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


def retry_saga(conn: Connection, saga_id: Union[str, uuid.UUID]) -> None:
    """An operator's retry: what stopped the saga (a compensation that failed,
    a step that failed after its pivot, see event_store.saga_problems) gets a
    fresh round of attempts.  Needs the privileges of the saga's owner."""
    conn.execute("SELECT event_store.retry_saga(%s)", (saga_id,))


def resolve_saga(conn: Connection, saga_id: Union[str, uuid.UUID], status: str, note: str) -> None:
    """A person settles a stuck saga as "completed" or "compensated"; the
    note is recorded in its stream (SagaResolved)."""
    conn.execute("SELECT event_store.resolve_saga(%s, %s, %s)", (saga_id, status, note))


def replay_parked(conn: Connection, subscription: str, stream_id: Optional[str] = None) -> int:
    """An operator's answer to a parked stream of a subscription: deliver it
    again from its parked event, attempts reset (every parked stream of the
    subscription when stream_id is None).  Returns the number of streams."""
    row = conn.execute("SELECT event_store.replay_parked(%s, %s)", (subscription, stream_id)).fetchone()
    assert row is not None
    return int(row[0])


def skip_parked(conn: Connection, subscription: str, stream_id: Optional[str] = None) -> int:
    """Or acknowledge its held events without delivering them (recorded with
    who skipped them).  Returns the number of streams."""
    row = conn.execute("SELECT event_store.skip_parked(%s, %s)", (subscription, stream_id)).fetchone()
    assert row is not None
    return int(row[0])


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

    def __init__(self, name: str, handlers: Mapping[str, Mapping[str, StepFunction]],
                 max_count: int = 10, lease: str = "30 seconds", poll_interval: float = 0.2,
                 on_error: Optional[Callable[[psycopg.Error, Dict[str, Any]], None]] = None,
                 conninfo: Optional[str] = None) -> None:
        self.name = name
        self.handlers = handlers
        self.step_names = list(handlers)
        self.max_count = max_count
        self.lease = lease
        self.poll_interval = poll_interval
        self.on_error = on_error or (lambda err, step: print(
            f"{name}: {step.get('step')} of saga {step.get('saga_id')}: {err}"))
        self.conninfo = conninfo
        self.error: Optional[BaseException] = None
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def run_once(self, conn: Connection) -> int:
        """Claim and work one batch; returns the number of steps claimed."""
        steps = conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM event_store.claim_saga_steps(%s, %s, %s::text[], %s::interval)",
            (self.name, self.max_count, self.step_names, self.lease)).fetchall()
        for step in steps:
            self._work(conn, step)
        return len(steps)

    def _work(self, conn: Connection, step: Dict[str, Any]) -> None:
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

    def _report(self, conn: Connection, sql: str, params: Sequence[Any], step: Dict[str, Any]) -> None:
        try:
            conn.execute(sql, params)
        except psycopg.Error as err:
            self.on_error(err, step)

    def run(self) -> None:
        with connect(self.conninfo) as conn:
            while not self._stopping.is_set():
                claimed = self.run_once(conn)
                if claimed < self.max_count:
                    self._stopping.wait(self.poll_interval)

    def start(self) -> SagaWorker:
        def target() -> None:
            try:
                self.run()
            except BaseException as err:  # noqa: B036 (kept for the caller)
                self.error = err
        self._thread = threading.Thread(target=target, name=f"saga-worker-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
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

    def __init__(self) -> None:
        self.highest: Optional[int] = None  # highest position handled
        self.lowest_left: Optional[int] = None  # lowest position left unhandled

    def handled(self, event: Event) -> None:
        p = event["global_position"]
        self.highest = p if self.highest is None else max(self.highest, p)

    def left(self, event: Event) -> None:
        p = event["global_position"]
        self.lowest_left = p if self.lowest_left is None else min(self.lowest_left, p)

    def position(self) -> Optional[int]:
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

    def __init__(self, subscription: str, consumer: str, handler: Callable[[Event, Connection], None],
                 max_count: int = 100, lease: str = "30 seconds", wait: float = 1.0,
                 transactional: bool = False,
                 on_error: Optional[Callable[[psycopg.Error, str], None]] = None,
                 conninfo: Optional[str] = None) -> None:
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
        self.error: Optional[BaseException] = None  # what ended a run() in a thread
        self._stopping = threading.Event()
        self._claiming = False
        self._pid: Optional[int] = None
        self._thread: Optional[threading.Thread] = None

    def run(self) -> None:
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

    def _claim(self, conn: Connection) -> Optional[List[Event]]:
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

    def _handle_batch(self, conn: Connection, events: List[Event]) -> None:
        """Hand a batch to the handler, nack what failed, ack what was handled."""
        failed_streams: Set[str] = set()
        up_to = _AckPosition()
        acknowledged = 0

        def in_transaction() -> AbstractContextManager[Any]:
            return conn.transaction() if self.transactional else nullcontext()

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
                    row = conn.execute("SELECT event_store.ack_events(%s, %s, %s)",
                                       (self.subscription, self.consumer, position)).fetchone()
                    acknowledged = 0 if row is None else int(row[0])
            self.acknowledged += acknowledged
        except psycopg.Error as err:
            self.on_error(err, "batch")
            # what we did not acknowledge goes out again, to whoever claims next
            self._release(conn)

    def _release(self, conn: Connection) -> None:
        try:
            conn.execute("SELECT event_store.release_events(%s, %s)", (self.subscription, self.consumer))
        except psycopg.Error as err:
            self.on_error(err, "release")

    def start(self) -> SubscriptionWorker:
        def target() -> None:
            try:
                self.run()
            except BaseException as err:  # noqa: B036 (kept for the caller)
                self.error = err
        self._thread = threading.Thread(target=target, name=f"subscription-worker-{self.consumer}",
                                        daemon=True)
        self._thread.start()
        return self

    @property
    def stopping(self) -> bool:
        """True once stop() was called."""
        return self._stopping.is_set()

    def _cancel_wait(self) -> None:
        pid = self._pid
        if pid is None:
            return
        try:
            with connect(self.conninfo) as other:
                other.execute(_CANCEL_WAITING_CLAIM, (pid,))
        except psycopg.Error:
            pass  # the wait then ends after `wait` seconds

    def stop(self, timeout: float = 10.0) -> None:
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
