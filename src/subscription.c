/*
 * subscription.c
 *	  Subscriptions: consumer groups on the log.
 *
 * A subscription hands the events after its start position that match its
 * filters (and its owner may read) to any number of consumers.  Streams are
 * hashed into partitions; a partition is leased to one consumer at a time,
 * so the events of one stream are handled in order, by one consumer at a
 * time, while different streams are handled in parallel.
 *
 * State (event_store.subscription_partitions, one row per partition):
 *	- position: the log has been handed out up to here for this partition
 *	  (every event of the partition at or below it was delivered, filtered
 *	  out, or belongs to a held stream);
 *	- pending: the events handed to the holder and not yet acknowledged,
 *	  with the attempt each was delivered as;
 *	- redeliver: what a holder whose lease expired (or that released the
 *	  partition) left unacknowledged, for the next holder, attempt + 1.
 * A stream held back (event_store.subscription_streams) has a row from the
 * moment one of its events is nacked until every one of its events up to
 * the partition's position has been handed out again: global_position is
 * its next event to hand out, handed_through how far it was handed out
 * (while those events are pending).  While the row exists the log scan
 * skips the stream; the row hands out the stream's events itself, in
 * order, when its retry is due (a nacked event), at once (a stream catching
 * up), or never (parked, until replay_parked or skip_parked).
 *
 * Gap safety: the scan stops at the follower horizon (EsSafeHead) and
 * reads with a snapshot taken after it, as read_all does.  Every call runs
 * as the extension owner on the subscription's rows, after checking that
 * the caller has the privileges of the subscription's owner; the events
 * are read with the owner's category grants.
 *
 * Locking: a claim locks the partitions it holds or takes (FOR UPDATE; free
 * ones are taken with SKIP LOCKED, so concurrent claims never wait for each
 * other's partitions); ack, nack and release lock the consumer's
 * partitions.  A consumer whose lease has expired holds nothing: its ack
 * or nack is refused (55000) and changes nothing.  A consumer's own
 * partitions and its row are found by index and locked from C as SELECT
 * ... FOR UPDATE would lock them (es_my_partitions, es_lock_row); taking
 * free partitions is a statement (SKIP LOCKED).  The partition rows a
 * claim or an ack locked are written back in place from C
 * (es_save_partitions), as nobody else can change them meanwhile.  An ack
 * and the renewal of a claim's consumer row skip the lock before the
 * write, as UPDATE does: the row is updated as the snapshot saw it (the
 * update waits for a concurrent writer and locks it), and only when that
 * version was changed meanwhile is the latest one locked and read again
 * (es_write_partitions_seen, es_claim_consumer_row).
 *
 * The log scan reads the events of other consumers' partitions too; the
 * backend's log map remembers where each partition's events are, so that
 * the next scan of that part of the log reads only its own (see below).
 */
#include "postgres.h"

#include <math.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "api.h"
#include "callback.h"
#include "catalog.h"
#include "grants.h"
#include "position.h"
#include "read.h"
#include "registry.h"
#include "results.h"
#include "roles.h"
#include "shared.h"
#include "subscription.h"

PG_FUNCTION_INFO_V1(es_create_subscription);
PG_FUNCTION_INFO_V1(es_drop_subscription);
PG_FUNCTION_INFO_V1(es_claim_events);
PG_FUNCTION_INFO_V1(es_ack_events);
PG_FUNCTION_INFO_V1(es_nack_event);
PG_FUNCTION_INFO_V1(es_release_events);
PG_FUNCTION_INFO_V1(es_replay_parked);
PG_FUNCTION_INFO_V1(es_skip_parked);

/* the columns claim_events returns before the event's */
#define ES_CLAIM_LEADING	2

/* A subscription, as its calls need it */
typedef struct EsSubscription
{
	char	   *name;
	Oid			owner;
	int			partitions;
	int32		max_attempts;
	int64		backoff_ms;
	EsEventFilter filter;
	bool		projection;		/* an async projection's: its workers consume it */
} EsSubscription;

/* A partition held by the calling consumer, in memory during a call */
typedef struct EsPart
{
	int32		partition;
	int64		position;
	int			npending;
	int64	   *pending;
	int32	   *pending_attempts;
	int			nredeliver;
	int64	   *redeliver;
	int32	   *redeliver_attempts;
	bool		has_held;		/* some stream of it is held back */
	bool		changed;
	ItemPointerData tid;		/* of its row, locked by this transaction
								 * (or, before an optimistic write, as seen) */
	int64		acked;			/* an ack: how many it took off pending */
	bool		written;		/* an optimistic write: written back */
} EsPart;

/* A held stream of one of the consumer's partitions */
typedef struct EsHeld
{
	text	   *stream_id;
	int32		partition;
	int64		position;		/* next event to hand out */
	int32		attempts;
	bool		due;			/* not parked, not handed out, retry due */
	bool		handed;			/* handed_through is set */
	int64		handed_through;
} EsHeld;

/* ------------------------------------------------------------------------
 * Helpers
 * ------------------------------------------------------------------------ */

/* The partition of a stream among n (stable: a hash of the stream id) */
int32
EsStreamPartition(text *stream_id, int n)
{
	uint64		h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(stream_id),
										VARSIZE_ANY_EXHDR(stream_id), 0);

	return (int32) (h % (uint64) n);
}

/* Run one statement (caller is connected to SPI as the owner) */
static int
es_sub_exec(const char *sql, int nargs, Oid *types, Datum *values,
			const char *nulls, bool read_only, int expected)
{
	/* every statement here is a literal: its plan is kept for the backend's life */
	SPIPlanPtr	plan = EsKeptStatementPlan(sql, nargs, types);
	int			rc;

	rc = SPI_execute_plan(plan, values, nulls, read_only, 0);
	if (rc != expected)
		elog(ERROR, "subscription statement failed: %s", SPI_result_code_string(rc));
	return rc;
}

/* bigint[] / int[] from C arrays, in the current memory context */
static Datum
es_int8_array(int64 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
es_int4_array(int32 *v, int n)
{
	Datum	   *d = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		d[i] = Int32GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT4OID, 4, true, TYPALIGN_INT));
}

/* C arrays from bigint[] / int[] (in the current memory context) */
static int
es_get_int8_array(Datum d, int64 **out)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	int			n;

	deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, NULL, &n);
	*out = palloc(sizeof(int64) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[i] = DatumGetInt64(elems[i]);
	return n;
}

static int
es_get_int4_array(Datum d, int32 **out)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	int			n;

	deconstruct_array(arr, INT4OID, 4, true, TYPALIGN_INT, &elems, NULL, &n);
	*out = palloc(sizeof(int32) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[i] = DatumGetInt32(elems[i]);
	return n;
}

/* The subscriptions, cached per backend (a registry: reloaded after a change) */
typedef struct EsSubEntry
{
	EsTextKey	key;			/* the name */
	EsSubscription sub;
} EsSubEntry;

static EsRegistry sub_registry = {"subscriptions"};
static HTAB *sub_hash = NULL;

static void
es_subscriptions_load(void)
{
	MemoryContext cxt = EsRegistryNewContext(&sub_registry);
	MemoryContext old;
	EsUserSwitch sw;
	int			rc;

	sub_hash = EsTextHashCreate("event_store subscriptions", sizeof(EsSubEntry), cxt);
	EsSpiConnect(&sw);
	rc = SPI_execute("SELECT name, owner::pg_catalog.oid, partitions, max_attempts, "
					 "(EXTRACT(epoch FROM retry_backoff) OPERATOR(pg_catalog.*) 1000)::pg_catalog.int8, "
					 "event_types, categories, projection FROM event_store.subscriptions", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.subscriptions failed: %s", SPI_result_code_string(rc));
	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		found;
		char	   *name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		EsSubEntry *e = EsTextHashEnter(sub_hash, name, strlen(name), 0, &found);
		EsSubscription *sub = &e->sub;
		Datum		d;

		sub->name = name;
		sub->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		sub->partitions = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		sub->max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		sub->backoff_ms = DatumGetInt64(SPI_getbinval(tup, desc, 5, &isnull));
		d = SPI_getbinval(tup, desc, 6, &isnull);
		sub->filter.types.ntypes = EsDecodeTextArray(d, isnull, &sub->filter.types.types);
		d = SPI_getbinval(tup, desc, 7, &isnull);
		sub->filter.ncategories = EsDecodeTextArray(d, isnull, &sub->filter.categories);
		sub->projection = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
	}
	MemoryContextSwitchTo(old);
	EsSpiFinish(&sw);
}

/* The subscriptions changed (created, dropped): every backend reloads them */
void
EsSubscriptionsChanged(void)
{
	EsRegistryChanged(&sub_registry);
}

/* A copy of a text array in the current memory context */
static text **
es_copy_texts(text **src, int n)
{
	text	  **dst;

	if (n < 0)
		return NULL;
	dst = palloc(sizeof(text *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		dst[i] = (text *) pg_detoast_datum_copy((struct varlena *) src[i]);
	return dst;
}

/*
 * A subscription (42704 when there is none), copied into cxt from the
 * backend's cache (which a reload may replace meanwhile)
 */
static EsSubscription *
es_subscription_load(const char *name, MemoryContext cxt)
{
	EsSubEntry *e;
	EsSubscription *s;
	MemoryContext old;

	EsRegistryEnsure(&sub_registry, es_subscriptions_load);
	e = EsTextHashFind(sub_hash, name, strlen(name), 0);
	if (e == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("subscription \"%s\" does not exist", name),
				 errhint("Create it with event_store.create_subscription().")));
	old = MemoryContextSwitchTo(cxt);
	s = palloc(sizeof(EsSubscription));
	*s = e->sub;
	s->name = pstrdup(name);
	s->filter.types.types = es_copy_texts(e->sub.filter.types.types, e->sub.filter.types.ntypes);
	s->filter.categories = es_copy_texts(e->sub.filter.categories, e->sub.filter.ncategories);
	MemoryContextSwitchTo(old);
	return s;
}

/*
 * Using a subscription (claiming, acknowledging, nacking) needs the
 * privileges of its owner (the extension owner always may): 42501
 */
static void
es_check_may_use(EsUserSwitch *sw, EsSubscription *s)
{
	Oid			user = sw->save_userid;

	if (s->projection)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("subscription \"%s\" belongs to the async projection of that name", s->name),
				 errdetail("The background workers apply the projection's events; nobody else claims them."),
				 errhint("Use replay_parked() and skip_parked() on its parked streams; create a subscription of your own to consume the log.")));

	if (has_privs_of_role(user, s->owner) || has_privs_of_role(user, EsExtensionOwner()))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("must be a member of role \"%s\" to use subscription \"%s\"",
					EsRoleName(s->owner), s->name),
			 errdetail("Role \"%s\" created subscription \"%s\"; only its members and the extension owner may claim, acknowledge or nack its events.",
					   EsRoleName(s->owner), s->name)));
}

/* The consumer argument: required, not empty, at most ES_MAX_NAME_BYTES */
static char *
es_consumer_arg(FunctionCallInfo fcinfo, int argno)
{
	return text_to_cstring(EsGetRequiredText(fcinfo, argno, "consumer"));
}

/*
 * Write a partition back: holder (NULL: released), its lease renewed for
 * lease_ms from now (-1: unchanged), position and lists
 */
static void
es_save_partition(EsSubscription *s, EsPart *p, const char *holder, double lease_ms)
{
	Oid			types[9] = {TEXTOID, INT4OID, TEXTOID, FLOAT8OID, INT8OID,
	INT8ARRAYOID, INT4ARRAYOID, INT8ARRAYOID, INT4ARRAYOID};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	values[0] = CStringGetTextDatum(s->name);
	values[1] = Int32GetDatum(p->partition);
	if (holder)
		values[2] = CStringGetTextDatum(holder);
	else
		nulls[2] = 'n';
	values[3] = Float8GetDatum(lease_ms);
	values[4] = Int64GetDatum(p->position);
	values[5] = es_int8_array(p->pending, p->npending);
	values[6] = es_int4_array(p->pending_attempts, p->npending);
	values[7] = es_int8_array(p->redeliver, p->nredeliver);
	values[8] = es_int4_array(p->redeliver_attempts, p->nredeliver);
	es_sub_exec("UPDATE event_store.subscription_partitions SET holder = $3, "
				"lease_expires_at = CASE WHEN $3 IS NULL THEN NULL "
				" WHEN $4 OPERATOR(pg_catalog.<) 0 THEN lease_expires_at "
				" ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) "
				"  pg_catalog.make_interval(secs => $4 OPERATOR(pg_catalog./) 1000) END, "
				"position = $5, pending = $6, pending_attempts = $7, redeliver = $8, "
				"redeliver_attempts = $9, updated_at = pg_catalog.now() "
				"WHERE subscription OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2",
				9, types, values, nulls, false, SPI_OK_UPDATE);
}

static Oid	es_sub_relid(const char *name);
static AttrNumber es_sub_attnum(Relation rel, const char *name);
static bool es_lock_row(Relation rel, ItemPointer tid, Snapshot snapshot, LockTupleMode mode,
						TupleTableSlot *slot, bool *moved);

