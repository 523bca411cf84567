/*
 * lifecycle.c
 *	  Stream lifecycle: soft deletion and reopening, purging for erasure
 *	  requests, and retention (max_count / max_age per stream), enforced by
 *	  the background worker.  Purging and retention are the only paths that
 *	  remove events; they do it with a flag that the immutability trigger
 *	  honours for the duration of their own DELETE.
 *
 *	  Per-stream state lives in event_store.stream_metadata.  While it is
 *	  empty (the usual case) the hot paths skip it after one cached check;
 *	  otherwise append() and the stream reads probe its primary key.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "api.h"
#include "append.h"
#include "catalog.h"
#include "grants.h"
#include "lifecycle.h"
#include "locks.h"
#include "roles.h"
#include "shared.h"
#include "stream_state.h"

PG_FUNCTION_INFO_V1(es_delete_stream);
PG_FUNCTION_INFO_V1(es_reopen_stream);
PG_FUNCTION_INFO_V1(es_purge_stream);
PG_FUNCTION_INFO_V1(es_set_stream_retention);
PG_FUNCTION_INFO_V1(es_enforce_retention);

/* the longest retention age: now() - max_age stays a valid timestamp */
#define ES_MAX_AGE_YEARS 1000

/* Run one statement on stream_metadata as the owner, then tell every backend */
static void
es_meta_exec(const char *sql, int nargs, Oid *types, Datum *values, const char *nulls)
{
	EsUserSwitch sw;
	int			rc;

	EsSpiConnect(&sw);
	rc = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "updating event_store.stream_metadata failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
	EsStreamStateChanged();
}

/* The data of a marker: {} without key, else {"key": value} */
static Jsonb *
es_marker_data(const char *key, int64 value)
{
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (key != NULL)
	{
		k.type = jbvString;
		k.val.string.val = (char *) key;
		k.val.string.len = strlen(key);
		(void) pushJsonbValue(&state, WJB_KEY, &k);
		v.type = jbvNumeric;
		v.val.numeric = int64_to_numeric(value);
		(void) pushJsonbValue(&state, WJB_VALUE, &v);
	}
	return JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
}

/*
 * Append one internal event to a stream: type, with data {key: value} (or
 * {} when key is NULL) and metadata {}
 */
static int64
es_append_marker(text *stream_id, const char *type, const char *key, int64 value,
				 bool has_expected, int64 expected)
{
	EsNewEvent	ev;

	memset(&ev, 0, sizeof(ev));
	ev.type = cstring_to_text(type);
	ev.data = es_marker_data(key, value);
	ev.metadata = es_marker_data(NULL, 0);
	ev.schema_version = 1;
	return EsAppendEvents(stream_id, &ev, 1, has_expected, expected, true);
}

/* Stream id argument of the lifecycle functions: must exist */
static text *
es_existing_stream(FunctionCallInfo fcinfo, int64 *version)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);

	EsCheckStreamAccess(stream_id, ES_PRIV_APPEND);
	EsLockStream(stream_id);
	*version = EsLatestStreamVersion(EsGetCatalog(), stream_id, GetLatestSnapshot());
	if (*version == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("stream \"%s\" does not exist", text_to_cstring(stream_id))));
	return stream_id;
}

/*
 * Mark a stream deleted, reads starting after version start_after; the
 * tombstone itself is start_after
 */
static void
es_mark_deleted(text *stream_id, int64 start_after)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {PointerGetDatum(stream_id), Int64GetDatum(start_after)};

	es_meta_exec("INSERT INTO event_store.stream_metadata AS m (stream_id, deleted_at, start_after) "
				 "VALUES ($1, pg_catalog.now(), $2) "
				 "ON CONFLICT (stream_id) DO UPDATE SET deleted_at = pg_catalog.now(), "
				 "start_after = EXCLUDED.start_after, updated_at = pg_catalog.now()",
				 2, types, values, NULL);
}

