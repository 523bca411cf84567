/*
 * append.c
 *	  event_store.append(): validation, optimistic concurrency, idempotent
 *	  retries and the insert of a batch of events.
 *
 * Locking contract: an appender takes a transaction-scoped exclusive lock on
 * its stream (an advisory lock tag of our own, so it never meets a user's
 * advisory lock), then reads the stream's version with a snapshot taken
 * after the lock was granted.  Whoever held the lock before has ended, so
 * that version is the real one; racing appenders with the same expected
 * version therefore see each other's result and get SE001, never a unique
 * violation or a deadlock.  Before that it takes its category's lock in
 * ROW EXCLUSIVE mode (EsLockCategory: appenders never wait for each other
 * on it), which a change to an inline projection takes in SHARE ROW
 * EXCLUSIVE mode for just the categories that projection may see (see
 * projection.c).  Appends to different streams share no exclusive lock
 * except the few-instruction critical section of EsAllocatePositions().
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/execnodes.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "activity.h"
#include "api.h"
#include "append.h"
#include "catalog.h"
#include "errors.h"
#include "followers.h"
#include "grants.h"
#include "locks.h"
#include "pg_mirror.h"
#include "position.h"
#include "roles.h"
#include "services.h"
#include "shared.h"
#include "stream_state.h"
#include "tiers.h"

PG_FUNCTION_INFO_V1(es_append);
PG_FUNCTION_INFO_V1(es_last_appended_position);

/* the highest position this session's last append() stored, or 0 (none yet) */
static int64 last_appended_position = 0;

/* Where the parser is, for error messages */
typedef struct EsParseCtx
{
	bool		batch;			/* events was an array */
	int			index;			/* 0-based index in the array */
} EsParseCtx;

/* Longest stream id: it must fit the btree indexes with room to spare */

static Jsonb *empty_object = NULL;

/* "invalid event at index N: ..." (or "invalid event: ..." for one object) */
static void
es_bad_event(const EsParseCtx *ctx, int sqlerrcode, const char *problem,
			 const char *hint)
{
	if (ctx->batch)
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("invalid event at index %d: %s", ctx->index, problem),
				 hint ? errhint("%s", hint) : 0));
	else
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("invalid event: %s", problem),
				 hint ? errhint("%s", hint) : 0));
}

/* Name of a JSON value's type, for messages */
static const char *
es_json_type_name(const JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "a string";
		case jbvNumeric:
			return "a number";
		case jbvBool:
			return "a boolean";
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "an array" : "an object";
		case jbvArray:
			return "an array";
		case jbvObject:
			return "an object";
		default:
			return "a scalar";
	}
}

/* Parse a uuid in the forms uuid_in accepts (hyphens between digit groups, braces) */
bool
EsParseUuid(const char *s, int len, pg_uuid_t *out)
{
	int			i = 0;
	int			nibbles = 0;
	bool		braces = false;

	if (len > 0 && s[0] == '{')
	{
		braces = true;
		i = 1;
	}
	while (i < len && nibbles < UUID_LEN * 2)
	{
		char		c = s[i];
		int			v;

		if (c >= '0' && c <= '9')
			v = c - '0';
		else if (c >= 'a' && c <= 'f')
			v = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v = c - 'A' + 10;
		else if (c == '-' && nibbles > 0 && nibbles % 4 == 0 && i + 1 < len && s[i + 1] != '-')
		{
			i++;
			continue;
		}
		else
			return false;
		if (nibbles % 2 == 0)
			out->data[nibbles / 2] = (unsigned char) (v << 4);
		else
			out->data[nibbles / 2] |= (unsigned char) v;
		nibbles++;
		i++;
	}
	if (nibbles != UUID_LEN * 2)
		return false;
	if (braces)
	{
		if (i >= len || s[i] != '}')
			return false;
		i++;
	}
	return i == len;
}

/* A positive int32 from a JSON number, or false */
static bool
es_parse_positive_int(const JsonbValue *v, int32 *out)
{
	char	   *s;
	char	   *end;
	long		l;

	if (v->type != jbvNumeric)
		return false;
	s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	errno = 0;
	l = strtol(s, &end, 10);
	if (errno != 0 || *end != '\0' || l < 1 || l > PG_INT32_MAX)
		return false;
	*out = (int32) l;
	return true;
}

/* Jsonb of a value found inside a container (object, array or scalar) */
static Jsonb *
es_value_to_jsonb(JsonbValue *v)
{
	return JsonbValueToJsonb(v);
}

/* Make empty_object, {} (kept for the backend's life) */
static void
es_make_empty_object(void)
{
	MemoryContext old;
	JsonbValue	o;

	if (empty_object != NULL)
		return;
	old = MemoryContextSwitchTo(TopMemoryContext);
	o.type = jbvObject;
	o.val.object.nPairs = 0;
	o.val.object.pairs = NULL;
	empty_object = JsonbValueToJsonb(&o);
	MemoryContextSwitchTo(old);
}

/* Validate one event object */
/*
 * metadata.correlationId is the key of the runs read_correlated reads
 * (event_store.correlations): a scalar whose text is at most
 * ES_MAX_NAME_BYTES long
 */
