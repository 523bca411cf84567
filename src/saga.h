/*
 * saga.h
 *	  Sagas: the C side of the orchestrator.
 */
#ifndef ES_SAGA_H
#define ES_SAGA_H

extern void EsSagaInit(void);

#endif							/* ES_SAGA_H */
