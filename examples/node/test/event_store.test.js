'use strict';
// Tests of event-store-client against a real server.  They require the
// package by its name: in its own directory that is the package itself
// (package.json "exports"), in a service's project the installed one
// (test/t/060_clients.pl installs the tarball of `npm pack` into a scratch
// project and runs them there, with ES_CLIENT_INSTALLED=1).
//
//   - the package: what it exports is what event_store.d.ts declares, and
//     (ES_CLIENT_INSTALLED) it is the one installed under node_modules;
//   - appendWithRetry re-reads and retries after SE001, and gives up after
//     maxAttempts;
//   - appendWithRetry retries a lost connection (a backend terminated while
//     its append waits), an answer lost after the commit (the same batch
//     again: written once), a serialization failure and a deadlock, with a
//     pool; not on a single connection; a batch sent again by a later call
//     (same ids) is not written twice;
//   - concurrent appenders to one stream, with retries, all land: versions
//     1..n without gaps, no event lost or doubled, each writer's events in
//     its order;
//   - two followers, one woken by wait_for_events() and one by LISTEN
//     event_store, see every committed event exactly once and in position
//     order, while appenders race, an append is rolled back and one commits
//     late (after events with higher positions);
//   - sagas defined here, whose external steps two SagaWorkers work,
//     complete (one after a retried step); one whose step fails for good
//     compensates its completed step (saga_state); one with a pivot and a
//     timer step waits for a person after the pivot, and an operator's
//     retrySaga lets it complete;
//   - three SubscriptionWorkers share a subscription: every event is
//     handled exactly once, each stream in order, never by two workers at
//     the same time;
//   - a handler that fails twice on one event: the event is retried, then
//     its stream parked (subscription_parked), without its later events;
//     the other streams go on; replayParked delivers it again, and the
//     rest of the stream after it; skipParked acknowledges a parked stream;
//   - a worker that stops acknowledges what it handled and releases its
//     partitions: another one takes over at once and gets the rest of the
//     stopped worker's batch again;
//   - transactional workers (handler writes and ack in one transaction):
//     a worker that stalls past its lease gets its ack refused (55000) and
//     its writes rolled back, a handler that fails after writing is rolled
//     back to its savepoint, and every event lands exactly once.
//
// Connects with the PG* environment variables (or DATABASE_URL) to a
// database where CREATE EXTENSION event_store was done, on a server with
// the background worker running (LISTEN and the saga retry need it):
//
//   PGHOST=... PGPORT=... PGDATABASE=... npm test

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const {
  appendWithRetry,
  createPool,
  Follower,
  PermanentError,
  replayParked,
  retrySaga,
  SagaWorker,
  skipParked,
  SubscriptionWorker,
  withEventIds,
} = require('event-store-client');
const fs = require('node:fs');
const path = require('node:path');
const pg = require('pg');

const pool = createPool({ max: 12 });
// names of this run, so that the tests can run again in the same database
const run = `${Date.now().toString(36)}${Math.floor(Math.random() * 36 ** 4).toString(36)}`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Poll fn until it returns a truthy value; fail after timeoutMs.
async function waitUntil(what, fn, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await sleep(25);
  }
}

async function sql(text, params = []) {
  return (await pool.query(text, params)).rows;
}

async function head() {
  return (await sql('SELECT event_store.head_position() AS head'))[0].head;
}

// The position of the last event at or below the head: where a follower
// that read everything stands (the head itself can be a hole left by an
// aborted append)
async function lastVisible() {
  const rows = await sql(
    'SELECT coalesce(max(global_position), 0) AS p FROM event_store.events WHERE global_position <= event_store.head_position()',
  );
  return rows[0].p;
}

before(async () => {
  const rows = await sql("SELECT extversion FROM pg_extension WHERE extname = 'event_store'");
  assert.equal(rows.length, 1, 'event_store is not installed in this database (CREATE EXTENSION event_store)');
});

after(() => pool.end());

test('appendWithRetry re-reads the stream and retries after SE001', async () => {
  const stream = `account-${run}a`;
  const versionsSeen = [];
  const conflicts = [];
  const result = await appendWithRetry(
    pool,
    stream,
    async (version, attempt) => {
      versionsSeen.push(version);
      if (attempt === 1) {
        // another writer gets there first
        await sql(`SELECT event_store.append($1, '{"type": "Deposited", "data": {"by": "other"}}')`, [stream]);
      }
      return { type: 'Deposited', data: { by: 'us', basedOn: version } };
    },
    { onConflict: (err) => conflicts.push(err.code) },
  );
  const events = await sql('SELECT stream_version, event_id, data FROM event_store.read_stream($1)', [stream]);
  assert.deepEqual(result, { version: 2, attempts: 2, appended: true, eventIds: [events[1].event_id] });
  assert.deepEqual(versionsSeen, [0, 1], 'the second attempt saw the other writer');
  assert.deepEqual(conflicts, ['SE001']);
  assert.deepEqual(
    events.map(({ stream_version, data }) => ({ stream_version, data })),
    [
      { stream_version: 1, data: { by: 'other' } },
      { stream_version: 2, data: { by: 'us', basedOn: 1 } },
    ],
  );
});

test('appendWithRetry gives up after maxAttempts conflicts', async () => {
  const stream = `account-${run}b`;
  let calls = 0;
  await assert.rejects(
    appendWithRetry(
      pool,
      stream,
      async () => {
        calls++;
        await sql(`SELECT event_store.append($1, '{"type": "Deposited", "data": {"by": "other"}}')`, [stream]);
        return { type: 'Deposited', data: { by: 'us' } };
      },
      { maxAttempts: 3, baseDelayMs: 1 },
    ),
    (err) => err.code === 'SE001' && /wrong expected version/.test(err.message),
  );
  assert.equal(calls, 3);
  const events = await sql('SELECT data FROM event_store.read_stream($1)', [stream]);
  assert.deepEqual(
    events.map((e) => e.data.by),
    ['other', 'other', 'other'],
  );
});

