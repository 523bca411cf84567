/*
 * saga.h
 *	  Sagas: the C side of the orchestrator.
 */
#ifndef ES_SAGA_H
#define ES_SAGA_H

#include "utils/uuid.h"

extern void EsSagaInit(void);
extern void EsSagaSetCause(const pg_uuid_t *saga_id, const pg_uuid_t *event_id,
						   bool external);
extern bool EsSagaRegistrant(Datum saga_id, MemoryContext cxt, Oid *owner,
							 const char **search_path);

#endif							/* ES_SAGA_H */
