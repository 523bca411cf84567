/*
 * locks.c
 *	  The extension's own heavyweight locks: a stream's appenders, the
 *	  appenders of a category, the start of a saga with a given id.  They
 *	  are advisory lock tags with a locktag_field4 of our own (locks.h),
 *	  which the SQL advisory-lock functions never use, so no SQL call of any
 *	  role can take, hold or block one of them.  The locking contracts that use them are described
 *	  in append.c and projection.c.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lock.h"
#include "utils/uuid.h"

#include "grants.h"
#include "locks.h"
#include "pg_mirror.h"

/* The lock tag of a stream */
static void
es_stream_locktag(LOCKTAG *tag, text *stream_id)
{
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) VARDATA_ANY(stream_id),
							VARSIZE_ANY_EXHDR(stream_id), 0);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 ES_STREAM_LOCK_FIELD4);
}

/* Take the transaction-scoped exclusive lock of a stream */
void
EsLockStream(text *stream_id)
{
	LOCKTAG		tag;

	es_stream_locktag(&tag, stream_id);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Give back one hold of a stream's lock before the transaction ends: only
 * for a writer that is the stream's one writer (an import's worker, whose
 * categories nobody else may write), so that a transaction importing many
 * streams does not fill the lock table.
 */
void
EsUnlockStream(text *stream_id)
{
	LOCKTAG		tag;

	es_stream_locktag(&tag, stream_id);
	(void) LockRelease(&tag, ExclusiveLock, false);
}

/*
 * Take the transaction-scoped lock of a category's appenders in mode: the
 * category's own lock when it has grants, else the one lock of every
 * category without grants (category NULL asks for that one).  Lock tags of
 * the extension's own: no SQL advisory-lock call reaches them.
 *
 * The first time the lock is taken in the transaction, the invalidations
 * that arrived meanwhile are processed (as for a relation's lock), so that
 * a change of the inline projections committed by whoever held the lock
 * before is seen.
 */
void
EsLockCategory(const char *category, int len, LOCKMODE mode)
{
	LOCKTAG		tag;

	if (category != NULL && EsCategoryHasGrants(category, len))
	{
		uint64		h = hash_bytes_extended((const unsigned char *) category, len, 0);

		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
							 ES_CATEGORY_LOCK_FIELD4);
	}
	else
		SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, 0, 0, ES_OPEN_LOCK_FIELD4);
	EsLockAcceptingInvalidations(&tag, mode);
}

/* Serialise start_saga calls with the same saga id until commit */
void
EsLockSagaStart(const pg_uuid_t *saga_id)
{
	LOCKTAG		tag;
	uint64		h = hash_bytes_extended(saga_id->data, UUID_LEN, 0);

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h,
						 ES_SAGA_LOCK_FIELD4);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}
