/*
 * locks.h
 *	  The extension's own heavyweight locks.
 */
#ifndef ES_LOCKS_H
#define ES_LOCKS_H

#include "storage/lockdefs.h"
#include "utils/uuid.h"

/*
 * locktag_field4 of the extension's own locks, taken with LOCKTAG_ADVISORY
 * tags from C.  The SQL advisory-lock functions use 1 and 2 only, so no SQL
 * call (of any role) can take, hold or block one of these.
 */
#define ES_STREAM_LOCK_FIELD4	0x4553	/* "ES": a stream's appenders */
#define ES_SAGA_LOCK_FIELD4		0x5347	/* "SG": starting a saga with a given id */
#define ES_CATEGORY_LOCK_FIELD4	0x4543	/* "EC": appenders of a category with grants */
#define ES_OPEN_LOCK_FIELD4		0x454F	/* "EO": appenders of categories without grants */

extern void EsLockStream(text *stream_id);
extern void EsUnlockStream(text *stream_id);
extern void EsLockCategory(const char *category, int len, LOCKMODE mode);
extern void EsLockSagaStart(const pg_uuid_t *saga_id);

#endif							/* ES_LOCKS_H */
