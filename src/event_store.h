/*
 * event_store.h
 *	  Declarations shared by the subsystems of the event_store extension.
 */
#ifndef EVENT_STORE_H
#define EVENT_STORE_H

#include "postgres.h"

#include "access/attnum.h"
#include "access/htup.h"
#include "access/sdir.h"
#include "access/skey.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "storage/lockdefs.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

#define ES_SCHEMA_NAME			"event_store"

/* longest stream id, name, event type or category (bytes): index keys */
#define ES_MAX_NAME_BYTES		1024
#define ES_EVENTS_TABLE			"events"
#define ES_EVENTS_POSITION_IDX	"events_pkey"
#define ES_EVENTS_STREAM_IDX	"events_stream_id_stream_version_key"
#define ES_EVENTS_EVENT_ID_IDX	"events_event_id_key"
#define ES_EVENTS_CATEGORY_IDX	"events_category_position_idx"
/* the durable high-water mark of global positions (a sequence) */
#define ES_POSITION_MARK_SEQ	"position_mark"

/*
 * locktag_field4 of the extension's own locks, taken with LOCKTAG_ADVISORY
 * tags from C.  The SQL advisory-lock functions use 1 and 2 only, so no SQL
 * call (of any role) can take, hold or block one of these.
 */
#define ES_STREAM_LOCK_FIELD4	0x4553	/* "ES": a stream's appenders */
#define ES_SAGA_LOCK_FIELD4		0x5347	/* "SG": starting a saga with a given id */
#define ES_CATEGORY_LOCK_FIELD4	0x4543	/* "EC": appenders of a category with grants */
#define ES_OPEN_LOCK_FIELD4		0x454F	/* "EO": appenders of categories without grants */

/* Attribute numbers of event_store.events (same order as event_store.event) */
#define Anum_es_global_position	1
#define Anum_es_stream_id		2
#define Anum_es_stream_version	3
#define Anum_es_event_id		4
#define Anum_es_event_type		5
#define Anum_es_data			6
#define Anum_es_metadata		7
#define Anum_es_schema_version	8
#define Anum_es_recorded_at		9
#define Natts_es_event			9

/* event_store.c */
extern bool es_loaded_via_preload;
extern void EsCheckPreloaded(void);
extern void EsCheckWritable(const char *what);

/* event_store.c: the backoff of every retry (see EsBackoffMs) */
#define ES_BACKOFF_MIN_MS		10	/* a smaller base counts as this */
#define ES_BACKOFF_CAP_FACTOR	300 /* a wait grows to at most 300 x its base */
/* a larger base counts as this (100 years: define_saga's largest interval) */
#define ES_BACKOFF_MAX_BASE_MS	(INT64CONST(100) * 366 * 24 * 3600 * 1000)
/* the base of the worker's units' and the async projections' retries */
#define ES_RETRY_BASE_MS		1000
extern int64 EsBackoffMs(int64 base_ms, int32 attempts, bool jitter);

/* catalog.c: OIDs of the extension's own relations, cached per backend */
typedef struct EsCatalog
{
	Oid			extension_oid;	/* pg_extension row of event_store */
	Oid			namespace_oid;
	Oid			events_relid;
	Oid			position_idx;
	Oid			stream_idx;
	Oid			event_id_idx;
	Oid			category_idx;
	Oid			event_type_oid;	/* composite type event_store.event */
	Oid			event_type_relid;	/* its pg_class entry */
	bool		stored_rows_are_events; /* events' rows have the type's layout */
	Oid			metadata_relid;	/* stream_metadata, or InvalidOid (older schema) */
	Oid			metadata_idx;	/* its primary key */
	Oid			grants_relid;	/* category_grants, or InvalidOid (older schema) */
	Oid			upcasters_relid;	/* a registry: watched for the column below */
	bool		registries_have_paths;	/* registries record their callbacks'
										 * search_path (0.3.0 on) */
	Oid			position_mark_relid;	/* position_mark, or InvalidOid (older schema) */
} EsCatalog;