static void
es_check_correlation_id(const EsParseCtx *ctx, JsonbContainer *metadata)
{
	JsonbValue	k;
	JsonbValue *v;

	k.type = jbvString;
	k.val.string.val = "correlationId";
	k.val.string.len = strlen("correlationId");
	v = findJsonbValueFromContainer(metadata, JB_FOBJECT, &k);
	if (v == NULL)
		return;
	if (v->type == jbvBinary)
		es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
					 psprintf("metadata \"correlationId\" must be a string, not %s",
							  es_json_type_name(v)),
					 "Use the id of the process the event belongs to, such as a saga id.");
	if (v->type == jbvString && v->val.string.len > ES_MAX_NAME_BYTES)
		es_bad_event(ctx, ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
					 psprintf("metadata \"correlationId\" is too long (%d bytes; the maximum is %d)",
							  v->val.string.len, ES_MAX_NAME_BYTES), NULL);
}

static void
es_parse_event(const EsParseCtx *ctx, JsonbContainer *obj, EsNewEvent *ev)
{
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k;
	JsonbValue	v;
	bool		seen_type = false;

	memset(ev, 0, sizeof(*ev));
	ev->schema_version = 1;

	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		char	   *key;
		int			klen;

		if (tok != WJB_KEY)
			continue;
		key = k.val.string.val;
		klen = k.val.string.len;
		tok = JsonbIteratorNext(&it, &v, true);
		Assert(tok == WJB_VALUE);

#define KEY_IS(name) (klen == (int) strlen(name) && memcmp(key, name, klen) == 0)
		if (KEY_IS("type"))
		{
			if (v.type != jbvString)
				es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
							 psprintf("\"type\" must be a string, not %s", es_json_type_name(&v)),
							 NULL);
			if (v.val.string.len == 0)
				es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
							 "\"type\" must not be empty", NULL);
			ev->type = cstring_to_text_with_len(v.val.string.val, v.val.string.len);
			seen_type = true;
		}
		else if (KEY_IS("data"))
			ev->data = es_value_to_jsonb(&v);
		else if (KEY_IS("metadata"))
		{
			if (v.type == jbvNull)
				ev->metadata = NULL;
			else if (v.type == jbvBinary && JsonContainerIsObject(v.val.binary.data))
			{
				es_check_correlation_id(ctx, v.val.binary.data);
				ev->metadata = es_value_to_jsonb(&v);
			}
			else
				es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
							 psprintf("\"metadata\" must be an object or null, not %s",
									  es_json_type_name(&v)), NULL);
		}
		else if (KEY_IS("id"))
		{
			if (v.type != jbvString)
				es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
							 psprintf("\"id\" must be a uuid string, not %s", es_json_type_name(&v)),
							 "Omit \"id\" to have one generated.");
			if (!EsParseUuid(v.val.string.val, v.val.string.len, &ev->id))
				es_bad_event(ctx, ERRCODE_INVALID_TEXT_REPRESENTATION,
							 psprintf("\"id\" is not a valid uuid: \"%s\"",
									  pnstrdup(v.val.string.val, v.val.string.len)),
							 "Omit \"id\" to have one generated.");
			ev->has_id = true;
		}
		else if (KEY_IS("schema_version"))
		{
			if (!es_parse_positive_int(&v, &ev->schema_version))
				es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
							 "\"schema_version\" must be a positive integer",
							 "Omit \"schema_version\" for version 1.");
		}
		else
			es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
						 psprintf("unknown key \"%s\"", pnstrdup(key, klen)),
						 "An event has the keys \"type\", \"data\", \"metadata\", \"id\" and \"schema_version\".");
#undef KEY_IS
	}

	if (!seen_type)
		es_bad_event(ctx, ERRCODE_INVALID_PARAMETER_VALUE,
					 "\"type\" is missing",
					 "Every event needs a non-empty string \"type\".");
	if (ev->data == NULL)
		ev->data = empty_object;
	if (ev->metadata == NULL)
		ev->metadata = empty_object;
}

/* Validate the events argument: one object or a non-empty array of objects */
static EsNewEvent *
es_parse_events(Jsonb *events, int *nevents)
{
	EsParseCtx	ctx;
	EsNewEvent *evs;
	int			n;

	es_make_empty_object();

	if (JB_ROOT_IS_OBJECT(events))
	{
		ctx.batch = false;
		ctx.index = 0;
		evs = palloc(sizeof(EsNewEvent));
		es_parse_event(&ctx, &events->root, evs);
		*nevents = 1;
		return evs;
	}
	if (JB_ROOT_IS_SCALAR(events) || !JB_ROOT_IS_ARRAY(events))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must be a JSON object or a non-empty array of objects"),
				 errdetail("Got a JSON scalar.")));

	n = JB_ROOT_COUNT(events);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("events must not be an empty array"),
				 errhint("Pass at least one event object.")));

	ctx.batch = true;
	evs = palloc(sizeof(EsNewEvent) * n);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *elem = getIthJsonbValueFromContainer(&events->root, i);

		ctx.index = i;
		if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
			es_bad_event(&ctx, ERRCODE_INVALID_PARAMETER_VALUE,
						 psprintf("an event must be a JSON object, not %s",
								  es_json_type_name(elem)), NULL);
		es_parse_event(&ctx, elem->val.binary.data, &evs[i]);
	}
	*nevents = n;
	return evs;
}

/* Where an event id is stored, if anywhere (per the given snapshot) */
static bool
es_find_event_id(Relation heap, Relation index, TupleTableSlot *slot,
				 Snapshot snapshot, pg_uuid_t *id, text **stream_id,
				 int64 *version)
{
	IndexScanDesc scan;
	ScanKeyData key;
	bool		found = false;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_UUID_EQ, UUIDPGetDatum(id));
	scan = index_beginscan(heap, index, snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;

		*stream_id = DatumGetTextPCopy(slot_getattr(slot, Anum_es_stream_id, &isnull));
		*version = DatumGetInt64(slot_getattr(slot, Anum_es_stream_version, &isnull));
		found = true;
	}
	index_endscan(scan);
	return found;
}

