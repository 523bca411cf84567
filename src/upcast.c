/*
 * upcast.c
 *	  Upcasters: user functions that turn an event of an old schema version
 *	  into the next one, applied on every read path.
 *
 * The registry (event_store.upcasters) is cached per backend in a hash keyed
 * by (event_type, from_schema_version) with the upcaster compiled (below),
 * so reads do no catalogue query per event.  register_upcaster and
 * drop_upcaster send a relcache invalidation for the registry table; every
 * backend (the registering one at its next command) then rebuilds its cache.
 *
 * An upcaster is compiled, when the cache is loaded, into an expression of
 * its two arguments that the planner simplifies: a LANGUAGE sql upcaster
 * whose body is one expression (SELECT data || '{"v": 2}') is inlined, as
 * PostgreSQL inlines such functions in queries, so applying it costs the
 * expression alone, not a function call per event.  Any other upcaster is
 * called through the same expression (one function call).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/params.h"
#include "nodes/pg_list.h"
#include "optimizer/optimizer.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

#include "api.h"
#include "callback.h"
#include "catalog.h"
#include "registry.h"
#include "roles.h"
#include "upcast.h"

PG_FUNCTION_INFO_V1(es_register_upcaster);
PG_FUNCTION_INFO_V1(es_drop_upcaster);

typedef struct EsUpcaster
{
	EsTextKey	key;			/* the event type (in full_type), the schema version */
	text	   *full_type;		/* the event type it applies to */
	Oid			fn;				/* the upcaster function */
	text	   *to_type;		/* NULL: keep the type */
	bool		missing;		/* the function was dropped */
	Oid			owner;			/* the role that registered it: runs as it */
	const char *search_path;	/* and with this search_path (pinned) */
	ExprState  *expr;			/* upcaster($1 data, $2 metadata), simplified */
	struct EsUpcaster *then;	/* the upcaster of the result, resolved at load */
} EsUpcaster;

static EsRegistry upcast_registry = {"upcasters", true};
static ParamListInfo upcast_params = NULL;	/* $1 data, $2 metadata */
static ExprContext *upcast_econtext = NULL;
static HTAB *upcast_hash = NULL;
static MemoryContext upcast_cxt = NULL;
static long upcast_count = 0;

static EsUpcaster *es_upcast_find(text *type, int32 schema_version);

/*
 * The expression fn($1, $2) over jsonb parameters, through the planner's
 * simplification (which inlines a simple LANGUAGE sql function), ready to
 * evaluate; in the cache's memory context, which is current.
 */
static ExprState *
es_upcast_compile(Oid fn)
{
	List	   *args = NIL;
	Expr	   *expr;

	for (int i = 1; i <= 2; i++)
	{
		Param	   *param = makeNode(Param);

		param->paramkind = PARAM_EXTERN;
		param->paramid = i;
		param->paramtype = JSONBOID;
		param->paramtypmod = -1;
		param->paramcollid = InvalidOid;
		param->location = -1;
		args = lappend(args, param);
	}
	expr = (Expr *) makeFuncExpr(fn, JSONBOID, args, InvalidOid, InvalidOid,
								 COERCE_EXPLICIT_CALL);
	expr = expression_planner(expr);
	return ExecInitExprWithParams(expr, upcast_params);
}

/* (Re)build the cache from event_store.upcasters */
static void
es_upcast_load(void)
{
	MemoryContext old;
	EsUserSwitch sw;
	int			rc;

	upcast_cxt = EsRegistryNewContext(&upcast_registry);
	if (upcast_params == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		upcast_params = makeParamList(2);
		for (int i = 0; i < 2; i++)
		{
			upcast_params->params[i].ptype = JSONBOID;
			upcast_params->params[i].pflags = PARAM_FLAG_CONST;
			upcast_params->params[i].isnull = false;
		}
		upcast_params->numParams = 2;
		upcast_econtext = CreateStandaloneExprContext();
		upcast_econtext->ecxt_param_list_info = upcast_params;
		MemoryContextSwitchTo(oldcxt);
	}
	upcast_hash = EsTextHashCreate("event_store upcasters", sizeof(EsUpcaster), upcast_cxt);
	upcast_count = 0;

	EsSpiConnect(&sw);
	rc = SPI_execute(psprintf("SELECT event_type, from_schema_version, upcaster::pg_catalog.oid, "
							  "to_event_type, %s FROM event_store.upcasters", EsOwnerColumns()),
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.upcasters failed: %s", SPI_result_code_string(rc));

	old = MemoryContextSwitchTo(upcast_cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *type = DatumGetTextPCopy(SPI_getbinval(tup, desc, 1, &isnull));
		int32		from = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		Oid			fn = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		Datum		to = SPI_getbinval(tup, desc, 4, &isnull);
		bool		to_null = isnull;
		Oid			owner;
		const char *search_path;
		EsUpcaster *entry;
		bool		found;

		EsRegistrantOf(tup, desc, 5, &owner, &search_path);
		/* (type, version) is unique (the table's primary key) */
		entry = EsTextHashEnter(upcast_hash, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type), from,
								&found);
		entry->then = NULL;
		entry->full_type = type;
		entry->missing = !EsFunctionExists(fn);
		entry->owner = owner;
		entry->search_path = search_path;
		entry->expr = NULL;
		entry->fn = fn;
		if (!entry->missing)
		{
			EsUserSwitch csw;

			EsCheckCallbackOwner(fn, owner, "an upcaster");
			/* inlining parses the body: as its registrant, in its search_path */
			EsBecomeRole(&csw, owner, search_path);
			entry->expr = es_upcast_compile(fn);
			EsRestoreUser(&csw);
		}
		entry->to_type = to_null ? NULL : DatumGetTextPCopy(to);
		upcast_count++;
	}
	MemoryContextSwitchTo(old);
	EsSpiFinish(&sw);

	/* resolve the chains once: which upcaster applies to each one's result */
	{
		HASH_SEQ_STATUS seq;
		EsUpcaster *entry;

		hash_seq_init(&seq, upcast_hash);
		while ((entry = hash_seq_search(&seq)) != NULL)
			entry->then = es_upcast_find(entry->to_type ? entry->to_type : entry->full_type,
										 entry->key.num + 1);
	}
}

