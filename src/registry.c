/*
 * registry.c
 *	  The per-backend caches of the registries: small tables that users
 *	  maintain through the API (upcasters, aggregates, projections, saga
 *	  definitions, category grants, stream metadata).  A change sends a
 *	  relcache invalidation for the table, which every backend turns into
 *	  "reload before the next use"; caches of callbacks are reloaded too
 *	  when any function changes.  Also the one hash table keyed by text that
 *	  those caches use, and SPI plans kept for a backend's lifetime.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "registry.h"

/*
 * Registries: small user-maintained tables (upcasters, aggregates, grants...)
 * cached per backend.  A change sends a relcache invalidation for the table,
 * which every backend turns into "reload before the next use".
 */
#define ES_MAX_REGISTRIES 8
static EsRegistry *es_registries[ES_MAX_REGISTRIES];
static int	es_nregistries = 0;
static bool es_registry_callback_registered = false;

/* Relcache invalidation: mark the registries whose table changed */
static void
es_registry_relcache_callback(Datum arg, Oid relid)
{
	for (int i = 0; i < es_nregistries; i++)
		if (relid == InvalidOid || relid == es_registries[i]->relid)
			es_registries[i]->valid = false;
}

/*
 * A function was changed or dropped: what the registries of callbacks cached
 * of it may be stale, so each of them reloads (and notices a dropped
 * callback by itself).  The others hold no functions.
 */
static void
es_registry_proc_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	for (int i = 0; i < es_nregistries; i++)
		if (es_registries[i]->calls_functions)
			es_registries[i]->valid = false;
}

/*
 * Does the registry need a reload?  If so, the caller reloads it right away;
 * it is marked valid first, so an invalidation arriving during the reload
 * leaves it invalid again.
 */
bool
EsRegistryNeedsReload(EsRegistry *reg)
{
	if (!reg->registered)
	{
		if (!es_registry_callback_registered)
		{
			CacheRegisterRelcacheCallback(es_registry_relcache_callback, (Datum) 0);
			CacheRegisterSyscacheCallback(PROCOID, es_registry_proc_callback, (Datum) 0);
			es_registry_callback_registered = true;
		}
		if (es_nregistries >= ES_MAX_REGISTRIES)
			elog(ERROR, "too many event_store registries");
		es_registries[es_nregistries++] = reg;
		reg->registered = true;
	}
	if (reg->valid)
		return false;
	reg->relid = get_relname_relid(reg->relname, EsGetCatalog()->namespace_oid);
	reg->valid = true;
	return true;
}

/*
 * Make sure the registry's cache is loaded: (re)load it with load() when it
 * was invalidated.  The load reads with a fresh snapshot (so a REPEATABLE READ
 * transaction sees registrations committed after it began) and leaves the
 * registry invalid if it fails half-way.
 */
void
EsRegistryEnsure(EsRegistry *reg, void (*load) (void))
{
	if (!EsRegistryNeedsReload(reg))
		return;
	PG_TRY();
	{
		/* a parallel worker cannot take a new snapshot: use the query's */
		PushActiveSnapshot(IsInParallelMode() ? GetActiveSnapshot() : GetLatestSnapshot());
		load();
		PopActiveSnapshot();
	}
	PG_CATCH();
	{
		reg->valid = false;
		PG_RE_THROW();
	}
	PG_END_TRY();
}

/*
 * A fresh memory context for the registry's cache.  The previous one is
 * deleted, unless a callback loaded from it is running (reg->depth > 0): then
 * it is kept until the registry is next reloaded with no call in progress.
 */
MemoryContext
EsRegistryNewContext(EsRegistry *reg)
{
	MemoryContext old;

	if (reg->cxt != NULL)
	{
		if (reg->depth > 0)
		{
			old = MemoryContextSwitchTo(TopMemoryContext);
			reg->retired = lappend(reg->retired, reg->cxt);
			MemoryContextSwitchTo(old);
		}
		else
			MemoryContextDelete(reg->cxt);
	}
	if (reg->depth == 0 && reg->retired != NIL)
	{
		ListCell   *lc;

		foreach(lc, reg->retired)
			MemoryContextDelete((MemoryContext) lfirst(lc));
		list_free(reg->retired);
		reg->retired = NIL;
	}
	reg->cxt = AllocSetContextCreate(CacheMemoryContext, "event_store registry cache",
									 ALLOCSET_SMALL_SIZES);
	MemoryContextSetIdentifier(reg->cxt, reg->relname);
	return reg->cxt;
}

