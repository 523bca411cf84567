/*
 * followers.h
 *	  What append() publishes, and how its consumers follow it.
 *
 * After append() has stored a batch (positions allocated, rows inserted),
 * it publishes the batch to the followers that registered themselves, in
 * the appending transaction: inline projections, the snapshot policy of
 * aggregates, sagas waiting for events.  A follower's error aborts the
 * append.  Followers chain like PostgreSQL's hooks: each one installs
 * itself at module load, keeping the follower it replaced, and calls that
 * one first, so they run in the order they were installed (see _PG_init).
 */
#ifndef ES_FOLLOWERS_H
#define ES_FOLLOWERS_H

#include "fmgr.h"

/* A batch append() just stored (read-only for followers) */
typedef struct EsAppendedBatch
{
	text	   *stream_id;
	int64		first_version;	/* the stream's version of rows[0] */
	int			n;				/* events */
	Datum	   *rows;			/* n * Natts_es_event values, stored order */
	bool	   *nulls;
} EsAppendedBatch;

typedef void (*EsAppendFollower) (const EsAppendedBatch *batch);

extern PGDLLIMPORT EsAppendFollower es_append_follower;

extern void EsPublishAppended(const EsAppendedBatch *batch);

#endif							/* ES_FOLLOWERS_H */
