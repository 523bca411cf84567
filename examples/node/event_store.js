'use strict';
// event-store-client: a Node.js client of the event_store PostgreSQL
// extension, on the `pg` driver:
//
//   appendWithRetry(db, streamId, events)   append with optimistic concurrency,
//                                            retried on SE001, 40001, 40P01 and
//                                            a lost connection, idempotent by
//                                            event id
//   Follower                                 follows read_all with a cursor, woken by
//                                            wait_for_events() or LISTEN event_store
//   SubscriptionWorker                       one consumer of a subscription's group:
//                                            claim_events (long polling) -> handler
//                                            -> ack_events / nack_event
//   SagaWorker                               works external saga steps:
//                                            claim_saga_steps -> complete / fail
//   retrySaga, resolveSaga,                  operator calls
//   replayParked, skipParked
//
// Types: event_store.d.ts.  Connections: pg reads the usual PG* environment
// variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD); DATABASE_URL,
// when set, is used as the connection string instead.

const crypto = require('node:crypto');
const pg = require('pg');

// SQLSTATEs the client acts on
const SQLSTATE = Object.freeze({
  // event_store: another writer appended first (retried with a fresh read)
  WRONG_EXPECTED_VERSION: 'SE001',
  // event_store: an event id is in the store already
  DUPLICATE_EVENT_ID: 'SE002',
  // transient: the append is retried as it was
  SERIALIZATION_FAILURE: '40001',
  DEADLOCK_DETECTED: '40P01',
  // a wait ended by stop()
  QUERY_CANCELED: '57014',
  // a subscription's lease expired: its ack is refused
  OBJECT_NOT_IN_PREREQUISITE_STATE: '55000',
});
const WRONG_EXPECTED_VERSION = SQLSTATE.WRONG_EXPECTED_VERSION;
const QUERY_CANCELED = SQLSTATE.QUERY_CANCELED;

// bigint columns (positions, versions) as JavaScript numbers: exact up to
// 2^53, far beyond what a store reaches.  pg returns them as strings by default.
function parseInt8(text) {
  const n = Number(text);
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`bigint ${text} does not fit a JavaScript number`);
  }
  return n;
}

const types = {
  getTypeParser(oid, format) {
    if (oid === pg.types.builtins.INT8 && format !== 'binary') {
      return parseInt8;
    }
    return pg.types.getTypeParser(oid, format);
  },
};

// Connection settings for pg.Pool / pg.Client: DATABASE_URL or the PG*
// variables, with the type parsers above.
function connectionConfig(overrides = {}) {
  const config = { types };
  if (process.env.DATABASE_URL) {
    config.connectionString = process.env.DATABASE_URL;
  }
  return { ...config, ...overrides };
}

function createPool(overrides = {}) {
  return new pg.Pool(connectionConfig(overrides));
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// Exponential backoff with full jitter: a random delay in [0, min(cap, base * 2^(attempt-1))].
function backoffDelay(attempt, baseMs, maxMs) {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt - 1, 30));
  return Math.random() * ceiling;
}

// Is db a pg.Pool (every query its own transaction, on whichever connection
// is free; a broken connection is dropped from the pool)?
function isPool(db) {
  return db instanceof pg.Pool || (typeof db.connect === 'function' && typeof db.totalCount === 'number');
}

// The connection broke or the server ended the session: the statement may or
// may not have committed.
function isConnectionLoss(err) {
  if (!err) {
    return false;
  }
  if (typeof err.code === 'string') {
    return (
      err.code.startsWith('08') || err.code === '57P01' || err.code === '57P02' || err.code === '57P03' ||
      ['ECONNRESET', 'ECONNREFUSED', 'EPIPE', 'ETIMEDOUT'].includes(err.code)
    );
  }
  return /^Connection terminated|connection (?:terminated|closed)/i.test(String(err.message));
}

// Why an append may be tried again as it was (same events, same expected
// version): null when it may not.
function transientReason(err, pool) {
  if (err && (err.code === SQLSTATE.SERIALIZATION_FAILURE || err.code === SQLSTATE.DEADLOCK_DETECTED)) {
    return pool ? err.code : null;
  }
  if (isConnectionLoss(err)) {
    return pool ? 'connection' : null;
  }
  return null;
}

