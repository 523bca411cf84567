/*
 * read.c
 *	  Reads: stream_version, read_stream, read_all, read_category,
 *	  read_correlated, head_position and wait_for_events.
 *
 * All reads are direct index scans on event_store.events whose rows are
 * copied into the caller's tuplestore (results.c); read_correlated first
 * scans the correlation's runs, event_store.correlations, for the positions
 * to read.  read_all and read_category are gap-safe: they stop at the safe
 * head of position.c and scan with a snapshot taken after computing it (see
 * position.c for why that is enough).  A REPEATABLE READ or SERIALIZABLE
 * reader additionally stops at the first event its transaction snapshot
 * cannot see, so its cursor never passes an event that committed after the
 * transaction began.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "append.h"
#include "catalog.h"
#include "grants.h"
#include "pg_mirror.h"
#include "position.h"
#include "read.h"
#include "results.h"
#include "roles.h"
#include "stream_state.h"
#include "tiers.h"
#include "upcast.h"

PG_FUNCTION_INFO_V1(es_stream_version);
PG_FUNCTION_INFO_V1(es_read_stream);
PG_FUNCTION_INFO_V1(es_read_all);
PG_FUNCTION_INFO_V1(es_read_category);
PG_FUNCTION_INFO_V1(es_read_correlated);
PG_FUNCTION_INFO_V1(es_head_position);
PG_FUNCTION_INFO_V1(es_wait_for_events);

/* Set up a scan key on an index column, with the index's collation */
static void
es_key(ScanKey key, Relation index, AttrNumber attno, StrategyNumber strategy,
	   RegProcedure proc, Datum arg)
{
	ScanKeyEntryInitialize(key, 0, attno, strategy, InvalidOid,
						   index->rd_indcollation[attno - 1], proc, arg);
}

/* Does the event type pass the filter? */
bool
EsTypeMatches(const EsTypeFilter *filter, Datum event_type)
{
	text	   *t;
	Size		len;

	if (filter->ntypes < 0)
		return true;
	t = DatumGetTextPP(event_type);
	len = VARSIZE_ANY_EXHDR(t);
	for (int i = 0; i < filter->ntypes; i++)
	{
		text	   *f = filter->types[i];

		if (EsTextIs(f, VARDATA_ANY(t), len))
			return true;
	}
	return false;
}

/* Decode the event_types argument; NULL means no filter */
static void
es_parse_type_filter(FunctionCallInfo fcinfo, int argno, EsTypeFilter *filter)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	filter->ntypes = -1;
	filter->types = NULL;
	if (PG_ARGISNULL(argno))
		return;
	n = EsArgTextArray(fcinfo, argno, "event_types", &elems, &nulls);
	filter->types = palloc(sizeof(text *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("event_types must not contain nulls"),
					 errdetail("Element %d is null.", i + 1)));
		filter->types[i] = DatumGetTextPP(elems[i]);
	}
	filter->ntypes = n;
}

/* Decode a max_count argument: NULL means unlimited, negative is an error */
static int64
es_parse_max_count(FunctionCallInfo fcinfo, int argno, bool is_int8)
{
	int64		v;

	if (PG_ARGISNULL(argno))
		return -1;
	v = is_int8 ? PG_GETARG_INT64(argno) : (int64) PG_GETARG_INT32(argno);
	EsRejectNegative(v, "max_count", "Pass NULL to read without a limit.");
	return v;
}

/* The optional trailing "raw" argument */
static bool
es_parse_raw(FunctionCallInfo fcinfo, int argno)
{
	EsRequireArg(fcinfo, argno, "raw");
	return PG_GETARG_BOOL(argno);
}

/*
 * May a stored row (from an EsRowCallback) be used as an event_store.event
 * datum byte for byte?  Not when it has out-of-line values (a composite
 * datum holds its values inline) or fewer columns than the row type (a
 * column added since it was written reads as its default, not as null).
 */
