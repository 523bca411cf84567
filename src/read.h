/*
 * read.h
 *	  Index scans over event_store.events, for the reads and the followers.
 */
#ifndef ES_READ_H
#define ES_READ_H

#include "access/htup.h"
#include "access/sdir.h"
#include "access/skey.h"
#include "access/tupdesc.h"
#include "utils/snapshot.h"

#include "catalog.h"
#include "grants.h"

typedef struct EsTypeFilter
{
	int			ntypes;			/* -1: no filter */
	text	  **types;
} EsTypeFilter;

/* What a projection or a subscription follows: event types and categories */
typedef struct EsEventFilter
{
	EsTypeFilter types;			/* ntypes -1: any */
	int			ncategories;	/* -1: any */
	text	  **categories;
} EsEventFilter;

typedef struct EsScanSpec
{
	Oid			index_oid;
	ScanKeyData keys[3];
	int			nkeys;
	ScanDirection direction;
	Snapshot	snapshot;		/* scan snapshot */
	Snapshot	xact_snapshot;	/* stop at the first row this cannot see, or NULL */
	EsTypeFilter filter;		/* applied to the upcast event */
	int64		max_count;		/* -1: unlimited */
	bool		raw;			/* do not upcast */
	struct Tuplestorestate *direct;	/* rows needing no upcast go straight here */
	int64		current_position;	/* event being handled (for error reports) */
	const EsDeniedSet *denied;	/* skip these categories, or NULL */
	int			leading_values; /* with a stored row, the first so many values
								 * do (0: all) */
	/* stored rows the callback need not see, tested before their visibility */
	bool		(*skip) (HeapTuple tuple, TupleDesc desc, void *arg);
	void	   *skip_arg;
	/* visible rows handed on only when this accepts them, or NULL */
	bool		(*match) (struct TupleTableSlot *slot, void *arg);
	void	   *match_arg;
	bool		halted;			/* out: stopped at a row xact_snapshot cannot
								 * see */
	/* with tids: read these rows of the hot table, in this order (no index) */
	ItemPointer tids;
	int			ntids;
} EsScanSpec;

/*
 * Called for every event of a scan (values in event_store.event order).
 * stored is the row as stored when it is exactly the event (not upcast) and
 * can serve as an event_store.event datum as it is (see EsEventDatum), else
 * NULL; it lives in a pinned buffer until the callback returns.  When the
 * scan asked for leading_values and stored is set, only that many values
 * (at least through stream_id, and through event_type when the scan filters
 * on it) are filled in.
 */
typedef bool (*EsRowCallback) (Datum *values, bool *isnull, HeapTuple stored,
							   void *arg);

extern int64 EsScanEvents(const EsCatalog *cat, EsScanSpec *spec,
						  EsRowCallback callback, void *arg);
extern Datum EsEventDatum(TupleDesc event_desc, Datum *values, bool *isnull,
						  HeapTuple stored);
extern bool EsTypeMatches(const EsTypeFilter *filter, Datum event_type);
extern bool EsFilterMatches(const EsEventFilter *f, Datum *values);
extern int	EsFilterLeadingValues(const EsEventFilter *f);

#endif							/* ES_READ_H */
