/*
 * pg_mirror.c
 *	  The places where event_store does by hand what a PostgreSQL core
 *	  routine does, because calling the routine itself would cost too much
 *	  per event (an executor per append, a lock per heap tuple, a trigger
 *	  manager per batch).  Each routine names the core code it mirrors; when
 *	  PostgreSQL changes that code, this file is where to look.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/tableam.h"
#include "access/visibilitymap.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "pgstat.h"
#include "storage/bufmgr.h"
#include "storage/lmgr.h"
#include "storage/predicate.h"
#include "utils/array.h"
#include "utils/datum.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "pg_mirror.h"

/*
 * Take a heavyweight lock, and the first time it is taken in the
 * transaction process the invalidation messages that arrived meanwhile, so
 * that catalog changes committed by whoever held it before are seen.
 * Mirrors LockRelationOid (lmgr.c) for a lock that is not a relation's.
 */
void
EsLockAcceptingInvalidations(const LOCKTAG *tag, LOCKMODE mode)
{
	LOCALLOCK  *locallock;

	if (LockAcquireExtended(tag, mode, false, false, true, &locallock) !=
		LOCKACQUIRE_ALREADY_CLEAR)
	{
		AcceptInvalidationMessages();
		MarkLockClear(locallock);
	}
}

/*
 * Rows a multi-row insertion hands to table_multi_insert at once (COPY's
 * MAX_BUFFERED_TUPLES): bounds the memory of the heap tuples held until
 * their index entries are made.
 */
#define ES_MULTI_INSERT_ROWS 1000

/*
 * How one key column of an index is formed for the rows of a multi-row
 * insertion (es_plan_index_keys)
 */
typedef struct EsKeyPlan
{
	AttrNumber	attno;			/* a plain column (0: an expression) */
	ExprState  *expr;			/* the expression's state */
	bool		once;			/* same value for every row: evaluated once */
	bool		done;			/* ... and it was */
	Datum		value;			/* that value */
	bool		isnull;
	int16		typlen;			/* the expression's type */
	bool		typbyval;
} EsKeyPlan;

/*
 * Is a heap column the same in every row of rows[0 .. m - 1] (values of
 * natts columns each, the first at row first)?  The caller's rows, not the
 * slots: a slot's values point into its own tuple once it is in the heap.
 */
static bool
es_column_same(Relation heap, const Datum *rows, const bool *nulls, int natts,
			   int first, int m, AttrNumber attno)
{
	Form_pg_attribute att;
	Datum		v0 = rows[first * natts + attno - 1];
	bool		n0 = nulls[first * natts + attno - 1];

	if (attno <= 0 || attno > natts)
		return false;
	att = TupleDescAttr(RelationGetDescr(heap), attno - 1);
	for (int i = 1; i < m; i++)
	{
		Datum		v = rows[(first + i) * natts + attno - 1];
		bool		n = nulls[(first + i) * natts + attno - 1];

		if (n != n0)
			return false;
		if (n || v == v0)
			continue;
		if (!datumIsEqual(v, v0, att->attbyval, att->attlen))
			return false;
	}
	return true;
}

/*
 * Plan the key columns of index info for rows[first .. first + m - 1]: a
 * plain column is read from the row's slot, an expression is evaluated per
 * row, except one whose columns are the same in every row (the category
 * of a batch's stream id), which is evaluated once: index expressions are
 * immutable, so it is the value FormIndexDatum would compute for each row.
 * Returns the key column whose null test is the index's whole predicate
 * (WHERE expr IS NOT NULL, expr one of the key expressions: the row is in
 * the index when that key is not null, so the expression is evaluated once
 * instead of twice), or -1.
 */