/*
 * Update a row of a subscription table from C, as CatalogTupleUpdate does
 * (the new version, and its index entries unless the update is HOT), its
 * version at *tid: TM_Ok and *tid the new version's, or, when a concurrent
 * transaction changed or deleted that version (the update waited for it to
 * end), what heap_update says, with nothing written.  The indexes are
 * opened only for an update that is not HOT (a HOT update, the rule for
 * these rows, has no index entries to make); *indstate keeps them open for
 * the caller's next rows (closed with CatalogCloseIndexes when not NULL).
 */
static TM_Result
es_try_update_row(Relation rel, ItemPointer tid, HeapTuple newtup, CatalogIndexState *indstate)
{
	TupleTableSlot *slot;
	Datum		values[INDEX_MAX_KEYS];
	bool		isnull[INDEX_MAX_KEYS];
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	TM_Result	res;

	/* waits for a concurrent writer of the row, as UPDATE does */
	res = heap_update(rel, tid, newtup, GetCurrentCommandId(true), InvalidSnapshot,
					  true, &tmfd, &lockmode);
	if (res != TM_Ok)
		return res;
	*tid = newtup->t_self;
	if (HeapTupleIsHeapOnly(newtup))
		return TM_Ok;
	if (*indstate == NULL)
		*indstate = CatalogOpenIndexes(rel);
	slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	ExecStoreHeapTuple(newtup, slot, false);
	for (int i = 0; i < (*indstate)->ri_NumIndices; i++)
	{
		IndexInfo  *info = (*indstate)->ri_IndexRelationInfo[i];
		Relation	index = (*indstate)->ri_IndexRelationDescs[i];

		if (!info->ii_ReadyForInserts)
			continue;
		/* plain columns only (no expression, no predicate), as in the catalogs */
		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL)
			elog(ERROR, "index \"%s\" of event_store.%s has expressions or a predicate",
				 RelationGetRelationName(index), RelationGetRelationName(rel));
		FormIndexDatum(info, slot, NULL, values, isnull);
		(void) index_insert(index, values, isnull, &newtup->t_self, rel,
							index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
							false, info);
	}
	ExecDropSingleTupleTableSlot(slot);
	return TM_Ok;
}

/* The same, for a row this transaction locked (nobody else changes it) */
static void
es_update_row(Relation rel, ItemPointer tid, HeapTuple newtup, CatalogIndexState *indstate)
{
	if (es_try_update_row(rel, tid, newtup, indstate) != TM_Ok)
		elog(ERROR, "event_store.%s: row (%u,%u) concurrently updated",
			 RelationGetRelationName(rel), ItemPointerGetBlockNumber(tid),
			 ItemPointerGetOffsetNumber(tid));
}

/* The columns of the partition rows that a read or a write-back uses */
typedef struct EsPartAtts
{
	AttrNumber	partition,
				holder,
				lease,
				position,
				pending,
				pending_attempts,
				redeliver,
				redeliver_attempts,
				updated;
} EsPartAtts;

static void
es_part_atts(Relation rel, EsPartAtts *a)
{
	a->partition = es_sub_attnum(rel, "partition");
	a->holder = es_sub_attnum(rel, "holder");
	a->lease = es_sub_attnum(rel, "lease_expires_at");
	a->position = es_sub_attnum(rel, "position");
	a->pending = es_sub_attnum(rel, "pending");
	a->pending_attempts = es_sub_attnum(rel, "pending_attempts");
	a->redeliver = es_sub_attnum(rel, "redeliver");
	a->redeliver_attempts = es_sub_attnum(rel, "redeliver_attempts");
	a->updated = es_sub_attnum(rel, "updated_at");
}

/* A partition as its row (in slot) has it, at tid */
static void
es_part_from_slot(EsPart *p, TupleTableSlot *slot, const EsPartAtts *a, ItemPointer tid)
{
	bool		isnull;

	p->partition = DatumGetInt32(slot_getattr(slot, a->partition, &isnull));
	p->position = DatumGetInt64(slot_getattr(slot, a->position, &isnull));
	p->npending = es_get_int8_array(slot_getattr(slot, a->pending, &isnull), &p->pending);
	(void) es_get_int4_array(slot_getattr(slot, a->pending_attempts, &isnull), &p->pending_attempts);
	p->nredeliver = es_get_int8_array(slot_getattr(slot, a->redeliver, &isnull), &p->redeliver);
	(void) es_get_int4_array(slot_getattr(slot, a->redeliver_attempts, &isnull), &p->redeliver_attempts);
	p->tid = *tid;
}

/*
 * The new version of a partition's row (its version at p->tid, the other
 * columns kept): held by holder, its lease ending at lease_end (0:
 * unchanged), position and lists from p
 */
static HeapTuple
es_part_version(Relation rel, const EsPartAtts *a, EsSubscription *s, EsPart *p,
				const char *holder, TimestampTz lease_end, TimestampTz now,
				Datum *values, bool *nulls)
{
	HeapTupleData oldtup;
	HeapTuple	newtup;
	Buffer		buf;

	oldtup.t_self = p->tid;
	if (!heap_fetch(rel, SnapshotAny, &oldtup, &buf, false))
		elog(ERROR, "partition %d of subscription \"%s\" is gone", p->partition, s->name);
	heap_deform_tuple(&oldtup, RelationGetDescr(rel), values, nulls);
	values[a->holder - 1] = CStringGetTextDatum(holder);
	nulls[a->holder - 1] = false;
	if (lease_end != 0)
	{
		values[a->lease - 1] = TimestampTzGetDatum(lease_end);
		nulls[a->lease - 1] = false;
	}
	values[a->position - 1] = Int64GetDatum(p->position);
	values[a->pending - 1] = es_int8_array(p->pending, p->npending);
	values[a->pending_attempts - 1] = es_int4_array(p->pending_attempts, p->npending);
	values[a->redeliver - 1] = es_int8_array(p->redeliver, p->nredeliver);
	values[a->redeliver_attempts - 1] = es_int4_array(p->redeliver_attempts, p->nredeliver);
	values[a->updated - 1] = TimestampTzGetDatum(now);
	/* formed while the old version's page, which the values point into, is pinned */
	newtup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	ReleaseBuffer(buf);
	return newtup;
}

/*
 * Write back every partition of parts that changed (all of them when
 * lease_ms >= 0: their lease is renewed for lease_ms from now, held by
 * holder).  Their rows were locked (FOR UPDATE) by this transaction when they
 * were read, so nobody else changed them since: each is updated in place
 * from C, as the catalogs are (the new version and, unless the update is
 * HOT, its index entries), with no statement to plan or start.  The row's
 * foreign key is the subscription, which never changes here.
 */
static void
es_save_partitions(EsSubscription *s, EsPart *parts, int nparts, const char *holder,
				   double lease_ms)
{
	Relation	rel;
	TupleDesc	desc;
	CatalogIndexState indstate = NULL;
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	TimestampTz lease_end = 0;
	Datum	   *values;
	bool	   *nulls;
	EsPartAtts	atts;
	bool		any = false;

	for (int i = 0; i < nparts && !any; i++)
		any = lease_ms >= 0 || parts[i].changed;
	if (!any)
		return;
	rel = table_open(es_sub_relid("subscription_partitions"), RowExclusiveLock);
	es_part_atts(rel, &atts);
	if (lease_ms >= 0)
		lease_end = GetCurrentTimestamp() + (int64) rint(lease_ms * 1000.0);

	desc = RelationGetDescr(rel);
	values = palloc(sizeof(Datum) * desc->natts);
	nulls = palloc(sizeof(bool) * desc->natts);
	for (int i = 0; i < nparts; i++)
	{
		EsPart	   *p = &parts[i];
		HeapTuple	newtup;

		if (lease_ms < 0 && !p->changed)
			continue;
		newtup = es_part_version(rel, &atts, s, p, holder, lease_end, now, values, nulls);
		es_update_row(rel, &p->tid, newtup, &indstate);
		heap_freetuple(newtup);
	}
	if (indstate != NULL)
		CatalogCloseIndexes(indstate);
	table_close(rel, NoLock);
	/* what follows in this transaction sees the new versions */
	CommandCounterIncrement();
}

/*
 * Take the entries a caller marked (position set to -1) out of a
 * partition's list of positions and their attempts; returns how many are
 * left
 */
static int
es_drop_marked(int64 *positions, int32 *attempts, int n)
{
	int			keep = 0;

	for (int k = 0; k < n; k++)
		if (positions[k] >= 0)
		{
			positions[keep] = positions[k];
			attempts[keep] = attempts[k];
			keep++;
		}
	return keep;
}

/*
 * An ack's write-back of partitions read as a snapshot saw them, unlocked
 * (es_my_partitions without lock): a changed partition's row is updated as
 * UPDATE would (waiting for a concurrent writer), an unchanged one locked
 * (FOR UPDATE), as the ack would have locked it, so that every partition
 * the ack holds stays locked until its transaction ends.  One update
 * instead of a lock and an update.  false when a row's version was changed
 * meanwhile (a claim or another ack of the consumer's that committed while
 * the snapshot was taken or this one waited): the rest is not written, the
 * partitions written are marked (written), and the caller goes again,
 * locking first, on the latest versions.
 */
static bool
es_write_partitions_seen(EsSubscription *s, EsPart *parts, int nparts, const char *holder)
{
	Relation	rel = table_open(es_sub_relid("subscription_partitions"), RowExclusiveLock);
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Snapshot	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	TimestampTz now = GetCurrentTransactionStartTimestamp();
	CatalogIndexState indstate = NULL;
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);
	EsPartAtts	atts;
	bool		ok = true;

	es_part_atts(rel, &atts);
	for (int i = 0; i < nparts && ok; i++)
	{
		EsPart	   *p = &parts[i];
		bool		moved;

		if (!p->changed)
		{
			ok = es_lock_row(rel, &p->tid, snapshot, LockTupleExclusive, slot, &moved) && !moved;
			ExecClearTuple(slot);
		}
		else
		{
			HeapTuple	newtup = es_part_version(rel, &atts, s, p, holder, 0, now, values, nulls);

			ok = es_try_update_row(rel, &p->tid, newtup, &indstate) == TM_Ok;
			heap_freetuple(newtup);
			p->written = ok;
		}
	}
	if (indstate != NULL)
		CatalogCloseIndexes(indstate);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);
	/* what follows in this transaction sees the new versions */
	CommandCounterIncrement();
	return ok;
}

/* Append (position, attempt) to a partition's pending list */
static void
es_add_pending(EsPart *p, int64 position, int32 attempt)
{
	p->pending = repalloc(p->pending, sizeof(int64) * (p->npending + 1));
	p->pending_attempts = repalloc(p->pending_attempts, sizeof(int32) * (p->npending + 1));
	p->pending[p->npending] = position;
	p->pending_attempts[p->npending] = attempt;
	p->npending++;
	p->changed = true;
}

/* What the holder was handed goes again, attempt + 1 (before the redeliveries) */
static void
es_pending_to_redeliver(EsPart *p)
{
	int			total = p->npending + p->nredeliver;
	int64	   *r;
	int32	   *ra;

	if (p->npending == 0)
		return;
	r = palloc(sizeof(int64) * total);
	ra = palloc(sizeof(int32) * total);
	for (int k = 0; k < p->npending; k++)
	{
		r[k] = p->pending[k];
		ra[k] = p->pending_attempts[k] + 1;
	}
	memcpy(r + p->npending, p->redeliver, sizeof(int64) * p->nredeliver);
	memcpy(ra + p->npending, p->redeliver_attempts, sizeof(int32) * p->nredeliver);
	p->redeliver = r;
	p->redeliver_attempts = ra;
	p->nredeliver = total;
	p->npending = 0;
	p->changed = true;
}

/* The partition of ours with this number, or NULL */
static EsPart *
es_find_part(EsPart *parts, int nparts, int32 partition)
{
	for (int i = 0; i < nparts; i++)
		if (parts[i].partition == partition)
			return &parts[i];
	return NULL;
}

/* ------------------------------------------------------------------------
 * Rows read and locked from C
 *
 * A claim and an ack find the consumer's row and its partitions by index
 * and lock them as SELECT ... FOR UPDATE does, with no statement to plan or
 * start (as logical replication's apply finds and locks its rows).
 * ------------------------------------------------------------------------ */

/*
 * The relations and columns of the subscription tables, looked up by name
 * once (a name is a literal: its address is the key) and kept until the
 * next relcache invalidation
 */
typedef struct EsSubName
{
	const char *name;
	Oid			relid;			/* of the column's table; InvalidOid: a relation */
	Oid			result;			/* the relation's OID, or the column's number */
} EsSubName;

#define ES_SUB_NAMES	64

static EsSubName es_sub_names[ES_SUB_NAMES];
static int	es_sub_nnames = 0;
static bool es_sub_names_hooked = false;

static void
es_sub_names_reset(Datum arg, Oid relid)
{
	es_sub_nnames = 0;
}

/* A name looked up before, or NULL */
static EsSubName *
es_sub_name_find(const char *name, Oid relid)
{
	if (!es_sub_names_hooked)
	{
		CacheRegisterRelcacheCallback(es_sub_names_reset, (Datum) 0);
		es_sub_names_hooked = true;
	}
	for (int i = 0; i < es_sub_nnames; i++)
		if (es_sub_names[i].name == name && es_sub_names[i].relid == relid)
			return &es_sub_names[i];
	return NULL;
}

