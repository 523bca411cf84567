/*
 * projection.c
 *	  Projections (CQRS read models): inline ones applied by append() to the
 *	  events it just wrote, in one pass, inside the appending transaction; async
 *	  ones applied in gap-safe global order by the background worker or by
 *	  run_projections(), each batch's handler work committed together with
 *	  the projection's checkpoint.
 *
 * Locking contract: appenders never lock a projection; each takes its
 * category's lock in ROW EXCLUSIVE mode (EsLockCategory).  Operations that
 * change what an inline projection sees (create, pause, resume, rebuild,
 * drop) take SHARE ROW EXCLUSIVE on the locks of the categories that
 * projection may see: those its filter names and its owner may read (every
 * category without grants shares one lock).  That waits for in-flight
 * appends there and holds new ones off until the operation commits, so the
 * projection's position is exact, and it never holds off appends to a
 * category the projection's owner may not read: a role without grants,
 * idle in a transaction after such an operation, blocks no append there.
 * With appends to other categories still in flight, the position is the
 * last position handed out (EsLastAllocatedPosition), not the safe head:
 * every event of the locked categories up to it is committed.  Async
 * batches lock their projection's row FOR UPDATE SKIP LOCKED, so the worker
 * and a manual run_projections() never apply the same batch twice.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "activity.h"
#include "api.h"
#include "callback.h"
#include "catalog.h"
#include "followers.h"
#include "grants.h"
#include "locks.h"
#include "pg_mirror.h"
#include "position.h"
#include "projection.h"
#include "read.h"
#include "registry.h"
#include "roles.h"
#include "shared.h"
#include "subscription.h"
#include "upcast.h"
#include "worker.h"

PG_FUNCTION_INFO_V1(es_create_projection);
PG_FUNCTION_INFO_V1(es_rebuild_projection);
PG_FUNCTION_INFO_V1(es_pause_projection);
PG_FUNCTION_INFO_V1(es_resume_projection);
PG_FUNCTION_INFO_V1(es_drop_projection);
PG_FUNCTION_INFO_V1(es_run_projections);

int			es_projection_max_attempts = 5;

/*
 * How a handler takes its events: one at a time (event event_store.event),
 * as an array (events event_store.event[]), or as a trigger function
 * (RETURNS trigger) reading them from the transition table new_events.
 */
typedef enum EsHandlerKind
{
	ES_HANDLER_EVENT,
	ES_HANDLER_ARRAY,
	ES_HANDLER_TABLE
} EsHandlerKind;

/* the transition table of a trigger-function handler */
#define ES_TRANSITION_TABLE "new_events"

/* A projection ready to apply */
typedef struct EsProjection
{
	char	   *name;
	FmgrInfo	handler;
	EsEventFilter filter;		/* event types and categories */
	Oid			missing_handler;	/* OID of a dropped handler, else 0 */
	EsHandlerKind kind;			/* how the handler takes its events */
	Oid			owner;			/* the role that created it: handlers run as it */
	const char *search_path;	/* and with this search_path (pinned) */
	int32		partitions;		/* async: streams hashed into this many */
	bool		park;			/* async: a failing stream is parked (on_error) */
} EsProjection;

/* Cache of the running inline projections, for append() */
static EsRegistry inline_registry = {"projections", true};
static MemoryContext inline_cxt = NULL;
static EsProjection *inline_projs = NULL;
static int	inline_count = 0;

static EsHandlerKind es_handler_kind(Oid fn);
struct EsApplyScope;
static int64 es_run_rounds(List *names, int64 max_events, int max_ms, List **skipped);
static void es_set_async_position(const char *name, const struct EsApplyScope *scope,
								  int64 newpos);

/* What is being applied, for the error context */
typedef struct EsApplyCtx
{
	const char *name;
	int64		position;
} EsApplyCtx;

/* Error context: which projection and event */
static void
es_apply_error_callback(void *arg)
{
	EsApplyCtx *ctx = (EsApplyCtx *) arg;

	errcontext("projection \"%s\" applying the event at global position " INT64_FORMAT,
			   ctx->name, ctx->position);
}

/*
 * The columns es_projection_from_row reads, first in every query that loads
 * a projection
 */
#define ES_PROJECTION_COLUMNS \
	"name, handler::pg_catalog.oid, event_types, categories, %s, %s"
#define ES_PROJECTION_NCOLUMNS 8	/* EsOwnerColumns are two, then partitions, on_error */

/* The partitions and on_error columns, as far as the installed schema has them */
static const char *
es_partition_columns(void)
{
	return EsGetCatalog()->schema_version >= ES_SCHEMA_0_3 ?
		"partitions, on_error" : "1, 'fail'::pg_catalog.text";
}

/* Fill a projection from a row of ES_PROJECTION_COLUMNS */
static void
es_projection_from_row(EsProjection *p, HeapTuple tup, TupleDesc desc,
					   MemoryContext cxt)
{
	bool		isnull;
	Datum		d;
	MemoryContext old;
	Oid			handler;

	p->name = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
	handler = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
	old = MemoryContextSwitchTo(cxt);
	EsRegistrantOf(tup, desc, 5, &p->owner, &p->search_path);
	MemoryContextSwitchTo(old);
	if (EsFunctionExists(handler))
	{
		EsCheckCallbackOwner(handler, p->owner, "a projection handler");
		fmgr_info_cxt(handler, &p->handler, cxt);
		p->kind = es_handler_kind(handler);
	}
	else
	{
		/* dropped: reported when the projection is applied */
		memset(&p->handler, 0, sizeof(p->handler));
		p->missing_handler = handler;
	}
	d = SPI_getbinval(tup, desc, 3, &isnull);
	p->filter.types.ntypes = EsDecodeTextArray(d, isnull, &p->filter.types.types);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	p->filter.ncategories = EsDecodeTextArray(d, isnull, &p->filter.categories);
	p->partitions = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
	p->park = strcmp(TextDatumGetCString(SPI_getbinval(tup, desc, 8, &isnull)), "park") == 0;
}

/* Load the running inline projections */
static void
es_inline_load(void)
{
	MemoryContext old;
	EsUserSwitch sw;
	int			rc;

	inline_cxt = EsRegistryNewContext(&inline_registry);
	inline_count = 0;

	EsSpiConnect(&sw);
	rc = SPI_execute(psprintf("SELECT " ES_PROJECTION_COLUMNS " FROM event_store.projections "
							  "WHERE mode OPERATOR(pg_catalog.=) 'inline' "
							  "AND state OPERATOR(pg_catalog.=) 'running' ORDER BY name",
							  EsOwnerColumns(), es_partition_columns()), true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.projections failed: %s", SPI_result_code_string(rc));
	old = MemoryContextSwitchTo(inline_cxt);
	inline_projs = palloc0(sizeof(EsProjection) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed; i++)
		es_projection_from_row(&inline_projs[i], SPI_tuptable->vals[i],
							   SPI_tuptable->tupdesc, inline_cxt);
	inline_count = (int) SPI_processed;
	MemoryContextSwitchTo(old);
	EsSpiFinish(&sw);
}


/*
 * Call a projection's handler: with one event (a row of event_store.event),
 * with an array of them, or with no argument and trigger data (context)
 * holding them.  "position" is that of the (first) event, for errors; reg is
 * the registry the handler's FmgrInfo was cached in, if any.
 */
static void
es_invoke_handler(EsProjection *p, EsRegistry *reg, Datum arg, Node *context,
				  int64 position)
{
	ErrorContextCallback errcb;
	EsApplyCtx	ctx;
	LOCAL_FCINFO(fcinfo, 1);

	if (OidIsValid(p->missing_handler))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the handler of projection \"%s\" no longer exists", p->name),
				 errdetail("Function with OID %u was dropped.", p->missing_handler),
				 errhint("Drop the projection with event_store.drop_projection() and create it again.")));
	ctx.name = p->name;
	ctx.position = position;
	errcb.callback = es_apply_error_callback;
	errcb.arg = &ctx;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;
	/* the handler returns void (or, as a statement trigger, nothing used) */
	InitFunctionCallInfoData(*fcinfo, &p->handler, context ? 0 : 1, InvalidOid,
							 context, NULL);
	fcinfo->args[0].value = arg;
	fcinfo->args[0].isnull = false;
	(void) EsCallAs(reg, fcinfo, p->owner, p->search_path);
	error_context_stack = errcb.previous;
}

/* Call a per-event handler with one event */
static void
es_call_handler(EsProjection *p, EsRegistry *reg, TupleDesc event_desc,
				Datum *values, bool *isnull, HeapTuple stored)
{
	/* in the caller's per-event memory context */
	Datum		event = EsEventDatum(event_desc, values, isnull, stored);

	es_invoke_handler(p, reg, event, NULL, DatumGetInt64(values[Anum_es_global_position - 1]));
}

/*
 * Events collected for a batch handler.  For an array handler they are
 * written straight into the event_store.event[] they are handed over as (the
 * array's header is filled in when it is handed over); for a trigger-function
 * handler they go into the tuplestore it reads as its transition table.  An
 * event taken from a stored row is copied, not taken apart and formed again.
 */
typedef struct EsBatch
{
	MemoryContext cxt;
	EsHandlerKind kind;			/* ES_HANDLER_ARRAY or ES_HANDLER_TABLE */
	Tuplestorestate *rows;		/* the transition table (table kind) */
	char	   *buf;			/* the array: header, then the events */
	Size		len;			/* bytes in use */
	Size		cap;			/* bytes allocated */
	Size		full;			/* hand the batch over at this many bytes */
	int			max_events;		/* ... or at this many events */
	int			n;				/* events */
	int64		first_position;
} EsBatch;

static void es_apply_inline(int n, Datum *rows, bool *nulls, TupleDesc event_desc,
							MemoryContext rowcxt, EsBatch *batches);

#define ES_BATCH_HEADER		ES_ARRAY_HEADER_BYTES

/*
 * Async batches are handed over at a size that catch-up measured fastest
 * with (the handler reads the events while they are still in the CPU's
 * cache, and the batch's memory is reused): about 256 kB for an array, which
 * the handler copies twice more, and 1 MB for a transition table, which it
 * reads in place; at most 10,000 events either way.  An inline batch (one
 * append) is split only if it grows past 256 MB.
 */
#define ES_BATCH_ARRAY_BYTES	((Size) 256 * 1024)
#define ES_BATCH_TABLE_BYTES	((Size) 1024 * 1024)
#define ES_BATCH_INLINE_BYTES	((Size) 256 * 1024 * 1024)

/* Forget the batch's events (its memory is kept for the next ones) */
static void
es_batch_empty(EsBatch *b)
{
	if (b->kind == ES_HANDLER_TABLE)
		tuplestore_clear(b->rows);
	b->len = (b->kind == ES_HANDLER_TABLE) ? 0 : ES_BATCH_HEADER;
	b->n = 0;
}