static int
es_plan_index_keys(IndexInfo *info, EState *estate, Relation heap,
				   const Datum *rows, const bool *nulls, int natts, int first,
				   int m, EsKeyPlan *plan)
{
	ListCell   *expr_item;
	ListCell   *state_item;
	int			null_test_key = -1;
	Node	   *pred_arg = NULL;

	if (info->ii_Expressions != NIL && info->ii_ExpressionsState == NIL)
		info->ii_ExpressionsState = ExecPrepareExprList(info->ii_Expressions, estate);
	expr_item = list_head(info->ii_Expressions);
	state_item = list_head(info->ii_ExpressionsState);

	if (list_length(info->ii_Predicate) == 1 && IsA(linitial(info->ii_Predicate), NullTest))
	{
		NullTest   *nt = (NullTest *) linitial(info->ii_Predicate);

		if (nt->nulltesttype == IS_NOT_NULL && !nt->argisrow)
			pred_arg = (Node *) nt->arg;
	}

	for (int j = 0; j < info->ii_NumIndexAttrs; j++)
	{
		EsKeyPlan  *k = &plan[j];
		Node	   *expr;
		Bitmapset  *attnos = NULL;
		int			a = -1;

		memset(k, 0, sizeof(*k));
		k->attno = info->ii_IndexAttrNumbers[j];
		if (k->attno != 0)
			continue;
		expr = (Node *) lfirst(expr_item);
		k->expr = (ExprState *) lfirst(state_item);
		expr_item = lnext(info->ii_Expressions, expr_item);
		state_item = lnext(info->ii_ExpressionsState, state_item);
		if (pred_arg != NULL && null_test_key < 0 && equal(pred_arg, expr))
			null_test_key = j;
		if (m == 1)
			continue;			/* one row: nothing to share */

		get_typlenbyval(exprType(expr), &k->typlen, &k->typbyval);
		/* columns only (a whole-row or system column is never "the same") */
		pull_varattnos(expr, 1, &attnos);
		k->once = !bms_is_empty(attnos);
		while (k->once && (a = bms_next_member(attnos, a)) >= 0)
			k->once = es_column_same(heap, rows, nulls, natts, first, m,
									 a + FirstLowInvalidHeapAttributeNumber);
		bms_free(attnos);
	}
	return null_test_key;
}

/*
 * A key column of the row in econtext's scan tuple, as FormIndexDatum
 * computes it (a value evaluated once is copied out of the per-row memory)
 */
static void
es_key_value(EsKeyPlan *k, ExprContext *econtext, Datum *value, bool *isnull)
{
	if (k->attno != 0)
	{
		*value = slot_getattr(econtext->ecxt_scantuple, k->attno, isnull);
		return;
	}
	if (!k->once)
	{
		*value = ExecEvalExprSwitchContext(k->expr, econtext, isnull);
		return;
	}
	if (!k->done)
	{
		k->value = ExecEvalExprSwitchContext(k->expr, econtext, &k->isnull);
		if (!k->isnull)
			k->value = datumCopy(k->value, k->typbyval, k->typlen);
		k->done = true;
	}
	*value = k->value;
	*isnull = k->isnull;
}

/*
 * The index entries of rows slots[0 .. m - 1], already in the heap (their
 * values rows[first * natts ...]), one index after the other: all the
 * rows' entries of an index, then of the next, so that each index's path
 * from its root to the leaf the batch's entries go to is read once into the
 * CPU's caches rather than once per row.  Mirrors ExecInsertIndexTuples
 * (execIndexing.c) for an insertion that is not an update and has no ON
 * CONFLICT: the partial indexes' predicates, the expressions (FormIndexDatum,
 * with the savings of es_plan_index_keys), a unique index's check (an index
 * whose uniqueness is deferrable is checked at once, which is stricter).
 * Indexes with exclusion constraints are left to the caller.  *current is
 * set to the index of the row whose entry is being made, counted from first.
 */