static void
es_sub_name_keep(const char *name, Oid relid, Oid result)
{
	if (es_sub_nnames < ES_SUB_NAMES)
		es_sub_names[es_sub_nnames++] = (EsSubName) {name, relid, result};
}

/* A relation (table or index) of the extension's schema */
static Oid
es_sub_relid(const char *name)
{
	EsSubName  *kept = es_sub_name_find(name, InvalidOid);
	Oid			relid;

	if (kept != NULL)
		return kept->result;
	relid = get_relname_relid(name, EsGetCatalog()->namespace_oid);
	if (!OidIsValid(relid))
		elog(ERROR, "event_store.%s does not exist", name);
	es_sub_name_keep(name, InvalidOid, relid);
	return relid;
}

/* A column of one of the subscription tables */
static AttrNumber
es_sub_attnum(Relation rel, const char *name)
{
	EsSubName  *kept = es_sub_name_find(name, RelationGetRelid(rel));
	AttrNumber	attno;

	if (kept != NULL)
		return (AttrNumber) kept->result;
	attno = get_attnum(RelationGetRelid(rel), name);
	if (attno == InvalidAttrNumber)
		elog(ERROR, "event_store.%s lacks column %s", RelationGetRelationName(rel), name);
	es_sub_name_keep(name, RelationGetRelid(rel), (Oid) attno);
	return attno;
}

/* An equality key on a text index column (COLLATE "C", as all of them are) */
static void
es_text_key(ScanKey key, AttrNumber attno, Datum value)
{
	ScanKeyEntryInitialize(key, 0, attno, BTEqualStrategyNumber, InvalidOid,
						   C_COLLATION_OID, F_TEXTEQ, value);
}

/*
 * An index scan of idx (its leading columns subscription, consumer) for
 * the rows of one consumer of a subscription
 */
static IndexScanDesc
es_consumer_scan(Relation rel, Relation idx, Snapshot snapshot,
				 const char *subscription, const char *consumer)
{
	ScanKeyData keys[2];
	IndexScanDesc scan;

	es_text_key(&keys[0], 1, CStringGetTextDatum(subscription));
	es_text_key(&keys[1], 2, CStringGetTextDatum(consumer));
	scan = index_beginscan(rel, idx, snapshot, 2, 0);
	index_rescan(scan, keys, 2, NULL, 0);
	return scan;
}

/* Does a text value equal a C string? */
static bool
es_text_is(Datum d, const char *s)
{
	text	   *t = DatumGetTextPP(d);
	size_t		len = strlen(s);

	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

/*
 * Lock the row version at *tid as SELECT ... FOR UPDATE does (see
 * ExecLockRows): wait for a concurrent writer; in read committed, lock the
 * row's latest version (*moved: not the one the snapshot saw, so the caller
 * checks its conditions again); under repeatable read a concurrent update
 * is a serialization failure.  The locked version goes into slot, its TID
 * into *tid.  false when the row is gone.
 */
static bool
es_lock_row(Relation rel, ItemPointer tid, Snapshot snapshot, LockTupleMode mode,
			TupleTableSlot *slot, bool *moved)
{
	TM_FailureData tmfd;
	TM_Result	res;
	uint8		flags = TUPLE_LOCK_FLAG_LOCK_UPDATE_IN_PROGRESS;

	if (!IsolationUsesXactSnapshot())
		flags |= TUPLE_LOCK_FLAG_FIND_LAST_VERSION;
	memset(&tmfd, 0, sizeof(tmfd));
	res = table_tuple_lock(rel, tid, snapshot, slot, GetCurrentCommandId(true), mode,
						   LockWaitBlock, flags, &tmfd);
	*moved = tmfd.traversed;
	switch (res)
	{
		case TM_Ok:
			*tid = slot->tts_tid;
			return true;
		case TM_SelfModified:
			/* changed by this very command or a later one: skipped, as the executor does */
			return false;
		case TM_Updated:
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent update")));
			if (res == TM_Deleted)
				return false;
			break;
		default:
			break;
	}
	elog(ERROR, "unexpected table_tuple_lock status: %u", res);
	return false;
}

/*
 * Mark the partitions of parts that some held stream of the subscription
 * belongs to (the streams' primary key has the subscription first)
 */
static void
es_mark_held(EsSubscription *s, EsPart *parts, int nparts, Snapshot snapshot)
{
	Relation	rel = table_open(es_sub_relid("subscription_streams"), AccessShareLock);
	Relation	idx = index_open(es_sub_relid("subscription_streams_pkey"), AccessShareLock);
	AttrNumber	att_partition = es_sub_attnum(rel, "partition");
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan;
	ScanKeyData key;

	es_text_key(&key, 1, CStringGetTextDatum(s->name));
	scan = index_beginscan(rel, idx, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		EsPart	   *p = es_find_part(parts, nparts,
									 DatumGetInt32(slot_getattr(slot, att_partition, &isnull)));

		if (p != NULL)
			p->has_held = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
}

/*
 * The consumer's row (by primary key), as snapshot sees it: false when it
 * has none; else its claim time and its TID
 */
static bool
es_consumer_row(EsSubscription *s, const char *consumer, Snapshot snapshot,
				TimestampTz *claimed_at, ItemPointer tid)
{
	Relation	rel = table_open(es_sub_relid("subscription_consumers"), AccessShareLock);
	Relation	idx = index_open(es_sub_relid("subscription_consumers_pkey"), AccessShareLock);
	AttrNumber	att_claimed = es_sub_attnum(rel, "claimed_at");
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan;
	bool		found;

	scan = es_consumer_scan(rel, idx, snapshot, s->name, consumer);
	found = index_getnext_slot(scan, ForwardScanDirection, slot);
	if (found)
	{
		bool		isnull;

		*claimed_at = DatumGetTimestampTz(slot_getattr(slot, att_claimed, &isnull));
		*tid = slot->tts_tid;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return found;
}

/*
 * The latest fence of a consumer (a partition of it taken over then), as
 * snapshot sees the fences; false when it has none
 */
static bool
es_latest_fence(EsSubscription *s, const char *consumer, Snapshot snapshot,
				TimestampTz *fenced_at)
{
	Relation	rel = table_open(es_sub_relid("subscription_fences"), AccessShareLock);
	Relation	idx = index_open(es_sub_relid("subscription_fences_consumer_idx"), AccessShareLock);
	AttrNumber	att_fenced = es_sub_attnum(rel, "fenced_at");
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	IndexScanDesc scan;
	bool		any = false;

	scan = es_consumer_scan(rel, idx, snapshot, s->name, consumer);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		TimestampTz at = DatumGetTimestampTz(slot_getattr(slot, att_fenced, &isnull));

		if (!any || at > *fenced_at)
			*fenced_at = at;
		any = true;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, AccessShareLock);
	return any;
}

/* Was the consumer fenced since its last claim?  (a fence after its claim time) */
static bool
es_consumer_fenced(EsSubscription *s, const char *consumer, Snapshot snapshot)
{
	TimestampTz fenced_at;
	TimestampTz claimed_at;
	ItemPointerData tid;

	if (!es_latest_fence(s, consumer, snapshot, &fenced_at))
		return false;
	if (!es_consumer_row(s, consumer, snapshot, &claimed_at, &tid))
		return false;
	return fenced_at > claimed_at;
}

/*
 * The consumer's partitions whose lease has not expired, locked (FOR
 * UPDATE), in partition order (caller is connected to SPI as the owner).
 * They are found by the holder index, as a fresh snapshot sees them; a
 * row a concurrent transaction changed is locked in its latest version,
 * which must still be the consumer's and unexpired.  With fenced, also
 * whether the consumer was fenced since its last claim (only known when it
 * holds some partition).  Without lock, the rows are not locked: they are
 * as the snapshot saw them, for es_write_partitions_seen.
 */
static EsPart *
es_my_partitions(EsSubscription *s, const char *consumer, int *nparts, bool *fenced,
				 bool lock)
{
	Relation	rel = table_open(es_sub_relid("subscription_partitions"), RowShareLock);
	Relation	idx = index_open(es_sub_relid("subscription_partitions_holder_idx"), AccessShareLock);
	EsPartAtts	atts;
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Snapshot	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	TimestampTz now = GetCurrentTimestamp();
	IndexScanDesc scan;
	ItemPointerData *tids;
	int			ntids = 0;
	int			cap = 4;
	EsPart	   *parts;
	int			n = 0;

	es_part_atts(rel, &atts);
	/* ours as the snapshot sees them, unexpired (only those are locked) */
	tids = palloc(sizeof(ItemPointerData) * cap);
	parts = lock ? NULL : palloc0(sizeof(EsPart) * cap);
	scan = es_consumer_scan(rel, idx, snapshot, s->name, consumer);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		lease = slot_getattr(slot, atts.lease, &isnull);

		if (isnull || DatumGetTimestampTz(lease) <= now)
			continue;
		if (ntids == cap)
		{
			cap *= 2;
			tids = repalloc(tids, sizeof(ItemPointerData) * cap);
			if (!lock)
			{
				parts = repalloc(parts, sizeof(EsPart) * cap);
				memset(parts + ntids, 0, sizeof(EsPart) * (cap - ntids));
			}
		}
		if (!lock)
		{
			/* as seen: the caller writes them back optimistically */
			es_part_from_slot(&parts[n++], slot, &atts, &slot->tts_tid);
		}
		tids[ntids++] = slot->tts_tid;
	}
	index_endscan(scan);

	if (lock)
		parts = palloc0(sizeof(EsPart) * Max(ntids, 1));
	for (int i = 0; i < ntids && lock; i++)
	{
		bool		moved;
		bool		isnull;
		Datum		d;

		if (!es_lock_row(rel, &tids[i], snapshot, LockTupleExclusive, slot, &moved))
			continue;
		if (moved)
		{
			/* changed meanwhile: still ours and unexpired? */
			d = slot_getattr(slot, atts.holder, &isnull);
			if (isnull || !es_text_is(d, consumer))
				continue;
			d = slot_getattr(slot, atts.lease, &isnull);
			if (isnull || DatumGetTimestampTz(d) <= now)
				continue;
		}
		es_part_from_slot(&parts[n++], slot, &atts, &tids[i]);
	}
	ExecDropSingleTupleTableSlot(slot);
	index_close(idx, AccessShareLock);
	table_close(rel, NoLock);

	if (n > 0)
		es_mark_held(s, parts, n, snapshot);
	if (fenced != NULL)
		*fenced = n > 0 && es_consumer_fenced(s, consumer, snapshot);
	UnregisterSnapshot(snapshot);
	*nparts = n;
	return parts;
}

/* A consumer's row renewed: live while a lease of lease_ms runs from now */
static HeapTuple
es_consumer_renewed(HeapTuple row, TupleDesc desc, AttrNumber att_lease, AttrNumber att_claimed,
					TimestampTz now, double lease_ms)
{
	Datum	   *values = palloc(sizeof(Datum) * desc->natts);
	bool	   *nulls = palloc(sizeof(bool) * desc->natts);

	heap_deform_tuple(row, desc, values, nulls);
	values[att_lease - 1] = TimestampTzGetDatum(now + (int64) rint(lease_ms * 1000.0));
	nulls[att_lease - 1] = false;
	values[att_claimed - 1] = TimestampTzGetDatum(now);
	nulls[att_claimed - 1] = false;
	return heap_form_tuple(desc, values, nulls);
}

/*
 * The consumer's claim from C, when its row exists and it has no fence
 * (else false: the caller runs the statement).  Counts the consumers of the
 * subscription live now besides it (*live, itself included), then renews
 * its row in place: live while this lease runs, its claim time now.  The
 * row is updated as the snapshot saw it, as UPDATE does (waiting for a
 * concurrent writer); when that version was changed meanwhile, its latest
 * version is locked (as INSERT ... ON CONFLICT DO UPDATE would lock it)
 * and renewed.
 */
static bool
es_claim_consumer_row(EsSubscription *s, const char *consumer, double lease_ms, int64 *live)
{
	Relation	rel = table_open(es_sub_relid("subscription_consumers"), RowExclusiveLock);
	Relation	idx = index_open(es_sub_relid("subscription_consumers_pkey"), AccessShareLock);
	AttrNumber	att_consumer = es_sub_attnum(rel, "consumer");
	AttrNumber	att_lease = es_sub_attnum(rel, "lease_expires_at");
	AttrNumber	att_claimed = es_sub_attnum(rel, "claimed_at");
	TupleDesc	desc = RelationGetDescr(rel);
	TupleTableSlot *slot = table_slot_create(rel, NULL);
	Snapshot	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz fenced_at;
	IndexScanDesc scan;
	ScanKeyData key;
	ItemPointerData mine;
	HeapTuple	seen = NULL;
	bool		found = false;
	bool		moved;
	int64		others = 0;

	/* every consumer of the subscription (its primary key's prefix) */
	es_text_key(&key, 1, CStringGetTextDatum(s->name));
	scan = index_beginscan(rel, idx, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;

		if (es_text_is(slot_getattr(slot, att_consumer, &isnull), consumer))
		{
			mine = slot->tts_tid;
			seen = ExecCopySlotHeapTuple(slot);
			found = true;
		}
		else if (DatumGetTimestampTz(slot_getattr(slot, att_lease, &isnull)) > now)
			others++;
	}
	index_endscan(scan);

	if (found && !es_latest_fence(s, consumer, snapshot, &fenced_at))
	{
		CatalogIndexState indstate = NULL;
		HeapTuple	newtup = es_consumer_renewed(seen, desc, att_lease, att_claimed, now, lease_ms);

		if (es_try_update_row(rel, &mine, newtup, &indstate) != TM_Ok)
		{
			/* changed since the snapshot: its latest version, locked */
			heap_freetuple(newtup);
			newtup = NULL;
			if (es_lock_row(rel, &mine, snapshot, LockTupleNoKeyExclusive, slot, &moved))
			{
				HeapTuple	latest = ExecCopySlotHeapTuple(slot);

				ExecClearTuple(slot);
				newtup = es_consumer_renewed(latest, desc, att_lease, att_claimed, now, lease_ms);
				es_update_row(rel, &mine, newtup, &indstate);
			}
			else
				found = false;
		}
		if (indstate != NULL)
			CatalogCloseIndexes(indstate);
		if (newtup != NULL)
			heap_freetuple(newtup);
		*live = others + 1;
	}
	else
		found = false;
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(idx, AccessShareLock);
	table_close(rel, NoLock);
	if (found)
		CommandCounterIncrement();
	return found;
}

/* The stream id of the event at position (NULL: gone), read as the owner */
static text *
es_stream_at(int64 position)
{
	const EsCatalog *cat = EsGetCatalog();
	ScanKeyData key;
	Datum		sid;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(position));
	if (!EsFirstEventValue(cat, cat->position_idx, GetLatestSnapshot(), &key, 1,
						   ForwardScanDirection, Anum_es_stream_id, &sid))
		return NULL;
	return DatumGetTextPCopy(sid);
}

