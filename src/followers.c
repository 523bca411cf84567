/*
 * followers.c
 *	  The chain of append()'s followers (see followers.h).
 */
#include "postgres.h"

#include "followers.h"

/* the last follower installed; it calls the ones before it */
EsAppendFollower es_append_follower = NULL;

/* Hand a stored batch to every follower */
void
EsPublishAppended(const EsAppendedBatch *batch)
{
	if (es_append_follower)
		es_append_follower(batch);
}