static bool
es_stored_row_usable(HeapTuple stored)
{
	return !HeapTupleHasExternal(stored) &&
		HeapTupleHeaderGetNatts(stored->t_data) == Natts_es_event;
}

/*
 * An archived row that the transaction snapshot cannot see may still be an
 * event it sees: one that archive_events() moved after the snapshot was
 * taken.  The snapshot then still sees the event's row in the hot table
 * (deleted by the move): look it up by position.
 */
static bool
es_moved_but_visible(const EsCatalog *cat, const EsTier *tier, TupleTableSlot *slot,
					 Snapshot xact_snapshot)
{
	ScanKeyData key;
	Datum		position;
	bool		null;
	bool		visible;
	Relation	heap;
	Relation	index;

	if (tier->relid == cat->events_relid)
		return false;
	heap = table_open(cat->events_relid, AccessShareLock);
	index = index_open(cat->position_idx, AccessShareLock);
	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ,
				slot_getattr(slot, Anum_es_global_position, &null));
	visible = EsIndexOnlyFirst(heap, index, xact_snapshot, &key, 1, ForwardScanDirection,
							   1, Anum_es_global_position, &position);
	index_close(index, AccessShareLock);
	table_close(heap, AccessShareLock);
	return visible;
}

/* One tier's scan: opened for the first range that reaches the tier */
typedef struct EsTierScan
{
	Relation	heap;			/* NULL: not opened yet */
	Relation	index;			/* NULL with tids */
	IndexScanDesc scan;
	EsPageFetch *fetch;
	TupleTableSlot *slot;
} EsTierScan;

/*
 * A scan of the events for one spec: its tiers (loaded once, after the
 * snapshot) and each tier's heap, index and index scan, opened once and
 * rescanned for every position range the caller asks for (es_scan_range).
 */
typedef struct EsEventScan
{
	const EsCatalog *cat;
	EsScanSpec *spec;
	const EsTiers *tiers;
	EsTierScan *open;			/* one per tier */
	MemoryContext rowcxt;
	bool		upcast;
	/* the values a callback needs along with a stored row (at least the filter's) */
	int			leading;
} EsEventScan;

/* Begin a scan of the events for spec (its keys are given per range) */
static void
es_scan_begin(EsEventScan *s, const EsCatalog *cat, EsScanSpec *spec)
{
	Assert(IsMVCCSnapshot(spec->snapshot));
	s->cat = cat;
	s->spec = spec;
	s->upcast = !spec->raw && EsUpcastersExist();
	s->leading = spec->leading_values <= 0 ? Natts_es_event :
		Max(spec->leading_values,
			spec->filter.ntypes >= 0 ? Anum_es_event_type : Anum_es_stream_id);
	s->rowcxt = AllocSetContextCreate(CurrentMemoryContext, "event_store row",
									  ALLOCSET_DEFAULT_SIZES);
	/* the tiers, in scan order (after the snapshot: see archive.c) */
	s->tiers = EsEventTiers(cat);
	s->open = palloc0(sizeof(EsTierScan) * s->tiers->n);
}

/*
 * The tier's scan positioned at the start of spec's keys: opened the first
 * time, rescanned with the keys after that (the same number of keys).
 */
static EsTierScan *
es_tier_scan(EsEventScan *s, int tier)
{
	EsScanSpec *spec = s->spec;
	const EsTier *t = &s->tiers->tier[tier];
	EsTierScan *ts = &s->open[tier];

	if (ts->heap != NULL)
	{
		Assert(ts->scan != NULL && ts->scan->numberOfKeys == spec->nkeys);
		index_rescan(ts->scan, spec->keys, spec->nkeys, NULL, 0);
		EsPageFetchRescan(ts->fetch);
		return ts;
	}
	ts->heap = table_open(t->relid, AccessShareLock);
	ts->slot = table_slot_create(ts->heap, NULL);
	if (spec->tids != NULL)
	{
		/* rows by TID: the caller knows where they are */
		ts->fetch = EsPageFetchBeginTids(ts->heap, spec->snapshot, spec->tids, spec->ntids);
	}
	else
	{
		ts->index = index_open(EsTierIndex(s->cat, t, spec->index_oid), AccessShareLock);
		ts->scan = index_beginscan(ts->heap, ts->index, spec->snapshot, spec->nkeys, 0);
		index_rescan(ts->scan, spec->keys, spec->nkeys, NULL, 0);
		ts->fetch = EsPageFetchBegin(ts->scan, ts->heap, spec->direction);
	}
	if (spec->skip != NULL)
		EsPageFetchSkip(ts->fetch, spec->skip, spec->skip_arg);
	return ts;
}