/* The stream version of the event at position, or 0 when it is gone */
static int64
es_version_at(int64 position)
{
	const EsCatalog *cat = EsGetCatalog();
	ScanKeyData key;
	Datum		v;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(position));
	if (!EsFirstEventValue(cat, cat->position_idx, GetLatestSnapshot(), &key, 1,
						   ForwardScanDirection, Anum_es_stream_version, &v))
		return 0;
	return DatumGetInt64(v);
}

/* ------------------------------------------------------------------------
 * Registration
 * ------------------------------------------------------------------------ */

/*
 * SQL: event_store.create_subscription(name text, categories text[],
 *		event_types text[], partitions int, start_position bigint,
 *		max_attempts int, retry_backoff interval) RETURNS void
 */
Datum
es_create_subscription(PG_FUNCTION_ARGS)
{
	text	   *name = EsGetRequiredText(fcinfo, 0, "name");
	int32		partitions;
	int64		start;
	int32		max_attempts;
	EsUserSwitch sw;
	Oid			types[8] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, INT4OID, INT8OID, INT4OID,
	INTERVALOID, OIDOID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	EsCheckWritable("create_subscription()");
	EsCheckFilterArg(fcinfo, 1, "categories", true);
	EsCheckFilterArg(fcinfo, 2, "event_types", false);
	EsRequireArg(fcinfo, 3, "partitions");
	partitions = PG_GETARG_INT32(3);
	if (partitions < 1 || partitions > ES_MAX_PARTITIONS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions must be between 1 and %d", ES_MAX_PARTITIONS),
				 errhint("One partition keeps global order; more let that many consumers work in parallel.")));
	EsRequireArg(fcinfo, 4, "start_position");
	start = PG_GETARG_INT64(4);
	EsRejectNegative(start, "start_position", "Pass 0 to deliver the whole log.");
	EsRequireArg(fcinfo, 5, "max_attempts");
	max_attempts = PG_GETARG_INT32(5);
	if (max_attempts < 1 || max_attempts > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_attempts must be between 1 and 1000")));
	if (EsIntervalArgMs(fcinfo, 6, "retry_backoff", false) < ES_BACKOFF_MIN_MS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("retry_backoff must be at least %d milliseconds", ES_BACKOFF_MIN_MS)));

	for (int i = 0; i < 7; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	values[0] = PointerGetDatum(name);
	values[7] = ObjectIdGetDatum(GetUserId());

	EsSpiConnect(&sw);
	es_sub_exec("SELECT 1 FROM event_store.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
				1, types, values, nulls, false, SPI_OK_SELECT);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("subscription \"%s\" already exists", text_to_cstring(name)),
				 errhint("Drop it first with event_store.drop_subscription(), or pick another name.")));
	es_sub_exec("INSERT INTO event_store.subscriptions (name, categories, event_types, partitions, "
				"start_position, max_attempts, retry_backoff, owner) "
				"VALUES ($1, $2, $3, $4, $5, $6, $7, $8::pg_catalog.regrole)",
				8, types, values, nulls, false, SPI_OK_INSERT);
	es_sub_exec("INSERT INTO event_store.subscription_partitions (subscription, partition, position) "
				"SELECT $1, p, $5 FROM pg_catalog.generate_series(0, $4 OPERATOR(pg_catalog.-) 1) p",
				5, types, values, nulls, false, SPI_OK_INSERT);
	EsSubscriptionsChanged();
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/*
 * Load a subscription for a change by its owner's members (drop, replay,
 * skip): 42501 otherwise, naming the owner
 */
static EsSubscription *
es_subscription_for_change(EsUserSwitch *sw, const char *name)
{
	EsSubscription *s = es_subscription_load(name, CurrentMemoryContext);

	EsCheckMayChange(sw, s->owner, psprintf("subscription \"%s\"", name));
	return s;
}

/* SQL: event_store.drop_subscription(name text) RETURNS void */
Datum
es_drop_subscription(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	EsUserSwitch sw;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};

	EsCheckWritable("drop_subscription()");
	EsSpiConnect(&sw);
	if (es_subscription_for_change(&sw, name)->projection)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("subscription \"%s\" belongs to the async projection of that name", name),
				 errhint("Drop the projection with event_store.drop_projection().")));
	es_sub_exec("DELETE FROM event_store.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
				1, types, values, NULL, false, SPI_OK_DELETE);
	EsSubscriptionsChanged();
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * Claiming
 * ------------------------------------------------------------------------ */

/* What a claim collects */
typedef struct EsClaim
{
	EsSubscription *sub;
	EsPart	   *parts;
	int			nparts;
	EsPart	  **by_partition;	/* [partitions]: ours, or NULL */
	HTAB	   *held;			/* stream ids of held streams (skipped by the scan) */
	int64		max_count;
	int64		delivered;
	Tuplestorestate *out;
	TupleDesc	out_desc;
	TupleDesc	event_desc;		/* of a stored row the log scan hands over */
	bool		stored_as_is;	/* a stored row's data is the result row's rest */
	HeapTupleHeader rowbuf;		/* a result row built from a stored row */
	Size		rowbuf_size;
	MemoryContext cxt;			/* the call's (rowbuf lives there) */
	/* the current scan */
	int32		attempt;		/* of the events handed out now */
	int64		last_scanned;	/* log scan: every event up to here is done */
	EsPart	   *current_part;	/* redelivery: the partition of the event */
	bool		full;
} EsClaim;

/*
 * Can the result rows be built from the stored rows' data as it is?  The
 * result's columns after ES_CLAIM_LEADING (two int4: 8 bytes, a multiple of
 * any alignment) must be the event's, of the same types, so that every
 * stored value keeps its alignment when the data moves 8 bytes on.
 */
static bool
es_claim_stored_as_is(TupleDesc out_desc, TupleDesc event_desc)
{
	if (out_desc->natts != ES_CLAIM_LEADING + Natts_es_event ||
		event_desc->natts != Natts_es_event)
		return false;
	for (int i = 0; i < ES_CLAIM_LEADING; i++)
	{
		Form_pg_attribute a = TupleDescAttr(out_desc, i);

		if (a->attisdropped || a->atttypid != INT4OID)
			return false;
	}
	for (int i = 0; i < Natts_es_event; i++)
	{
		Form_pg_attribute a = TupleDescAttr(out_desc, ES_CLAIM_LEADING + i);
		Form_pg_attribute e = TupleDescAttr(event_desc, i);

		if (a->attisdropped || e->attisdropped || a->atttypid != e->atttypid ||
			a->attlen != e->attlen || a->attalign != e->attalign ||
			a->attbyval != e->attbyval)
			return false;
	}
	return 2 * sizeof(int32) % MAXIMUM_ALIGNOF == 0;
}

/*
 * The result row of an event handed out as stored (no external values, all
 * its columns: see EsRowCallback): partition and attempt, then the stored
 * row's data copied as it is, with its null bitmap moved two columns on.
 * The same bytes heap_form_tuple would make of the deformed values, without
 * deforming and forming them one by one.
 */
static void
es_claim_put_stored(EsClaim *c, int32 partition, int32 attempt, HeapTuple stored)
{
	HeapTupleHeader src = stored->t_data;
	bool		hasnull = HeapTupleHasNulls(stored);
	int			natts = ES_CLAIM_LEADING + Natts_es_event;
	Size		hoff = MAXALIGN(offsetof(HeapTupleHeaderData, t_bits) +
								(hasnull ? BITMAPLEN(natts) : 0));
	Size		datalen = stored->t_len - src->t_hoff;
	Size		len = hoff + 2 * sizeof(int32) + datalen;
	HeapTupleHeader td;
	HeapTupleData tup;
	char	   *data;

	if (len > c->rowbuf_size)
	{
		Size		size = Max(len, 2 * c->rowbuf_size);

		if (c->rowbuf != NULL)
			pfree(c->rowbuf);
		c->rowbuf = MemoryContextAlloc(c->cxt, size);
		c->rowbuf_size = size;
	}
	td = c->rowbuf;
	memset(td, 0, hoff);
	HeapTupleHeaderSetDatumLength(td, len);
	HeapTupleHeaderSetTypeId(td, c->out_desc->tdtypeid);
	HeapTupleHeaderSetTypMod(td, c->out_desc->tdtypmod);
	HeapTupleHeaderSetNatts(td, natts);
	td->t_hoff = hoff;
	td->t_infomask = src->t_infomask & (HEAP_HASNULL | HEAP_HASVARWIDTH);
	if (hasnull)
	{
		/* the leading columns are never null */
		td->t_bits[0] = (1 << ES_CLAIM_LEADING) - 1;
		for (int i = 0; i < Natts_es_event; i++)
			if (!att_isnull(i, src->t_bits))
				td->t_bits[(i + ES_CLAIM_LEADING) >> 3] |= 1 << ((i + ES_CLAIM_LEADING) & 7);
	}
	data = (char *) td + hoff;
	memcpy(data, &partition, sizeof(int32));
	memcpy(data + sizeof(int32), &attempt, sizeof(int32));
	memcpy(data + 2 * sizeof(int32), (char *) src + src->t_hoff, datalen);
	tup.t_len = len;
	tup.t_data = td;
	tup.t_tableOid = InvalidOid;
	ItemPointerSetInvalid(&tup.t_self);
	tuplestore_puttuple(c->out, &tup);
}

/*
 * Hand one event out: into the result, and onto its partition's pending.
 * With stored (the event as stored), only its position is among values.
 */
static void
es_claim_emit(EsClaim *c, EsPart *p, Datum *values, bool *isnull, HeapTuple stored,
			  int32 attempt)
{
	if (stored != NULL)
		es_claim_put_stored(c, p->partition, attempt, stored);
	else
	{
		Datum		row[ES_CLAIM_LEADING + Natts_es_event];
		bool		nulls[ES_CLAIM_LEADING + Natts_es_event];

		row[0] = Int32GetDatum(p->partition);
		nulls[0] = false;
		row[1] = Int32GetDatum(attempt);
		nulls[1] = false;
		memcpy(&row[ES_CLAIM_LEADING], values, sizeof(Datum) * Natts_es_event);
		memcpy(&nulls[ES_CLAIM_LEADING], isnull, sizeof(bool) * Natts_es_event);
		tuplestore_putvalues(c->out, c->out_desc, row, nulls);
	}
	es_add_pending(p, DatumGetInt64(values[Anum_es_global_position - 1]), attempt);
	c->delivered++;
	if (c->delivered >= c->max_count)
		c->full = true;
}

/* Log scan: every event of our partitions after their position */
static bool
es_claim_scan_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsClaim    *c = (EsClaim *) arg;
	int64		pos = DatumGetInt64(values[Anum_es_global_position - 1]);
	text	   *sid = DatumGetTextPP(values[Anum_es_stream_id - 1]);
	EsPart	   *p = c->by_partition[EsStreamPartition(sid, c->sub->partitions)];

	if (c->full)
		return false;
	c->last_scanned = pos;
	if (p == NULL || pos <= p->position)
		return true;
	if (c->held != NULL &&
		EsTextHashFind(c->held, VARDATA_ANY(sid), VARSIZE_ANY_EXHDR(sid), 0) != NULL)
		return true;
	if (!EsFilterMatches(&c->sub->filter, values))
		return true;
	if (stored != NULL && !c->stored_as_is)
	{
		/* the scan filled in the leading values only: the whole event now */
		heap_deform_tuple(stored, c->event_desc, values, isnull);
		stored = NULL;
	}
	es_claim_emit(c, p, values, isnull, stored, 1);
	return !c->full;
}

