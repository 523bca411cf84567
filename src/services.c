/*
 * services.c
 *	  Services in separate databases.  A producer publishes the events of
 *	  some categories with create_publication() (a PostgreSQL publication of
 *	  event_store.events: inserts only, filtered by category and type); a
 *	  consumer brings them into its own store with create_import() (a
 *	  PostgreSQL subscription to it).
 *
 *	  Logical replication writes into the table of the same name, so the
 *	  subscription's rows arrive at event_store.events itself.  A BEFORE
 *	  INSERT row trigger enabled for replication only (ENABLE REPLICA: it
 *	  fires in the subscription's workers, never for append(), which fires
 *	  no triggers, nor for a restore) turns each row into a local append at
 *	  the producer's version, with a local position, and skips the row
 *	  itself.  The history (the subscription's initial copy, in the order of
 *	  the producer's heap) is sorted by the row trigger and appended in the
 *	  producer's position order, a stream's consecutive events in one batch,
 *	  by the copy's AFTER statement trigger, together with the producer's
 *	  archived events, which that trigger reads in the copy's transaction
 *	  (es_import_archived_history); live rows come in the producer's
 *	  commit order and are appended at once.  The apply worker commits the
 *	  appends together with its replication progress, so an event is imported
 *	  exactly once across crashes; a re-sent event (same id, same place) is
 *	  recognised and skipped.
 *
 *	  An event that cannot be applied raises an error: the subscription's
 *	  worker stops, retries after wal_retrieve_retry_interval, and the error
 *	  is kept in shared memory for event_store.import_status until an event
 *	  of that import is applied again.
 *
 *	  The imported categories are cached per backend (registry.c): append()
 *	  to them is refused (SE004) after one hash probe.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_operator_d.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "replication/logicalworker.h"
#include "replication/walreceiver.h"
#include "replication/worker_internal.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplesort.h"
#include "utils/uuid.h"

#include "api.h"
#include "append.h"
#include "catalog.h"
#include "errors.h"
#include "lifecycle.h"
#include "position.h"
#include "registry.h"
#include "results.h"
#include "roles.h"
#include "services.h"

PG_FUNCTION_INFO_V1(es_create_publication);
PG_FUNCTION_INFO_V1(es_drop_publication);
PG_FUNCTION_INFO_V1(es_create_import);
PG_FUNCTION_INFO_V1(es_drop_import);
PG_FUNCTION_INFO_V1(es_import_row);
PG_FUNCTION_INFO_V1(es_import_copy_begin);
PG_FUNCTION_INFO_V1(es_import_copy_end);
PG_FUNCTION_INFO_V1(es_import_errors);

/* the lifecycle markers always travel with a publication's events */
static const char *const es_markers[] = {"$StreamDeleted", "$StreamPurged", "$StreamReopened"};

/* ------------------------------------------------------------------------
 * The last error of each import (shared memory)
 * ------------------------------------------------------------------------ */

#define ES_MAX_IMPORT_ERRORS	64
#define ES_IMPORT_ERROR_LEN		512

typedef struct EsImportError
{
	Oid			dboid;			/* InvalidOid: free */
	Oid			subid;			/* the import's subscription */
	TimestampTz at;
	char		message[ES_IMPORT_ERROR_LEN];
} EsImportError;

typedef struct EsImportErrors
{
	slock_t		mutex;
	EsImportError entries[ES_MAX_IMPORT_ERRORS];
} EsImportErrors;

static EsImportErrors *import_errors = NULL;

/* this process applied an event since it started (its import's error is cleared) */
static bool es_import_cleared = false;

/*
 * Look event ids up before storing (to name where an id is stored when it
 * is): while the import's last attempt failed (es_import_check_ids)
 */
static int	es_import_careful = -1;	/* -1: not known yet */

Size
EsImportShmemSize(void)
{
	return sizeof(EsImportErrors);
}

/* Create or attach; caller holds AddinShmemInitLock */
void
EsImportShmemInit(void)
{
	bool		found;

	import_errors = ShmemInitStruct("event_store import errors", sizeof(EsImportErrors), &found);
	if (!found)
	{
		SpinLockInit(&import_errors->mutex);
		for (int i = 0; i < ES_MAX_IMPORT_ERRORS; i++)
			import_errors->entries[i].dboid = InvalidOid;
	}
}

/* Record (message != NULL) or clear the last error of subscription subid */
static void
es_import_set_error(Oid subid, const char *message)
{
	EsImportError *slot = NULL;
	EsImportError *free_slot = NULL;
	EsImportError *oldest = NULL;

	if (import_errors == NULL)
		return;
	SpinLockAcquire(&import_errors->mutex);
	for (int i = 0; i < ES_MAX_IMPORT_ERRORS; i++)
	{
		EsImportError *e = &import_errors->entries[i];

		if (e->dboid == MyDatabaseId && e->subid == subid)
			slot = e;
		else if (e->dboid == InvalidOid && free_slot == NULL)
			free_slot = e;
		else if (oldest == NULL || e->at < oldest->at)
			oldest = e;
	}
	if (message == NULL)
	{
		if (slot != NULL)
			slot->dboid = InvalidOid;
	}
	else
	{
		if (slot == NULL)
			slot = free_slot ? free_slot : oldest;
		slot->dboid = MyDatabaseId;
		slot->subid = subid;
		slot->at = GetCurrentTimestamp();
		strlcpy(slot->message, message, ES_IMPORT_ERROR_LEN);
	}
	SpinLockRelease(&import_errors->mutex);
}

/* Has subscription subid an error recorded? */
static bool
es_import_has_error(Oid subid)
{
	bool		found = false;

	if (import_errors == NULL)
		return false;
	SpinLockAcquire(&import_errors->mutex);
	for (int i = 0; i < ES_MAX_IMPORT_ERRORS; i++)
		if (import_errors->entries[i].dboid == MyDatabaseId &&
			import_errors->entries[i].subid == subid)
			found = true;
	SpinLockRelease(&import_errors->mutex);
	return found;
}

/*
 * Should this process look ids up before storing?  Only while its import
 * fails: an id stored elsewhere is then named exactly (the unique index
 * alone cannot say where), at the cost of an index probe per event.
 */
static bool
es_import_check_ids(void)
{
	if (es_import_careful < 0)
		es_import_careful = es_import_has_error(MySubscription->oid) ? 1 : 0;
	return es_import_careful == 1;
}

/*
 * SQL: event_store._import_errors() RETURNS TABLE(subid oid, failed_at
 * timestamptz, message text): this database's imports' last errors
 */
