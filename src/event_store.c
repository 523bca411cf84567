/*
 * event_store.c
 *	  Module entry point: _PG_init, shared memory hooks and the check that
 *	  the library was loaded through shared_preload_libraries.
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "datatype/timestamp.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "event_store.h"

PG_MODULE_MAGIC;

/* true when _PG_init ran from shared_preload_libraries */
bool		es_loaded_via_preload = false;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(es_assert_preloaded);
PG_FUNCTION_INFO_V1(es_check_writable);
PG_FUNCTION_INFO_V1(es_backoff);

/* Ask for our shared memory (PG15+: from shmem_request_hook) */
static void
es_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(EsPositionShmemSize());
	EsPositionRequestLocks();
}

/* Create or attach our shared memory */
static void
es_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	EsPositionShmemInit();
}

/* Module load */
void
_PG_init(void)
{
	/* Everything else needs shared memory, hence the preload. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	es_loaded_via_preload = true;

	DefineCustomIntVariable("event_store.max_databases",
							"Maximum number of databases that can use event_store at the same time.",
							"Each database gets a slot in shared memory for its position counter.",
							&es_max_databases,
							16, 1, 1024,
							PGC_POSTMASTER, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("event_store.worker_enabled",
							 "Runs the background workers (async projections, NOTIFY).",
							 NULL,
							 &es_worker_enabled,
							 true,
							 PGC_SIGHUP, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("event_store.naptime",
							"Longest sleep of a database worker between rounds when nothing wakes it.",
							"Appends wake the worker at once; this bounds retry and timer latency.",
							&es_naptime_ms,
							1000, 10, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("event_store.notify_interval",
							"Minimum interval between two NOTIFY event_store sent by a database worker.",
							NULL,
							&es_notify_interval_ms,
							100, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("event_store.projection_max_attempts",
							"Attempts of a failing async projection batch before the projection is marked failed.",
							NULL,
							&es_projection_max_attempts,
							5, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("event_store.allow_purge",
							 "Allows event_store.purge_stream() to remove events for good.",
							 "Only a superuser can turn it on, for erasure requests.",
							 &es_allow_purge,
							 false,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("event_store.retention_interval",
							"How often a database worker removes events past their stream's retention settings.",
							NULL,
							&es_retention_interval_ms,
							60 * 1000, 100, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("event_store");

	EsRegisterLauncher();

#if PG_VERSION_NUM >= 150000
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = es_shmem_request;
#else
	es_shmem_request();
#endif
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = es_shmem_startup;
}

/*
 * Raise the "not preloaded" error unless our shared memory is there.  Every
 * entry point that needs shared memory calls this first.
 */
void
EsCheckPreloaded(void)
{
	if (!EsPositionShmemReady())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event_store must be loaded via shared_preload_libraries"),
				 errdetail("The extension keeps the global position horizon in shared memory, which is only available to a preloaded library."),
				 errhint("Add event_store to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* SQL: event_store._assert_preloaded(), called by the install script */
Datum
es_assert_preloaded(PG_FUNCTION_ARGS)
{
	EsCheckPreloaded();
	PG_RETURN_VOID();
}

/*
 * Refuse, before doing anything, to change state on a hot standby or in a
 * read-only transaction (25006, as an INSERT would); what names the
 * function ("append()").  Every entry point that writes calls this first.
 */
void
EsCheckWritable(const char *what)
{
	PreventCommandDuringRecovery(what);
	PreventCommandIfReadOnly(what);
}

/* SQL: event_store._check_writable(what text), for the SQL-language writers */
Datum
es_check_writable(PG_FUNCTION_ARGS)
{
	EsCheckWritable(PG_ARGISNULL(0) ? "this function" : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * The one backoff rule of event_store: how long to wait before the attempt
 * that follows attempts failed ones.  The wait starts at base_ms (a base
 * below ES_BACKOFF_MIN_MS counts as that) and doubles with every further
 * failure, up to ES_BACKOFF_CAP_FACTOR times the base.  The cap is relative
 * to the base because the bases differ by orders of magnitude: the worker's
 * units and the async projections retry from one second, and reach five
 * minutes, while a saga step's backoff is the user's to choose, from 10 ms
 * to hours, and a fixed cap would either let a one-second retry grow for
 * days or cut a long backoff short (a step defined with "backoff": "2 days"
 * would wait less than it asked for).
 *
 * With jitter, the wait is spread by +-25% (sagas: the retries of many
 * instances that failed together, on the same outage, do not come back
 * together); without, it is exact (the worker's units and the projections,
 * one of a kind each, whose log says when they retry).  Never below 1 ms.
 */
int64
EsBackoffMs(int64 base_ms, int32 attempts, bool jitter)
{
	int64		base = Min(Max(base_ms, ES_BACKOFF_MIN_MS), ES_BACKOFF_MAX_BASE_MS);
	int64		cap = base * ES_BACKOFF_CAP_FACTOR;
	int64		ms = base;

	for (int i = 1; i < attempts && ms < cap; i++)
		ms *= 2;
	ms = Min(ms, cap);
	if (jitter)
		ms = (int64) rint(ms * (0.75 + 0.5 * pg_prng_double(&pg_global_prng_state)));
	return Max(ms, 1);
}

/*
 * SQL: event_store._backoff(base interval, attempts int) RETURNS interval
 * -- EsBackoffMs with jitter, for the saga steps' retries (an interval's
 * months count as 30 days, as when intervals are compared).  Never zero:
 * a retry due at now() plus this is not due in the transaction that
 * failed, so it never runs in the call that failed.
 */
Datum
es_backoff(PG_FUNCTION_ARGS)
{
	Interval   *base;
	Interval   *result;
	int64		base_ms;
	float8		us;

	EsRequireArg(fcinfo, 0, "base");
	EsRequireArg(fcinfo, 1, "attempts");
	base = PG_GETARG_INTERVAL_P(0);
	us = (float8) base->time + (float8) base->day * USECS_PER_DAY +
		(float8) base->month * DAYS_PER_MONTH * USECS_PER_DAY;
	base_ms = (int64) Min(Max(us / 1000.0, 0.0), (float8) ES_BACKOFF_MAX_BASE_MS);

	result = (Interval *) palloc0(sizeof(Interval));
	result->time = EsBackoffMs(base_ms, PG_GETARG_INT32(1), true) * 1000;
	PG_RETURN_INTERVAL_P(result);
}