/* ------------------------------------------------------------------------
 * The log map: where each partition's events are
 *
 * A claim's log scan reads every event after its partitions' lowest
 * position and keeps those of its own partitions: with 16 partitions and 2
 * per consumer, 1 in 8.  What it reads of every event on the way -- its
 * position, its partition and its row's TID in the hot table -- is kept
 * per backend, per partition count, so that a later scan of that part of
 * the log (another subscription with as many partitions, or the same one
 * again) fetches its own partitions' rows by TID, reading neither the
 * index nor the others' rows.  A position the map does not know (not
 * scanned yet, a gap, an archived event) is scanned as before.  An event
 * is never moved within the hot table, and a position never names another
 * event, so an entry stays right; what can happen is that its row is gone
 * (archived, purged) and its TID empty or reused: a row read by TID that is
 * not the expected event is looked up by position in every tier.  The map
 * is dropped when the events table is another one (re-created, rewritten),
 * and emptied when it has grown to ES_MAP_MAX_CHUNKS chunks.
 * ------------------------------------------------------------------------ */
#define ES_MAP_CHUNK_BITS	10
#define ES_MAP_CHUNK		(1 << ES_MAP_CHUNK_BITS)
#define ES_MAP_MAX_CHUNKS	512		/* about 4 MB */

typedef struct EsMapKey
{
	int64		chunk;			/* position >> ES_MAP_CHUNK_BITS */
	int32		partitions;		/* the partition count its entries are for */
	int32		pad;
} EsMapKey;

typedef struct EsMapChunk
{
	EsMapKey	key;
	uint64		known[ES_MAP_CHUNK / 64];	/* the entry is set */
	uint16		partition[ES_MAP_CHUNK];
	ItemPointerData tid[ES_MAP_CHUNK];
} EsMapChunk;

static HTAB *es_map = NULL;
static MemoryContext es_map_cxt = NULL;
static Oid	es_map_relid = InvalidOid;	/* the events table it is of */
static Oid	es_map_relfile = InvalidOid;
static EsMapChunk *es_map_last = NULL;	/* the chunk looked up last */

/* The map, for the events table as it is now (a new one when it changed) */
static void
es_map_open(const EsCatalog *cat)
{
	Relation	rel = table_open(cat->events_relid, AccessShareLock);
	Oid			relfile = rel->rd_node.relNode;
	HASHCTL		ctl;

	table_close(rel, NoLock);
	if (es_map != NULL && es_map_relid == cat->events_relid && es_map_relfile == relfile)
		return;
	if (es_map_cxt != NULL)
		MemoryContextDelete(es_map_cxt);
	es_map = NULL;
	es_map_last = NULL;
	es_map_cxt = AllocSetContextCreate(TopMemoryContext, "event_store log map",
									   ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(EsMapKey);
	ctl.entrysize = sizeof(EsMapChunk);
	ctl.hcxt = es_map_cxt;
	es_map = hash_create("event_store log map", 64, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	es_map_relid = cat->events_relid;
	es_map_relfile = relfile;
}

/* The chunk of position for a partition count (created if asked), or NULL */
static EsMapChunk *
es_map_chunk(int64 position, int32 partitions, bool create)
{
	EsMapKey	key;
	EsMapChunk *ch;
	bool		found;

	if (es_map_last != NULL && es_map_last->key.chunk == (position >> ES_MAP_CHUNK_BITS) &&
		es_map_last->key.partitions == partitions)
		return es_map_last;
	memset(&key, 0, sizeof(key));
	key.chunk = position >> ES_MAP_CHUNK_BITS;
	key.partitions = partitions;
	ch = hash_search(es_map, &key, HASH_FIND, NULL);
	if (ch == NULL && create)
	{
		if (hash_get_num_entries(es_map) >= ES_MAP_MAX_CHUNKS)
		{
			HASH_SEQ_STATUS seq;
			EsMapChunk *old;

			hash_seq_init(&seq, es_map);
			while ((old = hash_seq_search(&seq)) != NULL)
				(void) hash_search(es_map, &old->key, HASH_REMOVE, NULL);
		}
		ch = hash_search(es_map, &key, HASH_ENTER, &found);
		memset(ch->known, 0, sizeof(ch->known));
	}
	es_map_last = ch;
	return ch;
}

/* Does the map know the event at position (or its absence from the hot table)? */
static inline bool
es_map_known(EsMapChunk *ch, int64 position)
{
	int			i = (int) (position & (ES_MAP_CHUNK - 1));

	return ch != NULL && (ch->known[i >> 6] & (UINT64CONST(1) << (i & 63))) != 0;
}

/*
 * Log scan, before a row's visibility: an event of a partition that is not
 * ours, or at or below our partition's position, is skipped whether it is
 * visible or not (most of the log, with many partitions), so only its
 * stream id and position are read; the map learns where it is.  A stream
 * id stored compressed or out of line takes the ordinary path.
 */
static bool
es_claim_skip(HeapTuple tuple, TupleDesc desc, void *arg)
{
	EsClaim    *c = (EsClaim *) arg;
	bool		isnull;
	Datum		sid = heap_getattr(tuple, Anum_es_stream_id, desc, &isnull);
	int64		pos;
	int32		partition;
	EsPart	   *p;

	if (isnull || VARATT_IS_EXTERNAL(DatumGetPointer(sid)) ||
		VARATT_IS_COMPRESSED(DatumGetPointer(sid)))
		return false;
	partition = EsStreamPartition((text *) DatumGetPointer(sid), c->sub->partitions);
	pos = DatumGetInt64(heap_getattr(tuple, Anum_es_global_position, desc, &isnull));
	if (tuple->t_tableOid == es_map_relid && pos > 0)
	{
		EsMapChunk *ch = es_map_chunk(pos, c->sub->partitions, true);
		int			i = (int) (pos & (ES_MAP_CHUNK - 1));

		ch->partition[i] = (uint16) partition;
		ch->tid[i] = tuple->t_self;
		ch->known[i >> 6] |= UINT64CONST(1) << (i & 63);
	}
	p = c->by_partition[partition];
	return p == NULL || pos <= p->position;
}

/*
 * Index scan of the log: the events in (after, upto] (the map learns
 * where each one is)
 */
static void
es_claim_scan_range(EsClaim *c, int64 after, int64 upto, Snapshot snapshot)
{
	const EsCatalog *cat = EsGetCatalog();
	EsScanSpec	spec;

	memset(&spec, 0, sizeof(spec));
	spec.index_oid = cat->position_idx;
	spec.direction = ForwardScanDirection;
	spec.filter.ntypes = -1;	/* the subscription's filter is checked per event */
	spec.denied = EsDeniedCategories(c->sub->owner);
	spec.max_count = -1;
	/* a stored row is deformed only as far as the filter needs, the rest if handed out */
	spec.leading_values = EsFilterLeadingValues(&c->sub->filter);
	spec.skip = es_claim_skip;
	spec.skip_arg = c;
	ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTGreaterStrategyNumber, InvalidOid,
						   InvalidOid, F_INT8GT, Int64GetDatum(after));
	ScanKeyEntryInitialize(&spec.keys[1], 0, 1, BTLessEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_INT8LE, Int64GetDatum(upto));
	spec.nkeys = 2;
	spec.snapshot = snapshot;
	(void) EsScanEvents(cat, &spec, es_claim_scan_row, c);
}

/* Rows read by TID from the map: the events expected, in position order */
typedef struct EsTidScan
{
	EsClaim    *claim;
	int64	   *expected;
	int			n;
	int			next;			/* the first expected not seen yet */
	bool		cut;			/* stopped before a row: expected[next] is missing */
} EsTidScan;

static bool
es_claim_tid_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsTidScan  *ts = (EsTidScan *) arg;
	int64		pos = DatumGetInt64(values[Anum_es_global_position - 1]);
	int			k = ts->next;

	if (ts->claim->full)
		return false;
	while (k < ts->n && ts->expected[k] < pos)
		k++;
	if (k == ts->n || ts->expected[k] != pos)
		return true;			/* a TID that holds another event now */
	if (k > ts->next)
	{
		/* what comes before it is not where the map said: looked up first */
		ts->cut = true;
		return false;
	}
	ts->next++;
	return es_claim_scan_row(values, isnull, stored, ts->claim);
}

/*
 * Our events the map knows (positions expected, rows at tids), in order:
 * read by TID; one not there is looked up by position before the next
 */
static void
es_claim_fetch(EsClaim *c, ItemPointer tids, int64 *expected, int n, Snapshot snapshot)
{
	const EsCatalog *cat = EsGetCatalog();
	int			next = 0;

	while (next < n && !c->full)
	{
		EsScanSpec	spec;
		EsTidScan	ts = {c, expected, n, next, false};
		EsMapChunk *ch;

		memset(&spec, 0, sizeof(spec));
		spec.index_oid = cat->position_idx;
		spec.direction = ForwardScanDirection;
		spec.filter.ntypes = -1;
		spec.denied = EsDeniedCategories(c->sub->owner);
		spec.max_count = -1;
		spec.leading_values = EsFilterLeadingValues(&c->sub->filter);
		spec.snapshot = snapshot;
		spec.tids = tids + next;
		spec.ntids = n - next;
		(void) EsScanEvents(cat, &spec, es_claim_tid_row, &ts);
		if (c->full || ts.next >= n)
			break;
		/*
		 * expected[ts.next] was not at its TID (or not visible there): the
		 * map forgets it, and it is looked up by position (in every tier)
		 */
		ch = es_map_chunk(expected[ts.next], c->sub->partitions, false);
		if (ch != NULL)
		{
			int			i = (int) (expected[ts.next] & (ES_MAP_CHUNK - 1));

			ch->known[i >> 6] &= ~(UINT64CONST(1) << (i & 63));
		}
		es_claim_scan_range(c, expected[ts.next] - 1, expected[ts.next], snapshot);
		next = ts.next + 1;
	}
}

/*
 * The log scan: events after the lowest position of our partitions, up to
 * head, until max_count were handed out; every partition's position moves
 * to where the scan got.  Where the map knows the log, our events are read
 * by TID; elsewhere the log is scanned by position.
 */
static void
es_claim_scan_log(EsClaim *c, int64 head)
{
	const EsCatalog *cat = EsGetCatalog();
	Snapshot	snapshot;
	int64		from = PG_INT64_MAX;
	int64		pos;
	int32		nparts = c->sub->partitions;
	ItemPointer tids;
	int64	   *expected;
	int			batch;

	for (int i = 0; i < c->nparts; i++)
		from = Min(from, c->parts[i].position);
	if (c->nparts == 0 || from >= head || c->full)
		return;

	es_map_open(cat);
	c->event_desc = lookup_rowtype_tupdesc(cat->event_type_oid, -1);
	c->stored_as_is = es_claim_stored_as_is(c->out_desc, c->event_desc);
	/* head was computed before this snapshot: it sees every commit below */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	c->last_scanned = from;
	/* fetched a chunk's worth at a time at most, whatever max_count is */
	batch = (int) Min(c->max_count, (int64) ES_MAP_CHUNK);
	tids = palloc(sizeof(ItemPointerData) * Max(batch, 1));
	expected = palloc(sizeof(int64) * Max(batch, 1));
	pos = from + 1;
	while (pos <= head && !c->full)
	{
		EsMapChunk *ch = es_map_chunk(pos, nparts, false);
		int64		r;
		int			n = 0;

		if (!es_map_known(ch, pos))
		{
			/* the positions from here the map does not know: scanned */
			int64		upto = pos;

			for (;;)
			{
				int64		next = upto + 1;

				if (next > head)
					break;
				if (ch == NULL || (next >> ES_MAP_CHUNK_BITS) != ch->key.chunk)
					ch = es_map_chunk(next, nparts, false);
				if (ch == NULL)
				{
					/* a whole chunk unknown */
					upto = Min(head, (((next >> ES_MAP_CHUNK_BITS) + 1) << ES_MAP_CHUNK_BITS) - 1);
					continue;
				}
				if (es_map_known(ch, next))
					break;
				upto = next;
			}
			es_claim_scan_range(c, pos - 1, upto, snapshot);
			pos = upto + 1;
			continue;
		}

		/* known from here: ours, up to what is still wanted */
		for (r = pos; r <= head && n < Min(c->max_count - c->delivered, batch); r++)
		{
			int			i = (int) (r & (ES_MAP_CHUNK - 1));
			EsPart	   *p;

			if (i == 0 || ch == NULL)
				ch = es_map_chunk(r, nparts, false);
			if (!es_map_known(ch, r))
				break;
			p = c->by_partition[ch->partition[i]];
			if (p != NULL && r > p->position)
			{
				tids[n] = ch->tid[i];
				expected[n] = r;
				n++;
			}
		}
		if (n > 0)
			es_claim_fetch(c, tids, expected, n, snapshot);
		pos = r;
	}
	UnregisterSnapshot(snapshot);
	ReleaseTupleDesc(c->event_desc);
	c->event_desc = NULL;

	/* not stopped early: the scan saw everything up to head */
	if (!c->full)
		c->last_scanned = head;
	for (int i = 0; i < c->nparts; i++)
	{
		if (c->parts[i].position < c->last_scanned)
		{
			c->parts[i].position = c->last_scanned;
			c->parts[i].changed = true;
		}
	}
}

