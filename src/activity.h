/*
 * activity.h
 *	  Wake-ups and requests between backends, the launcher and the database
 *	  workers; the statistics of appends.
 */
#ifndef ES_ACTIVITY_H
#define ES_ACTIVITY_H

/* the most workers per database (event_store.max_workers) */
#define ES_MAX_WORKERS	16

/* event_store.notify_interval: the worker's NOTIFY, appenders' wake-ups */
extern int	es_notify_interval_ms;

extern Size EsActivityShmemSize(void);
extern void EsActivityRequestLocks(void);
extern void EsActivityShmemInit(void);
extern void EsActivityInit(void);

/* backends */
extern void EsWakeWorker(void);
extern void EsRequestRescan(void);
extern void EsCountAppend(int nevents);
extern void EsCountConflict(void);
extern void EsReadCounters(int64 *appends, int64 *events, int64 *conflicts,
						   int *in_flight);
extern void EsProjectionsMoved(void);
extern bool EsWaitForProjections(bool (*reached) (void *arg), void *arg, long timeout_ms);

/* the database worker */
extern bool EsTryAttachDatabase(void);
extern void EsSetWorkerProc(bool running);
extern void EsWorkerWantsCommits(bool wants);
extern bool EsTakeProjectionsChanged(void);
extern void EsReportAbsentDatabase(Oid dboid);
extern void EsSetHelperProc(int helper, bool running);
extern bool EsWorkerRunning(void);
extern bool EsIsProjectionWorker(void);
extern void EsWakeProjectionProcesses(void);

/* the launcher */
extern void EsSetLauncherProc(bool running);
extern bool EsTakeRescanRequest(void);
extern bool EsTakeAbsentDatabase(Oid dboid);

#endif							/* ES_ACTIVITY_H */
