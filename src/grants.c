/*
 * grants.c
 *	  Category grants (event_store.category_grants): once a category has a
 *	  grant, only holders of "append" may append to its streams and only
 *	  holders of "read" may read them; the extension owner always may.  The
 *	  grants are cached per backend (a registry), so a category without
 *	  grants costs one hash probe on the hot paths.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/catcache.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "api.h"
#include "catalog.h"
#include "errors.h"
#include "grants.h"
#include "registry.h"
#include "roles.h"

PG_FUNCTION_INFO_V1(es_grant_category);
PG_FUNCTION_INFO_V1(es_revoke_category);
PG_FUNCTION_INFO_V1(es_may_read);

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
	if (EsGetCatalog()->schema_version < ES_SCHEMA_0_2)
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
	Assert(EsGetCatalog()->schema_version >= ES_SCHEMA_0_2);
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

	/* a misspelt category would lock a category nobody meant */
	if (grant)
	{
		const EsCatalog *cat = EsGetCatalog();
		ScanKeyData key;
		Datum		value;

		ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(category));
		if (!EsFirstEventValue(cat, cat->category_idx, GetActiveSnapshot(), &key, 1,
							   ForwardScanDirection, Anum_es_global_position, &value))
			ereport(NOTICE,
					(errmsg("category \"%s\" has no events yet", text_to_cstring(category)),
					 errdetail("From now on only roles holding a grant on it may append to or read its streams."),
					 errhint("Check the spelling of the category.")));
	}
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


/* ------------------------------------------------------------------------
 * PostgreSQL's own permission errors on event_store's functions and tables
 * ("permission denied for function append": the role lacks EXECUTE) get the
 * hint of the privilege recipe, ES_PRIVILEGES_HINT.  They are raised while
 * a query's executor starts (its ACL checks), so that is where they are
 * caught, given the hint and thrown again.  (Not so the errors raised while
 * a query is parsed, as of the schema's USAGE, which PUBLIC has, nor those
 * of a PL/pgSQL expression evaluated without the executor's start.)
 * ------------------------------------------------------------------------ */

static ExecutorStart_hook_type prev_executor_start = NULL;

/* PostgreSQL's messages (aclcheck_error) of the objects event_store has */
static const char *const es_acl_formats[] = {
	"permission denied for function %s",
	"permission denied for procedure %s",
	"permission denied for table %s",
	"permission denied for view %s",
	"permission denied for sequence %s",
};

/*
 * The name in a permission error of PostgreSQL's on a function (*is_function)
 * or a relation, or NULL for any other error (a translated message too:
 * the name cannot be told apart then)
 */
static const char *
es_acl_error_object(ErrorData *edata, bool *is_function)
{
	if (edata->sqlerrcode != ERRCODE_INSUFFICIENT_PRIVILEGE || edata->hint != NULL ||
		edata->message_id == NULL || edata->message == NULL)
		return NULL;
	for (int i = 0; i < lengthof(es_acl_formats); i++)
	{
		size_t		len = strlen(es_acl_formats[i]) - 2;

		if (strcmp(edata->message_id, es_acl_formats[i]) == 0 &&
			strncmp(edata->message, es_acl_formats[i], len) == 0)
		{
			*is_function = i < 2;
			return edata->message + len;
		}
	}
	return NULL;
}

/* Is there a function (or a relation) of that name in schema event_store? */
static bool
es_is_our_object(const char *name, bool is_function)
{
	Oid			nsp = get_namespace_oid(ES_SCHEMA_NAME, true);
	bool		found = false;

	/* (the internal functions, "_name", are nobody's to call) */
	if (!OidIsValid(nsp) || name[0] == '_')
		return false;
	if (!is_function)
		return OidIsValid(get_relname_relid(name, nsp));
	{
		CatCList   *list = SearchSysCacheList1(PROCNAMEARGSNSP, CStringGetDatum(name));

		for (int i = 0; i < list->n_members && !found; i++)
			found = ((Form_pg_proc) GETSTRUCT(&list->members[i]->tuple))->pronamespace == nsp;
		ReleaseSysCacheList(list);
	}
	return found;
}

static void
es_executor_start(QueryDesc *queryDesc, int eflags)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		if (prev_executor_start)
			prev_executor_start(queryDesc, eflags);
		else
			standard_ExecutorStart(queryDesc, eflags);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		const char *name;
		bool		is_function = false;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		name = es_acl_error_object(edata, &is_function);
		if (name == NULL || !IsTransactionState())
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		/* the error was a clean ACL check: look the name up, then throw it again */
		FlushErrorState();
		if (es_is_our_object(name, is_function))
			edata->hint = pstrdup(ES_PRIVILEGES_HINT);
		ReThrowError(edata);
	}
	PG_END_TRY();
}

/* Module load (preloaded) */
void
EsPrivilegesHintInit(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = es_executor_start;
}