/* A redelivery a claim hands out before the new events */
typedef struct EsRedelivery
{
	int64		position;
	int32		attempt;
	EsPart	   *part;
	int			held;			/* index of its held stream, or -1 (redeliver list) */
	bool		emitted;
} EsRedelivery;

/* What the collecting scan of a held stream gathers */
typedef struct EsHeldScan
{
	EsClaim    *claim;
	int64		bound;			/* up to its partition's position */
	List	   *positions;		/* of the events passing the filter */
	MemoryContext cxt;			/* where the list lives (rows have their own) */
} EsHeldScan;

static bool
es_held_collect_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsHeldScan *hs = (EsHeldScan *) arg;
	int64		pos = DatumGetInt64(values[Anum_es_global_position - 1]);

	if (pos > hs->bound)
		return false;
	if (EsFilterMatches(&hs->claim->sub->filter, values))
	{
		MemoryContext old = MemoryContextSwitchTo(hs->cxt);
		int64	   *p = palloc(sizeof(int64));

		*p = pos;
		hs->positions = lappend(hs->positions, p);
		MemoryContextSwitchTo(old);
	}
	return true;
}

/* Redelivery by position: the one event, as it reads now */
static bool
es_claim_redeliver_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsClaim    *c = (EsClaim *) arg;

	es_claim_emit(c, c->current_part, values, isnull, NULL, c->attempt);
	return false;
}

static int
es_cmp_redelivery(const void *a, const void *b)
{
	int64		pa = ((const EsRedelivery *) a)->position;
	int64		pb = ((const EsRedelivery *) b)->position;

	return pa < pb ? -1 : (pa > pb ? 1 : 0);
}

/*
 * Redeliveries first, in global-position order: what a previous holder left
 * unacknowledged (attempt + 1), and the events of held streams whose turn it
 * is (a due retry: its event with the attempt after the last, then the
 * stream's later events; a stream catching up after one) up to their
 * partition's position.  A held stream stays held until its events handed
 * out here are acknowledged; one with nothing left to hand out is held no
 * longer.
 */
static void
es_claim_redeliveries(EsClaim *c, EsHeld *held, int nheld, Snapshot snapshot)
{
	const EsCatalog *cat = EsGetCatalog();
	EsRedelivery *items;
	int			n = 0;
	int			cap = 16;
	int64	   *handed_last = palloc0(sizeof(int64) * Max(nheld, 1));
	bool	   *collected = palloc0(sizeof(bool) * Max(nheld, 1));

	items = palloc(sizeof(EsRedelivery) * cap);
	for (int i = 0; i < c->nparts; i++)
	{
		EsPart	   *p = &c->parts[i];

		for (int k = 0; k < p->nredeliver; k++)
		{
			if (n == cap)
				items = repalloc(items, sizeof(EsRedelivery) * (cap *= 2));
			items[n++] = (EsRedelivery) {p->redeliver[k], p->redeliver_attempts[k], p, -1, false};
		}
	}
	for (int i = 0; i < nheld; i++)
	{
		EsHeld	   *h = &held[i];
		EsPart	   *p = c->by_partition[h->partition];
		int64		version;
		EsScanSpec	spec;
		EsHeldScan	hs;
		ListCell   *lc;
		bool		first = true;

		if (!h->due || p == NULL)
			continue;
		collected[i] = true;
		version = es_version_at(h->position);
		if (version == 0)
			continue;
		memset(&spec, 0, sizeof(spec));
		spec.index_oid = cat->stream_idx;
		spec.direction = ForwardScanDirection;
		spec.filter.ntypes = -1;
		spec.denied = EsDeniedCategories(c->sub->owner);
		spec.max_count = -1;
		spec.snapshot = snapshot;
		ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
							   C_COLLATION_OID, F_TEXTEQ, PointerGetDatum(h->stream_id));
		ScanKeyEntryInitialize(&spec.keys[1], 0, 2, BTGreaterEqualStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8GE, Int64GetDatum(version));
		spec.nkeys = 2;
		hs.claim = c;
		hs.bound = p->position;
		hs.positions = NIL;
		hs.cxt = CurrentMemoryContext;
		(void) EsScanEvents(cat, &spec, es_held_collect_row, &hs);
		foreach(lc, hs.positions)
		{
			int64		pos = *(int64 *) lfirst(lc);

			if (n == cap)
				items = repalloc(items, sizeof(EsRedelivery) * (cap *= 2));
			/* the retried event comes with its next attempt; the ones after it are new */
			items[n++] = (EsRedelivery) {pos, first && pos == h->position ? h->attempts + 1 : 1, p, i, false};
			first = false;
		}
	}

	qsort(items, n, sizeof(EsRedelivery), es_cmp_redelivery);
	for (int i = 0; i < n && !c->full; i++)
	{
		EsScanSpec	spec;
		int64		before = c->delivered;

		memset(&spec, 0, sizeof(spec));
		spec.index_oid = cat->position_idx;
		spec.direction = ForwardScanDirection;
		spec.filter.ntypes = -1;
		spec.denied = EsDeniedCategories(c->sub->owner);
		spec.max_count = 1;
		spec.snapshot = snapshot;
		ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8EQ, Int64GetDatum(items[i].position));
		spec.nkeys = 1;
		c->attempt = items[i].attempt;
		c->current_part = items[i].part;
		(void) EsScanEvents(cat, &spec, es_claim_redeliver_row, c);
		/* handed out, or gone meanwhile (purge, retention): done either way */
		items[i].emitted = true;
		if (items[i].held >= 0 && c->delivered > before)
			handed_last[items[i].held] = items[i].position;
	}

	/* the redeliver lists keep what was not handed out now */
	for (int pi = 0; pi < c->nparts; pi++)
	{
		EsPart	   *p = &c->parts[pi];
		int			keep;

		if (p->nredeliver == 0)
			continue;
		for (int k = 0; k < p->nredeliver; k++)
		{
			bool		done = false;

			for (int i = 0; i < n && !done; i++)
				done = items[i].held < 0 && items[i].part == p && items[i].emitted &&
					items[i].position == p->redeliver[k];
			if (done)
				p->redeliver[k] = -1;
		}
		keep = es_drop_marked(p->redeliver, p->redeliver_attempts, p->nredeliver);
		if (keep != p->nredeliver)
		{
			p->nredeliver = keep;
			p->changed = true;
		}
	}

	/* held streams: handed out up to here now, or nothing left: not held */
	for (int i = 0; i < nheld; i++)
	{
		Oid			types[3] = {TEXTOID, TEXTOID, INT8OID};
		Datum		values[3];
		bool		any = false;

		if (!collected[i])
			continue;
		for (int k = 0; k < n && !any; k++)
			any = items[k].held == i;
		values[0] = CStringGetTextDatum(c->sub->name);
		values[1] = PointerGetDatum(held[i].stream_id);
		if (!any)
		{
			es_sub_exec("DELETE FROM event_store.subscription_streams "
						"WHERE subscription OPERATOR(pg_catalog.=) $1 "
						"AND stream_id OPERATOR(pg_catalog.=) $2",
						2, types, values, NULL, false, SPI_OK_DELETE);
			continue;
		}
		if (handed_last[i] == 0)
			continue;			/* its turn comes in a later claim */
		values[2] = Int64GetDatum(handed_last[i]);
		es_sub_exec("UPDATE event_store.subscription_streams SET handed_through = $3, "
					"updated_at = pg_catalog.now() "
					"WHERE subscription OPERATOR(pg_catalog.=) $1 AND stream_id OPERATOR(pg_catalog.=) $2",
					3, types, values, NULL, false, SPI_OK_UPDATE);
	}
}

/*
 * The held streams of our partitions (all of them go into c->held, so the
 * log scan skips them); *nheld of them are returned with their state
 */
static EsHeld *
es_claim_load_held(EsClaim *c, int *nheld)
{
	Oid			types[2] = {TEXTOID, INT4ARRAYOID};
	Datum		values[2];
	int32	   *nums = palloc(sizeof(int32) * Max(c->nparts, 1));
	EsHeld	   *held;
	uint64		n;

	for (int i = 0; i < c->nparts; i++)
		nums[i] = c->parts[i].partition;
	values[0] = CStringGetTextDatum(c->sub->name);
	values[1] = es_int4_array(nums, c->nparts);
	es_sub_exec("SELECT stream_id, partition, global_position, attempts, "
				"(parked_at IS NULL AND handed_through IS NULL AND "
				" COALESCE(next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp(), true)), "
				"handed_through "
				"FROM event_store.subscription_streams "
				"WHERE subscription OPERATOR(pg_catalog.=) $1 "
				"AND partition OPERATOR(pg_catalog.=) ANY ($2) "
				"ORDER BY global_position FOR UPDATE",
				2, types, values, NULL, false, SPI_OK_SELECT);
	n = SPI_processed;
	held = palloc0(sizeof(EsHeld) * Max(n, 1));
	if (n > 0)
		c->held = EsTextHashCreate("event_store held streams", sizeof(EsTextKey),
								   CurrentMemoryContext);
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		bool		found;
		EsHeld	   *h = &held[i];
		Datum		d;

		h->stream_id = DatumGetTextPCopy(SPI_getbinval(tup, desc, 1, &isnull));
		h->partition = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
		h->position = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
		h->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
		h->due = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		d = SPI_getbinval(tup, desc, 6, &isnull);
		h->handed = !isnull;
		h->handed_through = isnull ? 0 : DatumGetInt64(d);
		(void) EsTextHashEnter(c->held, VARDATA_ANY(h->stream_id),
							   VARSIZE_ANY_EXHDR(h->stream_id), 0, &found);
	}
	*nheld = (int) n;
	return held;
}

/*
 * Take partitions: free ones, or ones whose lease expired (what their
 * holder left unacknowledged is handed out again, attempt + 1), up to want.
 * Never one of those the claim holds already: their rows are locked by this
 * transaction, so SKIP LOCKED does not skip them, and a lease that ran out
 * since they were read (while waiting for their locks) would make them look
 * expired.
 */
static void
es_claim_take(EsClaim *c, const char *consumer, int want)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT4ARRAYOID};
	Datum		values[3];
	int32	   *mine;
	uint64		n;
	SPITupleTable *tt;

	if (want <= 0)
		return;
	mine = palloc(sizeof(int32) * Max(c->nparts, 1));
	for (int i = 0; i < c->nparts; i++)
		mine[i] = c->parts[i].partition;
	values[0] = CStringGetTextDatum(c->sub->name);
	values[1] = Int32GetDatum(want);
	values[2] = es_int4_array(mine, c->nparts);
	es_sub_exec("SELECT p.partition, p.position, p.pending, p.pending_attempts, p.redeliver, "
				"p.redeliver_attempts, p.holder, EXISTS (SELECT 1 FROM event_store.subscription_streams t "
				"  WHERE t.subscription OPERATOR(pg_catalog.=) $1 AND t.partition OPERATOR(pg_catalog.=) p.partition), "
				"p.ctid "
				"FROM event_store.subscription_partitions p "
				"WHERE p.subscription OPERATOR(pg_catalog.=) $1 "
				"AND (p.holder IS NULL OR p.lease_expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()) "
				"AND p.partition OPERATOR(pg_catalog.<>) ALL ($3) "
				"ORDER BY p.partition LIMIT $2 FOR UPDATE OF p SKIP LOCKED",
				3, types, values, NULL, false, SPI_OK_SELECT);
	n = SPI_processed;
	tt = SPI_tuptable;
	c->parts = repalloc(c->parts, sizeof(EsPart) * (c->nparts + n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = tt->vals[i];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		EsPart	   *p = &c->parts[c->nparts++];
		int64	   *pending;
		int32	   *attempts;
		int			npending;

		memset(p, 0, sizeof(EsPart));
		p->partition = DatumGetInt32(SPI_getbinval(tup, desc, 1, &isnull));
		p->position = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		npending = es_get_int8_array(SPI_getbinval(tup, desc, 3, &isnull), &pending);
		(void) es_get_int4_array(SPI_getbinval(tup, desc, 4, &isnull), &attempts);
		p->nredeliver = es_get_int8_array(SPI_getbinval(tup, desc, 5, &isnull), &p->redeliver);
		(void) es_get_int4_array(SPI_getbinval(tup, desc, 6, &isnull), &p->redeliver_attempts);
		p->has_held = DatumGetBool(SPI_getbinval(tup, desc, 8, &isnull));
		p->tid = *((ItemPointer) DatumGetPointer(SPI_getbinval(tup, desc, 9, &isnull)));
		/* the previous holder's pending events go first, attempt + 1 */
		p->pending = pending;
		p->pending_attempts = attempts;
		p->npending = npending;
		es_pending_to_redeliver(p);
		p->changed = true;
	}

	/*
	 * A consumer whose partition was taken over is fenced: its next ack or
	 * nack is refused (55000) until it claims again, so that a transaction
	 * that handled events of the lost partition cannot commit half of them
	 * as acknowledged
	 */
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		old_holder = SPI_getbinval(tt->vals[i], tt->tupdesc, 7, &isnull);
		Oid			ftypes[2] = {TEXTOID, TEXTOID};
		Datum		fvalues[2];

		if (isnull || strcmp(TextDatumGetCString(old_holder), consumer) == 0)
			continue;
		fvalues[0] = CStringGetTextDatum(c->sub->name);
		fvalues[1] = old_holder;
		/* (an insert: it never waits for the fenced consumer's locks) */
		es_sub_exec("INSERT INTO event_store.subscription_fences (subscription, consumer, fenced_at) "
					"VALUES ($1, $2, pg_catalog.clock_timestamp())",
					2, ftypes, fvalues, NULL, false, SPI_OK_INSERT);
	}
}

