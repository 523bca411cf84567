/*
 * catalog.c
 *	  OIDs of the extension's own schema, tables, indexes and types, looked
 *	  up once per backend and forgotten whenever the relcache is invalidated
 *	  for one of them (DROP EXTENSION followed by CREATE EXTENSION gives new
 *	  OIDs).
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "nodes/pg_list.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "catalog.h"
#include "pg_mirror.h"
#include "tiers.h"

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
		relid == es_catalog.correlations_relid ||
		relid == es_catalog.correlations_idx ||
		relid == es_catalog.event_type_relid ||
		relid == es_catalog.metadata_relid ||
		relid == es_catalog.metadata_idx ||
		relid == es_catalog.upcasters_relid ||
		relid == es_catalog.position_mark_relid ||
		relid == es_catalog.archive_relid ||
		relid == es_catalog.archived_streams_relid ||
		relid == es_catalog.archived_streams_idx)
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
	/* missing in a schema from before 0.3.0 (until ALTER EXTENSION UPDATE) */
	es_catalog.correlations_relid = get_relname_relid(ES_CORRELATIONS_TABLE, nsp);
	es_catalog.correlations_idx = get_relname_relid(ES_CORRELATIONS_PKEY, nsp);
	es_catalog.event_type_oid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
												CStringGetDatum("event"),
												ObjectIdGetDatum(nsp));
	/* missing in a schema from before stream metadata (until ALTER EXTENSION UPDATE) */
	es_catalog.metadata_relid = get_relname_relid("stream_metadata", nsp);
	es_catalog.metadata_idx = get_relname_relid("stream_metadata_pkey", nsp);
	es_catalog.grants_relid = get_relname_relid("category_grants", nsp);
	es_catalog.upcasters_relid = get_relname_relid("upcasters", nsp);
	/* missing in a schema from before 0.3.0 (until ALTER EXTENSION UPDATE) */
	es_catalog.position_mark_relid = get_relname_relid(ES_POSITION_MARK_SEQ, nsp);
	es_catalog.archive_relid = get_relname_relid("archived_ranges", nsp);
	es_catalog.archived_streams_relid = get_relname_relid(ES_ARCHIVED_STREAMS_TABLE, nsp);
	es_catalog.archived_streams_idx = get_relname_relid(ES_ARCHIVED_STREAMS_PKEY, nsp);

	/*
	 * The schema's version, decided here, once, from what the schema has:
	 * the library serves the schema of an older version until ALTER
	 * EXTENSION event_store UPDATE (pg_extension's extversion is no guide:
	 * the update sets it before its script runs).  0.3.0 added the durable
	 * position mark and the registries' search_path columns, in one
	 * transaction; 0.2.0 added category grants and stream metadata.
	 */
	if (OidIsValid(es_catalog.position_mark_relid) &&
		get_attnum(es_catalog.upcasters_relid, "search_path") != InvalidAttrNumber)
		es_catalog.schema_version = ES_SCHEMA_0_3;
	else if (OidIsValid(es_catalog.grants_relid) && OidIsValid(es_catalog.metadata_relid))
		es_catalog.schema_version = ES_SCHEMA_0_2;
	else
		es_catalog.schema_version = ES_SCHEMA_0_1;
	/* saga_definitions.version: saga types have versions (0.3.0 on) */
	es_catalog.saga_versions =
		get_attnum(get_relname_relid("saga_definitions", nsp), "version") != InvalidAttrNumber;
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
 * The catalog, looked up again if event_store.correlations was created
 * since cat was (ALTER EXTENSION event_store UPDATE to 0.3.0 committed
 * while an append waited for its lock on the events table: a new table
 * invalidates none of the relations the catalog listens for).  Caller holds
 * a lock on the events table, which made the update's commit visible.
 */
const EsCatalog *
EsCatalogRecheckCorrelations(const EsCatalog *cat)
{
	if (OidIsValid(cat->correlations_relid) ||
		!OidIsValid(get_relname_relid(ES_CORRELATIONS_TABLE, cat->namespace_oid)))
		return cat;
	es_catalog_valid = false;
	return EsGetCatalog();
}

/*
 * Attributes attnos[0 .. natts - 1] of the first row an index scan of
 * event_store.events finds (in the given direction, visiting every tier in
 * that order), copied into the caller's memory context, or false if there
 * is none.  The keys' collations are taken from the index.
 */