static void
es_insert_index_entries(ResultRelInfo *rri, EState *estate, Relation heap,
						TupleTableSlot **slots, int m, const Datum *rows,
						const bool *nulls, int natts, int first,
						volatile int *current)
{
	ExprContext *econtext = GetPerTupleExprContext(estate);
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	EsKeyPlan	plan[INDEX_MAX_KEYS];

	for (int k = 0; k < rri->ri_NumIndices; k++)
	{
		Relation	index = rri->ri_IndexRelationDescs[k];
		IndexInfo  *info = rri->ri_IndexRelationInfo[k];
		ExprState  *predicate = NULL;
		IndexUniqueCheck check;
		int			null_test_key;

		if (index == NULL || !info->ii_ReadyForInserts)
			continue;
		Assert(info->ii_ExclusionOps == NULL);
		null_test_key = es_plan_index_keys(info, estate, heap, rows, nulls, natts,
										   first, m, plan);
		if (info->ii_Predicate != NIL && null_test_key < 0)
		{
			if (info->ii_PredicateState == NULL)
				info->ii_PredicateState = ExecPrepareQual(info->ii_Predicate, estate);
			predicate = info->ii_PredicateState;
		}
		check = index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO;

		for (int i = 0; i < m; i++)
		{
			*current = first + i;
			econtext->ecxt_scantuple = slots[i];
			if (predicate != NULL && !ExecQual(predicate, econtext))
			{
				ResetPerTupleExprContext(estate);
				continue;
			}
			/* the predicate's key first: the row may not be in the index */
			if (null_test_key >= 0)
			{
				es_key_value(&plan[null_test_key], econtext,
							 &values[null_test_key], &isnull[null_test_key]);
				if (isnull[null_test_key])
				{
					ResetPerTupleExprContext(estate);
					continue;
				}
			}
			for (int j = 0; j < info->ii_NumIndexAttrs; j++)
			{
				if (j != null_test_key)
					es_key_value(&plan[j], econtext, &values[j], &isnull[j]);
			}
			(void) index_insert(index, values, isnull, &slots[i]->tts_tid,
								heap, check, false, info);
			ResetPerTupleExprContext(estate);
		}
	}
}

/*
 * Insert n rows (natts values each, rows[i * natts ...]) into rel and its
 * indexes, with neither an executor per call nor triggers, for a table whose
 * rows need no constraint checks, defaults or generated columns.  One row
 * mirrors the single-row path of CopyFrom (copyfrom.c): table_tuple_insert,
 * then ExecInsertIndexTuples.  More rows mirror its multi-insert buffers
 * (CopyMultiInsertBufferFlush): table_multi_insert of up to
 * ES_MULTI_INSERT_ROWS rows, which fills each heap page under one lock and
 * one WAL record (XLOG_HEAP2_MULTI_INSERT, which logical decoding turns into
 * one insertion per row as it does for COPY), then the rows' index entries,
 * an index at a time (es_insert_index_entries).  *current is the index of
 * the row whose index entry is being made, for the caller's error report
 * when an index refuses it.
 */