// The pool, with its query() replaced by fn(text, params, realQuery): still a
// pg.Pool to the client (its other members are the pool's)
function poolWith(fn) {
  const real = (text, params) => pool.query(text, params);
  return new Proxy(pool, {
    get(target, prop) {
      if (prop === 'query') {
        return (text, params) => fn(text, params, real);
      }
      const value = Reflect.get(target, prop, target);
      return typeof value === 'function' ? value.bind(target) : value;
    },
  });
}

// An error as pg reports it, with a SQLSTATE
function pgError(code, message) {
  return Object.assign(new Error(message), { code });
}

const isAppend = (text) => text.includes('event_store.append(');

async function streamEvents(stream) {
  return sql('SELECT stream_version, event_id, event_type, data FROM event_store.read_stream($1)', [stream]);
}

test('the package exports what its declarations declare', () => {
  const declared = new Set();
  const dts = fs.readFileSync(path.join(path.dirname(require.resolve('event-store-client')), 'event_store.d.ts'), 'utf8');
  for (const m of dts.matchAll(/^export declare (?:const|function|class) (\w+)/gm)) {
    declared.add(m[1]);
  }
  const exported = Object.keys(require('event-store-client')).sort();
  assert.deepEqual(exported, [...declared].sort());
  const where = require.resolve('event-store-client');
  if (process.env.ES_CLIENT_INSTALLED === '1') {
    assert.match(where, /[/\\]node_modules[/\\]event-store-client[/\\]event_store\.js$/, 'the installed package is tested');
    const manifest = require('event-store-client/package.json');
    assert.equal(manifest.version, '0.3.0');
  }
});

test('appendWithRetry retries an append whose connection was lost', async () => {
  const stream = `account-${run}lost`;
  const app = `es-victim-${run}`;
  const victims = new pg.Pool({ ...require('event-store-client').connectionConfig(), application_name: app, max: 2 });
  victims.on('error', () => {}); // the terminated connection, idle in the pool
  const blocker = await pool.connect();
  const retried = [];
  try {
    // an open append to the stream: the client's append waits for its lock
    await blocker.query('BEGIN');
    await blocker.query(`SELECT event_store.append($1, '{"type": "Opened"}')`, [stream]);
    const appending = appendWithRetry(victims, stream, [{ type: 'Deposited', data: { n: 1 } }, { type: 'Deposited', data: { n: 2 } }], {
      onRetry: (err) => retried.push(err.code || err.message),
    });
    appending.catch(() => {}); // (awaited below)
    const [{ pid }] = await waitUntil('the append to wait for the stream', async () => {
      const rows = await sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%event_store.append(%'",
        [app],
      );
      return rows.length === 1 ? rows : null;
    });
    assert.equal((await sql('SELECT pg_terminate_backend($1) AS t', [pid]))[0].t, true);
    await waitUntil('the append to be retried', () => retried.length > 0);
    await blocker.query('ROLLBACK');
    const result = await appending;
    assert.equal(result.version, 2);
    assert.ok(result.attempts >= 2, `retried (${result.attempts} attempts)`);
    assert.equal(retried[0], '57P01', 'the first attempt lost its connection');
  } finally {
    await blocker.query('ROLLBACK').catch(() => {});
    blocker.release();
    await victims.end();
  }
  const events = await streamEvents(stream);
  assert.deepEqual(
    events.map((e) => [e.stream_version, e.data.n]),
    [
      [1, 1],
      [2, 2],
    ],
  );
});

test('appendWithRetry sends a batch whose answer was lost again: written once', async () => {
  const stream = `account-${run}answer`;
  let appends = 0;
  // the append commits, then the connection breaks before the answer arrives
  const db = poolWith(async (text, params, query) => {
    const res = await query(text, params);
    if (isAppend(text) && ++appends === 1) {
      throw pgError('08006', 'connection lost before the answer');
    }
    return res;
  });
  await appendWithRetry(pool, stream, { type: 'Opened' });
  const result = await appendWithRetry(db, stream, [{ type: 'Deposited' }, { type: 'Deposited' }]);
  assert.equal(appends, 2);
  assert.equal(result.attempts, 2);
  assert.equal(result.version, 3, 'the version after the batch, from its first attempt');
  const events = await streamEvents(stream);
  assert.deepEqual(
    events.map((e) => e.event_type),
    ['Opened', 'Deposited', 'Deposited'],
    'the second attempt wrote nothing',
  );
  assert.deepEqual(events.slice(1).map((e) => e.event_id), result.eventIds);
});

test('appendWithRetry retries serialization failures and deadlocks with a pool, not on one connection', async () => {
  const stream = `account-${run}transient`;
  const failures = ['40001', '40P01'];
  const seen = [];
  const db = poolWith(async (text, params, query) => {
    if (isAppend(text) && failures.length > 0) {
      const code = failures.shift();
      throw pgError(code, code === '40001' ? 'could not serialize access' : 'deadlock detected');
    }
    return query(text, params);
  });
  const result = await appendWithRetry(db, stream, { type: 'Deposited' }, { onRetry: (err) => seen.push(err.code) });
  assert.deepEqual(seen, ['40001', '40P01']);
  assert.deepEqual([result.version, result.attempts], [1, 3]);
  assert.equal((await streamEvents(stream)).length, 1);

  // one connection: its transaction, if any, is the caller's to retry
  const client = await pool.connect();
  try {
    const one = new Proxy(client, {
      get(target, prop) {
        if (prop === 'query') {
          return (text, params) =>
            isAppend(text) ? Promise.reject(pgError('40001', 'could not serialize access')) : target.query(text, params);
        }
        const value = Reflect.get(target, prop, target);
        return typeof value === 'function' ? value.bind(target) : value;
      },
    });
    await assert.rejects(appendWithRetry(one, stream, { type: 'Deposited' }), (err) => err.code === '40001');
  } finally {
    client.release();
  }
  assert.equal((await streamEvents(stream)).length, 1);
});