// The events of a batch as an array, each with an id (a random uuid for those
// that have none): the ids make a repeated append of the same batch write
// nothing the second time.  The caller's objects are not changed.
function withEventIds(events) {
  const list = Array.isArray(events) ? events : [events];
  return list.map((event) =>
    event !== null && typeof event === 'object' && !Array.isArray(event) && event.id === undefined
      ? { ...event, id: crypto.randomUUID() }
      : event,
  );
}

async function streamVersion(db, streamId) {
  const { rows } = await db.query('SELECT event_store.stream_version($1) AS version', [streamId]);
  return rows[0].version;
}

// Append to a stream with optimistic concurrency, retrying what can be retried.
//
//   db        a pg.Pool, or a pg.Client outside a transaction
//   streamId  the stream
//   events    an event object ({ type, data, metadata, id, schema_version })
//             or an array of them, or a function (version, attempt) => events:
//             called with the stream's current version before an attempt
//             (again after a conflict), so that the caller decides again
//             (return null or undefined to append nothing)
//   options   expectedVersion: the version the stream must have (0: it must
//               not exist yet; null: any); when given, stream_version() is not
//               read and a conflict (SE001) is thrown, not retried
//             maxAttempts (default 10), baseDelayMs (5), maxDelayMs (200)
//             onConflict(error, attempt): called before retrying after SE001
//             onRetry(error, attempt): called before every retry
//
// Every event gets an id before the first attempt (one of its own is kept),
// so the append is idempotent: sending the same batch again, after an error
// that leaves unknown whether it committed, writes nothing and returns the
// stream's version after it (see withEventIds).  Each attempt reads
// stream_version(), then appends with that version as expected_version; on
// SE001 (another writer got there first) it waits a random, growing delay,
// reads again and decides again.  On a serialization failure (40001), a
// deadlock (40P01) or a lost connection, with a pg.Pool, it sends the same
// batch with the same expected version again.  SE002 for one of the batch's
// ids is checked once: when that very batch is in the stream already (an
// earlier call sent it), the append succeeds without writing.  Other errors,
// and any error on the last attempt, are thrown.
//
// Resolves to { version, attempts, appended, eventIds }: the stream's version
// after the events, the attempts made, whether events are in the stream
// (false when the function returned null), and the ids of the batch.
async function appendWithRetry(db, streamId, events, options = {}) {
  const { expectedVersion, maxAttempts = 10, baseDelayMs = 5, maxDelayMs = 200, onConflict, onRetry } = options;
  const fixedVersion = expectedVersion !== undefined;
  const pool = isPool(db);
  const decide = typeof events === 'function' ? events : null;
  const fixed = decide ? null : withEventIds(events);
  let expected = null;
  let batch = null; // decided and not known to be refused
  for (let attempt = 1; ; attempt++) {
    if (batch === null) {
      expected = fixedVersion ? expectedVersion : await streamVersion(db, streamId);
      if (decide) {
        const version = expected === null ? await streamVersion(db, streamId) : expected;
        const decided = await decide(version, attempt);
        if (decided === null || decided === undefined) {
          return { version, attempts: attempt, appended: false, eventIds: [] };
        }
        batch = withEventIds(decided);
      } else {
        batch = fixed;
      }
    }
    const eventIds = batch.map((e) => (e && typeof e === 'object' ? e.id : undefined));
    try {
      // (stringified here: pg would turn a JavaScript array into a SQL array)
      const res = await db.query('SELECT event_store.append($1, $2::jsonb, $3) AS version', [
        streamId,
        JSON.stringify(batch),
        expected,
      ]);
      return { version: res.rows[0].version, attempts: attempt, appended: true, eventIds };
    } catch (failure) {
      let err = failure;
      if (err.code === SQLSTATE.DUPLICATE_EVENT_ID && expected !== null) {
        // sent before (a lost answer, an earlier call)?  With no expected
        // version the same batch anywhere in the stream is a success, and
        // anything else SE002 again: this call never writes.
        try {
          const res = await db.query('SELECT event_store.append($1, $2::jsonb, NULL) AS version', [
            streamId,
            JSON.stringify(batch),
          ]);
          return { version: res.rows[0].version, attempts: attempt, appended: true, eventIds };
        } catch (again) {
          if (!transientReason(again, pool)) {
            throw err;
          }
          err = again;
        }
      }
      const conflict = err.code === SQLSTATE.WRONG_EXPECTED_VERSION && !fixedVersion;
      const transient = transientReason(err, pool);
      if ((!conflict && !transient) || attempt >= maxAttempts) {
        throw err;
      }
      if (conflict) {
        batch = null; // refused: read and decide again
        if (onConflict) {
          onConflict(err, attempt);
        }
      }
      if (onRetry) {
        onRetry(err, attempt);
      }
      await sleep(backoffDelay(attempt, baseDelayMs, maxDelayMs));
    }
  }
}

