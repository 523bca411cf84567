/*
 * saga.c
 *	  The per-event part of sagas: append() hands every event whose type is
 *	  some saga step's complete_on or fail_on, and whose metadata carries a
 *	  saga_id, to the orchestrator (event_store._saga_on_event).  The set of
 *	  watched types is cached per backend, so an event of any other type
 *	  costs one hash probe (and nothing at all while no saga watches events).
 *
 *	  Also the C side of the orchestrator's security: define_saga records
 *	  the role that defines a saga type, and its step functions run as that
 *	  role (EsSagaRegistrant; the step loop is saga_run.c); start_saga and
 *	  saga_state check the caller's grants on category "saga" (the
 *	  category of every saga's stream) before the orchestrator, which runs
 *	  as the extension owner, takes over; an event completes or fails a
 *	  step only when the saga's owner may read it.
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "api.h"
#include "append.h"
#include "callback.h"
#include "catalog.h"
#include "followers.h"
#include "grants.h"
#include "locks.h"
#include "registry.h"
#include "roles.h"
#include "saga.h"

PG_FUNCTION_INFO_V1(es_saga_definitions_changed);
PG_FUNCTION_INFO_V1(es_define_saga);
PG_FUNCTION_INFO_V1(es_saga_call);
PG_FUNCTION_INFO_V1(es_saga_regprocedure);
PG_FUNCTION_INFO_V1(es_start_saga);
PG_FUNCTION_INFO_V1(es_saga_state);

typedef struct EsWatchedType
{
	EsTextKey	key;			/* the event type */
} EsWatchedType;

static EsRegistry saga_registry = {"saga_definitions", true};
static HTAB *watched = NULL;
static MemoryContext watched_cxt = NULL;
static long watched_count = 0;
static SPIPlanPtr on_event_plan = NULL;

/* Load the set of watched event types */
static void
es_saga_load(void)
{
	EsUserSwitch sw;
	int			rc;

	watched_cxt = EsRegistryNewContext(&saga_registry);
	watched = EsTextHashCreate("event_store saga watch", sizeof(EsWatchedType), watched_cxt);
	watched_count = 0;

	EsSpiConnect(&sw);
	rc = SPI_execute("SELECT event_type FROM event_store.saga_watched_types", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.saga_definitions failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		text	   *t = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		int			len = VARSIZE_ANY_EXHDR(t);
		bool		found;

		(void) EsTextHashEnter(watched, MemoryContextStrdup(watched_cxt, text_to_cstring(t)),
							   len, 0, &found);
		watched_count++;
	}
	EsSpiFinish(&sw);
}

/* Does any saga step wait for events at all? */
static bool
es_saga_watching(void)
{
	EsRegistryEnsure(&saga_registry, es_saga_load);
	return watched_count > 0;
}

/*
 * The role that owns a saga (defined its type) and the pinned search_path
 * its step functions run with (palloc'd in cxt); false when there is no
 * such saga.  Caller is connected to SPI.
 */
