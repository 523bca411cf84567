/*
 * position.c
 *	  The global position counter and the gap-safe follower horizon.
 *
 * Every database that uses event_store has an entry in shared memory with
 * the next global position to hand out.  An appender takes its positions
 * under the entry's LWLock (held for a few instructions) and, in the same
 * critical section, publishes the lowest position its open transaction holds
 * in its own per-process slot.  The slot is cleared at transaction end, after
 * the commit (or abort) has become visible in the proc array.
 *
 * A reader's safe head is therefore
 *		min(lowest position of every other in-flight appender) - 1
 * or, with nobody in flight, the last position handed out.  Every position at
 * or below the head belongs to a transaction that has ended: a snapshot taken
 * after computing the head sees all of them that committed.  Appenders never
 * wait for each other here and nothing waits on a timer.
 *
 * Positions are never handed out twice, not even across restarts, crashes
 * and dump/restore, whatever was rolled back or removed: a follower may have
 * passed a position whose event is gone.  The sequence
 * event_store.position_mark holds a durable high-water mark: every position
 * ever handed out is at or below it.  Appenders take positions below the
 * mark in shared memory; the mark is raised ES_MARK_CHUNK positions ahead,
 * and that change is flushed to WAL before a position of the new chunk is
 * handed out.  The sequence is dumped with the extension's data.
 *
 * The counter is rebuilt on the first use after server start or crash
 * recovery, and again whenever event_store.events is a new table (DROP/CREATE
 * EXTENSION): it continues above both the highest stored position and the
 * mark, and the head starts there (everything below has ended).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/twophase.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/lmgr.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "event_store.h"

#if PG_VERSION_NUM >= 170000
#define ES_MY_PROCNO	MyProcNumber
#else
#define ES_MY_PROCNO	(MyProc->pgprocno)
#endif

/*
 * How far ahead of the positions handed out the durable mark is raised: a
 * WAL flush per so many positions, and at most so many positions skipped
 * after a restart.  It is raised again when less than half of it is left.
 */
#define ES_MARK_CHUNK	1000

/*
 * Per-database state; protected by the entry's own LWLock, except the
 * atomics (pg_atomic_*) and the unlocked hints said so below
 */
typedef struct EsDbState
{
	Oid			dboid;			/* InvalidOid: the entry is free */
	Oid			events_relid;	/* the table the counter was built from */
	bool		initialized;	/* next_position is valid */
	/*
	 * Rows arrived without append() (pg_restore): every such event bumps
	 * stale_gen; the counter reflects the table as of built_gen.  A rescan
	 * only settles the generation it read before scanning, so a commit that
	 * lands during the scan leaves the counter stale for the next caller.
	 */
	pg_atomic_uint32 stale_gen;
	uint32		built_gen;
	int64		next_position;	/* next position to hand out */
	bool		uses_mark;		/* the schema has position_mark (0.3.0 on) */
	int64		mark;			/* with uses_mark: durable, next_position - 1 <= mark */
	bool		built_in_recovery;	/* built on a standby: rebuild once promoted */
	pg_atomic_uint64 max_committed; /* highest position of a committed append */
	ConditionVariable head_cv;	/* broadcast when an appender's xact ends */
	/*
	 * Worker signalling.  worker_procno and worker_wants_commits are written
	 * by the worker alone and read by appenders without the lock: unlocked
	 * hints (aligned, so never torn), where a stale value costs one latch set
	 * too many or one wake-up missed until the worker's naptime.
	 */
	int			worker_procno;	/* pgprocno of the database's worker, or -1 */
	bool		worker_wants_commits;	/* it runs async projections: wake it per commit */
	pg_atomic_uint32 projections_changed;	/* 1: the worker should re-read
											 * projections (set by any
											 * backend, taken by the worker) */
	pg_atomic_uint64 last_wake;	/* when an appender last woke the worker */
	/* since server start, for event_store.stats */
	pg_atomic_uint64 n_appends;	/* append() calls that wrote events */
	pg_atomic_uint64 n_events;	/* events they wrote */
	pg_atomic_uint64 n_conflicts;	/* SE001 wrong expected version */
} EsDbState;