// A resolvable promise, for waits that stop() must be able to end early.
function signal() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

// Follows every event of the store in global position order.
//
//   new Follower({ handler, after, batchSize, wake, waitTimeoutMs, connection })
//
//   handler(event)   called once per event, in order (may be async); the
//                    cursor moves past an event only when its handler returned
//   after            the position to start after (default 0: from the start)
//   batchSize        events per read_all call (default 500)
//   wake             'wait_for_events' (default): block in
//                    event_store.wait_for_events(cursor, timeout);
//                    'listen': LISTEN event_store, whose notifications the
//                    background worker sends with the head position as payload
//   waitTimeoutMs    longest wait before reading again anyway (default 5000)
//   connection       extra pg.Client settings (see connectionConfig)
//
// The follower uses a connection of its own.  It pages with
// read_all(cursor, batchSize), keeping the largest global_position it has
// handled as its cursor: read_all is gap-safe, so no event is skipped,
// even one that commits after events with higher positions.
// start() resolves when the follower stopped (stop() or a handler error);
// `position` is the cursor.
class Follower {
  constructor({ handler, after = 0, batchSize = 500, wake = 'wait_for_events', waitTimeoutMs = 5000, connection = {} }) {
    if (typeof handler !== 'function') {
      throw new TypeError('handler must be a function');
    }
    if (wake !== 'wait_for_events' && wake !== 'listen') {
      throw new TypeError(`wake must be "wait_for_events" or "listen", not ${JSON.stringify(wake)}`);
    }
    this.handler = handler;
    this.position = after;
    this.batchSize = batchSize;
    this.wake = wake;
    this.waitTimeoutMs = waitTimeoutMs;
    this.connection = connection;
    this.stopping = false;
    this.client = null;
    this.running = null;
    this.waiting = false; // in wait_for_events()
    this.heardHead = 0; // highest head announced by NOTIFY (wake = 'listen')
    this.wakeup = null; // pending wait of the listen mode
  }

  start() {
    if (!this.running) {
      this.running = this.run();
    }
    return this.running;
  }

  async run() {
    const client = new pg.Client(connectionConfig(this.connection));
    this.client = client;
    // errors of an idle connection (server gone) end the loop through the next query
    client.on('error', () => {});
    await client.connect();
    try {
      if (this.wake === 'listen') {
        client.on('notification', (msg) => {
          if (msg.channel !== 'event_store') {
            return;
          }
          const head = Number(msg.payload);
          if (Number.isSafeInteger(head) && head > this.heardHead) {
            this.heardHead = head;
          }
          if (this.wakeup) {
            this.wakeup.resolve();
          }
        });
        await client.query('LISTEN event_store');
      }
      while (!this.stopping) {
        const { rows } = await client.query('SELECT * FROM event_store.read_all($1, $2)', [
          this.position,
          this.batchSize,
        ]);
        for (const event of rows) {
          await this.handler(event);
          this.position = event.global_position;
          if (this.stopping) {
            break;
          }
        }
        if (rows.length < this.batchSize && !this.stopping) {
          await this.waitForMore(client);
        }
      }
    } catch (err) {
      // a wait cancelled by stop() is no error
      if (!(this.stopping && err.code === QUERY_CANCELED)) {
        throw err;
      }
    } finally {
      this.client = null;
      await client.end().catch(() => {});
    }
  }