static void
es_batch_init(EsBatch *b, EsHandlerKind kind, MemoryContext parent, Size full,
			  int max_events)
{
	MemoryContext old;

	b->cxt = AllocSetContextCreate(parent, "event_store projection batch",
								   ALLOCSET_DEFAULT_SIZES);
	b->kind = kind;
	b->rows = NULL;
	b->buf = NULL;
	b->cap = 0;
	if (kind == ES_HANDLER_TABLE)
	{
		/* the transition table has the columns of event_store.events */
		if (!EsGetCatalog()->stored_rows_are_events)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("event_store.events does not have the columns of type event_store.event"),
					 errdetail("A projection handler that is a trigger function reads its events as rows of event_store.events."),
					 errhint("Reinstall the extension.")));
		old = MemoryContextSwitchTo(b->cxt);
		b->rows = tuplestore_begin_heap(false, false, work_mem);
		MemoryContextSwitchTo(old);
	}
	else
	{
		/* (the header is written in full when the array is handed over) */
		b->cap = 64 * 1024;
		b->buf = MemoryContextAlloc(b->cxt, b->cap);
	}
	b->full = full;
	b->max_events = max_events;
	b->first_position = 0;
	es_batch_empty(b);
}

/*
 * Append one event (copied from the stored row when the scan handed one
 * over, else formed from values) in the caller's per-event memory context;
 * true when the batch has reached its size and should be handed over now.
 */
static bool
es_batch_add(EsBatch *b, TupleDesc event_desc, Datum *values, bool *isnull,
			 HeapTuple stored)
{
	Pointer		event;
	Size		len;
	Size		padded;

	if (b->n == 0)
		b->first_position = DatumGetInt64(values[Anum_es_global_position - 1]);
	if (b->kind == ES_HANDLER_TABLE)
	{
		MemoryContext old = MemoryContextSwitchTo(b->cxt);

		if (stored != NULL)
		{
			tuplestore_puttuple(b->rows, stored);
			b->len += stored->t_len;
		}
		else
		{
			tuplestore_putvalues(b->rows, event_desc, values, isnull);
			b->len += heap_compute_data_size(event_desc, values, isnull);
		}
		MemoryContextSwitchTo(old);
		b->n++;
		return b->len >= b->full || b->n >= b->max_events;
	}

	event = DatumGetPointer(EsEventDatum(event_desc, values, isnull, stored));
	len = VARSIZE(event);
	padded = att_align_nominal(len, TYPALIGN_DOUBLE);

	if (b->len + padded > MaxAllocSize)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("event at global position " INT64_FORMAT " does not fit in a batch",
						DatumGetInt64(values[Anum_es_global_position - 1])),
				 errdetail("The array handed to a batch handler is limited to %zu bytes.",
						   (Size) MaxAllocSize)));
	if (b->len + padded > b->cap)
	{
		b->cap = Min(Max(b->cap * 2, b->len + padded), (Size) MaxAllocSize);
		b->buf = repalloc(b->buf, b->cap);
	}
	memcpy(b->buf + b->len, event, len);
	memset(b->buf + b->len + len, 0, padded - len);
	b->len += padded;
	b->n++;
	return b->len >= b->full || b->n >= b->max_events;
}

/*
 * Hand the collected events to a batch handler, as one array or as the
 * transition table of an AFTER INSERT ... FOR EACH STATEMENT trigger on
 * event_store.events, then forget them
 */
static void
es_batch_flush(EsBatch *b, EsProjection *p, EsRegistry *reg)
{
	if (b->n == 0)
		return;
	if (b->kind == ES_HANDLER_TABLE)
	{
		TriggerData td;
		Trigger		trig;
		Relation	rel = table_open(EsGetCatalog()->events_relid, AccessShareLock);

		EsStatementTriggerData(&td, &trig, rel, p->name, p->handler.fn_oid,
							   ES_TRANSITION_TABLE, b->rows);
		es_invoke_handler(p, reg, (Datum) 0, (Node *) &td, b->first_position);
		table_close(rel, AccessShareLock);
	}
	else
	{
		ArrayType  *arr = EsFinishArray(b->buf, b->len, b->n,
										EsGetCatalog()->event_type_oid);

		es_invoke_handler(p, reg, PointerGetDatum(arr), NULL, b->first_position);
	}
	/* the next batch reuses the memory: the handler kept no reference to it */
	es_batch_empty(b);
}

static EsAppendFollower prev_follower = NULL;
static void es_apply_inline_projections(int n, Datum *rows, bool *nulls);

/* Follower of append(): the inline projections */
static void
es_projection_follow(const EsAppendedBatch *batch)
{
	if (prev_follower)
		prev_follower(batch);
	es_apply_inline_projections(batch->n, batch->rows, batch->nulls);
}

/* Follow append() (module load; see followers.h) */
void
EsProjectionInit(void)
{
	prev_follower = es_append_follower;
	es_append_follower = es_projection_follow;
}

/*
 * Apply every running inline projection to the events append() just wrote
 * (rows: n events, Natts_es_event values each), in order, in the appending
 * transaction: one pass over the batch, however large.
 */
static void
es_apply_inline_projections(int n, Datum *rows, bool *nulls)
{
	TupleDesc	event_desc;
	MemoryContext rowcxt;
	EsBatch    *batches;
	int			scope;

	EsRegistryEnsure(&inline_registry, es_inline_load);
	if (inline_count == 0)
		return;

	event_desc = lookup_rowtype_tupdesc(EsGetCatalog()->event_type_oid, -1);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "event_store projection row",
								   ALLOCSET_DEFAULT_SIZES);
	batches = palloc0(sizeof(EsBatch) * inline_count);
	/* the handlers' settings last until the append's events were applied */
	scope = EsCallbackScopeBegin();
	PG_TRY();
	{
		es_apply_inline(n, rows, nulls, event_desc, rowcxt, batches);
	}
	PG_CATCH();
	{
		EsCallbackScopeAbandon();
		PG_RE_THROW();
	}
	PG_END_TRY();
	EsCallbackScopeEnd(scope);
	ReleaseTupleDesc(event_desc);
	MemoryContextDelete(rowcxt);
}

/* The work of es_apply_inline_projections, in its callback scope */
static void
es_apply_inline(int n, Datum *rows, bool *nulls, TupleDesc event_desc,
				MemoryContext rowcxt, EsBatch *batches)
{
	MemoryContext old;
	Datum		values[Natts_es_event];
	bool		isnull[Natts_es_event];
	bool	   *may_read;

	/* an append's events are all of one stream: may each projection read it? */
	may_read = palloc(sizeof(bool) * inline_count);
	for (int i = 0; i < inline_count; i++)
		may_read[i] = EsRoleMayAccessStream(inline_projs[i].owner,
											DatumGetTextPP(rows[Anum_es_stream_id - 1]),
											ES_PRIV_READ);
	for (int e = 0; e < n; e++)
	{
		MemoryContextReset(rowcxt);
		old = MemoryContextSwitchTo(rowcxt);
		memcpy(values, &rows[e * Natts_es_event], sizeof(values));
		memcpy(isnull, &nulls[e * Natts_es_event], sizeof(isnull));
		EsUpcastRow(values, isnull);
		for (int i = 0; i < inline_count; i++)
		{
			if (!may_read[i] || !EsFilterMatches(&inline_projs[i].filter, values))
				continue;
			if (inline_projs[i].kind == ES_HANDLER_EVENT)
				es_call_handler(&inline_projs[i], &inline_registry, event_desc,
								values, isnull, NULL);
			else
			{
				if (batches[i].cxt == NULL)
					es_batch_init(&batches[i], inline_projs[i].kind, old,
								  ES_BATCH_INLINE_BYTES, INT_MAX);
				if (es_batch_add(&batches[i], event_desc, values, isnull, NULL))
					es_batch_flush(&batches[i], &inline_projs[i], &inline_registry);
			}
		}
		MemoryContextSwitchTo(old);
	}
	/* the batch handlers: the append's events in one call each (unless huge) */
	for (int i = 0; i < inline_count; i++)
		if (batches[i].cxt != NULL)
		{
			es_batch_flush(&batches[i], &inline_projs[i], &inline_registry);
			MemoryContextDelete(batches[i].cxt);
		}
	pfree(may_read);
}

/*
 * What part of the log a partitioned async projection applies now: the
 * events of the partitions this process holds, each after its own position,
 * but those of the held streams (one scan of the log for all of them); or
 * one held stream's events from a version on.  (Scope NULL: every stream.)
 */
typedef struct EsApplyScope
{
	int32		npartitions;	/* the projection's */
	int			nparts;			/* partitions applied by this scan */
	const int32 *parts;			/* which, in order */
	const int64 *positions;		/* where each of them stands */
	const int64 *after;			/* by partition: its events after this are
								 * applied (PG_INT64_MAX: not in this scan) */
	HTAB	   *held;			/* streams held back (skipped), or NULL */
	text	   *stream_id;		/* set: this stream only, from from_version */
	int64		from_version;
} EsApplyScope;

/* State of applying a range of events to one projection */

typedef struct EsRangeApply
{
	EsProjection *proj;
	const EsApplyScope *scope;	/* NULL: every stream */
	int64		upto;			/* a stream's events are applied up to here */
	TupleDesc	event_desc;
	int64		handed;			/* events passed to the handler */
	int64		budget;			/* stop after this many (-1: no limit) */
	int64		last_scanned;	/* position of the last event looked at */
	int64		current;		/* position being applied (for errors) */
	TimestampTz deadline;		/* stop once past it (0: no limit) */
	bool		stopped;		/* stopped at the deadline */
	EsBatch		batch;			/* events collected for a batch handler */
	bool		flushing;		/* the batch handler is running */
} EsRangeApply;

/*
 * Stop at the deadline.  The clock is read when read_clock: every 64 events
 * handed over, and after every event that cost a function call (a
 * per-event handler; an upcaster, which the scan signals by handing the
 * event on without its stored row).  A call costs far more than reading the
 * clock, and calls that grow slower within one transaction (one row locked
 * and written again and again, each time in a subtransaction of its own)
 * must not hold the worker's transaction open for 64 of them.
 */
static inline void
es_apply_check_deadline(EsRangeApply *ra, bool read_clock)
{
	if (ra->deadline != 0 && read_clock && GetCurrentTimestamp() >= ra->deadline)
		ra->stopped = true;
}

/*
 * Fetch-level skip of a partitioned scan (see EsPageFetchSkip): the rows of
 * the partitions this scan does not apply, those its partitions applied
 * already and those of the held streams, passed over on the page before
 * their visibility is checked or their values are taken apart.  Each process
 * applying a share of the partitions reads the whole log, so that most of
 * the rows it reads are others'.  A row that cannot be judged here (its
 * stream id out of line) takes the ordinary path, where es_apply_row judges
 * it the same way.
 */
static bool
es_apply_skip(HeapTuple tuple, TupleDesc desc, void *arg)
{
	const EsApplyScope *scope = (const EsApplyScope *) arg;
	bool		isnull;
	Datum		sid = heap_getattr(tuple, Anum_es_stream_id, desc, &isnull);
	text	   *stream_id;
	int64		pos;

	if (isnull || VARATT_IS_EXTERNAL(DatumGetPointer(sid)) ||
		VARATT_IS_COMPRESSED(DatumGetPointer(sid)))
		return false;
	pos = DatumGetInt64(heap_getattr(tuple, Anum_es_global_position, desc, &isnull));
	if (isnull)
		return false;
	stream_id = (text *) DatumGetPointer(sid);
	if (pos <= scope->after[scope->npartitions > 1 ?
							EsStreamPartition(stream_id, scope->npartitions) : 0])
		return true;
	return scope->held != NULL &&
		EsTextHashFind(scope->held, VARDATA_ANY(stream_id), VARSIZE_ANY_EXHDR(stream_id), 0) != NULL;
}