/*
 * SQL: event_store.delete_stream(stream_id text, expected_version bigint
 *		DEFAULT NULL) RETURNS bigint
 *
 * Soft delete: appends the tombstone $StreamDeleted (followers see it),
 * after which read_stream returns nothing and append() is refused (SE003)
 * until reopen_stream().  Returns the tombstone's version.
 */
Datum
es_delete_stream(PG_FUNCTION_ARGS)
{
	int64		version;
	text	   *stream_id;
	bool		has_expected = !PG_ARGISNULL(1);
	int64		expected = has_expected ? PG_GETARG_INT64(1) : 0;
	int64		tombstone;

	EsCheckWritable("delete_stream()");
	EsCheckPreloaded();
	EsRejectNegative(expected, "expected_version",
					 "Pass NULL to delete whatever the stream's version, or the stream's current version.");
	stream_id = es_existing_stream(fcinfo, &version);
	EsCheckStreamNotDeleted(stream_id);
	tombstone = es_append_marker(stream_id, "$StreamDeleted", "deleted_version", version,
								 has_expected, expected);
	es_mark_deleted(stream_id, tombstone);
	PG_RETURN_INT64(tombstone);
}

/*
 * SQL: event_store.reopen_stream(stream_id text) RETURNS bigint
 *
 * Appending is allowed again; versions go on after the tombstone, and
 * read_stream shows only what comes after it ($StreamReopened first).
 */
Datum
es_reopen_stream(PG_FUNCTION_ARGS)
{
	int64		version;
	text	   *stream_id;
	bool		deleted;
	int64		start_after;
	int64		result;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	EsCheckWritable("reopen_stream()");
	EsCheckPreloaded();
	stream_id = es_existing_stream(fcinfo, &version);
	if (!EsStreamLifecycle(stream_id, &deleted, &start_after) || !deleted)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("stream \"%s\" is not deleted", text_to_cstring(stream_id)),
				 errhint("Only a stream deleted with event_store.delete_stream() or purged can be reopened.")));
	values[0] = PointerGetDatum(stream_id);
	es_meta_exec("UPDATE event_store.stream_metadata SET deleted_at = NULL, updated_at = pg_catalog.now() "
				 "WHERE stream_id OPERATOR(pg_catalog.=) $1",
				 1, types, values, NULL);
	result = es_append_marker(stream_id, "$StreamReopened", NULL, 0, true, version);
	PG_RETURN_INT64(result);
}

/*
 * Remove the correlation runs (event_store.correlations) ids[i],
 * last_positions[i] (two arrays of the same length) that the removal of
 * events left without any event of their id, in any tier: an erased
 * event's correlation id must not stay behind.  A run some of whose events
 * are left stays as it is (read_correlated checks every event it finds).
 * Caller is connected to SPI as the owner, after the removal.
 */
static void
es_remove_runs(Datum ids, Datum last_positions)
{
	Oid			types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum		values[2] = {ids, last_positions};

	if (SPI_execute_with_args("DELETE FROM event_store.correlations r "
							  "USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS x(id, last_position) "
							  "WHERE r.correlation_id OPERATOR(pg_catalog.=) (x.id COLLATE \"C\") "
							  "AND r.last_position OPERATOR(pg_catalog.=) x.last_position "
							  "AND NOT EXISTS (SELECT FROM event_store.events e "
							  " WHERE e.global_position OPERATOR(pg_catalog.>=) r.first_position "
							  " AND e.global_position OPERATOR(pg_catalog.<=) r.last_position "
							  " AND ((e.metadata OPERATOR(pg_catalog.->>) 'correlationId') COLLATE \"C\") "
							  "     OPERATOR(pg_catalog.=) r.correlation_id)",
							  2, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "removing correlation runs failed");
}

/*
 * Run a DELETE on event_store.events (caller is connected to SPI as the
 * owner) with the immutability trigger's consent; the SPI result code
 */
static int
es_execute_removal(const char *sql, int nargs, Oid *types, Datum *values)
{
	volatile int rc = 0;

	EsSetRemovalInProgress(true);
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	}
	PG_FINALLY();
	{
		EsSetRemovalInProgress(false);
	}
	PG_END_TRY();
	return rc;
}

