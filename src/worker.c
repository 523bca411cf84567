/*
 * worker.c
 *	  The background workers: one launcher per cluster, started from
 *	  shared_preload_libraries, and one worker per database where the
 *	  extension is installed.  A database worker drives the async
 *	  projections, sends the throttled NOTIFY event_store, and sleeps on its
 *	  latch, which appenders set when their transaction ends.
 *
 * The launcher connects to no database.  At start (and whenever CREATE
 * EXTENSION event_store commits somewhere) it starts a worker for every
 * database that accepts connections; a worker that finds no extension
 * reports that in shared memory and exits, and is not started again until
 * the next such rescan.  A worker that dies otherwise is restarted.
 *
 * A database worker survives the errors of its work.  Each unit of work
 * (an async projection batch, the saga timers, retention, the NOTIFY) runs
 * in transactions of its own; an error there is logged with the unit and
 * the database, the transaction is rolled back, and that unit alone is
 * tried again after a backoff that doubles from one second up to five
 * minutes (EsBackoffMs, the rule of every retry), while the others go on (autovacuum and TimescaleDB's job
 * runner work the same way).  A query cancel and SIGTERM are not such
 * errors: they end the worker at once (the launcher starts a new one after
 * a cancel).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/async.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "activity.h"
#include "callback.h"
#include "catalog.h"
#include "lifecycle.h"
#include "position.h"
#include "projection.h"
#include "registry.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(es_worker_rescan);

bool		es_worker_enabled = true;
int			es_max_workers = 2;
int			es_naptime_ms = 1000;
int			es_retention_interval_ms = 60 * 1000;

PGDLLEXPORT void es_launcher_main(Datum arg);
PGDLLEXPORT void es_worker_main(Datum arg);
PGDLLEXPORT void es_helper_main(Datum arg);

/*
 * The database worker's helpers: while some async projection has several
 * partitions, event_store.max_workers - 1 more processes apply projections
 * beside it (the partitions' row locks share the work out).  They do
 * nothing else, and leave when the worker does.
 */
static BackgroundWorkerHandle *helpers[ES_MAX_WORKERS];

/* a worker transaction applies a projection for at most about this long */
#define ES_WORKER_BATCH_MS 1000

/* A unit of the database worker's work, retried with backoff after an error */
typedef struct EsWorkerUnit
{
	const char *name;			/* what the log and pg_stat_activity call it */
	int			failures;		/* consecutive failures, 0 after a success */
	TimestampTz retry_at;		/* after a failure: not again before this */
} EsWorkerUnit;

/* The database worker's name of its database, for the log */
static char *worker_dbname = NULL;

/* Where the database worker's units start; reset after each one */
static MemoryContext unit_context = NULL;

/* Launcher-local bookkeeping of database workers */
typedef struct EsDbWorker
{
	Oid			dboid;
	BackgroundWorkerHandle *handle;
	bool		absent;			/* extension not installed there */
	TimestampTz restart_at;		/* when to start it again after a stop */
} EsDbWorker;

/*
 * One entry per database that accepts connections, with the extension or
 * not: no limit here.  The limit on databases using event_store is
 * event_store.max_databases (their shared memory entries).
 */
static EsDbWorker *db_workers = NULL;
static int	n_db_workers = 0;
static int	max_db_workers = 0;
static bool no_slot_logged = false;
static bool rescan_at_commit = false;
static bool rescan_callback_registered = false;

/* Register the launcher; called from _PG_init */
void
EsRegisterLauncher(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "event_store");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_launcher_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "event_store launcher");
	snprintf(worker.bgw_type, BGW_MAXLEN, "event_store launcher");
	RegisterBackgroundWorker(&worker);
}

/* Start the worker of one database */
static bool
es_start_db_worker(EsDbWorker *w)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "event_store");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "event_store worker for database %u", w->dboid);
	snprintf(worker.bgw_type, BGW_MAXLEN, "event_store worker");
	worker.bgw_main_arg = ObjectIdGetDatum(w->dboid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &w->handle))
	{
		/* try again later; say so once */
		w->handle = NULL;
		w->restart_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		if (!no_slot_logged)
			ereport(LOG,
					(errmsg("event_store could not start the worker of database %u: no free background worker slot", w->dboid),
					 errdetail("Every one of the max_worker_processes slots (%d) is taken; it is tried again every second.",
							   max_worker_processes),
					 errhint("Increase max_worker_processes and restart the server.")));
		no_slot_logged = true;
		return false;
	}
	return true;
}