test('a batch sent again by a later call, with the same ids, is not written twice', async () => {
  const stream = `account-${run}again`;
  const batch = withEventIds([{ type: 'Deposited', data: { n: 1 } }, { type: 'Deposited', data: { n: 2 } }]);
  assert.ok(batch.every((e) => /^[0-9a-f-]{36}$/.test(e.id)));
  const first = await appendWithRetry(pool, stream, batch);
  await appendWithRetry(pool, stream, { type: 'Withdrawn' });
  const again = await appendWithRetry(pool, stream, batch);
  assert.deepEqual([first.version, again.version], [2, 2], 'the version after the batch, both times');
  assert.deepEqual(again.eventIds, batch.map((e) => e.id));
  assert.deepEqual(
    (await streamEvents(stream)).map((e) => e.event_type),
    ['Deposited', 'Deposited', 'Withdrawn'],
  );
  // an id of the batch elsewhere: SE002, nothing written
  await assert.rejects(
    appendWithRetry(pool, `account-${run}other`, [{ type: 'Deposited', id: batch[1].id }]),
    (err) => err.code === 'SE002',
  );
  await assert.rejects(
    appendWithRetry(pool, stream, [batch[1], { type: 'Withdrawn' }]),
    (err) => err.code === 'SE002',
    'a batch that is not the one appended before',
  );
  assert.equal((await streamEvents(stream)).length, 3);
  assert.equal((await streamEvents(`account-${run}other`)).length, 0);
  // a fixed expected version: a conflict is the caller's
  await assert.rejects(
    appendWithRetry(pool, stream, { type: 'Withdrawn' }, { expectedVersion: 1 }),
    (err) => err.code === 'SE001',
  );
  assert.equal((await appendWithRetry(pool, stream, { type: 'Withdrawn' }, { expectedVersion: 3 })).version, 4);
});

test('concurrent appenders to one stream all land, with consecutive versions', async (t) => {
  const stream = `account-${run}c`;
  const writers = 6;
  const perWriter = 15;
  let conflicts = 0;
  let maxAttempts = 0;
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      for (let seq = 0; seq < perWriter; seq++) {
        const res = await appendWithRetry(
          pool,
          stream,
          { type: 'Deposited', data: { writer: w, seq } },
          { maxAttempts: 40, onConflict: () => conflicts++ },
        );
        maxAttempts = Math.max(maxAttempts, res.attempts);
      }
    }),
  );
  t.diagnostic(`${conflicts} conflicts retried, at most ${maxAttempts} attempts for one append`);
  const events = await sql('SELECT stream_version, data FROM event_store.read_stream($1)', [stream]);
  assert.equal(events.length, writers * perWriter);
  assert.deepEqual(
    events.map((e) => e.stream_version),
    Array.from({ length: writers * perWriter }, (_, i) => i + 1),
    'versions 1..n without gaps',
  );
  assert.equal((await sql('SELECT event_store.stream_version($1) AS v', [stream]))[0].v, writers * perWriter);
  for (let w = 0; w < writers; w++) {
    assert.deepEqual(
      events.filter((e) => e.data.writer === w).map((e) => e.data.seq),
      Array.from({ length: perWriter }, (_, i) => i),
      `writer ${w}: every event once, in its order`,
    );
  }
});

// Append batches of 1-3 events to a few streams from several concurrent writers.
async function traffic(tag, writers, rounds) {
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      for (let i = 0; i < rounds; i++) {
        const batch = Array.from({ length: 1 + ((w + i) % 3) }, (_, k) => ({
          type: 'Moved',
          data: { tag, w, i, k },
        }));
        await appendWithRetry(pool, `cargo-${run}-${(w + i) % 3}`, batch, { maxAttempts: 40 });
      }
    }),
  );
}