/* One claim: returns how many events were handed out */
static int64
es_claim_once(EsClaim *c, const char *consumer, double lease_ms)
{
	Oid			types[3] = {TEXTOID, TEXTOID, FLOAT8OID};
	Datum		values[3];
	int64		live;
	int			share;
	int			nheld;
	EsHeld	   *held;
	int64		head;
	Snapshot	snapshot;
	bool		isnull;
	bool		fenced;

	values[0] = CStringGetTextDatum(c->sub->name);
	values[1] = CStringGetTextDatum(consumer);
	values[2] = Float8GetDatum(lease_ms);

	/*
	 * The consumer is live while this lease runs (its claim time recorded);
	 * was it fenced since its last claim (a partition of it taken over)?
	 * Then what it was handed in the partitions it keeps comes again: the
	 * transaction whose acknowledgement the fence refused rolled back.  And
	 * how many consumers are live, itself included.  From C when its row
	 * exists and it has no fence (every claim after its first, as a rule);
	 * else in one statement, which also inserts the row or drops the fences.
	 */
	if (es_claim_consumer_row(c->sub, consumer, lease_ms, &live))
		fenced = false;
	else
	{
		es_sub_exec("WITH prev AS (SELECT c.claimed_at FROM event_store.subscription_consumers c "
					"  WHERE c.subscription OPERATOR(pg_catalog.=) $1 AND c.consumer OPERATOR(pg_catalog.=) $2), "
					"gone AS (DELETE FROM event_store.subscription_fences f "
					"  WHERE f.subscription OPERATOR(pg_catalog.=) $1 AND f.consumer OPERATOR(pg_catalog.=) $2 "
					"  RETURNING f.fenced_at), "
					"up AS (INSERT INTO event_store.subscription_consumers AS c (subscription, consumer, "
					"  lease_expires_at, claimed_at) "
					"  VALUES ($1, $2, pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) "
					"  pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000), pg_catalog.clock_timestamp()) "
					"  ON CONFLICT (subscription, consumer) DO UPDATE SET lease_expires_at = EXCLUDED.lease_expires_at, "
					"  claimed_at = EXCLUDED.claimed_at RETURNING 1) "
					"SELECT EXISTS (SELECT 1 FROM gone, prev "
					"  WHERE gone.fenced_at OPERATOR(pg_catalog.>) prev.claimed_at), "
					"(SELECT pg_catalog.count(*) FROM event_store.subscription_consumers o "
					"  WHERE o.subscription OPERATOR(pg_catalog.=) $1 AND o.consumer OPERATOR(pg_catalog.<>) $2 "
					"  AND o.lease_expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()) "
					"  OPERATOR(pg_catalog.+) (SELECT pg_catalog.count(*) FROM up)",
					3, types, values, NULL, false, SPI_OK_SELECT);
		fenced = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		live = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	}
	share = (int) ((c->sub->partitions + Max(live, 1) - 1) / Max(live, 1));

	/*
	 * Ours, renewed below (a statement of its own: joined to the one above,
	 * the claim measured no cheaper); beyond the fair share, the idle ones
	 * go back
	 */
	c->parts = es_my_partitions(c->sub, consumer, &c->nparts, NULL, true);
	if (fenced)
		for (int i = 0; i < c->nparts; i++)
			es_pending_to_redeliver(&c->parts[i]);
	for (int i = c->nparts - 1; i >= 0 && c->nparts > share; i--)
	{
		EsPart	   *p = &c->parts[i];

		if (p->npending > 0 || p->nredeliver > 0)
			continue;
		es_save_partition(c->sub, p, NULL, 0);
		memmove(p, p + 1, sizeof(EsPart) * (c->nparts - i - 1));
		c->nparts--;
	}
	es_claim_take(c, consumer, share - c->nparts);
	c->by_partition = palloc0(sizeof(EsPart *) * c->sub->partitions);
	for (int i = 0; i < c->nparts; i++)
		c->by_partition[c->parts[i].partition] = &c->parts[i];

	held = NULL;
	nheld = 0;
	for (int i = 0; i < c->nparts; i++)
		if (c->parts[i].has_held)
		{
			held = es_claim_load_held(c, &nheld);
			break;
		}

	/* the horizon first, then a snapshot that sees every commit below it */
	head = EsSafeHead();
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	if (c->max_count > 0)
	{
		es_claim_redeliveries(c, held, nheld, snapshot);
		es_claim_scan_log(c, head);
	}
	UnregisterSnapshot(snapshot);

	/* every partition we hold gets its lease renewed */
	es_save_partitions(c->sub, c->parts, c->nparts, consumer, lease_ms);
	return c->delivered;
}

/*
 * When should a waiting claim look again, at the latest, besides when
 * events commit: the next retry due in our partitions, or the next lease
 * that expires in the subscription.  Milliseconds from now, or -1.
 */
static double
es_claim_next_due(EsSubscription *s)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(s->name)};
	bool		isnull;
	Datum		d;

	es_sub_exec("SELECT EXTRACT(epoch FROM least("
				"(SELECT pg_catalog.min(next_attempt_at) FROM event_store.subscription_streams "
				"  WHERE subscription OPERATOR(pg_catalog.=) $1 AND parked_at IS NULL "
				"  AND handed_through IS NULL), "
				"(SELECT pg_catalog.min(lease_expires_at) FROM event_store.subscription_partitions "
				"  WHERE subscription OPERATOR(pg_catalog.=) $1 AND holder IS NOT NULL)) "
				"OPERATOR(pg_catalog.-) pg_catalog.clock_timestamp()) OPERATOR(pg_catalog.*) 1000",
				1, types, values, NULL, true, SPI_OK_SELECT);
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (isnull)
		return -1;
	return Max(DatumGetFloat8(DirectFunctionCall1(numeric_float8, d)), 0);
}

/*
 * SQL: event_store.claim_events(subscription text, consumer text,
 *		max_count int, lease interval, wait interval) RETURNS TABLE(...)
 */
Datum
es_claim_events(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	char	   *consumer = es_consumer_arg(fcinfo, 1);
	int32		max_count;
	double		lease_ms;
	double		wait_ms;
	TimestampTz deadline;
	EsUserSwitch sw;
	EsClaim		c;
	MemoryContext callcxt = CurrentMemoryContext;

	EsCheckWritable("claim_events()");
	EsCheckPreloaded();
	EsRequireArg(fcinfo, 2, "max_count");
	max_count = PG_GETARG_INT32(2);
	EsRejectNegative(max_count, "max_count", NULL);
	lease_ms = EsIntervalArgMs(fcinfo, 3, "lease", true);
	wait_ms = EsIntervalArgMs(fcinfo, 4, "wait", false);
	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (int64) Min(wait_ms, (double) INT_MAX));

	EsInitResultSet(fcinfo);
	memset(&c, 0, sizeof(c));
	c.out = rsinfo->setResult;
	c.out_desc = rsinfo->setDesc;
	c.cxt = callcxt;
	c.max_count = max_count;

	EsSpiConnect(&sw);
	c.sub = es_subscription_load(name, callcxt);
	es_check_may_use(&sw, c.sub);
	for (;;)
	{
		int64		head_before = EsSafeHead();
		long		remaining;
		double		due;

		if (es_claim_once(&c, consumer, lease_ms) > 0 || max_count == 0)
			break;
		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), deadline);
		if (remaining <= 0)
			break;
		due = es_claim_next_due(c.sub);
		if (due >= 0 && due < remaining)
			remaining = (long) due + 1;
		/* woken when an appender's transaction ends (no polling) */
		(void) EsWaitForHead(head_before, remaining);
		CHECK_FOR_INTERRUPTS();
		/* the next round starts afresh (its own snapshot, its own rows) */
		c.parts = NULL;
		c.nparts = 0;
		c.held = NULL;
	}
	EsSpiFinish(&sw);
	return (Datum) 0;
}

/* ------------------------------------------------------------------------
 * Acknowledging, nacking, releasing
 * ------------------------------------------------------------------------ */

/* The 55000 of a consumer that holds nothing (any more) */
static void
es_not_held(EsSubscription *s, const char *consumer, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("consumer \"%s\" does not hold %s of subscription \"%s\"",
					consumer, what, s->name),
			 errdetail("Its lease expired, or another consumer holds it now, or it was never handed to it."),
			 errhint("Claim events again with event_store.claim_events(); what was not acknowledged is delivered again.")));
}

/* The 55000 of a consumer fenced since its partition was taken over */
static void
es_fenced_error(EsSubscription *s, const char *consumer)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("consumer \"%s\" lost a partition of subscription \"%s\"", consumer, s->name),
			 errdetail("Its lease expired and another consumer took over a partition; what it was handed there goes to that consumer."),
			 errhint("Roll back what was handled, and claim events again with event_store.claim_events().")));
}

/* A consumer fenced since its partition was taken over: 55000 until it claims */
static void
es_check_not_fenced(EsSubscription *s, const char *consumer)
{
	Snapshot	snapshot = RegisterSnapshot(GetTransactionSnapshot());
	bool		fenced = es_consumer_fenced(s, consumer, snapshot);

	UnregisterSnapshot(snapshot);
	if (fenced)
		es_fenced_error(s, consumer);
}

/* What es_stream_event_after looks for: a stream's first event after a position */
typedef struct EsAfterScan
{
	int64		after;
	int64		found;			/* its position, or 0 */
} EsAfterScan;

static bool
es_after_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsAfterScan *as = (EsAfterScan *) arg;
	int64		pos = DatumGetInt64(values[Anum_es_global_position - 1]);

	if (pos <= as->after)
		return true;
	as->found = pos;
	return false;
}

/*
 * The position of a stream's first event after position after, looking
 * from its event at from_position on (the stream's positions rise with its
 * versions); 0 when there is none
 */
static int64
es_stream_event_after(text *stream_id, int64 from_position, int64 after)
{
	const EsCatalog *cat = EsGetCatalog();
	int64		version = es_version_at(from_position);
	EsScanSpec	spec;
	EsAfterScan as = {after, 0};

	memset(&spec, 0, sizeof(spec));
	spec.index_oid = cat->stream_idx;
	spec.direction = ForwardScanDirection;
	spec.filter.ntypes = -1;
	spec.max_count = -1;
	spec.raw = true;
	spec.snapshot = GetLatestSnapshot();
	spec.leading_values = Anum_es_global_position;
	ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
						   C_COLLATION_OID, F_TEXTEQ, PointerGetDatum(stream_id));
	ScanKeyEntryInitialize(&spec.keys[1], 0, 2, BTGreaterEqualStrategyNumber, InvalidOid,
						   InvalidOid, F_INT8GE, Int64GetDatum(Max(version, 1)));
	spec.nkeys = 2;
	(void) EsScanEvents(cat, &spec, es_after_row, &as);
	return as.found;
}

/*
 * A held stream (its next event at held_position, handed out through
 * handed_through) whose events up to upto were acknowledged: its next event
 * to hand out is its first one after upto, if that is at or below its
 * partition's position (then it catches up at once: what it handed out
 * beyond upto stays pending); else it is no longer held (its later events
 * come with the log)
 */
static void
es_held_acknowledged(EsSubscription *s, text *stream_id, int64 held_position, int64 upto,
					 int64 handed_through, int64 partition_position)
{
	int64		next = es_stream_event_after(stream_id, held_position, upto);
	Oid			types[4] = {TEXTOID, TEXTOID, INT8OID, BOOLOID};
	Datum		values[4];

	values[0] = CStringGetTextDatum(s->name);
	values[1] = PointerGetDatum(stream_id);
	if (next == 0 || next > partition_position)
	{
		es_sub_exec("DELETE FROM event_store.subscription_streams "
					"WHERE subscription OPERATOR(pg_catalog.=) $1 AND stream_id OPERATOR(pg_catalog.=) $2",
					2, types, values, NULL, false, SPI_OK_DELETE);
		return;
	}
	values[2] = Int64GetDatum(next);
	values[3] = BoolGetDatum(handed_through > upto);
	es_sub_exec("UPDATE event_store.subscription_streams SET global_position = $3, attempts = 0, "
				"last_error = NULL, next_attempt_at = NULL, "
				"handed_through = CASE WHEN $4 THEN handed_through END, updated_at = pg_catalog.now() "
				"WHERE subscription OPERATOR(pg_catalog.=) $1 AND stream_id OPERATOR(pg_catalog.=) $2",
				4, types, values, NULL, false, SPI_OK_UPDATE);
}

