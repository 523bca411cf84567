// Type declarations of event-store-client (event_store.js).  They use the
// types of the pg driver: a TypeScript service installs @types/pg beside pg.

import type { Client, ClientConfig, DatabaseError, Pool, PoolClient, PoolConfig } from 'pg';

/** The SQLSTATEs the client acts on. */
export declare const SQLSTATE: {
  /** event_store: another writer appended first */
  readonly WRONG_EXPECTED_VERSION: 'SE001';
  /** event_store: an event id is in the store already */
  readonly DUPLICATE_EVENT_ID: 'SE002';
  readonly SERIALIZATION_FAILURE: '40001';
  readonly DEADLOCK_DETECTED: '40P01';
  /** a wait ended by stop() */
  readonly QUERY_CANCELED: '57014';
  /** a subscription's lease expired: its ack is refused */
  readonly OBJECT_NOT_IN_PREREQUISITE_STATE: '55000';
};
export declare const WRONG_EXPECTED_VERSION: 'SE001';

/** What the client sends queries to: a pool, or a connection outside a transaction. */
export type Queryable = Pool | Client | PoolClient;

/** An event to append (event_store.append's event object). */
export interface NewEvent<TData = unknown> {
  type: string;
  data?: TData;
  metadata?: Record<string, unknown> | null;
  /** a uuid; appendWithRetry gives one to an event that has none */
  id?: string;
  schema_version?: number;
}

/** One event or a batch of them. */
export type Events<TData = unknown> = NewEvent<TData> | NewEvent<TData>[];

/** A row of event_store.event (read_all, read_stream, ...). */
export interface RecordedEvent<TData = unknown> {
  global_position: number;
  stream_id: string;
  stream_version: number;
  event_id: string;
  event_type: string;
  data: TData;
  metadata: Record<string, unknown>;
  schema_version: number;
  recorded_at: Date;
}

/** A row of event_store.claim_events. */
export interface ClaimedEvent<TData = unknown> extends RecordedEvent<TData> {
  partition: number;
  /** 1 on the first delivery */
  attempt: number;
}

/** Decides the events of an attempt from the stream's current version. */
export type Decide<TData = unknown> = (
  version: number,
  attempt: number,
) => Events<TData> | null | undefined | Promise<Events<TData> | null | undefined>;

export interface AppendOptions {
  /**
   * The version the stream must have (0: it must not exist yet; null: any).
   * When given, stream_version() is not read and SE001 is thrown, not retried.
   */
  expectedVersion?: number | null;
  /** attempts in all (default 10) */
  maxAttempts?: number;
  /** first backoff ceiling (default 5) */
  baseDelayMs?: number;
  /** largest backoff ceiling (default 200) */
  maxDelayMs?: number;
  /** called before retrying after SE001 */
  onConflict?: (error: DatabaseError, attempt: number) => void;
  /** called before every retry */
  onRetry?: (error: Error, attempt: number) => void;
}

export interface AppendResult {
  /** the stream's version after the events */
  version: number;
  attempts: number;
  /** false only when the decide function returned null or undefined */
  appended: boolean;
  /** the ids of the batch, in its order */
  eventIds: string[];
}

/**
 * Appends with optimistic concurrency: retried after SE001 (read and decided
 * again), and, with a pg.Pool, after 40001, 40P01 or a lost connection (the
 * same batch again); idempotent by event id.
 */
export declare function appendWithRetry<TData = unknown>(
  db: Queryable,
  streamId: string,
  events: Events<TData> | Decide<TData>,
  options?: AppendOptions,
): Promise<AppendResult>;

/** The events as an array, each with an id (the caller's objects unchanged). */
export declare function withEventIds<E extends NewEvent>(events: E | E[]): Array<E & { id: string }>;

/** pg settings: DATABASE_URL or the PG* variables, bigint as number, then the overrides. */
export declare function connectionConfig<C extends ClientConfig = ClientConfig>(overrides?: C): C;
export declare function createPool(overrides?: PoolConfig): Pool;

export type Wake = 'wait_for_events' | 'listen';

export interface FollowerOptions<TData = unknown> {
  /** called once per event, in order; the cursor moves past it when it returned */
  handler: (event: RecordedEvent<TData>) => void | Promise<void>;
  /** the position to start after (default 0) */
  after?: number;
  /** events per read_all call (default 500) */
  batchSize?: number;
  /** what wakes the follower when it has read everything (default 'wait_for_events') */
  wake?: Wake;
  /** longest wait before reading again anyway (default 5000) */
  waitTimeoutMs?: number;
  /** extra pg.Client settings */
  connection?: ClientConfig;
}