/*
 * The event id indexes of the first ntiers tiers (tiers.c), open for
 * probes: an archived range's ids are in its own index, which the hot
 * table's does not cover
 */
typedef struct EsIdProbe
{
	int			ntiers;
	Relation   *heap;
	Relation   *index;
	TupleTableSlot **slot;
} EsIdProbe;

static void
es_id_probe_open(EsIdProbe *probe, const EsTiers *tiers, int ntiers)
{
	probe->ntiers = ntiers;
	probe->heap = palloc(sizeof(Relation) * Max(ntiers, 1));
	probe->index = palloc(sizeof(Relation) * Max(ntiers, 1));
	probe->slot = palloc(sizeof(TupleTableSlot *) * Max(ntiers, 1));
	for (int t = 0; t < ntiers; t++)
	{
		probe->heap[t] = table_open(tiers->tier[t].relid, AccessShareLock);
		probe->index[t] = index_open(tiers->tier[t].event_id_idx, AccessShareLock);
		probe->slot[t] = table_slot_create(probe->heap[t], NULL);
	}
}

/* Where an event id is stored in the probe's tiers, if anywhere */
static bool
es_id_probe_find(EsIdProbe *probe, Snapshot snapshot, pg_uuid_t *id,
				 text **stream_id, int64 *version)
{
	/* an id is in at most one tier: the newest first */
	for (int t = probe->ntiers - 1; t >= 0; t--)
	{
		if (es_find_event_id(probe->heap[t], probe->index[t], probe->slot[t], snapshot, id,
							 stream_id, version))
			return true;
	}
	return false;
}

static void
es_id_probe_close(EsIdProbe *probe)
{
	for (int t = 0; t < probe->ntiers; t++)
	{
		ExecDropSingleTupleTableSlot(probe->slot[t]);
		index_close(probe->index[t], AccessShareLock);
		table_close(probe->heap[t], AccessShareLock);
	}
}