/*
 * One pass of an ack: the consumer's partitions (55000 when it holds none
 * or was fenced), their events up to upto taken off pending and their rows
 * written back; *acked counts the events.  Without lock, the rows are read
 * as the snapshot sees them and written back optimistically
 * (es_write_partitions_seen): NULL when one of them had changed, with
 * *acked counting what the rows written meanwhile took off (the pass with
 * lock finds them without those events).  With lock, as ExecLockRows:
 * never NULL.
 */
static EsPart *
es_ack_pass(EsSubscription *s, const char *consumer, int64 upto, bool lock, int *nparts,
			int64 *acked)
{
	bool		fenced = false;
	EsPart	   *parts = es_my_partitions(s, consumer, nparts, &fenced, lock);

	if (*nparts == 0)
		es_not_held(s, consumer, "any partition");
	if (fenced)
		es_fenced_error(s, consumer);

	for (int i = 0; i < *nparts; i++)
	{
		EsPart	   *p = &parts[i];
		int			keep;

		for (int k = 0; k < p->npending; k++)
			if (p->pending[k] <= upto)
			{
				p->acked++;
				p->pending[k] = -1;
			}
		keep = es_drop_marked(p->pending, p->pending_attempts, p->npending);
		if (keep != p->npending)
		{
			p->npending = keep;
			p->changed = true;
		}
	}
	if (lock)
		es_save_partitions(s, parts, *nparts, consumer, -1);
	else if (!es_write_partitions_seen(s, parts, *nparts, consumer))
	{
		for (int i = 0; i < *nparts; i++)
			if (parts[i].written)
				*acked += parts[i].acked;
		return NULL;
	}
	for (int i = 0; i < *nparts; i++)
		*acked += parts[i].acked;
	return parts;
}

/*
 * SQL: event_store.ack_events(subscription text, consumer text,
 *		up_to_position bigint) RETURNS bigint
 */
Datum
es_ack_events(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	char	   *consumer = es_consumer_arg(fcinfo, 1);
	int64		upto;
	EsUserSwitch sw;
	EsSubscription *s;
	EsPart	   *parts;
	int			nparts;
	int64		acked = 0;
	Oid			types[3] = {TEXTOID, INT4ARRAYOID, INT8OID};
	Datum		values[3];
	int32	   *nums;
	bool		any_held;

	EsCheckWritable("ack_events()");
	EsRequireArg(fcinfo, 2, "up_to_position");
	upto = PG_GETARG_INT64(2);
	EsRejectNegative(upto, "up_to_position", NULL);

	EsSpiConnect(&sw);
	s = es_subscription_load(name, CurrentMemoryContext);
	es_check_may_use(&sw, s);
	/*
	 * The consumer's partitions as a snapshot sees them, written back with
	 * one update each (which locks the row as it writes it); when one was
	 * changed meanwhile, again on their latest versions, locked first
	 */
	parts = es_ack_pass(s, consumer, upto, false, &nparts, &acked);
	if (parts == NULL)
	{
		int64		again = 0;

		parts = es_ack_pass(s, consumer, upto, true, &nparts, &again);
		acked += again;
	}
	nums = palloc(sizeof(int32) * nparts);
	for (int i = 0; i < nparts; i++)
		nums[i] = parts[i].partition;

	/* held streams handed out up to here move on (when a partition has any) */
	any_held = false;
	for (int i = 0; i < nparts; i++)
		any_held |= parts[i].has_held;
	if (!any_held)
	{
		EsSpiFinish(&sw);
		PG_RETURN_INT64(acked);
	}
	values[0] = CStringGetTextDatum(s->name);
	values[1] = es_int4_array(nums, nparts);
	values[2] = Int64GetDatum(upto);
	es_sub_exec("SELECT t.stream_id, t.handed_through, p.position, t.global_position "
				"FROM event_store.subscription_streams t "
				"JOIN event_store.subscription_partitions p "
				"  ON p.subscription OPERATOR(pg_catalog.=) t.subscription "
				" AND p.partition OPERATOR(pg_catalog.=) t.partition "
				"WHERE t.subscription OPERATOR(pg_catalog.=) $1 "
				"AND t.partition OPERATOR(pg_catalog.=) ANY ($2) "
				"AND t.handed_through IS NOT NULL AND t.global_position OPERATOR(pg_catalog.<=) $3 "
				"FOR UPDATE OF t",
				3, types, values, NULL, false, SPI_OK_SELECT);
	if (SPI_processed > 0)
	{
		SPITupleTable *tt = SPI_tuptable;
		uint64		n = SPI_processed;

		for (uint64 i = 0; i < n; i++)
		{
			bool		isnull;
			text	   *sid = DatumGetTextPCopy(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
			int64		through = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull));
			int64		ppos = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 3, &isnull));
			int64		held_at = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 4, &isnull));

			es_held_acknowledged(s, sid, held_at, Min(upto, through), through, ppos);
		}
	}
	EsSpiFinish(&sw);
	PG_RETURN_INT64(acked);
}

/*
 * SQL: event_store.nack_event(subscription text, consumer text,
 *		global_position bigint, error text, retry_after interval) RETURNS void
 */
Datum
es_nack_event(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	char	   *consumer = es_consumer_arg(fcinfo, 1);
	int64		position;
	text	   *error;
	double		retry_ms = -1;
	EsUserSwitch sw;
	EsSubscription *s;
	EsPart	   *parts;
	int			nparts;
	EsPart	   *p;
	text	   *sid;
	int			at = -1;
	int32		attempt;
	Oid			types[7] = {TEXTOID, TEXTOID, INT4OID, INT8OID, INT4OID, TEXTOID, FLOAT8OID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	EsCheckWritable("nack_event()");
	EsRequireArg(fcinfo, 2, "global_position");
	position = PG_GETARG_INT64(2);
	EsRejectNegative(position, "global_position", NULL);
	EsRequireArg(fcinfo, 3, "error");
	error = PG_GETARG_TEXT_PP(3);
	if (!PG_ARGISNULL(4))
		retry_ms = EsIntervalArgMs(fcinfo, 4, "retry_after", false);

	EsSpiConnect(&sw);
	s = es_subscription_load(name, CurrentMemoryContext);
	es_check_may_use(&sw, s);
	parts = es_my_partitions(s, consumer, &nparts, NULL, true);
	es_check_not_fenced(s, consumer);
	sid = es_stream_at(position);
	p = sid ? es_find_part(parts, nparts, EsStreamPartition(sid, s->partitions)) : NULL;
	for (int k = 0; p != NULL && k < p->npending && at < 0; k++)
		if (p->pending[k] == position)
			at = k;
	if (at < 0)
		es_not_held(s, consumer, psprintf("the event at global position " INT64_FORMAT, position));
	attempt = p->pending_attempts[at];

	/* the event and its stream's later events go back: they follow it */
	for (int k = 0; k < p->npending; k++)
	{
		bool		drop = (k == at);

		if (!drop && p->pending[k] > position)
		{
			text	   *other = es_stream_at(p->pending[k]);

			drop = other != NULL && VARSIZE_ANY_EXHDR(other) == VARSIZE_ANY_EXHDR(sid) &&
				memcmp(VARDATA_ANY(other), VARDATA_ANY(sid), VARSIZE_ANY_EXHDR(sid)) == 0;
		}
		if (drop)
			p->pending[k] = -1;
	}
	p->npending = es_drop_marked(p->pending, p->pending_attempts, p->npending);
	es_save_partition(s, p, consumer, -1);

	/* the stream is held: retried after the backoff, parked when out of attempts */
	if (retry_ms < 0)
		retry_ms = (double) EsBackoffMs(s->backoff_ms, attempt, true);
	values[0] = CStringGetTextDatum(s->name);
	values[1] = PointerGetDatum(sid);
	values[2] = Int32GetDatum(p->partition);
	values[3] = Int64GetDatum(position);
	values[4] = Int32GetDatum(attempt);
	values[5] = PointerGetDatum(error);
	values[6] = Float8GetDatum(attempt >= s->max_attempts ? -1 : retry_ms);
	es_sub_exec("INSERT INTO event_store.subscription_streams AS t (subscription, stream_id, partition, "
				"global_position, attempts, last_error, next_attempt_at, parked_at) "
				"VALUES ($1, $2, $3, $4, $5, $6, "
				"CASE WHEN $7 OPERATOR(pg_catalog.>=) 0 THEN pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) "
				"  pg_catalog.make_interval(secs => $7 OPERATOR(pg_catalog./) 1000) END, "
				"CASE WHEN $7 OPERATOR(pg_catalog.<) 0 THEN pg_catalog.now() END) "
				"ON CONFLICT (subscription, stream_id) DO UPDATE SET partition = EXCLUDED.partition, "
				"global_position = EXCLUDED.global_position, attempts = EXCLUDED.attempts, "
				"last_error = EXCLUDED.last_error, next_attempt_at = EXCLUDED.next_attempt_at, "
				"parked_at = EXCLUDED.parked_at, handed_through = NULL, updated_at = pg_catalog.now()",
				7, types, values, nulls, false, SPI_OK_INSERT);
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/*
 * SQL: event_store.release_events(subscription text, consumer text)
 *		RETURNS void
 */
Datum
es_release_events(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	char	   *consumer = es_consumer_arg(fcinfo, 1);
	EsUserSwitch sw;
	EsSubscription *s;
	EsPart	   *parts;
	int			nparts;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];

	EsCheckWritable("release_events()");
	EsSpiConnect(&sw);
	s = es_subscription_load(name, CurrentMemoryContext);
	es_check_may_use(&sw, s);
	parts = es_my_partitions(s, consumer, &nparts, NULL, true);
	for (int i = 0; i < nparts; i++)
	{
		/* unacknowledged events are delivered again, to the next holder */
		es_pending_to_redeliver(&parts[i]);
		es_save_partition(s, &parts[i], NULL, 0);
	}
	values[0] = CStringGetTextDatum(s->name);
	values[1] = CStringGetTextDatum(consumer);
	es_sub_exec("DELETE FROM event_store.subscription_consumers "
				"WHERE subscription OPERATOR(pg_catalog.=) $1 AND consumer OPERATOR(pg_catalog.=) $2",
				2, types, values, NULL, false, SPI_OK_DELETE);
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * Parked streams
 * ------------------------------------------------------------------------ */

/*
 * SQL: event_store.replay_parked(subscription text, stream_id text)
 *		RETURNS int
 */
Datum
es_replay_parked(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	EsUserSwitch sw;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	int64		n;

	EsCheckWritable("replay_parked()");
	if (!PG_ARGISNULL(1))
		values[1] = PointerGetDatum(EsGetRequiredText(fcinfo, 1, "stream_id"));
	else
		nulls[1] = 'n';
	EsSpiConnect(&sw);
	(void) es_subscription_for_change(&sw, name);
	values[0] = CStringGetTextDatum(name);
	es_sub_exec("UPDATE event_store.subscription_streams SET parked_at = NULL, attempts = 0, "
				"next_attempt_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.now() "
				"WHERE subscription OPERATOR(pg_catalog.=) $1 AND parked_at IS NOT NULL "
				"AND ($2::pg_catalog.text IS NULL OR stream_id OPERATOR(pg_catalog.=) $2)",
				2, types, values, nulls, false, SPI_OK_UPDATE);
	n = (int64) SPI_processed;
	EsSpiFinish(&sw);
	PG_RETURN_INT32((int32) n);
}

/*
 * SQL: event_store.skip_parked(subscription text, stream_id text)
 *		RETURNS int
 */
Datum
es_skip_parked(PG_FUNCTION_ARGS)
{
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "subscription"));
	EsUserSwitch sw;
	Oid			types[3] = {TEXTOID, TEXTOID, OIDOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	int64		n;

	EsCheckWritable("skip_parked()");
	if (!PG_ARGISNULL(1))
		values[1] = PointerGetDatum(EsGetRequiredText(fcinfo, 1, "stream_id"));
	else
		nulls[1] = 'n';
	EsSpiConnect(&sw);
	(void) es_subscription_for_change(&sw, name);
	values[0] = CStringGetTextDatum(name);
	values[2] = ObjectIdGetDatum(sw.save_userid);
	/*
	 * The parked event and its stream's later events up to the partition's
	 * position are acknowledged; later ones come with the log as ever
	 */
	es_sub_exec("WITH gone AS ("
				" DELETE FROM event_store.subscription_streams t "
				" WHERE t.subscription OPERATOR(pg_catalog.=) $1 AND t.parked_at IS NOT NULL "
				" AND ($2::pg_catalog.text IS NULL OR t.stream_id OPERATOR(pg_catalog.=) $2) "
				" RETURNING t.*) "
				"INSERT INTO event_store.subscription_skipped (subscription, stream_id, global_position, "
				" through_position, last_error, skipped_by) "
				"SELECT g.subscription, g.stream_id, g.global_position, p.position, g.last_error, "
				" $3::pg_catalog.regrole "
				"FROM gone g JOIN event_store.subscription_partitions p "
				" ON p.subscription OPERATOR(pg_catalog.=) g.subscription "
				" AND p.partition OPERATOR(pg_catalog.=) g.partition",
				3, types, values, nulls, false, SPI_OK_INSERT);
	n = (int64) SPI_processed;
	EsSpiFinish(&sw);
	PG_RETURN_INT32((int32) n);
}