/* End the scan: close what es_tier_scan opened */
static void
es_scan_end(EsEventScan *s)
{
	for (int tier = s->tiers->n - 1; tier >= 0; tier--)
	{
		EsTierScan *ts = &s->open[tier];

		if (ts->heap == NULL)
			continue;
		ExecDropSingleTupleTableSlot(ts->slot);
		EsPageFetchEnd(ts->fetch);
		if (ts->scan != NULL)
		{
			index_endscan(ts->scan);
			index_close(ts->index, AccessShareLock);
		}
		table_close(ts->heap, AccessShareLock);
	}
	pfree(s->open);
	MemoryContextDelete(s->rowcxt);
}

/*
 * Run the scan's index scan with spec's keys (a range of positions, say)
 * over each tier of the events (archive.c) the keys reach, in the scan's
 * direction, and hand every (upcast unless spec->raw) event that passes
 * the type filter to the callback, until it returns false or
 * spec->max_count events were handed over.  Returns how many were.
 */
static int64
es_scan_range(EsEventScan *s, EsRowCallback callback, void *arg)
{
	const EsCatalog *cat = s->cat;
	EsScanSpec *spec = s->spec;
	const EsTiers *tiers = s->tiers;
	int64		emitted = 0;
	int64		lo;
	int64		hi;
	bool		done = false;
	MemoryContext oldcxt;
	bool		upcast = s->upcast;
	Datum		values[Natts_es_event];
	bool		isnull[Natts_es_event];

	EsKeysPositionBounds(cat, tiers, spec->index_oid, spec->keys, spec->nkeys,
						 spec->snapshot, &lo, &hi);

	for (int tier = EsTierFirst(tiers, spec->direction);
		 EsTierValid(tiers, tier) && !done; tier = EsTierNext(tier, spec->direction))
	{
		const EsTier *t = &tiers->tier[tier];
		Relation	heap;
		EsPageFetch *fetch;
		TupleTableSlot *slot;
		EsTierScan *ts;

		if (spec->tids != NULL ? t->relid != cat->events_relid : !EsTierOverlaps(t, lo, hi))
			continue;
		if (spec->max_count >= 0 && emitted >= spec->max_count)
			break;
		ts = es_tier_scan(s, tier);
		heap = ts->heap;
		fetch = ts->fetch;
		slot = ts->slot;

		for (;;)
		{
			bool		keep_going;
			HeapTuple	stored;
			int			natts;

			if (spec->max_count >= 0)
			{
				if (emitted >= spec->max_count)
				{
					done = true;
					break;
				}
				EsPageFetchLimit(fetch, (int) Min(spec->max_count - emitted, MaxHeapTuplesPerPage));
			}
			if (!EsPageFetchNext(fetch, slot))
				break;
			CHECK_FOR_INTERRUPTS();
			/* (before the transaction snapshot: a row not wanted stops nothing) */
			if (spec->match != NULL && !spec->match(slot, spec->match_arg))
				continue;
			if (spec->xact_snapshot != NULL &&
				!table_tuple_satisfies_snapshot(heap, slot, spec->xact_snapshot) &&
				!es_moved_but_visible(cat, t, slot, spec->xact_snapshot))
			{
				spec->halted = true;
				done = true;
				break;
			}
			if (spec->denied != NULL)
			{
				bool		null;

				if (EsStreamDenied(spec->denied,
								   DatumGetTextPP(slot_getattr(slot, Anum_es_stream_id, &null))))
					continue;
			}

			if (!upcast && spec->direct != NULL)
			{
				/* fast path: the stored row is the result row */
				if (spec->filter.ntypes >= 0)
				{
					bool		null;

					if (!EsTypeMatches(&spec->filter,
									   slot_getattr(slot, Anum_es_event_type, &null)))
						continue;
				}
				tuplestore_puttupleslot(spec->direct, slot);
				emitted++;
				continue;
			}

			/* the stored row, if it can be handed on as an event as it is */
			stored = NULL;
			if (cat->stored_rows_are_events)
			{
				stored = ExecFetchSlotHeapTuple(slot, false, NULL);
				if (!es_stored_row_usable(stored))
					stored = NULL;
			}
			natts = (stored != NULL && !upcast) ? s->leading : Natts_es_event;
			slot_getsomeattrs(slot, natts);
			memcpy(values, slot->tts_values, sizeof(Datum) * natts);
			memcpy(isnull, slot->tts_isnull, sizeof(bool) * natts);
			spec->current_position = DatumGetInt64(values[Anum_es_global_position - 1]);

			MemoryContextReset(s->rowcxt);
			oldcxt = MemoryContextSwitchTo(s->rowcxt);
			if (upcast && EsUpcastRow(values, isnull))
				stored = NULL;
			if (!EsTypeMatches(&spec->filter, values[Anum_es_event_type - 1]))
			{
				MemoryContextSwitchTo(oldcxt);
				continue;
			}
			keep_going = callback(values, isnull, stored, arg);
			MemoryContextSwitchTo(oldcxt);
			emitted++;
			if (!keep_going)
			{
				done = true;
				break;
			}
		}
		/* the slot holds no row of the tier's pinned page into the next range */
		ExecClearTuple(slot);
	}
	return emitted;
}

