/*
 * lifecycle.h
 *	  Retention, as the database worker enforces it.
 */
#ifndef ES_LIFECYCLE_H
#define ES_LIFECYCLE_H

#include "fmgr.h"

/* retention removes at most this many events per statement */
#define ES_RETENTION_BATCH 10000

extern int64 EsEnforceRetentionBatch(int64 limit);
extern int64 EsEnforceRetention(void);
extern void EsImportedLifecycle(text *stream_id, const char *type, int64 version);

#endif							/* ES_LIFECYCLE_H */