  // Wait until the head passes the cursor, stop() or the time limit.
  async waitForMore(client) {
    if (this.wake === 'wait_for_events') {
      this.waiting = true;
      try {
        await client.query("SELECT event_store.wait_for_events($1, $2 * interval '1 millisecond')", [
          this.position,
          this.waitTimeoutMs,
        ]);
      } finally {
        this.waiting = false;
      }
      return;
    }
    if (this.heardHead > this.position) {
      return; // announced while we were reading
    }
    this.wakeup = signal();
    const timer = setTimeout(this.wakeup.resolve, this.waitTimeoutMs);
    try {
      await this.wakeup.promise;
    } finally {
      clearTimeout(timer);
      this.wakeup = null;
    }
  }

  // Stop after the current event; resolves when the loop has ended.  A
  // wait_for_events() in progress is cancelled with pg_cancel_backend from
  // a short-lived second connection (again, should the cancel arrive before
  // the wait began).
  async stop() {
    this.stopping = true;
    if (this.wakeup) {
      this.wakeup.resolve();
    }
    if (!this.running) {
      return;
    }
    let ended = false;
    const done = this.running.then(
      () => (ended = true),
      () => (ended = true),
    );
    for (let i = 0; i < 20 && !ended && this.waiting; i++) {
      await this.cancelWait();
      await Promise.race([done, sleep(100)]);
    }
    await this.running;
  }

  async cancelWait() {
    const pid = this.client && this.client.processID;
    if (!pid) {
      return;
    }
    const other = new pg.Client(connectionConfig(this.connection));
    other.on('error', () => {});
    try {
      await other.connect();
      await other.query('SELECT pg_cancel_backend($1)', [pid]);
    } catch (err) {
      // the wait then ends at its time limit
    } finally {
      await other.end().catch(() => {});
    }
  }
}

// An operator's retry: what stopped the saga (a compensation that failed,
// a step that failed after its pivot, see event_store.saga_problems) gets a
// fresh round of attempts.  Needs the privileges of the saga's owner.
async function retrySaga(pool, sagaId) {
  await pool.query('SELECT event_store.retry_saga($1)', [sagaId]);
}

// A person settles a stuck saga as 'completed' or 'compensated'; the note is
// recorded in its stream (SagaResolved).
async function resolveSaga(pool, sagaId, status, note) {
  await pool.query('SELECT event_store.resolve_saga($1, $2, $3)', [sagaId, status, note]);
}

// An operator's answer to a parked stream of a subscription: deliver it
// again from its parked event, attempts reset (all parked streams of the
// subscription when streamId is null).  Resolves to the number of streams.
async function replayParked(pool, subscription, streamId = null) {
  const { rows } = await pool.query('SELECT event_store.replay_parked($1, $2) AS n', [subscription, streamId]);
  return rows[0].n;
}

// Or acknowledge its held events without delivering them (recorded with who
// skipped them).  Resolves to the number of streams.
async function skipParked(pool, subscription, streamId = null) {
  const { rows } = await pool.query('SELECT event_store.skip_parked($1, $2) AS n', [subscription, streamId]);
  return rows[0].n;
}

// A handler error that must not be retried: the step fails for good and
// the saga compensates its completed steps.
class PermanentError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PermanentError';
    this.retryable = false;
  }
}

