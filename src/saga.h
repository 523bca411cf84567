/*
 * saga.h
 *	  Sagas: the C side of the orchestrator.
 */
#ifndef ES_SAGA_H
#define ES_SAGA_H

extern void EsSagaInit(void);
extern bool EsSagaRegistrant(Datum saga_id, MemoryContext cxt, Oid *owner,
							 const char **search_path);

#endif							/* ES_SAGA_H */