/* Row callback: apply one event if it passes the filters */
static bool
es_apply_row(Datum *values, bool *isnull, HeapTuple stored, void *arg)
{
	EsRangeApply *ra = (EsRangeApply *) arg;
	int64		pos = DatumGetInt64(values[Anum_es_global_position - 1]);
	const EsApplyScope *scope = ra->scope;

	if (scope != NULL && scope->stream_id != NULL && pos > ra->upto)
		return false;			/* a held stream: up to its partition's position */
	ra->current = pos;
	if (scope != NULL && scope->stream_id == NULL)
	{
		text	   *sid = DatumGetTextPP(values[Anum_es_stream_id - 1]);
		int32		part = scope->npartitions > 1 ?
			EsStreamPartition(sid, scope->npartitions) : 0;

		if (pos <= scope->after[part] ||
			(scope->held != NULL &&
			 EsTextHashFind(scope->held, VARDATA_ANY(sid), VARSIZE_ANY_EXHDR(sid), 0) != NULL))
		{
			ra->last_scanned = pos;
			es_apply_check_deadline(ra, stored == NULL);
			return !ra->stopped;	/* not this scan's partitions', already
									 * applied, or held back */
		}
	}
	if (EsFilterMatches(&ra->proj->filter, values))
	{
		if (ra->proj->kind != ES_HANDLER_EVENT)
		{
			if (es_batch_add(&ra->batch, ra->event_desc, values, isnull, stored))
			{
				ra->flushing = true;
				es_batch_flush(&ra->batch, ra->proj, NULL);
				ra->flushing = false;
			}
		}
		else
			es_call_handler(ra->proj, NULL, ra->event_desc, values, isnull, stored);
		ra->handed++;
		es_apply_check_deadline(ra, ra->handed % 64 == 0 ||
								ra->proj->kind == ES_HANDLER_EVENT || stored == NULL);
	}
	else
		es_apply_check_deadline(ra, stored == NULL);
	ra->last_scanned = pos;
	if (ra->budget >= 0 && ra->handed >= ra->budget)
		return false;
	return !ra->stopped;
}

/*
 * Apply the events in (after, upto] to a projection, in position order,
 * upcast, until budget events were handed to the handler (budget < 0: no
 * limit) or the deadline passed (0: none).  Returns the new position: upto
 * when the range was exhausted, else the last event applied.
 */
static int64
es_apply_range(EsProjection *proj, int64 after, int64 upto, int64 budget,
			   TimestampTz deadline, int64 *handed, int64 *current,
			   const EsApplyScope *scope)
{
	const EsCatalog *cat = EsGetCatalog();
	EsScanSpec	spec;
	EsRangeApply ra;
	Snapshot	snapshot;
	EsUserSwitch sw;
	bool		exhausted;

	memset(&ra, 0, sizeof(ra));
	ra.proj = proj;
	ra.scope = scope;
	ra.upto = upto;
	ra.budget = budget;
	ra.deadline = deadline;
	ra.last_scanned = after;
	ra.current = after;
	*handed = 0;
	if (upto <= after)
		return after;
	ra.event_desc = lookup_rowtype_tupdesc(cat->event_type_oid, -1);

	memset(&spec, 0, sizeof(spec));
	spec.index_oid = cat->position_idx;
	spec.direction = ForwardScanDirection;
	spec.filter.ntypes = -1;	/* filters are checked per projection */
	spec.denied = EsDeniedCategories(proj->owner);	/* what its role may not read */
	spec.max_count = -1;
	/* what EsFilterMatches reads of a stored row */
	spec.leading_values = EsFilterLeadingValues(&proj->filter);
	if (scope != NULL && scope->stream_id != NULL)
	{
		/* one held stream, in its order (its positions rise with it) */
		spec.index_oid = cat->stream_idx;
		spec.leading_values = 0;
		ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTEqualStrategyNumber, InvalidOid,
							   C_COLLATION_OID, F_TEXTEQ, PointerGetDatum(scope->stream_id));
		ScanKeyEntryInitialize(&spec.keys[1], 0, 2, BTGreaterEqualStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8GE, Int64GetDatum(scope->from_version));
	}
	else
	{
		ScanKeyEntryInitialize(&spec.keys[0], 0, 1, BTGreaterStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8GT, Int64GetDatum(after));
		ScanKeyEntryInitialize(&spec.keys[1], 0, 1, BTLessEqualStrategyNumber, InvalidOid,
							   InvalidOid, F_INT8LE, Int64GetDatum(upto));
		/* a share of the partitions: the others' rows are passed over on the page */
		if (scope != NULL)
		{
			spec.skip = es_apply_skip;
			spec.skip_arg = (void *) scope;
		}
	}
	spec.nkeys = 2;

	/* upto is a safe head taken before this snapshot: it sees every commit below */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	spec.snapshot = snapshot;
	if (proj->kind != ES_HANDLER_EVENT)
		es_batch_init(&ra.batch, proj->kind, CurrentMemoryContext,
					  proj->kind == ES_HANDLER_TABLE ? ES_BATCH_TABLE_BYTES : ES_BATCH_ARRAY_BYTES,
					  ES_PROJECTION_SLICE);
	/* the handler's role and search_path for the whole scan (see EsBecomeRole) */
	EsBecomeRole(&sw, proj->owner, proj->search_path);
	PG_TRY();
	{
		EsScanEvents(cat, &spec, es_apply_row, &ra);
		/* a batch handler gets the rest of the range's events */
		if (proj->kind != ES_HANDLER_EVENT)
		{
			ra.flushing = true;
			es_batch_flush(&ra.batch, proj, NULL);
			ra.flushing = false;
		}
	}
	PG_FINALLY();
	{
		if (ra.flushing)
			*current = ra.batch.first_position;	/* the batch's call failed */
		else
		{
			/* the scan knows the event even when its upcasting failed */
			*current = Max(ra.current, spec.current_position);
		}
	}
	PG_END_TRY();
	EsRestoreUser(&sw);
	UnregisterSnapshot(snapshot);
	ReleaseTupleDesc(ra.event_desc);
	if (proj->kind != ES_HANDLER_EVENT)
		MemoryContextDelete(ra.batch.cxt);

	*handed = ra.handed;
	exhausted = !ra.stopped && (budget < 0 || ra.handed < budget);
	return exhausted ? upto : ra.last_scanned;
}

/* The kept plans of es_projection_load, by the strings the statement is made of */
#define ES_MAX_LOAD_PLANS 16
static struct
{
	const char *extra_sql;
	const char *owner_columns;
	const char *partition_columns;
	SPIPlanPtr	plan;
}			load_plans[ES_MAX_LOAD_PLANS];
static int	n_load_plans = 0;

/* Load one projection by name (caller connected to SPI); NULL if none */
static EsProjection *
es_projection_load(const char *name, const char *extra_sql, char **mode,
				   char **state, int64 *position, int32 *attempts,
				   Oid *reset)
{
	Datum		arg = CStringGetTextDatum(name);
	Oid			argtype = TEXTOID;
	int			rc;
	char	   *sql = NULL;
	EsProjection *p;
	bool		isnull;
	HeapTuple	tup;
	TupleDesc	desc;
	const char *owner_columns = EsOwnerColumns();
	const char *partition_columns = es_partition_columns();
	SPIPlanPtr	plan = NULL;

	/*
	 * Its plan is kept for the backend's life, by the (literal) strings it
	 * is made of: the columns differ with the schema's version
	 */
	for (int i = 0; i < n_load_plans && plan == NULL; i++)
		if (load_plans[i].extra_sql == extra_sql && load_plans[i].owner_columns == owner_columns &&
			load_plans[i].partition_columns == partition_columns)
			plan = load_plans[i].plan;
	if (plan == NULL)
	{
		sql = psprintf("SELECT " ES_PROJECTION_COLUMNS ", mode, state, position, attempts, "
					   "reset::pg_catalog.oid FROM event_store.projections "
					   "WHERE name OPERATOR(pg_catalog.=) $1 %s", owner_columns,
					   partition_columns, extra_sql);
		if (n_load_plans < ES_MAX_LOAD_PLANS)
		{
			plan = EsPrepareKeptPlan(sql, 1, &argtype);
			load_plans[n_load_plans].extra_sql = extra_sql;
			load_plans[n_load_plans].owner_columns = owner_columns;
			load_plans[n_load_plans].partition_columns = partition_columns;
			load_plans[n_load_plans].plan = plan;
			n_load_plans++;
		}
	}
	if (plan != NULL)
		rc = SPI_execute_plan(plan, &arg, NULL, false, 1);
	else
		rc = SPI_execute_with_args(sql, 1, &argtype, &arg, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading projection \"%s\" failed: %s", name, SPI_result_code_string(rc));
	if (SPI_processed == 0)
		return NULL;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	p = palloc0(sizeof(EsProjection));
	es_projection_from_row(p, tup, desc, CurrentMemoryContext);
	if (mode)
		*mode = TextDatumGetCString(SPI_getbinval(tup, desc, ES_PROJECTION_NCOLUMNS + 1, &isnull));
	if (state)
		*state = TextDatumGetCString(SPI_getbinval(tup, desc, ES_PROJECTION_NCOLUMNS + 2, &isnull));
	if (position)
		*position = DatumGetInt64(SPI_getbinval(tup, desc, ES_PROJECTION_NCOLUMNS + 3, &isnull));
	if (attempts)
		*attempts = DatumGetInt32(SPI_getbinval(tup, desc, ES_PROJECTION_NCOLUMNS + 4, &isnull));
	if (reset)
	{
		Datum		d = SPI_getbinval(tup, desc, ES_PROJECTION_NCOLUMNS + 5, &isnull);

		*reset = isnull ? InvalidOid : DatumGetObjectId(d);
	}
	return p;
}

/* Run an UPDATE/INSERT/DELETE on the projections table with (name, ...) args */
static void
es_projection_exec(const char *sql, int nargs, Oid *types, Datum *values,
				   const char *nulls)
{
	/* every statement run here is a literal: its plan is kept for the backend's life */
	int			rc = SPI_execute_plan(EsKeptStatementPlan(sql, nargs, types), values, nulls,
									  false, 0);

	if (rc < 0)
		elog(ERROR, "updating event_store.projections failed: %s", SPI_result_code_string(rc));
}

/* The same for a statement built for this call only */
static void
es_projection_exec_once(const char *sql, int nargs, Oid *types, Datum *values,
						const char *nulls)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);

	if (rc < 0)
		elog(ERROR, "updating event_store.projections failed: %s", SPI_result_code_string(rc));
}

/*
 * Hold off the appends an inline projection of owner with this categories
 * filter (ncategories -1: any) would see, until we commit.  SHARE ROW
 * EXCLUSIVE waits for in-flight appends, blocks new ones, and conflicts with
 * itself, so two such operations on one category queue.
 */