// Works external saga steps.
//
//   new SagaWorker({ pool, name, handlers, maxCount, lease, pollIntervalMs, onError })
//
//   pool       a pg.Pool
//   name       the worker's name, recorded as the lease owner
//   handlers   { stepName: { action(data, step), compensate(data, step) } }:
//              action gets the saga's data, compensate the step's
//              compensation data (its action's result); both may be async
//              and return the step's result (an object, or nothing).  A step
//              without compensate needs nothing undone: its compensation is
//              reported done at once.
//   maxCount   steps claimed at a time (default 10), worked concurrently
//   lease      how long a claim is held (default '30 seconds'): a step whose
//              worker did not report within it is handed out again
//   pollIntervalMs  pause when nothing was claimable (default 200)
//   onError(err, step)  reporting a step failed (e.g. its lease expired and
//              another worker had it); default: console.error
//
// Each round calls claim_saga_steps(name, maxCount, <step names>, lease)
// and reports each claimed step with complete_saga_step(saga_id, step,
// result), or, when its handler threw, fail_saga_step(saga_id, step,
// message, retryable), retryable unless the error has `retryable === false`
// (see PermanentError).
class SagaWorker {
  constructor({ pool, name, handlers, maxCount = 10, lease = '30 seconds', pollIntervalMs = 200, onError }) {
    if (!pool || !name || !handlers) {
      throw new TypeError('pool, name and handlers are required');
    }
    this.pool = pool;
    this.name = name;
    this.handlers = handlers;
    this.stepNames = Object.keys(handlers);
    this.maxCount = maxCount;
    this.lease = lease;
    this.pollIntervalMs = pollIntervalMs;
    this.onError = onError || ((err, step) => console.error(`${name}: ${step.step} of saga ${step.saga_id}: ${err.message}`));
    this.stopping = false;
    this.running = null;
    this.pause = null;
  }

  // Claim and work one batch; resolves to the number of steps claimed.
  async runOnce() {
    const { rows } = await this.pool.query(
      'SELECT * FROM event_store.claim_saga_steps($1, $2, $3, $4::interval)',
      [this.name, this.maxCount, this.stepNames, this.lease],
    );
    await Promise.all(rows.map((step) => this.work(step)));
    return rows.length;
  }

  async work(step) {
    const handler = this.handlers[step.step] || {};
    const fn = step.kind === 'action' ? handler.action : handler.compensate;
    let result;
    try {
      result = fn ? await fn(step.data, step) : undefined;
    } catch (err) {
      const message = (err && err.message) || String(err);
      const retryable = !(err && err.retryable === false);
      await this.report('SELECT event_store.fail_saga_step($1, $2, $3, $4)', [step.saga_id, step.step, message, retryable], step);
      return;
    }
    await this.report(
      'SELECT event_store.complete_saga_step($1, $2, $3::jsonb)',
      [step.saga_id, step.step, result === undefined || result === null ? null : JSON.stringify(result)],
      step,
    );
  }

  async report(sql, params, step) {
    try {
      await this.pool.query(sql, params);
    } catch (err) {
      this.onError(err, step);
    }
  }

  // Work steps until stop(); resolves when stopped.
  start() {
    if (!this.running) {
      this.running = this.run();
    }
    return this.running;
  }

  async run() {
    while (!this.stopping) {
      let claimed = 0;
      try {
        claimed = await this.runOnce();
      } catch (err) {
        if (this.stopping) {
          break;
        }
        this.onError(err, { step: '(claim)', saga_id: null });
      }
      if (claimed < this.maxCount && !this.stopping) {
        this.pause = signal();
        const timer = setTimeout(this.pause.resolve, this.pollIntervalMs);
        await this.pause.promise;
        clearTimeout(timer);
        this.pause = null;
      }
    }
  }

  async stop() {
    this.stopping = true;
    if (this.pause) {
      this.pause.resolve();
    }
    if (this.running) {
      await this.running;
    }
  }
}

// Where one ack_events call may acknowledge a batch up to.  A claim hands
// out redeliveries and retried streams before new events, so a batch is
// not in global position order: acknowledging up to the highest position
// handled is right only when no event below it was left unhandled (the
// batch broke off at stop()).  Events a nack took back are not pending any
// more and do not count.
class AckPosition {
  constructor() {
    this.highest = null; // highest position handled
    this.lowestLeft = null; // lowest position left unhandled
  }

  handled(event) {
    if (this.highest === null || event.global_position > this.highest) {
      this.highest = event.global_position;
    }
  }

  left(event) {
    if (this.lowestLeft === null || event.global_position < this.lowestLeft) {
      this.lowestLeft = event.global_position;
    }
  }

  // The position to acknowledge up to, or null: nothing to acknowledge
  position() {
    if (this.highest === null) {
      return null;
    }
    if (this.lowestLeft !== null && this.lowestLeft <= this.highest) {
      // handled events above it stay pending: delivered again after release
      return this.lowestLeft > 1 ? this.lowestLeft - 1 : null;
    }
    return this.highest;
  }
}