/* Per-process slot; written by its owner only */
typedef struct EsProcSlot
{
	Oid			dboid;			/* database of the owner */
	pg_atomic_uint64 lowest;	/* lowest position held by the open xact, or 0 */
} EsProcSlot;

#define ES_ABSENT_SLOTS 64

typedef struct EsShared
{
	int			max_databases;
	int			nprocs;
	/* launcher coordination; protected by the directory lock */
	int			launcher_procno;	/* -1 when not running */
	bool		rescan_requested;
	bool		full_logged;	/* max_databases was reached (logged once) */
	Oid			absent[ES_ABSENT_SLOTS];	/* databases whose worker found no extension */
	EsDbState	dbs[FLEXIBLE_ARRAY_MEMBER];
	/* followed by EsProcSlot procs[nprocs] */
} EsShared;

int			es_max_databases = 16;

static EsShared *es_shared = NULL;
static EsProcSlot *es_procs = NULL;
static LWLockPadded *es_locks = NULL;	/* [0]: directory, [1 + i]: dbs[i] */

/* backend-local state */
static EsDbState *my_db = NULL;
static LWLock *my_db_lock = NULL;
static bool xact_holds_positions = false;
static int64 xact_max_position = 0;	/* highest position this xact holds */
static bool stale_at_commit = false;	/* this xact wrote events directly */
static bool wake_worker_at_end = false;
static bool is_db_worker = false;
static bool is_launcher = false;
static bool callbacks_registered = false;

/* Number of PGPROC slots, which bounds pgprocno */
static int
es_proc_count(void)
{
#if PG_VERSION_NUM >= 150000
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
#else
	return MaxConnections + autovacuum_max_workers + 1 + max_worker_processes +
		max_wal_senders + NUM_AUXILIARY_PROCS + max_prepared_xacts;
#endif
}

/* Shared memory we need */
Size
EsPositionShmemSize(void)
{
	Size		size;

	size = offsetof(EsShared, dbs);
	size = add_size(size, mul_size(es_max_databases, sizeof(EsDbState)));
	size = MAXALIGN(size);
	size = add_size(size, mul_size(es_proc_count(), sizeof(EsProcSlot)));
	return size;
}

/* Ask for our LWLocks: a directory lock plus one per database entry */
void
EsPositionRequestLocks(void)
{
	RequestNamedLWLockTranche("event_store", 1 + es_max_databases);
}

/* Create or attach the shared state; runs from shmem_startup_hook */
void
EsPositionShmemInit(void)
{
	bool		found;
	Size		dbs_size;

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	es_shared = ShmemInitStruct("event_store", EsPositionShmemSize(), &found);
	dbs_size = MAXALIGN(offsetof(EsShared, dbs) + es_max_databases * sizeof(EsDbState));
	es_procs = (EsProcSlot *) ((char *) es_shared + dbs_size);
	if (!found)
	{
		es_shared->max_databases = es_max_databases;
		es_shared->nprocs = es_proc_count();
		for (int i = 0; i < es_max_databases; i++)
		{
			EsDbState  *db = &es_shared->dbs[i];

			db->dboid = InvalidOid;
			db->events_relid = InvalidOid;
			db->initialized = false;
			pg_atomic_init_u32(&db->stale_gen, 0);
			db->built_gen = 0;
			db->next_position = 1;
			db->uses_mark = false;
			db->mark = 0;
			db->built_in_recovery = false;
			pg_atomic_init_u64(&db->max_committed, 0);
			db->worker_procno = -1;
			db->worker_wants_commits = false;
			pg_atomic_init_u32(&db->projections_changed, 0);
			pg_atomic_init_u64(&db->last_wake, 0);
			pg_atomic_init_u64(&db->n_appends, 0);
			pg_atomic_init_u64(&db->n_events, 0);
			pg_atomic_init_u64(&db->n_conflicts, 0);
			ConditionVariableInit(&db->head_cv);
		}
		es_shared->launcher_procno = -1;
		es_shared->rescan_requested = false;
		es_shared->full_logged = false;
		memset(es_shared->absent, 0, sizeof(es_shared->absent));
		for (int i = 0; i < es_shared->nprocs; i++)
		{
			es_procs[i].dboid = InvalidOid;
			pg_atomic_init_u64(&es_procs[i].lowest, 0);
		}
	}
	es_locks = GetNamedLWLockTranche("event_store");
	LWLockRelease(AddinShmemInitLock);
}

