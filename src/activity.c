/*
 * activity.c
 *	  What backends, the launcher and the database workers tell each other,
 *	  and the statistics of appends: the worker's latch (set when events
 *	  commit, at most once per event_store.notify_interval unless the worker
 *	  runs async projections, and at once when a projection changed), the
 *	  launcher's rescan requests and the databases found without the
 *	  extension, and the counters of event_store.stats.
 *
 * What protects each shared field is said where it is declared.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/timestamp.h"

#include "activity.h"
#include "position.h"
#include "shared.h"

/* Per-database state, in the database's entry (shared.c) */
typedef struct EsActivityEntry
{
	/*
	 * Written by the database's worker alone and read by appenders without
	 * a lock: unlocked hints (aligned, so never torn), where a stale value
	 * costs one latch set too many or one wake-up missed until the worker's
	 * naptime.
	 */
	int			worker_procno;	/* pgprocno of the database's worker, or -1 */
	bool		worker_wants_commits;	/* it runs async projections: wake it per commit */
	int			helper_procno[ES_MAX_WORKERS];	/* its helpers' (partitioned
												 * projections), or -1; each
												 * written by its helper */
	/* atomics, read and written without a lock */
	pg_atomic_uint32 projections_changed;	/* 1: the worker should re-read
											 * projections (set by any
											 * backend, taken by the worker) */
	pg_atomic_uint64 last_wake;	/* when an appender last woke the worker */
	ConditionVariable projections_cv;	/* broadcast when a transaction that
										 * moved an async projection on
										 * commits */
	/* since server start, for event_store.stats (atomics) */
	pg_atomic_uint64 n_appends;	/* append() calls that wrote events */
	pg_atomic_uint64 n_events;	/* events they wrote */
	pg_atomic_uint64 n_conflicts;	/* SE001 wrong expected version */
} EsActivityEntry;

#define ES_ABSENT_SLOTS 64

typedef struct EsActivityShared
{
	int			nprocs;
	/* launcher coordination; protected by es_activity_lock */
	int			launcher_procno;	/* -1 when not running */
	bool		rescan_requested;
	Oid			absent[ES_ABSENT_SLOTS];	/* databases whose worker found no extension */
	EsActivityEntry dbs[FLEXIBLE_ARRAY_MEMBER]; /* [es_max_databases] */
} EsActivityShared;

int			es_notify_interval_ms = 100;

static EsActivityShared *es_activity = NULL;
static LWLock *es_activity_lock = NULL;

/* backend-local state */
static EsActivityEntry *my_act = NULL;
static bool wake_worker_at_end = false;
static bool projections_moved = false;	/* broadcast projections_cv at commit */
static bool is_db_worker = false;
static int	my_helper = -1;		/* this process is helper number ... */
static bool is_launcher = false;
static bool callbacks_registered = false;

static void es_wake_db_worker(bool force);

Size
EsActivityShmemSize(void)
{
	return add_size(offsetof(EsActivityShared, dbs),
					mul_size(es_max_databases, sizeof(EsActivityEntry)));
}

/* Reset entry i for the database it was just handed to (shared.c) */
static void
es_activity_entry_reset(int i)
{
	EsActivityEntry *db = &es_activity->dbs[i];

	db->worker_procno = -1;
	db->worker_wants_commits = false;
	for (int h = 0; h < ES_MAX_WORKERS; h++)
		db->helper_procno[h] = -1;
	pg_atomic_write_u64(&db->n_appends, 0);
	pg_atomic_write_u64(&db->n_events, 0);
	pg_atomic_write_u64(&db->n_conflicts, 0);
}

/* Ask for our LWLock, and reset our part of reused entries */
void
EsActivityRequestLocks(void)
{
	RequestNamedLWLockTranche("event_store activity", 1);
	EsOnEntryReuse(es_activity_entry_reset);
}

/* Create or attach the shared state; caller holds AddinShmemInitLock */
void
EsActivityShmemInit(void)
{
	bool		found;

	es_activity = ShmemInitStruct("event_store activity", EsActivityShmemSize(), &found);
	if (!found)
	{
		es_activity->nprocs = EsProcCount();
		es_activity->launcher_procno = -1;
		es_activity->rescan_requested = false;
		memset(es_activity->absent, 0, sizeof(es_activity->absent));
		for (int i = 0; i < es_max_databases; i++)
		{
			EsActivityEntry *db = &es_activity->dbs[i];

			db->worker_procno = -1;
			db->worker_wants_commits = false;
			for (int h = 0; h < ES_MAX_WORKERS; h++)
				db->helper_procno[h] = -1;
			pg_atomic_init_u32(&db->projections_changed, 0);
			pg_atomic_init_u64(&db->last_wake, 0);
			pg_atomic_init_u64(&db->n_appends, 0);
			pg_atomic_init_u64(&db->n_events, 0);
			pg_atomic_init_u64(&db->n_conflicts, 0);
			ConditionVariableInit(&db->projections_cv);
		}
	}
	es_activity_lock = &GetNamedLWLockTranche("event_store activity")[0].lock;
}