// One consumer of a subscription (a consumer group on the log, made with
// event_store.create_subscription): several workers with different names,
// in this process or anywhere else, share the subscription's partitions.
//
//   new SubscriptionWorker({ subscription, consumer, handler, maxCount, lease,
//                            waitMs, transactional, connection, onError })
//
//   subscription   the subscription's name
//   consumer       this worker's name in the group (unique among its workers)
//   handler(event, client)  called once per event, in order (may be async);
//                  event is a row of claim_events (partition, attempt,
//                  global_position, stream_id, stream_version, event_id,
//                  event_type, data, metadata, schema_version, recorded_at),
//                  client the worker's connection.  Throwing fails the event.
//   maxCount       events claimed at a time (default 100)
//   lease          how long the partitions stay ours without a claim (default
//                  '30 seconds'): longer than a batch takes to handle, plus
//                  waitMs
//   waitMs         how long a claim waits for events (default 1000).  A
//                  waiting claim is one transaction: partitions it takes or
//                  gives back, and a new worker's arrival, show only when it
//                  returns, so waitMs is also how fast partitions move
//                  between workers.
//   transactional  false (default): each event's handler runs on its own, the
//                  ack follows the batch (at-least-once: after a crash or an
//                  expired lease, events are handled again; deduplicate by
//                  event_id).  true: the batch is one transaction, each
//                  handler inside a savepoint, the ack its last statement, so
//                  the handler's writes in this database and the ack commit
//                  together (exactly-once); a refused ack (55000: the lease
//                  expired and another worker has the events) rolls them back.
//   connection     extra pg.Client settings (see connectionConfig)
//   onError(err, what)  a call of the worker failed (what: 'claim', 'batch'
//                  or 'release'); default: console.error
//
// Each round claims with claim_events(subscription, consumer, maxCount,
// lease, wait) and hands the events to the handler in order.  When a
// handler throws, the worker nacks that event with nack_event(..., error):
// it comes again after the subscription's backoff, and the stream is parked
// after its max_attempts.  The later events of that stream in the batch are
// not handled (nack_event took them back: they follow the retry); the other
// streams go on.  One ack_events call per batch acknowledges up to the
// highest position handled (see AckPosition).  When a batch breaks off (a
// refused ack, a lost connection) the worker releases its partitions, so
// that what it did not acknowledge is delivered again: claim_events never
// hands a consumer its own unacknowledged events again.  stop() lets the
// event in hand finish, acknowledges what was handled and releases the
// partitions with release_events(): another worker takes over at once, and
// the rest of the batch goes to it.  start() resolves when the worker stopped, and rejects when a
// claim failed (no such subscription, no privilege, the server gone).
class SubscriptionWorker {
  constructor({
    subscription,
    consumer,
    handler,
    maxCount = 100,
    lease = '30 seconds',
    waitMs = 1000,
    transactional = false,
    connection = {},
    onError,
  }) {
    if (!subscription || !consumer || typeof handler !== 'function') {
      throw new TypeError('subscription, consumer and a handler function are required');
    }
    this.subscription = subscription;
    this.consumer = consumer;
    this.handler = handler;
    this.maxCount = maxCount;
    this.lease = lease;
    this.waitMs = waitMs;
    this.transactional = transactional;
    this.connection = connection;
    this.onError = onError || ((err, what) => console.error(`${subscription}/${consumer}: ${what}: ${err.message}`));
    this.stopping = false;
    this.running = null;
    this.client = null;
    this.claiming = false; // in claim_events()
    this.acknowledged = 0; // events acknowledged so far
  }

  start() {
    if (!this.running) {
      this.running = this.run();
    }
    return this.running;
  }

  async run() {
    const client = new pg.Client(connectionConfig(this.connection));
    this.client = client;
    // errors of an idle connection (server gone) end the loop through the next query
    client.on('error', () => {});
    await client.connect();
    try {
      while (!this.stopping) {
        const events = await this.claim(client);
        if (events === null) {
          break; // a wait cancelled by stop()
        }
        if (events.length > 0) {
          await this.handleBatch(client, events);
        }
      }
    } finally {
      await this.release(client);
      this.client = null;
      await client.end().catch(() => {});
    }
  }

