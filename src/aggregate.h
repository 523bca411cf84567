/*
 * aggregate.h
 *	  Aggregates and their snapshots.
 */
#ifndef ES_AGGREGATE_H
#define ES_AGGREGATE_H

extern void EsAggregateInit(void);

#endif							/* ES_AGGREGATE_H */