/* uuid as text, for messages */
static char *
es_uuid_str(pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

/* qsort comparator for duplicate detection inside a batch */
static int
es_cmp_uuid_ptr(const void *a, const void *b)
{
	return memcmp((*(EsNewEvent *const *) a)->id.data,
				  (*(EsNewEvent *const *) b)->id.data, UUID_LEN);
}

/* Two events of one batch may not carry the same id */
static void
es_check_batch_ids(EsNewEvent *evs, int n)
{
	EsNewEvent **sorted = palloc(sizeof(EsNewEvent *) * n);
	int			m = 0;

	for (int i = 0; i < n; i++)
		if (evs[i].has_id)
			sorted[m++] = &evs[i];
	if (m > 1)
	{
		qsort(sorted, m, sizeof(EsNewEvent *), es_cmp_uuid_ptr);
		for (int i = 1; i < m; i++)
			if (memcmp(sorted[i - 1]->id.data, sorted[i]->id.data, UUID_LEN) == 0)
				ereport(ERROR,
						(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
						 errmsg("duplicate event id \"%s\"", es_uuid_str(&sorted[i]->id)),
						 errdetail("The batch contains the id at index %d and at index %d.",
								   (int) (sorted[i - 1] - evs), (int) (sorted[i] - evs))));
	}
	pfree(sorted);
}

/*
 * Check the caller's event ids against the store (with the post-lock
 * snapshot).  Returns true, with *version set, when the batch is exactly a
 * run of the stream's events already (an idempotent retry); raises SE002
 * when an id is stored anywhere else; returns false when no id is stored.
 */
static bool
es_check_stored_ids(const EsCatalog *cat, text *stream_id, EsNewEvent *evs,
					int n, bool has_expected, int64 expected,
					Snapshot snapshot, int64 *version)
{
	text	  **where_stream = palloc0(sizeof(text *) * n);
	int64	   *where_version = palloc0(sizeof(int64) * n);
	int			first_found = -1;
	bool		retry = true;
	const EsTiers *tiers = EsEventTiers(cat);
	EsIdProbe	probe;

	es_id_probe_open(&probe, tiers, tiers->n);
	for (int i = 0; i < n; i++)
	{
		if (!evs[i].has_id ||
			!es_id_probe_find(&probe, snapshot, &evs[i].id, &where_stream[i], &where_version[i]))
		{
			retry = false;
			continue;
		}
		if (first_found < 0)
			first_found = i;
		if (!EsTextIs(where_stream[i], VARDATA_ANY(stream_id), VARSIZE_ANY_EXHDR(stream_id)) ||
			where_version[i] != where_version[0] + i)
			retry = false;
	}
	es_id_probe_close(&probe);

	if (first_found < 0)
		return false;
	if (retry && (!has_expected || where_version[0] == expected + 1))
	{
		*version = where_version[0] + n - 1;
		return true;
	}
	/*
	 * An id stored somewhere that is not an exact replay of this batch.
	 * Where, only to a caller who may read it: no oracle across grants.
	 */
	if (EsRoleMayAccessStream(GetUserId(), where_stream[first_found], ES_PRIV_READ))
		ereport(ERROR,
				(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
				 errmsg("duplicate event id \"%s\"", es_uuid_str(&evs[first_found].id)),
				 errdetail("Event %d of the batch has the id of the event at version " INT64_FORMAT " of stream \"%s\".",
						   first_found, where_version[first_found],
						   text_to_cstring(where_stream[first_found])),
				 errhint("Event ids are unique across the store; a retry is recognised only when it repeats the same events at the same place.")));
	ereport(ERROR,
			(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
			 errmsg("duplicate event id \"%s\"", es_uuid_str(&evs[first_found].id)),
			 errdetail("Event %d of the batch has the id of an event in a category that role \"%s\" may not read.",
					   first_found, EsRoleName(GetUserId())),
			 errhint("Event ids are unique across the store: give the event a new id.")));
	return false;				/* keep compiler quiet */
}

/*
 * The last generated id's 60 time bits (unix milliseconds << 12 | a 12-bit
 * fraction of the millisecond), so that the ids one backend generates
 * increase even within one microsecond or when the clock steps back.
 */
static uint64 es_uuidv7_last = 0;

/*
 * A time-ordered event id: a UUID of version 7 (RFC 9562).  The first 48 bits
 * are the unix time in milliseconds, the 12 bits of rand_a its sub-millisecond
 * fraction (RFC 9562 section 6.2, method 3), raised by one whenever the clock
 * would not move the id forward (so the ids of one backend are strictly
 * increasing, and a long burst runs ahead of the clock by at most what it
 * needs); the 62 bits of rand_b are random.  New ids therefore land at the
 * right edge of the event id index instead of all over it.  `now` is the
 * timestamp the events are recorded with; rnd, 8 random bytes.
 */
static void
es_uuidv7(pg_uuid_t *id, TimestampTz now, const uint8 *rnd)
{
	int64		unix_us = now + (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * USECS_PER_DAY;
	uint64		t;

	if (unix_us < 0)
		unix_us = 0;
	t = ((uint64) (unix_us / 1000) << 12) | (uint64) ((unix_us % 1000) * 4096 / 1000);
	if (t <= es_uuidv7_last)
		t = es_uuidv7_last + 1;
	es_uuidv7_last = t;

	/* unix_ts_ms: 48 bits, big-endian */
	id->data[0] = (uint8) (t >> 52);
	id->data[1] = (uint8) (t >> 44);
	id->data[2] = (uint8) (t >> 36);
	id->data[3] = (uint8) (t >> 28);
	id->data[4] = (uint8) (t >> 20);
	id->data[5] = (uint8) (t >> 12);
	/* version 7, then rand_a (the fraction) */
	id->data[6] = (uint8) (0x70 | ((t >> 8) & 0x0F));
	id->data[7] = (uint8) (t & 0xFF);
	/* variant 10, then rand_b */
	id->data[8] = (uint8) (0x80 | (rnd[0] & 0x3F));
	memcpy(&id->data[9], &rnd[1], 7);
}

/*
 * The text metadata ->> 'correlationId' gives for an event (what
 * jsonb_object_field_text returns), in *s and *len: a string as it is
 * (pointing into metadata), a number or a boolean as its JSON text, an
 * array or an object (which append() refuses, but an import may carry) as
 * its JSON text.  False when it gives NULL: not an object, no such key, or
 * JSON null.
 */
bool
EsCorrelationText(Jsonb *metadata, const char **s, int *len)
{
	JsonbValue	vbuf;
	JsonbValue *v;

	if (metadata == NULL || !JB_ROOT_IS_OBJECT(metadata))
		return false;
	v = getKeyJsonValueFromContainer(&metadata->root, "correlationId",
									 strlen("correlationId"), &vbuf);
	if (v == NULL)
		return false;
	switch (v->type)
	{
		case jbvNull:
			return false;
		case jbvString:
			*s = v->val.string.val;
			*len = v->val.string.len;
			return true;
		case jbvBool:
			*s = v->val.boolean ? "true" : "false";
			*len = strlen(*s);
			return true;
		case jbvNumeric:
			*s = DatumGetCString(DirectFunctionCall1(numeric_out,
													 NumericGetDatum(v->val.numeric)));
			*len = strlen(*s);
			return true;
		case jbvBinary:
			{
				StringInfo	buf = makeStringInfo();

				(void) JsonbToCString(buf, v->val.binary.data, -1);
				*s = buf->data;
				*len = buf->len;
				return true;
			}
		default:
			elog(ERROR, "unrecognized jsonb type: %d", (int) v->type);
	}
	return false;				/* keep compiler quiet */
}

/*
 * Insert the correlation runs of a batch stored from first_position on, in
 * event_store.correlations (read_correlated): a row per maximal sequence of
 * consecutive events whose correlation ids have the same text, with the
 * first and last position of the sequence.  The events of a batch usually
 * share their id: a row or a few, where an index on the events would take
 * an entry per event.  Inserted as the events are (EsInsertRows); caller
 * holds its lock on the events table.
 */
static void
es_insert_runs(const EsCatalog *cat, EsNewEvent *evs, int n, int64 first_position)
{
	Datum	   *rows = NULL;
	bool	   *nulls;
	int			nruns = 0;
	int			start = -1;		/* first event of the open run, or -1 */
	const char *run_id = NULL;
	int			run_len = 0;
	Relation	rel;
	volatile int inserting = 0;

	/*
	 * A schema from before 0.3.0 (until ALTER EXTENSION UPDATE) has no
	 * runs; an update that committed while this append waited for its lock
	 * on the events table has just created them.
	 */
	if (!OidIsValid(cat->correlations_relid))
	{
		cat = EsCatalogRecheckCorrelations(cat);
		if (!OidIsValid(cat->correlations_relid))
			return;
	}

	/* one past the end: the last run is closed there */
	for (int i = 0; i <= n; i++)
	{
		const char *id = NULL;
		int			len = 0;
		bool		has_id = i < n && EsCorrelationText(evs[i].metadata, &id, &len);

		if (start >= 0 && has_id && len == run_len && memcmp(id, run_id, len) == 0)
			continue;			/* the run goes on */
		if (start >= 0)
		{
			Datum	   *v;

			if (rows == NULL)
				rows = palloc(sizeof(Datum) * Natts_es_run * n);
			v = &rows[nruns++ * Natts_es_run];
			v[Anum_es_run_correlation_id - 1] =
				PointerGetDatum(cstring_to_text_with_len(run_id, run_len));
			v[Anum_es_run_first_position - 1] = Int64GetDatum(first_position + start);
			v[Anum_es_run_last_position - 1] = Int64GetDatum(first_position + i - 1);
			start = -1;
		}
		if (has_id)
		{
			start = i;
			run_id = id;
			run_len = len;
		}
	}
	if (nruns == 0)
		return;

	nulls = palloc0(sizeof(bool) * Natts_es_run * nruns);
	rel = table_open(cat->correlations_relid, RowExclusiveLock);
	EsInsertRows(rel, nruns, Natts_es_run, rows, nulls, &inserting);
	table_close(rel, NoLock);
}

/*
 * Insert the batch straight into the heap and its indexes (EsInsertRows):
 * no executor per call, no triggers (the table's triggers are for writes
 * that do not come through here).  Fills rows[n * Natts_es_event] with the
 * stored values for the inline projections.  Unique violations become our
 * own SQLSTATEs.
 */
static void
es_insert_events(const EsCatalog *cat, text *stream_id, EsNewEvent *evs, int n,
				 int64 first_position, int64 first_version, Datum *rows,
				 bool *nulls, bool imported)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	Relation	rel;
	volatile int inserting = 0;	/* the event being inserted, for errors */
	TimestampTz now = GetCurrentTimestamp();
	uint8	   *rnd = NULL;
	int			nrnd = 0;

	/*
	 * the random bits of every id to generate, in one call: a call of the
	 * strong random source costs about as much as the bytes of a batch
	 */
	for (int i = 0; i < n; i++)
		nrnd += evs[i].has_id ? 0 : 8;
	if (nrnd > 0)
	{
		rnd = palloc(nrnd);
		if (!pg_strong_random(rnd, nrnd))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random values")));
		nrnd = 0;
	}

	for (int i = 0; i < n; i++)
	{
		Datum	   *v = &rows[i * Natts_es_event];

		if (!evs[i].has_id)
		{
			es_uuidv7(&evs[i].id, now, &rnd[nrnd]);
			nrnd += 8;
		}
		v[Anum_es_global_position - 1] = Int64GetDatum(first_position + i);
		v[Anum_es_stream_id - 1] = PointerGetDatum(stream_id);
		v[Anum_es_stream_version - 1] = Int64GetDatum(first_version + i);
		v[Anum_es_event_id - 1] = UUIDPGetDatum(&evs[i].id);
		v[Anum_es_event_type - 1] = PointerGetDatum(evs[i].type);
		v[Anum_es_data - 1] = JsonbPGetDatum(evs[i].data);
		v[Anum_es_metadata - 1] = JsonbPGetDatum(evs[i].metadata);
		v[Anum_es_schema_version - 1] = Int32GetDatum(evs[i].schema_version);
		v[Anum_es_recorded_at - 1] = TimestampTzGetDatum(now);
	}
	memset(nulls, 0, sizeof(bool) * n * Natts_es_event);

	rel = table_open(cat->events_relid, RowExclusiveLock);
	PG_TRY();
	{
		EsInsertRows(rel, n, Natts_es_event, rows, nulls, &inserting);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_UNIQUE_VIOLATION && edata->constraint_name &&
			strcmp(edata->constraint_name, ES_EVENTS_EVENT_ID_IDX) == 0)
		{
			/*
			 * a concurrent transaction stored the id of the event being
			 * inserted in another stream; or, for an import that does not
			 * look ids up first (es_import_store), any event did
			 */
			FlushErrorState();
			if (imported)
				ereport(ERROR,
						(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
						 errmsg("duplicate event id \"%s\"", es_uuid_str(&evs[inserting].id)),
						 errdetail("Another event in this database has this id."),
						 errhint("The import's next attempt names the event that has it.")));
			ereport(ERROR,
					(errcode(ERRCODE_ES_DUPLICATE_EVENT_ID),
					 errmsg("duplicate event id \"%s\"", es_uuid_str(&evs[inserting].id)),
					 errdetail("A concurrent transaction stored an event with this id while stream \"%s\" was being appended to.",
							   text_to_cstring(stream_id)),
					 errhint("Event ids are unique across the store; a retry is recognised only when it repeats the same events at the same place.")));
		}
		if (edata->sqlerrcode == ERRCODE_UNIQUE_VIOLATION && edata->constraint_name &&
			strcmp(edata->constraint_name, ES_EVENTS_STREAM_IDX) == 0)
		{
			/* only reachable if someone wrote to the table around append() */
			FlushErrorState();
			ereport(ERROR,
					(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
					 errmsg("wrong expected version for stream \"%s\": the stream changed concurrently",
							text_to_cstring(stream_id))));
		}
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();

	table_close(rel, NoLock);
	es_insert_runs(cat, evs, n, first_position);
	/* later commands of this transaction see the new events */
	CommandCounterIncrement();
}

/* The global position of a stream's event at version, or 0 */
static int64
es_position_of(const EsCatalog *cat, text *stream_id, int64 version, Snapshot snapshot)
{
	ScanKeyData keys[2];
	Datum		pos;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream_id));
	ScanKeyInit(&keys[1], 2, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(version));
	if (!EsFirstEventValue(cat, cat->stream_idx, snapshot, keys, 2, ForwardScanDirection,
						   Anum_es_global_position, &pos))
		return 0;
	return DatumGetInt64(pos);
}

