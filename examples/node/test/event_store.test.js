'use strict';
// Tests of the Node.js client (event_store.js) against a real server:
//
//   - appendWithRetry re-reads and retries after SE001, and gives up after
//     maxAttempts;
//   - concurrent appenders to one stream, with retries, all land: versions
//     1..n without gaps, no event lost or doubled, each writer's events in
//     its order;
//   - two followers, one woken by wait_for_events() and one by LISTEN
//     event_store, see every committed event exactly once and in position
//     order, while appenders race, an append is rolled back and one commits
//     late (after events with higher positions);
//   - sagas defined here, whose external steps two SagaWorkers work,
//     complete (one after a retried step); one whose step fails for good
//     compensates its completed step (saga_state).
//
// Connects with the PG* environment variables (or DATABASE_URL) to a
// database where CREATE EXTENSION event_store was done, on a server with
// the background worker running (LISTEN and the saga retry need it):
//
//   PGHOST=... PGPORT=... PGDATABASE=... npm test

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { appendWithRetry, createPool, Follower, PermanentError, SagaWorker } = require('../event_store');

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
  assert.deepEqual(result, { version: 2, attempts: 2, appended: true });
  assert.deepEqual(versionsSeen, [0, 1], 'the second attempt saw the other writer');
  assert.deepEqual(conflicts, ['SE001']);
  const events = await sql('SELECT stream_version, data FROM event_store.read_stream($1)', [stream]);
  assert.deepEqual(events, [
    { stream_version: 1, data: { by: 'other' } },
    { stream_version: 2, data: { by: 'us', basedOn: 1 } },
  ]);
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
