/*
 * snapshot.c
 *	  Aggregates: reducers, snapshots, the snapshot hook of append() and
 *	  time travel with load_aggregate(at_version).
 *
 * The aggregate definitions (event_store.aggregates) are cached per backend
 * with each reducer's FmgrInfo, so the snapshot hook costs an append one
 * hash lookup unless the stream crosses a multiple of snapshot_every.
 * Folding reads the stream with EsScanEvents (upcasters applied) and calls
 * the reducer directly through fmgr.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/typcache.h"

#include "aggregate.h"
#include "api.h"
#include "callback.h"
#include "catalog.h"
#include "followers.h"
#include "grants.h"
#include "read.h"
#include "registry.h"
#include "results.h"
#include "roles.h"
#include "stream_state.h"

PG_FUNCTION_INFO_V1(es_define_aggregate);
PG_FUNCTION_INFO_V1(es_load_aggregate);
PG_FUNCTION_INFO_V1(es_save_snapshot);
PG_FUNCTION_INFO_V1(es_load_snapshot);
PG_FUNCTION_INFO_V1(es_purge_snapshots);

typedef struct EsAggregate
{
	EsTextKey	key;			/* the category (in full_category) */
	text	   *full_category;
	FmgrInfo	reducer;
	Jsonb	   *initial_state;
	int32		snapshot_every;	/* 0: no snapshot hook */
	int32		state_version;
	bool		missing;		/* the reducer was dropped */
	Oid			owner;			/* the role that defined it: the reducer runs as it */
	const char *search_path;	/* and with this search_path (pinned) */
} EsAggregate;

static EsRegistry agg_registry = {"aggregates", true};
static HTAB *agg_hash = NULL;
static MemoryContext agg_cxt = NULL;
static long agg_count = 0;
static SPIPlanPtr find_snapshot_plan = NULL;
static SPIPlanPtr save_snapshot_plan = NULL;

/* (Re)build the aggregate cache */
static void
es_agg_load(void)
{
	MemoryContext old;
	EsUserSwitch sw;
	int			rc;

	agg_cxt = EsRegistryNewContext(&agg_registry);
	agg_hash = EsTextHashCreate("event_store aggregates", sizeof(EsAggregate), agg_cxt);
	agg_count = 0;

	EsSpiConnect(&sw);
	rc = SPI_execute(psprintf("SELECT category, reducer::pg_catalog.oid, initial_state, "
							  "coalesce(snapshot_every, 0), state_version, %s "
							  "FROM event_store.aggregates", EsOwnerColumns()), true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.aggregates failed: %s", SPI_result_code_string(rc));

	old = MemoryContextSwitchTo(agg_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *category = DatumGetTextPCopy(SPI_getbinval(tup, desc, 1, &isnull));
		EsAggregate *entry;
		bool		found;

		/* categories are unique (the table's primary key) */
		entry = EsTextHashEnter(agg_hash, VARDATA_ANY(category), VARSIZE_ANY_EXHDR(category),
								0, &found);
		entry->full_category = category;
		entry->reducer.fn_oid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		entry->missing = !EsFunctionExists(entry->reducer.fn_oid);
		EsRegistrantOf(tup, desc, 6, &entry->owner, &entry->search_path);
		if (!entry->missing)
		{
			EsCheckCallbackOwner(entry->reducer.fn_oid, entry->owner, "a reducer");
			fmgr_info_cxt(entry->reducer.fn_oid, &entry->reducer, agg_cxt);
		}
		entry->initial_state = DatumGetJsonbPCopy(SPI_getbinval(tup, desc, 3, &isnull));
		entry->snapshot_every = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		entry->state_version = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
		agg_count++;
	}
	MemoryContextSwitchTo(old);
	EsSpiFinish(&sw);
}

/* The aggregate of a category (given as bytes), or NULL */
static EsAggregate *
es_agg_find(const char *category, int len)
{
	EsRegistryEnsure(&agg_registry, es_agg_load);
	if (agg_count == 0)
		return NULL;
	return EsTextHashFind(agg_hash, category, len, 0);
}

/* Prepare the snapshot plans once per backend */
static void
es_snapshot_plans(void)
{
	if (find_snapshot_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT4OID, INT8OID, INT8OID};
		find_snapshot_plan =
			EsPrepareKeptPlan("SELECT stream_version, state FROM event_store.snapshots "
							  "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
							  "AND state_version OPERATOR(pg_catalog.=) $2 "
							  "AND stream_version OPERATOR(pg_catalog.<=) $3 "
							  "AND stream_version OPERATOR(pg_catalog.>) $4 "
							  "ORDER BY stream_version DESC LIMIT 1", 4, types);
	}
	if (save_snapshot_plan == NULL)
	{
		Oid			types[4] = {TEXTOID, INT8OID, JSONBOID, INT4OID};
		save_snapshot_plan =
			EsPrepareKeptPlan("INSERT INTO event_store.snapshots "
							  "(stream_id, stream_version, state, state_version) "
							  "VALUES ($1, $2, $3, $4) "
							  "ON CONFLICT (stream_id, stream_version, state_version) "
							  "DO UPDATE SET state = EXCLUDED.state, "
							  "created_at = pg_catalog.clock_timestamp()", 4, types);
	}
}