bool
EsSagaRegistrant(Datum saga_id, MemoryContext cxt, Oid *owner,
				 const char **search_path)
{
	static SPIPlanPtr plan = NULL;
	static const char *plan_columns = NULL;
	const char *columns = EsOwnerColumns();
	MemoryContext old;
	int			rc;

	/* the columns differ with the schema (ALTER EXTENSION UPDATE) */
	if (plan == NULL || plan_columns != columns)
	{
		Oid			type = UUIDOID;

		if (plan != NULL)
			SPI_freeplan(plan);
		plan = EsPrepareKeptPlan(psprintf("SELECT %s FROM event_store.sagas s "
										  "JOIN event_store.saga_definitions d "
										  "ON d.saga_type OPERATOR(pg_catalog.=) s.saga_type "
										  "WHERE s.saga_id OPERATOR(pg_catalog.=) $1", columns),
								 1, &type);
		plan_columns = columns;
	}
	rc = SPI_execute_plan(plan, &saga_id, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading the saga's definition failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;
	old = MemoryContextSwitchTo(cxt);
	EsRegistrantOf(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, owner, search_path);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * An event was appended to stream_id: if its type is watched and its
 * metadata names a saga, let the orchestrator complete or fail the waiting
 * step.  An event the saga's owner may not read does neither: it would
 * become the step's result, the saga's data and part of its stream.
 */
static void
es_saga_on_event(text *stream_id, text *type, Jsonb *metadata, Jsonb *data,
				 pg_uuid_t *event_id)
{
	JsonbValue	k;
	JsonbValue *v;
	pg_uuid_t	saga_id;
	Datum		values[3];
	EsUserSwitch sw;
	bool		check_owner;
	int			rc;

	if (EsTextHashFind(watched, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type), 0) == NULL)
		return;
	k.type = jbvString;
	k.val.string.val = "saga_id";
	k.val.string.len = 7;
	v = findJsonbValueFromContainer(&metadata->root, JB_FOBJECT, &k);
	if (v == NULL || v->type != jbvString ||
		!EsParseUuid(v->val.string.val, v->val.string.len, &saga_id))
		return;

	/* (the usual case, no category grants, needs no owner) */
	check_owner = EsCategoryGrantsExist();
	EsSpiConnect(&sw);
	if (check_owner)
	{
		Oid			owner;
		const char *path;

		if (!EsSagaRegistrant(UUIDPGetDatum(&saga_id), CurrentMemoryContext, &owner, &path) ||
			!EsRoleMayAccessStream(owner, stream_id, ES_PRIV_READ))
		{
			EsSpiFinish(&sw);
			return;
		}
	}
	if (on_event_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, TEXTOID, JSONBOID};
		on_event_plan = EsPrepareKeptPlan("SELECT event_store._saga_on_event($1, $2, $3)",
										  3, types);
	}
	/* the event causes what the saga writes now (correlation, saga_run.c) */
	EsSagaSetCause(&saga_id, event_id, true);
	values[0] = UUIDPGetDatum(&saga_id);
	values[1] = PointerGetDatum(type);
	values[2] = JsonbPGetDatum(data);
	rc = SPI_execute_plan(on_event_plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "saga event dispatch failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
}

static EsAppendFollower prev_follower = NULL;

/* Follower of append(): hand each event to the sagas waiting for it */
static void
es_saga_follow(const EsAppendedBatch *batch)
{
	if (prev_follower)
		prev_follower(batch);
	if (!es_saga_watching())
		return;
	for (int i = 0; i < batch->n; i++)
	{
		Datum	   *v = &batch->rows[i * Natts_es_event];

		es_saga_on_event(batch->stream_id,
						 DatumGetTextPP(v[Anum_es_event_type - 1]),
						 DatumGetJsonbP(v[Anum_es_metadata - 1]),
						 DatumGetJsonbP(v[Anum_es_data - 1]),
						 DatumGetUUIDP(v[Anum_es_event_id - 1]));
	}
}

/* Follow append() (module load; see followers.h) */
void
EsSagaInit(void)
{
	prev_follower = es_append_follower;
	es_append_follower = es_saga_follow;
}

/* SQL: event_store._saga_definitions_changed() */
Datum
es_saga_definitions_changed(PG_FUNCTION_ARGS)
{
	EsRegistryChanged(&saga_registry);
	PG_RETURN_VOID();
}

/*
 * Call the orchestrator's function event_store.<name> (SECURITY DEFINER:
 * it runs as the extension owner) with nargs arguments (at most 4).
 */
static Datum
es_orchestrator_call(const char *name, int nargs, Oid *argtypes,
					 NullableDatum *args, bool *isnull)
{
	Oid			fn;
	FmgrInfo	flinfo;
	Datum		result;
	LOCAL_FCINFO(inner, 4);

	Assert(nargs <= 4);
	fn = LookupFuncName(list_make2(makeString(ES_SCHEMA_NAME), makeString(unconstify(char *, name))),
						nargs, argtypes, false);
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, nargs, InvalidOid, NULL, NULL);
	for (int i = 0; i < nargs; i++)
		inner->args[i] = args[i];
	result = FunctionCallInvoke(inner);
	*isnull = inner->isnull;
	return result;
}

/*
 * SQL: event_store.define_saga(saga_type text, definition jsonb)
 *
 * The orchestrator's _define_saga (SECURITY DEFINER, search_path pinned)
 * does the work; this records who calls it, as the role the saga's step
 * functions will run as, and the caller's search_path, in which the step
 * function names of the definition are resolved.
 */
