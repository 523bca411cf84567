/*
 * event_store_router.c
 *	  The router's hot paths in C.
 *
 *	  _stream_partition: the PL/Proxy partition of a stream, run for every
 *	  routed call: the bucket (the first byte of the md5 of the stream id,
 *	  modulo 64, as event_store.stream_bucket), the bucket's fence lock
 *	  (shared, to the end of the transaction, so that move_bucket can hold
 *	  calls back while it switches the bucket), then the bucket's server,
 *	  read after the lock.
 *
 *	  read_all and read_category: one page of every server
 *	  (one parallel PL/Proxy call, event_store._read_all_parts or
 *	  event_store._read_category_parts, each server asked for its share of
 *	  the page), merged here with a vector cursor on every row.
 *
 *	  The merge: each server's rows are in its position order; the running
 *	  maximum of recorded_at within a server's rows (mk) keeps that order.
 *	  A server whose share came back full may have more events right after
 *	  it, so no row of any server with a later mk than that server's last
 *	  one is taken (a stream whose bucket moved is then read in order across
 *	  its two servers).  The rows left are ordered by (mk, server, position)
 *	  and the first max_count taken; each row's cursor is the cursor given,
 *	  advanced server by server over the rows up to it.
 *
 *	  Copies that move_bucket() made (metadata "$moved", flagged by the
 *	  server) are not returned, only passed over by the cursor; a page of
 *	  copies only is skipped, so a follower never gets an empty page while
 *	  events follow.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "common/md5.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_MODULE_MAGIC;

PG_FUNCTION_INFO_V1(esr_read);
PG_FUNCTION_INFO_V1(esr_stream_partition);

/* the columns of _read_all_parts and _read_category_parts */
enum
{
	COL_PART = 0,
	COL_MOVED,
	COL_POSITION,
	COL_STREAM_ID,
	COL_STREAM_VERSION,
	COL_EVENT_ID,
	COL_EVENT_TYPE,
	COL_DATA,
	COL_METADATA,
	COL_SCHEMA_VERSION,
	COL_RECORDED_AT,
	NCOLS
};

/* the event columns returned, then the cursor */
#define NEVENTCOLS (COL_RECORDED_AT - COL_POSITION + 1)

typedef struct PageRow
{
	int			server;			/* 0-based */
	bool		moved;
	int64		position;
	TimestampTz recorded_at;
	TimestampTz mk;
	int			tuple;			/* index in the SPI result */
} PageRow;

static SPIPlanPtr plan_all = NULL;
static SPIPlanPtr plan_category = NULL;
static SPIPlanPtr plan_check = NULL;
static SPIPlanPtr plan_bucket = NULL;
static bool have_fence_key = false;
static int32 fence_key;

static SPIPlanPtr
esr_plan(SPIPlanPtr *slot, const char *sql, int nargs, Oid *types)
{
	if (*slot == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*slot = plan;
	}
	return *slot;
}

