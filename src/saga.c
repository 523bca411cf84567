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
 *	  role (_saga_call).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "event_store.h"

PG_FUNCTION_INFO_V1(es_saga_definitions_changed);
PG_FUNCTION_INFO_V1(es_define_saga);
PG_FUNCTION_INFO_V1(es_saga_call);
PG_FUNCTION_INFO_V1(es_saga_regprocedure);

#define ES_MAX_WATCH_KEY 128

typedef struct EsWatchedType
{
	char		key[ES_MAX_WATCH_KEY];
} EsWatchedType;

static EsRegistry saga_registry = {"saga_definitions", true};
static HTAB *watched = NULL;
static MemoryContext watched_cxt = NULL;
static long watched_count = 0;
static SPIPlanPtr on_event_plan = NULL;

/* Key of a type: long types share a truncated key (then the SQL side decides) */
static void
es_watch_key(char *key, const char *type, int len)
{
	memset(key, 0, ES_MAX_WATCH_KEY);
	memcpy(key, type, Min(len, ES_MAX_WATCH_KEY - 1));
}

/* Load the set of watched event types */
static void
es_saga_load(void)
{
	HASHCTL		ctl;
	EsUserSwitch sw;
	int			rc;

	watched_cxt = EsRegistryNewContext(&saga_registry);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = ES_MAX_WATCH_KEY;
	ctl.entrysize = sizeof(EsWatchedType);
	ctl.hcxt = watched_cxt;
	watched = hash_create("event_store saga watch", 16, &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	watched_count = 0;

	EsSpiConnect(&sw);
	rc = SPI_execute("SELECT event_type FROM event_store.saga_watched_types", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.saga_definitions failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		text	   *t = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		char		key[ES_MAX_WATCH_KEY];

		es_watch_key(key, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		(void) hash_search(watched, key, HASH_ENTER, NULL);
		watched_count++;
	}
	EsSpiFinish(&sw);
}

/* Does any saga step wait for events at all? */
bool
EsSagaWatching(void)
{
	EsRegistryEnsure(&saga_registry, es_saga_load);
	return watched_count > 0;
}

/*
 * An event was appended: if its type is watched and its metadata names a
 * saga, let the orchestrator complete or fail the waiting step.
 */
void
EsSagaOnEvent(text *type, Jsonb *metadata, Jsonb *data)
{
	char		key[ES_MAX_WATCH_KEY];
	JsonbValue	k;
	JsonbValue *v;
	pg_uuid_t	saga_id;
	Datum		values[3];
	EsUserSwitch sw;
	int			rc;

	es_watch_key(key, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type));
	if (hash_search(watched, key, HASH_FIND, NULL) == NULL)
		return;
	k.type = jbvString;
	k.val.string.val = "saga_id";
	k.val.string.len = 7;
	v = findJsonbValueFromContainer(&metadata->root, JB_FOBJECT, &k);
	if (v == NULL || v->type != jbvString ||
		!EsParseUuid(v->val.string.val, v->val.string.len, &saga_id))
		return;

	EsSpiConnect(&sw);
	if (on_event_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, TEXTOID, JSONBOID};
		on_event_plan = EsPrepareKeptPlan("SELECT event_store._saga_on_event($1, $2, $3)",
										  3, types);
	}
	values[0] = UUIDPGetDatum(&saga_id);
	values[1] = PointerGetDatum(type);
	values[2] = JsonbPGetDatum(data);
	rc = SPI_execute_plan(on_event_plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "saga event dispatch failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
}

/* SQL: event_store._saga_definitions_changed() */
Datum
es_saga_definitions_changed(PG_FUNCTION_ARGS)
{
	EsRegistryChanged(&saga_registry);
	PG_RETURN_VOID();
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
	Oid			fn;
	FmgrInfo	flinfo;
	EsUserSwitch sw;
	LOCAL_FCINFO(inner, 4);

	EsCheckWritable("define_saga()");
	fn = LookupFuncName(list_make2(makeString(ES_SCHEMA_NAME), makeString("_define_saga")),
						4, argtypes, false);
	fmgr_info(fn, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, 4, InvalidOid, NULL, NULL);
	for (int i = 0; i < 2; i++)
	{
		inner->args[i].value = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		inner->args[i].isnull = PG_ARGISNULL(i);
	}
	inner->args[2].value = ObjectIdGetDatum(GetUserId());
	inner->args[2].isnull = false;
	inner->args[3].value = CStringGetTextDatum(namespace_search_path);
	inner->args[3].isnull = false;

	EsBecomeOwner(&sw);
	(void) FunctionCallInvoke(inner);
	EsRestoreUser(&sw);
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
	level = es_push_search_path(TextDatumGetCString(PG_GETARG_DATUM(1)));
	result = to_regprocedure(inner);
	AtEOXact_GUC(false, level);
	if (inner->isnull)
		PG_RETURN_NULL();
	return result;
}

/*
 * SQL: event_store._saga_call(fn regprocedure, run_as regrole, saga_id uuid,
 *		data jsonb) RETURNS jsonb
 *
 * Call a step function (saga_id uuid, data jsonb) RETURNS jsonb as the role
 * that defined the saga, with the search_path the session started with (its
 * reset value: in the worker, the database's default), not the
 * orchestrator's pinned one.
 */
Datum
es_saga_call(PG_FUNCTION_ARGS)
{
	Oid			fn;
	Oid			role;
	FmgrInfo	flinfo;
	EsUserSwitch sw;
	int			level;
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

	EsBecomeRole(&sw, role);
	level = es_push_search_path(GetConfigOptionResetString("search_path"));
	result = FunctionCallInvoke(inner);
	AtEOXact_GUC(false, level);
	EsRestoreUser(&sw);
	if (inner->isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