Datum
es_define_saga(PG_FUNCTION_ARGS)
{
	Oid			argtypes[4] = {TEXTOID, JSONBOID, REGROLEOID, TEXTOID};
	NullableDatum args[4];
	bool		isnull;

	EsCheckWritable("define_saga()");

	/* redefining a type needs the privileges of the role that defined it */
	if (!PG_ARGISNULL(0))
	{
		Oid			type = TEXTOID;
		Datum		value = PG_GETARG_DATUM(0);
		EsUserSwitch sw;

		EsSpiConnect(&sw);
		(void) EsLockRegistration(&sw, "SELECT owner::pg_catalog.oid FROM event_store.saga_definitions "
								  "WHERE saga_type OPERATOR(pg_catalog.=) $1 FOR UPDATE",
								  1, &type, &value,
								  psprintf("saga type \"%s\"", TextDatumGetCString(value)));
		EsSpiFinish(&sw);
	}

	for (int i = 0; i < 2; i++)
	{
		args[i].value = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		args[i].isnull = PG_ARGISNULL(i);
	}
	args[2].value = ObjectIdGetDatum(GetUserId());
	args[2].isnull = false;
	args[3].value = CStringGetTextDatum(EsRegistrationSearchPath());
	args[3].isnull = false;
	(void) es_orchestrator_call("_define_saga", 4, argtypes, args, &isnull);
	PG_RETURN_VOID();
}

/*
 * Run with search_path set to path until AtEOXact_GUC(false, the returned
 * level) (an error ends the setting with the transaction or subtransaction)
 */
static int
es_push_search_path(const char *path)
{
	int			level = NewGUCNestLevel();

	(void) set_config_option("search_path", path, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * SQL: event_store._saga_regprocedure(signature text, search_path text)
 *		RETURNS regprocedure -- to_regprocedure() in the given search_path
 */
Datum
es_saga_regprocedure(PG_FUNCTION_ARGS)
{
	int			level;
	Datum		result;
	LOCAL_FCINFO(inner, 1);

	EsRequireArg(fcinfo, 0, "signature");
	EsRequireArg(fcinfo, 1, "search_path");
	InitFunctionCallInfoData(*inner, NULL, 1, InvalidOid, NULL, NULL);
	inner->args[0].value = PG_GETARG_DATUM(0);
	inner->args[0].isnull = false;
	level = es_push_search_path(EsPinSearchPath(TextDatumGetCString(PG_GETARG_DATUM(1))));
	result = to_regprocedure(inner);
	AtEOXact_GUC(false, level);
	if (inner->isnull)
		PG_RETURN_NULL();
	return result;
}

/*
 * The pinned search_path the step functions of a saga run with: the one
 * its type was defined with (see EsPinSearchPath)
 */
static const char *
es_saga_search_path(Datum saga_id)
{
	MemoryContext caller = CurrentMemoryContext;
	EsUserSwitch sw;
	Oid			owner;
	const char *path;
	bool		found;

	EsSpiConnect(&sw);
	found = EsSagaRegistrant(saga_id, caller, &owner, &path);
	EsSpiFinish(&sw);
	if (!found)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("the definition of saga %s was not found",
						DatumGetCString(DirectFunctionCall1(uuid_out, saga_id)))));
	return path;
}

/*
 * SQL: event_store._saga_call(fn regprocedure, run_as regrole, saga_id uuid,
 *		data jsonb) RETURNS jsonb -- of the schemas before 0.3.0, whose step
 *		loop is PL/pgSQL (from 0.3.0 on, saga_run.c calls the step functions)
 *
 * Call a step function (saga_id uuid, data jsonb) RETURNS jsonb as the role
 * that defined the saga, with the search_path its type was defined with
 * (pinned), never the session's or the orchestrator's.
 */