static void
es_lock_inline_categories(Oid owner, int ncategories, text **categories)
{
	bool		open = ncategories < 0;

	/* no filter: every category, those with grants one by one */
	if (ncategories < 0)
		ncategories = EsGrantedCategories(&categories);
	for (int i = 0; i < ncategories; i++)
	{
		text	   *c = categories[i];

		if (!EsCategoryHasGrants(VARDATA_ANY(c), VARSIZE_ANY_EXHDR(c)))
			open = true;
		else if (EsRoleMayAccessStream(owner, c, ES_PRIV_READ))
			EsLockCategory(VARDATA_ANY(c), VARSIZE_ANY_EXHDR(c), ShareRowExclusiveLock);
	}
	if (open)
		EsLockCategory(NULL, 0, ShareRowExclusiveLock);
}

/* es_lock_inline_categories for a registered projection */
static void
es_lock_inline_projection(EsProjection *p)
{
	es_lock_inline_categories(p->owner, p->filter.ncategories, p->filter.categories);
}

/* Set position/state of a projection */
static void
es_projection_set(const char *name, int64 position, const char *state)
{
	Oid			types[3] = {TEXTOID, INT8OID, TEXTOID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(name);
	values[1] = Int64GetDatum(position);
	values[2] = CStringGetTextDatum(state);
	es_projection_exec("UPDATE event_store.projections SET position = $2, state = $3, "
					   "attempts = 0, last_error = NULL, error_position = NULL, "
					   "next_attempt_at = NULL, updated_at = pg_catalog.now() "
					   "WHERE name OPERATOR(pg_catalog.=) $1",
					   3, types, values, NULL);
}

/* Replay (position, head] into an inline projection (its categories locked) */
static int64
es_inline_catch_up(EsProjection *p, int64 position)
{
	int64		head = EsLastAllocatedPosition();
	int64		handed;
	int64		current;

	return es_apply_range(p, position, head, -1, 0, &handed, &current, NULL);
}

/*
 * Fetch a projection by name or raise "does not exist"; with sw (the
 * caller's EsSpiConnect), also check that the caller may change it
 */
static EsProjection *
es_projection_get(const char *name, char **mode, char **state, int64 *position,
				  Oid *reset, bool for_update, EsUserSwitch *sw)
{
	EsProjection *p = es_projection_load(name, for_update ? "FOR UPDATE" : "", mode, state,
										 position, NULL, reset);

	if (p == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", name)));
	if (sw)
		EsCheckMayChange(sw, p->owner, psprintf("projection \"%s\"", name));
	return p;
}

/* Call a projection's reset function, if it has one, as the projection's owner */
static void
es_call_reset(Oid reset, EsProjection *p)
{
	FmgrInfo	flinfo;
	LOCAL_FCINFO(fcinfo, 0);

	if (!OidIsValid(reset))
		return;
	if (!EsFunctionExists(reset))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("the reset function of the projection no longer exists"),
				 errdetail("Function with OID %u was dropped.", reset),
				 errhint("Drop the projection with event_store.drop_projection() and create it again.")));
	EsCheckCallbackOwner(reset, p->owner, "a projection reset function");
	/* it returns void: its (null) result is ignored */
	fmgr_info(reset, &flinfo);
	InitFunctionCallInfoData(*fcinfo, &flinfo, 0, InvalidOid, NULL, NULL);
	(void) EsCallAs(NULL, fcinfo, p->owner, p->search_path);
}

/*
 * An async projection is a consumer of its own subscription, of the same
 * name (event_store.subscriptions, projection true): its partitions and the
 * streams it parked live there.  Caller is connected to SPI as the owner,
 * after inserting the projection.
 */
static void
es_create_projection_subscription(const char *name, int32 partitions, bool park)
{
	Oid			types[4] = {TEXTOID, INT4OID, TEXTOID, INT4OID};
	Datum		values[4];

	if (EsGetCatalog()->schema_version < ES_SCHEMA_0_3)
	{
		if (partitions != 1 || park)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("partitions and on_error need the schema of event_store 0.3.0"),
					 errhint("Run ALTER EXTENSION event_store UPDATE.")));
		return;
	}
	values[0] = CStringGetTextDatum(name);
	values[1] = Int32GetDatum(partitions);
	values[2] = CStringGetTextDatum(park ? "park" : "fail");
	values[3] = Int32GetDatum(es_projection_max_attempts);
	es_projection_exec("SELECT 1 FROM event_store.subscriptions WHERE name OPERATOR(pg_catalog.=) $1",
					   1, types, values, NULL);
	if (SPI_processed > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("subscription \"%s\" already exists", name),
				 errdetail("An async projection consumes a subscription of its own name."),
				 errhint("Pick another name.")));
	es_projection_exec("UPDATE event_store.projections SET partitions = $2, on_error = $3 "
					   "WHERE name OPERATOR(pg_catalog.=) $1", 3, types, values, NULL);
	es_projection_exec("INSERT INTO event_store.subscriptions (name, categories, event_types, partitions, "
					   "start_position, max_attempts, retry_backoff, owner, projection) "
					   "SELECT p.name, p.categories, p.event_types, p.partitions, 0, $4, "
					   "'1 second', p.owner, true FROM event_store.projections p "
					   "WHERE p.name OPERATOR(pg_catalog.=) $1", 4, types, values, NULL);
	es_projection_exec("INSERT INTO event_store.subscription_partitions (subscription, partition, position) "
					   "SELECT $1, g, 0 FROM pg_catalog.generate_series(0, $2 OPERATOR(pg_catalog.-) 1) g",
					   2, types, values, NULL);
	EsSubscriptionsChanged();
}

/*
 * SQL: event_store.create_projection(name text, handler regprocedure,
 *		event_types text[], categories text[], mode text, reset regprocedure)
 */
Datum
es_create_projection(PG_FUNCTION_ARGS)
{
	text	   *name_t = EsGetRequiredText(fcinfo, 0, "name");
	char	   *name = text_to_cstring(name_t);
	Oid			handler;
	Oid			argtype;
	EsHandlerKind kind;
	char	   *mode;
	Oid			types[8] = {TEXTOID, REGPROCEDUREOID, TEXTARRAYOID, TEXTARRAYOID, TEXTOID,
	REGPROCEDUREOID, OIDOID, TEXTOID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	EsRegistrantInsert reg;
	bool		is_inline;
	EsProjection *p;
	EsUserSwitch sw;
	int32		partitions = 1;
	bool		park = false;

	EsCheckWritable("create_projection()");
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("handler must not be null")));
	handler = PG_GETARG_OID(1);
	/* one event at a time, an array of them, or a trigger function */
	argtype = EsGetCatalog()->event_type_oid;
	kind = es_handler_kind(handler);
	if (kind == ES_HANDLER_ARRAY)
		argtype = get_array_type(argtype);
	EsCheckCallbackSignature(handler, "a projection handler", kind == ES_HANDLER_TABLE ? 0 : 1,
							 &argtype, kind == ES_HANDLER_TABLE ? TRIGGEROID : VOIDOID,
							 "a function (event event_store.event) RETURNS void, "
							 "(events event_store.event[]) RETURNS void, "
							 "or () RETURNS trigger");
	EsCheckFilterArg(fcinfo, 2, "event_types", false);
	EsCheckFilterArg(fcinfo, 3, "categories", true);
	mode = text_to_cstring(EsGetRequiredText(fcinfo, 4, "mode"));
	if (strcmp(mode, "inline") != 0 && strcmp(mode, "async") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid projection mode \"%s\"", mode),
				 errhint("The mode is \"inline\" or \"async\".")));
	is_inline = (strcmp(mode, "inline") == 0);
	if (!PG_ARGISNULL(5))
		EsCheckCallbackSignature(PG_GETARG_OID(5), "a projection reset function", 0, NULL,
								 VOIDOID, "a function () RETURNS void");
	/* (the schema of 0.2.0 calls with six arguments, until ALTER EXTENSION UPDATE) */
	if (PG_NARGS() > 7)
	{
		char	   *on_error;

		EsRequireArg(fcinfo, 6, "partitions");
		partitions = PG_GETARG_INT32(6);
		if (partitions < 1 || partitions > ES_MAX_PARTITIONS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("partitions must be between 1 and %d", ES_MAX_PARTITIONS),
					 errhint("One partition keeps global order; more let that many workers apply the projection in parallel.")));
		on_error = text_to_cstring(EsGetRequiredText(fcinfo, 7, "on_error"));
		if (strcmp(on_error, "fail") != 0 && strcmp(on_error, "park") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid on_error \"%s\"", on_error),
					 errhint("on_error is \"fail\" (the projection stops) or \"park\" (the failing stream waits, the others go on).")));
		park = strcmp(on_error, "park") == 0;
	}
	if (is_inline && (partitions != 1 || park))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("partitions and on_error => 'park' apply to async projections"),
				 errdetail("An inline projection is applied by append() itself, in the appending transaction; its handler's error aborts the append."),
				 errhint("Create it with mode => 'async'.")));
	if (park && kind != ES_HANDLER_EVENT)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("on_error => 'park' needs a handler that takes one event at a time"),
				 errdetail("A handler that takes a batch of events cannot tell which event failed, so no stream could be parked."),
				 errhint("Use a handler (event event_store.event) RETURNS void, or on_error => 'fail'.")));

	for (int i = 0; i < 6; i++)
	{
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
	}
	values[0] = PointerGetDatum(name_t);
	values[6] = ObjectIdGetDatum(GetUserId());
	values[7] = CStringGetTextDatum(EsRegistrationSearchPath());

	if (is_inline)
	{
		text	  **categories;
		int			n = EsDecodeTextArray(PG_GETARG_DATUM(3), PG_ARGISNULL(3), &categories);

		es_lock_inline_categories(GetUserId(), n, categories);
	}
	EsSpiConnect(&sw);
	if (es_projection_load(name, "", NULL, NULL, NULL, NULL, NULL) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("projection \"%s\" already exists", name),
				 errhint("Drop it first with event_store.drop_projection(), or pick another name.")));
	EsRegistrantSql(7, &reg);
	es_projection_exec_once(psprintf("INSERT INTO event_store.projections "
									 "(name, handler, event_types, categories, mode, reset%s) "
									 "VALUES ($1, $2, $3, $4, $5, $6%s)",
									 reg.columns, reg.params),
							6 + reg.nparams, types, values, nulls);
	if (!is_inline)
		es_create_projection_subscription(name, partitions, park);
	else if (partitions != 1 || park)
		elog(ERROR, "an inline projection has no partitions");
	if (is_inline)
	{
		/* replay history, then go live in the same transaction */
		p = es_projection_load(name, "", NULL, NULL, NULL, NULL, NULL);
		es_projection_set(name, es_inline_catch_up(p, 0), "running");
		EsRegistryChanged(&inline_registry);
	}
	EsSpiFinish(&sw);
	EsWakeWorker();
	PG_RETURN_VOID();
}

