/*
 * security.c
 *	  Who may do what.
 *
 *	  - The extension's own tables are written only through its functions.
 *	    C code that reads or writes them through SPI does so as the
 *	    extension's owner (EsBecomeOwner), with every name in its SQL text
 *	    schema-qualified, so the caller's search_path cannot redirect it.
 *	  - User callbacks (upcasters, reducers, projection handlers and resets,
 *	    saga step functions) run as the role that registered them, with the
 *	    search_path in force when it registered them, pg_temp placed last
 *	    (EsBecomeRole): nothing of the calling session -- its search_path,
 *	    its temporary relations, types, functions or operators, its settings
 *	    such as event_store.allow_purge -- takes part in a callback, and
 *	    every setting a callback changes is rolled back when it returns.
 *	    Registering one requires EXECUTE on it, and its owner must have the
 *	    registering role's privileges: otherwise whoever owns the function
 *	    could change what it does and have it run with more rights.
 *	  - A registration is changed (replaced, dropped, paused...) only by a
 *	    role with the privileges of the role that made it, or of the
 *	    extension owner (EsCheckMayChange).
 *	  - Category grants (event_store.category_grants): once a category has
 *	    one, only holders of "append" may append to its streams and only
 *	    holders of "read" may read them (the extension owner always may).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "event_store.h"

PG_FUNCTION_INFO_V1(es_grant_category);
PG_FUNCTION_INFO_V1(es_revoke_category);
PG_FUNCTION_INFO_V1(es_may_read);
PG_FUNCTION_INFO_V1(es_check_callback);

/* ------------------------------------------------------------------------
 * The extension owner and switching users
 * ------------------------------------------------------------------------ */

static Oid	es_owner = InvalidOid;
static Oid	es_owner_ext = InvalidOid;	/* the pg_extension row it came from */

/* The role that owns the extension (cached per backend) */
Oid
EsExtensionOwner(void)
{
	Oid			extoid = EsGetCatalog()->extension_oid;
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (extoid == es_owner_ext && OidIsValid(es_owner))
		return es_owner;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(extoid));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "could not find extension event_store (OID %u)", extoid);
	es_owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	es_owner_ext = extoid;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return es_owner;
}

/*
 * Act as the extension's owner until EsRestoreUser: for SPI on the
 * extension's own tables.  The caller's search_path stays in effect, so the
 * SQL run in between must qualify every name.
 */
