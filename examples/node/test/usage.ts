// A typed service on event-store-client: `tsc -p test` checks it against the
// package's declarations (event_store.d.ts), and fails when they change in a
// way a service would notice.  Every `@ts-expect-error` line is a misuse the
// declarations must refuse (tsc fails when one of them is accepted).  Only
// type-checked, never run.

import type { Pool, PoolClient } from 'pg';
import {
  SQLSTATE,
  appendWithRetry,
  createPool,
  Follower,
  PermanentError,
  replayParked,
  retrySaga,
  resolveSaga,
  SagaWorker,
  skipParked,
  SubscriptionWorker,
  withEventIds,
} from 'event-store-client';
import type { AppendResult, ClaimedEvent, NewEvent, RecordedEvent, SagaStep } from 'event-store-client';

interface OrderPlaced {
  total: number;
  lines: string[];
}

async function place(pool: Pool, order: string): Promise<number> {
  const event: NewEvent<OrderPlaced> = { type: 'OrderPlaced', data: { total: 40, lines: ['a'] } };
  const result: AppendResult = await appendWithRetry(pool, `order-${order}`, event, {
    maxAttempts: 5,
    onConflict: (err, attempt) => console.log(err.code, attempt),
    onRetry: (err) => console.log(err.message),
  });
  const ids: string[] = result.eventIds;
  console.log(ids.length);
  // decided again after a conflict, from the current version
  await appendWithRetry<OrderPlaced>(pool, `order-${order}`, async (version, attempt) =>
    version > 0 ? null : [{ type: 'OrderPlaced', data: { total: attempt, lines: [] } }],
  );
  // a fixed expected version
  await appendWithRetry(pool, `order-${order}`, { type: 'OrderShipped' }, { expectedVersion: 0 });
  // @ts-expect-error an event has a type
  await appendWithRetry(pool, 'order-1', { data: {} });
  // @ts-expect-error the data of the declared type
  await appendWithRetry<OrderPlaced>(pool, 'order-1', { type: 'OrderPlaced', data: { total: 'forty', lines: [] } });
  // @ts-expect-error versions are numbers
  await appendWithRetry(pool, 'order-1', { type: 'X' }, { expectedVersion: '3' });
  const withIds = withEventIds([event, { type: 'Noted' }]);
  const first: string = withIds[0].id;
  return result.version + first.length;
}

async function main(): Promise<void> {
  const pool: Pool = createPool({ max: 4 });
  await place(pool, '1');

  const follower = new Follower<OrderPlaced>({
    wake: 'listen',
    after: 0,
    handler: async (e: RecordedEvent<OrderPlaced>) => {
      const total: number = e.data.total;
      const at: Date = e.recorded_at;
      console.log(e.global_position + total, at.toISOString());
    },
  });
  // @ts-expect-error only the two wake modes
  new Follower({ handler: () => {}, wake: 'poll' });
  const following = follower.start();
  const position: number = follower.position;
  // @ts-expect-error the cursor is the follower's
  follower.position = 3;

  const receipts = new SubscriptionWorker<OrderPlaced>({
    subscription: 'order-receipts',
    consumer: 'typed',
    waitMs: 1000,
    transactional: true,
    handler: async (e: ClaimedEvent<OrderPlaced>, client) => {
      await client.query('SELECT $1::bigint', [e.global_position + e.attempt + e.partition]);
    },
    onError: (err, what) => console.log(what === 'batch', err.message),
  });
  // @ts-expect-error a consumer name is required
  new SubscriptionWorker({ subscription: 's', handler: () => {} });
  const consuming = receipts.start();
  const acked: number = receipts.acknowledged;

  const steps = new SagaWorker<{ order: string; total: number }>({
    pool,
    name: 'typed',
    handlers: {
      reserve: {
        action: (data, step: SagaStep<{ order: string; total: number }>) => ({ reservation: `R-${data.order}-${step.attempt}` }),
        compensate: async (data) => ({ released: data.reservation }),
      },
      charge: {
        action: async (data) => {
          if (data.total > 100) {
            throw new PermanentError('declined');
          }
        },
      },
    },
  });
  const claimed: number = await steps.runOnce();
  const working = steps.start();

  await retrySaga(pool, '00000000-0000-0000-0000-000000000000');
  await resolveSaga(pool, '00000000-0000-0000-0000-000000000000', 'compensated', 'refunded by hand');
  // @ts-expect-error a saga ends completed or compensated
  await resolveSaga(pool, '00000000-0000-0000-0000-000000000000', 'failed', 'no');
  const client: PoolClient = await pool.connect();
  const replayed: number = await replayParked(client, 'order-receipts', 'order-1');
  const skipped: number = await skipParked(pool, 'order-receipts');
  client.release();
  const code: 'SE001' = SQLSTATE.WRONG_EXPECTED_VERSION;

  await Promise.all([follower.stop(), receipts.stop(), steps.stop()]);
  await Promise.all([following, consuming, working]);
  console.log(position, acked, claimed, replayed, skipped, code);
  await pool.end();
}

void main;
