/*
 * tiers.c
 *	  The tiers every scan of the events visits: the archived position
 *	  ranges (archive.c moves events into them) and the hot table.
 *
 * Layout.  The hot table event_store.events keeps its indexes and
 * constraints; archive_events(before_position, tablespace) moves its rows
 * below a position, in one statement, into a new table
 * event_store.events_archive_<first position> created in the tablespace,
 * which inherits from event_store.events (so SQL on event_store.events, row
 * level security and the purge of a stream see every tier) and carries a
 * copy of each of its indexes, named after the range (events_pkey:
 * events_archive_1_pkey).  event_store.archived_ranges lists the ranges: each
 * holds the positions [first_position, end_position), the ranges are
 * contiguous from the first one and the hot table holds the positions from
 * the last range's end on.  A later call moves whole ranges to another
 * tablespace (pg_default brings them back to the default disk).
 *
 * Reads.  Within a stream, versions grow with positions, so the tiers
 * concatenated in position order (in reverse for backward scans) read as
 * one table: every scan of read.c, catalog.c and append.c runs its index
 * scan on each tier in turn, skipping the tiers outside the positions its
 * keys ask for.
 *
 * Consistency without locks.  A range's rows are deleted from the hot
 * table and inserted into its table by the same transaction, so every
 * snapshot sees each event exactly once in the union of all tiers; a list
 * of tiers that holds more ranges than a snapshot can see is harmless (their
 * rows are invisible to it).  A scan must only never miss a range whose
 * transaction its snapshot sees committed.  Writers of archived_ranges count
 * themselves in shared memory: "started" before they write (a statement
 * trigger), "ended" after their commit or abort (a transaction callback,
 * which runs after the commit became visible).  A backend keeps its list
 * while both counters equal the value it was loaded at; otherwise it reads
 * the registry again with a snapshot taken after the scan's own (while a
 * writer is in flight, for every scan), which sees every commit the scan's
 * snapshot sees.  A hot standby replays the ranges' writes without firing
 * any trigger, so there every scan reads the registry again.
 *
 * Uniqueness.  Positions and versions are unique across tiers because they
 * are handed out by append() only; event ids because append() probes every
 * tier's event id index before it inserts (the hot table's unique index
 * still catches two concurrent appends of the same new id).
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/shmem.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "tiers.h"

PG_FUNCTION_INFO_V1(es_archived_ranges_write);

/* Columns of event_store.archived_ranges */
#define Anum_es_ar_first		1
#define Anum_es_ar_end			2
#define Anum_es_ar_relation		3

/* shared: writers of archived_ranges that started, and that ended */
typedef struct EsArchiveShared
{
	pg_atomic_uint64 started;
	pg_atomic_uint64 ended;
} EsArchiveShared;

static EsArchiveShared *es_archive_shared = NULL;

/* this backend's writes of archived_ranges not yet counted as ended */
static uint64 es_pending_writes = 0;
static bool es_xact_callback_registered = false;

/* the cached tiers and what they were loaded for */
static EsTiers *es_cached_tiers = NULL;
static uint64 es_cached_generation = 0;
static Oid	es_cached_events_relid = InvalidOid;
static Oid	es_cached_archive_relid = InvalidOid;

/* the tiers of a store without archived_ranges (a schema before 0.3) */
static EsTier es_hot_only_tier;
static EsTiers es_hot_only = {1, &es_hot_only_tier};

Size
EsArchiveShmemSize(void)
{
	return sizeof(EsArchiveShared);
}

/* Create or attach the counters; caller holds AddinShmemInitLock */
void
EsArchiveShmemInit(void)
{
	bool		found;

	es_archive_shared = ShmemInitStruct("event_store archive", sizeof(EsArchiveShared), &found);
	if (!found)
	{
		pg_atomic_init_u64(&es_archive_shared->started, 0);
		pg_atomic_init_u64(&es_archive_shared->ended, 0);
	}
}