void
EsBecomeOwner(EsUserSwitch *sw)
{
	GetUserIdAndSecContext(&sw->save_userid, &sw->save_sec_context);
	sw->guc_level = -1;
	sw->callback = false;
	SetUserIdAndSecContext(EsExtensionOwner(),
						   sw->save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * Callback scopes: a loop that runs callbacks per event (a scan, the inline
 * projections of an append) opens one GUC nest level for all of them, and
 * rolls it back when it ends, instead of one per call (closing a nest level
 * in a transaction that changed any setting visits every setting: too slow
 * per event).  Inside a scope, each callback still runs with its own
 * search_path and without event_store.allow_purge (EsBecomeRole sets them
 * again before every call when they differ); what a callback changes
 * otherwise lasts until the scope ends, never beyond.
 */
#define ES_MAX_SCOPES 32
static int	es_callback_depth = 0;	/* EsBecomeRole calls not yet restored */
static int	es_nscopes = 0;		/* open scopes */
static int	es_scope_depth[ES_MAX_SCOPES];	/* es_callback_depth at their start */

/*
 * Is a callback about to run directly in the innermost scope's loop?  Not
 * when it is called by another callback that runs there (a handler that
 * folds an aggregate): it then gets a nest level of its own, so that what
 * it sets ends with it and the outer callback goes on with its own
 * settings.  (Depths are compared, never trusted as absolute: an error
 * caught by a subtransaction may leave es_callback_depth too high.)
 */
static bool
es_in_scope_loop(void)
{
	return es_nscopes > 0 && es_nscopes <= ES_MAX_SCOPES &&
		es_scope_depth[es_nscopes - 1] == es_callback_depth;
}

/* Open a callback scope; returns its GUC nest level for EsCallbackScopeEnd */
int
EsCallbackScopeBegin(void)
{
	if (es_nscopes < ES_MAX_SCOPES)
		es_scope_depth[es_nscopes] = es_callback_depth;
	es_nscopes++;
	return NewGUCNestLevel();
}

/* Close a callback scope: every setting changed in it is rolled back */
void
EsCallbackScopeEnd(int level)
{
	AtEOXact_GUC(false, level);
	es_nscopes--;
}

/*
 * Forget a callback scope left by an error (which is being rethrown: the
 * (sub)transaction abort rolls its settings back, and the callbacks in it
 * are gone)
 */
void
EsCallbackScopeAbandon(void)
{
	es_nscopes--;
	if (es_nscopes < ES_MAX_SCOPES)
		es_callback_depth = es_scope_depth[es_nscopes];
}

/* How many callback scopes are open (for EsCallbackScopeUnwind) */
int
EsCallbackScopeDepth(void)
{
	return es_nscopes;
}

/*
 * Forget the callback scopes an error left open beyond the first depth
 * ones, when the error was caught (by a subtransaction, whose abort rolled
 * their settings back) rather than rethrown
 */
void
EsCallbackScopeUnwind(int depth)
{
	while (es_nscopes > depth)
		EsCallbackScopeAbandon();
}

/*
 * Does the session's search_path resolve every name as the pinned one
 * does?  It does when it is the same text; and, while this backend has no
 * temporary schema (so pg_temp can hold nothing), when it is the pinned
 * path without its final pg_temp (the usual case: a session with
 * PostgreSQL's default search_path calling callbacks registered under it).
 * "$user" is the same in both: the callback's role.
 */
static bool
es_search_path_in_effect(const char *pinned)
{
	const char *current = namespace_search_path;
	size_t		len = strlen(pinned);
	Oid			temp_nsp;
	Oid			temp_toast_nsp;

	if (current == NULL)
		return false;
	if (strcmp(current, pinned) == 0)
		return true;
	GetTempNamespaceState(&temp_nsp, &temp_toast_nsp);
	if (OidIsValid(temp_nsp))
		return false;
	/* pinned is "<path>, pg_temp", or "pg_temp" for an empty path */
	if (len == 7)
		return current[0] == '\0';
	return len > 9 && strncmp(current, pinned, len - 9) == 0 && current[len - 9] == '\0';
}

/*
 * Run a callback registered by role with search_path (pinned: see
 * EsPinSearchPath) until EsRestoreUser.  The user changes unless it is role
 * already, and then the callback runs as a restricted operation; the
 * search_path is set to the pinned one and event_store.allow_purge is off,
 * whoever calls; every setting changed in between (by us or by the
 * callback, SET or SET LOCAL) is undone by EsRestoreUser, or inside a
 * callback scope when the scope ends.  A setting that already has the
 * wanted value is left alone.
 */
void
EsBecomeRole(EsUserSwitch *sw, Oid role, const char *search_path)
{
	GetUserIdAndSecContext(&sw->save_userid, &sw->save_sec_context);
	sw->guc_level = es_in_scope_loop() ? -1 : NewGUCNestLevel();
	sw->callback = true;
	es_callback_depth++;
	if (es_allow_purge)
		(void) set_config_option("event_store.allow_purge", "off", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (!es_search_path_in_effect(search_path))
		(void) set_config_option("search_path", search_path, PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	if (role != sw->save_userid)
		SetUserIdAndSecContext(role, sw->save_sec_context |
							   SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
}

/*
 * The search_path callbacks registered under path run with: path without
 * any temporary schema, then pg_temp, explicitly last (so that no temporary
 * relation or type of whichever session calls is found before another; as
 * ever, functions and operators are never looked up in pg_temp).  Without
 * an explicit pg_catalog, PostgreSQL searches it first.  Palloc'd.
 */
char *
EsPinSearchPath(const char *path)
{
	char	   *raw = pstrdup(path);
	List	   *names;
	ListCell   *lc;
	StringInfoData buf;

	if (!SplitIdentifierString(raw, ',', &names))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid search_path \"%s\"", path)));
	initStringInfo(&buf);
	foreach(lc, names)
	{
		const char *name = (const char *) lfirst(lc);

		if (strcmp(name, "pg_temp") == 0 || strncmp(name, "pg_temp_", 8) == 0 ||
			strncmp(name, "pg_toast_temp_", 14) == 0)
			continue;
		appendStringInfo(&buf, "%s, ", quote_identifier(name));
	}
	appendStringInfoString(&buf, "pg_temp");
	return buf.data;
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
	if (EsGetCatalog()->registries_have_paths)
		return "owner::pg_catalog.oid, search_path";
	return EsSchemaHasOwners() ? "owner::pg_catalog.oid, NULL::pg_catalog.text" :
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
	if (EsGetCatalog()->registries_have_paths)
	{
		sql->columns = ", owner, search_path";
		sql->params = psprintf(", $%d::pg_catalog.regrole, $%d", param, param + 1);
		sql->updates = ", owner = EXCLUDED.owner, search_path = EXCLUDED.search_path";
		sql->nparams = 2;
	}
	else if (EsSchemaHasOwners())
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
 * Back to the user of before EsBecomeOwner / EsBecomeRole (not on error).
 * Settings the callback changed are rolled back, SET as well as SET LOCAL.
 */
void
EsRestoreUser(EsUserSwitch *sw)
{
	if (sw->guc_level >= 0)
		AtEOXact_GUC(false, sw->guc_level);
	if (sw->callback)
		es_callback_depth--;
	SetUserIdAndSecContext(sw->save_userid, sw->save_sec_context);
}

/* SPI_connect, acting as the extension owner until EsSpiFinish */
void
EsSpiConnect(EsUserSwitch *sw)
{
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	EsBecomeOwner(sw);
}

void
EsSpiFinish(EsUserSwitch *sw)
{
	EsRestoreUser(sw);
	SPI_finish();
}

/* The name of a role, for messages (never fails) */
const char *
EsRoleName(Oid role)
{
	char	   *name = GetUserNameFromId(role, true);

	return name ? name : psprintf("with OID %u", role);
}

/* ------------------------------------------------------------------------
 * Callbacks
 * ------------------------------------------------------------------------ */

/*
 * Does the installed schema record who registered callbacks?  Version
 * 0.1.0 did not (nor had category grants); the library serves its schema
 * until ALTER EXTENSION event_store UPDATE, callbacks then running as the
 * extension owner.
 */
bool
EsSchemaHasOwners(void)
{
	return OidIsValid(EsGetCatalog()->grants_relid);
}

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

/* ------------------------------------------------------------------------
 * Category grants
 * ------------------------------------------------------------------------ */

typedef struct EsGrant
{
	Oid			grantee;
	int			privs;			/* ES_PRIV_* bits */
} EsGrant;

typedef struct EsCategoryGrants
{
	text	   *category;
	int			ngrants;
	EsGrant    *grants;
} EsCategoryGrants;

static EsRegistry grant_registry = {"category_grants"};
static EsCategoryGrants *grant_cats = NULL;
static int	grant_ncats = 0;

static void
es_grants_load(void)
{
	MemoryContext cxt = EsRegistryNewContext(&grant_registry);
	MemoryContext old;
	EsUserSwitch sw;
	EsGrant    *all = NULL;
	int			rc;

	grant_cats = NULL;
	grant_ncats = 0;
	if (!EsSchemaHasOwners())
		return;					/* a schema from before category grants */
	EsSpiConnect(&sw);
	rc = SPI_execute("SELECT category, grantee::pg_catalog.oid, "
					 "pg_catalog.bool_or(privilege OPERATOR(pg_catalog.=) 'append'), "
					 "pg_catalog.bool_or(privilege OPERATOR(pg_catalog.=) 'read') "
					 "FROM event_store.category_grants "
					 "GROUP BY category, grantee ORDER BY category", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.category_grants failed: %s", SPI_result_code_string(rc));

	old = MemoryContextSwitchTo(cxt);
	if (SPI_processed > 0)
	{
		/* rows come ordered by category: each one's grants are a run of all */
		grant_cats = palloc0(sizeof(EsCategoryGrants) * SPI_processed);
		all = palloc(sizeof(EsGrant) * SPI_processed);
	}
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		text	   *cat = DatumGetTextPP(SPI_getbinval(tup, desc, 1, &isnull));
		EsCategoryGrants *c;
		EsGrant    *g;

		if (grant_ncats == 0 ||
			!EsTextIs(grant_cats[grant_ncats - 1].category, VARDATA_ANY(cat), VARSIZE_ANY_EXHDR(cat)))
		{
			c = &grant_cats[grant_ncats++];
			c->category = DatumGetTextPCopy(PointerGetDatum(cat));
			c->grants = &all[i];
			c->ngrants = 0;
		}
		c = &grant_cats[grant_ncats - 1];
		g = &c->grants[c->ngrants++];
		g->grantee = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		g->privs = (DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)) ? ES_PRIV_APPEND : 0) |
			(DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)) ? ES_PRIV_READ : 0);
	}
	MemoryContextSwitchTo(old);
	EsSpiFinish(&sw);
}

