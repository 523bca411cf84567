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
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/async.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/heapam.h"
#include "access/tableam.h"
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

#include "event_store.h"

PG_FUNCTION_INFO_V1(es_worker_rescan);

bool		es_worker_enabled = true;
int			es_naptime_ms = 1000;
int			es_retention_interval_ms = 60 * 1000;
int			es_notify_interval_ms = 100;

PGDLLEXPORT void es_launcher_main(Datum arg);
PGDLLEXPORT void es_worker_main(Datum arg);

/* a worker transaction applies a projection for at most about this long */
#define ES_WORKER_BATCH_MS 1000

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

/*
 * One unit of work in its own transaction: a batch of async projections.
 * Returns the events handed to handlers, or -1 when the extension is gone;
 * *has_async tells whether any async projection is running.
 */
static int64
es_worker_run_projections(bool *has_async)
{
	int64		n = 0;
	bool		isnull;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!es_extension_present())
	{
		PopActiveSnapshot();
		CommitTransactionCommand();
		return -1;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT EXISTS (SELECT 1 FROM event_store.projections "
					"WHERE mode OPERATOR(pg_catalog.=) 'async' "
					"AND state OPERATOR(pg_catalog.=) 'running')", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.projections failed");
	*has_async = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (*has_async)
	{
		pgstat_report_activity(STATE_RUNNING, "event_store: applying async projections");
		n = EsRunAsyncProjections(ES_PROJECTION_SLICE, true, ES_WORKER_BATCH_MS);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	return n;
}

/* Saga timers (timeouts, lease expiry, retries) in a transaction of their own */
static void
es_worker_saga_tick(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "event_store: saga timers");
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT event_store.saga_tick() WHERE EXISTS "
					"(SELECT 1 FROM event_store.sagas "
					"WHERE status OPERATOR(pg_catalog.=) ANY ('{running,compensating}'::pg_catalog.text[]))",
					false, 0) != SPI_OK_SELECT)
		elog(ERROR, "saga_tick failed");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Retention (lifecycle.c) in a transaction of its own */
static void
es_worker_retention(void)
{
	int64		removed;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "event_store: retention");
	removed = EsEnforceRetention();
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);
	if (removed > 0)
		ereport(DEBUG1,
				(errmsg("event_store retention removed " INT64_FORMAT " events", removed)));
}

/* NOTIFY event_store, '<head>' from a transaction of our own */
static int64
es_worker_notify(int64 last_head)
{
	int64		head;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	head = EsSafeHead();
	if (head > last_head)
	{
		char		payload[32];

		snprintf(payload, sizeof(payload), INT64_FORMAT, head);
		Async_Notify("event_store", payload);
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return head;
}

/* Database worker main loop */
void
es_worker_main(Datum arg)
{
	Oid			dboid = DatumGetObjectId(arg);
	int64		notified_head = -1;
	int64		round_head = -1;
	bool		has_async = true;
	bool		recheck = false;
	TimestampTz last_notify = 0;
	TimestampTz last_round = 0;
	TimestampTz last_retention = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("event_store worker");

	/* no extension here: say so and leave */
	StartTransactionCommand();
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
	notified_head = EsSafeHead();	/* builds the counter; nothing to announce yet */
	CommitTransactionCommand();

	for (;;)
	{
		long		timeout = es_naptime_ms;
		TimestampTz now = GetCurrentTimestamp();
		int64		head = EsSafeHeadIfReady();
		int64		n;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		/*
		 * Async projections, one committed batch at a time: when events
		 * arrived (and some projection is async), when a projection changed,
		 * and every naptime for retries.
		 */
		if (EsTakeProjectionsChanged() || (has_async && head != round_head) ||
			TimestampDifferenceExceeds(last_round, now, es_naptime_ms))
		{
			last_round = now;
			round_head = head;
			do
			{
				n = es_worker_run_projections(&has_async);
				if (n < 0)
				{
					EsSetWorkerProc(false);
					EsReportAbsentDatabase(dboid);
					proc_exit(0);
				}
				CHECK_FOR_INTERRUPTS();
			} while (n > 0);
			EsWorkerWantsCommits(has_async);
			es_worker_saga_tick();
		}

		if (TimestampDifferenceExceeds(last_retention, now, es_retention_interval_ms))
		{
			last_retention = now;
			es_worker_retention();
		}
		timeout = Min(timeout, es_retention_interval_ms);

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
		if (head > notified_head)
		{
			if (TimestampDifferenceExceeds(last_notify, now, es_notify_interval_ms))
			{
				notified_head = es_worker_notify(notified_head);
				last_notify = now;
				recheck = true;
			}
			timeout = Min(timeout, es_notify_interval_ms);
		}

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