/* Is the shared state there (i.e. was the library preloaded)? */
bool
EsPositionShmemReady(void)
{
	return es_shared != NULL;
}

/* Our own slot */
static inline EsProcSlot *
es_my_slot(void)
{
	return &es_procs[ES_MY_PROCNO];
}

/* Raise max_committed to at least pos (lock-free, monotonic) */
static void
es_publish_committed(int64 pos)
{
	uint64		cur = pg_atomic_read_u64(&my_db->max_committed);

	while ((int64) cur < pos &&
		   !pg_atomic_compare_exchange_u64(&my_db->max_committed, &cur, (uint64) pos))
		;
}

/* Release our positions: the transaction that held them has ended */
static void
es_release_positions(bool committed)
{
	if (!xact_holds_positions)
		return;
	xact_holds_positions = false;
	if (committed)
		es_publish_committed(xact_max_position);
	xact_max_position = 0;
	/* the commit is already visible; make sure that is ordered first */
	pg_memory_barrier();
	pg_atomic_write_u64(&es_my_slot()->lowest, 0);
	ConditionVariableBroadcast(&my_db->head_cv);
}

/*
 * Set the latch of this database's worker, if it runs.  Unless forced (a
 * projection changed) or the worker runs async projections, an appender
 * wakes it at most once per event_store.notify_interval: enough for the
 * throttled NOTIFY, and it keeps a busy store from paying for a wake-up per
 * commit.
 */
static void
es_wake_db_worker(bool force)
{
	int			procno;

	if (my_db == NULL)
		return;
	procno = my_db->worker_procno;
	if (procno < 0 || procno >= es_shared->nprocs || procno == ES_MY_PROCNO)
		return;
	if (!force && !my_db->worker_wants_commits)
	{
		TimestampTz now = GetCurrentTimestamp();
		uint64		last = pg_atomic_read_u64(&my_db->last_wake);

		if ((int64) (now - (TimestampTz) last) < (int64) es_notify_interval_ms * 1000)
			return;
		if (!pg_atomic_compare_exchange_u64(&my_db->last_wake, &last, (uint64) now))
			return;				/* another appender just woke it */
	}
	SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Transaction end: publish that our positions are settled */
static void
es_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (xact_holds_positions)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that appended events"),
						 errdetail("Followers could not read past the positions it holds until COMMIT PREPARED.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			if (wake_worker_at_end && my_db != NULL &&
				(event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT))
				pg_atomic_write_u32(&my_db->projections_changed, 1);
			if (stale_at_commit && my_db != NULL &&
				(event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT))
				pg_atomic_fetch_add_u32(&my_db->stale_gen, 1);	/* its rows are visible now */
			stale_at_commit = false;
			if (xact_holds_positions || wake_worker_at_end)
			{
				bool		force = wake_worker_at_end;

				es_release_positions(event == XACT_EVENT_COMMIT ||
									 event == XACT_EVENT_PARALLEL_COMMIT);
				es_wake_db_worker(force);
			}
			wake_worker_at_end = false;
			break;
		default:
			break;
	}
}