/* Does any category have a grant?  (Cheap: the usual answer is no.) */
bool
EsCategoryGrantsExist(void)
{
	EsRegistryEnsure(&grant_registry, es_grants_load);
	return grant_ncats > 0;
}

/* The grants of a category, or NULL when it has none (it is open) */
static EsCategoryGrants *
es_find_category(const char *cat, int len)
{
	for (int i = 0; i < grant_ncats; i++)
	{
		text	   *c = grant_cats[i].category;

		if (EsTextIs(c, cat, len))
			return &grant_cats[i];
	}
	return NULL;
}

/* May role do priv on a category with these grants? */
static bool
es_role_may(Oid role, const EsCategoryGrants *c, int priv)
{
	if (c == NULL)
		return true;
	if (has_privs_of_role(role, EsExtensionOwner()))
		return true;
	for (int i = 0; i < c->ngrants; i++)
		if ((c->grants[i].privs & priv) && has_privs_of_role(role, c->grants[i].grantee))
			return true;
	return false;
}

static const char *
es_priv_name(int priv)
{
	return priv == ES_PRIV_APPEND ? "append" : "read";
}

static void
es_deny(Oid role, const char *cat, int len, int priv)
{
	char	   *category = pnstrdup(cat, len);

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("role \"%s\" may not %s category \"%s\"",
					EsRoleName(role), priv == ES_PRIV_APPEND ? "append to" : "read",
					category),
			 errdetail("Category \"%s\" has grants, and role \"%s\" holds none for \"%s\".",
					   category, EsRoleName(role), es_priv_name(priv)),
			 errhint("The extension owner can grant it: SELECT event_store.grant_category('%s', '%s', '{%s}').",
					 EsRoleName(role), category, es_priv_name(priv))));
}