/* End of a transaction that wrote archived_ranges: count its writes as ended */
static void
es_archive_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (es_pending_writes > 0)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that archived events")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_PARALLEL_ABORT:
			if (es_pending_writes > 0 && es_archive_shared != NULL)
				pg_atomic_fetch_add_u64(&es_archive_shared->ended, es_pending_writes);
			es_pending_writes = 0;
			break;
		default:
			break;
	}
}

/*
 * Trigger BEFORE INSERT OR UPDATE OR DELETE ON event_store.archived_ranges
 * FOR EACH STATEMENT: every backend reads the ranges again from now until
 * this transaction has ended (see the file comment).  Also fires for
 * pg_restore's COPY.
 */
Datum
es_archived_ranges_write(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_archived_ranges_write: not called by trigger manager");
	if (!es_xact_callback_registered)
	{
		RegisterXactCallback(es_archive_xact_callback, NULL);
		es_xact_callback_registered = true;
	}
	if (es_archive_shared != NULL)
	{
		es_pending_writes++;
		pg_atomic_fetch_add_u64(&es_archive_shared->started, 1);
	}
	return PointerGetDatum(NULL);
}

/*
 * The index of a range table that corresponds to an index of the hot table:
 * archive_events() names it after the range table, with the hot index's
 * name but for its leading "events_" (events_pkey: events_archive_1_pkey).
 */
static Oid
es_range_index(Oid nsp, const char *relname, const char *hot_index, bool missing_ok)
{
	const char *suffix = hot_index;
	char	   *name;
	Oid			oid;

	if (strncmp(suffix, ES_EVENTS_TABLE "_", strlen(ES_EVENTS_TABLE) + 1) == 0)
		suffix += strlen(ES_EVENTS_TABLE) + 1;
	name = psprintf("%s_%s", relname, suffix);
	oid = get_relname_relid(name, nsp);
	if (!OidIsValid(oid) && !missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("index \"%s.%s\" of an archived range does not exist", ES_SCHEMA_NAME, name),
				 errdetail("Every range table has the indexes of event_store.events."),
				 errhint("Create it like index \"%s\" of event_store.events.", hot_index)));
	pfree(name);
	return oid;
}

/* Fill a tier's index OIDs from its table's name */
static void
es_tier_indexes(EsTier *t, Oid nsp, const char *relname)
{
	t->position_idx = es_range_index(nsp, relname, ES_EVENTS_POSITION_IDX, false);
	t->stream_idx = es_range_index(nsp, relname, ES_EVENTS_STREAM_IDX, false);
	t->event_id_idx = es_range_index(nsp, relname, ES_EVENTS_EVENT_ID_IDX, false);
	t->category_idx = es_range_index(nsp, relname, ES_EVENTS_CATEGORY_IDX, false);
}

/* Order of tiers: by position */
static int
es_cmp_tier(const void *a, const void *b)
{
	int64		x = ((const EsTier *) a)->first;
	int64		y = ((const EsTier *) b)->first;

	return x < y ? -1 : x > y ? 1 : 0;
}

/*
 * Read the archived ranges with a fresh snapshot, into cxt: the tiers in
 * position order, the hot table last.
 */