/*
 * Run one index scan over each tier of the events (archive.c) in the
 * scan's direction and hand every (upcast unless
 * spec->raw) event that passes the type filter to the callback, until it
 * returns false or max_count events were handed over.  Returns how many were.
 */
static int64
es_scan_events(const EsCatalog *cat, EsScanSpec *spec, EsRowCallback callback,
			   void *arg)
{
	EsEventScan s;
	int64		emitted;

	es_scan_begin(&s, cat, spec);
	emitted = es_scan_range(&s, callback, arg);
	es_scan_end(&s);
	return emitted;
}

/*
 * Scan events (see es_scan_events) in a callback scope: the callbacks run
 * for the scan's events -- upcasters, and the handlers and reducers the
 * row callback calls -- share one GUC nest level, rolled back when the scan
 * ends (see EsBecomeRole).
 */
int64
EsScanEvents(const EsCatalog *cat, EsScanSpec *spec, EsRowCallback callback,
			 void *arg)
{
	int			level = EsCallbackScopeBegin();
	volatile int64 emitted = 0;

	PG_TRY();
	{
		emitted = es_scan_events(cat, spec, callback, arg);
	}
	PG_CATCH();
	{
		EsCallbackScopeAbandon();
		PG_RE_THROW();
	}
	PG_END_TRY();
	EsCallbackScopeEnd(level);
	return emitted;
}

/*
 * An event as an event_store.event datum, in the current memory context: a
 * copy of the stored row when the scan handed one over, else formed from
 * values.
 */
Datum
EsEventDatum(TupleDesc event_desc, Datum *values, bool *isnull, HeapTuple stored)
{
	if (stored != NULL)
		return heap_copy_tuple_as_datum(stored, event_desc);
	return HeapTupleGetDatum(heap_form_tuple(event_desc, values, isnull));
}

/* Row callback of the read functions: into the SRF's tuplestore */
static bool
es_emit_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) arg;

	if (stored != NULL)
		tuplestore_puttuple(rsinfo->setResult, stored);
	else
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, isnull);
	return true;
}