/* State of a fold in progress */
typedef struct EsFold
{
	EsAggregate *agg;
	TupleDesc	event_desc;
	Datum		state;
	int64		version;
	MemoryContext state_cxt[2];	/* the state lives in one, the other is spare */
	int			current;
} EsFold;

/* Row callback: state := reducer(state, event) */
static bool
es_fold_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsFold	   *fold = (EsFold *) arg;
	Datum		result;
	MemoryContext old;
	LOCAL_FCINFO(fcinfo, 2);

	InitFunctionCallInfoData(*fcinfo, &fold->agg->reducer, 2, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = fold->state;
	fcinfo->args[0].isnull = false;
	fcinfo->args[1].value = EsEventDatum(fold->event_desc, values, isnull, stored);
	fcinfo->args[1].isnull = false;
	result = EsRegistryCall(&agg_registry, fcinfo);
	if (fcinfo->isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("reducer %s returned null at version " INT64_FORMAT " of stream \"%s\"",
						format_procedure(fold->agg->reducer.fn_oid),
						DatumGetInt64(values[Anum_es_stream_version - 1]),
						TextDatumGetCString(values[Anum_es_stream_id - 1])),
				 errhint("A reducer must return the new state.")));

	/* keep the new state in the spare context and drop the old one */
	fold->current ^= 1;
	MemoryContextReset(fold->state_cxt[fold->current]);
	old = MemoryContextSwitchTo(fold->state_cxt[fold->current]);
	fold->state = datumCopy(result, false, -1);
	MemoryContextSwitchTo(old);
	MemoryContextReset(fold->state_cxt[fold->current ^ 1]);
	fold->version = DatumGetInt64(values[Anum_es_stream_version - 1]);
	return true;
}

/*
 * State of a stream at at_version (or its last version when at_version < 0):
 * newest usable snapshot, then the later (upcast) events through the
 * reducer; a reopened stream's fold starts after its tombstone, start_after.
 * Returns the state (in the caller's context) and sets *version.
 */