Datum
es_import_errors(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	EsImportError copy[ES_MAX_IMPORT_ERRORS];

	EsInitResultSet(fcinfo);
	if (import_errors == NULL)
		return (Datum) 0;
	SpinLockAcquire(&import_errors->mutex);
	memcpy(copy, import_errors->entries, sizeof(copy));
	SpinLockRelease(&import_errors->mutex);
	for (int i = 0; i < ES_MAX_IMPORT_ERRORS; i++)
	{
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		if (copy[i].dboid != MyDatabaseId)
			continue;
		values[0] = ObjectIdGetDatum(copy[i].subid);
		values[1] = TimestampTzGetDatum(copy[i].at);
		values[2] = CStringGetTextDatum(copy[i].message);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* ------------------------------------------------------------------------
 * The registry of imports and imported categories (per backend)
 * ------------------------------------------------------------------------ */

static EsRegistry import_registry = {"imports"};

/* keys: an import's name (num 0), an imported category (num 1) */
static HTAB *import_hash = NULL;
static bool any_import = false;

/*
 * The imports that share a category with another import (a reporting
 * database importing the same categories from several servers): the store
 * cannot tell which of them stored an event, so their progress is written
 * by every transaction that applies events (see es_progress_write)
 */
static List *shared_imports = NIL;

/* (Re)load the imports (EsRegistryEnsure) */
static void
es_load_imports(void)
{
	MemoryContext cxt = EsRegistryNewContext(&import_registry);
	EsUserSwitch sw;
	int			rc;

	import_hash = EsTextHashCreate("event_store imports", sizeof(EsTextKey), cxt);
	any_import = false;
	shared_imports = NIL;
	if (!OidIsValid(import_registry.relid))
		return;					/* the extension's schema is older */
	EsSpiConnect(&sw);
	rc = SPI_execute("SELECT i.name, c.category, "
					 "EXISTS (SELECT 1 FROM event_store.imports o "
					 "WHERE o.name OPERATOR(pg_catalog.<>) i.name "
					 "AND o.categories OPERATOR(pg_catalog.&&) i.categories) "
					 "FROM event_store.imports i "
					 "LEFT JOIN LATERAL pg_catalog.unnest(i.categories) AS c(category) ON true",
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.imports failed: %s", SPI_result_code_string(rc));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		bool		isnull;

		if (DatumGetBool(SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 3, &isnull)))
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			shared_imports = lappend(shared_imports,
									 SPI_getvalue(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, 1));
			MemoryContextSwitchTo(old);
		}
		for (int col = 1; col <= 2; col++)
		{
			bool		isnull;
			Datum		d = SPI_getbinval(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, col, &isnull);
			text	   *t;
			char	   *str;
			bool		found;

			if (isnull)
				continue;
			t = DatumGetTextPP(d);
			str = MemoryContextAlloc(cxt, VARSIZE_ANY_EXHDR(t) + 1);
			memcpy(str, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
			str[VARSIZE_ANY_EXHDR(t)] = '\0';
			(void) EsTextHashEnter(import_hash, str, VARSIZE_ANY_EXHDR(t), col - 1, &found);
			any_import = true;
		}
	}
	EsSpiFinish(&sw);
}

/* Does this import share a category with another import? */
static bool
es_import_shares_categories(const char *name)
{
	ListCell   *lc;

	EsRegistryEnsure(&import_registry, es_load_imports);
	foreach(lc, shared_imports)
	{
		if (strcmp((const char *) lfirst(lc), name) == 0)
			return true;
	}
	return false;
}

/* Is this category imported (read-only here)?  The append hot path. */
bool
EsCategoryImported(const char *category, int len)
{
	EsRegistryEnsure(&import_registry, es_load_imports);
	if (!any_import)
		return false;
	return EsTextHashFind(import_hash, category, len, 1) != NULL;
}

/* ------------------------------------------------------------------------
 * Arguments
 * ------------------------------------------------------------------------ */

/* A name argument that becomes a PostgreSQL object name: 22004 / 22023 */
static char *
es_object_name_arg(FunctionCallInfo fcinfo, int argno, const char *what)
{
	text	   *t;

	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
	t = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(t) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (VARSIZE_ANY_EXHDR(t) >= NAMEDATALEN)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("It has %d bytes; a PostgreSQL object name has at most %d.",
						   (int) VARSIZE_ANY_EXHDR(t), NAMEDATALEN - 1)));
	return text_to_cstring(t);
}

/* One statement as the extension's owner (caller is not in SPI); returns SPI_processed */
static uint64
es_exec_as_owner(const char *sql, int nargs, Oid *types, Datum *values, int expect)
{
	EsUserSwitch sw;
	int			rc;
	uint64		n;

	EsSpiConnect(&sw);
	rc = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);
	if (rc != expect)
		elog(ERROR, "statement failed: %s", SPI_result_code_string(rc));
	n = SPI_processed;
	EsSpiFinish(&sw);
	return n;
}

/* The comma-separated quoted literals of a text array's elements */
static void
es_append_literals(StringInfo buf, Datum *elems, int n)
{
	for (int i = 0; i < n; i++)
	{
		if (i > 0)
			appendStringInfoString(buf, ", ");
		appendStringInfoString(buf, quote_literal_cstr(TextDatumGetCString(elems[i])));
	}
}

/* ------------------------------------------------------------------------
 * The producer's side
 * ------------------------------------------------------------------------ */

/*
 * SQL: event_store.create_publication(name text, categories text[],
 *		event_types text[] DEFAULT NULL) RETURNS void
 *
 * The publication name of event_store.events: inserts only (a row-filtered
 * publication of updates would make every update of the table fail), rows
 * of the categories, of the types when given (the lifecycle markers
 * always).  Who may: a member of the extension's owner with CREATE on the
 * database, what CREATE PUBLICATION asks of the table's owner.
 */
