/*
 * saga.c
 *	  The per-event part of sagas: append() hands every event whose type is
 *	  some saga step's complete_on or fail_on, and whose metadata carries a
 *	  saga_id, to the orchestrator (event_store._saga_on_event).  The set of
 *	  watched types is cached per backend, so an event of any other type
 *	  costs one hash probe (and nothing at all while no saga watches events).
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/uuid.h"

#include "event_store.h"

PG_FUNCTION_INFO_V1(es_saga_definitions_changed);

#define ES_MAX_WATCH_KEY 128

typedef struct EsWatchedType
{
	char		key[ES_MAX_WATCH_KEY];
} EsWatchedType;

static EsRegistry saga_registry = {"saga_definitions"};
static HTAB *watched = NULL;
static MemoryContext watched_cxt = NULL;
static long watched_count = 0;
static SPIPlanPtr on_event_plan = NULL;

/* Key of a type: long types share a truncated key (then the SQL side decides) */
static void
es_watch_key(char *key, const char *type, int len)
{
	memset(key, 0, ES_MAX_WATCH_KEY);
	memcpy(key, type, Min(len, ES_MAX_WATCH_KEY - 1));
}

/* Load the set of watched event types */
static void
es_saga_load(void)
{
	HASHCTL		ctl;
	int			rc;

	watched_cxt = EsRegistryNewContext(&saga_registry);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = ES_MAX_WATCH_KEY;
	ctl.entrysize = sizeof(EsWatchedType);
	ctl.hcxt = watched_cxt;
	watched = hash_create("event_store saga watch", 16, &ctl,
						  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	watched_count = 0;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute("SELECT event_type FROM event_store.saga_watched_types", true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.saga_definitions failed: %s", SPI_result_code_string(rc));
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		text	   *t = DatumGetTextPP(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		char		key[ES_MAX_WATCH_KEY];

		es_watch_key(key, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
		(void) hash_search(watched, key, HASH_ENTER, NULL);
		watched_count++;
	}
	SPI_finish();
}

/* Does any saga step wait for events at all? */
bool
EsSagaWatching(void)
{
	EsRegistryEnsure(&saga_registry, es_saga_load);
	return watched_count > 0;
}

/*
 * An event was appended: if its type is watched and its metadata names a
 * saga, let the orchestrator complete or fail the waiting step.
 */
void
EsSagaOnEvent(text *type, Jsonb *metadata, Jsonb *data)
{
	char		key[ES_MAX_WATCH_KEY];
	JsonbValue	k;
	JsonbValue *v;
	pg_uuid_t	saga_id;
	Datum		values[3];
	int			rc;

	es_watch_key(key, VARDATA_ANY(type), VARSIZE_ANY_EXHDR(type));
	if (hash_search(watched, key, HASH_FIND, NULL) == NULL)
		return;
	k.type = jbvString;
	k.val.string.val = "saga_id";
	k.val.string.len = 7;
	v = findJsonbValueFromContainer(&metadata->root, JB_FOBJECT, &k);
	if (v == NULL || v->type != jbvString ||
		!EsParseUuid(v->val.string.val, v->val.string.len, &saga_id))
		return;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (on_event_plan == NULL)
	{
		Oid			types[3] = {UUIDOID, TEXTOID, JSONBOID};
		on_event_plan = EsPrepareKeptPlan("SELECT event_store._saga_on_event($1, $2, $3)",
										  3, types);
	}
	values[0] = UUIDPGetDatum(&saga_id);
	values[1] = PointerGetDatum(type);
	values[2] = JsonbPGetDatum(data);
	rc = SPI_execute_plan(on_event_plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "saga event dispatch failed: %s", SPI_result_code_string(rc));
	SPI_finish();
}

/* SQL: event_store._saga_definitions_changed() */
Datum
es_saga_definitions_changed(PG_FUNCTION_ARGS)
{
	EsRegistryChanged(&saga_registry);
	PG_RETURN_VOID();
}