static Datum
es_fold_aggregate(EsAggregate *agg, text *stream_id, int64 at_version,
				  int64 start_after, Snapshot snapshot, int64 *version)
{
	const EsCatalog *cat = EsGetCatalog();
	EsFold		fold;
	EsScanSpec	spec;
	Relation	index;
	Datum		values[4];
	int			rc;
	Datum		result;
	MemoryContext caller = CurrentMemoryContext;
	EsUserSwitch sw;

	if (agg->missing)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the reducer of category \"%s\" no longer exists",
						text_to_cstring(agg->full_category)),
				 errdetail("Function with OID %u was dropped.", agg->reducer.fn_oid),
				 errhint("Define the aggregate again with event_store.define_aggregate().")));
	if (!EsRoleMayAccessStream(agg->owner, stream_id, ES_PRIV_READ))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("the reducer of category \"%s\" may not read stream \"%s\"",
						text_to_cstring(agg->full_category), text_to_cstring(stream_id)),
				 errdetail("Role \"%s\", which defined the aggregate and as which its reducer runs, holds no read grant on the category.",
						   EsRoleName(agg->owner)),
				 errhint("Grant it read with event_store.grant_category(), or define the aggregate as a role that holds one.")));
	memset(&fold, 0, sizeof(fold));
	fold.agg = agg;
	fold.event_desc = lookup_rowtype_tupdesc(cat->event_type_oid, -1);
	fold.state_cxt[0] = AllocSetContextCreate(caller, "event_store fold", ALLOCSET_DEFAULT_SIZES);
	fold.state_cxt[1] = AllocSetContextCreate(caller, "event_store fold", ALLOCSET_DEFAULT_SIZES);
	fold.state = JsonbPGetDatum(agg->initial_state);
	/* a reopened stream starts over after its tombstone */
	fold.version = start_after;

	/* newest snapshot of this state_version at or below at_version */
	EsSpiConnect(&sw);
	es_snapshot_plans();
	values[0] = PointerGetDatum(stream_id);
	values[1] = Int32GetDatum(agg->state_version);
	values[2] = Int64GetDatum(at_version < 0 ? PG_INT64_MAX : at_version);
	values[3] = Int64GetDatum(start_after);
	rc = SPI_execute_plan(find_snapshot_plan, values, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading snapshots failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		bool		isnull;
		MemoryContext old;

		fold.version = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		old = MemoryContextSwitchTo(fold.state_cxt[0]);
		fold.state = datumCopy(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull),
							   false, -1);
		MemoryContextSwitchTo(old);
	}
	EsSpiFinish(&sw);

	/* then the events after it, folded as the aggregate's owner */
	if (at_version < 0 || fold.version < at_version)
	{
		memset(&spec, 0, sizeof(spec));
		spec.index_oid = cat->stream_idx;
		spec.direction = ForwardScanDirection;
		spec.snapshot = snapshot;
		spec.filter.ntypes = -1;
		spec.max_count = -1;
		spec.leading_values = Anum_es_stream_version;	/* es_fold_row reads no further */
		index = index_open(cat->stream_idx, AccessShareLock);
		ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
							   index->rd_indcollation[0], F_TEXTEQ, PointerGetDatum(stream_id));
		ScanKeyEntryInitialize(&spec.keys[1], 0, 2, BTGreaterStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8GT, Int64GetDatum(fold.version));
		spec.nkeys = 2;
		if (at_version >= 0)
		{
			ScanKeyEntryInitialize(&spec.keys[2], 0, 2, BTLessEqualStrategyNumber, InvalidOid,
								   InvalidOid, F_INT8LE, Int64GetDatum(at_version));
			spec.nkeys = 3;
		}
		index_close(index, AccessShareLock);
		EsBecomeRole(&sw, agg->owner, agg->search_path);
		EsScanEvents(cat, &spec, es_fold_row, &fold);
		EsRestoreUser(&sw);
	}

	ReleaseTupleDesc(fold.event_desc);
	*version = fold.version;
	result = datumCopy(fold.state, false, -1);	/* into the caller's context */
	MemoryContextDelete(fold.state_cxt[0]);
	MemoryContextDelete(fold.state_cxt[1]);
	return result;
}