/*
 * Before an operation on an async projection with partitions (or parking)
 * locks its row and then writes or deletes its partitions: lock the
 * partitions first.  The workers applying it hold partitions and update the
 * projection's row at the end of each batch; taking the projection's row
 * first and then waiting for their partitions would deadlock with them.
 * This waits for their batches to commit instead (they take partitions
 * with SKIP LOCKED, so they never wait for ours).
 */
static void
es_lock_projection_partitions(EsProjection *p, const char *mode)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	if (strcmp(mode, "async") != 0 || (p->partitions <= 1 && !p->park) ||
		EsGetCatalog()->schema_version < ES_SCHEMA_0_3)
		return;
	values[0] = CStringGetTextDatum(p->name);
	es_projection_exec("SELECT 1 FROM event_store.subscription_partitions "
					   "WHERE subscription OPERATOR(pg_catalog.=) $1 ORDER BY partition FOR UPDATE",
					   1, types, values, NULL);
}

/* SQL: event_store.rebuild_projection(name text) */
Datum
es_rebuild_projection(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	char	   *mode;
	char	   *state;
	Oid			reset;
	EsProjection *p;

	EsCheckWritable("rebuild_projection()");
	EsSpiConnect(&sw);
	p = es_projection_get(name, &mode, &state, NULL, &reset, false, &sw);
	if (strcmp(mode, "inline") == 0)
	{
		es_lock_inline_projection(p);
		p = es_projection_get(name, &mode, &state, NULL, &reset, true, NULL);
		es_call_reset(reset, p);
		if (strcmp(state, "paused") == 0)
			es_projection_set(name, 0, "paused");
		else
			es_projection_set(name, es_inline_catch_up(p, 0), "running");
		EsRegistryChanged(&inline_registry);
	}
	else
	{
		es_lock_projection_partitions(p, mode);
		p = es_projection_get(name, &mode, &state, NULL, &reset, true, NULL);
		es_call_reset(reset, p);
		es_projection_set(name, 0, strcmp(state, "paused") == 0 ? "paused" : "running");
		/* every partition starts again from 0; no stream is held any more */
		if (EsGetCatalog()->schema_version >= ES_SCHEMA_0_3)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1] = {CStringGetTextDatum(name)};

			es_projection_exec("UPDATE event_store.subscription_partitions SET position = 0, "
							   "updated_at = pg_catalog.now() "
							   "WHERE subscription OPERATOR(pg_catalog.=) $1", 1, types, values, NULL);
			es_projection_exec("DELETE FROM event_store.subscription_streams "
							   "WHERE subscription OPERATOR(pg_catalog.=) $1", 1, types, values, NULL);
		}
	}
	EsSpiFinish(&sw);
	EsWakeWorker();
	PG_RETURN_VOID();
}

/* SQL: event_store.pause_projection(name text) */
Datum
es_pause_projection(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	char	   *mode;
	char	   *state;
	int64		position;
	EsProjection *p;

	EsCheckWritable("pause_projection()");
	EsSpiConnect(&sw);
	p = es_projection_get(name, &mode, &state, &position, NULL, false, &sw);
	if (strcmp(mode, "inline") == 0)
	{
		es_lock_inline_projection(p);
		(void) es_projection_get(name, &mode, &state, &position, NULL, true, NULL);
		/* everything up to the head has been applied by the appenders */
		if (strcmp(state, "running") == 0)
			es_projection_set(name, EsLastAllocatedPosition(), "paused");
		EsRegistryChanged(&inline_registry);
	}
	else
	{
		/*
		 * a partitioned one: its batches in flight end first (they hold its
		 * partitions), and those after the pause see it (es_run_partitioned)
		 */
		es_lock_projection_partitions(p, mode);
		(void) es_projection_get(name, &mode, &state, &position, NULL, true, NULL);
		if (strcmp(state, "paused") != 0)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1] = {CStringGetTextDatum(name)};

			es_projection_exec("UPDATE event_store.projections SET state = 'paused', "
							   "updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
							   1, types, values, NULL);
		}
	}
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/* SQL: event_store.resume_projection(name text) */
Datum
es_resume_projection(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	char	   *mode;
	char	   *state;
	int64		position;
	EsProjection *p;

	EsCheckWritable("resume_projection()");
	EsSpiConnect(&sw);
	p = es_projection_get(name, &mode, &state, &position, NULL, false, &sw);
	if (strcmp(mode, "inline") == 0)
	{
		es_lock_inline_projection(p);
		p = es_projection_get(name, &mode, &state, &position, NULL, true, NULL);
		if (strcmp(state, "running") != 0)
			es_projection_set(name, es_inline_catch_up(p, position), "running");
		EsRegistryChanged(&inline_registry);
	}
	else
	{
		(void) es_projection_get(name, &mode, &state, &position, NULL, true, NULL);
		es_projection_set(name, position, "running");
	}
	EsSpiFinish(&sw);
	EsWakeWorker();
	PG_RETURN_VOID();
}

/* SQL: event_store.drop_projection(name text) */
Datum
es_drop_projection(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	char	   *name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	char	   *mode;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(name)};
	EsProjection *p;

	EsCheckWritable("drop_projection()");
	EsSpiConnect(&sw);
	p = es_projection_get(name, &mode, NULL, NULL, NULL, false, &sw);
	if (strcmp(mode, "inline") == 0)
		es_lock_inline_projection(p);
	else
		es_lock_projection_partitions(p, mode);
	(void) es_projection_get(name, &mode, NULL, NULL, NULL, true, NULL);
	es_projection_exec("DELETE FROM event_store.projections WHERE name OPERATOR(pg_catalog.=) $1",
					   1, types, values, NULL);
	/* an async one's subscription goes with it (its partitions, held streams) */
	if (EsGetCatalog()->schema_version >= ES_SCHEMA_0_3)
	{
		es_projection_exec("DELETE FROM event_store.subscriptions WHERE name OPERATOR(pg_catalog.=) $1 "
						   "AND projection", 1, types, values, NULL);
		EsSubscriptionsChanged();
	}
	if (strcmp(mode, "inline") == 0)
		EsRegistryChanged(&inline_registry);
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/*
 * Apply (after, upto] in a subtransaction; on error return the error data.
 * A cancel (query cancel, statement timeout) or a failed assertion is no
 * handler failure: the batch is rolled back and the error goes on, as
 * PL/pgSQL's WHEN OTHERS lets it through.
 */
static ErrorData *
es_apply_in_subxact(EsProjection *p, const char *name, int64 after, int64 upto,
					int64 budget, TimestampTz deadline, const EsApplyScope *scope,
					int64 *handed, int64 *current, int64 *newpos)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	*handed = 0;
	*current = after;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		*newpos = es_apply_range(p, after, upto, budget, deadline, handed, current, scope);
		if (*newpos != after && (scope == NULL || scope->stream_id == NULL))
			es_set_async_position(name, scope, *newpos);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ASSERT_FAILURE)
			ReThrowError(edata);
		*newpos = after;
	}
	PG_END_TRY();
	return edata;
}

/*
 * The partitioned projections whose partitions this round of
 * EsRunAsyncProjections moved (names, in moved_cxt), or moved_cxt NULL
 * outside one: their rows get the lowest of their partitions' positions
 * once, at the end of the round (es_update_moved_projections).
 */
static MemoryContext moved_cxt = NULL;
static List *moved_projections = NIL;

/*
 * The position of a partitioned projection's row: the lowest of its
 * partitions'.  The row is locked first, and the lowest read by a statement
 * of its own: a process applying other partitions holds the row until it
 * commits, and the lowest must count their positions as it committed them
 * (an UPDATE that waited for the row would compute it from the partitions
 * as its snapshot saw them, before that commit).  Caller is connected to
 * SPI.
 */
static void
es_update_projection_position(const char *name, int64 newpos)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		values[3];

	values[0] = CStringGetTextDatum(name);
	values[1] = Int32GetDatum(0);
	values[2] = Int64GetDatum(newpos);
	es_projection_exec("SELECT 1 FROM event_store.projections "
					   "WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE", 1, types, values, NULL);
	es_projection_exec("UPDATE event_store.projections p SET position = CASE "
					   "WHEN p.partitions OPERATOR(pg_catalog.=) 1 THEN $3 "
					   "ELSE (SELECT pg_catalog.min(x.position) FROM event_store.subscription_partitions x "
					   "      WHERE x.subscription OPERATOR(pg_catalog.=) $1) END, "
					   "updated_at = pg_catalog.now() WHERE p.name OPERATOR(pg_catalog.=) $1",
					   3, types, values, NULL);
}

/* list_sort comparator of C strings */
static int
es_cmp_cstring(const ListCell *a, const ListCell *b)
{
	return strcmp(lfirst(a), lfirst(b));
}

/*
 * The end of a round of EsRunAsyncProjections: the rows of the partitioned
 * projections it moved, in name order (processes that lock several of them
 * lock them in the same order), as late as can be: each row stays locked
 * until the round commits, and the other processes applying the same
 * projection's partitions wait for it at the end of their own round, not
 * while this one applies other projections.
 */
static void
es_update_moved_projections(void)
{
	List	   *names = moved_projections;
	ListCell   *lc;

	moved_projections = NIL;
	list_sort(names, es_cmp_cstring);
	foreach(lc, names)
	{
		/* (newpos is unused for a partitioned projection: the lowest is read) */
		es_update_projection_position(lfirst(lc), 0);
	}
}

/*
 * An async projection applied its events (of the scope's partitions, or of
 * its one partition with scope NULL) up to newpos: the position of each
 * partition that was behind it, and the projection's (the lowest of its
 * partitions'; of a partitioned projection at the end of the round, when
 * there is one, see es_update_moved_projections).  Caller is connected to
 * SPI as the owner.
 */
static void
es_set_async_position(const char *name, const EsApplyScope *scope, int64 newpos)
{
	Oid			types[3] = {TEXTOID, INT4OID, INT8OID};
	Datum		values[3];
	int			nparts = scope != NULL ? scope->nparts : 1;

	values[0] = CStringGetTextDatum(name);
	values[1] = Int32GetDatum(0);
	values[2] = Int64GetDatum(newpos);
	EsProjectionsMoved();
	if (EsGetCatalog()->schema_version < ES_SCHEMA_0_3)
	{
		es_projection_exec("UPDATE event_store.projections SET position = $3, "
						   "updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
						   3, types, values, NULL);
		return;
	}
	if (scope == NULL)
		es_projection_exec("UPDATE event_store.subscription_partitions SET position = $3, "
						   "updated_at = pg_catalog.now() "
						   "WHERE subscription OPERATOR(pg_catalog.=) $1 AND partition OPERATOR(pg_catalog.=) $2",
						   3, types, values, NULL);
	else
	{
		/* the scan's partitions behind newpos, in one statement */
		Datum	   *behind = palloc(sizeof(Datum) * nparts);
		int			n = 0;
		Oid			array_types[3] = {TEXTOID, INT4ARRAYOID, INT8OID};

		for (int i = 0; i < nparts; i++)
			if (scope->positions[i] < newpos)
				behind[n++] = Int32GetDatum(scope->parts[i]);
		if (n > 0)
		{
			values[1] = PointerGetDatum(construct_array(behind, n, INT4OID, sizeof(int32), true,
														TYPALIGN_INT));
			es_projection_exec("UPDATE event_store.subscription_partitions SET position = $3, "
							   "updated_at = pg_catalog.now() "
							   "WHERE subscription OPERATOR(pg_catalog.=) $1 "
							   "AND partition OPERATOR(pg_catalog.=) ANY ($2)",
							   3, array_types, values, NULL);
		}
		pfree(behind);
	}

	if (scope != NULL && moved_cxt != NULL)
	{
		ListCell   *lc;
		MemoryContext old;

		foreach(lc, moved_projections)
			if (strcmp(lfirst(lc), name) == 0)
				return;
		old = MemoryContextSwitchTo(moved_cxt);
		moved_projections = lappend(moved_projections, pstrdup(name));
		MemoryContextSwitchTo(old);
		return;
	}
	es_update_projection_position(name, newpos);
}

