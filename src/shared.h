/*
 * shared.h
 *	  The extension's shared memory: the preload check and the directory of
 *	  databases (one entry number each).
 */
#ifndef ES_SHARED_H
#define ES_SHARED_H

#include "storage/proc.h"

/* this process's PGPROC number */
#if PG_VERSION_NUM >= 170000
#define ES_MY_PROCNO	MyProcNumber
#else
#define ES_MY_PROCNO	(MyProc->pgprocno)
#endif

extern int	es_max_databases;

extern int	EsProcCount(void);
extern Size EsDirectoryShmemSize(void);
extern void EsDirectoryRequestLocks(void);
extern void EsDirectoryShmemInit(void);

typedef void (*EsEntryReset) (int entry);
extern void EsOnEntryReuse(EsEntryReset reset);

extern void EsCheckPreloaded(void);
extern int	EsMyEntry(void);
extern bool EsTryMyEntry(void);
extern int	EsEntryOf(Oid dboid);

#endif							/* ES_SHARED_H */