/* Store a snapshot (caller is not connected to SPI) */
static void
es_store_snapshot(text *stream_id, int64 version, Datum state, int32 state_version)
{
	Datum		values[4];
	EsUserSwitch sw;
	int			rc;

	EsSpiConnect(&sw);
	es_snapshot_plans();
	values[0] = PointerGetDatum(stream_id);
	values[1] = Int64GetDatum(version);
	values[2] = state;
	values[3] = Int32GetDatum(state_version);
	rc = SPI_execute_plan(save_snapshot_plan, values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "saving the snapshot failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
}

static EsAppendFollower prev_follower = NULL;

/*
 * Follower of append() (the snapshot policy): the stream went from
 * old_version to new_version; store a snapshot at new_version when that
 * crossed a multiple of the aggregate's snapshot_every.
 */
static void
es_aggregate_follow(const EsAppendedBatch *batch)
{
	text	   *stream_id = batch->stream_id;
	int64		old_version = batch->first_version - 1;
	int64		new_version = old_version + batch->n;
	EsAggregate *agg;
	Datum		state;
	int64		version;
	Snapshot	snapshot;
	bool		deleted;
	int64		start_after;

	if (prev_follower)
		prev_follower(batch);
	agg = es_agg_find(VARDATA_ANY(stream_id), EsCategoryLen(stream_id));
	if (agg == NULL || agg->snapshot_every <= 0)
		return;
	if (old_version / agg->snapshot_every >= new_version / agg->snapshot_every)
		return;

	/* append() made its inserts visible (CommandCounterIncrement) already */
	(void) EsStreamLifecycle(stream_id, &deleted, &start_after);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	state = es_fold_aggregate(agg, stream_id, new_version, start_after, snapshot, &version);
	UnregisterSnapshot(snapshot);
	es_store_snapshot(stream_id, new_version, state, agg->state_version);
}

/* Follow append() (module load; see followers.h) */
void
EsAggregateInit(void)
{
	prev_follower = es_append_follower;
	es_append_follower = es_aggregate_follow;
}

/* Validate a category argument (non-empty, no '-') */
static text *
es_get_category(FunctionCallInfo fcinfo, int argno)
{
	text	   *category = EsGetRequiredText(fcinfo, argno, "category");

	EsCheckCategory(category, NULL);
	return category;
}

/*
 * SQL: event_store.define_aggregate(category text, reducer regprocedure,
 *		initial_state jsonb, snapshot_every int, state_version int)
 */
Datum
es_define_aggregate(PG_FUNCTION_ARGS)
{
	text	   *category = es_get_category(fcinfo, 0);
	Oid			reducer;
	Oid			argtypes[2];
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[7] = {TEXTOID, REGPROCEDUREOID, JSONBOID, INT4OID, INT4OID, OIDOID, TEXTOID};
	EsUserSwitch sw;
	EsRegistrantInsert reg;
	char	   *what;
	int			rc;

	EsCheckWritable("define_aggregate()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("reducer must not be null")));
	reducer = PG_GETARG_OID(1);
	argtypes[0] = JSONBOID;
	argtypes[1] = EsGetCatalog()->event_type_oid;
	EsCheckCallbackSignature(reducer, "a reducer", 2, argtypes, JSONBOID,
							 "a function (state jsonb, event event_store.event) RETURNS jsonb");
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("initial_state must not be null"),
				 errhint("Pass '{}' for an empty state.")));
	if (!PG_ARGISNULL(3) && PG_GETARG_INT32(3) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("snapshot_every must be a positive integer"),
				 errdetail("Got %d.", PG_GETARG_INT32(3)),
				 errhint("Pass NULL for no automatic snapshots.")));
	if (PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("state_version must not be null")));
	if (PG_GETARG_INT32(4) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("state_version must be a positive integer"),
				 errdetail("Got %d.", PG_GETARG_INT32(4))));

	values[0] = PointerGetDatum(category);
	values[1] = ObjectIdGetDatum(reducer);
	values[2] = PG_GETARG_DATUM(2);
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	values[4] = PG_GETARG_DATUM(4);
	values[5] = ObjectIdGetDatum(GetUserId());
	values[6] = CStringGetTextDatum(EsRegistrationSearchPath());

	/* an aggregate reads and snapshots the category: both are needed */
	EsCheckStreamAccess(category, ES_PRIV_APPEND);
	EsCheckStreamAccess(category, ES_PRIV_READ);
	what = psprintf("the aggregate of category \"%s\"", text_to_cstring(category));

	EsSpiConnect(&sw);
	(void) EsLockRegistration(&sw, psprintf("SELECT %s FROM event_store.aggregates "
											"WHERE category OPERATOR(pg_catalog.=) $1 FOR UPDATE",
											EsOwnerColumns()),
							  1, types, values, what);
	EsRegistrantSql(6, &reg);
	rc = SPI_execute_with_args(psprintf("INSERT INTO event_store.aggregates "
										"(category, reducer, initial_state, snapshot_every, state_version%s) "
										"VALUES ($1, $2, $3, $4, $5%s) "
										"ON CONFLICT (category) DO UPDATE SET "
										"reducer = EXCLUDED.reducer, initial_state = EXCLUDED.initial_state, "
										"snapshot_every = EXCLUDED.snapshot_every, "
										"state_version = EXCLUDED.state_version%s, "
										"defined_at = pg_catalog.now()",
										reg.columns, reg.params, reg.updates),
							   5 + reg.nparams, types, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "defining the aggregate failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
	EsRegistryChanged(&agg_registry);
	PG_RETURN_VOID();
}