void
EsInsertRows(Relation rel, int n, int natts, Datum *rows, bool *nulls,
			 volatile int *current)
{
	EState	   *estate = CreateExecutorState();
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	TupleDesc	desc = RelationGetDescr(rel);
	TupleDesc	slotdesc;
	CommandId	cid = GetCurrentCommandId(true);
	int			nslots = Min(n, ES_MULTI_INSERT_ROWS);
	TupleTableSlot **slots = palloc(sizeof(TupleTableSlot *) * nslots);
	bool		by_index = true;
	MemoryContext chunk_cxt = NULL;

	Assert(desc->natts == natts);
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	/* an exclusion constraint (none of ours) is checked by the executor */
	for (int k = 0; k < rri->ri_NumIndices; k++)
	{
		if (rri->ri_IndexRelationInfo[k]->ii_ExclusionOps != NULL)
			by_index = false;
	}
	/*
	 * heap tuple slots: the tuple is formed once, straight from the values.
	 * Their descriptor is a copy of the relation's, which nothing counts
	 * references to: the relation's is reference-counted, and each slot
	 * would pin it in the resource owner (a tenth of the heap's cost in a
	 * batch of 100).
	 */
	slotdesc = CreateTupleDescCopy(desc);
	for (int i = 0; i < nslots; i++)
		slots[i] = MakeSingleTupleTableSlot(slotdesc, &TTSOpsHeapTuple);

	/* more than one multi-row insertion: each one's memory is freed after it */
	if (n > nslots)
		chunk_cxt = AllocSetContextCreate(CurrentMemoryContext,
										  "event_store multi-row insertion",
										  ALLOCSET_DEFAULT_SIZES);

	for (int first = 0; first < n; first += nslots)
	{
		int			m = Min(nslots, n - first);
		MemoryContext oldcxt = CurrentMemoryContext;

		for (int i = 0; i < m; i++)
		{
			TupleTableSlot *slot = slots[i];

			ExecClearTuple(slot);
			memcpy(slot->tts_values, &rows[(first + i) * natts], sizeof(Datum) * natts);
			memcpy(slot->tts_isnull, &nulls[(first + i) * natts], sizeof(bool) * natts);
			ExecStoreVirtualTuple(slot);
		}
		if (chunk_cxt != NULL)
			MemoryContextSwitchTo(chunk_cxt);
		*current = first;
		if (m == 1)
			table_tuple_insert(rel, slots[0], cid, 0, NULL);
		else
			table_multi_insert(rel, slots, m, cid, 0, NULL);
		if (by_index)
			es_insert_index_entries(rri, estate, rel, slots, m, rows, nulls, natts,
									first, current);
		else
		{
			for (int i = 0; i < m; i++)
			{
				*current = first + i;
				(void) ExecInsertIndexTuples(rri, slots[i], estate, false, false, NULL, NIL);
				ResetPerTupleExprContext(estate);
			}
		}
		if (chunk_cxt != NULL)
		{
			MemoryContextSwitchTo(oldcxt);
			MemoryContextReset(chunk_cxt);
		}
	}

	if (chunk_cxt != NULL)
		MemoryContextDelete(chunk_cxt);
	for (int i = 0; i < nslots; i++)
		ExecDropSingleTupleTableSlot(slots[i]);
	pfree(slots);
	FreeTupleDesc(slotdesc);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
}

/*
 * The first visible row of an index scan (keys, direction), and of it the
 * value of the index's column index_attno, which is the heap's column
 * heap_attno: read from the index tuple when the visibility map says the
 * row's heap page is all-visible, from the heap otherwise.  Mirrors
 * IndexOnlyNext (nodeIndexonlyscan.c) for one row, without an executor.  A
 * large store keeps few of its heap pages in shared buffers: an append's
 * look-up of its stream's version then reads the index pages only (the
 * upper ones stay cached) and no random heap page.  The snapshot must be an
 * MVCC one; the value must be of a pass-by-value type (it is read from the
 * index tuple, which the end of the scan releases).
 */
bool
EsIndexOnlyFirst(Relation heap, Relation index, Snapshot snapshot,
				 ScanKey keys, int nkeys, ScanDirection direction,
				 AttrNumber index_attno, AttrNumber heap_attno, Datum *value)
{
	IndexScanDesc scan;
	TupleTableSlot *slot = NULL;
	Buffer		vmbuffer = InvalidBuffer;
	ItemPointer tid;
	bool		found = false;

	Assert(IsMVCCSnapshot(snapshot));
	Assert(TupleDescAttr(RelationGetDescr(heap), heap_attno - 1)->attbyval);
	scan = index_beginscan(heap, index, snapshot, nkeys, 0);
	scan->xs_want_itup = true;
	index_rescan(scan, keys, nkeys, NULL, 0);
	while ((tid = index_getnext_tid(scan, direction)) != NULL)
	{
		bool		isnull;

		CHECK_FOR_INTERRUPTS();
		if (!VM_ALL_VISIBLE(heap, ItemPointerGetBlockNumber(tid), &vmbuffer))
		{
			/* not known to be visible to all: the heap decides */
			if (slot == NULL)
				slot = table_slot_create(heap, NULL);
			if (!index_fetch_heap(scan, slot))
				continue;
			*value = slot_getattr(slot, heap_attno, &isnull);
			found = true;
			break;
		}
		/* all-visible: the index tuple has the value (btree returns it) */
		if (scan->xs_itup == NULL)
			elog(ERROR, "index \"%s\" did not return its tuple",
				 RelationGetRelationName(index));
		*value = index_getattr(scan->xs_itup, index_attno, scan->xs_itupdesc, &isnull);
		/* the heap was not read: lock its page for SERIALIZABLE as if it had been */
		PredicateLockPage(heap, ItemPointerGetBlockNumber(tid), snapshot);
		found = true;
		break;
	}
	if (BufferIsValid(vmbuffer))
		ReleaseBuffer(vmbuffer);
	index_endscan(scan);
	if (slot != NULL)
		ExecDropSingleTupleTableSlot(slot);
	return found;
}