/* Process exit: never leave a stale slot behind */
static void
es_shmem_exit(int code, Datum arg)
{
	if (es_shared != NULL && MyProc != NULL)
	{
		pg_atomic_write_u64(&es_my_slot()->lowest, 0);
		xact_holds_positions = false;
		if (is_db_worker && my_db != NULL && my_db->worker_procno == ES_MY_PROCNO)
			my_db->worker_procno = -1;
		if (is_launcher)
		{
			LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
			if (es_shared->launcher_procno == ES_MY_PROCNO)
				es_shared->launcher_procno = -1;
			LWLockRelease(&es_locks[0].lock);
		}
	}
}

/* Register the per-backend callbacks once */
void
EsPositionRegisterCallbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(es_xact_callback, NULL);
	before_shmem_exit(es_shmem_exit, (Datum) 0);
	callbacks_registered = true;
}

/*
 * Find (or create) the entry of this database.  The directory lock guards
 * the dboid fields; an entry of a database that no longer exists is reused.
 * When every entry is taken: an error, or false with missing_ok.
 */
static bool
es_attach_db_extended(bool missing_ok)
{
	int			slot = -1;

	if (my_db != NULL)
		return true;
	EsCheckPreloaded();
	EsPositionRegisterCallbacks();

	for (int attempt = 0; attempt < 2 && slot < 0; attempt++)
	{
		LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
		for (int i = 0; i < es_shared->max_databases; i++)
		{
			if (es_shared->dbs[i].dboid == MyDatabaseId)
			{
				slot = i;
				break;
			}
		}
		if (slot < 0)
		{
			for (int i = 0; i < es_shared->max_databases; i++)
			{
				if (es_shared->dbs[i].dboid == InvalidOid)
				{
					EsDbState  *db = &es_shared->dbs[i];

					db->dboid = MyDatabaseId;
					db->events_relid = InvalidOid;
					db->initialized = false;
					db->next_position = 1;
					db->uses_mark = false;
					db->mark = 0;
					db->built_in_recovery = false;
					pg_atomic_write_u64(&db->max_committed, 0);
					pg_atomic_write_u64(&db->n_appends, 0);
					pg_atomic_write_u64(&db->n_events, 0);
					pg_atomic_write_u64(&db->n_conflicts, 0);
					db->worker_procno = -1;
					slot = i;
					break;
				}
			}
		}
		LWLockRelease(&es_locks[0].lock);

		if (slot < 0 && attempt == 0)
		{
			/* full: free the entries of dropped databases, then retry */
			for (int i = 0; i < es_shared->max_databases; i++)
			{
				Oid			dboid = es_shared->dbs[i].dboid;

				if (OidIsValid(dboid) &&
					!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid)))
				{
					LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
					if (es_shared->dbs[i].dboid == dboid)
						es_shared->dbs[i].dboid = InvalidOid;
					LWLockRelease(&es_locks[0].lock);
				}
			}
		}
	}

	if (slot < 0 && missing_ok)
		return false;
	if (slot < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many databases use event_store"),
				 errdetail("All %d shared memory entries are taken.", es_shared->max_databases),
				 errhint("Increase event_store.max_databases and restart the server.")));

	my_db = &es_shared->dbs[slot];
	my_db_lock = &es_locks[1 + slot].lock;
	es_my_slot()->dboid = MyDatabaseId;
	return true;
}

/* This database's entry; an error when every entry is taken */
static void
es_attach_db(void)
{
	(void) es_attach_db_extended(false);
}

/*
 * Worker: take this database's entry; false when event_store.max_databases
 * is reached, which the first worker to find so logs.
 */
bool
EsTryAttachDatabase(void)
{
	bool		first;

	if (es_attach_db_extended(true))
		return true;
	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	first = !es_shared->full_logged;
	es_shared->full_logged = true;
	LWLockRelease(&es_locks[0].lock);
	if (first)
		ereport(LOG,
				(errmsg("event_store.max_databases (%d) is reached: database \"%s\" gets no event_store worker",
						es_shared->max_databases, get_database_name(MyDatabaseId)),
				 errdetail("Every database that uses event_store takes one of the event_store.max_databases entries in shared memory; appends there fail until one is free."),
				 errhint("Increase event_store.max_databases and restart the server.")));
	return false;
}