/* Does the category (len bytes at category) have grants? */
bool
EsCategoryHasGrants(const char *category, int len)
{
	return EsCategoryGrantsExist() && es_find_category(category, len) != NULL;
}

/* The categories that have grants (*categories palloc'd); how many */
int
EsGrantedCategories(text ***categories)
{
	EsCategoryGrantsExist();
	*categories = palloc(sizeof(text *) * Max(grant_ncats, 1));
	for (int i = 0; i < grant_ncats; i++)
		(*categories)[i] = DatumGetTextPCopy(PointerGetDatum(grant_cats[i].category));
	return grant_ncats;
}

/*
 * May role do priv on the stream's category?  (A category is given as a
 * stream id too: without "-", it is its own category.)
 */
bool
EsRoleMayAccessStream(Oid role, text *stream_id, int priv)
{
	if (!EsCategoryGrantsExist())
		return true;
	return es_role_may(role, es_find_category(VARDATA_ANY(stream_id), EsCategoryLen(stream_id)),
					   priv);
}

/* Error out unless the current user may do priv on the stream's category */
void
EsCheckStreamAccess(text *stream_id, int priv)
{
	Oid			role = GetUserId();

	if (!EsRoleMayAccessStream(role, stream_id, priv))
		es_deny(role, VARDATA_ANY(stream_id), EsCategoryLen(stream_id), priv);
}

/*
 * The categories role may not read, as a filter for a scan over many
 * streams; NULL when it may read everything (the usual case).  Allocated in
 * the current memory context.
 */
EsDeniedSet *
EsDeniedCategories(Oid role)
{
	return EsDeniedCategoriesFor(role, ES_PRIV_READ);
}

/*
 * The categories on which role lacks one of privs (ES_PRIV_* bits); NULL
 * when there is none.  Allocated in the current memory context.
 */
EsDeniedSet *
EsDeniedCategoriesFor(Oid role, int privs)
{
	EsDeniedSet *set = NULL;

	if (!EsCategoryGrantsExist())
		return NULL;
	for (int i = 0; i < grant_ncats; i++)
	{
		if (((privs & ES_PRIV_READ) == 0 || es_role_may(role, &grant_cats[i], ES_PRIV_READ)) &&
			((privs & ES_PRIV_APPEND) == 0 || es_role_may(role, &grant_cats[i], ES_PRIV_APPEND)))
			continue;
		if (set == NULL)
		{
			set = palloc(sizeof(EsDeniedSet));
			set->n = 0;
			set->categories = palloc(sizeof(text *) * grant_ncats);
		}
		set->categories[set->n++] = DatumGetTextPCopy(PointerGetDatum(grant_cats[i].category));
	}
	return set;
}