Datum
es_create_publication(PG_FUNCTION_ARGS)
{
	char	   *name;
	Datum	   *cats;
	bool	   *catnulls;
	int			ncats;
	StringInfoData sql;
	Oid			types[4] = {TEXTOID, TEXTARRAYOID, TEXTARRAYOID, OIDOID};
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	EsUserSwitch sw;
	int			rc;

	EsCheckWritable("create_publication()");
	name = es_object_name_arg(fcinfo, 0, "name");
	EsRequireArg(fcinfo, 1, "categories");
	EsCheckFilterArg(fcinfo, 1, "categories", true);
	EsCheckFilterArg(fcinfo, 2, "event_types", false);

	if (!has_privs_of_role(GetUserId(), EsExtensionOwner()) ||
		pg_database_aclcheck(MyDatabaseId, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create publication \"%s\"", name),
				 errdetail("A publication shares every event of its categories, whatever the category grants."),
				 errhint("A member of role \"%s\" with CREATE on the database can create one.",
						 EsRoleName(EsExtensionOwner()))));
	if (wal_level < WAL_LEVEL_LOGICAL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot create publication \"%s\": wal_level is not logical", name),
				 errdetail("Other databases import the events through logical replication."),
				 errhint("Set wal_level = logical in postgresql.conf and restart the server.")));

	ncats = EsArgTextArray(fcinfo, 1, "categories", &cats, &catnulls);
	initStringInfo(&sql);
	appendStringInfo(&sql, "CREATE PUBLICATION %s FOR TABLE ONLY event_store.events "
					 "WHERE (pg_catalog.split_part(stream_id, '-', 1) IN (",
					 quote_identifier(name));
	es_append_literals(&sql, cats, ncats);
	appendStringInfoString(&sql, ")");
	if (!PG_ARGISNULL(2))
	{
		Datum	   *tps;
		bool	   *tpnulls;
		int			ntps = EsArgTextArray(fcinfo, 2, "event_types", &tps, &tpnulls);

		appendStringInfoString(&sql, " AND event_type IN (");
		es_append_literals(&sql, tps, ntps);
		for (int i = 0; i < lengthof(es_markers); i++)
			appendStringInfo(&sql, ", %s", quote_literal_cstr(es_markers[i]));
		appendStringInfoString(&sql, ")");
	}
	appendStringInfoString(&sql, ") WITH (publish = 'insert')");

	values[0] = CStringGetTextDatum(name);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[2] = PG_ARGISNULL(2) ? 'n' : ' ';
	values[3] = ObjectIdGetDatum(GetUserId());

	EsSpiConnect(&sw);
	rc = SPI_execute_with_args("INSERT INTO event_store.publications (name, categories, event_types, owner) "
							   "VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
							   4, types, values, nulls, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "registering the publication failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("event_store publication \"%s\" already exists", name),
				 errhint("Drop it first with event_store.drop_publication().")));
	/* the publication belongs to the events table's owner */
	rc = SPI_execute(sql.data, false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "CREATE PUBLICATION failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/*
 * SQL: event_store.drop_publication(name text) RETURNS void -- by a member
 * of the role that created it (the extension's owner may always)
 */
Datum
es_drop_publication(PG_FUNCTION_ARGS)
{
	char	   *name;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	EsUserSwitch sw;
	int			rc;
	bool		isnull;
	Oid			owner;

	EsCheckWritable("drop_publication()");
	name = es_object_name_arg(fcinfo, 0, "name");
	values[0] = CStringGetTextDatum(name);

	EsSpiConnect(&sw);
	rc = SPI_execute_with_args("SELECT owner FROM event_store.publications "
							   "WHERE name OPERATOR(pg_catalog.=) $1 FOR UPDATE",
							   1, types, values, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "reading event_store.publications failed");
	if (SPI_processed == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event_store publication \"%s\" does not exist", name)));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (!has_privs_of_role(sw.save_userid, owner) &&
		!has_privs_of_role(sw.save_userid, EsExtensionOwner()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to drop publication \"%s\"", name),
				 errdetail("It belongs to role \"%s\".", EsRoleName(owner)),
				 errhint("Only members of its owner or of the extension's owner can drop it.")));
	SPI_execute_with_args("DELETE FROM event_store.publications WHERE name OPERATOR(pg_catalog.=) $1",
						  1, types, values, NULL, false, 0);
	rc = SPI_execute(psprintf("DROP PUBLICATION IF EXISTS %s", quote_identifier(name)), false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "DROP PUBLICATION failed: %s", SPI_result_code_string(rc));
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * The consumer's side: create_import, drop_import
 * ------------------------------------------------------------------------ */

/* Only a superuser manages imports (they are subscriptions): 42501 */
static void
es_require_superuser(const char *what, const char *name)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s import \"%s\"", what, name),
				 errdetail("An import is a subscription to another database."),
				 errhint("Only a superuser can %s an import.", what)));
}

/* A connection to the producer (replication, database mode) */
static WalReceiverConn *
es_connect_producer(const char *conninfo, const char *name)
{
	WalReceiverConn *conn;
	char	   *err = NULL;

	load_file("libpqwalreceiver", false);
#if PG_VERSION_NUM >= 160000
	conn = walrcv_connect(conninfo, true, true, name, &err);
#else
	conn = walrcv_connect(conninfo, true, name, &err);
#endif
	if (conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not connect to the producer of import \"%s\": %s", name, err)));
	return conn;
}

/* Run sql on the producer; its result, or an error naming what */
static WalRcvExecResult *
es_producer_exec(WalReceiverConn *conn, const char *sql, int ntypes, Oid *types,
				 const char *what)
{
	WalRcvExecResult *res = walrcv_exec(conn, sql, ntypes, types);

	if (res->status != WALRCV_OK_TUPLES && res->status != WALRCV_OK_COMMAND)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not %s on the producer: %s", what, res->err)));
	return res;
}

/*
 * SQL: event_store.create_import(name text, connection text, publication
 *		text) RETURNS void
 *
 * A subscription name to the producer's publication (its replication slot
 * of the same name is made on the producer, or taken when it exists: the
 * way to import from another database of the same cluster, where the slot
 * must be made beforehand); the history comes first (copy_data).
 */
Datum
es_create_import(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *conninfo;
	char	   *publication;
	WalReceiverConn *conn;
	WalRcvExecResult *res;
	Oid			cattype[1] = {TEXTARRAYOID};
	Oid			onetype[1] = {INT4OID};
	TupleTableSlot *slot;
	Datum		categories;
	bool		isnull;
	Oid			types[4] = {TEXTOID, TEXTOID, TEXTARRAYOID, OIDOID};
	Datum		values[4];
	int			rc;
	MemoryContext cxt = CurrentMemoryContext;

	EsCheckWritable("create_import()");
	name = es_object_name_arg(fcinfo, 0, "name");
	es_require_superuser("create", name);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("connection must not be null"),
				 errhint("Pass a connection string to the producer's database, such as 'host=... dbname=...'.")));
	conninfo = text_to_cstring(PG_GETARG_TEXT_PP(1));
	publication = es_object_name_arg(fcinfo, 2, "publication");

	load_file("libpqwalreceiver", false);
	PG_TRY();
	{
		walrcv_check_conninfo(conninfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("connection is not a valid connection string: %s", edata->message),
				 errhint("Pass a connection string to the producer's database, such as 'host=... dbname=...'.")));
	}
	PG_END_TRY();

	values[0] = CStringGetTextDatum(name);
	if (es_exec_as_owner("SELECT 1 FROM event_store.imports WHERE name OPERATOR(pg_catalog.=) $1",
						 1, types, values, SPI_OK_SELECT) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("import \"%s\" already exists", name),
				 errhint("Drop it first with event_store.drop_import().")));

	/* the producer says which categories the publication carries */
	conn = es_connect_producer(conninfo, name);
	res = es_producer_exec(conn,
						   psprintf("SELECT categories FROM event_store.publications WHERE name OPERATOR(pg_catalog.=) %s",
									quote_literal_cstr(publication)),
						   1, cattype, "read event_store.publications");
	slot = MakeSingleTupleTableSlot(res->tupledesc, &TTSOpsMinimalTuple);
	if (!tuplestore_gettupleslot(res->tuplestore, true, false, slot))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("event_store publication \"%s\" does not exist on the producer", publication),
				 errhint("Create it there with event_store.create_publication().")));
	categories = slot_getattr(slot, 1, &isnull);
	categories = PointerGetDatum(DatumGetArrayTypePCopy(categories));
	ExecDropSingleTupleTableSlot(slot);

	values[1] = CStringGetTextDatum(publication);
	values[2] = categories;
	values[3] = ObjectIdGetDatum(GetUserId());
	/* its progress starts at the top of the store (see es_progress_write) */
	(void) es_exec_as_owner("INSERT INTO event_store.imports (name, publication, categories, owner, last_local_position) "
							"VALUES ($1, $2, $3, $4, (SELECT COALESCE(pg_catalog.max(global_position), 0) "
							"FROM event_store.events))", 4, types, values, SPI_OK_INSERT);
	EsRegistryChanged(&import_registry);

	/* the subscription (in a transaction block: the slot is made below) */
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(psprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION %s "
							  "WITH (create_slot = false, slot_name = %s, copy_data = true, enabled = true)",
							  quote_identifier(name), quote_literal_cstr(conninfo),
							  quote_identifier(publication), quote_identifier(name)),
					 false, 0);
	if (rc != SPI_OK_UTILITY)
		elog(ERROR, "CREATE SUBSCRIPTION failed: %s", SPI_result_code_string(rc));
	SPI_finish();

	/* last, so that a failure above leaves nothing on the producer */
	res = es_producer_exec(conn,
						   psprintf("SELECT 1 FROM pg_catalog.pg_replication_slots "
									"WHERE slot_name OPERATOR(pg_catalog.=) %s",
									quote_literal_cstr(name)),
						   1, onetype, "look for the replication slot");
	slot = MakeSingleTupleTableSlot(res->tupledesc, &TTSOpsMinimalTuple);
	if (!tuplestore_gettupleslot(res->tuplestore, true, false, slot))
	{
		XLogRecPtr	lsn;

		walrcv_create_slot(conn, name, false, false, CRS_NOEXPORT_SNAPSHOT, &lsn);
	}
	ExecDropSingleTupleTableSlot(slot);
	walrcv_disconnect(conn);
	PG_RETURN_VOID();
}

