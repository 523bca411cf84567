/*
 * callback.c
 *	  User callbacks (upcasters, reducers, projection handlers and resets,
 *	  saga step functions): the checks made when one is registered and
 *	  whenever a registry is loaded, what a registration records about its
 *	  registrant, who may change it, and the call itself.
 *
 *	  A callback runs as the role that registered it, with the search_path
 *	  in force when it was registered, pg_temp placed last (roles.c,
 *	  EsBecomeRole).  Registering one requires EXECUTE on it, and its owner
 *	  must have the registering role's privileges: otherwise whoever owns
 *	  the function could change what it does and have it run with more
 *	  rights.  A registration is changed (replaced, dropped, paused...) only
 *	  by a role with the privileges of the role that made it, or of the
 *	  extension owner (EsCheckMayChange).
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "common/pg_prng.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "api.h"
#include "callback.h"
#include "catalog.h"
#include "registry.h"
#include "roles.h"

/* The role a callback runs as, from its registry's owner column */
Oid
EsRegistrant(Oid owner)
{
	return OidIsValid(owner) ? owner : EsExtensionOwner();
}

/*
 * May fn be registered by role as a callback (what: "an upcaster", ...)?
 * It needs EXECUTE on it, and the function's owner must have role's
 * privileges.  Also checked whenever a registry is loaded (role is then
 * the one that registered it): ownership may have changed since.
 */
void
EsCheckCallbackOwner(Oid fn, Oid role, const char *what)
{
	HeapTuple	tup;
	Oid			proowner;

	tup = EsSearchProc(fn);
	proowner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);

	if (GetUserNameFromId(role, true) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u that registered %s as %s no longer exists",
						role, format_procedure(fn), what),
				 errhint("Register the function again.")));
	if (pg_proc_aclcheck(fn, role, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(fn)),
				 errdetail("Role \"%s\" needs EXECUTE on a function to use it as %s.",
						   EsRoleName(role), what)));
	if (!has_privs_of_role(proowner, role))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("function %s cannot be used as %s by role \"%s\"",
						format_procedure(fn), what, EsRoleName(role)),
				 errdetail("The function is owned by role \"%s\", which lacks the privileges of role \"%s\"; "
						   "callbacks run as the role that registers them, and the owner could change what it does.",
						   EsRoleName(proowner), EsRoleName(role)),
				 errhint("Register it as role \"%s\" (SET ROLE), or have a role with the privileges of \"%s\" own it.",
						 EsRoleName(proowner), EsRoleName(role))));
}

/*
 * Call a registry function as role with its pinned search_path:
 * EsRegistryCall inside EsBecomeRole / EsRestoreUser.
 */
Datum
EsCallAs(EsRegistry *reg, FunctionCallInfo fcinfo, Oid role, const char *search_path)
{
	EsUserSwitch sw;
	Datum		result;

	EsBecomeRole(&sw, role, search_path);
	result = reg ? EsRegistryCall(reg, fcinfo) : FunctionCallInvoke(fcinfo);
	EsRestoreUser(&sw);
	return result;
}

PG_FUNCTION_INFO_V1(es_check_callback);

/*
 * SQL: event_store._check_callback(fn regprocedure, registrant regrole,
 * what text) -- the same checks for the saga engine's definitions
 */
Datum
es_check_callback(PG_FUNCTION_ARGS)
{
	EsRequireArg(fcinfo, 0, "fn");
	EsRequireArg(fcinfo, 1, "registrant");
	EsRequireArg(fcinfo, 2, "what");
	EsCheckCallbackOwner(PG_GETARG_OID(0), PG_GETARG_OID(1),
						 text_to_cstring(PG_GETARG_TEXT_PP(2)));
	PG_RETURN_VOID();
}

/* The pg_proc row of a function given by OID (release it); error if none */
HeapTuple
EsSearchProc(Oid fn)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));

	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", fn)));
	return tup;
}

/*
 * Check that a function exists with the argument types and result type a
 * callback needs; raise a clear error otherwise.
 */
void
EsCheckCallbackSignature(Oid fn, const char *role, int nargs, const Oid *argtypes,
						 Oid rettype, const char *expected)
{
	HeapTuple	tup = EsSearchProc(fn);
	Form_pg_proc proc;
	bool		ok;

	proc = (Form_pg_proc) GETSTRUCT(tup);
	ok = proc->pronargs == nargs && proc->prorettype == rettype && !proc->proretset &&
		proc->prokind == PROKIND_FUNCTION;
	for (int i = 0; ok && i < nargs; i++)
		ok = proc->proargtypes.values[i] == argtypes[i];
	ReleaseSysCache(tup);
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s cannot be used as %s", format_procedure(fn), role),
				 errdetail("It must be %s.", expected)));
	/* the current user registers it, and it will run as that user */
	EsCheckCallbackOwner(fn, GetUserId(), role);
}