/*
 * Append a validated batch to a stream; returns the stream's version after
 * it.  has_expected/expected carry the optimistic-concurrency check.  The
 * stream lifecycle functions append their markers with internal = true,
 * which a deleted stream accepts.
 */
static int64 es_append_core(text *stream_id, EsNewEvent *evs, int n,
							bool has_expected, int64 expected, bool internal);

int64
EsAppendEvents(text *stream_id, EsNewEvent *evs, int n, bool has_expected,
			   int64 expected, bool internal)
{
	return es_append_core(stream_id, evs, n, has_expected, expected, internal);
}

/*
 * The first event of the stream at or above version, as the snapshot sees
 * it: one forward probe of the (stream_id, stream_version) index of each
 * tier in position order (a stream's versions grow with positions), which
 * finds no entry (and reads no heap page) in the usual case, where the
 * stream ends below version
 */
static bool
es_event_from_version(const EsCatalog *cat, Snapshot snapshot, text *stream_id,
					  int64 version, int64 *found_version, pg_uuid_t *found_id)
{
	ScanKeyData keys[2];
	AttrNumber	attnos[2] = {Anum_es_stream_version, Anum_es_event_id};
	Datum		values[2];

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(stream_id));
	ScanKeyInit(&keys[1], 2, BTGreaterEqualStrategyNumber, F_INT8GE, Int64GetDatum(version));
	if (!EsFirstEventValues(cat, cat->stream_idx, snapshot, keys, 2, ForwardScanDirection,
							2, attnos, values))
		return false;
	*found_version = DatumGetInt64(values[0]);
	memcpy(found_id->data, DatumGetUUIDP(values[1])->data, UUID_LEN);
	return true;
}

