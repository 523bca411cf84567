/*
 * projection.h
 *	  Projections (CQRS read models), inline and async.
 */
#ifndef ES_PROJECTION_H
#define ES_PROJECTION_H

#include "nodes/pg_list.h"

extern int	es_projection_max_attempts;

/* events one async projection gets per round before the next one's turn */
#define ES_PROJECTION_SLICE		10000

extern void EsProjectionInit(void);
extern int64 EsRunAsyncProjections(int64 max_events, bool only_due, int max_ms,
								   List **skipped);

#endif							/* ES_PROJECTION_H */