extern const EsCatalog *EsGetCatalog(void);

/* catalog.c: per-backend caches of small registry tables */
typedef struct EsRegistry
{
	const char *relname;		/* table in schema event_store */
	bool		calls_functions;	/* caches user functions: reload when any
									 * function changes */
	Oid			relid;
	bool		valid;
	bool		registered;
	MemoryContext cxt;			/* the cache's memory */
	int			depth;			/* calls into cached functions in progress */
	struct List *retired;		/* old contexts still used by those calls */
} EsRegistry;

extern bool EsRegistryNeedsReload(EsRegistry *reg);
extern void EsRegistryChanged(EsRegistry *reg);
extern SPIPlanPtr EsPrepareKeptPlan(const char *sql, int nargs, Oid *argtypes);
extern void EsRegistryEnsure(EsRegistry *reg, void (*load) (void));
extern MemoryContext EsRegistryNewContext(EsRegistry *reg);
extern Datum EsRegistryCall(EsRegistry *reg, FunctionCallInfo fcinfo);
extern bool EsFunctionExists(Oid fn);

/*
 * catalog.c: the hash tables of the registries' caches, keyed by a string
 * (an event type, a category) and a number (a schema version, or 0), compared
 * in full.  Every entry begins with its EsTextKey; the string it points to
 * must live as long as the table (the registry's memory context).
 */
typedef struct EsTextKey
{
	const char *str;
	int			len;
	int32		num;
} EsTextKey;

extern HTAB *EsTextHashCreate(const char *name, Size entrysize, MemoryContext cxt);
extern void *EsTextHashFind(HTAB *hash, const char *str, int len, int32 num);
extern void *EsTextHashEnter(HTAB *hash, const char *str, int len, int32 num,
							 bool *found);

/* position.c: the global position counter and the follower horizon */
extern int	es_max_databases;
extern Size EsPositionShmemSize(void);
extern void EsPositionRequestLocks(void);
extern void EsPositionShmemInit(void);
extern bool EsPositionShmemReady(void);
extern int64 EsAllocatePositions(int64 count);
extern void EsCounterStale(void);
extern int64 EsSafeHead(void);
extern int64 EsLastAllocatedPosition(void);
extern int64 EsWaitForHead(int64 after_position, long timeout_ms);
extern void EsPositionRegisterCallbacks(void);
extern void EsWakeWorker(void);
extern void EsCountAppend(int nevents);
extern void EsCountConflict(void);
extern void EsReadCounters(int64 *appends, int64 *events, int64 *conflicts,
						   int *in_flight);
extern bool EsTakeProjectionsChanged(void);
extern int64 EsSafeHeadIfReady(void);
extern void EsSetWorkerProc(bool running);
extern bool EsTryAttachDatabase(void);
extern void EsWorkerWantsCommits(bool wants);
extern void EsSetLauncherProc(bool running);
extern void EsRequestRescan(void);
extern bool EsTakeRescanRequest(void);
extern void EsReportAbsentDatabase(Oid dboid);
extern bool EsTakeAbsentDatabase(Oid dboid);

/* projection.c */
extern int	es_projection_max_attempts;
/* events one async projection gets per round before the next one's turn */
#define ES_PROJECTION_SLICE		10000
extern int64 EsRunAsyncProjections(int64 max_events, bool only_due, int max_ms);
extern void EsApplyInlineProjections(int n, Datum *rows, bool *nulls);

/* worker.c */
extern bool es_worker_enabled;
extern int	es_naptime_ms;
extern int	es_notify_interval_ms;
extern void EsRegisterLauncher(void);

/* read.c: index scans over event_store.events */
typedef struct EsTypeFilter
{
	int			ntypes;			/* -1: no filter */
	text	  **types;
} EsTypeFilter;