/* Scan into the SRF result */
static void
es_emit_scan(FunctionCallInfo fcinfo, const EsCatalog *cat, EsScanSpec *spec)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	spec->direct = rsinfo->setResult;
	(void) EsScanEvents(cat, spec, es_emit_row, rsinfo);
}

/* SQL: event_store.stream_version(stream_id text) RETURNS bigint */
Datum
es_stream_version(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);

	EsCheckStreamAccess(stream_id, ES_PRIV_READ);
	PG_RETURN_INT64(EsLatestStreamVersion(EsGetCatalog(), stream_id,
										  GetActiveSnapshot()));
}

/*
 * SQL: event_store.read_stream(stream_id text, from_version bigint,
 *		max_count bigint, backward boolean, raw boolean) RETURNS SETOF event
 */
Datum
es_read_stream(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);
	const EsCatalog *cat;
	EsScanSpec	spec;
	Relation	index;
	bool		backward;
	bool		has_from = !PG_ARGISNULL(1);
	int64		from_version = has_from ? PG_GETARG_INT64(1) : 0;
	bool		deleted;
	int64		start_after;

	EsRejectNegative(from_version, "from_version",
					 "Stream versions start at 1; pass NULL to start at the first (or, backward, the last) event.");
	EsRequireArg(fcinfo, 3, "backward");
	backward = PG_GETARG_BOOL(3);
	EsCheckStreamAccess(stream_id, ES_PRIV_READ);

	memset(&spec, 0, sizeof(spec));
	spec.max_count = es_parse_max_count(fcinfo, 2, true);
	spec.raw = es_parse_raw(fcinfo, 4);
	spec.filter.ntypes = -1;

	cat = EsGetCatalog();
	EsInitResultSet(fcinfo);

	/* a deleted stream reads as empty; a reopened one from after its tombstone */
	if (EsStreamLifecycle(stream_id, &deleted, &start_after) && deleted)
		return (Datum) 0;

	spec.index_oid = cat->stream_idx;
	spec.direction = backward ? BackwardScanDirection : ForwardScanDirection;
	spec.snapshot = GetActiveSnapshot();
	index = index_open(cat->stream_idx, AccessShareLock);
	es_key(&spec.keys[0], index, 1, BTEqualStrategyNumber, F_TEXTEQ,
		   PointerGetDatum(stream_id));
	spec.nkeys = 1;
	if (has_from)
	{
		es_key(&spec.keys[1], index, 2,
			   backward ? BTLessEqualStrategyNumber : BTGreaterEqualStrategyNumber,
			   backward ? F_INT8LE : F_INT8GE, Int64GetDatum(from_version));
		spec.nkeys = 2;
	}
	if (start_after > 0)
		es_key(&spec.keys[spec.nkeys++], index, 2, BTGreaterStrategyNumber,
			   F_INT8GT, Int64GetDatum(start_after));
	index_close(index, AccessShareLock);

	es_emit_scan(fcinfo, cat, &spec);
	return (Datum) 0;
}

/*
 * Common part of read_all and read_category: the position range
 * (after_position, safe head], scanned with a snapshot taken after the head
 * was computed.
 */
static void
es_read_positions(FunctionCallInfo fcinfo, EsScanSpec *spec,
				  const EsCatalog *cat, Relation index, AttrNumber pos_attno,
				  int64 after_position)
{
	int64		head;
	Snapshot	latest;

	head = EsSafeHead();
	if (head <= after_position)
		return;

	es_key(&spec->keys[spec->nkeys++], index, pos_attno,
		   BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after_position));
	es_key(&spec->keys[spec->nkeys++], index, pos_attno,
		   BTLessEqualStrategyNumber, F_INT8LE, Int64GetDatum(head));

	/* the snapshot must be taken after the head: it then sees every commit below it */
	latest = RegisterSnapshot(GetLatestSnapshot());
	spec->snapshot = latest;
	spec->xact_snapshot = IsolationUsesXactSnapshot() ? GetTransactionSnapshot() : NULL;
	spec->direction = ForwardScanDirection;
	es_emit_scan(fcinfo, cat, spec);
	UnregisterSnapshot(latest);
}