/* A version argument that may be NULL (-1) but not negative */
static int64
es_get_optional_version(FunctionCallInfo fcinfo, int argno, const char *name)
{
	int64		v;

	if (PG_ARGISNULL(argno))
		return -1;
	v = PG_GETARG_INT64(argno);
	EsRejectNegative(v, name, "Pass NULL for the latest version.");
	return v;
}

/*
 * SQL: event_store.load_aggregate(stream_id text, at_version bigint)
 *		RETURNS TABLE(stream_version bigint, state jsonb)
 */
Datum
es_load_aggregate(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);
	int64		at_version = es_get_optional_version(fcinfo, 1, "at_version");
	int			catlen = EsCategoryLen(stream_id);
	EsAggregate *agg;
	ReturnSetInfo *rsinfo;
	Datum		values[2];
	bool		isnull[2] = {false, false};
	int64		version;
	bool		deleted;
	int64		start_after;

	EsGetCatalog();
	EsCheckStreamAccess(stream_id, ES_PRIV_READ);
	agg = es_agg_find(VARDATA_ANY(stream_id), catlen);
	if (agg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("no aggregate is defined for category \"%s\"",
						pnstrdup(VARDATA_ANY(stream_id), catlen)),
				 errhint("Define one with event_store.define_aggregate().")));

	EsInitResultSet(fcinfo);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	/* a deleted stream has no state */
	if (EsStreamLifecycle(stream_id, &deleted, &start_after) && deleted)
		return (Datum) 0;
	values[1] = es_fold_aggregate(agg, stream_id, at_version, start_after,
								  GetActiveSnapshot(), &version);
	values[0] = Int64GetDatum(version);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	return (Datum) 0;
}

/*
 * SQL: event_store.save_snapshot(stream_id text, stream_version bigint,
 *		state jsonb, state_version int DEFAULT 1)
 */
Datum
es_save_snapshot(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);
	int64		version;
	int64		current;
	int32		state_version;
	int64		start_after;

	EsCheckWritable("save_snapshot()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stream_version must not be null")));
	version = PG_GETARG_INT64(1);
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("state must not be null")));
	if (PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("state_version must not be null")));
	state_version = PG_GETARG_INT32(3);
	EsCheckStreamAccess(stream_id, ES_PRIV_APPEND);
	start_after = EsCheckStreamNotDeleted(stream_id);
	if (state_version < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("state_version must be a positive integer"),
				 errdetail("Got %d.", state_version)));
	current = EsLatestStreamVersion(EsGetCatalog(), stream_id, GetActiveSnapshot());
	if (version <= start_after && version >= 1 && version <= current)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream \"%s\" was reopened after version " INT64_FORMAT,
						text_to_cstring(stream_id), start_after),
				 errhint("A snapshot of a reopened stream must be taken after its tombstone.")));
	if (version < 1 || version > current)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream \"%s\" has no version " INT64_FORMAT,
						text_to_cstring(stream_id), version),
				 errdetail("The stream's current version is " INT64_FORMAT ".", current),
				 errhint("A snapshot must be taken at a version between 1 and the stream's current version.")));

	es_store_snapshot(stream_id, version, PG_GETARG_DATUM(2), state_version);
	PG_RETURN_VOID();
}

/*
 * SQL: event_store.load_snapshot(stream_id text, max_version bigint)
 *		RETURNS TABLE(stream_version bigint, state jsonb, state_version int,
 *		created_at timestamptz)
 */