/* The databases that accept connections (needs no database connection) */
static List *
es_database_list(void)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext caller = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(caller);
		result = lappend_oid(result, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

/* Does the database still exist (and accept connections)? */
static bool
es_database_exists(Oid dboid)
{
	List	   *dbs = es_database_list();
	bool		found = list_member_oid(dbs, dboid);

	list_free(dbs);
	return found;
}

/* Find (or add) the launcher's entry of a database */
static EsDbWorker *
es_db_worker(Oid dboid, bool create)
{
	for (int i = 0; i < n_db_workers; i++)
		if (db_workers[i].dboid == dboid)
			return &db_workers[i];
	if (!create)
		return NULL;
	if (n_db_workers == max_db_workers)
	{
		max_db_workers = Max(16, max_db_workers * 2);
		db_workers = db_workers == NULL ?
			MemoryContextAlloc(TopMemoryContext, max_db_workers * sizeof(EsDbWorker)) :
			repalloc(db_workers, max_db_workers * sizeof(EsDbWorker));
	}
	memset(&db_workers[n_db_workers], 0, sizeof(EsDbWorker));
	db_workers[n_db_workers].dboid = dboid;
	return &db_workers[n_db_workers++];
}

/* Start workers for every database we don't know to lack the extension */
static void
es_launcher_rescan(bool forget_absent)
{
	List	   *dbs = es_database_list();
	ListCell   *lc;

	foreach(lc, dbs)
	{
		EsDbWorker *w = es_db_worker(lfirst_oid(lc), true);

		if (forget_absent)
			w->absent = false;
		if (w->handle == NULL && !w->absent)
			(void) es_start_db_worker(w);
	}
	list_free(dbs);
}

/* Check on running workers: restart the ones that died, stop all if disabled */
static void
es_launcher_check_workers(void)
{
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < n_db_workers; i++)
	{
		EsDbWorker *w = &db_workers[i];
		pid_t		pid;

		if (w->handle == NULL)
		{
			if (es_worker_enabled && !w->absent && w->restart_at != 0 && now >= w->restart_at)
			{
				w->restart_at = 0;
				(void) es_start_db_worker(w);
			}
			continue;
		}
		if (!es_worker_enabled)
		{
			TerminateBackgroundWorker(w->handle);
			pfree(w->handle);
			w->handle = NULL;
			continue;
		}
		if (GetBackgroundWorkerPid(w->handle, &pid) == BGWH_STOPPED)
		{
			pfree(w->handle);
			w->handle = NULL;
			if (EsTakeAbsentDatabase(w->dboid) || !es_database_exists(w->dboid))
				w->absent = true;	/* no extension, or no database any more */
			else
				w->restart_at = TimestampTzPlusMilliseconds(now, 1000);
		}
	}
}