/*
 * Call a function loaded from the registry's cache, keeping the cache alive
 * for the duration of the call (the callee may cause a reload).
 */
Datum
EsRegistryCall(EsRegistry *reg, FunctionCallInfo fcinfo)
{
	Datum		result;

	reg->depth++;
	PG_TRY();
	{
		result = FunctionCallInvoke(fcinfo);
	}
	PG_FINALLY();
	{
		reg->depth--;
	}
	PG_END_TRY();
	return result;
}

/* After changing a registry table: every backend reloads at its next use */
void
EsRegistryChanged(EsRegistry *reg)
{
	Oid			relid = get_relname_relid(reg->relname, EsGetCatalog()->namespace_oid);

	if (OidIsValid(relid))
		CacheInvalidateRelcacheByRelid(relid);
}

/* Does a function (still) exist? */
bool
EsFunctionExists(Oid fn)
{
	return SearchSysCacheExists1(PROCOID, ObjectIdGetDatum(fn));
}

/* An SPI plan prepared once and kept for the backend's life (caller in SPI) */
SPIPlanPtr
EsPrepareKeptPlan(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	SPI_keepplan(plan);
	return plan;
}

/*
 * The kept plan of a statement whose text is a literal (or any string that
 * lives, unchanged, as long as the backend), found by the string's address:
 * prepared at its first use (caller in SPI)
 */
typedef struct EsKeptStatement
{
	const char *sql;			/* the key */
	SPIPlanPtr	plan;
} EsKeptStatement;

static HTAB *kept_statements = NULL;

SPIPlanPtr
EsKeptStatementPlan(const char *sql, int nargs, Oid *argtypes)
{
	EsKeptStatement *entry;
	SPIPlanPtr	plan;
	bool		found;

	if (kept_statements == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(const char *);
		ctl.entrysize = sizeof(EsKeptStatement);
		ctl.hcxt = TopMemoryContext;
		kept_statements = hash_create("event_store kept statements", 64, &ctl,
									  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	entry = hash_search(kept_statements, &sql, HASH_FIND, NULL);
	if (entry != NULL)
		return entry->plan;
	/* prepared first: an error leaves no entry behind */
	plan = EsPrepareKeptPlan(sql, nargs, argtypes);
	entry = hash_search(kept_statements, &sql, HASH_ENTER, &found);
	entry->plan = plan;
	return plan;
}

/* ------------------------------------------------------------------------
 * Text-keyed hash tables of the registries' caches
 * ------------------------------------------------------------------------ */

/* Hash of an EsTextKey: its whole string and its number */
static uint32
es_text_key_hash(const void *key, Size keysize)
{
	const EsTextKey *k = (const EsTextKey *) key;

	return hash_combine(hash_bytes((const unsigned char *) k->str, k->len),
						hash_uint32((uint32) k->num));
}

/* Do two EsTextKeys differ?  (0: equal, as dynahash wants) */
static int
es_text_key_match(const void *key1, const void *key2, Size keysize)
{
	const EsTextKey *a = (const EsTextKey *) key1;
	const EsTextKey *b = (const EsTextKey *) key2;

	if (a->len != b->len || a->num != b->num)
		return 1;
	return memcmp(a->str, b->str, a->len);
}

/* A hash table of entries of entrysize bytes, each beginning with its EsTextKey */
HTAB *
EsTextHashCreate(const char *name, Size entrysize, MemoryContext cxt)
{
	HASHCTL		ctl;

	Assert(entrysize >= sizeof(EsTextKey));
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(EsTextKey);
	ctl.entrysize = entrysize;
	ctl.hash = es_text_key_hash;
	ctl.match = es_text_key_match;
	ctl.hcxt = cxt;
	return hash_create(name, 16, &ctl,
					   HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
}

/* The entry of (str, len, num), or NULL */
void *
EsTextHashFind(HTAB *hash, const char *str, int len, int32 num)
{
	EsTextKey	key;

	key.str = str;
	key.len = len;
	key.num = num;
	return hash_search(hash, &key, HASH_FIND, NULL);
}

/*
 * The entry of (str, len, num), made if there is none (*found says which);
 * str must live as long as the table
 */
void *
EsTextHashEnter(HTAB *hash, const char *str, int len, int32 num, bool *found)
{
	EsTextKey	key;

	key.str = str;
	key.len = len;
	key.num = num;
	return hash_search(hash, &key, HASH_ENTER, found);
}