/*
 * SQL: event_store.drop_import(name text) RETURNS void
 *
 * Drops the subscription and the producer's slot; the imported events stay
 * (and their categories become writable here).
 */
Datum
es_drop_import(PG_FUNCTION_ARGS)
{
	char	   *name;
	char	   *conninfo = NULL;
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			rc;
	bool		has_slot = false;
	TimestampTz deadline;

	EsCheckWritable("drop_import()");
	name = es_object_name_arg(fcinfo, 0, "name");
	es_require_superuser("drop", name);
	values[0] = CStringGetTextDatum(name);
	if (es_exec_as_owner("DELETE FROM event_store.imports WHERE name OPERATOR(pg_catalog.=) $1",
						 1, types, values, SPI_OK_DELETE) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("import \"%s\" does not exist", name)));
	EsRegistryChanged(&import_registry);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_with_args("SELECT s.subconninfo, s.subslotname IS NOT NULL FROM pg_catalog.pg_subscription s "
							   "WHERE s.subname OPERATOR(pg_catalog.=) $1 "
							   "AND s.subdbid OPERATOR(pg_catalog.=) (SELECT d.oid FROM pg_catalog.pg_database d "
							   "WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())",
							   1, types, values, NULL, true, 1);
	if (rc == SPI_OK_SELECT && SPI_processed == 1)
	{
		bool		isnull;

		conninfo = MemoryContextStrdup(TopTransactionContext,
									   SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		has_slot = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
		/* without its slot the subscription can be dropped in a transaction */
		SPI_execute(psprintf("ALTER SUBSCRIPTION %s DISABLE", quote_identifier(name)), false, 0);
		SPI_execute(psprintf("ALTER SUBSCRIPTION %s SET (slot_name = NONE)", quote_identifier(name)), false, 0);
		rc = SPI_execute(psprintf("DROP SUBSCRIPTION %s", quote_identifier(name)), false, 0);
		if (rc != SPI_OK_UTILITY)
			elog(ERROR, "DROP SUBSCRIPTION failed: %s", SPI_result_code_string(rc));
	}
	SPI_finish();

	if (conninfo != NULL && has_slot)
	{
		WalReceiverConn *conn = es_connect_producer(conninfo, name);
		char	   *sql = psprintf("DROP_REPLICATION_SLOT %s", quote_identifier(name));

		/* DROP SUBSCRIPTION stopped the workers; the producer notices soon */
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30000);
		for (;;)
		{
			WalRcvExecResult *res = walrcv_exec(conn, sql, 0, NULL);

			if (res->status == WALRCV_OK_COMMAND ||
				(res->err && strstr(res->err, "does not exist") != NULL))
				break;
			if (GetCurrentTimestamp() > deadline)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_IN_USE),
						 errmsg("could not drop replication slot \"%s\" on the producer: %s", name, res->err),
						 errhint("Retry later, or drop the slot on the producer with pg_drop_replication_slot().")));
			CHECK_FOR_INTERRUPTS();
			pg_usleep(100 * 1000L);
		}
		walrcv_disconnect(conn);
	}
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * Applying: the triggers on event_store.events (ENABLE REPLICA)
 * ------------------------------------------------------------------------ */

/* The import this worker applies, or NULL when this is no import's worker */
static const char *
es_current_import(void)
{
#if PG_VERSION_NUM >= 150000
	if (!IsLogicalWorker())
		return NULL;
#else
	if (MyLogicalRepWorker == NULL)
		return NULL;
#endif
	if (MySubscription == NULL || MySubscription->name == NULL)
		return NULL;
	EsRegistryEnsure(&import_registry, es_load_imports);
	if (!any_import ||
		EsTextHashFind(import_hash, MySubscription->name, strlen(MySubscription->name), 0) == NULL)
		return NULL;
	return MySubscription->name;
}

/* metadata with "$source": the producer's position */
static Jsonb *
es_with_source(Jsonb *metadata, int64 source)
{
	JsonbParseState *state = NULL;
	JsonbValue	k;
	JsonbValue	v;
	Jsonb	   *src;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	k.type = jbvString;
	k.val.string.val = "$source";
	k.val.string.len = strlen("$source");
	(void) pushJsonbValue(&state, WJB_KEY, &k);
	v.type = jbvNumeric;
	v.val.numeric = int64_to_numeric(source);
	(void) pushJsonbValue(&state, WJB_VALUE, &v);
	src = JsonbValueToJsonb(pushJsonbValue(&state, WJB_END_OBJECT, NULL));
	if (metadata == NULL || !JB_ROOT_IS_OBJECT(metadata))
		return src;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(metadata),
											  JsonbPGetDatum(src)));
}

/*
 * The import's progress (imports.last_source_position, last_local_position,
 * last_applied_at) costs a row update, so it is written at most once per
 * ES_PROGRESS_INTERVAL_MS, just before a transaction that applied events
 * commits, and always by one that skipped a re-sent event (the one kind of
 * progress the store cannot tell later).  The row says: every event of the
 * import stored at or below last_local_position has a "$source" at or below
 * last_source_position.  What was applied since is in the store itself,
 * above last_local_position: import_status reads the highest "$source"
 * there.  The write accounts for the events this process applied since its
 * last write (kept here) and, read from the store, for those between the
 * row's last_local_position and the first of them (a worker that died before
 * it wrote); it commits with the events it accounts for, so the status stays
 * exact across crashes.  (Exactly once itself rests on the subscription's
 * replication origin, which commits with the events.)  Imports that share
 * a category (several producers of the same categories) write the row in
 * every such transaction instead, and nothing is read from the store for
 * them: an event there does not say which of them stored it.
 */