/** Follows every event of the store in global position order, gap-safe. */
export declare class Follower<TData = unknown> {
  constructor(options: FollowerOptions<TData>);
  /** the cursor: the position of the last event handled */
  readonly position: number;
  readonly wake: Wake;
  /** follows until stop() (resolves) or a handler or connection error (rejects) */
  start(): Promise<void>;
  /** stops after the current event; resolves when the loop has ended */
  stop(): Promise<void>;
}

/** A handler error that is not retried: the saga step fails for good. */
export declare class PermanentError extends Error {
  constructor(message?: string);
  readonly retryable: false;
}

/** A row of event_store.claim_saga_steps. */
export interface SagaStep<TData = Record<string, unknown>> {
  saga_id: string;
  saga_type: string;
  step: string;
  kind: 'action' | 'compensation';
  attempt: number;
  /** the saga's data (action), or the step's compensation data (compensation) */
  data: TData;
}

/** A step's result: kept as its compensation data and merged into the saga's data. */
export type StepResult = Record<string, unknown> | null | undefined | void;

export interface StepHandler<TData = Record<string, unknown>> {
  action?: (data: TData, step: SagaStep<TData>) => StepResult | Promise<StepResult>;
  compensate?: (data: Record<string, unknown>, step: SagaStep<Record<string, unknown>>) => StepResult | Promise<StepResult>;
}

export interface SagaWorkerOptions<TData = Record<string, unknown>> {
  pool: Pool;
  /** recorded as the lease owner */
  name: string;
  /** by step name: the steps this worker claims */
  handlers: Record<string, StepHandler<TData>>;
  /** steps claimed at a time (default 10) */
  maxCount?: number;
  /** how long a claim is held (default '30 seconds') */
  lease?: string;
  /** pause when nothing was claimable (default 200) */
  pollIntervalMs?: number;
  /** a claim or a step report failed */
  onError?: (error: Error, step: { step: string; saga_id: string | null }) => void;
}

/** Works external saga steps: claim_saga_steps, then complete_saga_step or fail_saga_step. */
export declare class SagaWorker<TData = Record<string, unknown>> {
  constructor(options: SagaWorkerOptions<TData>);
  readonly name: string;
  /** claims and works one batch; resolves to the number of steps claimed */
  runOnce(): Promise<number>;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface SubscriptionWorkerOptions<TData = unknown> {
  subscription: string;
  /** this worker's name in the group */
  consumer: string;
  /** called once per event, in order, with the worker's connection; throwing nacks the event */
  handler: (event: ClaimedEvent<TData>, client: Client) => void | Promise<void>;
  /** events claimed at a time (default 100) */
  maxCount?: number;
  /** how long the partitions stay ours without a claim (default '30 seconds') */
  lease?: string;
  /** how long a claim waits for events: long polling (default 1000) */
  waitMs?: number;
  /** the batch, its handlers' writes and its ack in one transaction (default false) */
  transactional?: boolean;
  /** extra pg.Client settings */
  connection?: ClientConfig;
  onError?: (error: Error, what: 'claim' | 'batch' | 'release') => void;
}

/** One consumer of a subscription: claim_events, the handler, ack_events / nack_event. */
export declare class SubscriptionWorker<TData = unknown> {
  constructor(options: SubscriptionWorkerOptions<TData>);
  readonly subscription: string;
  readonly consumer: string;
  /** events acknowledged so far */
  readonly acknowledged: number;
  /** works until stop() (resolves) or a failed claim (rejects) */
  start(): Promise<void>;
  /** stops after the event in hand, acknowledges and releases; resolves when stopped */
  stop(): Promise<void>;
}

/** retry_saga: what stopped the saga gets a fresh round of attempts. */
export declare function retrySaga(db: Queryable, sagaId: string): Promise<void>;
/** resolve_saga: a person settles a stuck saga. */
export declare function resolveSaga(
  db: Queryable,
  sagaId: string,
  status: 'completed' | 'compensated',
  note: string,
): Promise<void>;
/** replay_parked: resolves to the number of streams delivered again. */
export declare function replayParked(db: Queryable, subscription: string, streamId?: string | null): Promise<number>;
/** skip_parked: resolves to the number of streams whose held events were acknowledged. */
export declare function skipParked(db: Queryable, subscription: string, streamId?: string | null): Promise<number>;