typedef struct EsScanSpec
{
	Oid			index_oid;
	ScanKeyData keys[3];
	int			nkeys;
	ScanDirection direction;
	Snapshot	snapshot;		/* scan snapshot */
	Snapshot	xact_snapshot;	/* stop at the first row this cannot see, or NULL */
	EsTypeFilter filter;		/* applied to the upcast event */
	int64		max_count;		/* -1: unlimited */
	bool		raw;			/* do not upcast */
	struct Tuplestorestate *direct;	/* rows needing no upcast go straight here */
	int64		current_position;	/* event being handled (for error reports) */
	const struct EsDeniedSet *denied;	/* skip these categories, or NULL */
	int			leading_values; /* with a stored row, the first so many values
								 * do (0: all) */
} EsScanSpec;

/*
 * Called for every event of a scan (values in event_store.event order).
 * stored is the row as stored when it is exactly the event (not upcast) and
 * can serve as an event_store.event datum as it is (see EsEventDatum), else
 * NULL; it lives in a pinned buffer until the callback returns.  When the
 * scan asked for leading_values and stored is set, only that many values
 * (at least through stream_id, and through event_type when the scan filters
 * on it) are filled in.
 */
typedef bool (*EsRowCallback) (Datum *values, bool *isnull, HeapTuple stored,
							   void *arg);

extern int64 EsScanEvents(const EsCatalog *cat, EsScanSpec *spec,
						  EsRowCallback callback, void *arg);
extern Datum EsEventDatum(TupleDesc event_desc, Datum *values, bool *isnull,
						  HeapTuple stored);
extern bool EsTypeMatches(const EsTypeFilter *filter, Datum event_type);
extern bool EsFirstEventValue(const EsCatalog *cat, Oid index_oid,
							  Snapshot snapshot, ScanKey keys, int nkeys,
							  ScanDirection direction, AttrNumber attno,
							  Datum *value);
extern int64 EsLatestStreamVersion(const EsCatalog *cat, text *stream_id,
								   Snapshot snapshot);

/* saga.c */
extern bool EsSagaWatching(void);
extern bool EsSagaRegistrant(Datum saga_id, MemoryContext cxt, Oid *owner,
							 const char **search_path);
extern void EsSagaOnEvent(text *stream_id, text *type, Jsonb *metadata,
						  Jsonb *data);

/* append.c */
typedef struct EsNewEvent		/* one event of a batch, validated */
{
	text	   *type;
	Jsonb	   *data;
	Jsonb	   *metadata;
	pg_uuid_t	id;
	bool		has_id;
	int32		schema_version;
} EsNewEvent;

extern bool EsParseUuid(const char *s, int len, pg_uuid_t *out);
extern void EsLockStream(text *stream_id);
extern void EsLockCategory(const char *category, int len, LOCKMODE mode);
extern int64 EsAppendEvents(text *stream_id, EsNewEvent *evs, int n,
							bool has_expected, int64 expected, bool internal);
extern int64 EsAppendEvent(text *stream_id, text *type, Jsonb *data);
extern EsNewEvent *EsParseEventsJson(const char *json, int *nevents);

/* lifecycle.c */
extern bool es_allow_purge;
extern int	es_retention_interval_ms;
extern bool EsRemovalInProgress(void);
extern bool EsStreamLifecycle(text *stream_id, bool *deleted, int64 *start_after);
extern int64 EsCheckStreamNotDeleted(text *stream_id);
/* retention removes at most this many events per statement */
#define ES_RETENTION_BATCH 10000
extern int64 EsEnforceRetentionBatch(int64 limit);
extern int64 EsEnforceRetention(void);

/* snapshot.c */
extern void EsSnapshotHook(text *stream_id, int64 old_version, int64 new_version);

/* upcast.c */
extern bool EsUpcastersExist(void);
extern bool EsUpcastRow(Datum *values, bool *isnull);