/* Decode after_position */
static int64
es_get_after_position(FunctionCallInfo fcinfo, int argno)
{
	int64		after;

	EsRequireArg(fcinfo, argno, "after_position");
	after = PG_GETARG_INT64(argno);
	EsRejectNegative(after, "after_position", "Pass 0 to read from the beginning.");
	return after;
}

/*
 * SQL: event_store.read_all(after_position bigint, max_count int,
 *		event_types text[], raw boolean) RETURNS SETOF event
 */
Datum
es_read_all(PG_FUNCTION_ARGS)
{
	int64		after = es_get_after_position(fcinfo, 0);
	const EsCatalog *cat;
	EsScanSpec	spec;
	Relation	index;

	memset(&spec, 0, sizeof(spec));
	spec.max_count = es_parse_max_count(fcinfo, 1, false);
	es_parse_type_filter(fcinfo, 2, &spec.filter);
	spec.raw = es_parse_raw(fcinfo, 3);

	cat = EsGetCatalog();
	EsInitResultSet(fcinfo);
	if (spec.max_count == 0 || spec.filter.ntypes == 0)
		return (Datum) 0;
	/* events of categories the caller may not read are left out */
	spec.denied = EsDeniedCategories(GetUserId());

	spec.index_oid = cat->position_idx;
	index = index_open(cat->position_idx, AccessShareLock);
	es_read_positions(fcinfo, &spec, cat, index, 1, after);
	index_close(index, AccessShareLock);
	return (Datum) 0;
}

/*
 * SQL: event_store.read_category(category text, after_position bigint,
 *		max_count int, event_types text[], raw boolean) RETURNS SETOF event
 */
Datum
es_read_category(PG_FUNCTION_ARGS)
{
	text	   *category;
	int64		after;
	const EsCatalog *cat;
	EsScanSpec	spec;
	Relation	index;

	category = EsGetRequiredText(fcinfo, 0, "category");
	EsCheckCategory(category, "Use read_stream() to read one stream.");
	after = es_get_after_position(fcinfo, 1);

	memset(&spec, 0, sizeof(spec));
	spec.max_count = es_parse_max_count(fcinfo, 2, false);
	es_parse_type_filter(fcinfo, 3, &spec.filter);
	spec.raw = es_parse_raw(fcinfo, 4);
	EsCheckStreamAccess(category, ES_PRIV_READ);	/* its own category */

	cat = EsGetCatalog();
	EsInitResultSet(fcinfo);
	if (spec.max_count == 0 || spec.filter.ntypes == 0)
		return (Datum) 0;

	spec.index_oid = cat->category_idx;
	index = index_open(cat->category_idx, AccessShareLock);
	es_key(&spec.keys[0], index, 1, BTEqualStrategyNumber, F_TEXTEQ,
		   PointerGetDatum(category));
	spec.nkeys = 1;
	es_read_positions(fcinfo, &spec, cat, index, 2, after);
	index_close(index, AccessShareLock);
	return (Datum) 0;
}

/* What es_correlation_match compares an event's correlation id with */
typedef struct EsCorrelationMatch
{
	text	   *correlation_id;
	MemoryContext cxt;			/* for a row's detoasted metadata; reset */
} EsCorrelationMatch;

/*
 * Is the event's metadata "correlationId" (its text, as metadata ->>
 * 'correlationId' gives it) the one read_correlated reads?  Its runs give
 * positions; what is there is checked again, so that a read stays right
 * whatever became of the events of a run (some removed, say).
 */
static bool
es_correlation_match(TupleTableSlot *slot, void *arg)
{
	EsCorrelationMatch *m = (EsCorrelationMatch *) arg;
	MemoryContext oldcxt;
	bool		null;
	Datum		metadata = slot_getattr(slot, Anum_es_metadata, &null);
	const char *id;
	int			len;
	bool		same;

	if (null)
		return false;
	oldcxt = MemoryContextSwitchTo(m->cxt);
	same = EsCorrelationText(DatumGetJsonbP(metadata), &id, &len) &&
		EsTextIs(m->correlation_id, id, len);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextReset(m->cxt);
	return same;
}