  // One claim: the events, or null when stop() cancelled its wait
  async claim(client) {
    this.claiming = true;
    try {
      const { rows } = await client.query(
        "SELECT * FROM event_store.claim_events($1, $2, $3, $4::interval, $5 * interval '1 millisecond')",
        [this.subscription, this.consumer, this.maxCount, this.lease, this.waitMs],
      );
      return rows;
    } catch (err) {
      if (this.stopping && err.code === QUERY_CANCELED) {
        return null;
      }
      this.onError(err, 'claim');
      throw err;
    } finally {
      this.claiming = false;
    }
  }

  // Hand a batch to the handler, nack what failed, ack what was handled
  async handleBatch(client, events) {
    const failedStreams = new Set();
    const upTo = new AckPosition();
    let open = false;
    try {
      if (this.transactional) {
        await client.query('BEGIN');
        open = true;
      }
      for (const event of events) {
        if (this.stopping) {
          upTo.left(event); // goes to the next holder
          continue;
        }
        if (failedStreams.has(event.stream_id)) {
          continue; // taken back by the nack: follows the retry
        }
        if (this.transactional) {
          await client.query('SAVEPOINT event_store_event');
        }
        try {
          await this.handler(event, client);
          if (this.transactional) {
            await client.query('RELEASE SAVEPOINT event_store_event');
          }
        } catch (err) {
          if (this.transactional) {
            await client.query('ROLLBACK TO SAVEPOINT event_store_event');
          }
          failedStreams.add(event.stream_id);
          await client.query('SELECT event_store.nack_event($1, $2, $3, $4)', [
            this.subscription,
            this.consumer,
            event.global_position,
            (err && err.message) || String(err),
          ]);
          continue;
        }
        upTo.handled(event);
      }
      const position = upTo.position();
      let acknowledged = 0;
      if (position !== null) {
        const { rows } = await client.query('SELECT event_store.ack_events($1, $2, $3) AS n', [
          this.subscription,
          this.consumer,
          position,
        ]);
        acknowledged = rows[0].n;
      }
      if (open) {
        await client.query('COMMIT');
        open = false;
      }
      this.acknowledged += acknowledged;
    } catch (err) {
      if (open) {
        await client.query('ROLLBACK').catch(() => {});
      }
      this.onError(err, 'batch');
      // what we did not acknowledge goes out again, to whoever claims next
      await this.release(client);
    }
  }

  async release(client) {
    try {
      await client.query('SELECT event_store.release_events($1, $2)', [this.subscription, this.consumer]);
    } catch (err) {
      this.onError(err, 'release');
    }
  }

  // Stop after the event in hand: what was handled is acknowledged, the
  // partitions are released.  A claim waiting for events is cancelled, from
  // a short-lived second connection, only while it waits (so never a
  // statement after it).  Resolves when the worker has stopped.
  async stop() {
    this.stopping = true;
    if (!this.running) {
      return;
    }
    let ended = false;
    const done = this.running.then(
      () => (ended = true),
      () => (ended = true),
    );
    while (!ended) {
      if (this.claiming) {
        await this.cancelWait();
      }
      await Promise.race([done, sleep(50)]);
    }
    await this.running;
  }

  async cancelWait() {
    const pid = this.client && this.client.processID;
    if (!pid) {
      return;
    }
    const other = new pg.Client(connectionConfig(this.connection));
    other.on('error', () => {});
    try {
      await other.connect();
      await other.query(
        `SELECT pg_cancel_backend(pid) FROM pg_stat_activity
          WHERE pid = $1 AND state = 'active' AND wait_event_type = 'Extension'
            AND query LIKE '%event_store.claim_events(%'`,
        [pid],
      );
    } catch (err) {
      // the wait then ends after waitMs
    } finally {
      await other.end().catch(() => {});
    }
  }
}

module.exports = {
  SQLSTATE,
  WRONG_EXPECTED_VERSION,
  appendWithRetry,
  connectionConfig,
  createPool,
  Follower,
  PermanentError,
  replayParked,
  resolveSaga,
  retrySaga,
  SagaWorker,
  skipParked,
  SubscriptionWorker,
  withEventIds,
};