/*
 * The heap side of an index scan, a page at a time (mirrors
 * heapam_index_fetch_tuple, called once per TID by index_fetch_heap, and
 * the page-at-a-time mode of heapgettup_pagemode): the index's TIDs that
 * follow each other on one heap page are checked under one share lock of
 * that page (the executor's index scan takes the lock once per tuple), and
 * the visible tuples are then handed out with the page pinned, not locked,
 * as a sequential scan in page-at-a-time mode does.  The index is read with
 * no heap page locked, so the lock order of index before heap holds.  Order
 * is the index's: a run ends at the first TID on another page.
 *
 * The snapshot must be an MVCC one (it sees at most one member of a HOT
 * chain).  A run is cut to max_run TIDs, so that a scan for one row does
 * not check (or, SERIALIZABLE, predicate-lock) the rest of the page.  After
 * a run that found an entry whose rows are all dead (a purged event) the
 * scan goes one TID at a time, telling the index about each dead entry as
 * the executor does, until it finds a live one.
 */
typedef struct EsPageFetch
{
	IndexScanDesc scan;
	Relation	heap;
	ScanDirection direction;
	int			max_run;		/* TIDs to read ahead at most (at least 1) */
	Buffer		buffer;			/* the page the tuples below are on */
	ItemPointerData next_tid;	/* read from the index: on another page */
	bool		have_next;
	bool		index_done;
	bool		dead_seen;		/* the last run found a dead entry */
	int			ntuples;
	int			pos;			/* next tuple to hand out */
	EsFetchSkip skip;			/* rows the caller does not want, or NULL */
	void	   *skip_arg;
	Snapshot	snapshot;
	/* TID-list mode (scan NULL): these TIDs, in this order */
	ItemPointer list;
	int			nlist;
	int			listpos;
	BlockNumber nblocks;		/* of the heap: a TID beyond is passed over */
	ItemPointerData tids[MaxHeapTuplesPerPage];
	HeapTupleData tuples[MaxHeapTuplesPerPage];
} EsPageFetch;

/* Start fetching the heap tuples of scan, a page at a time */
EsPageFetch *
EsPageFetchBegin(IndexScanDesc scan, Relation heap, ScanDirection direction)
{
	EsPageFetch *f = palloc0(sizeof(EsPageFetch));

	f->scan = scan;
	f->heap = heap;
	f->direction = direction;
	f->max_run = MaxHeapTuplesPerPage;
	f->buffer = InvalidBuffer;
	f->snapshot = scan->xs_snapshot;
	return f;
}

/*
 * Fetch the visible tuples at a list of TIDs instead, in the list's order,
 * a page at a time as above (the TIDs of one page in a row share its lock).
 * A TID whose page is beyond the heap's end, or whose line pointer holds
 * nothing visible, yields nothing; the caller checks what it gets.
 */
EsPageFetch *
EsPageFetchBeginTids(Relation heap, Snapshot snapshot, ItemPointer tids, int ntids)
{
	EsPageFetch *f = palloc0(sizeof(EsPageFetch));

	Assert(IsMVCCSnapshot(snapshot));
	f->heap = heap;
	f->direction = ForwardScanDirection;
	f->max_run = MaxHeapTuplesPerPage;
	f->buffer = InvalidBuffer;
	f->snapshot = snapshot;
	f->list = tids;
	f->nlist = ntids;
	f->nblocks = RelationGetNumberOfBlocks(heap);
	return f;
}

