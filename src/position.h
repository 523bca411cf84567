/*
 * position.h
 *	  The global position counter and the gap-safe follower horizon.
 */
#ifndef ES_POSITION_H
#define ES_POSITION_H

extern Size EsPositionShmemSize(void);
extern void EsPositionRequestLocks(void);
extern void EsPositionShmemInit(void);
extern void EsPositionRegisterRmgr(void);

extern int64 EsAllocatePositions(int64 count);
extern void EsReservePositions(int64 count);
extern void EsCounterStale(void);
extern int64 EsSafeHead(void);
extern int64 EsSafeHeadIfReady(void);
extern int64 EsLastAllocatedPosition(void);
extern int64 EsWaitForHead(int64 after_position, long timeout_ms);
extern int	EsAppendsInFlight(void);

/*
 * Called when a transaction that held positions has ended and released
 * them (committed: whether it committed), so that followers can read on
 */
typedef void (*EsPositionsReleasedHook) (bool committed);
extern PGDLLIMPORT EsPositionsReleasedHook es_positions_released_hook;

#endif							/* ES_POSITION_H */
