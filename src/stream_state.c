/*
 * stream_state.c
 *	  The state of a stream beyond its events, as the hot paths see it:
 *	  deleted (appends refused, SE003) and the version its reads start after
 *	  once reopened, from event_store.stream_metadata; and whether events are
 *	  being removed right now (purge or retention, lifecycle.c), which the
 *	  immutability trigger lets through.  While stream_metadata is empty
 *	  (the usual case) append() and the reads skip it after one cached
 *	  check; otherwise they probe its primary key.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "catalog.h"
#include "errors.h"
#include "registry.h"
#include "roles.h"
#include "stream_state.h"

/* Set while purge or retention deletes events (see es_refuse_modification) */
static bool removal_in_progress = false;

bool
EsRemovalInProgress(void)
{
	return removal_in_progress;
}

/* lifecycle.c: its own DELETE of events starts (true) or ended (false) */
void
EsSetRemovalInProgress(bool on)
{
	removal_in_progress = on;
}

/* Whether stream_metadata has rows: cached, reloaded when it changes */
static EsRegistry meta_registry = {"stream_metadata"};
static bool meta_any = false;

static void
es_meta_load(void)
{
	EsUserSwitch sw;

	meta_any = false;
	if (EsGetCatalog()->schema_version < ES_SCHEMA_0_2)
		return;					/* a schema from before stream metadata */
	EsSpiConnect(&sw);
	if (SPI_execute("SELECT 1 FROM event_store.stream_metadata LIMIT 1", true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.stream_metadata failed");
	meta_any = SPI_processed > 0;
	EsSpiFinish(&sw);
}

/*
 * The lifecycle state of a stream: deleted (appends refused) and the
 * version its reads start after (0: from the beginning).  Returns false
 * when the stream has no metadata.
 */
bool
EsStreamLifecycle(text *stream_id, bool *deleted, int64 *start_after)
{
	const EsCatalog *cat = EsGetCatalog();
	Relation	rel;
	Relation	index;
	SysScanDesc scan;
	ScanKeyData key;
	HeapTuple	tup;
	bool		found = false;

	*deleted = false;
	*start_after = 0;
	EsRegistryEnsure(&meta_registry, es_meta_load);
	if (!meta_any)
		return false;

	rel = table_open(cat->metadata_relid, AccessShareLock);
	index = index_open(cat->metadata_idx, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream_id));
	key.sk_collation = index->rd_indcollation[0];
	scan = systable_beginscan_ordered(rel, index, GetLatestSnapshot(), 1, &key);
	tup = systable_getnext_ordered(scan, ForwardScanDirection);
	if (HeapTupleIsValid(tup))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;

		(void) heap_getattr(tup, 2, desc, &isnull);
		*deleted = !isnull;
		*start_after = DatumGetInt64(heap_getattr(tup, 3, desc, &isnull));
		found = true;
	}
	systable_endscan_ordered(scan);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * Error out if the stream is deleted (append() calls this under the stream
 * lock); else return the version of its tombstone if it was reopened (0)
 */
int64
EsCheckStreamNotDeleted(text *stream_id)
{
	bool		deleted;
	int64		start_after;

	if (EsStreamLifecycle(stream_id, &deleted, &start_after) && deleted)
		ereport(ERROR,
				(errcode(ERRCODE_ES_STREAM_DELETED),
				 errmsg("stream \"%s\" is deleted", text_to_cstring(stream_id)),
				 errhint("Reopen it with event_store.reopen_stream() to append to it again.")));
	return start_after;
}

/* Does any stream have state (deleted, reopened, retention settings)? */
bool
EsAnyStreamState(void)
{
	EsRegistryEnsure(&meta_registry, es_meta_load);
	return meta_any;
}

/* Tell every backend that stream_metadata changed (reload before next use) */
void
EsStreamStateChanged(void)
{
	EsRegistryChanged(&meta_registry);
}