/*
 * Is an id of the batch stored in one of the first ntiers tiers?  The index
 * in the batch of the first such event, or -1.
 */
static int
es_find_stored_id(const EsTiers *tiers, int ntiers, Snapshot snapshot,
				  EsNewEvent *evs, int n)
{
	EsIdProbe	probe;
	int			stored_id = -1;

	es_id_probe_open(&probe, tiers, ntiers);
	for (int i = 0; i < n && stored_id < 0; i++)
	{
		text	   *where_stream;
		int64		where_version;

		Assert(evs[i].has_id);
		if (es_id_probe_find(&probe, snapshot, &evs[i].id, &where_stream, &where_version))
			stored_id = i;
	}
	es_id_probe_close(&probe);
	return stored_id;
}

/*
 * Store n events of an import (services.c) at the consecutive versions
 * from first_version, whatever the stream's state here (it follows the
 * producer's lifecycle markers).  When something is in the way (an event at
 * or above first_version in the stream, or an id of the batch stored
 * anywhere), a run (n > 1) writes nothing and returns 0; a single event is
 * skipped (0) when that very event is stored at that very place (re-sent),
 * otherwise the conflict is raised: SE001 for another event at or above its
 * version here, SE002 for its id elsewhere.  Returns the first local
 * position written.
 *
 * Every probe visits the tiers (tiers.c): the consumer may have archived
 * imported events, and a re-sent event of a stream whose events are
 * archived must be recognised as such.  The ids are looked up in every tier
 * first only with check_ids: otherwise the hot table's unique index finds an
 * id stored there, and the error (SE002) cannot say where; the caller looks
 * them up on its next attempt, to name the event.  An archived range's ids
 * are in its own index, which the hot table's does not cover: while there
 * are ranges, theirs are always looked up.  With known_clear the caller
 * knows that the stream has nothing at or above first_version (it stored the
 * version before itself, and the import is the stream's one writer): the
 * stream index is not probed (an event at that very version would still
 * fail its unique index).
 */