/*
 * An async projection's batch failed at the event at current, its
 * attempts-th failure in a row (on_error 'fail'): retried after the backoff,
 * the projection marked failed when out of attempts
 */
static void
es_projection_failed(const char *name, int32 attempts, int64 current, ErrorData *edata)
{
	Oid			types[6] = {TEXTOID, INT4OID, TEXTOID, TEXTOID, INT8OID, INT8OID};
	Datum		values[6];
	const char *state;

	attempts++;
	state = (attempts >= es_projection_max_attempts) ? "failed" : "running";
	ereport(LOG,
			(errmsg("event_store projection \"%s\" failed at global position " INT64_FORMAT " (attempt %d): %s",
					name, current, attempts, edata->message ? edata->message : "unknown error")));
	values[0] = CStringGetTextDatum(name);
	values[1] = Int32GetDatum(attempts);
	values[2] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
	values[3] = CStringGetTextDatum(state);
	values[4] = Int64GetDatum(current);
	values[5] = Int64GetDatum(EsBackoffMs(ES_RETRY_BASE_MS, attempts, false));
	es_projection_exec("UPDATE event_store.projections SET attempts = $2, last_error = $3, "
					   "state = $4, error_position = $5, "
					   "next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+) "
					   "pg_catalog.make_interval(secs => $6 OPERATOR(pg_catalog./) 1000.0), "
					   "updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
					   6, types, values, NULL);
}

/*
 * The stream of the event at position, failing in a projection that parks
 * (on_error 'park'): held back, retried after the backoff, parked when out
 * of attempts (event_store.projection_max_attempts); the other streams go on
 */
static void
es_projection_hold_stream(EsProjection *p, int32 partition, int64 position, ErrorData *edata)
{
	const EsCatalog *cat = EsGetCatalog();
	ScanKeyData key;
	Datum		sid;
	Oid			types[8] = {TEXTOID, TEXTOID, INT4OID, INT8OID, INT4OID, TEXTOID, BOOLOID, INT8OID};
	Datum		values[8];
	int32		attempts = 1;
	bool		parked;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(position));
	if (!EsFirstEventValue(cat, cat->position_idx, GetLatestSnapshot(), &key, 1,
						   ForwardScanDirection, Anum_es_stream_id, &sid))
		return;					/* gone meanwhile: nothing to hold */
	ereport(LOG,
			(errmsg("event_store projection \"%s\" holds back stream \"%s\" at global position " INT64_FORMAT ": %s",
					p->name, TextDatumGetCString(sid), position,
					edata->message ? edata->message : "unknown error")));
	values[0] = CStringGetTextDatum(p->name);
	values[1] = sid;
	es_projection_exec("SELECT attempts, global_position FROM event_store.subscription_streams "
					   "WHERE subscription OPERATOR(pg_catalog.=) $1 AND stream_id OPERATOR(pg_catalog.=) $2 "
					   "FOR UPDATE", 2, types, values, NULL);
	if (SPI_processed > 0)
	{
		bool		isnull;
		int32		prev = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		int64		at = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));

		/* the same event failing again counts; another one starts afresh */
		attempts = (at == position) ? prev + 1 : 1;
	}
	parked = attempts >= es_projection_max_attempts;
	values[2] = Int32GetDatum(partition);
	values[3] = Int64GetDatum(position);
	values[4] = Int32GetDatum(attempts);
	values[5] = CStringGetTextDatum(edata->message ? edata->message : "unknown error");
	values[6] = BoolGetDatum(parked);
	values[7] = Int64GetDatum(EsBackoffMs(ES_RETRY_BASE_MS, attempts, true));
	es_projection_exec("INSERT INTO event_store.subscription_streams AS t (subscription, stream_id, partition, "
					   "global_position, attempts, last_error, next_attempt_at, parked_at) "
					   "VALUES ($1, $2, $3, $4, $5, $6, "
					   "CASE WHEN NOT $7 THEN pg_catalog.now() OPERATOR(pg_catalog.+) "
					   " pg_catalog.make_interval(secs => $8 OPERATOR(pg_catalog./) 1000.0) END, "
					   "CASE WHEN $7 THEN pg_catalog.now() END) "
					   "ON CONFLICT (subscription, stream_id) DO UPDATE SET partition = EXCLUDED.partition, "
					   "global_position = EXCLUDED.global_position, attempts = EXCLUDED.attempts, "
					   "last_error = EXCLUDED.last_error, next_attempt_at = EXCLUDED.next_attempt_at, "
					   "parked_at = EXCLUDED.parked_at, handed_through = NULL, updated_at = pg_catalog.now()",
					   8, types, values, NULL);
}

/* streams a partition holds back in one run at most (the rest wait a round) */
#define ES_MAX_HOLDS_PER_RUN 64

/* A held stream of a partition, as es_run_group reads it */
typedef struct EsHeldStream
{
	text	   *stream_id;
	int32		partition;
	int64		position;		/* its next event to apply */
	bool		due;			/* not parked, its retry due */
} EsHeldStream;

/*
 * The held streams of some partitions (locked), and which of them are due;
 * parts: int4[] of the partitions
 */
static EsHeldStream *
es_partitions_held(const char *name, Datum parts, int *n)
{
	Oid			types[2] = {TEXTOID, INT4ARRAYOID};
	Datum		values[2] = {CStringGetTextDatum(name), parts};
	EsHeldStream *held;

	es_projection_exec("SELECT stream_id, global_position, parked_at IS NULL AND "
					   "COALESCE(next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now(), true), partition "
					   "FROM event_store.subscription_streams "
					   "WHERE subscription OPERATOR(pg_catalog.=) $1 "
					   "AND partition OPERATOR(pg_catalog.=) ANY ($2) "
					   "ORDER BY global_position FOR UPDATE", 2, types, values, NULL);
	*n = (int) SPI_processed;
	held = palloc0(sizeof(EsHeldStream) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		held[i].stream_id = DatumGetTextPCopy(SPI_getbinval(tup, desc, 1, &isnull));
		held[i].position = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		held[i].due = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		held[i].partition = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	}
	return held;
}

/*
 * A due held stream: apply its events from its held one up to the
 * partition's position (what the partition's scans skipped).  Done: it is
 * held no longer.  Failed again: the events before the failing one stay
 * applied, and the stream is held at the failing one (parked when out of
 * attempts).  Returns the events applied.
 */
static int64
es_run_held_stream(EsProjection *p, const char *name, int32 partition, int64 upto,
				   EsHeldStream *h)
{
	const EsCatalog *cat = EsGetCatalog();
	ScanKeyData key;
	Datum		version;
	EsApplyScope scope;
	int64		handed = 0;
	int64		current;
	int64		newpos;
	ErrorData  *edata;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(name), PointerGetDatum(h->stream_id)};

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(h->position));
	memset(&scope, 0, sizeof(scope));
	scope.stream_id = h->stream_id;
	if (EsFirstEventValue(cat, cat->position_idx, GetLatestSnapshot(), &key, 1,
						  ForwardScanDirection, Anum_es_stream_version, &version))
	{
		scope.from_version = DatumGetInt64(version);
		edata = es_apply_in_subxact(p, name, 0, upto, -1, 0, &scope, &handed, &current, &newpos);
		if (edata != NULL)
		{
			int64		prefix = 0;
			int64		cur;
			ErrorData  *again;

			handed = 0;
			if (current > h->position)
			{
				again = es_apply_in_subxact(p, name, 0, current - 1, -1, 0, &scope,
											&prefix, &cur, &newpos);
				if (again != NULL)
				{
					FreeErrorData(again);
					prefix = 0;
					current = h->position;
				}
			}
			es_projection_hold_stream(p, partition, current, edata);
			FreeErrorData(edata);
			return prefix;
		}
	}
	/* applied up to the partition's position (or gone): held no longer */
	EsProjectionsMoved();
	es_projection_exec("DELETE FROM event_store.subscription_streams "
					   "WHERE subscription OPERATOR(pg_catalog.=) $1 AND stream_id OPERATOR(pg_catalog.=) $2",
					   2, types, values, NULL);
	return handed;
}

/* Hold a stream back from now on: skipped by the scans of this run */
static void
es_skip_stream(EsApplyScope *scope, text *stream_id)
{
	bool		found;

	if (scope->held == NULL)
		scope->held = EsTextHashCreate("event_store held streams", sizeof(EsTextKey),
									   CurrentMemoryContext);
	(void) EsTextHashEnter(scope->held, VARDATA_ANY(stream_id),
						   VARSIZE_ANY_EXHDR(stream_id), 0, &found);
}

/*
 * Apply one partition of an async projection with partitions or parking,
 * on its own: its events after its position (held streams skipped, held
 * is the set of them or NULL), up to head.  After a failing event (parking)
 * its stream is held and the partition goes on with the others.  *failed:
 * the projection failed (on_error 'fail'), and its other partitions wait for
 * its retry.
 */
