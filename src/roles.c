/*
 * roles.c
 *	  Acting as another role: as the extension's owner for the extension's
 *	  own tables, as a callback's registrant for user code.
 *
 *	  - The extension's own tables are written only through its functions.
 *	    C code that reads or writes them through SPI does so as the
 *	    extension's owner (EsBecomeOwner, EsSpiConnect), with every name in
 *	    its SQL text schema-qualified, so the caller's search_path cannot
 *	    redirect it.
 *	  - User callbacks run as the role that registered them, with the
 *	    search_path in force when it registered them, pg_temp placed last
 *	    (EsBecomeRole): nothing of the calling session -- its search_path,
 *	    its temporary relations, types, functions or operators, its settings
 *	    such as event_store.allow_purge -- takes part in a callback, and
 *	    every setting a callback changes is rolled back when it returns (or,
 *	    in a loop of callbacks, when its callback scope ends).
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
#include "executor/spi.h"
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

#include "catalog.h"
#include "roles.h"

/*
 * event_store.allow_purge (superuser only): purge_stream() may remove
 * events.  A session's setting, never a callback's (EsBecomeRole).
 */
bool		es_allow_purge = false;

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
