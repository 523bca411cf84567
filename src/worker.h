/*
 * worker.h
 *	  The launcher and the database workers.
 */
#ifndef ES_WORKER_H
#define ES_WORKER_H

extern bool es_worker_enabled;
extern int	es_max_workers;
extern int	es_naptime_ms;
extern int	es_retention_interval_ms;

extern void EsRegisterLauncher(void);

#endif							/* ES_WORKER_H */