/*
 * Highest global position in the table as the snapshot sees it; with
 * SnapshotAny, committed or not: the counter must never hand out a stored
 * position.
 */
static int64
es_scan_max_position(const EsCatalog *cat, Snapshot snapshot)
{
	Datum		maxpos;

	if (!EsFirstEventValue(cat, cat->position_idx, snapshot, NULL, 0,
						   BackwardScanDirection, Anum_es_global_position, &maxpos))
		return 0;
	return DatumGetInt64(maxpos);
}

/*
 * The durable mark as stored in the sequence (0 before the first
 * reservation).  Read as the extension owner: any role's append may need it.
 */
static int64
es_read_mark(Oid seqid)
{
	LOCAL_FCINFO(fcinfo, 1);
	EsUserSwitch sw;
	Datum		result;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = ObjectIdGetDatum(seqid);
	fcinfo->args[0].isnull = false;
	EsBecomeOwner(&sw);
	result = pg_sequence_last_value(fcinfo);
	EsRestoreUser(&sw);
	return fcinfo->isnull ? 0 : DatumGetInt64(result);
}

/*
 * Raise the durable mark so that positions up to needed (and whatever the
 * counter handed out already) are covered, ES_MARK_CHUNK ahead, and flush
 * that to WAL before the new mark counts.  Raisers queue on a
 * self-conflicting lock of the sequence, so the stored mark only goes up;
 * with wait = false (raising ahead of need) nothing happens while another
 * backend raises it.  Called without my_db_lock held.
 */
static void
es_raise_mark(Oid seqid, int64 needed, bool wait)
{
	int64		mark;
	int64		stored;
	int64		target;

	if (wait)
		LockRelationOid(seqid, ShareUpdateExclusiveLock);
	else if (!ConditionalLockRelationOid(seqid, ShareUpdateExclusiveLock))
		return;

	LWLockAcquire(my_db_lock, LW_SHARED);
	needed = Max(needed, my_db->next_position - 1);
	mark = my_db->mark;
	LWLockRelease(my_db_lock);

	/* did the backend before us in the queue raise it far enough? */
	if (mark - needed < (wait ? 0 : ES_MARK_CHUNK / 2))
	{
		EsUserSwitch sw;
		bool		from_outside = false;

		target = needed + ES_MARK_CHUNK;
		stored = es_read_mark(seqid);
		if (stored < target)
		{
			EsBecomeOwner(&sw);
			(void) DirectFunctionCall2(setval_oid, ObjectIdGetDatum(seqid),
									   Int64GetDatum(target));
			EsRestoreUser(&sw);
			XLogFlush(XactLastRecEnd);
			stored = target;
		}
		else
		{
			/*
			 * Set higher than this counter knew, from outside (pg_restore):
			 * positions up to it may have been handed out by the store it
			 * came from.
			 */
			from_outside = stored > mark;
		}

		LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
		if (from_outside)
			my_db->next_position = Max(my_db->next_position, stored + 1);
		my_db->mark = Max(my_db->mark, stored);
		LWLockRelease(my_db_lock);
	}
	UnlockRelationOid(seqid, ShareUpdateExclusiveLock);
}

/*
 * Make sure this database's counter is built for the current table, and
 * brought up to date after rows arrived without append() (pg_restore).
 */