/*
 * The events of one correlation in position order, after after_position and
 * at most at head, into the SRF's result: the correlation's runs
 * (event_store.correlations) with last_position > after_position in index
 * order, which is position order (the runs of different batches never
 * overlap), and for each the events of its positions in the range, through
 * the position index of every tier (as read_all reads them) with spec's
 * snapshots, grants and limit: one scan of the events whose tiers' index
 * scans are opened once and rescanned run after run.  Stops when spec->max_count events were
 * read, at a run beyond the head, or where a REPEATABLE READ reader's
 * transaction snapshot stops the scan.
 */
static void
es_read_runs(FunctionCallInfo fcinfo, const EsCatalog *cat, EsScanSpec *spec,
			 text *correlation_id, int64 after, int64 head)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int64		max_count = spec->max_count;
	int64		emitted = 0;
	Relation	runs;
	Relation	index;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData keys[2];
	EsCorrelationMatch match;
	EsEventScan events;

	match.correlation_id = correlation_id;
	match.cxt = AllocSetContextCreate(CurrentMemoryContext, "event_store correlation check",
									  ALLOCSET_SMALL_SIZES);
	spec->match = es_correlation_match;
	spec->match_arg = &match;
	spec->index_oid = cat->position_idx;
	spec->direction = ForwardScanDirection;
	spec->direct = rsinfo->setResult;
	spec->nkeys = 2;
	es_scan_begin(&events, cat, spec);

	runs = table_open(cat->correlations_relid, AccessShareLock);
	index = index_open(cat->correlations_idx, AccessShareLock);
	slot = table_slot_create(runs, NULL);
	es_key(&keys[0], index, 1, BTEqualStrategyNumber, F_TEXTEQ,
		   PointerGetDatum(correlation_id));
	es_key(&keys[1], index, 2, BTGreaterStrategyNumber, F_INT8GT, Int64GetDatum(after));
	scan = index_beginscan(runs, index, spec->snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	while (emitted < max_count && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		null;
		int64		first = DatumGetInt64(slot_getattr(slot, Anum_es_run_first_position, &null));
		int64		last = DatumGetInt64(slot_getattr(slot, Anum_es_run_last_position, &null));

		CHECK_FOR_INTERRUPTS();
		/* the next runs come after this one: beyond the head too */
		if (first > head)
			break;
		ScanKeyInit(&spec->keys[0], 1, BTGreaterEqualStrategyNumber, F_INT8GE,
					Int64GetDatum(Max(first, after + 1)));
		ScanKeyInit(&spec->keys[1], 1, BTLessEqualStrategyNumber, F_INT8LE,
					Int64GetDatum(Min(last, head)));
		spec->max_count = max_count - emitted;
		emitted += es_scan_range(&events, es_emit_row, rsinfo);
		if (spec->halted)
			break;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	table_close(runs, AccessShareLock);
	es_scan_end(&events);
	MemoryContextDelete(match.cxt);
}

/*
 * SQL: event_store.read_correlated(correlation_id text, after_position
 *		bigint, max_count int) RETURNS SETOF event
 *
 * Every event whose metadata "correlationId" is correlation_id, in position
 * order, gap-safe like read_all (the same horizon, the snapshot taken after
 * it, the transaction snapshot's stop), read through the correlation's runs
 * (es_read_runs); events of categories the caller may not read are left
 * out, and events are upcast like every read's.
 */
Datum
es_read_correlated(PG_FUNCTION_ARGS)
{
	text	   *correlation_id;
	int64		after;
	const EsCatalog *cat;
	EsScanSpec	spec;
	int64		head;
	Snapshot	latest;
	int			level;

	correlation_id = EsGetRequiredText(fcinfo, 0, "correlation_id");
	after = es_get_after_position(fcinfo, 1);
	EsRequireArg(fcinfo, 2, "max_count");
	if (PG_GETARG_INT32(2) <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be positive"),
				 errdetail("max_count is %d.", PG_GETARG_INT32(2)),
				 errhint("Page through a long correlation with after_position.")));

	cat = EsGetCatalog();
	if (!OidIsValid(cat->correlations_relid) || !OidIsValid(cat->correlations_idx))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" does not exist", ES_SCHEMA_NAME,
						ES_CORRELATIONS_TABLE),
				 errdetail("The schema of event_store is from before version 0.3.0."),
				 errhint("Run ALTER EXTENSION event_store UPDATE.")));

	memset(&spec, 0, sizeof(spec));
	spec.max_count = PG_GETARG_INT32(2);
	spec.filter.ntypes = -1;
	EsInitResultSet(fcinfo);
	/* events of categories the caller may not read are left out */
	spec.denied = EsDeniedCategories(GetUserId());

	head = EsSafeHead();
	if (head <= after)
		return (Datum) 0;
	/* the snapshot must be taken after the head: it then sees every commit below it */
	latest = RegisterSnapshot(GetLatestSnapshot());
	spec.snapshot = latest;
	spec.xact_snapshot = IsolationUsesXactSnapshot() ? GetTransactionSnapshot() : NULL;

	/* one callback scope for every run's scan (see EsScanEvents) */
	level = EsCallbackScopeBegin();
	PG_TRY();
	{
		es_read_runs(fcinfo, cat, &spec, correlation_id, after, head);
	}
	PG_CATCH();
	{
		EsCallbackScopeAbandon();
		PG_RE_THROW();
	}
	PG_END_TRY();
	EsCallbackScopeEnd(level);
	UnregisterSnapshot(latest);
	return (Datum) 0;
}