/*
 * Start over after the caller rescanned the index scan (index_rescan with
 * new keys): the TIDs read ahead are dropped; the page last read stays
 * pinned, for the next run that is on it.
 */
void
EsPageFetchRescan(EsPageFetch *f)
{
	Assert(f->scan != NULL);
	f->have_next = false;
	f->index_done = false;
	f->dead_seen = false;
	f->ntuples = 0;
	f->pos = 0;
}

/* Read at most max_run TIDs ahead from now on (at least 1) */
void
EsPageFetchLimit(EsPageFetch *f, int max_run)
{
	f->max_run = Max(1, Min(max_run, MaxHeapTuplesPerPage));
}

/*
 * Skip the rows skip rejects without checking their visibility: a row the
 * caller does not want is not wanted whether it is visible or not.  Only a
 * row that is the only version of its own (a normal line pointer, not
 * HOT-updated) is tested, so what is tested is what the snapshot would see,
 * if anything; the others take the ordinary path.
 */
void
EsPageFetchSkip(EsPageFetch *f, EsFetchSkip skip, void *arg)
{
	f->skip = skip;
	f->skip_arg = arg;
}

/* Is the row at tid (its page share-locked in f->buffer) one the caller skips? */
static bool
es_fetch_skipped(EsPageFetch *f, ItemPointer tid)
{
	Page		page = BufferGetPage(f->buffer);
	OffsetNumber off = ItemPointerGetOffsetNumber(tid);
	ItemId		lp;
	HeapTupleData tuple;

	if (off < FirstOffsetNumber || off > PageGetMaxOffsetNumber(page))
		return false;
	lp = PageGetItemId(page, off);
	if (!ItemIdIsNormal(lp))
		return false;
	tuple.t_data = (HeapTupleHeader) PageGetItem(page, lp);
	if (HeapTupleHeaderIsHotUpdated(tuple.t_data) || HeapTupleHeaderIsHeapOnly(tuple.t_data))
		return false;
	tuple.t_len = ItemIdGetLength(lp);
	tuple.t_self = *tid;
	tuple.t_tableOid = RelationGetRelid(f->heap);
	return f->skip(&tuple, RelationGetDescr(f->heap), f->skip_arg);
}

void
EsPageFetchEnd(EsPageFetch *f)
{
	if (BufferIsValid(f->buffer))
		ReleaseBuffer(f->buffer);
	pfree(f);
}

/* The index's next TID, or NULL at its end (then never asked again) */
static ItemPointer
es_fetch_tid(EsPageFetch *f)
{
	ItemPointer tid;

	if (f->index_done)
		return NULL;
	if (f->scan == NULL)
	{
		/* TID-list mode: the pages beyond the heap's end hold nothing */
		while (f->listpos < f->nlist &&
			   ItemPointerGetBlockNumber(&f->list[f->listpos]) >= f->nblocks)
			f->listpos++;
		if (f->listpos >= f->nlist)
		{
			f->index_done = true;
			return NULL;
		}
		return &f->list[f->listpos++];
	}
	tid = index_getnext_tid(f->scan, f->direction);
	if (tid == NULL)
		f->index_done = true;
	return tid;
}

