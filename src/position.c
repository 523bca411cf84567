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
 * handed out.  An appender that finds half of the chunk used raises the
 * mark ahead of need without waiting for that flush (the WAL writer makes
 * it, as it does an asynchronous commit's): the raised value stays pending
 * (pending_mark, pending_lsn) until the first appender who needs a
 * position above the durable mark flushes the WAL up to it, which the WAL
 * writer has almost always done by then.  No appender then waits for a
 * flush of its own (with synchronous_commit = off, appends wait for none at
 * all).  The sequence is dumped with the extension's data.
 *
 * The counter is rebuilt on the first use after server start or crash
 * recovery, and again whenever event_store.events is a new table (DROP/CREATE
 * EXTENSION): it continues above both the highest stored position and the
 * mark, and the head starts there (everything below has ended).
 *
 * On a hot standby nobody appends, and the standby cannot compute the head
 * from what it replays: a position below the highest committed one may be
 * held by a primary transaction that has not even inserted its row yet, so
 * neither the replayed rows nor the in-progress xids of the standby's
 * snapshots (KnownAssignedXids) tell it that the position is still coming.
 * Only the primary knows its horizon, so it sends it: whenever an appending
 * transaction ends, the primary computes its new head (after the end is
 * visible in its proc array) and WAL-logs it in a small record of the
 * extension's own resource manager (ES_RMGR_ID), after the commit or abort
 * record.  Every transaction holding a position at or below that head has
 * ended, so its commit record precedes the horizon record in the WAL: once
 * the standby has replayed the horizon record, its snapshots see every
 * committed event at or below it.  The standby's redo (in the startup
 * process) stores the head in this database's entry and wakes the waiters
 * of wait_for_events().  The record is not flushed by itself (that would
 * cost a second WAL flush per commit): it is marked as an asynchronous
 * commit's, so the WAL writer flushes it within wal_writer_delay and the
 * WAL sender sends it on.  Logical decoding ignores the records.
 *
 * Until a standby has replayed a horizon record since it started (no append
 * on the primary since the standby's restart point), it uses the highest
 * committed position it can see, looked up again on each use: that is exact
 * unless a primary transaction holds a lower position open at that moment,
 * and the first append on the primary ends it.
 *
 * A server that replays the records needs the library preloaded, as every
 * server that uses event_store does: the records are only written when it
 * is (and with wal_level replica or logical).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/twophase.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/xlog_internal.h"
#include "access/xloginsert.h"
#include "access/xlogreader.h"
#include "commands/dbcommands.h"
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

#include "catalog.h"
#include "position.h"
#include "roles.h"
#include "shared.h"

/*
 * How far ahead of the positions handed out the durable mark is raised: a
 * WAL flush per so many positions, and at most so many positions skipped
 * after a restart.  It is raised again when less than half of it is left:
 * the half left (5,000 positions, 50 batches of 100 events, several
 * megabytes of WAL) gives the WAL writer time to flush the raise before
 * anybody needs it.
 */
#define ES_MARK_CHUNK	10000

/*
 * Per-database counter and horizon; protected by the entry's own LWLock,
 * except the atomics (pg_atomic_*), which are read without it
 */
typedef struct EsPositionEntry
{
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
	int64		pending_mark;	/* raised ahead, maybe not flushed yet (0: none) */
	XLogRecPtr	pending_lsn;	/* the end of its WAL record */
	bool		built_in_recovery;	/* built on a standby: rebuild once promoted */
	pg_atomic_uint64 max_committed; /* highest position of a committed append */
	ConditionVariable head_cv;	/* broadcast when an appender's xact ends */
	/* on a standby: the primary's head, from its horizon records */
	Oid			replayed_relid; /* its events table, InvalidOid: none replayed */
	int64		replayed_head;
} EsPositionEntry;

/*
 * The extension's WAL resource manager: a custom one, in the range
 * PostgreSQL leaves to extensions (see src/include/access/rmgrlist.h and
 * the wiki page "CustomWALResourceManagers").
 */
#define ES_RMGR_ID		171
#define XLOG_ES_HORIZON	0x00

/* A horizon record: the primary's head in one database */
typedef struct EsHorizonRecord
{
	Oid			dboid;
	Oid			events_relid;
	int64		head;
} EsHorizonRecord;

static bool es_rmgr_registered = false;

/*
 * Per-process slot: written by its owner only (lowest is an atomic; dboid
 * is set before the first position is published and read after lowest)
 */
typedef struct EsProcSlot
{
	Oid			dboid;			/* database of the owner */
	pg_atomic_uint64 lowest;	/* lowest position held by the open xact, or 0 */
} EsProcSlot;

typedef struct EsPositionShared
{
	int			nprocs;
	EsPositionEntry dbs[FLEXIBLE_ARRAY_MEMBER]; /* [es_max_databases] */
	/* followed by EsProcSlot procs[nprocs] */
} EsPositionShared;

EsPositionsReleasedHook es_positions_released_hook = NULL;

static EsPositionShared *es_shared = NULL;
static EsProcSlot *es_procs = NULL;
static LWLockPadded *es_locks = NULL;	/* [i]: dbs[i] */

/* backend-local state */
static EsPositionEntry *my_db = NULL;
static LWLock *my_db_lock = NULL;
static bool xact_holds_positions = false;
static int64 xact_max_position = 0;	/* highest position this xact holds */
static bool stale_at_commit = false;	/* this xact wrote events directly */
static bool callbacks_registered = false;

/* Shared memory we need */
Size
EsPositionShmemSize(void)
{
	Size		size;

	size = offsetof(EsPositionShared, dbs);
	size = add_size(size, mul_size(es_max_databases, sizeof(EsPositionEntry)));
	size = MAXALIGN(size);
	size = add_size(size, mul_size(EsProcCount(), sizeof(EsProcSlot)));
	return size;
}

/* Reset entry i for the database it was just handed to (shared.c) */
static void
es_position_entry_reset(int i)
{
	EsPositionEntry *db = &es_shared->dbs[i];

	LWLockAcquire(&es_locks[i].lock, LW_EXCLUSIVE);
	db->events_relid = InvalidOid;
	db->initialized = false;
	db->next_position = 1;
	db->uses_mark = false;
	db->mark = 0;
	db->pending_mark = 0;
	db->pending_lsn = InvalidXLogRecPtr;
	db->built_in_recovery = false;
	pg_atomic_write_u64(&db->max_committed, 0);
	db->replayed_relid = InvalidOid;
	db->replayed_head = 0;
	LWLockRelease(&es_locks[i].lock);
}

/* Ask for our LWLocks (one per database entry) and the entry reset */
void
EsPositionRequestLocks(void)
{
	RequestNamedLWLockTranche("event_store positions", es_max_databases);
	EsOnEntryReuse(es_position_entry_reset);
}

/* Create or attach the shared state; caller holds AddinShmemInitLock */
void
EsPositionShmemInit(void)
{
	bool		found;
	Size		dbs_size;

	es_shared = ShmemInitStruct("event_store positions", EsPositionShmemSize(), &found);
	dbs_size = MAXALIGN(offsetof(EsPositionShared, dbs) +
						es_max_databases * sizeof(EsPositionEntry));
	es_procs = (EsProcSlot *) ((char *) es_shared + dbs_size);
	if (!found)
	{
		es_shared->nprocs = EsProcCount();
		for (int i = 0; i < es_max_databases; i++)
		{
			EsPositionEntry *db = &es_shared->dbs[i];

			db->events_relid = InvalidOid;
			db->initialized = false;
			pg_atomic_init_u32(&db->stale_gen, 0);
			db->built_gen = 0;
			db->next_position = 1;
			db->uses_mark = false;
			db->mark = 0;
			db->pending_mark = 0;
			db->pending_lsn = InvalidXLogRecPtr;
			db->built_in_recovery = false;
			pg_atomic_init_u64(&db->max_committed, 0);
			ConditionVariableInit(&db->head_cv);
			db->replayed_relid = InvalidOid;
			db->replayed_head = 0;
		}
		for (int i = 0; i < es_shared->nprocs; i++)
		{
			es_procs[i].dboid = InvalidOid;
			pg_atomic_init_u64(&es_procs[i].lowest, 0);
		}
	}
	es_locks = GetNamedLWLockTranche("event_store positions");
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

static int64 es_head_locked(void);

/*
 * WAL-log this database's head for the standbys (see the top of the file);
 * called when our positions have been released
 */
static void
es_log_horizon(void)
{
	EsHorizonRecord rec;
	XLogRecPtr	lsn;

	if (!es_rmgr_registered || !XLogStandbyInfoActive() || RecoveryInProgress())
		return;
	rec.dboid = MyDatabaseId;
	LWLockAcquire(my_db_lock, LW_SHARED);
	rec.events_relid = my_db->events_relid;
	rec.head = es_head_locked();
	LWLockRelease(my_db_lock);
	if (!OidIsValid(rec.events_relid))
		return;
	XLogBeginInsert();
	XLogRegisterData((char *) &rec, sizeof(rec));
	lsn = XLogInsert(ES_RMGR_ID, XLOG_ES_HORIZON);
	/* not flushed here: the WAL writer flushes it soon, as an async commit */
	XLogSetAsyncXactLSN(lsn);
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
	es_log_horizon();
}

/* Redo of a horizon record: a standby learns the primary's head */
static void
es_rmgr_redo(XLogReaderState *record)
{
	uint8		info = XLogRecGetInfo(record) & ~XLR_INFO_MASK;
	EsHorizonRecord rec;
	int			entry;
	EsPositionEntry *db;

	if (info != XLOG_ES_HORIZON)
		elog(PANIC, "event_store redo: unknown op code %u", info);
	memcpy(&rec, XLogRecGetData(record), sizeof(rec));
	entry = EsEntryOf(rec.dboid);
	if (entry < 0)
		return;					/* every entry taken: reads there fail anyway */
	db = &es_shared->dbs[entry];
	LWLockAcquire(&es_locks[entry].lock, LW_EXCLUSIVE);
	if (db->replayed_relid != rec.events_relid)
	{
		/* the first one, or a new events table (DROP/CREATE EXTENSION) */
		db->replayed_relid = rec.events_relid;
		db->replayed_head = rec.head;
	}
	else
	{
		/* transactions ending together may log their heads out of order */
		db->replayed_head = Max(db->replayed_head, rec.head);
	}
	LWLockRelease(&es_locks[entry].lock);
	ConditionVariableBroadcast(&db->head_cv);
}

static void
es_rmgr_desc(StringInfo buf, XLogReaderState *record)
{
	EsHorizonRecord rec;

	if ((XLogRecGetInfo(record) & ~XLR_INFO_MASK) != XLOG_ES_HORIZON ||
		XLogRecGetDataLen(record) < sizeof(rec))
		return;
	memcpy(&rec, XLogRecGetData(record), sizeof(rec));
	appendStringInfo(buf, "db %u events %u head " INT64_FORMAT,
					 rec.dboid, rec.events_relid, rec.head);
}

static const char *
es_rmgr_identify(uint8 info)
{
	return (info & ~XLR_INFO_MASK) == XLOG_ES_HORIZON ? "HORIZON" : NULL;
}

/* Logical decoding: the records carry nothing to decode */
static void
es_rmgr_decode(struct LogicalDecodingContext *ctx, struct XLogRecordBuffer *buf)
{
}

static RmgrData es_rmgr = {
	.rm_name = "event_store",
	.rm_redo = es_rmgr_redo,
	.rm_desc = es_rmgr_desc,
	.rm_identify = es_rmgr_identify,
	.rm_decode = es_rmgr_decode,
};

/* Module load (preloaded only): register the resource manager */
void
EsPositionRegisterRmgr(void)
{
	RegisterCustomRmgr(ES_RMGR_ID, &es_rmgr);
	es_rmgr_registered = true;
}

/* Transaction end: publish that our positions are settled */
static void
es_xact_callback(XactEvent event, void *arg)
{
	bool		committed;
	bool		held;

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
			committed = (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT);
			if (stale_at_commit && my_db != NULL && committed)
				pg_atomic_fetch_add_u32(&my_db->stale_gen, 1);	/* its rows are visible now */
			stale_at_commit = false;
			held = xact_holds_positions;
			es_release_positions(committed);
			if (held && es_positions_released_hook)
				es_positions_released_hook(committed);
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
	}
}

/* This database's entry; an error when every entry is taken */
static void
es_attach_db(void)
{
	int			entry;

	if (my_db != NULL)
		return;
	entry = EsMyEntry();
	if (!callbacks_registered)
	{
		RegisterXactCallback(es_xact_callback, NULL);
		before_shmem_exit(es_shmem_exit, (Datum) 0);
		callbacks_registered = true;
	}
	my_db = &es_shared->dbs[entry];
	my_db_lock = &es_locks[entry].lock;
	es_my_slot()->dboid = MyDatabaseId;
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
 * Raise the mark so that positions up to needed (and whatever the counter
 * handed out already) are covered, ES_MARK_CHUNK ahead.  With wait (a
 * position above the mark is needed now) the raise is flushed to WAL before
 * the new mark counts; without (raising ahead of need) it is left pending
 * for the WAL writer to flush (see EsAllocatePositions), and nothing happens
 * while another backend raises it.  Raisers queue on a self-conflicting
 * lock of the sequence, so the stored mark only goes up, and a raise's WAL
 * record follows every earlier one: flushing up to it flushes them too.
 * Called without my_db_lock held.
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
	mark = Max(my_db->mark, my_db->pending_mark);
	LWLockRelease(my_db_lock);

	/* did the backend before us in the queue raise it far enough? */
	if (mark - needed < (wait ? 0 : ES_MARK_CHUNK / 2))
	{
		EsUserSwitch sw;
		bool		from_outside = false;
		XLogRecPtr	lsn = InvalidXLogRecPtr;

		target = needed + ES_MARK_CHUNK;
		stored = es_read_mark(seqid);
		if (stored < target)
		{
			EsBecomeOwner(&sw);
			(void) DirectFunctionCall2(setval_oid, ObjectIdGetDatum(seqid),
									   Int64GetDatum(target));
			EsRestoreUser(&sw);
			lsn = XactLastRecEnd;
			if (wait)
				XLogFlush(lsn);
			else
				XLogSetAsyncXactLSN(lsn);	/* the WAL writer's next flush */
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
			/* durable before it counts (its record is behind the insert point) */
			if (from_outside)
				XLogFlush(GetXLogInsertRecPtr());
		}

		LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
		if (from_outside)
			my_db->next_position = Max(my_db->next_position, stored + 1);
		if (wait || from_outside)
		{
			/* flushed, with every raise before it */
			my_db->mark = Max(my_db->mark, stored);
			if (my_db->pending_mark <= my_db->mark)
				my_db->pending_mark = 0;
		}
		else if (stored > my_db->pending_mark)
		{
			my_db->pending_mark = stored;
			my_db->pending_lsn = lsn;
		}
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
	want_mark = cat->schema_version >= ES_SCHEMA_0_3 && !in_recovery;
	gen = pg_atomic_read_u32(&my_db->stale_gen);
	LWLockAcquire(my_db_lock, LW_SHARED);
	ready = my_db->initialized && my_db->built_gen == gen &&
		my_db->events_relid == cat->events_relid &&
		my_db->uses_mark == want_mark && my_db->built_in_recovery == in_recovery;
	/* a standby without the primary's horizon: look at the rows each time */
	if (in_recovery && my_db->replayed_relid != cat->events_relid)
		ready = false;
	LWLockRelease(my_db_lock);
	if (ready)
		return;

	/* the scans below must see every row of the generation read above */
	pg_memory_barrier();
	maxany = es_scan_max_position(cat, SnapshotAny);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	maxcommitted = es_scan_max_position(cat, snapshot);
	UnregisterSnapshot(snapshot);
	/*
	 * The mark and this entry's knowledge of it, read with no raise in
	 * progress (raisers hold this lock from their setval until the entry
	 * has the value): otherwise a raise made between them would look like
	 * a value set from outside, and the counter would skip a chunk
	 */
	if (want_mark)
		LockRelationOid(cat->position_mark_relid, ShareUpdateExclusiveLock);
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
		/* (read from the sequence: maybe a pending raise, never handed out) */
		my_db->mark = mark;
		my_db->pending_mark = 0;
		my_db->built_in_recovery = in_recovery;
	}
	else
	{
		/* never backwards: appenders may hold positions of the old counter */
		my_db->next_position = Max(my_db->next_position, maxany + 1);
		my_db->built_gen = gen;
		if (want_mark && (!my_db->uses_mark || mark > Max(my_db->mark, my_db->pending_mark)))
		{
			/*
			 * The schema just got the mark (ALTER EXTENSION UPDATE), or it
			 * was set from outside (pg_restore): positions up to it may have
			 * been handed out.  A mark this counter raised itself is only a
			 * reservation.
			 */
			my_db->next_position = Max(my_db->next_position, mark + 1);
			XLogFlush(GetXLogInsertRecPtr());
			my_db->mark = mark;
			my_db->pending_mark = 0;
		}
		my_db->uses_mark = want_mark;
		my_db->built_in_recovery = in_recovery;
		LWLockRelease(my_db_lock);
		if (want_mark)
			UnlockRelationOid(cat->position_mark_relid, ShareUpdateExclusiveLock);
		es_publish_committed(maxcommitted);
		return;
	}
	LWLockRelease(my_db_lock);
	if (want_mark)
		UnlockRelationOid(cat->position_mark_relid, ShareUpdateExclusiveLock);
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
		int64		pending;
		XLogRecPtr	lsn;

		LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
		first = my_db->next_position;
		if (!my_db->uses_mark || first + count - 1 <= my_db->mark)
			break;
		pending = my_db->pending_mark;
		lsn = my_db->pending_lsn;
		LWLockRelease(my_db_lock);
		if (pending < first + count - 1)
		{
			/* beyond every mark: raise it first, and wait for the flush */
			es_raise_mark(seqid, first + count - 1, true);
			continue;
		}
		/*
		 * raised far enough ahead of need: durable once its WAL is flushed,
		 * which the WAL writer has usually done already (then this returns
		 * at once)
		 */
		XLogFlush(lsn);
		LWLockAcquire(my_db_lock, LW_EXCLUSIVE);
		my_db->mark = Max(my_db->mark, pending);
		if (my_db->pending_mark <= my_db->mark)
			my_db->pending_mark = 0;
		LWLockRelease(my_db_lock);
	}
	my_db->next_position += count;
	if (pg_atomic_read_u64(&me->lowest) == 0)
		pg_atomic_write_u64(&me->lowest, (uint64) first);
	raise_ahead = my_db->uses_mark &&
		Max(my_db->mark, my_db->pending_mark) - (first + count - 1) < ES_MARK_CHUNK / 2;
	LWLockRelease(my_db_lock);

	xact_holds_positions = true;
	xact_max_position = Max(xact_max_position, first + count - 1);

	/* half of the chunk is used: raise the mark before anybody has to wait */
	if (raise_ahead)
		es_raise_mark(seqid, first + count - 1, false);
	return first;
}

/*
 * A bulk writer (an import's history) is about to take count positions:
 * raise the durable mark over all of them at once, one WAL flush instead of
 * one per ES_MARK_CHUNK positions.  (A crash before they are taken skips
 * them, as it skips the rest of a chunk.)
 */
void
EsReservePositions(int64 count)
{
	int64		needed;

	if (count <= ES_MARK_CHUNK)
		return;
	es_ensure_counter();
	LWLockAcquire(my_db_lock, LW_SHARED);
	needed = my_db->uses_mark ? my_db->next_position - 1 + count : 0;
	LWLockRelease(my_db_lock);
	if (needed > 0)
		es_raise_mark(EsGetCatalog()->position_mark_relid, needed, true);
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

	/* a standby: the primary's head once it has sent one (see the top) */
	if (my_db->built_in_recovery)
		return my_db->replayed_relid == my_db->events_relid ?
			my_db->replayed_head : top;

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

/* How many transactions of this database hold positions right now */
int
EsAppendsInFlight(void)
{
	int			n = 0;

	for (int i = 0; i < es_shared->nprocs; i++)
		if (pg_atomic_read_u64(&es_procs[i].lowest) != 0 && es_procs[i].dboid == MyDatabaseId)
			n++;
	return n;
}