test('followers see every committed event exactly once, in order', async () => {
  const start = await head();
  const seen = { wait_for_events: [], listen: [] };
  // no periodic wakeup: only wait_for_events() or a NOTIFY move them
  const followers = Object.keys(seen).map(
    (wake) => new Follower({ after: start, wake, waitTimeoutMs: 120000, handler: (e) => seen[wake].push(e) }),
  );
  const runs = followers.map((f) => f.start());
  runs.forEach((r) => r.catch(() => {})); // (awaited below)
  let slowPosition;
  let end;
  try {
    await traffic('before', 4, 10);

    // a transaction that takes a position now and commits after later ones
    const slow = await pool.connect();
    let committedSlow = false;
    try {
      await slow.query('BEGIN');
      await slow.query(`SELECT event_store.append($1, '{"type": "Delayed"}')`, [`cargo-${run}-slow`]);
      slowPosition = (
        await slow.query('SELECT global_position FROM event_store.events WHERE stream_id = $1', [`cargo-${run}-slow`])
      ).rows[0].global_position;

      await traffic('during', 4, 10);
      // and an append that is rolled back: a hole in the numbering
      const aborted = await pool.connect();
      try {
        await aborted.query('BEGIN');
        await aborted.query(`SELECT event_store.append($1, '{"type": "Aborted"}')`, [`cargo-${run}-aborted`]);
        await aborted.query('ROLLBACK');
      } finally {
        aborted.release();
      }

      const [{ later }] = await sql(
        'SELECT count(*)::int AS later FROM event_store.events WHERE global_position > $1',
        [slowPosition],
      );
      assert.ok(later > 0, 'events with higher positions committed before the delayed one');
      assert.ok((await head()) < slowPosition, 'the open append holds the head below its position');
      const reachable = await lastVisible();
      await waitUntil('the followers to reach the head', async () => followers.every((f) => f.position >= reachable));
      for (const f of followers) {
        assert.ok(f.position < slowPosition, `${f.wake}: not past the uncommitted position`);
      }
      await slow.query('COMMIT');
      committedSlow = true;
    } finally {
      // on failure the connection goes, with its open transaction
      slow.release(!committedSlow);
    }

    await traffic('after', 4, 5);
    end = await lastVisible();
    await waitUntil('the followers to catch up', async () => followers.every((f) => f.position >= end));
  } finally {
    await Promise.all(followers.map((f) => f.stop()));
  }
  await Promise.all(runs);

  const committed = await sql(
    'SELECT global_position, event_id FROM event_store.events WHERE global_position > $1 AND global_position <= $2 ORDER BY global_position',
    [start, end],
  );
  assert.ok(committed.some((e) => e.global_position === slowPosition), 'the delayed event is in the store');
  for (const [wake, events] of Object.entries(seen)) {
    const positions = events.map((e) => e.global_position);
    assert.ok(
      positions.every((p, i) => i === 0 || p > positions[i - 1]),
      `${wake}: positions strictly increasing (in order, none twice)`,
    );
    assert.deepEqual(
      events.filter((e) => e.global_position <= end).map((e) => ({ global_position: e.global_position, event_id: e.event_id })),
      committed,
      `${wake}: exactly the committed events`,
    );
  }
});

// Saga steps: reserve, charge (retried up to 3 times), ship, all external.
// An external step without "compensation" is compensated externally too.
function sagaDefinition() {
  return {
    steps: [{ name: 'reserve' }, { name: 'charge', max_attempts: 3, backoff: '50 milliseconds' }, { name: 'ship' }],
    timeout: '10 minutes',
  };
}

// Handlers that record every call: [saga_id, step, kind, attempt, data]
function sagaHandlers(calls) {
  const record = (step, data) => calls.push({ saga: step.saga_id, step: step.step, kind: step.kind, attempt: step.attempt, data });
  return {
    reserve: {
      action: async (data, step) => {
        record(step, data);
        return { reservation: `R-${data.order}` };
      },
      compensate: async (data, step) => {
        record(step, data);
        return { released: data.reservation };
      },
    },
    charge: {
      action: async (data, step) => {
        record(step, data);
        if (data.amount > 1000) {
          throw new PermanentError('card declined');
        }
        if (data.flaky && step.attempt === 1) {
          throw new Error('payment service unavailable');
        }
        return { payment: `P-${data.order}` };
      },
    },
    ship: {
      action: async (data, step) => {
        record(step, data);
        return { tracking: `T-${data.order}` };
      },
    },
  };
}

async function startSagas(type, orders) {
  await sql('SELECT event_store.define_saga($1, $2::jsonb)', [type, JSON.stringify(sagaDefinition())]);
  const ids = [];
  for (const data of orders) {
    ids.push((await sql('SELECT event_store.start_saga($1, $2::jsonb) AS id', [type, JSON.stringify(data)]))[0].id);
  }
  return ids;
}

async function sagaState(id) {
  return (await sql('SELECT event_store.saga_state($1) AS s', [id]))[0].s;
}

async function workUntilFinished(ids, calls) {
  const errors = [];
  const workers = ['node-a', 'node-b'].map(
    (name) =>
      new SagaWorker({
        pool,
        name,
        handlers: sagaHandlers(calls),
        maxCount: 4,
        pollIntervalMs: 50,
        onError: (err, step) => errors.push(`${step.step}: ${err.message}`),
      }),
  );
  const runs = workers.map((w) => w.start());
  try {
    await waitUntil('the sagas to finish', async () => {
      const rows = await sql(
        "SELECT count(*)::int AS n FROM event_store.sagas WHERE saga_id = ANY ($1::uuid[]) AND status IN ('completed', 'compensated', 'compensation_failed')",
        [ids],
      );
      return rows[0].n === ids.length;
    });
  } finally {
    await Promise.all(workers.map((w) => w.stop()));
    await Promise.all(runs);
  }
  assert.deepEqual(errors, [], 'every step report was accepted');
}

test('sagas whose steps the Node workers do complete', async () => {
  const type = `node_checkout_${run}`;
  const orders = [1, 2, 3, 4, 5].map((order) => ({ order, amount: 10 * order }));
  orders.push({ order: 6, amount: 60, flaky: true });
  const ids = await startSagas(type, orders);
  const calls = [];
  await workUntilFinished(ids, calls);

  for (const [i, id] of ids.entries()) {
    const order = orders[i].order;
    const state = await sagaState(id);
    assert.equal(state.status, 'completed', `saga of order ${order} completed`);
    assert.equal(state.sagaType, type);
    assert.deepEqual(
      state.steps.map((s) => [s.stepType, s.status, s.compensationData]),
      [
        ['reserve', 'completed', { reservation: `R-${order}` }],
        ['charge', 'completed', { payment: `P-${order}` }],
        ['ship', 'completed', { tracking: `T-${order}` }],
      ],
    );
    const mine = calls.filter((c) => c.saga === id);
    const expected = orders[i].flaky
      ? ['reserve action 1', 'charge action 1', 'charge action 2', 'ship action 1']
      : ['reserve action 1', 'charge action 1', 'ship action 1'];
    assert.deepEqual(
      mine.map((c) => `${c.step} ${c.kind} ${c.attempt}`),
      expected,
      `order ${order}: every step worked once (a failed attempt again)`,
    );
    assert.equal(mine[1].data.reservation, `R-${order}`, 'charge saw the result of reserve in the saga data');
    const [{ data }] = await sql('SELECT data FROM event_store.sagas WHERE saga_id = $1', [id]);
    assert.deepEqual(data, { ...orders[i], reservation: `R-${order}`, payment: `P-${order}`, tracking: `T-${order}` });
  }
});

