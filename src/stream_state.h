/*
 * stream_state.h
 *	  Deleted and reopened streams as the hot paths see them; removal of
 *	  events in progress.
 */
#ifndef ES_STREAM_STATE_H
#define ES_STREAM_STATE_H

extern bool EsStreamLifecycle(text *stream_id, bool *deleted, int64 *start_after);
extern int64 EsCheckStreamNotDeleted(text *stream_id);
extern bool EsAnyStreamState(void);
extern void EsStreamStateChanged(void);
extern bool EsRemovalInProgress(void);
extern void EsSetRemovalInProgress(bool on);

#endif							/* ES_STREAM_STATE_H */