#define ES_PROGRESS_INTERVAL_MS 1000

typedef struct EsProgress
{
	int64		source;			/* highest producer position applied */
	int64		low;			/* lowest local position stored, 0: none */
	int64		high;			/* highest local position stored */
	bool		resent;			/* an applied event was already stored */
} EsProgress;

static bool es_progress_callback = false;
static bool es_progress_in_xact = false;	/* this transaction applied events */
static bool es_progress_wrote = false;	/* ... and wrote the row */
static char es_progress_import[NAMEDATALEN];
static EsProgress es_progress_xact;
static EsProgress es_progress_pending;	/* committed since this process last wrote */
static TimestampTz es_progress_written_at = 0;	/* 0: not yet by this process */

static void
es_progress_merge(EsProgress *into, const EsProgress *p)
{
	into->source = Max(into->source, p->source);
	if (p->low > 0 && (into->low == 0 || p->low < into->low))
		into->low = p->low;
	into->high = Max(into->high, p->high);
	into->resent |= p->resent;
}

/* Before commit: write the row when it is due */
static void
es_progress_write(void)
{
	static SPIPlanPtr plan = NULL;
	Oid			types[4] = {TEXTOID, INT8OID, INT8OID, INT8OID};
	Datum		args[4];
	EsProgress	all = es_progress_pending;
	TimestampTz now = GetCurrentTimestamp();
	EsUserSwitch sw;

	bool		shared = es_import_shares_categories(es_progress_import);

	if (!shared && !es_progress_xact.resent && es_progress_written_at != 0 &&
		!TimestampDifferenceExceeds(es_progress_written_at, now, ES_PROGRESS_INTERVAL_MS))
		return;
	es_progress_merge(&all, &es_progress_xact);
	args[0] = CStringGetTextDatum(es_progress_import);
	args[1] = Int64GetDatum(all.source);
	args[2] = Int64GetDatum(all.high);

	/*
	 * below this, only a dead predecessor's events can be unaccounted for;
	 * an import that shares a category cannot tell its events in the store
	 * from another import's, and has none unaccounted for (every one of its
	 * transactions writes the row): nothing is read from the store
	 */
	args[3] = Int64GetDatum(shared ? 0 : all.low > 0 ? all.low : PG_INT64_MAX);
	/* before commit, no statement is running: give the update a snapshot */
	PushActiveSnapshot(GetTransactionSnapshot());
	EsSpiConnect(&sw);
	if (plan == NULL)
		plan = EsPrepareKeptPlan("UPDATE event_store.imports i SET last_source_position = "
								 "GREATEST(i.last_source_position, $2, "
								 "(SELECT pg_catalog.max((e.metadata OPERATOR(pg_catalog.->>) '$source')::bigint) "
								 "FROM event_store.events e "
								 "WHERE e.global_position OPERATOR(pg_catalog.>) i.last_local_position "
								 "AND e.global_position OPERATOR(pg_catalog.<) $4 "
								 "AND pg_catalog.split_part(e.stream_id, '-', 1) COLLATE pg_catalog.\"C\" "
								 "OPERATOR(pg_catalog.=) ANY (i.categories))), "
								 "last_local_position = GREATEST(i.last_local_position, $3), "
								 "last_applied_at = pg_catalog.now() "
								 "WHERE i.name OPERATOR(pg_catalog.=) $1", 4, types);
	if (SPI_execute_plan(plan, args, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "recording the progress of import \"%s\" failed", es_progress_import);
	EsSpiFinish(&sw);
	PopActiveSnapshot();
	es_progress_wrote = true;
	es_progress_written_at = now;
}

static void es_stream_cache_reset(void);

static void
es_progress_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_COMMIT:
			if (es_progress_in_xact)
				es_progress_write();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (!es_progress_in_xact)
				break;
			if (es_progress_wrote)
				memset(&es_progress_pending, 0, sizeof(es_progress_pending));
			else
				es_progress_merge(&es_progress_pending, &es_progress_xact);
			es_progress_in_xact = false;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			/* what it stored is gone */
			es_stream_cache_reset();
			es_progress_in_xact = false;
			break;
		case XACT_EVENT_PREPARE:
			/* a prepared transaction's events are above the row's position */
			es_progress_in_xact = false;
			break;
		default:
			break;
	}
}

/*
 * Remember that import name applied the producer's position source, stored
 * at the local positions first_position .. + n - 1 (0: it was stored before)
 */
static void
es_note_progress(const char *name, int64 source, int64 first_position, int n)
{
	if (!es_progress_callback)
	{
		RegisterXactCallback(es_progress_xact_callback, NULL);
		es_progress_callback = true;
	}
	if (strcmp(es_progress_import, name) != 0)
	{
		/* a process applies one import (a subscription is one worker) */
		strlcpy(es_progress_import, name, NAMEDATALEN);
		memset(&es_progress_pending, 0, sizeof(es_progress_pending));
		es_progress_written_at = 0;
	}
	if (!es_progress_in_xact)
	{
		es_progress_in_xact = true;
		es_progress_wrote = false;
		memset(&es_progress_xact, 0, sizeof(es_progress_xact));
	}
	es_progress_xact.source = Max(es_progress_xact.source, source);
	if (first_position > 0)
	{
		if (es_progress_xact.low == 0)
			es_progress_xact.low = first_position;
		es_progress_xact.high = Max(es_progress_xact.high, first_position + n - 1);
	}
	else
		es_progress_xact.resent = true;
}

/* One event of an import, ready to be stored */
typedef struct EsImported
{
	text	   *stream_id;
	int64		version;
	int64		source;			/* the producer's position */
	EsNewEvent	ev;
} EsImported;

/* Check and convert one event of import name (values in event_store.events' layout) */
static void
es_import_prepare(const char *name, Datum *values, bool *nulls, EsImported *out)
{
	EsNewEvent *ev = &out->ev;
	int			catlen;
	Oid			types[3] = {TEXTOID, INT8OID, TEXTOID};
	Datum		args[3];

	for (int i = 0; i < Natts_es_event - 1; i++)
		if (nulls[i] && i + 1 != Anum_es_metadata && i + 1 != Anum_es_data)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("import \"%s\" received an event with a null column %d", name, i + 1)));
	out->source = DatumGetInt64(values[Anum_es_global_position - 1]);
	out->stream_id = DatumGetTextPP(values[Anum_es_stream_id - 1]);
	out->version = DatumGetInt64(values[Anum_es_stream_version - 1]);
	memset(ev, 0, sizeof(*ev));
	ev->type = DatumGetTextPP(values[Anum_es_event_type - 1]);
	ev->data = nulls[Anum_es_data - 1] ? NULL : DatumGetJsonbP(values[Anum_es_data - 1]);
	ev->metadata = es_with_source(nulls[Anum_es_metadata - 1] ? NULL :
								  DatumGetJsonbP(values[Anum_es_metadata - 1]), out->source);
	if (ev->data == NULL)
		ev->data = es_with_source(NULL, 0);	/* never: data is NOT NULL */
	memcpy(ev->id.data, DatumGetUUIDP(values[Anum_es_event_id - 1])->data, UUID_LEN);
	ev->has_id = true;
	ev->schema_version = DatumGetInt32(values[Anum_es_schema_version - 1]);
	if (out->version < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("import \"%s\" received an event with version " INT64_FORMAT, name, out->version)));

	/* a category the producer started publishing later is read-only too */
	catlen = EsCategoryLen(out->stream_id);
	if (EsTextHashFind(import_hash, VARDATA_ANY(out->stream_id), catlen, 1) == NULL)
	{
		args[0] = CStringGetTextDatum(name);
		args[2] = PointerGetDatum(cstring_to_text_with_len(VARDATA_ANY(out->stream_id), catlen));
		(void) es_exec_as_owner("UPDATE event_store.imports SET categories = "
								"pg_catalog.array_append(categories, $3) WHERE name OPERATOR(pg_catalog.=) $1",
								3, types, args, SPI_OK_UPDATE);
		EsRegistryChanged(&import_registry);
	}
}