test('a saga whose step fails for good compensates', async () => {
  const type = `node_refused_${run}`;
  const ids = await startSagas(type, [{ order: 7, amount: 5000 }]);
  const calls = [];
  await workUntilFinished(ids, calls);

  const state = await sagaState(ids[0]);
  assert.equal(state.status, 'compensated');
  assert.deepEqual(
    state.steps.map((s) => [s.stepType, s.status]),
    [
      ['reserve', 'compensated'],
      ['charge', 'failed'],
      ['ship', 'pending'],
    ],
  );
  assert.deepEqual(
    calls.map((c) => `${c.step} ${c.kind}`),
    ['reserve action', 'charge action', 'reserve compensation'],
    'charge was not retried; reserve was undone; ship never ran',
  );
  assert.deepEqual(calls[2].data, { reservation: 'R-7' }, 'the compensation got the result of reserve');
  const [{ last_error }] = await sql('SELECT last_error FROM event_store.saga_steps WHERE saga_id = $1 AND name = $2', [
    ids[0],
    'charge',
  ]);
  assert.equal(last_error, 'card declined');
});

// charge is the pivot: after it, ship's failure is not compensated; the saga
// waits for a person, whose retrySaga gives ship another round.  cool_off
// is a timer step the background worker completes.
test('a timer, a pivot and an operator retry', async () => {
  const type = `node_long_haul_${run}`;
  await sql('SELECT event_store.define_saga($1, $2::jsonb)', [
    type,
    JSON.stringify({
      steps: [
        { name: 'charge', pivot: true },
        { name: 'cool_off', delay: '300 milliseconds' },
        { name: 'ship', max_attempts: 1 },
      ],
    }),
  ]);
  const [{ id }] = await sql('SELECT event_store.start_saga($1, $2::jsonb) AS id', [type, JSON.stringify({ order: 9 })]);
  const couriers = [];
  const errors = [];
  const worker = new SagaWorker({
    pool,
    name: 'node-long-haul',
    handlers: {
      charge: { action: async () => ({ charged: true }) },
      ship: {
        action: async () => {
          if (couriers.length === 0) throw new PermanentError('no courier');
          return { courier: couriers[0] };
        },
      },
    },
    pollIntervalMs: 50,
    onError: (err) => errors.push(err.message),
  });
  const running = worker.start();
  try {
    await waitUntil('the saga to need a person', async () => {
      const rows = await sql(
        "SELECT count(*)::int AS n FROM event_store.saga_problems WHERE saga_id = $1 AND reason = 'forward_recovery_failed' AND step = 'ship'",
        [id],
      );
      return rows[0].n === 1;
    });
    const state = await sagaState(id);
    assert.equal(state.status, 'running', 'past the pivot, nothing is compensated');
    assert.deepEqual(
      state.steps.map((s) => [s.stepType, s.status]),
      [
        ['charge', 'completed'],
        ['cool_off', 'completed'],
        ['ship', 'failed'],
      ],
    );
    const [{ due }] = await sql(
      "SELECT due_at <= updated_at AS due FROM event_store.saga_steps WHERE saga_id = $1 AND name = 'cool_off'",
      [id],
    );
    assert.equal(due, true, 'the timer completed when it was due, not before');
    couriers.push('C-1');
    await retrySaga(pool, id);
    await waitUntil('the saga to complete', async () => (await sagaState(id)).status === 'completed');
  } finally {
    await worker.stop();
    await running;
  }
  assert.deepEqual(errors, [], 'every step report was accepted');
  const [{ data }] = await sql('SELECT data FROM event_store.sagas WHERE saga_id = $1', [id]);
  assert.deepEqual(data, { order: 9, charged: true, courier: 'C-1' });
  const events = await sql("SELECT event_type FROM event_store.read_stream('saga-' || $1)", [id]);
  assert.ok(events.some((e) => e.event_type === 'SagaRetried'), 'the retry is in the saga stream');
});

// Subscriptions: each test has a category and a subscription of its own
function subscriptionNames(tag) {
  return { category: `sub${run}${tag}`, subscription: `node_${tag}_${run}` };
}

async function createSubscription(subscription, category, { partitions = 8, maxAttempts = 5, retryBackoff = '1 second' } = {}) {
  await sql(
    'SELECT event_store.create_subscription($1, categories => ARRAY[$2], partitions => $3, max_attempts => $4, retry_backoff => $5::interval)',
    [subscription, category, partitions, maxAttempts, retryBackoff],
  );
}

// Append `count` events (types Step, data {n}) to each stream, one batch per stream
async function appendSteps(streams, count, from = 1) {
  for (const stream of streams) {
    const batch = Array.from({ length: count }, (_, i) => ({ type: 'Step', data: { n: from + i } }));
    await appendWithRetry(pool, stream, batch);
  }
}