static int64
es_run_partition(EsProjection *p, const char *name, int32 attempts, int32 partition,
				 int64 position, int64 head, int64 budget, TimestampTz deadline,
				 HTAB *held, bool *failed)
{
	EsApplyScope scope;
	int64	   *after = palloc(sizeof(int64) * p->partitions);
	int64		pos;
	int64		total = 0;
	int64		handed;
	int64		current;
	int64		newpos;
	ErrorData  *edata;
	int			holds = 0;

	memset(&scope, 0, sizeof(scope));
	for (int i = 0; i < p->partitions; i++)
		after[i] = PG_INT64_MAX;
	scope.npartitions = p->partitions;
	scope.nparts = 1;
	scope.parts = &partition;
	scope.positions = &pos;
	scope.after = after;
	scope.held = held;
	for (;;)
	{
		ErrorData  *prefix_error;
		int64		cur;

		if (budget >= 0 && total >= budget)
			return total;
		pos = after[partition] = position;
		edata = es_apply_in_subxact(p, name, position, head, budget < 0 ? -1 : budget - total,
									deadline, &scope, &handed, &current, &newpos);
		if (edata == NULL)
			return total + handed;

		/*
		 * The batch failed at the event at "current": keep what came before
		 * it, within the same deadline (applying it again takes about as
		 * long as the batch took to reach the failure)
		 */
		handed = 0;
		newpos = position;
		if (current - 1 > position)
		{
			prefix_error = es_apply_in_subxact(p, name, position, current - 1, -1, deadline,
											   &scope, &handed, &cur, &newpos);
			if (prefix_error != NULL)
			{
				FreeErrorData(prefix_error);
				handed = 0;
				newpos = position;
			}
		}
		total += handed;
		if (newpos < current - 1 && handed > 0)
		{
			/*
			 * The deadline cut the prefix short: what was applied is kept
			 * (the partition's position is newpos), and the next round
			 * starts there and meets the failing event again
			 */
			FreeErrorData(edata);
			return total;
		}

		/*
		 * Parking holds back the stream of the event that failed; an error
		 * at no event of the range (before the first: a dropped handler, a
		 * cancel) is the projection's, as with on_error 'fail'
		 */
		if (!p->park || OidIsValid(p->missing_handler) || current <= position)
		{
			es_projection_failed(name, attempts, current, edata);
			*failed = true;
			FreeErrorData(edata);
			return total;
		}
		es_projection_hold_stream(p, partition, current, edata);
		FreeErrorData(edata);
		/* the rest in the next round: after the deadline, or many holds */
		if ((deadline != 0 && GetCurrentTimestamp() >= deadline) || ++holds >= ES_MAX_HOLDS_PER_RUN)
			return total;
		position = newpos;
		/* from now on the failing event's stream is skipped */
		{
			const EsCatalog *cat = EsGetCatalog();
			ScanKeyData key;
			Datum		sid;

			ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(current));
			if (!EsFirstEventValue(cat, cat->position_idx, GetLatestSnapshot(), &key, 1,
								   ForwardScanDirection, Anum_es_stream_id, &sid))
				return total;
			es_skip_stream(&scope, DatumGetTextPCopy(sid));
		}
	}
}

/*
 * Apply the partitions this process locked (nparts of them, at positions)
 * of an async projection with partitions or parking: their due held streams
 * first, then their events after their positions up to head, held streams
 * skipped, in one scan of the log for all of them.  When a handler fails
 * there, that scan is rolled back and each partition is applied on its own
 * (es_run_partition), which keeps what came before the failure and parks
 * the failing stream or fails the projection.
 */
static int64
es_run_group(EsProjection *p, const char *name, int32 attempts, int nparts,
			 const int32 *parts, const int64 *positions, int64 head, int64 budget,
			 TimestampTz deadline, bool *failed)
{
	EsHeldStream *held;
	int			nheld;
	bool		any_due = false;
	EsApplyScope scope;
	int64	   *after = palloc(sizeof(int64) * p->partitions);
	int64		lowest = PG_INT64_MAX;
	int64		total = 0;
	int64		handed;
	int64		current;
	int64		newpos;
	ErrorData  *edata;
	Datum	   *part_datums = palloc(sizeof(Datum) * nparts);
	Datum		part_array;

	for (int i = 0; i < p->partitions; i++)
		after[i] = PG_INT64_MAX;
	for (int i = 0; i < nparts; i++)
	{
		after[parts[i]] = positions[i];
		lowest = Min(lowest, positions[i]);
		part_datums[i] = Int32GetDatum(parts[i]);
	}
	part_array = PointerGetDatum(construct_array(part_datums, nparts, INT4OID,
												 sizeof(int32), true, TYPALIGN_INT));

	/* the due held streams, each up to its partition's position */
	held = es_partitions_held(name, part_array, &nheld);
	for (int i = 0; i < nheld; i++)
		if (held[i].due && (budget < 0 || total < budget))
		{
			total += es_run_held_stream(p, name, held[i].partition,
										after[held[i].partition], &held[i]);
			any_due = true;
		}

	/*
	 * A held stream's retry is applied whole (its hold ends only once it
	 * caught up); when that used up the budget, the log waits for the next
	 * run
	 */
	if (budget >= 0 && total >= budget)
		return total;

	/* what is still held is skipped */
	memset(&scope, 0, sizeof(scope));
	if (any_due)
		held = es_partitions_held(name, part_array, &nheld);
	for (int i = 0; i < nheld; i++)
		es_skip_stream(&scope, held[i].stream_id);

	if (nparts > 1)
	{
		scope.npartitions = p->partitions;
		scope.nparts = nparts;
		scope.parts = parts;
		scope.positions = positions;
		scope.after = after;
		edata = es_apply_in_subxact(p, name, lowest, head, budget < 0 ? -1 : budget - total,
									deadline, &scope, &handed, &current, &newpos);
		if (edata == NULL)
			return total + handed;
		/* rolled back: each partition on its own, where failures are handled */
		FreeErrorData(edata);
	}
	for (int i = 0; i < nparts && !*failed && (budget < 0 || total < budget); i++)
		total += es_run_partition(p, name, attempts, parts[i], positions[i], head,
								  budget < 0 ? -1 : budget - total, deadline, scope.held, failed);
	return total;
}

/*
 * An async projection with partitions (or parking): the partitions no
 * other process is applying, a share of them at a time in one scan of the
 * log; each partition's row is its lock (SKIP LOCKED: processes share the
 * partitions out).  The database worker and its helpers each take their
 * share of the partitions with work (over event_store.max_workers), so that
 * they apply them in parallel, each reading the log once; any other process
 * takes all it can.  (A share left over while a helper is not running is
 * taken when the worker's share has caught up; a process that commits a
 * batch wakes the others, which share out what is still behind.)  With skipped given, *skipped is set when a partition
 * was left out because another process holds it.
 */
static int64
es_run_partitioned(EsProjection *p, const char *name, int32 attempts, int64 budget,
				   TimestampTz deadline, bool *skipped)
{
	Oid			types[4] = {TEXTOID, INT4OID, INT4OID, INT8OID};
	Datum		values[4];
	int64		head = EsSafeHead();
	int64		total = 0;
	int32		last = -1;
	int64		taken = 0;
	int64		due;
	bool		failed = false;
	bool		isnull;
	int			workers = EsIsProjectionWorker() ? Max(es_max_workers, 1) : 1;
	int32		share;
	int32	   *parts = palloc(sizeof(int32) * p->partitions);
	int64	   *positions = palloc(sizeof(int64) * p->partitions);

	/*
	 * The partitions with work: behind the head, or holding streams back
	 * (their retries); the share is of those, so that the last ones behind
	 * are still shared out
	 */
	values[0] = CStringGetTextDatum(name);
	values[3] = Int64GetDatum(head);
	es_projection_exec("SELECT pg_catalog.count(*) FROM event_store.subscription_partitions p "
					   "WHERE p.subscription OPERATOR(pg_catalog.=) $1 "
					   "AND (p.position OPERATOR(pg_catalog.<) $2 OR EXISTS (SELECT 1 "
					   "  FROM event_store.subscription_streams t WHERE t.subscription OPERATOR(pg_catalog.=) $1 "
					   "  AND t.partition OPERATOR(pg_catalog.=) p.partition))",
					   2, (Oid[]) {TEXTOID, INT8OID}, (Datum[]) {values[0], values[3]}, NULL);
	due = SPI_processed == 1 ?
		DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) : 0;
	share = (int32) ((Min(Max(due, 1), (int64) p->partitions) + workers - 1) / workers);
	values[2] = Int32GetDatum(share);
	while (!failed && (budget < 0 || total < budget) &&
		   (deadline == 0 || GetCurrentTimestamp() < deadline))
	{
		int			n;

		values[1] = Int32GetDatum(last);
		es_projection_exec("SELECT p.partition, p.position FROM event_store.subscription_partitions p "
						   "WHERE p.subscription OPERATOR(pg_catalog.=) $1 AND p.partition OPERATOR(pg_catalog.>) $2 "
						   "AND (p.position OPERATOR(pg_catalog.<) $4 OR EXISTS (SELECT 1 "
						   "  FROM event_store.subscription_streams t WHERE t.subscription OPERATOR(pg_catalog.=) $1 "
						   "  AND t.partition OPERATOR(pg_catalog.=) p.partition)) "
						   "ORDER BY p.partition LIMIT $3 FOR UPDATE OF p SKIP LOCKED", 4, types, values, NULL);
		if (SPI_processed == 0)
		{
			/* every partition with work was seen: those not taken are held elsewhere */
			if (skipped != NULL && due > taken)
				*skipped = true;
			break;
		}
		n = (int) SPI_processed;
		for (int i = 0; i < n; i++)
		{
			parts[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
			positions[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		}

		/*
		 * Still running, read now that its partitions are ours: the state was
		 * read before they were locked, and a pause (or a drop) that
		 * committed meanwhile waited for the batches holding them, not for
		 * this one
		 */
		es_projection_exec("SELECT 1 FROM event_store.projections WHERE name OPERATOR(pg_catalog.=) $1 "
						   "AND state OPERATOR(pg_catalog.=) 'running'", 1, types, values, NULL);
		if (SPI_processed == 0)
			return total;		/* paused, dropped: its attempts as they are */
		taken += n;
		last = parts[n - 1];
		total += es_run_group(p, name, attempts, n, parts, positions, head,
							  budget < 0 ? -1 : budget - total, deadline, &failed);
	}
	if (!failed && attempts != 0)
	{
		values[1] = Int32GetDatum(0);
		es_projection_exec("UPDATE event_store.projections SET attempts = 0, "
						   "last_error = NULL, error_position = NULL, next_attempt_at = NULL, "
						   "updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
						   1, types, values, NULL);
	}
	return total;
}

/*
 * One batch of one async projection.  The projection's row is locked FOR
 * UPDATE SKIP LOCKED at the caller's level, so it stays locked whatever
 * happens to the batch, and the worker and run_projections() never apply the
 * same batch twice.  The batch runs in a subtransaction: handler work and
 * checkpoint commit together.  A handler error rolls the batch back, applies
 * the events before the failing one, and records the error (failed after
 * event_store.projection_max_attempts).  The batch ends after budget
 * events, or early once the deadline (if any) passed.  Returns events handed
 * to handlers.
 */
static int64
es_run_one(const char *name, int64 budget, TimestampTz deadline, bool *skipped)
{
	EsProjection *p;
	int64		position = 0;
	int32		attempts = 0;
	int64		handed = 0;
	int64		current = 0;
	int64		newpos;
	int64		prefix_handed = 0;
	int64		cur;
	ErrorData  *edata;
	ErrorData  *prefix_error;

	/*
	 * One partition: the projection's row is its lock, as ever.  Several (or
	 * parking): each partition's row is, so that workers apply them in
	 * parallel; the projection's row is only read.
	 */
	p = es_projection_load(name, "AND mode OPERATOR(pg_catalog.=) 'async' "
						   "AND state OPERATOR(pg_catalog.=) 'running'",
						   NULL, NULL, &position, &attempts, NULL);
	if (p != NULL && (p->partitions > 1 || p->park))
		return es_run_partitioned(p, name, attempts, budget, deadline, skipped);
	if (p == NULL)
		return 0;				/* gone, paused or failed */
	p = es_projection_load(name, "AND mode OPERATOR(pg_catalog.=) 'async' "
						   "AND state OPERATOR(pg_catalog.=) 'running' FOR UPDATE SKIP LOCKED",
						   NULL, NULL, &position, &attempts, NULL);
	if (p == NULL)
	{
		/* being applied by another process (or changed state just now) */
		if (skipped != NULL)
			*skipped = true;
		return 0;
	}

	edata = es_apply_in_subxact(p, name, position, EsSafeHead(), budget, deadline, NULL,
								&handed, &current, &newpos);
	if (edata == NULL)
	{
		if (attempts != 0)
		{
			Oid			types[1] = {TEXTOID};
			Datum		values[1] = {CStringGetTextDatum(name)};

			es_projection_exec("UPDATE event_store.projections SET attempts = 0, "
							   "last_error = NULL, error_position = NULL, next_attempt_at = NULL, "
							   "updated_at = pg_catalog.now() WHERE name OPERATOR(pg_catalog.=) $1",
							   1, types, values, NULL);
		}
		return handed;
	}

	/*
	 * The batch failed at the event at "current": keep what came before it,
	 * within the same deadline; when the deadline cuts that short, the next
	 * round goes on from there and meets the failing event again
	 */
	newpos = position;
	if (current - 1 > position)
	{
		prefix_error = es_apply_in_subxact(p, name, position, current - 1, -1, deadline, NULL,
										   &prefix_handed, &cur, &newpos);
		if (prefix_error != NULL)
		{
			FreeErrorData(prefix_error);
			prefix_handed = 0;
			newpos = position;
		}
		else if (newpos < current - 1 && prefix_handed > 0)
		{
			FreeErrorData(edata);
			return prefix_handed;
		}
	}

	es_projection_failed(name, attempts, current, edata);
	FreeErrorData(edata);
	return prefix_handed;
}

/*
 * Run the async projections until each is caught up or max_events events
 * were handed to handlers in total, round-robin in slices of 10,000 so that a
 * projection with a large backlog does not starve the others (a projection
 * left on its own takes the rest in one batch).  A slice also ends after
 * max_ms (0: no limit), so that a slow handler does not make for a long
 * transaction.
 * With only_due, skip projections whose retry backoff has not expired (the
 * worker); a manual call retries at once.  With skipped given, the names of
 * the projections (or of some of their partitions) left out because another
 * process is applying them are appended to *skipped, each once.  Caller is
 * connected to SPI.
 */
int64
EsRunAsyncProjections(int64 max_events, bool only_due, int max_ms, List **skipped)
{
	int			rc;
	volatile int64 total = 0;
	List	   *volatile names = NIL;

	rc = SPI_execute_plan(EsKeptStatementPlan(only_due ?
											  "SELECT name FROM event_store.projections "
											  "WHERE mode OPERATOR(pg_catalog.=) 'async' "
											  "AND state OPERATOR(pg_catalog.=) 'running' AND (next_attempt_at IS NULL "
											  "OR next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()) ORDER BY name" :
											  "SELECT name FROM event_store.projections "
											  "WHERE mode OPERATOR(pg_catalog.=) 'async' "
											  "AND state OPERATOR(pg_catalog.=) 'running' ORDER BY name", 0, NULL),
						  NULL, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.projections failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;

		names = lappend(names, TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[i],
																 SPI_tuptable->tupdesc, 1, &isnull)));
	}

	/* the partitioned projections' rows are updated once, at the end */
	moved_projections = NIL;
	moved_cxt = CurrentMemoryContext;
	PG_TRY();
	{
		total = es_run_rounds(names, max_events, max_ms, skipped);
	}
	PG_FINALLY();
	{
		moved_cxt = NULL;
	}
	PG_END_TRY();
	es_update_moved_projections();
	return total;
}

