/*
 * append.h
 *	  Appending a validated batch of events to a stream.
 */
#ifndef ES_APPEND_H
#define ES_APPEND_H

#include "utils/jsonb.h"
#include "utils/uuid.h"

typedef struct EsNewEvent		/* one event of a batch, validated */
{
	text	   *type;
	Jsonb	   *data;
	Jsonb	   *metadata;
	pg_uuid_t	id;
	bool		has_id;
	int32		schema_version;
} EsNewEvent;

extern bool EsParseUuid(const char *s, int len, pg_uuid_t *out);
extern bool EsCorrelationText(Jsonb *metadata, const char **s, int *len);
extern int64 EsAppendEvents(text *stream_id, EsNewEvent *evs, int n,
							bool has_expected, int64 expected, bool internal);
extern int64 EsImportEvent(text *stream_id, EsNewEvent *ev, int64 version,
						   bool check_ids, bool known_clear);
extern int64 EsImportRun(text *stream_id, EsNewEvent *evs, int n, int64 first_version,
						 bool check_ids);
extern int64 EsAppendEvent(text *stream_id, text *type, Jsonb *data);
extern int64 EsAppendEventWithMetadata(text *stream_id, text *type, Jsonb *data,
									   Jsonb *metadata, pg_uuid_t *event_id);

#endif							/* ES_APPEND_H */