async function categoryEvents(category) {
  return sql(
    'SELECT global_position, stream_id, stream_version, event_id FROM event_store.read_category($1, 0, 100000) ORDER BY global_position',
    [category],
  );
}

// Events handed out and not acknowledged
async function inFlight(subscription) {
  const rows = await sql('SELECT in_flight FROM event_store.subscription_status WHERE name = $1', [subscription]);
  return Number(rows[0].in_flight);
}

// Stop the workers (each releases its partitions) and wait for their loops
async function stopWorkers(workers, runs) {
  await Promise.all(workers.map((w) => w.stop()));
  await Promise.all(runs);
}

// Each stream's handled versions, in the order they were handled
function versionsByStream(records) {
  const byStream = {};
  for (const r of records) {
    (byStream[r.stream_id] = byStream[r.stream_id] || []).push(r.stream_version);
  }
  return byStream;
}

// A promise the test resolves from outside
function signal() {
  let resolve;
  const promise = new Promise((r) => {
    resolve = r;
  });
  return { promise, resolve };
}

const byPosition = (a, b) => a - b;

test('subscription workers share a subscription: every event once, each stream in order, one worker at a time', async (t) => {
  const { category, subscription } = subscriptionNames('group');
  await createSubscription(subscription, category, { partitions: 8 });
  const handled = [];
  const inHand = new Map(); // stream -> the worker handling one of its events now
  const overlaps = [];
  const errors = [];
  const workers = ['a', 'b', 'c'].map(
    (name) =>
      new SubscriptionWorker({
        subscription,
        consumer: `node-${name}`,
        waitMs: 200,
        onError: (err, what) => errors.push(`${name} ${what}: ${err.message}`),
        handler: async (event, client) => {
          const other = inHand.get(event.stream_id);
          if (other) {
            overlaps.push(`${event.stream_id}@${event.stream_version}: ${name} while ${other} has it`);
          }
          inHand.set(event.stream_id, name);
          // a round trip, so that the workers' handlers interleave
          await client.query('SELECT event_store.stream_version($1)', [event.stream_id]);
          inHand.delete(event.stream_id);
          handled.push({ worker: name, ...event });
        },
      }),
  );
  const runs = workers.map((w) => w.start());
  runs.forEach((r) => r.catch(() => {})); // (awaited below)
  let events;
  try {
    await waitUntil('the partitions to be spread over the three workers', async () => {
      const [row] = await sql(
        'SELECT count(DISTINCT holder)::int AS holders, count(holder)::int AS held FROM event_store.subscription_partitions WHERE subscription = $1',
        [subscription],
      );
      return row.holders === 3 && row.held === 8;
    });
    // 32 streams of 5 events, appended one at a time by 4 concurrent writers
    await Promise.all(
      Array.from({ length: 4 }, async (_, w) => {
        for (let n = 1; n <= 5; n++) {
          for (let s = w; s < 32; s += 4) {
            await appendWithRetry(pool, `${category}-${s}`, { type: 'Step', data: { n } });
          }
        }
      }),
    );
    events = await categoryEvents(category);
    assert.equal(events.length, 160);
    await waitUntil(
      'every event to be handled and acknowledged',
      async () => handled.length >= events.length && (await inFlight(subscription)) === 0,
    );
  } finally {
    await stopWorkers(workers, runs);
  }
  assert.deepEqual(errors, []);
  assert.deepEqual(overlaps, [], 'no stream was in two workers\' hands at once');
  assert.deepEqual(
    handled.map((e) => e.global_position).sort(byPosition),
    events.map((e) => e.global_position),
    'every event handled exactly once',
  );
  assert.deepEqual(versionsByStream(handled), versionsByStream(events), 'each stream in order');
  assert.ok(handled.every((e) => e.attempt === 1), 'nothing delivered twice');
  const perWorker = ['a', 'b', 'c'].map((name) => handled.filter((e) => e.worker === name).length);
  t.diagnostic(`events per worker: ${perWorker.join(', ')}`);
  assert.ok(perWorker.every((n) => n > 0), 'all three workers handled events');
  const [left] = await sql(
    'SELECT count(holder)::int AS held, (SELECT count(*)::int FROM event_store.subscription_consumers WHERE subscription = $1) AS consumers FROM event_store.subscription_partitions WHERE subscription = $1',
    [subscription],
  );
  assert.deepEqual(left, { held: 0, consumers: 0 }, 'the stopped workers released everything');
});