static int64
es_import_store(text *stream_id, EsNewEvent *evs, int n, int64 first_version,
				bool check_ids, bool known_clear)
{
	const EsCatalog *cat = EsGetCatalog();
	Snapshot	snapshot;
	const EsTiers *tiers;
	int64		found_version = 0;
	pg_uuid_t	found_id;
	bool		in_way;
	int			stored_id = -1;
	int64		first_position = 0;

	Assert(n > 0 && first_version > 0);
	es_check_batch_ids(evs, n);
	EsLockCategory(VARDATA_ANY(stream_id), EsCategoryLen(stream_id), RowExclusiveLock);
	EsLockStream(stream_id);

	/*
	 * The hot table's unique index finds an id stored there; an archived
	 * range (tiers.c) has its own, so the ranges are probed whenever there
	 * are any.
	 */
	tiers = EsEventTiers(cat);
	if (known_clear && !check_ids && tiers->n == 1)
	{
		/* nothing to look at before inserting */
		snapshot = NULL;
		in_way = false;
	}
	else
	{
		/* everybody who held the stream before us has ended: the latest state */
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		/* the ranges again, now after the snapshot (see archive.c) */
		tiers = EsEventTiers(cat);
		in_way = !known_clear &&
			es_event_from_version(cat, snapshot, stream_id, first_version,
								  &found_version, &found_id);
		/* every tier with check_ids (to name where), else the ranges */
		if (!in_way && (check_ids || tiers->n > 1))
			stored_id = es_find_stored_id(tiers, check_ids ? tiers->n : tiers->n - 1,
										  snapshot, evs, n);
	}

	if (n > 1 && (in_way || stored_id >= 0))
	{
		UnregisterSnapshot(snapshot);
		EsUnlockStream(stream_id);
		return 0;
	}
	if (in_way)
	{
		int64		current;

		if (found_version == first_version &&
			memcmp(found_id.data, evs[0].id.data, UUID_LEN) == 0)
		{
			/* re-sent: that very event is there already */
			UnregisterSnapshot(snapshot);
			EsUnlockStream(stream_id);
			return 0;
		}
		/* gaps are the producer's removed events; never go back */
		current = EsLatestStreamVersion(cat, stream_id, snapshot);
		ereport(ERROR,
				(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
				 errmsg("cannot import event \"%s\" at version " INT64_FORMAT " of stream \"%s\": the stream is at version " INT64_FORMAT " here",
						es_uuid_str(&evs[0].id), first_version,
						text_to_cstring(stream_id), current),
				 errdetail("Another event already has that version in this database."),
				 errhint("Imported categories must be written only by their import.")));
	}
	if (stored_id >= 0)
	{
		int64		replayed;

		/* stored elsewhere (not here: nothing is at or above its version): SE002 */
		(void) es_check_stored_ids(cat, stream_id, evs, n, true, first_version - 1,
								   snapshot, &replayed);
		elog(ERROR, "event id \"%s\" is stored, but not found again",
			 es_uuid_str(&evs[stored_id].id));
	}
	if (snapshot != NULL)
		UnregisterSnapshot(snapshot);

	first_position = EsAllocatePositions(n);
	{
		Datum	   *rows = palloc(sizeof(Datum) * n * Natts_es_event);
		bool	   *nulls = palloc(sizeof(bool) * n * Natts_es_event);
		EsAppendedBatch batch;

		es_insert_events(cat, stream_id, evs, n, first_position, first_version, rows, nulls, true);
		batch.stream_id = stream_id;
		batch.first_version = first_version;
		batch.n = n;
		batch.rows = rows;
		batch.nulls = nulls;
		EsPublishAppended(&batch);
	}
	EsCountAppend(n);
	/* the import is the stream's one writer: no need to hold it to the end */
	EsUnlockStream(stream_id);
	return first_position;
}

/*
 * Store one event of an import at exactly the producer's version: its local
 * position, or 0 when it was re-sent (see es_import_store)
 */
int64
EsImportEvent(text *stream_id, EsNewEvent *ev, int64 version, bool check_ids,
			  bool known_clear)
{
	return es_import_store(stream_id, ev, 1, version, check_ids, known_clear);
}

/*
 * Store a run of an import's events (the history) at the consecutive
 * versions from first_version in one batch: the first local position, or 0,
 * having written nothing, when something is in the way; the caller then
 * stores them one by one (EsImportEvent), which skips re-sent events and
 * names a conflict exactly.
 */
int64
EsImportRun(text *stream_id, EsNewEvent *evs, int n, int64 first_version,
			bool check_ids)
{
	Assert(n > 0);
	if (n == 1)
	{
		/* one event: nothing to batch, and the single path decides */
		return 0;
	}
	return es_import_store(stream_id, evs, n, first_version, check_ids, false);
}

/* The core of append */
static int64
es_append_core(text *stream_id, EsNewEvent *evs, int n, bool has_expected,
			   int64 expected, bool internal)
{
	const EsCatalog *cat = EsGetCatalog();
	Snapshot	snapshot;
	int64		current;
	int64		first_position;
	bool		any_id = false;
	Datum	   *rows;
	bool	   *nulls;
	EsAppendedBatch batch;

	for (int i = 0; i < n; i++)
		any_id |= evs[i].has_id;
	if (any_id)
		es_check_batch_ids(evs, n);

	/* imported categories are read-only here: one hash probe */
	if (EsCategoryImported(VARDATA_ANY(stream_id), EsCategoryLen(stream_id)))
		ereport(ERROR,
				(errcode(ERRCODE_ES_CATEGORY_IMPORTED),
				 errmsg("category \"%s\" is imported: it is read-only in this database",
						pnstrdup(VARDATA_ANY(stream_id), EsCategoryLen(stream_id))),
				 errdetail("Its events come from another service through an import (event_store.import_status)."),
				 errhint("Append to the stream in the producer's database.")));

	EsLockCategory(VARDATA_ANY(stream_id), EsCategoryLen(stream_id), RowExclusiveLock);
	EsLockStream(stream_id);

	if (!internal)
		EsCheckStreamNotDeleted(stream_id);

	/* Everybody who held the lock before us has ended: read the latest state */
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	current = EsLatestStreamVersion(cat, stream_id, snapshot);
	if (any_id)
	{
		int64		replayed;

		if (es_check_stored_ids(cat, stream_id, evs, n, has_expected, expected,
								snapshot, &replayed))
		{
			/* a retry: what it appended is where the first call stored it */
			if (!internal)
				last_appended_position = es_position_of(cat, stream_id, replayed, snapshot);
			UnregisterSnapshot(snapshot);
			return replayed;
		}
	}
	UnregisterSnapshot(snapshot);

	if (has_expected && expected != current)
	{
		EsCountConflict();
		ereport(ERROR,
				(errcode(ERRCODE_ES_WRONG_EXPECTED_VERSION),
				 errmsg("wrong expected version for stream \"%s\": expected " INT64_FORMAT ", actual " INT64_FORMAT,
						text_to_cstring(stream_id), expected, current),
				 expected == 0 ? errdetail("Expected version 0 means the stream must not exist yet.") : 0,
				 errhint("Read the stream again and retry with its current version.")));
	}

	first_position = EsAllocatePositions(n);
	if (!internal)
		last_appended_position = first_position + n - 1;
	rows = palloc(sizeof(Datum) * n * Natts_es_event);
	nulls = palloc(sizeof(bool) * n * Natts_es_event);
	es_insert_events(cat, stream_id, evs, n, first_position, current + 1, rows, nulls, false);

	batch.stream_id = stream_id;
	batch.first_version = current + 1;
	batch.n = n;
	batch.rows = rows;
	batch.nulls = nulls;
	EsPublishAppended(&batch);

	EsCountAppend(n);
	return current + n;
}