/* Launcher main loop */
void
es_launcher_main(Datum arg)
{
	bool		was_enabled = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("event_store launcher");
	EsSetLauncherProc(true);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (es_worker_enabled)
		{
			bool		rescan = EsTakeRescanRequest();

			if (!was_enabled || rescan)
				es_launcher_rescan(rescan);
		}
		was_enabled = es_worker_enabled;
		es_launcher_check_workers();

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Is the extension installed in our database? (in a transaction) */
static bool
es_extension_present(void)
{
	return OidIsValid(get_extension_oid("event_store", true));
}

/* Error context of a unit of work: which unit, which database */
static void
es_unit_error_context(void *arg)
{
	EsWorkerUnit *unit = (EsWorkerUnit *) arg;

	errcontext("event_store worker: %s in database \"%s\"",
			   unit->name, worker_dbname ? worker_dbname : "?");
}

/* May the unit run now, or is it waiting out its backoff? */
static bool
es_unit_ready(const EsWorkerUnit *unit, TimestampTz now)
{
	return unit->failures == 0 || now >= unit->retry_at;
}

/* Has a failed unit's backoff expired (so that it should be retried)? */
static bool
es_unit_retry_due(const EsWorkerUnit *unit, TimestampTz now)
{
	return unit->failures > 0 && now >= unit->retry_at;
}

/*
 * Milliseconds until a failed unit's retry, capped at timeout; a retry
 * already due waits for the unit's own schedule (the throttled NOTIFY)
 */
static long
es_unit_timeout(const EsWorkerUnit *unit, TimestampTz now, long timeout)
{
	long		ms;

	if (unit->failures == 0 || unit->retry_at <= now)
		return timeout;
	ms = (long) ((unit->retry_at - now + 999) / 1000);
	return Min(timeout, ms);
}

/*
 * Run fn(arg), one unit of work that starts and ends its own transactions,
 * and return whether it succeeded.  An error is logged (WARNING, with the
 * unit and the database as its context) and rolled back, and the unit is
 * due again only after its backoff.  A query cancel, or an error while the
 * worker is told to exit, is thrown on: it ends the worker.
 */
static bool
es_worker_run_unit(EsWorkerUnit *unit, void (*fn) (void *), void *arg)
{
	ErrorContextCallback errcallback;
	volatile bool ok = true;

	MemoryContextSwitchTo(unit_context);
	errcallback.callback = es_unit_error_context;
	errcallback.arg = unit;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	PG_TRY();
	{
		fn(arg);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int64		delay_ms;

		/* no interrupt may come in between: nothing of the unit is left */
		HOLD_INTERRUPTS();
		error_context_stack = errcallback.previous;
		MemoryContextSwitchTo(unit_context);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED || ProcDiePending)
		{
			RESUME_INTERRUPTS();
			PG_RE_THROW();
		}
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(unit_context);

		edata->elevel = WARNING;
		ThrowErrorData(edata);

		unit->failures++;
		delay_ms = EsBackoffMs(ES_RETRY_BASE_MS, unit->failures, false);
		unit->retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms);
		ereport(LOG,
				(errmsg("event_store worker: %s in database \"%s\" failed (%d in a row), next attempt in " INT64_FORMAT " ms",
						unit->name, worker_dbname, unit->failures, delay_ms)));
		pgstat_report_activity(STATE_IDLE, NULL);
		RESUME_INTERRUPTS();
		ok = false;
	}
	PG_END_TRY();

	error_context_stack = errcallback.previous;
	if (ok)
	{
		if (unit->failures > 0)
			ereport(LOG,
					(errmsg("event_store worker: %s in database \"%s\" succeeded again after %d failures",
							unit->name, worker_dbname, unit->failures)));
		unit->failures = 0;
		unit->retry_at = 0;
	}
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextReset(unit_context);
	return ok;
}

/* What a batch of async projections reports to the main loop */
typedef struct EsProjectionBatch
{
	int64		applied;		/* events handed to handlers, -1: no extension */
	bool		has_async;		/* is any async projection running? */
	bool		has_partitioned;	/* ... with several partitions? */
	Oid			helpers_of;		/* the database worker: its database, whose
								 * helpers it starts; else InvalidOid */
} EsProjectionBatch;

static void es_ensure_helpers(Oid dboid, bool wanted);

/*
 * One unit of work in its own transaction: a batch of async projections.
 * Sets the events handed to handlers, or -1 when the extension is gone,
 * and whether any async projection is running.
 */