Datum
es_load_snapshot(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);
	int64		max_version = es_get_optional_version(fcinfo, 1, "max_version");
	ReturnSetInfo *rsinfo;
	Datum		args[3];
	Oid			types[3] = {TEXTOID, INT8OID, INT8OID};
	EsUserSwitch sw;
	bool		deleted;
	int64		start_after;
	int			rc;

	EsCheckStreamAccess(stream_id, ES_PRIV_READ);
	EsInitResultSet(fcinfo);
	rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	/* like read_stream: nothing of a deleted stream, nothing before a reopening */
	if (EsStreamLifecycle(stream_id, &deleted, &start_after) && deleted)
		return (Datum) 0;

	EsSpiConnect(&sw);
	args[0] = PointerGetDatum(stream_id);
	args[1] = Int64GetDatum(max_version < 0 ? PG_INT64_MAX : max_version);
	args[2] = Int64GetDatum(start_after);
	rc = SPI_execute_with_args("SELECT stream_version, state, state_version, created_at "
							   "FROM event_store.snapshots "
							   "WHERE stream_id OPERATOR(pg_catalog.=) $1 "
							   "AND stream_version OPERATOR(pg_catalog.<=) $2 "
							   "AND stream_version OPERATOR(pg_catalog.>) $3 "
							   "ORDER BY stream_version DESC, created_at DESC, state_version DESC "
							   "LIMIT 1", 3, types, args, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading snapshots failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 1)
	{
		Datum		values[4];
		bool		isnull[4];

		for (int i = 0; i < 4; i++)
			values[i] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i + 1, &isnull[i]);
		/* tuplestore_putvalues copies, so SPI's memory may go after this */
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	}
	EsSpiFinish(&sw);
	return (Datum) 0;
}

/*
 * SQL: event_store.purge_snapshots(category text DEFAULT NULL) RETURNS bigint
 *
 * Delete the snapshots whose state_version differs from their aggregate's,
 * of one category (the caller needs append and read on it when it has
 * grants) or of every category on which the caller holds both.
 */
Datum
es_purge_snapshots(PG_FUNCTION_ARGS)
{
	EsDeniedSet *denied = NULL;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	Oid			types[2] = {TEXTOID, TEXTARRAYOID};
	EsUserSwitch sw;
	int			rc;
	int64		purged;

	EsCheckWritable("purge_snapshots()");
	if (PG_ARGISNULL(0))
	{
		denied = EsDeniedCategoriesFor(GetUserId(), ES_PRIV_APPEND | ES_PRIV_READ);
		values[0] = (Datum) 0;
		nulls[0] = 'n';
	}
	else
	{
		text	   *category = es_get_category(fcinfo, 0);

		EsCheckStreamAccess(category, ES_PRIV_APPEND);
		EsCheckStreamAccess(category, ES_PRIV_READ);
		values[0] = PointerGetDatum(category);
	}
	if (denied != NULL)
	{
		Datum	   *elems = palloc(sizeof(Datum) * denied->n);

		for (int i = 0; i < denied->n; i++)
			elems[i] = PointerGetDatum(denied->categories[i]);
		values[1] = PointerGetDatum(construct_array(elems, denied->n, TEXTOID, -1, false,
													TYPALIGN_INT));
	}
	else
	{
		values[1] = (Datum) 0;
		nulls[1] = 'n';
	}

	EsSpiConnect(&sw);
	rc = SPI_execute_with_args("DELETE FROM event_store.snapshots s "
							   "USING event_store.aggregates a "
							   "WHERE pg_catalog.split_part(s.stream_id, '-', 1) OPERATOR(pg_catalog.=) a.category "
							   "AND s.state_version OPERATOR(pg_catalog.<>) a.state_version "
							   "AND ($1 IS NULL OR a.category OPERATOR(pg_catalog.=) $1) "
							   "AND ($2 IS NULL OR NOT a.category OPERATOR(pg_catalog.=) ANY ($2))",
							   2, types, values, nulls, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "purging snapshots failed: %s", SPI_result_code_string(rc));
	purged = (int64) SPI_processed;
	EsSpiFinish(&sw);
	PG_RETURN_INT64(purged);
}