/*
 * The rounds of EsRunAsyncProjections over the running async projections
 * (names): returns the events handed to handlers
 */
static int64
es_run_rounds(List *names, int64 max_events, int max_ms, List **skipped)
{
	int64		total = 0;
	bool		progressed = true;

	while (progressed && total < max_events && names != NIL)
	{
		ListCell   *lc;
		List	   *busy = NIL;

		progressed = false;
		foreach(lc, names)
		{
			char	   *name = lfirst(lc);
			int64		slice = max_events - total;
			int64		n;
			bool		held = false;

			/* round-robin in slices, unless no other projection is waiting */
			if (list_length(names) > 1)
				slice = Min(slice, (int64) ES_PROJECTION_SLICE);

			if (slice <= 0)
				break;
			n = es_run_one(name, slice,
						   max_ms > 0 ? TimestampTzPlusMilliseconds(GetCurrentTimestamp(), max_ms) : 0,
						   skipped != NULL ? &held : NULL);
			total += n;
			if (held)
			{
				ListCell   *sc;
				bool		known = false;

				foreach(sc, *skipped)
					known = known || strcmp(lfirst(sc), name) == 0;
				if (!known)
					*skipped = lappend(*skipped, name);
			}
			/* a full slice means there may be more for this projection */
			if (n >= slice)
			{
				busy = lappend(busy, name);
				progressed = true;
			}
		}
		names = busy;
	}
	return total;
}

/* SQL: event_store.run_projections(max_events int DEFAULT 10000) RETURNS bigint */
Datum
es_run_projections(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	int32		max_events;
	int64		n;
	List	   *skipped = NIL;
	int			nskipped;
	StringInfoData names;
	MemoryContext outer = CurrentMemoryContext;

	EsCheckWritable("run_projections()");
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("max_events must not be null")));
	max_events = PG_GETARG_INT32(0);
	EsRejectNegative(max_events, "max_events", NULL);
	(void) EsGetCatalog();
	EsSpiConnect(&sw);
	n = EsRunAsyncProjections(max_events, false, 0, &skipped);

	/* the names live in SPI's memory: copy them out before it goes */
	nskipped = list_length(skipped);
	if (nskipped > 0)
	{
		MemoryContext spi = MemoryContextSwitchTo(outer);
		ListCell   *lc;

		initStringInfo(&names);
		foreach(lc, skipped)
		{
			if (names.len > 0)
				appendStringInfoString(&names, ", ");
			appendStringInfo(&names, "\"%s\"", (char *) lfirst(lc));
		}
		MemoryContextSwitchTo(spi);
	}
	EsSpiFinish(&sw);

	/* say which projections another process (the worker) is applying */
	if (nskipped > 0)
	{
		if (nskipped == 1)
			ereport(NOTICE,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("run_projections() skipped projection %s: another process is applying it",
							names.data),
					 errdetail("run_projections() does not wait for a projection (or partition) "
							   "that another process, such as the background worker, is applying; "
							   "the events that process applies are not in the count returned."),
					 errhint("Use event_store.wait_for_projection() to wait for a projection to "
							 "reach a position; event_store.projection_status shows where each stands.")));
		else
			ereport(NOTICE,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("run_projections() skipped %d projections that other processes are applying: %s",
							nskipped, names.data),
					 errdetail("run_projections() does not wait for a projection (or partition) "
							   "that another process, such as the background worker, is applying; "
							   "the events that process applies are not in the count returned."),
					 errhint("Use event_store.wait_for_projection() to wait for a projection to "
							 "reach a position; event_store.projection_status shows where each stands.")));
	}
	PG_RETURN_INT64(n);
}

/*
 * How does fn (if it exists) take its events: event_store.event[] as its one
 * argument, no argument and RETURNS trigger, else one at a time
 */
static EsHandlerKind
es_handler_kind(Oid fn)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	EsHandlerKind kind = ES_HANDLER_EVENT;

	if (HeapTupleIsValid(tup))
	{
		Form_pg_proc proc = (Form_pg_proc) GETSTRUCT(tup);

		if (proc->pronargs == 1 &&
			proc->proargtypes.values[0] == get_array_type(EsGetCatalog()->event_type_oid))
			kind = ES_HANDLER_ARRAY;
		else if (proc->pronargs == 0 && proc->prorettype == TRIGGEROID)
			kind = ES_HANDLER_TABLE;
		ReleaseSysCache(tup);
	}
	return kind;
}

/* What wait_for_projection waits for */
typedef struct EsProjectionWait
{
	const char *name;
	int64		position;
} EsProjectionWait;

/*
 * Has the projection applied (or passed) every event up to the position?
 * A running inline projection has, once every append up to there ended
 * (they applied it themselves); an async one, once each of its partitions
 * is there and none of its streams is held back at or below it.  Read with
 * a fresh snapshot each time.
 */
static bool
es_projection_reached(void *arg)
{
	EsProjectionWait *w = (EsProjectionWait *) arg;
	EsUserSwitch sw;
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {CStringGetTextDatum(w->name), Int64GetDatum(w->position)};
	bool		isnull;
	bool		reached;
	bool		is_inline;

	EsSpiConnect(&sw);
	es_projection_exec("SELECT p.mode OPERATOR(pg_catalog.=) 'inline' AND p.state OPERATOR(pg_catalog.=) 'running', "
					   "p.mode OPERATOR(pg_catalog.=) 'async' AND CASE WHEN p.partitions OPERATOR(pg_catalog.>) 1 "
					   "  THEN (SELECT pg_catalog.min(sp.position) FROM event_store.subscription_partitions sp "
					   "        WHERE sp.subscription OPERATOR(pg_catalog.=) p.name) "
					   "  ELSE p.position END OPERATOR(pg_catalog.>=) $2 "
					   "AND NOT EXISTS (SELECT 1 FROM event_store.subscription_streams t "
					   "  WHERE t.subscription OPERATOR(pg_catalog.=) p.name "
					   "  AND t.global_position OPERATOR(pg_catalog.<=) $2) "
					   "FROM event_store.projections p WHERE p.name OPERATOR(pg_catalog.=) $1",
					   2, types, values, NULL);
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("projection \"%s\" does not exist", w->name)));
	is_inline = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	reached = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	EsSpiFinish(&sw);
	if (is_inline)
		reached = EsSafeHead() >= w->position;
	return reached;
}

PG_FUNCTION_INFO_V1(es_wait_for_projection);

/*
 * SQL: event_store.wait_for_projection(name text, position bigint,
 *		timeout interval) RETURNS boolean
 *
 * Read-your-writes: append, commit, then wait until the projection applied
 * last_appended_position().  Woken when a transaction that moved an async
 * projection on commits, or, for an inline one, when an append's ends (the
 * horizon), never polling.
 */
Datum
es_wait_for_projection(PG_FUNCTION_ARGS)
{
	EsProjectionWait w;
	double		ms;
	char	   *mode;
	char	   *state;
	EsUserSwitch sw;

	w.name = text_to_cstring(EsGetRequiredText(fcinfo, 0, "name"));
	EsRequireArg(fcinfo, 1, "position");
	w.position = PG_GETARG_INT64(1);
	EsRejectNegative(w.position, "position", "Pass last_appended_position() after an append.");
	ms = Min(EsIntervalArgMs(fcinfo, 2, "timeout", false), (double) INT_MAX);
	EsCheckPreloaded();

	EsSpiConnect(&sw);
	(void) es_projection_get(w.name, &mode, &state, NULL, NULL, false, NULL);
	EsSpiFinish(&sw);
	if (strcmp(mode, "inline") == 0 && strcmp(state, "running") == 0)
		PG_RETURN_BOOL(w.position == 0 || EsWaitForHead(w.position - 1, (long) ms) >= w.position);
	PG_RETURN_BOOL(EsWaitForProjections(es_projection_reached, &w, (long) ms));
}
