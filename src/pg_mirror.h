/*
 * pg_mirror.h
 *	  What event_store does by hand that a PostgreSQL core routine does.
 */
#ifndef ES_PG_MIRROR_H
#define ES_PG_MIRROR_H

#include "access/genam.h"
#include "access/relscan.h"
#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/relcache.h"
#include "utils/snapshot.h"

extern void EsLockAcceptingInvalidations(const LOCKTAG *tag, LOCKMODE mode);

extern void EsInsertRows(Relation rel, int n, int natts, Datum *rows,
						 bool *nulls, volatile int *current);

extern bool EsIndexOnlyFirst(Relation heap, Relation index, Snapshot snapshot,
							 ScanKey keys, int nkeys, ScanDirection direction,
							 AttrNumber index_attno, AttrNumber heap_attno,
							 Datum *value);

/* index scans whose heap side is read a page at a time */
typedef struct EsPageFetch EsPageFetch;

/*
 * A stored row the scan's caller does not want whatever its visibility
 * (true: skipped): tested under the page's share lock, before the row's
 * visibility, on rows that are the only version of theirs (not HOT-updated)
 */
typedef bool (*EsFetchSkip) (HeapTuple tuple, TupleDesc desc, void *arg);

extern EsPageFetch *EsPageFetchBegin(IndexScanDesc scan, Relation heap,
									 ScanDirection direction);
extern EsPageFetch *EsPageFetchBeginTids(Relation heap, Snapshot snapshot,
										 ItemPointer tids, int ntids);
extern void EsPageFetchRescan(EsPageFetch *f);
extern void EsPageFetchLimit(EsPageFetch *f, int max_run);
extern void EsPageFetchSkip(EsPageFetch *f, EsFetchSkip skip, void *arg);
extern bool EsPageFetchNext(EsPageFetch *f, TupleTableSlot *slot);
extern void EsPageFetchEnd(EsPageFetch *f);

extern void EsStatementTriggerData(TriggerData *td, Trigger *trig, Relation rel,
								   char *name, Oid fn, char *newtable,
								   Tuplestorestate *rows);

/* bytes before the first element of a one-dimensional array without nulls */
#define ES_ARRAY_HEADER_BYTES	ARR_OVERHEAD_NONULLS(1)

extern ArrayType *EsFinishArray(char *buf, Size len, int n, Oid elemtype);

#endif							/* ES_PG_MIRROR_H */