/*
 * SQL: event_store.append(stream_id text, events jsonb,
 *		expected_version bigint DEFAULT NULL) RETURNS bigint
 */
Datum
es_append(PG_FUNCTION_ARGS)
{
	text	   *stream_id;
	Jsonb	   *events;
	bool		has_expected = !PG_ARGISNULL(2);
	int64		expected = has_expected ? PG_GETARG_INT64(2) : 0;
	EsNewEvent *evs;
	int			n;

	EsCheckWritable("append()");
	EsCheckPreloaded();
	stream_id = EsGetStreamId(fcinfo, 0);
	EsCheckStreamAccess(stream_id, ES_PRIV_APPEND);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("events must not be null"),
				 errhint("Pass one event object or a non-empty array of them.")));
	EsRejectNegative(expected, "expected_version",
					 "Pass NULL to append whatever the stream's version, 0 to require that the stream does not exist yet, or the stream's current version.");
	events = PG_GETARG_JSONB_P(1);

	evs = es_parse_events(events, &n);
	PG_RETURN_INT64(EsAppendEvents(stream_id, evs, n, has_expected, expected, false));
}

/*
 * Append one event the extension makes itself (a saga's transition) to
 * stream_id as append() would, the current user's grants checked; returns
 * the stream's version after it
 */
int64
EsAppendEvent(text *stream_id, text *type, Jsonb *data)
{
	return EsAppendEventWithMetadata(stream_id, type, data, NULL, NULL);
}

/*
 * EsAppendEvent with metadata (NULL: none); *event_id (unless NULL) is set
 * to the id the event was given
 */
int64
EsAppendEventWithMetadata(text *stream_id, text *type, Jsonb *data,
						  Jsonb *metadata, pg_uuid_t *event_id)
{
	EsNewEvent	ev;
	int64		version;

	EsCheckPreloaded();
	EsCheckStreamAccess(stream_id, ES_PRIV_APPEND);
	es_make_empty_object();
	memset(&ev, 0, sizeof(ev));
	ev.type = type;
	ev.data = data;
	ev.metadata = metadata != NULL ? metadata : empty_object;
	ev.schema_version = 1;
	version = EsAppendEvents(stream_id, &ev, 1, false, 0, false);
	/* (es_insert_events filled in the generated id) */
	if (event_id != NULL)
		*event_id = ev.id;
	return version;
}

PG_FUNCTION_INFO_V1(es_refuse_modification);

/*
 * Trigger on event_store.events: events are immutable, so UPDATE, DELETE and
 * TRUNCATE are refused for everybody, the table owner included.
 */
Datum
es_refuse_modification(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *what;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_refuse_modification: not called by trigger manager");

	/* purge_stream() and retention remove events; nothing else does */
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event) && EsRemovalInProgress())
		return PointerGetDatum(NULL);

	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
		what = "UPDATE";
	else if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
		what = "DELETE";
	else if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
		what = "TRUNCATE";
	else
		what = "this operation";

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("events are immutable: %s of table \"%s\" is not allowed",
					what, RelationGetRelationName(trigdata->tg_relation)),
			 errdetail("Stored events are never changed or removed by plain DML."),
			 errhint("Append a new event that corrects the earlier one.")));
	PG_RETURN_NULL();
}

PG_FUNCTION_INFO_V1(es_events_direct_write);

/*
 * Trigger BEFORE INSERT ON event_store.events FOR EACH STATEMENT: rows that
 * do not come from append() (COPY by pg_restore; append() does not fire
 * triggers) make the position counter stale, so it is rebuilt from the table
 * before positions are handed out.
 */
Datum
es_events_direct_write(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_events_direct_write: not called by trigger manager");
	/* append() inserts without the executor, so it never fires this */
	EsCounterStale();
	return PointerGetDatum(NULL);
}

/*
 * SQL: event_store.last_appended_position() RETURNS bigint -- the highest
 * global position this session's last append() stored (NULL before any):
 * what wait_for_projection() waits for, for read-your-writes
 */
Datum
es_last_appended_position(PG_FUNCTION_ARGS)
{
	if (last_appended_position == 0)
		PG_RETURN_NULL();
	PG_RETURN_INT64(last_appended_position);
}