/*
 * The streams this process stored live events in, each with the version
 * after the last one it stored.  The import is the one writer of its
 * streams (its categories are read-only here), so the next event of such a
 * stream, at exactly that version, has nothing in its way: the probe of the
 * stream index is skipped (EsImportEvent, known_clear).  Forgotten when a
 * transaction aborts (its entries may not have been stored), and all at
 * once when it grows past ES_STREAM_CACHE_MAX entries.
 */
#define ES_STREAM_CACHE_MAX	65536

typedef struct EsStreamNext
{
	EsTextKey	key;
	int64		next_version;
} EsStreamNext;

static HTAB *es_stream_next = NULL;
static MemoryContext es_stream_next_cxt = NULL;
static long es_stream_next_count = 0;

static void
es_stream_cache_reset(void)
{
	if (es_stream_next_cxt != NULL)
		MemoryContextDelete(es_stream_next_cxt);
	es_stream_next_cxt = NULL;
	es_stream_next = NULL;
	es_stream_next_count = 0;
}

/* Did this process store the version before version of the stream last? */
static bool
es_stream_known_clear(text *stream_id, int64 version)
{
	EsStreamNext *e;

	if (es_stream_next == NULL)
		return false;
	e = EsTextHashFind(es_stream_next, VARDATA_ANY(stream_id), VARSIZE_ANY_EXHDR(stream_id), 0);
	return e != NULL && e->next_version == version;
}

/* This process stored the stream's events up to next_version - 1 */
static void
es_stream_stored(text *stream_id, int64 next_version)
{
	EsStreamNext *e;
	int			len = VARSIZE_ANY_EXHDR(stream_id);

	if (es_stream_next == NULL || es_stream_next_count >= ES_STREAM_CACHE_MAX)
	{
		es_stream_cache_reset();
		es_stream_next_cxt = AllocSetContextCreate(TopMemoryContext, "event_store imported streams",
												   ALLOCSET_DEFAULT_SIZES);
		es_stream_next = EsTextHashCreate("event_store imported streams", sizeof(EsStreamNext),
										  es_stream_next_cxt);
	}
	e = EsTextHashFind(es_stream_next, VARDATA_ANY(stream_id), len, 0);
	if (e == NULL)
	{
		char	   *str = MemoryContextAlloc(es_stream_next_cxt, len + 1);
		bool		found;

		memcpy(str, VARDATA_ANY(stream_id), len);
		str[len] = '\0';
		e = EsTextHashEnter(es_stream_next, str, len, 0, &found);
		es_stream_next_count++;
	}
	e->next_version = next_version;
}

/* Apply one event of import name: values in event_store.events' layout */
static void
es_import_apply(const char *name, Datum *values, bool *nulls)
{
	EsImported imp;
	int64		stored_at;
	bool		check_ids = es_import_check_ids();

	es_import_prepare(name, values, nulls, &imp);
	stored_at = EsImportEvent(imp.stream_id, &imp.ev, imp.version, check_ids,
							  !check_ids && es_stream_known_clear(imp.stream_id, imp.version));
	if (stored_at > 0 && VARSIZE_ANY_EXHDR(imp.ev.type) > 0 && *VARDATA_ANY(imp.ev.type) == '$')
		EsImportedLifecycle(imp.stream_id, text_to_cstring(imp.ev.type), imp.version);
	es_note_progress(name, imp.source, stored_at, 1);
	if (stored_at > 0)
		es_stream_stored(imp.stream_id, imp.version + 1);
}

/* Record the error being handled, raised by the event values, for import_status */
static void
es_import_record_error(MemoryContext cxt, Datum *values)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	es_import_set_error(MySubscription->oid,
						psprintf("event %s of stream \"%s\" (producer position " INT64_FORMAT "): %s (SQLSTATE %s)",
								 DatumGetCString(DirectFunctionCall1(uuid_out, values[Anum_es_event_id - 1])),
								 TextDatumGetCString(values[Anum_es_stream_id - 1]),
								 DatumGetInt64(values[Anum_es_global_position - 1]),
								 edata->message, unpack_sql_state(edata->sqlerrcode)));
	FreeErrorData(edata);
	/* look ids up on the next attempt, to say where */
	es_import_careful = 1;
}

/* An event of the import was applied: its error (if any) is gone */
static void
es_import_applied(void)
{
	if (!es_import_cleared)
	{
		es_import_set_error(MySubscription->oid, NULL);
		es_import_cleared = true;
		es_import_careful = 0;
	}
}

/* es_import_apply, recording an error for import_status */
static void
es_import_apply_guarded(const char *name, Datum *values, bool *nulls)
{
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		es_import_apply(name, values, nulls);
	}
	PG_CATCH();
	{
		es_import_record_error(cxt, values);
		PG_RE_THROW();
	}
	PG_END_TRY();
	es_import_applied();
}

/* ------------------------------------------------------------------------
 * The history: the subscription's initial copy
 *
 * The copy brings the producer's events in the order of its heap.  They are
 * sorted by the producer's position in this transaction (a tuplesort: in
 * memory up to maintenance_work_mem, in temporary files beyond) and stored
 * when the copy ends, each stream's consecutive events in one batch, after
 * the producer's archived events, which the copy leaves out.
 * ------------------------------------------------------------------------ */

/* the largest batch stored at once */
#define ES_IMPORT_RUN_MAX	1000

/* the copy in progress, in this transaction (es_copy_lxid) */
static LocalTransactionId es_copy_lxid = InvalidLocalTransactionId;
static Tuplesortstate *es_copy_sort = NULL;
static TupleTableSlot *es_copy_slot = NULL;
static int64 es_copy_rows = 0;

/* A run of one stream's events at consecutive versions, from the history */
typedef struct EsImportRunState
{
	int			n;
	EsImported	events[ES_IMPORT_RUN_MAX];
	Datum	   *values[ES_IMPORT_RUN_MAX];	/* each event's row, for errors */
	bool	   *nulls[ES_IMPORT_RUN_MAX];
} EsImportRunState;