static void
es_ensure_counter(void)
{
	const EsCatalog *cat = EsGetCatalog();
	bool		in_recovery = RecoveryInProgress();
	bool		want_mark;
	bool		ready;
	uint32		gen;
	int64		maxany;
	int64		maxcommitted;
	int64		mark;
	Snapshot	snapshot;

	es_attach_db();

	/* a standby's counter follows the primary's rows, not its mark */
	want_mark = OidIsValid(cat->position_mark_relid) && !in_recovery;
	gen = pg_atomic_read_u32(&my_db->stale_gen);
	LWLockAcquire(my_db_lock, LW_SHARED);
	ready = my_db->initialized && my_db->built_gen == gen &&
		my_db->events_relid == cat->events_relid &&
		my_db->uses_mark == want_mark && my_db->built_in_recovery == in_recovery;
	LWLockRelease(my_db_lock);
	if (ready)
		return;

	/* the scans below must see every row of the generation read above */
	pg_memory_barrier();
	maxany = es_scan_max_position(cat, SnapshotAny);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	maxcommitted = es_scan_max_position(cat, snapshot);
	UnregisterSnapshot(snapshot);
	mark = want_mark ? es_read_mark(cat->position_mark_relid) : 0;

	LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
	if (!my_db->initialized || my_db->events_relid != cat->events_relid ||
		(my_db->built_in_recovery && !in_recovery))
	{
		/*
		 * A new counter (server start, crash recovery, new table, promotion):
		 * nothing is in flight, so the head starts at the top.
		 */
		my_db->next_position = Max(maxany, mark) + 1;
		pg_atomic_write_u64(&my_db->max_committed, (uint64) Max(maxcommitted, mark));
		my_db->events_relid = cat->events_relid;
		my_db->initialized = true;
		my_db->built_gen = gen;
		my_db->uses_mark = want_mark;
		my_db->mark = mark;
		my_db->built_in_recovery = in_recovery;
	}
	else
	{
		/* never backwards: appenders may hold positions of the old counter */
		my_db->next_position = Max(my_db->next_position, maxany + 1);
		my_db->built_gen = gen;
		if (want_mark && (!my_db->uses_mark || mark > my_db->mark))
		{
			/*
			 * The schema just got the mark (ALTER EXTENSION UPDATE), or it
			 * was set from outside (pg_restore): positions up to it may have
			 * been handed out.  A mark this counter raised itself is only a
			 * reservation.
			 */
			my_db->next_position = Max(my_db->next_position, mark + 1);
			my_db->mark = mark;
		}
		my_db->uses_mark = want_mark;
		my_db->built_in_recovery = in_recovery;
		LWLockRelease(my_db_lock);
		es_publish_committed(maxcommitted);
		return;
	}
	LWLockRelease(my_db_lock);
}

/*
 * Rows are being written to event_store.events without append() (COPY or
 * INSERT by the owner, as pg_restore does): rebuild the counter before its
 * next use, and again once this transaction commits.  Until then the
 * transaction holds the head below every position it may write, as an
 * appender does: followers do not read past rows that are not committed.
 */
void
EsCounterStale(void)
{
	EsProcSlot *me;
	uint64		hold;

	es_attach_db();
	pg_atomic_fetch_add_u32(&my_db->stale_gen, 1);
	stale_at_commit = true;

	me = es_my_slot();
	hold = pg_atomic_read_u64(&my_db->max_committed) + 1;
	LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
	if (pg_atomic_read_u64(&me->lowest) == 0 || pg_atomic_read_u64(&me->lowest) > hold)
		pg_atomic_write_u64(&me->lowest, hold);
	LWLockRelease(my_db_lock);
	xact_holds_positions = true;
}

/*
 * Hand out count consecutive positions to the current transaction and
 * return the first.  The positions stay "in flight" until the transaction
 * ends.
 */
int64
EsAllocatePositions(int64 count)
{
	EsProcSlot *me;
	Oid			seqid;
	int64		first;
	bool		raise_ahead;

	Assert(count > 0);
	es_ensure_counter();
	seqid = EsGetCatalog()->position_mark_relid;
	me = es_my_slot();

	for (;;)
	{
		LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
		first = my_db->next_position;
		if (!my_db->uses_mark || first + count - 1 <= my_db->mark)
			break;
		/* beyond the durable mark: raise it first */
		LWLockRelease(my_db_lock);
		es_raise_mark(seqid, first + count - 1, true);
	}
	my_db->next_position += count;
	if (pg_atomic_read_u64(&me->lowest) == 0)
		pg_atomic_write_u64(&me->lowest, (uint64) first);
	raise_ahead = my_db->uses_mark &&
		my_db->mark - (first + count - 1) < ES_MARK_CHUNK / 2;
	LWLockRelease(my_db_lock);

	xact_holds_positions = true;
	xact_max_position = Max(xact_max_position, first + count - 1);

	/* half of the chunk is used: raise the mark before anybody has to wait */
	if (raise_ahead)
		es_raise_mark(seqid, first + count - 1, false);
	return first;
}