/*
 * DELETE some events as the owner (sql: a DELETE on event_store.events),
 * and the correlation runs it leaves without events (es_remove_runs);
 * returns the number of events removed
 */
static int64
es_remove_events(const char *sql, int nargs, Oid *types, Datum *values)
{
	const EsCatalog *cat = EsGetCatalog();
	/* a schema from before 0.3.0 (until ALTER EXTENSION UPDATE) has no runs */
	bool		runs = OidIsValid(cat->correlations_relid);
	EsUserSwitch sw;
	int64		removed = 0;
	int			rc;

	/*
	 * With the runs: the same DELETE, which also gives the runs of the
	 * removed events (of the runs of an event's id, the first that ends at
	 * or after it, if it starts at or before it: runs of one id never
	 * overlap), each once, found with one probe of the runs' primary key per
	 * event.  A purge of a long stream hands over a row per run, not per
	 * event.  Whether a run is left without events, the next statement
	 * tells: this one's snapshot still sees the events it removes.
	 */
	if (runs)
		sql = psprintf("WITH removed AS (%s RETURNING global_position, "
					   "metadata OPERATOR(pg_catalog.->>) 'correlationId' AS id), "
					   "touched AS (SELECT DISTINCT f.correlation_id, f.last_position "
					   "  FROM removed x, "
					   "       LATERAL (SELECT c.correlation_id, c.first_position, c.last_position "
					   "                  FROM event_store.correlations c "
					   "                 WHERE c.correlation_id OPERATOR(pg_catalog.=) (x.id COLLATE \"C\") "
					   "                   AND c.last_position OPERATOR(pg_catalog.>=) x.global_position "
					   "                 ORDER BY c.last_position LIMIT 1) f "
					   " WHERE x.id IS NOT NULL "
					   "   AND f.first_position OPERATOR(pg_catalog.<=) x.global_position) "
					   "SELECT (SELECT pg_catalog.count(*) FROM removed), "
					   "       (SELECT pg_catalog.array_agg(correlation_id) FROM touched), "
					   "       (SELECT pg_catalog.array_agg(last_position) FROM touched)", sql);
	EsSpiConnect(&sw);
	rc = es_execute_removal(sql, nargs, types, values);
	if (rc != (runs ? SPI_OK_SELECT : SPI_OK_DELETE))
		elog(ERROR, "removing events failed: %s", SPI_result_code_string(rc));
	if (runs)
	{
		HeapTuple	row = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		null;
		Datum		ids;
		Datum		last_positions;

		Assert(SPI_processed == 1);
		removed = DatumGetInt64(SPI_getbinval(row, desc, 1, &null));
		ids = SPI_getbinval(row, desc, 2, &null);
		last_positions = SPI_getbinval(row, desc, 3, &null);
		if (!null)
			es_remove_runs(ids, last_positions);
	}
	else
		removed = (int64) SPI_processed;
	EsSpiFinish(&sw);
	return removed;
}

/*
 * What a purge does below its marker: every event of the stream before
 * version `marker` and the stream's snapshots go, then the stream is
 * deleted from the marker on.  Returns the number of events removed.
 */