/* Are there any upcasters at all?  Loads the cache if needed. */
bool
EsUpcastersExist(void)
{
	EsRegistryEnsure(&upcast_registry, es_upcast_load);
	return upcast_count > 0;
}

/* The upcaster of (type, version), or NULL */
static EsUpcaster *
es_upcast_find(text *type, int32 schema_version)
{
	return EsTextHashFind(upcast_hash, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type),
						  schema_version);
}

/*
 * Evaluate an upcaster's expression for (data, metadata) as the role that
 * registered it; the result is allocated in the current memory context.
 * The cache stays alive during the evaluation, like EsRegistryCall, and the
 * parameters of an evaluation in progress (an upcaster that reads events)
 * are put back afterwards.
 */
static Datum
es_upcast_eval(EsUpcaster *up, Datum data, Datum metadata, bool *isnull)
{
	EsUserSwitch sw;
	Datum		result;
	Datum		outer_data = upcast_params->params[0].value;
	Datum		outer_metadata = upcast_params->params[1].value;

	EsBecomeRole(&sw, up->owner, up->search_path);
	upcast_registry.depth++;
	upcast_params->params[0].value = data;
	upcast_params->params[1].value = metadata;
	PG_TRY();
	{
		result = ExecEvalExpr(up->expr, upcast_econtext, isnull);
	}
	PG_FINALLY();
	{
		upcast_registry.depth--;
		upcast_params->params[0].value = outer_data;
		upcast_params->params[1].value = outer_metadata;
	}
	PG_END_TRY();
	EsRestoreUser(&sw);
	return result;
}

/*
 * Apply the chain of upcasters to one event row in place (values/isnull in
 * event_store.event order).  New values are allocated in the current memory
 * context.  Returns true if anything changed.
 */
bool
EsUpcastRow(Datum *values, bool *isnull)
{
	bool		changed = false;

	if (!EsUpcastersExist())
		return false;

	/* one lookup; the rest of the chain was resolved when the cache was loaded */
	for (EsUpcaster *up = es_upcast_find(DatumGetTextPP(values[Anum_es_event_type - 1]),
										 DatumGetInt32(values[Anum_es_schema_version - 1]));
		 up != NULL; up = up->then)
	{
		text	   *type = DatumGetTextPP(values[Anum_es_event_type - 1]);
		int32		sv = DatumGetInt32(values[Anum_es_schema_version - 1]);
		Datum		result;
		bool		isnull;

		if (up->missing)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("the upcaster of event type \"%s\" from schema version %d no longer exists",
							text_to_cstring(type), sv),
					 errdetail("Function with OID %u was dropped.", up->fn),
					 errhint("Register another upcaster, or remove this one with event_store.drop_upcaster().")));

		result = es_upcast_eval(up, values[Anum_es_data - 1], values[Anum_es_metadata - 1],
								&isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("upcaster %s returned null for event type \"%s\" version %d",
							format_procedure(up->fn), text_to_cstring(type), sv),
					 errhint("An upcaster must return the event's new data.")));
		values[Anum_es_data - 1] = result;
		values[Anum_es_schema_version - 1] = Int32GetDatum(sv + 1);
		if (up->to_type != NULL)
			values[Anum_es_event_type - 1] = PointerGetDatum(up->to_type);
		changed = true;
	}
	return changed;
}