/* SQL: event_store.head_position() RETURNS bigint */
Datum
es_head_position(PG_FUNCTION_ARGS)
{
	(void) EsGetCatalog();
	PG_RETURN_INT64(EsSafeHead());
}

/*
 * SQL: event_store.wait_for_events(after_position bigint, timeout interval)
 *		RETURNS bigint
 */
Datum
es_wait_for_events(PG_FUNCTION_ARGS)
{
	int64		after = es_get_after_position(fcinfo, 0);
	Interval   *timeout;
	double		ms;

	EsRequireArg(fcinfo, 1, "timeout");
	timeout = PG_GETARG_INTERVAL_P(1);
	/* in milliseconds, as a double: no overflow for any interval */
	ms = (double) timeout->time / 1000.0 +
		((double) timeout->day + (double) timeout->month * DAYS_PER_MONTH) *
		(double) (SECS_PER_DAY * 1000);
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	/* a wait longer than a day is still a finite wait (and fits a long) */
	if (ms > (double) INT_MAX)
		ms = (double) INT_MAX;
	(void) EsGetCatalog();
	PG_RETURN_INT64(EsWaitForHead(after, (long) ms));
}

/*
 * Does an event (values in event_store.event order, at least through
 * event_type) pass the filter: one of its event types (if any) and one of
 * its categories (if any)?
 */
bool
EsFilterMatches(const EsEventFilter *f, Datum *values)
{
	if (!EsTypeMatches(&f->types, values[Anum_es_event_type - 1]))
		return false;
	if (f->ncategories >= 0)
	{
		text	   *sid = DatumGetTextPP(values[Anum_es_stream_id - 1]);
		int			clen = EsCategoryLen(sid);

		for (int i = 0; i < f->ncategories; i++)
			if (EsTextIs(f->categories[i], VARDATA_ANY(sid), clen))
				return true;
		return false;
	}
	return true;
}

/* The leading values EsFilterMatches reads of a stored row (EsScanSpec) */
int
EsFilterLeadingValues(const EsEventFilter *f)
{
	return f->types.ntypes >= 0 ? Anum_es_event_type : Anum_es_stream_id;
}