static int64
es_purge_before(text *stream_id, int64 marker)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {PointerGetDatum(stream_id), Int64GetDatum(marker)};
	int64		removed = 0;
	EsUserSwitch sw;

	/*
	 * Twice: an archive_events() that moved some of the rows while the
	 * first statement ran (it then waited for it) put them in a range its
	 * snapshot cannot see; the second statement's snapshot sees them.
	 */
	for (int pass = 0; pass < 2; pass++)
		removed += es_remove_events("DELETE FROM event_store.events "
									"WHERE stream_id OPERATOR(pg_catalog.=) $1 "
									"AND stream_version OPERATOR(pg_catalog.<) $2",
									2, types, values);
	EsSpiConnect(&sw);
	if (SPI_execute_with_args("DELETE FROM event_store.snapshots "
							  "WHERE stream_id OPERATOR(pg_catalog.=) $1",
							  1, types, values, NULL, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "removing snapshots failed");
	EsSpiFinish(&sw);
	es_mark_deleted(stream_id, marker);
	return removed;
}

/*
 * SQL: event_store.purge_stream(stream_id text) RETURNS bigint
 *
 * Hard delete for erasure requests: every event of the stream and its
 * snapshots are removed.  Only while the superuser-only setting
 * event_store.allow_purge is on.  What remains is the event $StreamPurged
 * (up to which version; none of the data), and the stream is deleted as by
 * delete_stream().  Returns the number of events removed.
 */
Datum
es_purge_stream(PG_FUNCTION_ARGS)
{
	int64		version;
	text	   *stream_id;
	int64		removed;
	int64		marker;

	EsCheckWritable("purge_stream()");
	EsCheckPreloaded();
	if (!es_allow_purge)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("purging streams is disabled"),
				 errdetail("purge_stream() removes events for good; it runs only while event_store.allow_purge is on."),
				 errhint("A superuser can SET event_store.allow_purge = on for the session that purges.")));
	stream_id = es_existing_stream(fcinfo, &version);

	/*
	 * The marker first, so that the stream's versions go on after the
	 * purged ones (never reused); then everything before it goes.
	 */
	marker = es_append_marker(stream_id, "$StreamPurged", "purged_through_version", version,
							  false, 0);
	removed = es_purge_before(stream_id, marker);
	PG_RETURN_INT64(removed);
}

/*
 * SQL: event_store.set_stream_retention(stream_id text, max_count bigint
 *		DEFAULT NULL, max_age interval DEFAULT NULL) RETURNS void
 *
 * The background worker (or enforce_retention()) removes a stream's events
 * beyond the newest max_count and those older than max_age; the newest
 * event of a stream always stays.  Both NULL: keep everything again.
 */
Datum
es_set_stream_retention(PG_FUNCTION_ARGS)
{
	text	   *stream_id = EsGetStreamId(fcinfo, 0);
	Oid			types[3] = {TEXTOID, INT8OID, INTERVALOID};
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};

	EsCheckWritable("set_stream_retention()");
	EsCheckStreamAccess(stream_id, ES_PRIV_APPEND);
	if (!PG_ARGISNULL(1) && PG_GETARG_INT64(1) < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_count must be a positive integer"),
				 errdetail("Got " INT64_FORMAT ".", PG_GETARG_INT64(1)),
				 errhint("Pass NULL to keep any number of events.")));
	if (!PG_ARGISNULL(2))
	{
		Interval   *iv = PG_GETARG_INTERVAL_P(2);

		if (iv->time <= 0 && iv->day <= 0 && iv->month <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must be a positive interval"),
					 errhint("Pass NULL to keep events of any age.")));
		if (iv->time < 0 || iv->day < 0 || iv->month < 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must not have negative parts")));
		/* now() - max_age must stay a valid timestamp */
		if ((int64) iv->month * 31 + iv->day + iv->time / USECS_PER_DAY > 366 * ES_MAX_AGE_YEARS)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("max_age must be at most %d years", ES_MAX_AGE_YEARS)));
	}
	for (int i = 0; i < 3; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	es_meta_exec("INSERT INTO event_store.stream_metadata AS m (stream_id, max_count, max_age) "
				 "VALUES ($1, $2, $3) "
				 "ON CONFLICT (stream_id) DO UPDATE SET max_count = EXCLUDED.max_count, "
				 "max_age = EXCLUDED.max_age, updated_at = pg_catalog.now()",
				 3, types, values, nulls);
	PG_RETURN_VOID();
}