/*
 * The safe head; caller holds my_db_lock (shared is enough).  Capped by the
 * highest committed position (or our own highest), so positions of aborted
 * appends at the top do not count.
 */
static int64
es_head_locked(void)
{
	int			me = ES_MY_PROCNO;
	int64		top = (int64) pg_atomic_read_u64(&my_db->max_committed);
	int64		head;

	/* our own transaction sees its own appends */
	if (xact_holds_positions)
		top = Max(top, xact_max_position);
	head = Min(my_db->next_position - 1, top);

	for (int i = 0; i < es_shared->nprocs; i++)
	{
		uint64		low;

		if (i == me)
			continue;
		low = pg_atomic_read_u64(&es_procs[i].lowest);
		if (low == 0)
			continue;
		pg_read_barrier();
		if (es_procs[i].dboid != MyDatabaseId)
			continue;
		if ((int64) low - 1 < head)
			head = (int64) low - 1;
	}
	return head;
}

/*
 * The highest position a follower may read to: every position at or below
 * it belongs to a transaction that has ended.  Our own transaction's
 * positions do not hold us back (a transaction sees its own writes).
 */
int64
EsSafeHead(void)
{
	int64		head;

	es_ensure_counter();
	LWLockAcquire(my_db_lock, LW_SHARED);
	head = es_head_locked();
	LWLockRelease(my_db_lock);
	return head;
}

/*
 * The highest position handed out so far, committed or not.  Caller holds
 * the category locks of whatever it reads up to there (see projection.c):
 * the positions above the safe head that it can see are then all settled.
 */
int64
EsLastAllocatedPosition(void)
{
	int64		last;

	es_ensure_counter();
	LWLockAcquire(my_db_lock, LW_SHARED);
	last = my_db->next_position - 1;
	LWLockRelease(my_db_lock);
	return last;
}

/*
 * Wait until the safe head passes after_position or timeout_ms elapse;
 * return the head.  Appenders broadcast the condition variable when their
 * transaction ends, so this never polls.
 */