Datum
es_saga_call(PG_FUNCTION_ARGS)
{
	Oid			fn;
	Oid			role;
	FmgrInfo	flinfo;
	EsUserSwitch sw;
	Datum		result;
	LOCAL_FCINFO(inner, 2);

	EsRequireArg(fcinfo, 0, "fn");
	EsRequireArg(fcinfo, 1, "run_as");
	fn = PG_GETARG_OID(0);
	role = PG_GETARG_OID(1);
	if (!EsFunctionExists(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("saga step function with OID %u no longer exists", fn)));
	EsCheckCallbackOwner(fn, role, "a saga step function");
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, 2, InvalidOid, NULL, NULL);
	for (int i = 0; i < 2; i++)
	{
		inner->args[i].value = PG_ARGISNULL(i + 2) ? (Datum) 0 : PG_GETARG_DATUM(i + 2);
		inner->args[i].isnull = PG_ARGISNULL(i + 2);
	}
	if (flinfo.fn_strict && (inner->args[0].isnull || inner->args[1].isnull))
		PG_RETURN_NULL();

	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("saga_id must not be null")));
	EsBecomeRole(&sw, role, es_saga_search_path(PG_GETARG_DATUM(2)));
	result = FunctionCallInvoke(inner);
	EsRestoreUser(&sw);
	if (inner->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/* The category of every saga's stream (saga-<saga_id>) */
static text *
es_saga_category(void)
{
	return cstring_to_text("saga");
}

/*
 * SQL: event_store.start_saga(saga_type text, data jsonb, saga_id uuid)
 *		RETURNS uuid
 *
 * The caller needs "append" on category "saga" when it has grants (the
 * saga's stream is written on its behalf).  Whether it may read that
 * category decides what a start with an existing id may tell it; the
 * orchestrator's _start_saga does the rest.
 */
Datum
es_start_saga(PG_FUNCTION_ARGS)
{
	Oid			argtypes[4] = {TEXTOID, JSONBOID, UUIDOID, BOOLOID};
	NullableDatum args[4];
	text	   *saga = es_saga_category();
	Datum		result;
	bool		isnull;

	EsCheckStreamAccess(saga, ES_PRIV_APPEND);
	for (int i = 0; i < 3; i++)
	{
		args[i].value = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		args[i].isnull = PG_ARGISNULL(i);
	}
	args[3].value = BoolGetDatum(EsRoleMayAccessStream(GetUserId(), saga, ES_PRIV_READ));
	args[3].isnull = false;
	if (!PG_ARGISNULL(2))
		EsLockSagaStart(PG_GETARG_UUID_P(2));
	result = es_orchestrator_call("_start_saga", 4, argtypes, args, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * SQL: event_store.saga_state(saga_id uuid) RETURNS jsonb -- needs "read"
 * on category "saga" when it has grants, like reading the saga's stream
 */
Datum
es_saga_state(PG_FUNCTION_ARGS)
{
	Oid			argtypes[1] = {UUIDOID};
	NullableDatum args[1];
	Datum		result;
	bool		isnull;

	EsCheckStreamAccess(es_saga_category(), ES_PRIV_READ);
	args[0].value = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	args[0].isnull = PG_ARGISNULL(0);
	result = es_orchestrator_call("_saga_state", 1, argtypes, args, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

/*
 * SQL: event_store.saga_diagram(saga_id uuid) RETURNS text and
 * event_store.saga_diagram(saga_type text) RETURNS text -- a Mermaid
 * flowchart of a saga (with each step's status) or of a saga type.  Like
 * saga_state, it needs "read" on category "saga" when it has grants, checked
 * before anything is looked up (an outsider learns nothing, not even
 * whether the saga exists); the orchestrator's _saga_diagram draws it.
 */
static Datum
es_saga_diagram_of(FunctionCallInfo fcinfo, int argno)
{
	Oid			argtypes[2] = {UUIDOID, TEXTOID};
	NullableDatum args[2];
	Datum		result;
	bool		isnull;

	EsRequireArg(fcinfo, 0, argno == 0 ? "saga_id" : "saga_type");
	EsCheckStreamAccess(es_saga_category(), ES_PRIV_READ);
	args[0].value = args[1].value = (Datum) 0;
	args[0].isnull = args[1].isnull = true;
	args[argno].value = PG_ARGISNULL(0) ? (Datum) 0 : PG_GETARG_DATUM(0);
	args[argno].isnull = PG_ARGISNULL(0);
	result = es_orchestrator_call("_saga_diagram", 2, argtypes, args, &isnull);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}

PG_FUNCTION_INFO_V1(es_saga_diagram);
PG_FUNCTION_INFO_V1(es_saga_type_diagram);

Datum
es_saga_diagram(PG_FUNCTION_ARGS)
{
	return es_saga_diagram_of(fcinfo, 0);
}

Datum
es_saga_type_diagram(PG_FUNCTION_ARGS)
{
	return es_saga_diagram_of(fcinfo, 1);
}