/* An appender's positions were released (position.c): wake the worker */
static void
es_positions_released(bool committed)
{
	es_wake_db_worker(false);
}

/* Install the hook above (module load) */
void
EsActivityInit(void)
{
	es_positions_released_hook = es_positions_released;
}

/* Transaction end: tell the worker that projections changed */
static void
es_activity_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			if (projections_moved &&
				(event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT))
				ConditionVariableBroadcast(&my_act->projections_cv);
			projections_moved = false;
			if (!wake_worker_at_end)
				break;
			wake_worker_at_end = false;
			if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT)
				pg_atomic_write_u32(&my_act->projections_changed, 1);
			es_wake_db_worker(true);
			break;
		default:
			break;
	}
}

/* Process exit: the worker or the launcher is gone */
static void
es_activity_exit(int code, Datum arg)
{
	if (es_activity == NULL || MyProc == NULL)
		return;
	if (is_db_worker && my_act != NULL && my_act->worker_procno == ES_MY_PROCNO)
		my_act->worker_procno = -1;
	if (my_helper >= 0 && my_act != NULL && my_act->helper_procno[my_helper] == ES_MY_PROCNO)
		my_act->helper_procno[my_helper] = -1;
	if (is_launcher)
	{
		LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
		if (es_activity->launcher_procno == ES_MY_PROCNO)
			es_activity->launcher_procno = -1;
		LWLockRelease(es_activity_lock);
	}
}

static void
es_register_callbacks(void)
{
	if (callbacks_registered)
		return;
	RegisterXactCallback(es_activity_xact_callback, NULL);
	before_shmem_exit(es_activity_exit, (Datum) 0);
	callbacks_registered = true;
}

/* This database's entry; an error when every entry is taken */
static void
es_attach_db(void)
{
	if (my_act != NULL)
		return;
	my_act = &es_activity->dbs[EsMyEntry()];
	es_register_callbacks();
}

/*
 * Worker: take this database's entry; false when event_store.max_databases
 * is reached (shared.c logs it once)
 */
bool
EsTryAttachDatabase(void)
{
	if (!EsTryMyEntry())
		return false;
	es_attach_db();
	return true;
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

	if (my_act == NULL)
		return;
	procno = my_act->worker_procno;
	if (procno < 0 || procno >= es_activity->nprocs || procno == ES_MY_PROCNO)
		return;
	if (!force && !my_act->worker_wants_commits)
	{
		TimestampTz now = GetCurrentTimestamp();
		uint64		last = pg_atomic_read_u64(&my_act->last_wake);

		if ((int64) (now - (TimestampTz) last) < (int64) es_notify_interval_ms * 1000)
			return;
		if (!pg_atomic_compare_exchange_u64(&my_act->last_wake, &last, (uint64) now))
			return;				/* another appender just woke it */
	}
	SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	for (int h = 0; h < ES_MAX_WORKERS; h++)
	{
		int			helper = my_act->helper_procno[h];

		if (helper >= 0 && helper < es_activity->nprocs && helper != ES_MY_PROCNO)
			SetLatch(&ProcGlobal->allProcs[helper].procLatch);
	}
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
	my_act->worker_wants_commits = wants;
}

/* The database worker announces (or withdraws) itself */
void
EsSetWorkerProc(bool running)
{
	es_attach_db();
	is_db_worker = running;
	my_act->worker_procno = running ? ES_MY_PROCNO : -1;
}

/* A helper of the database worker announces (or withdraws) itself */
void
EsSetHelperProc(int helper, bool running)
{
	Assert(helper >= 0 && helper < ES_MAX_WORKERS);
	es_attach_db();
	my_helper = running ? helper : -1;
	my_act->helper_procno[helper] = running ? ES_MY_PROCNO : -1;
}

/*
 * The database worker or a helper committed a batch of partitioned
 * projections: wake the others (not this process), which may find
 * partitions free now that this one's are unlocked.  A helper runs a batch
 * whenever it is woken; the worker runs one for new events or a change of
 * the projections, so a helper's batch counts as such a change for it (at
 * the end of a catch-up, once the worker's own partitions caught up, it
 * would otherwise wait for its naptime while the helper applies the last
 * partitions behind alone).
 */