int64
EsWaitForHead(int64 after_position, long timeout_ms)
{
	TimestampTz deadline;
	int64		head;

	es_ensure_counter();
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	ConditionVariablePrepareToSleep(&my_db->head_cv);
	for (;;)
	{
		long		remaining;

		head = EsSafeHead();
		if (head > after_position)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		(void) ConditionVariableTimedSleep(&my_db->head_cv, remaining,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return head;
}

/* Wake this database's worker when the current transaction ends */
void
EsWakeWorker(void)
{
	es_attach_db();
	wake_worker_at_end = true;
}

/* The worker tells whether it wants a wake-up per commit (async projections) */
void
EsWorkerWantsCommits(bool wants)
{
	es_attach_db();
	my_db->worker_wants_commits = wants;
}

/* The database worker announces (or withdraws) itself */
void
EsSetWorkerProc(bool running)
{
	es_attach_db();
	is_db_worker = running;
	my_db->worker_procno = running ? ES_MY_PROCNO : -1;
}

/* The launcher announces itself */
void
EsSetLauncherProc(bool running)
{
	EsCheckPreloaded();
	EsPositionRegisterCallbacks();
	is_launcher = running;
	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	es_shared->launcher_procno = running ? ES_MY_PROCNO : -1;
	LWLockRelease(&es_locks[0].lock);
}

/* Ask the launcher to start workers for databases that gained the extension */
void
EsRequestRescan(void)
{
	int			procno;

	if (es_shared == NULL)
		return;
	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	es_shared->rescan_requested = true;
	procno = es_shared->launcher_procno;
	LWLockRelease(&es_locks[0].lock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Launcher: was a rescan requested?  Clears the request. */
bool
EsTakeRescanRequest(void)
{
	bool		requested;

	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	requested = es_shared->rescan_requested;
	es_shared->rescan_requested = false;
	LWLockRelease(&es_locks[0].lock);
	return requested;
}

/* Worker: the extension is not installed in this database */
void
EsReportAbsentDatabase(Oid dboid)
{
	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	for (int i = 0; i < ES_ABSENT_SLOTS; i++)
		if (es_shared->absent[i] == InvalidOid || es_shared->absent[i] == dboid)
		{
			es_shared->absent[i] = dboid;
			break;
		}
	LWLockRelease(&es_locks[0].lock);
}

/* Launcher: did the stopped worker of dboid report no extension?  Clears it. */
bool
EsTakeAbsentDatabase(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(&es_locks[0].lock, LW_EXCLUSIVE);
	for (int i = 0; i < ES_ABSENT_SLOTS; i++)
		if (es_shared->absent[i] == dboid)
		{
			es_shared->absent[i] = InvalidOid;
			found = true;
		}
	LWLockRelease(&es_locks[0].lock);
	return found;
}

/* Worker: did a projection change since the last call?  Clears the flag. */
bool
EsTakeProjectionsChanged(void)
{
	es_attach_db();
	/* one exchange: a change announced meanwhile is never lost */
	return pg_atomic_exchange_u32(&my_db->projections_changed, 0) != 0;
}

/*
 * Worker: the safe head without (re)building the counter, so it needs no
 * transaction; -1 while the counter is not built yet.
 */
int64
EsSafeHeadIfReady(void)
{
	int64		head = -1;

	es_attach_db();
	LWLockAcquire(my_db_lock, LW_SHARED);
	if (my_db->initialized)
		head = es_head_locked();
	LWLockRelease(my_db_lock);
	return head;
}

/* Count an append() that wrote nevents events (statistics) */
void
EsCountAppend(int nevents)
{
	es_attach_db();
	pg_atomic_fetch_add_u64(&my_db->n_appends, 1);
	pg_atomic_fetch_add_u64(&my_db->n_events, (uint64) nevents);
}

/* Count a wrong-expected-version conflict (statistics) */
void
EsCountConflict(void)
{
	es_attach_db();
	pg_atomic_fetch_add_u64(&my_db->n_conflicts, 1);
}

/*
 * This database's counters since server start, and how many transactions
 * hold positions right now
 */
void
EsReadCounters(int64 *appends, int64 *events, int64 *conflicts, int *in_flight)
{
	es_attach_db();
	*appends = (int64) pg_atomic_read_u64(&my_db->n_appends);
	*events = (int64) pg_atomic_read_u64(&my_db->n_events);
	*conflicts = (int64) pg_atomic_read_u64(&my_db->n_conflicts);
	*in_flight = 0;
	for (int i = 0; i < es_shared->nprocs; i++)
		if (pg_atomic_read_u64(&es_procs[i].lowest) != 0 && es_procs[i].dboid == MyDatabaseId)
			(*in_flight)++;
}

PG_FUNCTION_INFO_V1(es_counters);

/*
 * SQL: event_store._counters(OUT appends bigint, OUT appended_events bigint,
 *		OUT conflicts bigint, OUT appends_in_flight int) -- for the stats view
 */
Datum
es_counters(PG_FUNCTION_ARGS)
{
	TupleDesc	desc;
	Datum		values[4];
	bool		nulls[4] = {false, false, false, false};
	int64		appends;
	int64		events;
	int64		conflicts;
	int			in_flight;

	EsCheckPreloaded();
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	EsReadCounters(&appends, &events, &conflicts, &in_flight);
	values[0] = Int64GetDatum(appends);
	values[1] = Int64GetDatum(events);
	values[2] = Int64GetDatum(conflicts);
	values[3] = Int32GetDatum(in_flight);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(desc), values, nulls)));
}