/*
 * The pinned search_path of callbacks whose registration recorded none (a
 * schema from before 0.3.0, until ALTER EXTENSION event_store UPDATE):
 * PostgreSQL's default search_path, which no session can change.  The
 * update records the same for the registrations it finds.
 */
#define ES_DEFAULT_CALLBACK_PATH	"\"$user\", public, pg_temp"

/* The select-list expression of a registry's owner and search_path columns */
const char *
EsOwnerColumns(void)
{
	if (EsGetCatalog()->schema_version >= ES_SCHEMA_0_3)
		return "owner::pg_catalog.oid, search_path";
	return EsGetCatalog()->schema_version >= ES_SCHEMA_0_2 ? "owner::pg_catalog.oid, NULL::pg_catalog.text" :
		"0::pg_catalog.oid, NULL::pg_catalog.text";
}

/*
 * The role a callback runs as and its pinned search_path (palloc'd in the
 * current memory context), from the two columns of EsOwnerColumns at attno
 */
void
EsRegistrantOf(HeapTuple tup, TupleDesc desc, int attno, Oid *role,
			   const char **search_path)
{
	bool		isnull;
	Datum		d;

	*role = EsRegistrant(DatumGetObjectId(SPI_getbinval(tup, desc, attno, &isnull)));
	d = SPI_getbinval(tup, desc, attno + 1, &isnull);
	*search_path = isnull ? pstrdup(ES_DEFAULT_CALLBACK_PATH) : TextDatumGetCString(d);
}

/*
 * The SQL of the registrant columns a registration's INSERT writes, as far
 * as the installed schema has them: the owner from parameter $param (a role
 * OID), then the search_path from $param + 1.  *nparams: how many of the
 * two parameters the statement uses.
 */
void
EsRegistrantSql(int param, EsRegistrantInsert *sql)
{
	if (EsGetCatalog()->schema_version >= ES_SCHEMA_0_3)
	{
		sql->columns = ", owner, search_path";
		sql->params = psprintf(", $%d::pg_catalog.regrole, $%d", param, param + 1);
		sql->updates = ", owner = EXCLUDED.owner, search_path = EXCLUDED.search_path";
		sql->nparams = 2;
	}
	else if (EsGetCatalog()->schema_version >= ES_SCHEMA_0_2)
	{
		sql->columns = ", owner";
		sql->params = psprintf(", $%d::pg_catalog.regrole", param);
		sql->updates = ", owner = EXCLUDED.owner";
		sql->nparams = 1;
	}
	else
	{
		sql->columns = sql->params = sql->updates = "";
		sql->nparams = 0;
	}
}

/*
 * What a registration made now records as its callbacks' search_path: the
 * current one, pinned
 */
char *
EsRegistrationSearchPath(void)
{
	return EsPinSearchPath(namespace_search_path);
}

/*
 * May the user of before EsSpiConnect (sw) change the registration made by
 * owner?  It needs the privileges of owner or of the extension owner;
 * otherwise 42501, naming the owner.  what: "projection \"p\"", ...
 */
void
EsCheckMayChange(EsUserSwitch *sw, Oid owner, const char *what)
{
	Oid			user = sw->save_userid;

	if (has_privs_of_role(user, owner) || has_privs_of_role(user, EsExtensionOwner()))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("must be a member of role \"%s\" to change %s", EsRoleName(owner), what),
			 errdetail("Role \"%s\" registered %s; only its members and the extension owner may replace, drop, pause, resume or rebuild it.",
					   EsRoleName(owner), what)));
}

/*
 * Lock the row of a registry that sql (SELECT owner ... FOR UPDATE, run as
 * the extension owner inside EsSpiConnect) finds, and check that the user
 * of before EsSpiConnect may change it (EsCheckMayChange).  Returns whether
 * there is such a row.  In a schema from before owners, the extension owner
 * made every registration.
 */
bool
EsLockRegistration(EsUserSwitch *sw, const char *sql, int nargs, Oid *types,
				   Datum *values, const char *what)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	bool		isnull;
	Oid			owner;

	if (rc != SPI_OK_SELECT)
		elog(ERROR, "looking up %s failed: %s", what, SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return false;
	owner = EsRegistrant(DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1, &isnull)));
	EsCheckMayChange(sw, owner, what);
	return true;
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

PG_FUNCTION_INFO_V1(es_backoff);

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