EsTiers *
EsLoadTiers(const EsCatalog *cat, MemoryContext cxt)
{
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tup;
	EsTiers    *tiers;
	int			cap = 8;
	int			n = 0;
	EsTier	   *hot;
	MemoryContext oldcxt;

	tiers = MemoryContextAlloc(cxt, sizeof(EsTiers));
	tiers->tier = MemoryContextAlloc(cxt, sizeof(EsTier) * cap);

	rel = table_open(cat->archive_relid, AccessShareLock);

	/*
	 * A snapshot taken now (a new catalog snapshot: GetLatestSnapshot is
	 * refused in parallel mode, and a read_stream may run in a worker)
	 */
	InvalidateCatalogSnapshot();
	snapshot = RegisterSnapshot(GetCatalogSnapshot(cat->archive_relid));
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		bool		null;
		EsTier	   *t;
		char	   *relname;

		if (n + 1 >= cap)
		{
			cap *= 2;
			tiers->tier = repalloc(tiers->tier, sizeof(EsTier) * cap);
		}
		t = &tiers->tier[n++];
		t->first = DatumGetInt64(heap_getattr(tup, Anum_es_ar_first, RelationGetDescr(rel), &null));
		t->end = DatumGetInt64(heap_getattr(tup, Anum_es_ar_end, RelationGetDescr(rel), &null));
		relname = NameStr(*DatumGetName(heap_getattr(tup, Anum_es_ar_relation,
													 RelationGetDescr(rel), &null)));
		t->relid = get_relname_relid(relname, cat->namespace_oid);
		if (!OidIsValid(t->relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s.%s\" of an archived range does not exist", ES_SCHEMA_NAME, relname),
					 errdetail("event_store.archived_ranges lists it for positions " INT64_FORMAT " to " INT64_FORMAT ".",
							   t->first, t->end - 1)));
		oldcxt = MemoryContextSwitchTo(cxt);
		es_tier_indexes(t, cat->namespace_oid, relname);
		MemoryContextSwitchTo(oldcxt);
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	if (n > 1)
		qsort(tiers->tier, n, sizeof(EsTier), es_cmp_tier);
	hot = &tiers->tier[n];
	hot->relid = cat->events_relid;
	hot->position_idx = cat->position_idx;
	hot->stream_idx = cat->stream_idx;
	hot->event_id_idx = cat->event_id_idx;
	hot->category_idx = cat->category_idx;
	/*
	 * Not the last range's end: to a snapshot that cannot see the newest
	 * ranges yet, their events are still in the hot table.
	 */
	hot->first = PG_INT64_MIN;
	hot->end = PG_INT64_MAX;
	tiers->n = n + 1;
	return tiers;
}

/*
 * The tiers a scan of the events visits, in position order (the hot table
 * last).  Call it after taking the scan's snapshot: the list holds every
 * range that snapshot can see (see the file comment).
 */
const EsTiers *
EsEventTiers(const EsCatalog *cat)
{
	uint64		started;
	uint64		ended;

	if (!OidIsValid(cat->archive_relid))
	{
		es_hot_only_tier.relid = cat->events_relid;
		es_hot_only_tier.position_idx = cat->position_idx;
		es_hot_only_tier.stream_idx = cat->stream_idx;
		es_hot_only_tier.event_id_idx = cat->event_id_idx;
		es_hot_only_tier.category_idx = cat->category_idx;
		es_hot_only_tier.first = PG_INT64_MIN;
		es_hot_only_tier.end = PG_INT64_MAX;
		return &es_hot_only;
	}
	/*
	 * Without shared memory, or on a hot standby (WAL replay writes the
	 * ranges without firing the trigger that counts the writers): read the
	 * ranges for every scan
	 */
	if (es_archive_shared == NULL || RecoveryInProgress())
		return EsLoadTiers(cat, CurrentMemoryContext);

	/* ended first: equal counters then mean no writer was in flight */
	ended = pg_atomic_read_u64(&es_archive_shared->ended);
	pg_memory_barrier();
	started = pg_atomic_read_u64(&es_archive_shared->started);
	if (started == ended && es_cached_tiers != NULL &&
		es_cached_generation == started &&
		es_cached_events_relid == cat->events_relid &&
		es_cached_archive_relid == cat->archive_relid)
		return es_cached_tiers;
	if (started != ended)
		return EsLoadTiers(cat, CurrentMemoryContext);

	/*
	 * A list of an earlier generation may still be in use by an outer scan
	 * (a callback's read): it is left in CacheMemoryContext, a few bytes per
	 * archive_events() call.
	 */
	es_cached_tiers = EsLoadTiers(cat, CacheMemoryContext);
	es_cached_generation = started;
	es_cached_events_relid = cat->events_relid;
	es_cached_archive_relid = cat->archive_relid;
	return es_cached_tiers;
}

