'use strict';
// A small order service on event-store-client: it owns the saga type
// "checkout" (steps reserve, charge, ship, worked here), prints every event
// of the store as its follower sees it, sends a receipt for every order as
// one consumer of the subscription "order-receipts" (run the service twice
// and the two share the orders), and with --orders N places N orders (an
// OrderPlaced event appended with retries, and a checkout saga each), then
// stops once their sagas have ended and their receipts are sent.  Without
// --orders it runs until Ctrl-C.
//
//   PGHOST=... PGPORT=... PGDATABASE=... node service.js [--orders N]

const { appendWithRetry, createPool, Follower, PermanentError, SagaWorker, SubscriptionWorker } = require('event-store-client');

// SQLSTATE duplicate_object: the subscription exists already
const DUPLICATE_OBJECT = '42710';

const CHECKOUT = {
  steps: [{ name: 'reserve' }, { name: 'charge', max_attempts: 3, backoff: '1 second' }, { name: 'ship' }],
  timeout: '1 hour',
};

const handlers = {
  reserve: {
    action: async (data) => ({ reservation: `R-${data.order}` }),
    compensate: async (data) => ({ released: data.reservation }),
  },
  charge: {
    action: async (data) => {
      if (data.total > 100) {
        throw new PermanentError(`card declined for ${data.total}`);
      }
      return { payment: `P-${data.order}` };
    },
  },
  ship: {
    action: async (data) => ({ tracking: `T-${data.order}` }),
  },
};

async function main() {
  const i = process.argv.indexOf('--orders');
  const orders = i > 0 ? Number(process.argv[i + 1]) : 0;
  const pool = createPool();
  await pool.query("SELECT event_store.define_saga('checkout', $1::jsonb)", [JSON.stringify(CHECKOUT)]);

  const start = (await pool.query('SELECT event_store.head_position() AS p')).rows[0].p;
  const follower = new Follower({
    after: start,
    wake: 'listen',
    waitTimeoutMs: 1000,
    handler: (e) => console.log(`${e.global_position} ${e.stream_id}@${e.stream_version} ${e.event_type} ${JSON.stringify(e.data)}`),
  });
  const worker = new SagaWorker({ pool, name: `node-service-${process.pid}`, handlers });

  // receipts: every OrderPlaced, once, shared by all running services
  await pool
    .query("SELECT event_store.create_subscription('order-receipts', categories => ARRAY['order'], event_types => ARRAY['OrderPlaced'])")
    .catch((err) => {
      if (err.code !== DUPLICATE_OBJECT) {
        throw err;
      }
    });
  const receipted = new Set();
  const receipts = new SubscriptionWorker({
    subscription: 'order-receipts',
    consumer: `node-service-${process.pid}`,
    handler: (e) => {
      console.log(`receipt for ${e.stream_id}: ${e.data.total} (attempt ${e.attempt})`);
      receipted.add(e.stream_id);
    },
  });
  const running = [follower.start(), worker.start(), receipts.start()];

  const stop = async () => {
    await Promise.all([follower.stop(), worker.stop(), receipts.stop()]);
    await Promise.all(running);
    await pool.end();
  };
  process.once('SIGINT', () => stop().then(() => process.exit(0)));

  if (orders > 0) {
    const sagas = [];
    const placed = [];
    for (let n = 1; n <= orders; n++) {
      const order = `${Date.now().toString(36)}-${n}`;
      const total = 40 * n; // the third order and later are declined: their sagas compensate
      await appendWithRetry(pool, `order-${order}`, () => ({ type: 'OrderPlaced', data: { total } }));
      placed.push(`order-${order}`);
      const res = await pool.query("SELECT event_store.start_saga('checkout', $1::jsonb) AS id", [
        JSON.stringify({ order, total }),
      ]);
      sagas.push(res.rows[0].id);
    }
    for (;;) {
      const res = await pool.query(
        "SELECT count(*)::int AS open FROM event_store.sagas WHERE saga_id = ANY ($1::uuid[]) AND status IN ('running', 'compensating')",
        [sagas],
      );
      if (res.rows[0].open === 0) {
        break;
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    // let the follower print the last saga events
    const last = await pool.query(
      "SELECT max(e.global_position) AS p FROM unnest($1::uuid[]) id, event_store.read_stream('saga-' || id) e",
      [sagas],
    );
    const end = last.rows[0].p;
    // (another service may have sent some of the receipts)
    const receiptsSent = async () =>
      placed.every((s) => receipted.has(s)) ||
      (await pool.query("SELECT in_flight = 0 AND lag_events = 0 AS done FROM event_store.subscription_status WHERE name = 'order-receipts'")).rows[0].done;
    while (follower.position < end || !(await receiptsSent())) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    for (const id of sagas) {
      const state = (await pool.query('SELECT event_store.saga_state($1) AS s', [id])).rows[0].s;
      console.log(`saga ${id}: ${state.status} (${state.steps.map((s) => `${s.stepType} ${s.status}`).join(', ')})`);
    }
    await stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