/* event_store._server_count(): the number of servers, or its error */
static void
esr_check_configured(void)
{
	if (SPI_execute("SELECT event_store._server_count()", false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the router's servers failed");
}

static int
hexdigit(char c)
{
	return c >= 'a' ? c - 'a' + 10 : c - '0';
}

/*
 * SQL: event_store._stream_partition(stream_id text) RETURNS int -- server
 * - 1; a NULL stream id goes to the first server, which refuses it with
 * event_store's own error
 */
Datum
esr_stream_partition(PG_FUNCTION_ARGS)
{
	text	   *sid;
	char		hex[33];
	const char *errstr = NULL;
	int32		bucket;
	Oid			types[1] = {INT4OID};
	Datum		args[1];
	bool		isnull;
	int32		server;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (PG_ARGISNULL(0))
	{
		esr_check_configured();
		SPI_finish();
		PG_RETURN_INT32(0);
	}
	sid = PG_GETARG_TEXT_PP(0);
	if (!pg_md5_hash(VARDATA_ANY(sid), VARSIZE_ANY_EXHDR(sid), hex, &errstr))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not compute the MD5 hash of a stream id: %s", errstr)));
	bucket = (hexdigit(hex[0]) * 16 + hexdigit(hex[1])) % 64;

	/* the key of the buckets' fence locks, as event_store._fence_key() says */
	if (!have_fence_key)
	{
		if (SPI_execute("SELECT event_store._fence_key()", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "reading event_store._fence_key() failed");
		fence_key = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		have_fence_key = true;
	}
	(void) DirectFunctionCall2(pg_advisory_xact_lock_shared_int4,
							   Int32GetDatum(fence_key), Int32GetDatum(bucket));

	/* the mapping, read after the lock (a statement of its own) */
	args[0] = Int32GetDatum(bucket);
	if (SPI_execute_plan(esr_plan(&plan_bucket,
								  "SELECT server FROM event_store.buckets WHERE bucket OPERATOR(pg_catalog.=) $1",
								  1, types),
						 args, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.buckets failed");
	if (SPI_processed != 1)
	{
		esr_check_configured();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bucket %d has no server", bucket)));
	}
	server = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PG_RETURN_INT32(server - 1);
}

static int
cmp_server_position(const void *a, const void *b)
{
	const PageRow *x = (const PageRow *) a;
	const PageRow *y = (const PageRow *) b;

	if (x->server != y->server)
		return x->server < y->server ? -1 : 1;
	if (x->position != y->position)
		return x->position < y->position ? -1 : 1;
	return 0;
}

static int
cmp_merge(const void *a, const void *b)
{
	const PageRow *x = (const PageRow *) a;
	const PageRow *y = (const PageRow *) b;

	if (x->mk != y->mk)
		return x->mk < y->mk ? -1 : 1;
	return cmp_server_position(a, b);
}

/*
 * SQL: event_store.read_all(after_position bigint[], max_count int,
 *		event_types text[], raw boolean) and event_store.read_category(category
 *		text, after_position bigint[], max_count int, event_types text[], raw
 *		boolean), both RETURNS TABLE(<event columns>, "cursor" bigint[])
 */
Datum
esr_read(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		by_category = PG_NARGS() == 5;
	int			a = by_category ? 1 : 0;
	Datum		category = by_category ? PG_GETARG_DATUM(0) : (Datum) 0;
	bool		category_null = by_category ? PG_ARGISNULL(0) : true;
	bool		max_count_null = PG_ARGISNULL(a + 1);
	int32		max_count = max_count_null ? 0 : PG_GETARG_INT32(a + 1);
	Datum		event_types = PG_GETARG_DATUM(a + 2);
	bool		event_types_null = PG_ARGISNULL(a + 2);
	Datum		raw = PG_GETARG_DATUM(a + 3);
	bool		raw_null = PG_ARGISNULL(a + 3);
	Datum		cur_d;
	bool		isnull;
	int			n;
	int64	   *cur;
	int64	   *vec;
	bool	   *seen;
	Datum	   *vecd;
	Datum	   *parts;
	ArrayType  *parts_a;
	int32		share;
	Oid			checktypes[1] = {INT8ARRAYOID};
	Datum		checkargs[1];
	char		checknulls[1];
	MemoryContext callcxt = CurrentMemoryContext;

	InitMaterializedSRF(fcinfo, 0);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");

	/* the cursor, checked (NULL: every server from its beginning) */
	checkargs[0] = PG_ARGISNULL(a) ? (Datum) 0 : PG_GETARG_DATUM(a);
	checknulls[0] = PG_ARGISNULL(a) ? 'n' : ' ';
	if (SPI_execute_plan(esr_plan(&plan_check,
								  "SELECT event_store._check_cursor($1, 'after_position')",
								  1, checktypes),
						 checkargs, checknulls, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "checking the cursor failed");
	cur_d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	{
		ArrayType  *arr = DatumGetArrayTypeP(cur_d);
		Datum	   *elems;
		bool	   *enulls;
		MemoryContext old = MemoryContextSwitchTo(callcxt);

		deconstruct_array(arr, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &elems, &enulls, &n);
		cur = palloc(sizeof(int64) * n);
		vec = palloc(sizeof(int64) * n);
		seen = palloc(sizeof(bool) * n);
		vecd = palloc(sizeof(Datum) * n);
		parts = palloc(sizeof(Datum) * n);
		for (int i = 0; i < n; i++)
		{
			cur[i] = DatumGetInt64(elems[i]);
			parts[i] = Int32GetDatum(i);
		}
		parts_a = construct_array(parts, n, INT4OID, 4, true, TYPALIGN_INT);
		MemoryContextSwitchTo(old);
	}
	share = max_count_null ? 0 : (max_count > 0 ? (max_count + n - 1) / n : max_count);

	for (;;)
	{
		Datum		args[6];
		char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
		Datum		cur_arr;
		int			k = 0;
		int			nrows;
		PageRow    *rows;
		int			first;
		bool		has_lim = false;
		TimestampTz lim = 0;
		int			ntaken;
		int			emitted = 0;
		SPITupleTable *tt;
		int			ret;

		{
			MemoryContext old = MemoryContextSwitchTo(callcxt);

			for (int i = 0; i < n; i++)
				vecd[i] = Int64GetDatum(cur[i]);
			cur_arr = PointerGetDatum(construct_array(vecd, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
			MemoryContextSwitchTo(old);
		}
		args[k++] = PointerGetDatum(parts_a);
		args[k++] = cur_arr;
		if (by_category)
		{
			args[k] = category;
			nulls[k++] = category_null ? 'n' : ' ';
		}
		args[k] = Int32GetDatum(share);
		nulls[k++] = max_count_null ? 'n' : ' ';
		args[k] = event_types;
		nulls[k++] = event_types_null ? 'n' : ' ';
		args[k] = raw;
		nulls[k++] = raw_null ? 'n' : ' ';
		if (by_category)
		{
			Oid			types[6] = {INT4ARRAYOID, INT8ARRAYOID, TEXTOID, INT4OID, TEXTARRAYOID, BOOLOID};

			ret = SPI_execute_plan(esr_plan(&plan_category,
											"SELECT * FROM event_store._read_category_parts($1, $2, $3, $4, $5, $6)",
											6, types),
								   args, nulls, true, 0);
		}
		else
		{
			Oid			types[5] = {INT4ARRAYOID, INT8ARRAYOID, INT4OID, TEXTARRAYOID, BOOLOID};

			ret = SPI_execute_plan(esr_plan(&plan_all,
											"SELECT * FROM event_store._read_all_parts($1, $2, $3, $4, $5)",
											5, types),
								   args, nulls, true, 0);
		}
		if (ret != SPI_OK_SELECT)
			elog(ERROR, "reading the servers' pages failed: %s", SPI_result_code_string(ret));
		tt = SPI_tuptable;
		nrows = (int) SPI_processed;
		if (tt->tupdesc->natts != NCOLS)
			elog(ERROR, "a server's page came back with %d columns, not %d", tt->tupdesc->natts, NCOLS);
		if (nrows == 0)
			break;

		rows = palloc(sizeof(PageRow) * nrows);
		for (int r = 0; r < nrows; r++)
		{
			HeapTuple	tup = tt->vals[r];

			rows[r].server = DatumGetInt32(SPI_getbinval(tup, tt->tupdesc, COL_PART + 1, &isnull));
			if (isnull || rows[r].server < 0 || rows[r].server >= n)
				elog(ERROR, "a server's page came back with partition %d of %d", rows[r].server, n);
			rows[r].moved = DatumGetBool(SPI_getbinval(tup, tt->tupdesc, COL_MOVED + 1, &isnull));
			rows[r].position = DatumGetInt64(SPI_getbinval(tup, tt->tupdesc, COL_POSITION + 1, &isnull));
			rows[r].recorded_at = DatumGetTimestampTz(SPI_getbinval(tup, tt->tupdesc, COL_RECORDED_AT + 1, &isnull));
			if (isnull)
				rows[r].recorded_at = DT_NOBEGIN;
			rows[r].tuple = r;
		}

		/* each server's rows in its order; mk; the limit of the full pages */
		qsort(rows, nrows, sizeof(PageRow), cmp_server_position);
		first = 0;
		while (first < nrows)
		{
			int			last = first;
			TimestampTz mk = rows[first].recorded_at;

			for (;;)
			{
				if (rows[last].recorded_at > mk)
					mk = rows[last].recorded_at;
				rows[last].mk = mk;
				if (last + 1 >= nrows || rows[last + 1].server != rows[first].server)
					break;
				last++;
			}
			if (!max_count_null && last - first + 1 >= share && (!has_lim || mk < lim))
			{
				lim = mk;
				has_lim = true;
			}
			first = last + 1;
		}
		if (has_lim)
		{
			int			kept = 0;

			for (int r = 0; r < nrows; r++)
				if (rows[r].mk <= lim)
					rows[kept++] = rows[r];
			nrows = kept;
		}
		qsort(rows, nrows, sizeof(PageRow), cmp_merge);
		ntaken = max_count > 0 ? Min(nrows, max_count) : nrows;

		/* every row with the cursor up to it */
		for (int i = 0; i < n; i++)
		{
			vec[i] = cur[i];
			seen[i] = false;
		}
		for (int r = 0; r < ntaken; r++)
		{
			PageRow    *row = &rows[r];

			if (!seen[row->server] || row->position > vec[row->server])
				vec[row->server] = row->position;
			seen[row->server] = true;
			if (row->moved)
				continue;
			{
				Datum		values[NEVENTCOLS + 1];
				bool		vnulls[NEVENTCOLS + 1];
				HeapTuple	tup = tt->vals[row->tuple];
				MemoryContext old;

				for (int c = 0; c < NEVENTCOLS; c++)
					values[c] = SPI_getbinval(tup, tt->tupdesc, COL_POSITION + 1 + c, &vnulls[c]);
				old = MemoryContextSwitchTo(callcxt);
				for (int i = 0; i < n; i++)
					vecd[i] = Int64GetDatum(vec[i]);
				values[NEVENTCOLS] = PointerGetDatum(construct_array(vecd, n, INT8OID, 8, FLOAT8PASSBYVAL,
																	 TYPALIGN_DOUBLE));
				vnulls[NEVENTCOLS] = false;
				tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, vnulls);
				pfree(DatumGetPointer(values[NEVENTCOLS]));
				MemoryContextSwitchTo(old);
			}
			emitted++;
		}
		/* a page of copies only is passed over */
		if (emitted > 0 || ntaken == 0)
			break;
		for (int i = 0; i < n; i++)
			cur[i] = vec[i];
		SPI_freetuptable(tt);
		pfree(rows);
	}

	SPI_finish();
	return (Datum) 0;
}