static void
es_worker_run_projections(void *arg)
{
	EsProjectionBatch *batch = (EsProjectionBatch *) arg;
	bool		isnull;

	batch->applied = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!es_extension_present())
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		batch->applied = -1;
		return;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* (its plan is kept: a batch runs it every time events arrive) */
	if (SPI_execute_plan(EsKeptStatementPlan(EsGetCatalog()->schema_version >= ES_SCHEMA_0_3 ?
											 "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0, "
											 "pg_catalog.bool_or(partitions OPERATOR(pg_catalog.>) 1) IS TRUE "
											 "FROM event_store.projections WHERE mode OPERATOR(pg_catalog.=) 'async' "
											 "AND state OPERATOR(pg_catalog.=) 'running'" :
											 "SELECT pg_catalog.count(*) OPERATOR(pg_catalog.>) 0, false "
											 "FROM event_store.projections WHERE mode OPERATOR(pg_catalog.=) 'async' "
											 "AND state OPERATOR(pg_catalog.=) 'running'", 0, NULL),
						 NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.projections failed");
	batch->has_async = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	batch->has_partitioned = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	/* the helpers start on their share of the partitions while this batch runs */
	if (OidIsValid(batch->helpers_of) && batch->has_partitioned)
		es_ensure_helpers(batch->helpers_of, true);
	if (batch->has_async)
	{
		pgstat_report_activity(STATE_RUNNING, "event_store: applying async projections");
		batch->applied = EsRunAsyncProjections(ES_PROJECTION_SLICE, true, ES_WORKER_BATCH_MS, NULL);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	/*
	 * Partitions this batch held are free again: the other processes, idle
	 * for want of a free one, may take them now (at the end of a catch-up,
	 * the last partitions behind are shared out this way)
	 */
	if (batch->applied > 0 && batch->has_partitioned)
		EsWakeProjectionProcesses();
}

/*
 * Saga timers (timeouts, lease expiry, retries, timer steps) in a
 * transaction of their own.  *next_due (arg) becomes the due time of the
 * next timer, when the schema has timer steps (0 when none is waiting):
 * the worker wakes up for it rather than at its next round.  With such a
 * schema, a transaction moves at most ES_SAGA_TICK_BATCH sagas on; when
 * more are due, *next_due is now, and the worker goes on at once.
 */
#define ES_SAGA_TICK_BATCH 500

static void
es_worker_saga_tick(void *arg)
{
	TimestampTz *next_due = (TimestampTz *) arg;
	bool		batches;
	bool		more = false;

	*next_due = 0;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "event_store: saga timers");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	batches = EsGetCatalog()->saga_versions;
	/* _saga_tick runs with the search_path saga_tick() pins */
	if (batches)
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);
	if (SPI_execute(batches ?
					"SELECT t.more FROM event_store._saga_tick(" CppAsString2(ES_SAGA_TICK_BATCH) ") t "
					"WHERE EXISTS (SELECT 1 FROM event_store.sagas "
					"WHERE status OPERATOR(pg_catalog.=) ANY ('{running,compensating}'::pg_catalog.text[]))" :
					"SELECT event_store.saga_tick() WHERE EXISTS "
					"(SELECT 1 FROM event_store.sagas "
					"WHERE status OPERATOR(pg_catalog.=) ANY ('{running,compensating}'::pg_catalog.text[]))",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "saga_tick failed");
	if (batches && SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		more = !isnull && DatumGetBool(d);
	}
	if (more)
		*next_due = GetCurrentTimestamp();
	else if (batches)
	{
		bool		isnull;
		Datum		due;

		/*
		 * The first timer still to come: of a timer step, or a step's
		 * retry, timeout or lease expiry, through their index.  (Whatever
		 * was due at the tick's start is done, or failed and waits for the
		 * next round.)  Planned every time: a plan kept from when the table
		 * was small would read all of it.
		 */
		if (SPI_execute("SELECT pg_catalog.min(LEAST(deadline, lease_expires_at, next_attempt_at, due_at)) "
						"FROM event_store.saga_steps "
						"WHERE status OPERATOR(pg_catalog.=) ANY ('{pending,running,compensating}'::pg_catalog.text[]) "
						"AND LEAST(deadline, lease_expires_at, next_attempt_at, due_at) "
						"OPERATOR(pg_catalog.>) pg_catalog.now()", true, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "reading the saga timers' next due time failed");
		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			*next_due = DatumGetTimestampTz(due);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Retention (lifecycle.c) in batches of ES_RETENTION_BATCH events, each
 * committed in a transaction of its own: what was removed stays removed if
 * a later batch fails, and no transaction holds many rows.
 */
static void
es_worker_retention(void *arg)
{
	int64		removed;
	int64		total = 0;

	pgstat_report_activity(STATE_RUNNING, "event_store: retention");
	do
	{
		CHECK_FOR_INTERRUPTS();
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		removed = EsEnforceRetentionBatch(ES_RETENTION_BATCH);
		PopActiveSnapshot();
		CommitTransactionCommand();
		total += removed;
	} while (removed >= ES_RETENTION_BATCH);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (total > 0)
		ereport(DEBUG1,
				(errmsg("event_store retention removed " INT64_FORMAT " events", total)));
}

/* What the NOTIFY unit knows: the head last announced */
typedef struct EsNotifyState
{
	int64		notified_head;
} EsNotifyState;

/* NOTIFY event_store, '<head>' from a transaction of our own */
static void
es_worker_notify(void *arg)
{
	EsNotifyState *state = (EsNotifyState *) arg;
	int64		head;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	head = EsSafeHead();
	if (head > state->notified_head)
	{
		char		payload[32];

		snprintf(payload, sizeof(payload), INT64_FORMAT, head);
		Async_Notify("event_store", payload);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	state->notified_head = head;
}

/*
 * Keep event_store.max_workers - 1 helpers running while some projection
 * has partitions (started again if one stopped); helpers that are not
 * wanted any more see so themselves and leave
 */
static void
es_ensure_helpers(Oid dboid, bool wanted)
{
	for (int h = 0; h < ES_MAX_WORKERS; h++)
	{
		pid_t		pid;
		bool		want = wanted && h < es_max_workers - 1;

		/* (a helper no longer wanted leaves by itself, between two batches) */
		if (helpers[h] != NULL && GetBackgroundWorkerPid(helpers[h], &pid) == BGWH_STOPPED)
		{
			pfree(helpers[h]);
			helpers[h] = NULL;
		}
		if (want && helpers[h] == NULL)
		{
			BackgroundWorker worker;
			BackgroundWorkerHandle *handle;
			MemoryContext old;
			bool		registered;

			memset(&worker, 0, sizeof(worker));
			worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
			worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
			worker.bgw_restart_time = BGW_NEVER_RESTART;
			snprintf(worker.bgw_library_name, BGW_MAXLEN, "event_store");
			snprintf(worker.bgw_function_name, BGW_MAXLEN, "es_helper_main");
			snprintf(worker.bgw_name, BGW_MAXLEN, "event_store helper %d for database %u", h + 1, dboid);
			snprintf(worker.bgw_type, BGW_MAXLEN, "event_store helper");
			worker.bgw_main_arg = ObjectIdGetDatum(dboid);
			memcpy(worker.bgw_extra, &h, sizeof(h));
			worker.bgw_notify_pid = MyProcPid;
			old = MemoryContextSwitchTo(TopMemoryContext);
			registered = RegisterDynamicBackgroundWorker(&worker, &handle);
			MemoryContextSwitchTo(old);
			if (!registered)
				break;			/* no free slot: the worker applies everything */
			helpers[h] = handle;
		}
	}
}

/* A helper's main loop: async projections only, woken as the worker is */
void
es_helper_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	int			helper;
	EsProjectionBatch batch = {0, true, true, InvalidOid};
	EsWorkerUnit projections_unit = {"async projections (helper)"};

	memcpy(&helper, MyBgworkerEntry->bgw_extra, sizeof(helper));
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("event_store helper");
	unit_context = AllocSetContextCreate(TopMemoryContext,
										 "event_store worker unit",
										 ALLOCSET_DEFAULT_SIZES);
	StartTransactionCommand();
	worker_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	if (!es_extension_present() || !EsTryAttachDatabase())
	{
		CommitTransactionCommand();
		proc_exit(0);
	}
	CommitTransactionCommand();
	EsSetHelperProc(helper, true);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		timeout = es_naptime_ms;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		/* the worker left, or fewer helpers are wanted: leave too */
		if (!EsWorkerRunning() || helper >= es_max_workers - 1 || !batch.has_partitioned)
		{
			EsSetHelperProc(helper, false);
			proc_exit(0);
		}
		if (es_unit_ready(&projections_unit, now))
		{
			while (es_worker_run_unit(&projections_unit, es_worker_run_projections, &batch))
			{
				CHECK_FOR_INTERRUPTS();
				if (batch.applied <= 0)
					break;
			}
			if (batch.applied < 0)
				batch.has_partitioned = false;	/* no extension any more */
		}
		timeout = es_unit_timeout(&projections_unit, now, timeout);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Database worker main loop */
void
es_worker_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	EsNotifyState notify_state = {-1};
	EsProjectionBatch batch = {0, true, false, InvalidOid};
	int64		round_head = -1;
	bool		recheck = false;
	TimestampTz last_notify = 0;
	TimestampTz last_round = 0;
	TimestampTz last_retention = 0;
	TimestampTz saga_next_due = 0;
	EsWorkerUnit projections_unit = {"async projections"};
	EsWorkerUnit saga_unit = {"saga timers"};
	EsWorkerUnit retention_unit = {"retention"};
	EsWorkerUnit notify_unit = {"notify"};

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("event_store worker");
	unit_context = AllocSetContextCreate(TopMemoryContext,
										 "event_store worker unit",
										 ALLOCSET_DEFAULT_SIZES);

	/* no extension here: say so and leave */
	StartTransactionCommand();
	worker_dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	if (!es_extension_present())
	{
		CommitTransactionCommand();
		EsReportAbsentDatabase(dboid);
		proc_exit(0);
	}
	(void) EsGetCatalog();
	if (!EsTryAttachDatabase())
	{
		/* event_store.max_databases is reached (logged once): no restarts */
		CommitTransactionCommand();
		EsReportAbsentDatabase(dboid);
		proc_exit(0);
	}
	EsSetWorkerProc(true);
	batch.helpers_of = dboid;
	notify_state.notified_head = EsSafeHead();	/* builds the counter; nothing to announce yet */
	CommitTransactionCommand();

	for (;;)
	{
		long		timeout = es_naptime_ms;
		TimestampTz now = GetCurrentTimestamp();
		int64		head = EsSafeHeadIfReady();

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * Async projections, one committed batch at a time: when events
		 * arrived (and some projection is async), when a projection changed,
		 * every naptime for retries, and when a failed unit's backoff ends.
		 * Then the saga timers.
		 */
		if ((es_unit_ready(&projections_unit, now) && EsTakeProjectionsChanged()) ||
			(batch.has_async && head != round_head) ||
			TimestampDifferenceExceeds(last_round, now, es_naptime_ms) ||
			(saga_next_due != 0 && now >= saga_next_due) ||
			es_unit_retry_due(&projections_unit, now) ||
			es_unit_retry_due(&saga_unit, now))
		{
			last_round = now;
			round_head = head;
			if (es_unit_ready(&projections_unit, now))
			{
				while (es_worker_run_unit(&projections_unit, es_worker_run_projections, &batch))
				{
					if (batch.applied < 0)
					{
						EsSetWorkerProc(false);
						EsReportAbsentDatabase(dboid);
						proc_exit(0);
					}
					/* helpers join in as soon as a projection has partitions */
					es_ensure_helpers(dboid, batch.has_partitioned);
					CHECK_FOR_INTERRUPTS();
					if (batch.applied == 0)
						break;
				}
				EsWorkerWantsCommits(batch.has_async);
				es_ensure_helpers(dboid, batch.has_partitioned);
			}
			if (es_unit_ready(&saga_unit, now))
			{
				/* (a failed tick leaves no due time: the naptime rounds go on) */
				saga_next_due = 0;
				(void) es_worker_run_unit(&saga_unit, es_worker_saga_tick, &saga_next_due);
			}
		}
		timeout = es_unit_timeout(&projections_unit, now, timeout);
		timeout = es_unit_timeout(&saga_unit, now, timeout);
		/* a timer due before the next round: wake up for it */
		if (saga_next_due != 0)
		{
			TimestampTz current = GetCurrentTimestamp();

			if (saga_next_due > current)
				timeout = Min(timeout, (long) ((saga_next_due - current + 999) / 1000));
			else if (saga_next_due > now)
				timeout = 0;	/* came due during the round (or more are due): at once */
			else
				saga_next_due = 0;	/* due, but not completed: the next round */
		}

		if (es_unit_ready(&retention_unit, now) &&
			(TimestampDifferenceExceeds(last_retention, now, es_retention_interval_ms) ||
			 es_unit_retry_due(&retention_unit, now)))
		{
			last_retention = now;
			(void) es_worker_run_unit(&retention_unit, es_worker_retention, NULL);
		}
		timeout = Min(timeout, es_retention_interval_ms);
		timeout = es_unit_timeout(&retention_unit, now, timeout);

		/*
		 * Throttled NOTIFY when the head advanced.  Appenders wake us at
		 * most once per interval, so after a notification look once more an
		 * interval later for commits that did not wake us.
		 */
		if (recheck)
		{
			recheck = false;
			timeout = Min(timeout, es_notify_interval_ms);
		}
		if (head > notify_state.notified_head && es_unit_ready(&notify_unit, now))
		{
			if (TimestampDifferenceExceeds(last_notify, now, es_notify_interval_ms))
			{
				(void) es_worker_run_unit(&notify_unit, es_worker_notify, &notify_state);
				last_notify = now;
				recheck = true;
			}
			timeout = Min(timeout, es_notify_interval_ms);
		}
		timeout = es_unit_timeout(&notify_unit, now, timeout);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/* Commit of CREATE EXTENSION: ask the launcher to look for new databases */
static void
es_rescan_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && rescan_at_commit)
		EsRequestRescan();
	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT)
		rescan_at_commit = false;
}

/* SQL: event_store._worker_rescan(), called by the install script */
Datum
es_worker_rescan(PG_FUNCTION_ARGS)
{
	if (!rescan_callback_registered)
	{
		RegisterXactCallback(es_rescan_xact_callback, NULL);
		rescan_callback_registered = true;
	}
	rescan_at_commit = true;
	PG_RETURN_VOID();
}
