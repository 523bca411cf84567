/*
 * results.h
 *	  The result tuplestores of the set-returning functions, in memory kept
 *	  from one call to the next.
 */
#ifndef ES_RESULTS_H
#define ES_RESULTS_H

#include "fmgr.h"

extern void EsInitResultSet(FunctionCallInfo fcinfo);

#endif							/* ES_RESULTS_H */