test('a failing event is retried, then its stream parked; the other streams go on; replayParked delivers it again', async () => {
  const { category, subscription } = subscriptionNames('park');
  await createSubscription(subscription, category, { partitions: 4, maxAttempts: 2, retryBackoff: '50 milliseconds' });
  const bad = `${category}-bad`;
  const others = [1, 2, 3, 4, 5].map((i) => `${category}-${i}`);
  // each stream's events in one append: they come in one claim
  await appendSteps([bad, ...others], 3);
  const badEvent = (await categoryEvents(category)).find((e) => e.stream_id === bad && e.stream_version === 2);
  let failing = true;
  const handled = [];
  const errors = [];
  const workers = ['a', 'b', 'c'].map(
    (name) =>
      new SubscriptionWorker({
        subscription,
        consumer: `node-${name}`,
        waitMs: 200,
        onError: (err, what) => errors.push(`${name} ${what}: ${err.message}`),
        handler: async (event) => {
          const fails = failing && event.global_position === badEvent.global_position;
          handled.push({ ...event, ok: !fails });
          if (fails) {
            throw new Error(`cannot handle ${event.stream_id}@${event.stream_version}`);
          }
        },
      }),
  );
  const runs = workers.map((w) => w.start());
  runs.forEach((r) => r.catch(() => {})); // (awaited below)
  const parked = () => sql('SELECT * FROM event_store.subscription_parked WHERE subscription = $1', [subscription]);
  const of = (stream) => handled.filter((e) => e.stream_id === stream).map((e) => [e.stream_version, e.attempt, e.ok]);
  try {
    await waitUntil('the stream to be parked', async () => (await parked()).length === 1);
    // the other streams go on; the parked one gets nothing, not even a new event
    await appendSteps([...others, bad], 1, 4);
    const okOthers = () => handled.filter((e) => e.stream_id !== bad && e.ok).length;
    await waitUntil(
      'the other streams to be handled',
      async () => okOthers() >= others.length * 4 && (await inFlight(subscription)) === 0,
    );
    const [row] = await parked();
    assert.deepEqual(
      [row.stream_id, row.global_position, row.event_type, row.attempts, row.last_error],
      [bad, badEvent.global_position, 'Step', 2, `cannot handle ${bad}@2`],
    );
    assert.deepEqual(
      of(bad),
      [
        [1, 1, true],
        [2, 1, false],
        [2, 2, false],
      ],
      'the failing event twice (retried once), then parked; the later events of its stream held back',
    );
    const [status] = await sql(
      'SELECT retrying_streams, parked_streams FROM event_store.subscription_status WHERE name = $1',
      [subscription],
    );
    assert.deepEqual(status, { retrying_streams: 0, parked_streams: 1 });

    failing = false;
    assert.equal(await replayParked(pool, subscription, bad), 1);
    await waitUntil(
      'the replayed stream to be handled',
      async () => of(bad).length >= 6 && (await inFlight(subscription)) === 0,
    );
  } finally {
    await stopWorkers(workers, runs);
  }
  assert.deepEqual(errors, []);
  assert.deepEqual(
    of(bad),
    [
      [1, 1, true],
      [2, 1, false],
      [2, 2, false],
      [2, 1, true],
      [3, 1, true],
      [4, 1, true],
    ],
    'replayed from the parked event (attempts reset), then the rest of the stream in order',
  );
  for (const stream of others) {
    assert.deepEqual(of(stream), [1, 2, 3, 4].map((v) => [v, 1, true]), `${stream}: every event once, in order`);
  }
  assert.deepEqual(await parked(), []);
});

test('skipParked acknowledges a parked stream: its held events are not delivered, its new ones are', async () => {
  const { category, subscription } = subscriptionNames('skip');
  await createSubscription(subscription, category, { partitions: 1, maxAttempts: 1 });
  const stream = `${category}-1`;
  await appendSteps([stream], 2);
  const handled = [];
  const errors = [];
  const worker = new SubscriptionWorker({
    subscription,
    consumer: 'node-skip',
    waitMs: 200,
    onError: (err, what) => errors.push(`${what}: ${err.message}`),
    handler: async (event) => {
      handled.push([event.stream_version, event.attempt]);
      if (event.data.n === 1) {
        throw new Error('never handled');
      }
    },
  });
  const running = worker.start();
  running.catch(() => {}); // (awaited below)
  const status = async () =>
    (await sql('SELECT parked_streams, in_flight FROM event_store.subscription_status WHERE name = $1', [subscription]))[0];
  try {
    await waitUntil('the stream to be parked', async () => (await status()).parked_streams === 1);
    assert.equal(await skipParked(pool, subscription, stream), 1);
    await appendSteps([stream], 1, 3);
    await waitUntil('the new event to be handled', async () => handled.length >= 2 && Number((await status()).in_flight) === 0);
  } finally {
    await worker.stop();
    await running;
  }
  assert.deepEqual(errors, []);
  assert.deepEqual(handled, [
    [1, 1],
    [3, 1],
  ], 'the skipped events never came again; the new one did');
  assert.equal((await status()).parked_streams, 0);
});

test('a worker that stops releases its partitions, and another one takes over', async () => {
  const { category, subscription } = subscriptionNames('handover');
  await createSubscription(subscription, category, { partitions: 2 });
  const streams = [1, 2, 3, 4].map((i) => `${category}-${i}`);
  await appendSteps(streams, 3);
  const events = await categoryEvents(category);
  const fifth = events[4].global_position;
  const handled = { a: [], b: [] };
  const errors = [];
  const gate = signal();
  let inFifth = false;
  const worker = (name, handler) =>
    new SubscriptionWorker({
      subscription,
      consumer: `node-${name}`,
      waitMs: 200,
      onError: (err, what) => errors.push(`${name} ${what}: ${err.message}`),
      handler,
    });
  // a takes the whole log in one claim and holds on in its fifth event
  const a = worker('a', async (event) => {
    if (event.global_position === fifth) {
      inFifth = true;
      await gate.promise;
    }
    handled.a.push(event);
  });
  const b = worker('b', async (event) => {
    handled.b.push(event);
  });
  const runs = [a.start()];
  runs[0].catch(() => {}); // (awaited below)
  try {
    await waitUntil('worker a to be in its fifth event', () => inFifth);
    runs.push(b.start());
    runs[1].catch(() => {});
    const stopping = a.stop();
    gate.resolve();
    await stopping;
    // released at once, not left to expire
    const [row] = await sql(
      `SELECT count(*) FILTER (WHERE holder = 'node-a')::int AS held,
              (SELECT count(*)::int FROM event_store.subscription_consumers
                WHERE subscription = $1 AND consumer = 'node-a') AS registered
         FROM event_store.subscription_partitions WHERE subscription = $1`,
      [subscription],
    );
    assert.deepEqual(row, { held: 0, registered: 0 }, 'a released its partitions when it stopped');
    await waitUntil(
      'b to take over the rest of the batch',
      async () => handled.b.length >= 7 && (await inFlight(subscription)) === 0,
    );
    await appendSteps(streams, 1, 4);
    await waitUntil('b to handle the new events', async () => handled.b.length >= 11 && (await inFlight(subscription)) === 0);
  } finally {
    gate.resolve();
    await stopWorkers([a, b], runs);
  }
  assert.deepEqual(errors, []);
  assert.deepEqual(
    handled.a.map((e) => [e.global_position, e.attempt]),
    events.slice(0, 5).map((e) => [e.global_position, 1]),
    'a handled its batch up to the event it was in when it stopped',
  );
  const all = await categoryEvents(category);
  assert.deepEqual(
    handled.b.map((e) => e.global_position).sort(byPosition),
    all.slice(5).map((e) => e.global_position),
    'b handled everything after it, once',
  );
  assert.deepEqual(
    handled.b.filter((e) => e.attempt === 2).map((e) => e.global_position).sort(byPosition),
    events.slice(5).map((e) => e.global_position),
    'the rest of the stopped batch came again (attempt 2)',
  );
  assert.deepEqual(versionsByStream([...handled.a, ...handled.b]), versionsByStream(all), 'each stream in order');
});