/*
 * The tier's index that corresponds to an index of the hot table (one of
 * the four the catalog knows, or any other archive_events() copied)
 */
Oid
EsTierIndex(const EsCatalog *cat, const EsTier *tier, Oid index_oid)
{
	char	   *hot_index;

	if (tier->relid == cat->events_relid)
		return index_oid;
	if (index_oid == cat->position_idx)
		return tier->position_idx;
	if (index_oid == cat->stream_idx)
		return tier->stream_idx;
	if (index_oid == cat->event_id_idx)
		return tier->event_id_idx;
	if (index_oid == cat->category_idx)
		return tier->category_idx;
	hot_index = get_rel_name(index_oid);
	if (hot_index == NULL)
		elog(ERROR, "cache lookup failed for index %u", index_oid);
	return es_range_index(cat->namespace_oid, get_rel_name(tier->relid), hot_index, false);
}

/*
 * The values [*lo, *hi] a scan's keys allow in the index's column attno
 * (an int8: a position or a version); lo > hi when none
 */
static void
es_keys_int8_bounds(ScanKey keys, int nkeys, AttrNumber attno, int64 *lo, int64 *hi)
{
	*lo = PG_INT64_MIN;
	*hi = PG_INT64_MAX;
	for (int i = 0; i < nkeys; i++)
	{
		int64		v;

		if (keys[i].sk_attno != attno || (keys[i].sk_flags & SK_ISNULL))
			continue;
		v = DatumGetInt64(keys[i].sk_argument);
		switch (keys[i].sk_strategy)
		{
			case BTLessStrategyNumber:
				if (v == PG_INT64_MIN)
					*lo = PG_INT64_MAX;
				else
					*hi = Min(*hi, v - 1);
				break;
			case BTLessEqualStrategyNumber:
				*hi = Min(*hi, v);
				break;
			case BTEqualStrategyNumber:
				*lo = Max(*lo, v);
				*hi = Min(*hi, v);
				break;
			case BTGreaterEqualStrategyNumber:
				*lo = Max(*lo, v);
				break;
			case BTGreaterStrategyNumber:
				if (v == PG_INT64_MAX)
					*hi = PG_INT64_MIN;
				else
					*lo = Max(*lo, v + 1);
				break;
		}
	}
}

/*
 * The positions [*lo, *hi] a scan's keys allow: when the index has the
 * position as a column (the primary key, the category index), the keys'
 * bounds on it; when it is the stream index and the keys ask only for
 * versions of one stream above its newest archived event (as the snapshot
 * sees event_store.archived_streams), the hot table's positions, so that
 * reading a stream's recent events (a stream read from a version, an
 * aggregate after its snapshot, a stream none of whose events is archived)
 * descends no range's index; else all.
 */
void
EsKeysPositionBounds(const EsCatalog *cat, const EsTiers *tiers, Oid index_oid,
					 ScanKey keys, int nkeys, Snapshot snapshot, int64 *lo, int64 *hi)
{
	int64		from;
	int64		to;

	if (index_oid == cat->position_idx || index_oid == cat->category_idx)
	{
		es_keys_int8_bounds(keys, nkeys, index_oid == cat->position_idx ? 1 : 2, lo, hi);
		return;
	}
	*lo = PG_INT64_MIN;
	*hi = PG_INT64_MAX;
	if (index_oid != cat->stream_idx || tiers->n == 1)
		return;
	for (int i = 0; i < nkeys; i++)
	{
		if (keys[i].sk_attno != 1 || keys[i].sk_strategy != BTEqualStrategyNumber ||
			(keys[i].sk_flags & SK_ISNULL))
			continue;
		/* versions start at 1; the hot table's positions where the newest range ends */
		es_keys_int8_bounds(keys, nkeys, 2, &from, &to);
		if (Max(from, 1) > EsArchivedStreamVersion(cat, DatumGetTextPP(keys[i].sk_argument),
												   snapshot))
			*lo = tiers->tier[tiers->n - 2].end;
		return;
	}
}

