/*
 * upcast.h
 *	  Upcasting events to their current schema version as they are read.
 */
#ifndef ES_UPCAST_H
#define ES_UPCAST_H

extern bool EsUpcastersExist(void);
extern bool EsUpcastRow(Datum *values, bool *isnull);

#endif							/* ES_UPCAST_H */