/* Store a run: in one batch when nothing is in the way, else one by one */
static void
es_import_flush_run(const char *name, EsImportRunState *run)
{
	MemoryContext cxt = CurrentMemoryContext;
	EsImported *first = &run->events[0];
	int64		position;
	EsNewEvent *evs;

	if (run->n == 0)
		return;
	evs = palloc(sizeof(EsNewEvent) * run->n);
	for (int i = 0; i < run->n; i++)
		evs[i] = run->events[i].ev;
	PG_TRY();
	{
		position = EsImportRun(first->stream_id, evs, run->n, first->version,
							   es_import_check_ids());
	}
	PG_CATCH();
	{
		es_import_record_error(cxt, run->values[0]);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (position > 0)
	{
		int64		source = 0;

		for (int i = 0; i < run->n; i++)
			source = Max(source, run->events[i].source);
		es_note_progress(name, source, position, run->n);
		es_import_applied();
	}
	else
	{
		for (int i = 0; i < run->n; i++)
			es_import_apply_guarded(name, run->values[i], run->nulls[i]);
	}
	run->n = 0;
}

/*
 * Trigger BEFORE INSERT ON event_store.events FOR EACH ROW, enabled for
 * replication only: a row of an import becomes a local append (or, during
 * the initial copy, a row of the history to sort) and is itself skipped.
 * Rows of other subscriptions (or of a restore with session_replication_role
 * = replica) pass unchanged.
 */
Datum
es_import_row(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	const char *name;
	Datum		values[Natts_es_event];
	bool		nulls[Natts_es_event];
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_import_row: not called by trigger manager");
	name = es_current_import();
	if (name == NULL)
		return PointerGetDatum(trigdata->tg_trigtuple);

	desc = RelationGetDescr(trigdata->tg_relation);
	if (desc->natts != Natts_es_event)
		elog(ERROR, "event_store.events has %d columns, expected %d", desc->natts, Natts_es_event);

	if (es_copy_lxid == MyProc->lxid)
	{
		/* the history: sorted, stored in the producer's order at the end */
		ResourceOwner save = CurrentResourceOwner;

		ExecStoreHeapTuple(trigdata->tg_trigtuple, es_copy_slot, false);
		/* temporary files live as long as the transaction */
		CurrentResourceOwner = TopTransactionResourceOwner;
		tuplesort_puttupleslot(es_copy_sort, es_copy_slot);
		CurrentResourceOwner = save;
		ExecClearTuple(es_copy_slot);
		es_copy_rows++;
	}
	else
	{
		heap_deform_tuple(trigdata->tg_trigtuple, desc, values, nulls);
		es_import_apply_guarded(name, values, nulls);
	}
	return PointerGetDatum(NULL);
}

/* Trigger BEFORE INSERT FOR EACH STATEMENT (replication only): a copy begins */
Datum
es_import_copy_begin(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	AttrNumber	attno = Anum_es_global_position;
	Oid			sortop = Int8LessOperator;
	Oid			collation = InvalidOid;
	bool		nullsfirst = false;
	MemoryContext old;
	TupleDesc	desc;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_import_copy_begin: not called by trigger manager");
	/* the apply worker fires no statement triggers: this is the initial copy */
	if (es_current_import() == NULL)
		return PointerGetDatum(NULL);

	/* everything of the copy lives as long as the transaction */
	old = MemoryContextSwitchTo(TopTransactionContext);
	desc = CreateTupleDescCopy(RelationGetDescr(trigdata->tg_relation));
	es_copy_slot = MakeSingleTupleTableSlot(desc, &TTSOpsHeapTuple);
	es_copy_sort = tuplesort_begin_heap(desc, 1, &attno, &sortop, &collation, &nullsfirst,
										maintenance_work_mem, NULL, TUPLESORT_NONE);
	MemoryContextSwitchTo(old);
	es_copy_rows = 0;
	es_copy_lxid = MyProc->lxid;
	return PointerGetDatum(NULL);
}

/* rows fetched at a time from the producer's archived ranges */
#define ES_ARCHIVED_FETCH	10000

/*
 * The producer's archived events of the publication, into the history's
 * sort.  The initial copy reads the publication's table alone, never a
 * table that inherits from it, so it leaves out the events archive_events()
 * moved into range tables there (tiers.c).  They are read here, as the copy
 * ends, on the table synchronization's own connection to the producer, whose
 * transaction (REPEATABLE READ, with the snapshot the copy read and the
 * slot's changes begin after) is still open: every event the publication
 * passes is then in exactly one place, the copy (in the hot table at that
 * snapshot), this read (in a range at that snapshot) or the changes (committed
 * after it), whatever archive_events() moves on the producer meanwhile.  At
 * any snapshot the ranges hold positions below the hot table's lowest, so the
 * query reads event_store.events (with the parent's privileges and row
 * security, as the copy) below that position: in the hot table an empty range
 * of its primary key.  The publication's row filter is read from the
 * producer's catalog, as the table synchronization read it (none when a
 * publication of the subscription has none).  A producer without ranges (or
 * at 0.2.0) returns no row.  The rows go into the history's sort, which
 * stores them first: their positions are lower.
 */
static void
es_import_archived_history(const char *name, Tuplesortstate *sort, TupleDesc desc)
{
	WalReceiverConn *conn = LogRepWorkerWalRcvConn;
	StringInfoData sql;
	StringInfoData pubs;
	StringInfoData filter;
	WalRcvExecResult *res;
	Oid			texttype[1] = {TEXTOID};
	Oid		   *types;
	TupleTableSlot *slot;
	ListCell   *lc;
	bool		unfiltered = false;
	bool		any_qual = false;
	MemoryContext batch_cxt;
	MemoryContext old;

	if (!am_tablesync_worker() || conn == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("import \"%s\" cannot read the producer's archived events", name),
				 errdetail("The history arrived outside the subscription's table synchronization.")));

	/* the row filters of the subscription's publications on the producer */
	initStringInfo(&pubs);
	foreach(lc, MySubscription->publications)
	{
		if (pubs.len > 0)
			appendStringInfoString(&pubs, ", ");
		appendStringInfoString(&pubs, quote_literal_cstr(strVal(lfirst(lc))));
	}
	res = es_producer_exec(conn,
						   psprintf("SELECT pg_catalog.pg_get_expr(pr.prqual, pr.prrelid) "
									"FROM pg_catalog.pg_publication p "
									"JOIN pg_catalog.pg_publication_rel pr ON pr.prpubid OPERATOR(pg_catalog.=) p.oid "
									"WHERE pr.prrelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass "
									"AND p.pubname OPERATOR(pg_catalog.=) ANY (ARRAY[%s]::pg_catalog.name[])",
									pubs.data),
						   1, texttype, "read the publication's row filter");
	initStringInfo(&filter);
	slot = MakeSingleTupleTableSlot(res->tupledesc, &TTSOpsMinimalTuple);
	while (tuplestore_gettupleslot(res->tuplestore, true, false, slot))
	{
		bool		isnull;
		Datum		qual = slot_getattr(slot, 1, &isnull);

		if (isnull)
			unfiltered = true;
		else
		{
			appendStringInfo(&filter, "%s(%s)", any_qual ? " OR " : "", TextDatumGetCString(qual));
			any_qual = true;
		}
	}
	ExecDropSingleTupleTableSlot(slot);
	walrcv_clear_result(res);

	/* the archived events: everything below the hot table's lowest position */
	types = palloc(sizeof(Oid) * desc->natts);
	initStringInfo(&sql);
	appendStringInfoString(&sql, "DECLARE es_archived_history NO SCROLL CURSOR FOR SELECT ");
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		types[i] = att->atttypid;
		appendStringInfo(&sql, "%se.%s", i > 0 ? ", " : "", quote_identifier(NameStr(att->attname)));
	}
	appendStringInfoString(&sql, " FROM event_store.events e "
						   "WHERE e.global_position OPERATOR(pg_catalog.<) COALESCE("
						   "(SELECT pg_catalog.min(h.global_position) FROM ONLY event_store.events h), "
						   "9223372036854775807::pg_catalog.int8)");
	if (any_qual && !unfiltered)
		appendStringInfo(&sql, " AND (%s)", filter.data);
	walrcv_clear_result(es_producer_exec(conn, sql.data, 0, NULL, "read the archived events"));

	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "event_store archived history",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		uint64		fetched = 0;
		ResourceOwner save = CurrentResourceOwner;

		CHECK_FOR_INTERRUPTS();
		old = MemoryContextSwitchTo(batch_cxt);
		res = es_producer_exec(conn, "FETCH FORWARD " CppAsString2(ES_ARCHIVED_FETCH) " FROM es_archived_history",
							   desc->natts, types, "read the archived events");
		slot = MakeSingleTupleTableSlot(res->tupledesc, &TTSOpsMinimalTuple);
		while (tuplestore_gettupleslot(res->tuplestore, true, false, slot))
		{
			HeapTuple	tuple;

			slot_getallattrs(slot);
			tuple = heap_form_tuple(desc, slot->tts_values, slot->tts_isnull);
			ExecStoreHeapTuple(tuple, es_copy_slot, false);
			/* temporary files live as long as the transaction */
			CurrentResourceOwner = TopTransactionResourceOwner;
			tuplesort_puttupleslot(sort, es_copy_slot);
			CurrentResourceOwner = save;
			ExecClearTuple(es_copy_slot);
			heap_freetuple(tuple);
			es_copy_rows++;
			fetched++;
		}
		ExecDropSingleTupleTableSlot(slot);
		walrcv_clear_result(res);
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch_cxt);
		if (fetched < ES_ARCHIVED_FETCH)
			break;
	}
	MemoryContextDelete(batch_cxt);
	walrcv_clear_result(es_producer_exec(conn, "CLOSE es_archived_history", 0, NULL,
										 "read the archived events"));
}

