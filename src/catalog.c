/*
 * catalog.c
 *	  OIDs of the extension's own schema, tables, indexes and types, looked
 *	  up once per backend and forgotten whenever the relcache is invalidated
 *	  for one of them (DROP EXTENSION followed by CREATE EXTENSION gives new
 *	  OIDs).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "commands/extension.h"
#include "nodes/pg_list.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "event_store.h"

static EsCatalog es_catalog;
static bool es_catalog_valid = false;
static bool es_callback_registered = false;

/* Relcache invalidation: forget everything if one of ours (or all) changed */
static void
es_catalog_relcache_callback(Datum arg, Oid relid)
{
	if (!es_catalog_valid)
		return;
	if (relid == InvalidOid ||
		relid == es_catalog.events_relid ||
		relid == es_catalog.position_idx ||
		relid == es_catalog.stream_idx ||
		relid == es_catalog.event_id_idx ||
		relid == es_catalog.category_idx ||
		relid == es_catalog.event_type_relid ||
		relid == es_catalog.metadata_relid ||
		relid == es_catalog.metadata_idx ||
		relid == es_catalog.upcasters_relid ||
		relid == es_catalog.position_mark_relid)
		es_catalog_valid = false;
}

/* Look up one relation of our schema; a missing one means a broken install */
static Oid
es_lookup_rel(Oid nsp, const char *name)
{
	Oid			relid = get_relname_relid(name, nsp);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("relation \"%s.%s\" does not exist", ES_SCHEMA_NAME, name),
				 errhint("Is the extension event_store installed in this database? Run CREATE EXTENSION event_store.")));
	return relid;
}

/* pg_class.relnatts of a relation, or -1 */
static int
es_relnatts(Oid relid)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	int			natts = -1;

	if (HeapTupleIsValid(tup))
	{
		natts = ((Form_pg_class) GETSTRUCT(tup))->relnatts;
		ReleaseSysCache(tup);
	}
	return natts;
}

/*
 * Do the rows of event_store.events have the physical layout of the row type
 * event_store.event (same columns, types, lengths and alignments, none
 * dropped)?  Then a stored row can be handed on as an event without being
 * taken apart and formed again.
 */
static bool
es_same_row_layout(Oid relid, Oid type_relid)
{
	if (!OidIsValid(type_relid) || es_relnatts(relid) != Natts_es_event ||
		es_relnatts(type_relid) != Natts_es_event)
		return false;
	for (AttrNumber attno = 1; attno <= Natts_es_event; attno++)
	{
		HeapTuple	a = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attno));
		HeapTuple	b = SearchSysCache2(ATTNUM, ObjectIdGetDatum(type_relid), Int16GetDatum(attno));
		bool		same = false;

		if (HeapTupleIsValid(a) && HeapTupleIsValid(b))
		{
			Form_pg_attribute fa = (Form_pg_attribute) GETSTRUCT(a);
			Form_pg_attribute fb = (Form_pg_attribute) GETSTRUCT(b);

			same = !fa->attisdropped && !fb->attisdropped &&
				fa->atttypid == fb->atttypid && fa->attlen == fb->attlen &&
				fa->attbyval == fb->attbyval && fa->attalign == fb->attalign;
		}
		if (HeapTupleIsValid(a))
			ReleaseSysCache(a);
		if (HeapTupleIsValid(b))
			ReleaseSysCache(b);
		if (!same)
			return false;
	}
	return true;
}

/* The cached OIDs, looked up on first use after an invalidation */
const EsCatalog *
EsGetCatalog(void)
{
	Oid			nsp;

	if (es_catalog_valid)
		return &es_catalog;

	if (!es_callback_registered)
	{
		CacheRegisterRelcacheCallback(es_catalog_relcache_callback, (Datum) 0);
		es_callback_registered = true;
	}

	nsp = get_namespace_oid(ES_SCHEMA_NAME, true);
	if (!OidIsValid(nsp))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_SCHEMA),
				 errmsg("schema \"%s\" does not exist", ES_SCHEMA_NAME),
				 errhint("Run CREATE EXTENSION event_store in this database.")));

	es_catalog.extension_oid = get_extension_oid("event_store", false);
	es_catalog.namespace_oid = nsp;
	es_catalog.events_relid = es_lookup_rel(nsp, ES_EVENTS_TABLE);
	es_catalog.position_idx = es_lookup_rel(nsp, ES_EVENTS_POSITION_IDX);
	es_catalog.stream_idx = es_lookup_rel(nsp, ES_EVENTS_STREAM_IDX);
	es_catalog.event_id_idx = es_lookup_rel(nsp, ES_EVENTS_EVENT_ID_IDX);
	es_catalog.category_idx = es_lookup_rel(nsp, ES_EVENTS_CATEGORY_IDX);
	es_catalog.event_type_oid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
												CStringGetDatum("event"),
												ObjectIdGetDatum(nsp));
	/* missing in a schema from before stream metadata (until ALTER EXTENSION UPDATE) */
	es_catalog.metadata_relid = get_relname_relid("stream_metadata", nsp);
	es_catalog.metadata_idx = get_relname_relid("stream_metadata_pkey", nsp);
	es_catalog.grants_relid = get_relname_relid("category_grants", nsp);
	es_catalog.upcasters_relid = get_relname_relid("upcasters", nsp);
	es_catalog.registries_have_paths = OidIsValid(es_catalog.upcasters_relid) &&
		get_attnum(es_catalog.upcasters_relid, "search_path") != InvalidAttrNumber;
	/* missing in a schema from before 0.3.0 (until ALTER EXTENSION UPDATE) */
	es_catalog.position_mark_relid = get_relname_relid(ES_POSITION_MARK_SEQ, nsp);
	if (!OidIsValid(es_catalog.event_type_oid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("type \"%s.event\" does not exist", ES_SCHEMA_NAME)));
	es_catalog.event_type_relid = get_typ_typrelid(es_catalog.event_type_oid);
	es_catalog.stored_rows_are_events =
		es_same_row_layout(es_catalog.events_relid, es_catalog.event_type_relid);
	es_catalog_valid = true;
	return &es_catalog;
}

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