/* Read the index's next run of TIDs on one page; false at its end */
static bool
es_fetch_run(EsPageFetch *f)
{
	ItemPointer tid;
	BlockNumber block;
	Buffer		prev = f->buffer;
	int			max_run = f->dead_seen ? 1 : f->max_run;
	int			ntids = 0;

	if (!f->have_next)
	{
		if ((tid = es_fetch_tid(f)) == NULL)
			return false;
		f->next_tid = *tid;
	}
	block = ItemPointerGetBlockNumber(&f->next_tid);
	f->tids[ntids++] = f->next_tid;
	f->have_next = false;
	while (ntids < max_run && (tid = es_fetch_tid(f)) != NULL)
	{
		if (ItemPointerGetBlockNumber(tid) != block)
		{
			f->next_tid = *tid;
			f->have_next = true;
			break;
		}
		f->tids[ntids++] = *tid;
	}

	f->buffer = ReleaseAndReadBuffer(f->buffer, f->heap, block);
	if (f->buffer != prev)
		heap_page_prune_opt(f->heap, f->buffer);
	LockBuffer(f->buffer, BUFFER_LOCK_SHARE);
	f->ntuples = 0;
	f->dead_seen = false;
	for (int i = 0; i < ntids; i++)
	{
		bool		all_dead;

		if (f->skip != NULL && es_fetch_skipped(f, &f->tids[i]))
			continue;
		if (heap_hot_search_buffer(&f->tids[i], f->heap, f->buffer,
								   f->snapshot,
								   &f->tuples[f->ntuples], &all_dead, true))
			f->ntuples++;
		else if (all_dead)
			f->dead_seen = true;
	}
	LockBuffer(f->buffer, BUFFER_LOCK_UNLOCK);
	/* the index's last TID was the only one: the index may mark it dead */
	if (f->dead_seen && ntids == 1 && !f->have_next && f->scan != NULL &&
		!f->scan->xactStartedInRecovery)
		f->scan->kill_prior_tuple = true;
	f->pos = 0;
	return true;
}

/* Store the scan's next visible tuple in slot; false at the scan's end */
bool
EsPageFetchNext(EsPageFetch *f, TupleTableSlot *slot)
{
	while (f->pos >= f->ntuples)
	{
		if (!es_fetch_run(f))
		{
			ExecClearTuple(slot);
			return false;
		}
	}
	if (f->scan != NULL)
		pgstat_count_heap_fetch(f->scan->indexRelation);
	ExecStoreBufferHeapTuple(&f->tuples[f->pos++], slot, f->buffer);
	return true;
}

/*
 * The TriggerData of an AFTER INSERT ... FOR EACH STATEMENT trigger on rel
 * whose transition table newtable holds rows, for calling trigger function
 * fn directly (a projection handler that reads its events as a table):
 * mirrors what AfterTriggerExecute (trigger.c) hands to ExecCallTriggerFunc.
 * td and trig are filled in; name is the trigger's.
 */
void
EsStatementTriggerData(TriggerData *td, Trigger *trig, Relation rel,
					   char *name, Oid fn, char *newtable,
					   Tuplestorestate *rows)
{
	memset(trig, 0, sizeof(*trig));
	trig->tgname = name;
	trig->tgfoid = fn;
	trig->tgtype = TRIGGER_TYPE_INSERT;	/* AFTER, FOR EACH STATEMENT */
	trig->tgenabled = TRIGGER_FIRES_ALWAYS;
	trig->tgnewtable = newtable;
	memset(td, 0, sizeof(*td));
	td->type = T_TriggerData;
	td->tg_event = TRIGGER_EVENT_INSERT;
	td->tg_relation = rel;
	td->tg_trigger = trig;
	td->tg_newtable = rows;
}

/*
 * Make buf, len bytes holding ES_ARRAY_HEADER_BYTES of room and then n
 * elements of type elemtype (varlena, no nulls, each padded to its type's
 * alignment), a one-dimensional array from 1: writes the header that
 * construct_md_array (arrayfuncs.c) writes, without copying the elements.
 */
ArrayType *
EsFinishArray(char *buf, Size len, int n, Oid elemtype)
{
	ArrayType  *arr = (ArrayType *) buf;

	SET_VARSIZE(arr, len);
	arr->ndim = 1;
	arr->dataoffset = 0;		/* no nulls */
	arr->elemtype = elemtype;
	ARR_DIMS(arr)[0] = n;
	ARR_LBOUND(arr)[0] = 1;
	return arr;
}