/*
 * Remove at most limit of the events that the retention settings allow, in
 * one statement (caller is not connected to SPI); returns the number of
 * events removed, fewer than limit when none is left
 */
int64
EsEnforceRetentionBatch(int64 limit)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(limit)};

	if (!EsAnyStreamState())
		return 0;

	/*
	 * Per stream with settings: events past the newest max_count, and
	 * events older than max_age, but never the stream's newest event (its
	 * version must survive) nor any event of a deleted stream.  The newest
	 * event stays the newest from one batch to the next, so the batches
	 * together remove what one statement would.
	 */
	return es_remove_events(
							"DELETE FROM event_store.events d "
							"WHERE d.global_position OPERATOR(pg_catalog.=) ANY (ARRAY("
							" SELECT e.global_position "
							"   FROM event_store.stream_metadata m, LATERAL ("
							"     SELECT l.stream_version AS last FROM event_store.events l "
							"      WHERE l.stream_id OPERATOR(pg_catalog.=) m.stream_id "
							"      ORDER BY l.stream_version DESC LIMIT 1) x, "
							"        event_store.events e "
							"  WHERE e.stream_id OPERATOR(pg_catalog.=) m.stream_id "
							"    AND m.deleted_at IS NULL "
							"    AND (m.max_count IS NOT NULL OR m.max_age IS NOT NULL) "
							"    AND e.stream_version OPERATOR(pg_catalog.<) x.last "
							"    AND (e.stream_version OPERATOR(pg_catalog.<=) "
							"           (x.last OPERATOR(pg_catalog.-) m.max_count) "
							"         OR e.recorded_at OPERATOR(pg_catalog.<) "
							"           (pg_catalog.now() OPERATOR(pg_catalog.-) m.max_age)) "
							"  LIMIT $1))",
							1, types, values);
}

/*
 * Remove everything the retention settings allow, in statements of at most
 * ES_RETENTION_BATCH events, in the caller's transaction (caller is not
 * connected to SPI); returns the number of events removed
 */
int64
EsEnforceRetention(void)
{
	int64		total = 0;
	int64		removed;

	do
	{
		CHECK_FOR_INTERRUPTS();
		removed = EsEnforceRetentionBatch(ES_RETENTION_BATCH);
		total += removed;
	} while (removed >= ES_RETENTION_BATCH);
	return total;
}

/* SQL: event_store.enforce_retention() RETURNS bigint */
Datum
es_enforce_retention(PG_FUNCTION_ARGS)
{
	EsCheckWritable("enforce_retention()");
	EsCheckPreloaded();
	PG_RETURN_INT64(EsEnforceRetention());
}

/*
 * What a lifecycle marker imported from another database (services.c) does
 * here, as it did there: the marker itself is stored at version; then the
 * stream is deleted ($StreamDeleted), purged up to the marker and deleted
 * ($StreamPurged), or reopened ($StreamReopened).  Other types do nothing.
 */
void
EsImportedLifecycle(text *stream_id, const char *type, int64 version)
{
	Oid			types[2] = {TEXTOID, INT8OID};
	Datum		values[2] = {PointerGetDatum(stream_id), Int64GetDatum(version)};

	if (strcmp(type, "$StreamDeleted") == 0)
		es_mark_deleted(stream_id, version);
	else if (strcmp(type, "$StreamPurged") == 0)
		(void) es_purge_before(stream_id, version);
	else if (strcmp(type, "$StreamReopened") == 0)
		es_meta_exec("UPDATE event_store.stream_metadata SET deleted_at = NULL, updated_at = pg_catalog.now() "
					 "WHERE stream_id OPERATOR(pg_catalog.=) $1",
					 1, types, values, NULL);
}