/* "the upcaster of event type "T" from schema version N", for messages */
static char *
es_upcaster_name(text *event_type, int32 from)
{
	return psprintf("the upcaster of event type \"%s\" from schema version %d",
					text_to_cstring(event_type), from);
}

/*
 * Lock the registration of the upcaster of (values[0] event type, values[1]
 * version) and check that the caller may change it; false if there is none
 */
static bool
es_upcaster_lock(EsUserSwitch *sw, Datum *values, const char *what)
{
	Oid			types[2] = {TEXTOID, INT4OID};

	return EsLockRegistration(sw, psprintf("SELECT %s FROM event_store.upcasters "
										   "WHERE event_type OPERATOR(pg_catalog.=) $1 "
										   "AND from_schema_version OPERATOR(pg_catalog.=) $2 "
										   "FOR UPDATE", EsOwnerColumns()),
							  2, types, values, what);
}

/*
 * SQL: event_store.register_upcaster(event_type text, from_schema_version int,
 *		upcaster regprocedure, to_event_type text DEFAULT NULL)
 */
Datum
es_register_upcaster(PG_FUNCTION_ARGS)
{
	text	   *event_type = EsGetRequiredText(fcinfo, 0, "event_type");
	int32		from;
	Oid			fn;
	Oid			argtypes[2] = {JSONBOID, JSONBOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			types[6] = {TEXTOID, INT4OID, REGPROCEDUREOID, TEXTOID, OIDOID, TEXTOID};
	EsUserSwitch sw;
	EsRegistrantInsert reg;
	char	   *what;
	int			rc;

	EsCheckWritable("register_upcaster()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("from_schema_version must not be null")));
	from = PG_GETARG_INT32(1);
	if (from < 1 || from == PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("from_schema_version must be a positive integer below %d", PG_INT32_MAX),
				 errdetail("Got %d.", from)));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("upcaster must not be null")));
	fn = PG_GETARG_OID(2);
	EsCheckCallbackSignature(fn, "an upcaster", 2, argtypes, JSONBOID,
							 "a function (data jsonb, metadata jsonb) RETURNS jsonb");
	if (!PG_ARGISNULL(3))
		(void) EsGetRequiredText(fcinfo, 3, "to_event_type");

	values[0] = PointerGetDatum(event_type);
	values[1] = Int32GetDatum(from);
	values[2] = ObjectIdGetDatum(fn);
	values[3] = PG_ARGISNULL(3) ? (Datum) 0 : PG_GETARG_DATUM(3);
	nulls[3] = PG_ARGISNULL(3) ? 'n' : ' ';
	values[4] = ObjectIdGetDatum(GetUserId());
	values[5] = CStringGetTextDatum(EsRegistrationSearchPath());
	what = es_upcaster_name(event_type, from);

	EsSpiConnect(&sw);
	(void) es_upcaster_lock(&sw, values, what);
	EsRegistrantSql(5, &reg);
	rc = SPI_execute_with_args(psprintf("INSERT INTO event_store.upcasters "
										"(event_type, from_schema_version, upcaster, to_event_type%s) "
										"VALUES ($1, $2, $3, $4%s) "
										"ON CONFLICT (event_type, from_schema_version) DO UPDATE "
										"SET upcaster = EXCLUDED.upcaster, "
										"to_event_type = EXCLUDED.to_event_type%s",
										reg.columns, reg.params, reg.updates),
							   4 + reg.nparams, types, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "registering the upcaster failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
	EsRegistryChanged(&upcast_registry);
	PG_RETURN_VOID();
}

/* SQL: event_store.drop_upcaster(event_type text, from_schema_version int) */
Datum
es_drop_upcaster(PG_FUNCTION_ARGS)
{
	text	   *event_type = EsGetRequiredText(fcinfo, 0, "event_type");
	int32		from;
	Datum		values[2];
	Oid			types[2] = {TEXTOID, INT4OID};
	EsUserSwitch sw;
	int			rc;

	EsCheckWritable("drop_upcaster()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("from_schema_version must not be null")));
	from = PG_GETARG_INT32(1);
	values[0] = PointerGetDatum(event_type);
	values[1] = Int32GetDatum(from);

	EsSpiConnect(&sw);
	(void) es_upcaster_lock(&sw, values, es_upcaster_name(event_type, from));
	rc = SPI_execute_with_args("DELETE FROM event_store.upcasters "
							   "WHERE event_type OPERATOR(pg_catalog.=) $1 "
							   "AND from_schema_version OPERATOR(pg_catalog.=) $2",
							   2, types, values, NULL, false, 0);
	if (rc != SPI_OK_DELETE)
		elog(ERROR, "dropping the upcaster failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("upcaster for event type \"%s\" from schema version %d does not exist",
						text_to_cstring(event_type), from)));
	EsSpiFinish(&sw);
	EsRegistryChanged(&upcast_registry);
	PG_RETURN_VOID();
}