/* args.c: argument checks of the API functions */
extern void EsRequireArg(FunctionCallInfo fcinfo, int argno, const char *name);
extern void EsRejectNegative(int64 value, const char *name, const char *hint);
extern HeapTuple EsSearchProc(Oid fn);
extern text *EsGetRequiredText(FunctionCallInfo fcinfo, int argno,
							   const char *name);
extern void EsCheckNameLength(const char *what, int len);
extern text *EsGetStreamId(FunctionCallInfo fcinfo, int argno);
extern int	EsArgTextArray(FunctionCallInfo fcinfo, int argno, const char *name,
						   Datum **elems, bool **nulls);
extern void EsCheckCategory(text *category, const char *hint);
extern int	EsCategoryLen(text *stream_id);

/* Is text t the len bytes at s? */
static inline bool
EsTextIs(text *t, const char *s, int len)
{
	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}
extern void EsCheckCallbackSignature(Oid fn, const char *role, int nargs,
									 const Oid *argtypes, Oid rettype,
									 const char *expected);

/* security.c: users, callbacks' roles, category grants */
typedef struct EsUserSwitch
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;		/* -1: no GUC nest level was opened */
	bool		callback;		/* made by EsBecomeRole */
} EsUserSwitch;

#define ES_PRIV_APPEND	1
#define ES_PRIV_READ	2

struct EsDeniedSet
{
	int			n;
	text	  **categories;
};
typedef struct EsDeniedSet EsDeniedSet;

extern Oid	EsExtensionOwner(void);
extern void EsBecomeOwner(EsUserSwitch *sw);
extern int	EsCallbackScopeBegin(void);
extern void EsCallbackScopeEnd(int level);
extern void EsCallbackScopeAbandon(void);
extern int	EsCallbackScopeDepth(void);
extern void EsCallbackScopeUnwind(int depth);
extern void EsBecomeRole(EsUserSwitch *sw, Oid role, const char *search_path);
extern char *EsPinSearchPath(const char *path);
extern const char *EsOwnerColumns(void);
extern void EsRegistrantOf(HeapTuple tup, TupleDesc desc, int attno, Oid *role,
						   const char **search_path);
extern char *EsRegistrationSearchPath(void);

/* SQL fragments of a registration's registrant columns (EsRegistrantSql) */
typedef struct EsRegistrantInsert
{
	const char *columns;		/* ", owner, search_path" */
	const char *params;			/* ", $n::pg_catalog.regrole, $n+1" */
	const char *updates;		/* ", owner = EXCLUDED.owner, ..." */
	int			nparams;
} EsRegistrantInsert;

extern void EsRegistrantSql(int param, EsRegistrantInsert *sql);
extern void EsCheckMayChange(EsUserSwitch *sw, Oid owner, const char *what);
extern bool EsLockRegistration(EsUserSwitch *sw, const char *sql, int nargs,
							   Oid *types, Datum *values, const char *what);
extern void EsRestoreUser(EsUserSwitch *sw);
extern void EsSpiConnect(EsUserSwitch *sw);
extern void EsSpiFinish(EsUserSwitch *sw);
extern const char *EsRoleName(Oid role);
extern void EsCheckCallbackOwner(Oid fn, Oid role, const char *what);
extern Datum EsCallAs(EsRegistry *reg, FunctionCallInfo fcinfo, Oid role,
					  const char *search_path);
extern bool EsCategoryGrantsExist(void);
extern void EsCheckStreamAccess(text *stream_id, int priv);
extern EsDeniedSet *EsDeniedCategories(Oid role);
extern EsDeniedSet *EsDeniedCategoriesFor(Oid role, int privs);
extern bool EsStreamDenied(const EsDeniedSet *set, text *stream_id);
extern bool EsRoleMayAccessStream(Oid role, text *stream_id, int priv);
extern bool EsCategoryHasGrants(const char *category, int len);
extern int	EsGrantedCategories(text ***categories);
extern bool EsSchemaHasOwners(void);
extern Oid	EsRegistrant(Oid owner);

#endif							/* EVENT_STORE_H */
