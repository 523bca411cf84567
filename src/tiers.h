/*
 * tiers.h
 *	  The tiers of the event store: archived position ranges (each a table
 *	  of its own, in the tablespace it was archived to, inheriting from
 *	  event_store.events) below the hot table event_store.events.
 */
#ifndef ES_TIERS_H
#define ES_TIERS_H

#include "access/sdir.h"
#include "access/skey.h"

#include "catalog.h"
#include "utils/palloc.h"

/* one tier: a table and its four indexes, holding positions [first, end) */
typedef struct EsTier
{
	Oid			relid;
	Oid			position_idx;
	Oid			stream_idx;
	Oid			event_id_idx;
	Oid			category_idx;
	int64		first;			/* lowest position it may hold (hot: none) */
	int64		end;			/* above its highest position */
} EsTier;

/* every tier in position order: the archived ranges, then the hot table */
typedef struct EsTiers
{
	int			n;
	EsTier	   *tier;
} EsTiers;

extern Size EsArchiveShmemSize(void);
extern void EsArchiveShmemInit(void);

extern EsTiers *EsLoadTiers(const EsCatalog *cat, MemoryContext cxt);
extern const EsTiers *EsEventTiers(const EsCatalog *cat);
extern Oid	EsTierIndex(const EsCatalog *cat, const EsTier *tier, Oid index_oid);
extern void EsKeysPositionBounds(const EsCatalog *cat, const EsTiers *tiers,
								 Oid index_oid, ScanKey keys, int nkeys,
								 Snapshot snapshot, int64 *lo, int64 *hi);

/* visit tiers i from first to last in the direction's order */
#define EsTierFirst(tiers, dir) (ScanDirectionIsBackward(dir) ? (tiers)->n - 1 : 0)
#define EsTierNext(i, dir)		(ScanDirectionIsBackward(dir) ? (i) - 1 : (i) + 1)
#define EsTierValid(tiers, i)	((i) >= 0 && (i) < (tiers)->n)
#define EsTierOverlaps(t, lo, hi)	((t)->first <= (hi) && (t)->end > (lo))

#endif							/* ES_TIERS_H */