void
EsWakeProjectionProcesses(void)
{
	es_attach_db();
	if (my_act->worker_procno >= 0 && my_act->worker_procno < es_activity->nprocs &&
		my_act->worker_procno != ES_MY_PROCNO)
	{
		pg_atomic_write_u32(&my_act->projections_changed, 1);
		SetLatch(&ProcGlobal->allProcs[my_act->worker_procno].procLatch);
	}
	for (int h = 0; h < ES_MAX_WORKERS; h++)
	{
		int			helper = my_act->helper_procno[h];

		if (helper >= 0 && helper < es_activity->nprocs && helper != ES_MY_PROCNO)
			SetLatch(&ProcGlobal->allProcs[helper].procLatch);
	}
}

/* Is this process the database worker or one of its helpers? */
bool
EsIsProjectionWorker(void)
{
	return is_db_worker || my_helper >= 0;
}

/* Helper: does the database worker still run? (an unlocked hint) */
bool
EsWorkerRunning(void)
{
	es_attach_db();
	return my_act->worker_procno >= 0;
}

/* The launcher announces itself */
void
EsSetLauncherProc(bool running)
{
	EsCheckPreloaded();
	es_register_callbacks();
	is_launcher = running;
	LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
	es_activity->launcher_procno = running ? ES_MY_PROCNO : -1;
	LWLockRelease(es_activity_lock);
}

/* Ask the launcher to start workers for databases that gained the extension */
void
EsRequestRescan(void)
{
	int			procno;

	if (es_activity == NULL)
		return;
	LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
	es_activity->rescan_requested = true;
	procno = es_activity->launcher_procno;
	LWLockRelease(es_activity_lock);
	if (procno >= 0)
		SetLatch(&ProcGlobal->allProcs[procno].procLatch);
}

/* Launcher: was a rescan requested?  Clears the request. */
bool
EsTakeRescanRequest(void)
{
	bool		requested;

	LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
	requested = es_activity->rescan_requested;
	es_activity->rescan_requested = false;
	LWLockRelease(es_activity_lock);
	return requested;
}

/* Worker: the extension is not installed in this database */
void
EsReportAbsentDatabase(Oid dboid)
{
	LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
	for (int i = 0; i < ES_ABSENT_SLOTS; i++)
		if (es_activity->absent[i] == InvalidOid || es_activity->absent[i] == dboid)
		{
			es_activity->absent[i] = dboid;
			break;
		}
	LWLockRelease(es_activity_lock);
}

/* Launcher: did the stopped worker of dboid report no extension?  Clears it. */
bool
EsTakeAbsentDatabase(Oid dboid)
{
	bool		found = false;

	LWLockAcquire(es_activity_lock, LW_EXCLUSIVE);
	for (int i = 0; i < ES_ABSENT_SLOTS; i++)
		if (es_activity->absent[i] == dboid)
		{
			es_activity->absent[i] = InvalidOid;
			found = true;
		}
	LWLockRelease(es_activity_lock);
	return found;
}

/* Worker: did a projection change since the last call?  Clears the flag. */
bool
EsTakeProjectionsChanged(void)
{
	es_attach_db();
	/* one exchange: a change announced meanwhile is never lost */
	return pg_atomic_exchange_u32(&my_act->projections_changed, 0) != 0;
}

/* Count an append() that wrote nevents events (statistics) */
void
EsCountAppend(int nevents)
{
	es_attach_db();
	pg_atomic_fetch_add_u64(&my_act->n_appends, 1);
	pg_atomic_fetch_add_u64(&my_act->n_events, (uint64) nevents);
}

/* Count a wrong-expected-version conflict (statistics) */
void
EsCountConflict(void)
{
	es_attach_db();
	pg_atomic_fetch_add_u64(&my_act->n_conflicts, 1);
}

/*
 * This database's counters since server start, and how many transactions
 * hold positions right now
 */
void
EsReadCounters(int64 *appends, int64 *events, int64 *conflicts, int *in_flight)
{
	es_attach_db();
	*appends = (int64) pg_atomic_read_u64(&my_act->n_appends);
	*events = (int64) pg_atomic_read_u64(&my_act->n_events);
	*conflicts = (int64) pg_atomic_read_u64(&my_act->n_conflicts);
	*in_flight = EsAppendsInFlight();
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

/* This transaction moved an async projection on: tell the waiters at commit */
void
EsProjectionsMoved(void)
{
	es_attach_db();
	projections_moved = true;
}

/*
 * Wait until reached(arg) is true or timeout_ms pass; true when it is.
 * Woken when a transaction that moved an async projection on commits (no
 * polling); reached is checked before each sleep, so no wake-up is missed.
 */
bool
EsWaitForProjections(bool (*reached) (void *arg), void *arg, long timeout_ms)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	bool		done;

	es_attach_db();
	ConditionVariablePrepareToSleep(&my_act->projections_cv);
	for (;;)
	{
		long		remaining;

		done = reached(arg);
		if (done)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		(void) ConditionVariableTimedSleep(&my_act->projections_cv, remaining,
										   PG_WAIT_EXTENSION);
	}
	ConditionVariableCancelSleep();
	return done;
}
