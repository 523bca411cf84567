/*
 * results.c
 *	  The result tuplestores of the set-returning functions.
 *
 * Every read copies its rows into a tuplestore (materialize mode).  Made in
 * the query's memory, as InitMaterializedSRF makes it, a read of a few
 * hundred kB lands each call on blocks the allocator has just taken from
 * the kernel and gives back when the query ends: a page fault per 4 kB of
 * result, and the copies miss the caches.  That took about 40% of the CPU
 * of a 1,000-event read_stream.
 *
 * Here the tuplestores live in one context of the backend's, whose freed
 * chunks the next call reuses.  The executor ends each tuplestore (which
 * frees its rows) before it frees the query's memory, so a normal end
 * leaves nothing behind.  A callback on each calling query's memory counts
 * the queries still using the context; once none is, the context is reset
 * when an aborted (sub)transaction may have left rows of an unfinished
 * query in it, or when it holds more than ES_RESULTS_KEEP bytes.  A reset
 * therefore never frees a tuplestore some query still reads.
 */
#include "postgres.h"

#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "utils/memutils.h"
#include "utils/tuplestore.h"

#include "results.h"

/* the most the context keeps between queries */
#define ES_RESULTS_KEEP		(4 * 1024 * 1024)

static MemoryContext es_results_cxt = NULL;
static int	es_results_users = 0;	/* queries whose results may be in it */
static bool es_results_stale = false;	/* an abort may have left rows in it */

/* With no query using it, reset the context if it is stale or too large */
static void
es_results_trim(void)
{
	if (es_results_users > 0)
		return;
	if (es_results_stale ||
		MemoryContextMemAllocated(es_results_cxt, false) > ES_RESULTS_KEEP)
	{
		MemoryContextReset(es_results_cxt);
		es_results_stale = false;
	}
}

/* The memory of a query that made a result set is being freed */
static void
es_results_query_done(void *arg)
{
	Assert(es_results_users > 0);
	es_results_users--;
	es_results_trim();
}

static void
es_results_xact(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT)
	{
		es_results_stale = true;
		es_results_trim();
	}
}

static void
es_results_subxact(SubXactEvent event, SubTransactionId mySubid,
				   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		es_results_stale = true;
		es_results_trim();
	}
}

/*
 * Set up a materialize-mode result, as InitMaterializedSRF(fcinfo, 0) does
 * (the same errors when the caller cannot take one), with its tuplestore in
 * the kept context.
 */
void
EsInitResultSet(FunctionCallInfo fcinfo)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext query_cxt;
	MemoryContext oldcxt;
	MemoryContextCallback *done;
	TupleDesc	desc;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("set-valued function called in context that cannot accept a set")));
	if (!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("materialize mode required, but it is not allowed in this context")));

	if (es_results_cxt == NULL)
	{
		es_results_cxt = AllocSetContextCreate(TopMemoryContext,
											   "event_store results",
											   ALLOCSET_DEFAULT_SIZES);
		RegisterXactCallback(es_results_xact, NULL);
		RegisterSubXactCallback(es_results_subxact, NULL);
	}

	query_cxt = rsinfo->econtext->ecxt_per_query_memory;
	oldcxt = MemoryContextSwitchTo(query_cxt);
	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	/* counted before the tuplestore exists: no reset can miss it */
	done = palloc(sizeof(MemoryContextCallback));
	done->func = es_results_query_done;
	done->arg = NULL;
	MemoryContextRegisterResetCallback(query_cxt, done);
	es_results_users++;

	MemoryContextSwitchTo(es_results_cxt);
	rsinfo->setResult =
		tuplestore_begin_heap((rsinfo->allowedModes & SFRM_Materialize_Random) != 0,
							  false, work_mem);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setDesc = desc;
	MemoryContextSwitchTo(oldcxt);
}