bool
EsFirstEventValues(const EsCatalog *cat, Oid index_oid, Snapshot snapshot,
				   ScanKey keys, int nkeys, ScanDirection direction,
				   int natts, const AttrNumber *attnos, Datum *values)
{
	const EsTiers *tiers = EsEventTiers(cat);
	int64		lo;
	int64		hi;
	bool		found = false;

	EsKeysPositionBounds(cat, tiers, index_oid, keys, nkeys, snapshot, &lo, &hi);
	for (int i = EsTierFirst(tiers, direction); EsTierValid(tiers, i) && !found;
		 i = EsTierNext(i, direction))
	{
		const EsTier *t = &tiers->tier[i];
		Relation	heap;
		Relation	index;
		IndexScanDesc scan;
		TupleTableSlot *slot;

		if (!EsTierOverlaps(t, lo, hi))
			continue;
		heap = table_open(t->relid, AccessShareLock);
		index = index_open(EsTierIndex(cat, t, index_oid), AccessShareLock);
		for (int k = 0; k < nkeys; k++)
			keys[k].sk_collation = index->rd_indcollation[keys[k].sk_attno - 1];
		slot = table_slot_create(heap, NULL);
		scan = index_beginscan(heap, index, snapshot, nkeys, 0);
		index_rescan(scan, keys, nkeys, NULL, 0);
		if (index_getnext_slot(scan, direction, slot))
		{
			for (int a = 0; a < natts; a++)
			{
				Form_pg_attribute att = TupleDescAttr(slot->tts_tupleDescriptor, attnos[a] - 1);
				bool		isnull;
				Datum		d = slot_getattr(slot, attnos[a], &isnull);

				/* (the slot and its buffer go away below) */
				values[a] = isnull ? (Datum) 0 : datumCopy(d, att->attbyval, att->attlen);
			}
			found = true;
		}
		index_endscan(scan);
		ExecDropSingleTupleTableSlot(slot);
		index_close(index, AccessShareLock);
		table_close(heap, AccessShareLock);
	}
	return found;
}

/*
 * One attribute of the first row an index scan of event_store.events finds
 * (EsFirstEventValues), or false if there is none.
 */
bool
EsFirstEventValue(const EsCatalog *cat, Oid index_oid, Snapshot snapshot,
				  ScanKey keys, int nkeys, ScanDirection direction,
				  AttrNumber attno, Datum *value)
{
	return EsFirstEventValues(cat, index_oid, snapshot, keys, nkeys, direction,
							  1, &attno, value);
}

/*
 * A stream's version from an index whose first column is the stream id and
 * whose second is the version (heap_attno in the table), as the snapshot
 * sees it: the highest, one backward probe that reads the heap only when
 * the row's page is not all-visible; false if there is no row of the
 * stream.  A tier's (stream_id, stream_version) index, or archived_streams'
 * primary key, which includes the version.
 */
static bool
es_indexed_stream_version(Oid relid, Oid index_oid, AttrNumber heap_attno,
						  text *stream_id, Snapshot snapshot, int64 *version)
{
	Relation	heap;
	Relation	index;
	ScanKeyData key;
	Datum		value;
	bool		found;

	heap = table_open(relid, AccessShareLock);
	index = index_open(index_oid, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream_id));
	key.sk_collation = index->rd_indcollation[0];
	found = EsIndexOnlyFirst(heap, index, snapshot, &key, 1, BackwardScanDirection,
							 2, heap_attno, &value);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	if (found)
		*version = DatumGetInt64(value);
	return found;
}

/*
 * Current version of a stream (0 when it has no events) as seen by the
 * given snapshot.  The hot table first: a stream's newest event is there
 * if any of its events is.  Otherwise, when there are archived ranges,
 * event_store.archived_streams has the version of the stream's newest
 * archived event, which is its newest: removals never take a stream's
 * newest event (a purge leaves its marker above what it removes, retention
 * keeps the newest).  So one probe of that table, not one descent of each
 * range's stream index, whatever the number of ranges.
 */
int64
EsLatestStreamVersion(const EsCatalog *cat, text *stream_id, Snapshot snapshot)
{
	const EsTiers *tiers = EsEventTiers(cat);
	const EsTier *hot = &tiers->tier[tiers->n - 1];
	int64		version;

	if (es_indexed_stream_version(hot->relid, hot->stream_idx, Anum_es_stream_version,
								  stream_id, snapshot, &version))
		return version;
	if (tiers->n == 1)
		return 0;
	return EsArchivedStreamVersion(cat, stream_id, snapshot);
}

/*
 * The version of a stream's newest archived event as the snapshot sees it
 * (0 when none of its events is archived), from event_store.archived_streams:
 * archive_events() raises it in the transaction that moves the events, so
 * no archived event the snapshot sees is above it.
 */
int64
EsArchivedStreamVersion(const EsCatalog *cat, text *stream_id, Snapshot snapshot)
{
	int64		version;

	/* (archived_ranges and archived_streams came with the same version) */
	Assert(OidIsValid(cat->archived_streams_relid));
	return es_indexed_stream_version(cat->archived_streams_relid, cat->archived_streams_idx,
									 Anum_es_archived_stream_version,
									 stream_id, snapshot, &version) ? version : 0;
}