test('transactional workers: the handler\'s writes commit with the ack, every event lands exactly once', async () => {
  const { category, subscription } = subscriptionNames('once');
  await createSubscription(subscription, category, { partitions: 2, retryBackoff: '20 milliseconds' });
  const table = `landed_${run}`;
  await sql(`CREATE TABLE ${table} (id bigserial PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,
                                     stream_version bigint NOT NULL, consumer text NOT NULL)`);
  const streams = [1, 2, 3, 4].map((i) => `${category}-${i}`);
  await appendSteps(streams, 3);
  const events = await categoryEvents(category);
  const stall = events[5].global_position; // where the slow worker stalls
  const flaky = events[8].global_position; // fails once after writing (in a fast worker)
  const calls = [];
  const slowErrors = [];
  const errors = [];
  const gate = signal();
  let stalled = false;
  let flakyFailed = false;
  const handlerFor = (name) => async (event, client) => {
    calls.push({ worker: name, global_position: event.global_position, attempt: event.attempt });
    await client.query(`INSERT INTO ${table} (event_id, stream_id, stream_version, consumer) VALUES ($1, $2, $3, $4)`, [
      event.event_id,
      event.stream_id,
      event.stream_version,
      name,
    ]);
    if (name !== 'slow' && event.global_position === flaky && !flakyFailed) {
      flakyFailed = true;
      throw new Error('failed after writing');
    }
    if (name === 'slow' && event.global_position === stall) {
      stalled = true;
      await gate.promise;
    }
  };
  // the slow worker takes every event in one claim, with a short lease, and
  // stalls in the sixth one, its transaction open, until the lease is long gone
  const slow = new SubscriptionWorker({
    subscription,
    consumer: 'node-slow',
    transactional: true,
    lease: '1 second',
    waitMs: 200,
    handler: handlerFor('slow'),
    onError: (err, what) => slowErrors.push(`${what} ${err.code}`),
  });
  const fast = ['f1', 'f2'].map(
    (name) =>
      new SubscriptionWorker({
        subscription,
        consumer: `node-${name}`,
        transactional: true,
        waitMs: 200,
        handler: handlerFor(name),
        onError: (err, what) => errors.push(`${name} ${what}: ${err.message}`),
      }),
  );
  const landed = async () =>
    (await sql(`SELECT count(DISTINCT event_id)::int AS n FROM ${table} WHERE stream_id LIKE $1`, [`${category}-%`]))[0].n;
  const runs = [slow.start()];
  try {
    await waitUntil('the slow worker to stall', () => stalled);
    runs.push(...fast.map((w) => w.start()));
    // its lease expires: the others take its partitions and its events again
    await waitUntil(
      'every event to land, committed by the other workers',
      async () => (await landed()) === events.length && (await inFlight(subscription)) === 0,
    );
    gate.resolve();
    await waitUntil('the slow worker\'s ack to be refused', () => slowErrors.length > 0);
    await appendSteps(streams, 1, 4);
    await waitUntil(
      'the new events to land',
      async () => (await landed()) === events.length + streams.length && (await inFlight(subscription)) === 0,
    );
  } finally {
    gate.resolve();
    await stopWorkers([slow, ...fast], runs);
  }
  assert.deepEqual(errors, []);
  assert.deepEqual(slowErrors, ['batch 55000'], 'the slow worker\'s ack was refused: its lease had expired');
  assert.deepEqual(
    calls
      .filter((c) => c.worker === 'slow' && c.global_position <= events[events.length - 1].global_position)
      .map((c) => [c.global_position, c.attempt]),
    events.map((e) => [e.global_position, 1]),
    'the slow worker handled its whole batch in its transaction',
  );
  const all = await categoryEvents(category);
  const rows = await sql(`SELECT event_id, stream_id, stream_version, consumer FROM ${table} ORDER BY id`);
  assert.deepEqual(
    rows.map((r) => r.event_id).sort(),
    all.map((e) => e.event_id).sort(),
    'every event landed exactly once',
  );
  assert.deepEqual(
    rows.filter((r) => r.consumer === 'slow' && r.stream_version <= 3),
    [],
    'nothing of the refused batch landed',
  );
  assert.deepEqual(versionsByStream(rows), versionsByStream(all), 'each stream landed in order');
  assert.equal(
    calls.filter((c) => c.worker !== 'slow' && c.global_position === flaky).length,
    2,
    'the event that failed after writing was handled again, and landed once',
  );
});
