/*
 * event_store.c
 *	  Module entry point: _PG_init defines the settings, installs append()'s
 *	  followers and the background launcher, and asks for the shared memory
 *	  of shared.c, position.c and activity.c.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"

#include "activity.h"
#include "aggregate.h"
#include "grants.h"
#include "position.h"
#include "projection.h"
#include "roles.h"
#include "saga.h"
#include "services.h"
#include "shared.h"
#include "tiers.h"
#include "worker.h"

PG_MODULE_MAGIC;

#if PG_VERSION_NUM >= 150000
static shmem_request_hook_type prev_shmem_request_hook = NULL;
#endif
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);

/* Ask for our shared memory (PG15+: from shmem_request_hook) */
static void
es_shmem_request(void)
{
#if PG_VERSION_NUM >= 150000
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
#endif
	RequestAddinShmemSpace(EsDirectoryShmemSize());
	RequestAddinShmemSpace(EsPositionShmemSize());
	RequestAddinShmemSpace(EsActivityShmemSize());
	RequestAddinShmemSpace(EsImportShmemSize());
	RequestAddinShmemSpace(EsArchiveShmemSize());
	EsDirectoryRequestLocks();
	EsPositionRequestLocks();
	EsActivityRequestLocks();
}

/* Create or attach our shared memory */
static void
es_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	EsDirectoryShmemInit();
	EsPositionShmemInit();
	EsActivityShmemInit();
	EsImportShmemInit();
	EsArchiveShmemInit();
	LWLockRelease(AddinShmemInitLock);
}

/* Module load */
void
_PG_init(void)
{
	/* Everything else needs shared memory, hence the preload. */
	if (!process_shared_preload_libraries_in_progress)
		return;

	/*
	 * append()'s followers, in the order they run for each appended batch
	 * (followers.h): inline projections, then the aggregates' snapshots,
	 * then the sagas waiting for events.  The horizon wakes the worker.
	 */
	EsProjectionInit();
	EsAggregateInit();
	EsSagaInit();
	EsActivityInit();
	/* PostgreSQL's own permission errors on our objects name the recipe */
	EsPrivilegesHintInit();
	/* the horizon records that tell standbys the primary's head */
	EsPositionRegisterRmgr();

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

	DefineCustomIntVariable("event_store.max_workers",
							"Processes per database that apply async projections (the database worker and its helpers).",
							"Helpers run while some async projection has several partitions; they apply its partitions in parallel.",
							&es_max_workers,
							2, 1, ES_MAX_WORKERS,
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