/* Is the stream in one of the set's categories? */
bool
EsStreamDenied(const EsDeniedSet *set, text *stream_id)
{
	const char *s;
	int			len;

	if (set == NULL)
		return false;
	s = VARDATA_ANY(stream_id);
	len = EsCategoryLen(stream_id);
	for (int i = 0; i < set->n; i++)
	{
		text	   *c = set->categories[i];

		if (EsTextIs(c, s, len))
			return true;
	}
	return false;
}

/*
 * SQL: event_store._may_read(stream_id text) RETURNS boolean -- the
 * row-level security policy of the events and snapshots tables
 */
Datum
es_may_read(PG_FUNCTION_ARGS)
{
	if (PG_ARGISNULL(0))
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(EsRoleMayAccessStream(GetUserId(), PG_GETARG_TEXT_PP(0), ES_PRIV_READ));
}

/* The privilege bits of a privileges text[] argument (error on bad input) */
static int
es_privileges_arg(FunctionCallInfo fcinfo, int argno)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	int			privs = 0;

	EsRequireArg(fcinfo, argno, "privileges");
	n = EsArgTextArray(fcinfo, argno, "privileges", &elems, &nulls);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("privileges must not be empty"),
				 errhint("The privileges of a category are \"append\" and \"read\".")));
	for (int i = 0; i < n; i++)
	{
		char	   *p;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("privileges must not contain null")));
		p = TextDatumGetCString(elems[i]);
		if (strcmp(p, "append") == 0)
			privs |= ES_PRIV_APPEND;
		else if (strcmp(p, "read") == 0)
			privs |= ES_PRIV_READ;
		else
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("unrecognized category privilege \"%s\"", p),
					 errhint("The privileges of a category are \"append\" and \"read\".")));
	}
	return privs;
}

/* Common part of grant_category and revoke_category */
static void
es_change_grants(FunctionCallInfo fcinfo, bool grant)
{
	Oid			grantee;
	text	   *category;
	int			privs;
	EsUserSwitch sw;

	EsRequireArg(fcinfo, 0, "role");
	grantee = PG_GETARG_OID(0);
	Assert(EsSchemaHasOwners());
	category = EsGetRequiredText(fcinfo, 1, "category");
	EsCheckCategory(category, "Grants are per category: pass the part of the stream ids before the first \"-\".");
	privs = es_privileges_arg(fcinfo, 2);
	/* a dropped role's grants can still be revoked */
	if (grant && !GetUserNameFromId(grantee, true))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u does not exist", grantee)));

	EsSpiConnect(&sw);
	for (int priv = ES_PRIV_APPEND; priv <= ES_PRIV_READ; priv <<= 1)
	{
		Datum		values[3];
		Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
		int			rc;

		if (!(privs & priv))
			continue;
		values[0] = ObjectIdGetDatum(grantee);
		values[1] = PointerGetDatum(category);
		values[2] = CStringGetTextDatum(es_priv_name(priv));
		if (grant)
			rc = SPI_execute_with_args("INSERT INTO event_store.category_grants "
									   "(grantee, category, privilege) "
									   "VALUES ($1::pg_catalog.regrole, $2, $3) "
									   "ON CONFLICT DO NOTHING",
									   3, types, values, NULL, false, 0);
		else
			rc = SPI_execute_with_args("DELETE FROM event_store.category_grants "
									   "WHERE grantee OPERATOR(pg_catalog.=) $1::pg_catalog.regrole "
									   "AND category OPERATOR(pg_catalog.=) $2 "
									   "AND privilege OPERATOR(pg_catalog.=) $3",
									   3, types, values, NULL, false, 0);
		if (rc != (grant ? SPI_OK_INSERT : SPI_OK_DELETE))
			elog(ERROR, "changing event_store.category_grants failed: %s", SPI_result_code_string(rc));
	}
	EsSpiFinish(&sw);
	EsRegistryChanged(&grant_registry);
}

/*
 * SQL: event_store.grant_category(role regrole, category text,
 *		privileges text[]) -- idempotent
 */
Datum
es_grant_category(PG_FUNCTION_ARGS)
{
	EsCheckWritable("grant_category()");
	es_change_grants(fcinfo, true);
	PG_RETURN_VOID();
}

/*
 * SQL: event_store.revoke_category(role regrole, category text,
 *		privileges text[]) -- revoking what was not granted is no error
 */
Datum
es_revoke_category(PG_FUNCTION_ARGS)
{
	EsCheckWritable("revoke_category()");
	es_change_grants(fcinfo, false);
	PG_RETURN_VOID();
}