/*
 * Trigger AFTER INSERT FOR EACH STATEMENT (replication only): the copy is
 * done; store the history in the producer's position order
 */
Datum
es_import_copy_end(PG_FUNCTION_ARGS)
{
	const char *name;
	MemoryContext batch_cxt;
	MemoryContext old;
	ResourceOwner save = CurrentResourceOwner;
	TupleTableSlot *slot;
	EsImportRunState *run;
	Tuplesortstate *sort;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "es_import_copy_end: not called by trigger manager");
	if (es_copy_lxid != MyProc->lxid)
		return PointerGetDatum(NULL);
	es_copy_lxid = InvalidLocalTransactionId;
	sort = es_copy_sort;
	es_copy_sort = NULL;
	name = es_current_import();
	if (name == NULL)
		return PointerGetDatum(NULL);

	/* the producer's archived events come first */
	es_import_archived_history(name, sort, es_copy_slot->tts_tupleDescriptor);
	CurrentResourceOwner = TopTransactionResourceOwner;
	tuplesort_performsort(sort);
	CurrentResourceOwner = save;
	/* the positions of the whole history: one WAL flush */
	EsReservePositions(es_copy_rows);

	slot = MakeSingleTupleTableSlot(es_copy_slot->tts_tupleDescriptor, &TTSOpsMinimalTuple);
	run = palloc(sizeof(EsImportRunState));
	run->n = 0;
	batch_cxt = AllocSetContextCreate(CurrentMemoryContext, "event_store import batch",
									  ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(batch_cxt);
	for (;;)
	{
		bool		more;
		Datum	   *values;
		bool	   *nulls;
		EsImported *imp;
		text	   *type;

		CHECK_FOR_INTERRUPTS();
		CurrentResourceOwner = TopTransactionResourceOwner;
		more = tuplesort_gettupleslot(sort, true, false, slot, NULL);
		CurrentResourceOwner = save;
		if (!more)
			break;
		slot_getallattrs(slot);

		/* a run ends at another stream, a gap, its size */
		if (run->n > 0)
		{
			EsImported *last = &run->events[run->n - 1];

			if (run->n == ES_IMPORT_RUN_MAX ||
				slot->tts_isnull[Anum_es_stream_id - 1] || slot->tts_isnull[Anum_es_stream_version - 1] ||
				DatumGetInt64(slot->tts_values[Anum_es_stream_version - 1]) != last->version + 1 ||
				!EsTextIs(DatumGetTextPP(slot->tts_values[Anum_es_stream_id - 1]),
						  VARDATA_ANY(last->stream_id), VARSIZE_ANY_EXHDR(last->stream_id)))
			{
				es_import_flush_run(name, run);
				MemoryContextReset(batch_cxt);
			}
		}
		values = palloc(sizeof(Datum) * Natts_es_event);
		nulls = palloc(sizeof(bool) * Natts_es_event);
		heap_deform_tuple(ExecCopySlotHeapTuple(slot), slot->tts_tupleDescriptor, values, nulls);
		ExecClearTuple(slot);

		type = nulls[Anum_es_event_type - 1] ? NULL : DatumGetTextPP(values[Anum_es_event_type - 1]);
		if (type != NULL && VARSIZE_ANY_EXHDR(type) > 0 && *VARDATA_ANY(type) == '$')
		{
			/* a lifecycle marker: alone, after what comes before it */
			es_import_flush_run(name, run);
			es_import_apply_guarded(name, values, nulls);
			continue;
		}
		imp = &run->events[run->n];
		PG_TRY();
		{
			es_import_prepare(name, values, nulls, imp);
		}
		PG_CATCH();
		{
			es_import_record_error(batch_cxt, values);
			PG_RE_THROW();
		}
		PG_END_TRY();
		run->values[run->n] = values;
		run->nulls[run->n] = nulls;
		run->n++;
	}
	es_import_flush_run(name, run);
	MemoryContextSwitchTo(old);
	MemoryContextDelete(batch_cxt);
	ExecDropSingleTupleTableSlot(slot);
	CurrentResourceOwner = TopTransactionResourceOwner;
	tuplesort_end(sort);
	CurrentResourceOwner = save;
	return PointerGetDatum(NULL);
}
