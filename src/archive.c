/*
 * archive.c
 *	  archive_events(): moves the events below a position into range tables
 *	  in a tablespace, and whole ranges between tablespaces (see tiers.c for
 *	  the layout and how the reads visit it).
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_tablespace.h"
#include "commands/tablespace.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "api.h"
#include "catalog.h"
#include "position.h"
#include "roles.h"
#include "stream_state.h"
#include "tiers.h"

PG_FUNCTION_INFO_V1(es_archive_events);

#define ES_ARCHIVE_PREFIX		"events_archive_"

/* Run one SQL command through SPI (connected, as the owner); returns rows processed */
static uint64
es_archive_exec(const char *sql, int expect)
{
	int			rc = SPI_execute(sql, false, 0);

	if (rc != expect)
		elog(ERROR, "archive_events: \"%s\" failed: %s", sql, SPI_result_code_string(rc));
	return SPI_processed;
}

/* The tablespace a relation is stored in (the database's default as such) */
static Oid
es_rel_tablespace(Oid relid)
{
	Oid			ts = get_rel_tablespace(relid);

	return OidIsValid(ts) ? ts : MyDatabaseTableSpace;
}

/* The TOAST table of a relation (InvalidOid: none) */
static Oid
es_rel_toast(Oid relid)
{
	HeapTuple	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			toast;

	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	toast = ((Form_pg_class) GETSTRUCT(tp))->reltoastrelid;
	ReleaseSysCache(tp);
	return toast;
}

/*
 * Take the ACCESS EXCLUSIVE locks of the relations that SET TABLESPACE is
 * about to move, of every range at once, without queueing for them: a
 * queued request makes every later reader of a range wait behind it, so a
 * session holding any lock on it (PREPARE takes one before privileges are
 * checked, whoever asks) would stop the reads of the store.  Tries all of
 * them, lets go of what it got unless it got everything, and retries every
 * few milliseconds: while it waits it holds none of them (holding one
 * range while waiting for another, it could wait for a session that waits
 * for it, unseen by the deadlock detector).  Gives up at lock_timeout, and
 * can be cancelled.
 */
static void
es_lock_for_move(Oid *relids, int n)
{
	TimestampTz start = GetCurrentTimestamp();

	for (;;)
	{
		int			locked = 0;

		while (locked < n && ConditionalLockRelationOid(relids[locked], AccessExclusiveLock))
			locked++;
		if (locked == n)
			return;
		while (locked > 0)
			UnlockRelationOid(relids[--locked], AccessExclusiveLock);
		if (LockTimeout > 0 &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), LockTimeout))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not lock the archived ranges to move them"),
					 errdetail("Another session holds a lock on a range table or one of its indexes."),
					 errhint("Call archive_events() again later, or with a longer lock_timeout.")));
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* One move of SET TABLESPACE: a range table or one of its indexes */
typedef struct EsMove
{
	Oid			relid;
	bool		is_index;
} EsMove;

/*
 * Move the archived ranges (tiers[0 .. n-1]) and their indexes to a
 * tablespace, where they are not there; returns the number of events of
 * the range tables moved.
 */
static int64
es_move_ranges(const EsTier *tiers, int n, Oid ts, const char *tsq)
{
	int64		moved = 0;
	EsMove	   *moves = NULL;
	int			nmoves = 0;
	Oid		   *locks = NULL;
	int			nlocks = 0;
	int			cap = 0;

	for (int r = 0; r < n; r++)
	{
		Oid			relid = tiers[r].relid;
		bool		move_table = es_rel_tablespace(relid) != ts;
		int			first_move = nmoves;
		int			first_lock = nlocks;

		/* its indexes, and its TOAST table and index (which SET TABLESPACE moves along) */
		es_archive_exec(psprintf("SELECT i.indexrelid, i.indrelid OPERATOR(pg_catalog.=) %u "
								 "FROM pg_catalog.pg_index i "
								 "WHERE i.indrelid OPERATOR(pg_catalog.=) %u "
								 "OR i.indrelid OPERATOR(pg_catalog.=) (SELECT c.reltoastrelid "
								 "FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) %u) "
								 "ORDER BY 2 DESC, 1",
								 relid, relid, relid),
						SPI_OK_SELECT);
		if (cap < nlocks + (int) SPI_processed + 3)
		{
			cap = (nlocks + (int) SPI_processed + 3) * 2;
			moves = moves ? repalloc(moves, sizeof(EsMove) * cap) : palloc(sizeof(EsMove) * cap);
			locks = locks ? repalloc(locks, sizeof(Oid) * cap) : palloc(sizeof(Oid) * cap);
		}
		locks[nlocks++] = relid;
		if (OidIsValid(es_rel_toast(relid)))
			locks[nlocks++] = es_rel_toast(relid);
		if (move_table)
			moves[nmoves++] = (EsMove) {relid, false};
		for (uint64 i = 0; i < SPI_processed; i++)
		{
			bool		null;
			Oid			index = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &null));
			bool		own = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &null));

			locks[nlocks++] = index;
			if (own && es_rel_tablespace(index) != ts)
				moves[nmoves++] = (EsMove) {index, true};
		}
		/* nothing of this range to move: no lock of it either */
		if (nmoves == first_move)
			nlocks = first_lock;
	}
	if (nmoves == 0)
		return 0;
	es_lock_for_move(locks, nlocks);

	for (int i = 0; i < nmoves; i++)
	{
		char	   *q = quote_qualified_identifier(ES_SCHEMA_NAME, get_rel_name(moves[i].relid));

		if (!moves[i].is_index)
		{
			bool		null;

			es_archive_exec(psprintf("SELECT pg_catalog.count(*) FROM ONLY %s", q), SPI_OK_SELECT);
			moved += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null));
		}
		es_archive_exec(psprintf("ALTER %s %s SET TABLESPACE %s",
								 moves[i].is_index ? "INDEX" : "TABLE", q, tsq),
						SPI_OK_UTILITY);
	}
	return moved;
}

/*
 * Leave a new range table to its owner alone: whatever the owner's default
 * privileges in the schema granted (meant for other tables) would let their
 * grantees read the archived events around the category grants of
 * event_store.events (its row-level security does not apply to a child read
 * directly), or write them around its immutability.
 */
static void
es_revoke_all(const char *q)
{
	StringInfoData grantees;

	initStringInfo(&grantees);
	appendStringInfoString(&grantees, "PUBLIC");
	es_archive_exec(psprintf("SELECT DISTINCT a.grantee FROM pg_catalog.pg_class c, "
							 "pg_catalog.aclexplode(c.relacl) a "
							 "WHERE c.oid OPERATOR(pg_catalog.=) %s::pg_catalog.regclass "
							 "AND a.grantee OPERATOR(pg_catalog.<>) c.relowner "
							 "AND a.grantee OPERATOR(pg_catalog.<>) 0",
							 quote_literal_cstr(q)),
					SPI_OK_SELECT);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		null;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
															 SPI_tuptable->tupdesc, 1, &null));

		appendStringInfo(&grantees, ", %s", quote_identifier(EsRoleName(grantee)));
	}
	es_archive_exec(psprintf("REVOKE ALL ON TABLE %s FROM %s", q, grantees.data), SPI_OK_UTILITY);
}

/*
 * Move the hot table's events at positions [first, end) into a new range
 * table in a tablespace, and list it; returns the number of events moved.
 */
static int64
es_archive_range(int64 first, int64 end, const char *tsq)
{
	char	   *name = psprintf(ES_ARCHIVE_PREFIX INT64_FORMAT, first);
	char	   *q = quote_qualified_identifier(ES_SCHEMA_NAME, name);
	volatile int64 moved = 0;

	es_archive_exec(psprintf("CREATE TABLE %s (CONSTRAINT %s CHECK ("
							 "global_position OPERATOR(pg_catalog.>=) " INT64_FORMAT "::pg_catalog.int8 AND "
							 "global_position OPERATOR(pg_catalog.<) " INT64_FORMAT "::pg_catalog.int8)) "
							 "INHERITS (event_store.events) TABLESPACE %s",
							 q, quote_identifier(psprintf("%s_range", name)), first, end, tsq),
					SPI_OK_UTILITY);
	es_revoke_all(q);
	es_archive_exec(psprintf("CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON %s "
							 "FOR EACH STATEMENT EXECUTE FUNCTION event_store._refuse_modification()", q),
					SPI_OK_UTILITY);
	es_archive_exec(psprintf("CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON %s "
							 "FOR EACH STATEMENT EXECUTE FUNCTION event_store._refuse_modification()", q),
					SPI_OK_UTILITY);
	es_archive_exec(psprintf("ALTER TABLE %s ENABLE ALWAYS TRIGGER events_immutable, "
							 "ENABLE ALWAYS TRIGGER events_no_truncate", q),
					SPI_OK_UTILITY);

	/* one statement, one snapshot: every event in exactly one of the tables */
	EsSetRemovalInProgress(true);
	PG_TRY();
	{
		moved = (int64) es_archive_exec(psprintf("WITH moved AS (DELETE FROM ONLY event_store.events "
												 "WHERE global_position OPERATOR(pg_catalog.>=) " INT64_FORMAT "::pg_catalog.int8 "
												 "AND global_position OPERATOR(pg_catalog.<) " INT64_FORMAT "::pg_catalog.int8 "
												 "RETURNING *) "
												 "INSERT INTO %s SELECT * FROM moved ORDER BY global_position",
												 first, end, q),
										SPI_OK_INSERT);
	}
	PG_FINALLY();
	{
		EsSetRemovalInProgress(false);
	}
	PG_END_TRY();

	/*
	 * every index of the hot table (the four the scans use, and any other),
	 * named after the range table (see tiers.c), in the tablespace (the
	 * default_tablespace of the caller's nest level)
	 */
	es_archive_exec("SELECT c.relname, pg_catalog.pg_get_indexdef(i.indexrelid) "
					"FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) i.indexrelid "
					"WHERE i.indrelid OPERATOR(pg_catalog.=) 'event_store.events'::pg_catalog.regclass "
					"ORDER BY c.relname", SPI_OK_SELECT);
	{
		uint64		nindexes = SPI_processed;
		char	  **hot_names = palloc(sizeof(char *) * Max(nindexes, 1));
		char	  **defs = palloc(sizeof(char *) * Max(nindexes, 1));

		/* copied out: the statements below replace SPI_tuptable */
		for (uint64 i = 0; i < nindexes; i++)
		{
			hot_names[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			defs[i] = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
		}
		for (uint64 i = 0; i < nindexes; i++)
		{
			char	   *from = psprintf(" INDEX %s ON event_store.events ", quote_identifier(hot_names[i]));
			char	   *at = strstr(defs[i], from);
			char	   *index_name;

			if (at == NULL || strncmp(hot_names[i], ES_EVENTS_TABLE "_", strlen(ES_EVENTS_TABLE) + 1) != 0)
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("cannot copy index \"%s\" of event_store.events to an archived range", hot_names[i]),
						 errdetail("Its definition is: %s", defs[i]),
						 errhint("Name the indexes of event_store.events events_<something>.")));
			index_name = psprintf("%s_%s", name, hot_names[i] + strlen(ES_EVENTS_TABLE) + 1);
			if (strlen(index_name) >= NAMEDATALEN)
				ereport(ERROR,
						(errcode(ERRCODE_NAME_TOO_LONG),
						 errmsg("index name \"%s\" of an archived range is too long", index_name)));
			*at = '\0';
			es_archive_exec(psprintf("%s INDEX %s ON %s %s", defs[i], quote_identifier(index_name), q,
									 at + strlen(from)),
							SPI_OK_UTILITY);
		}
	}
	/*
	 * each stream's newest archived version, which its newest events in this
	 * range (above every earlier range) now are: what append() reads for a
	 * stream the hot table has no event of (EsLatestStreamVersion)
	 */
	es_archive_exec(psprintf("INSERT INTO event_store.archived_streams AS a (stream_id, stream_version) "
							 "SELECT stream_id, pg_catalog.max(stream_version) FROM ONLY %s GROUP BY stream_id "
							 "ON CONFLICT (stream_id) DO UPDATE "
							 "SET stream_version = GREATEST(a.stream_version, excluded.stream_version)", q),
					SPI_OK_INSERT);
	es_archive_exec(psprintf("INSERT INTO event_store.archived_ranges (first_position, end_position, relation) "
							 "VALUES (" INT64_FORMAT ", " INT64_FORMAT ", %s)",
							 first, end, quote_literal_cstr(name)),
					SPI_OK_INSERT);
	return moved;
}

/*
 * SQL: event_store.archive_events(before_position bigint, tablespace name)
 *		RETURNS bigint
 *
 * Moves the events below before_position to the tablespace: the archived
 * ranges below it that are elsewhere, and, when it is above the archived
 * ranges, the hot table's events from the last range's end up to it as a
 * new range.  Returns the number of events moved.  Who may: a member of the
 * extension's owner with CREATE on the tablespace (the default tablespace
 * needs none).
 */
Datum
es_archive_events(PG_FUNCTION_ARGS)
{
	int64		before;
	char	   *tsname;
	Oid			ts;
	const char *tsq;
	const EsCatalog *cat;
	EsTiers    *tiers;
	int			nranges;
	int64		boundary;
	int64		moved = 0;
	int			nest_level;
	EsUserSwitch sw;

	EsRequireArg(fcinfo, 0, "before_position");
	before = PG_GETARG_INT64(0);
	EsRejectNegative(before, "before_position", "Events at positions below it are archived.");
	EsRequireArg(fcinfo, 1, "tablespace");
	tsname = NameStr(*PG_GETARG_NAME(1));
	EsCheckWritable("archive_events()");

	cat = EsGetCatalog();
	if (!has_privs_of_role(GetUserId(), EsExtensionOwner()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to archive events"),
				 errdetail("Archiving moves every event below a position, whatever the category grants."),
				 errhint("A member of role \"%s\" can archive events.",
						 EsRoleName(EsExtensionOwner()))));
	ts = get_tablespace_oid(tsname, false);
	if (ts == GLOBALTABLESPACE_OID)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("only shared relations can be placed in pg_global tablespace")));
	if (ts != MyDatabaseTableSpace &&
		pg_tablespace_aclcheck(ts, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_TABLESPACE, tsname);
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("archive_events() cannot run in a %s transaction",
						IsolationIsSerializable() ? "SERIALIZABLE" : "REPEATABLE READ"),
				 errdetail("It moves every event committed below the position; a transaction snapshot may not see them all."),
				 errhint("Call it at isolation level READ COMMITTED.")));
	if (!OidIsValid(cat->archive_relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the event_store schema predates archived ranges"),
				 errhint("Run ALTER EXTENSION event_store UPDATE.")));

	/* one archive_events() at a time; readers and appends go on */
	LockRelationOid(cat->archive_relid, ShareRowExclusiveLock);
	tiers = EsLoadTiers(cat, CurrentMemoryContext);
	nranges = tiers->n - 1;
	boundary = nranges > 0 ? tiers->tier[nranges - 1].end : 1;
	tsq = quote_identifier(tsname);

	if (before < boundary)
	{
		bool		on_boundary = before <= (nranges > 0 ? tiers->tier[0].first : 1);

		for (int i = 0; i < nranges && !on_boundary; i++)
			on_boundary = tiers->tier[i].first == before;
		if (!on_boundary)
		{
			int			i = 0;

			while (tiers->tier[i].end <= before)
				i++;
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("before_position " INT64_FORMAT " is inside an archived range", before),
					 errdetail("The range holds positions " INT64_FORMAT " to " INT64_FORMAT "; ranges move whole.",
							   tiers->tier[i].first, tiers->tier[i].end - 1),
					 errhint("Pass " INT64_FORMAT " or " INT64_FORMAT ".",
							 tiers->tier[i].first, tiers->tier[i].end)));
		}
	}
	else if (before > boundary)
	{
		int64		head = EsSafeHead();

		if (before - 1 > head)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("before_position " INT64_FORMAT " is beyond the head of the store", before),
					 errdetail("Every position up to " INT64_FORMAT " is settled; later ones may still be written.", head),
					 errhint("Pass at most " INT64_FORMAT ".", head + 1)));
	}

	/*
	 * As the owner, with every name resolved in pg_catalog (the index
	 * definitions are copied as text) and new relations in the tablespace
	 */
	EsSpiConnect(&sw);
	nest_level = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("default_tablespace", tsname, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	/*
	 * The new range first: the ranges to move are locked only for their
	 * move, not while the hot table's events are copied
	 */
	if (before > boundary)
		moved += es_archive_range(boundary, before, tsq);
	{
		int			nmove = 0;

		while (nmove < nranges && tiers->tier[nmove].end <= before)
			nmove++;
		moved += es_move_ranges(tiers->tier, nmove, ts, tsq);
	}
	AtEOXact_GUC(true, nest_level);
	EsSpiFinish(&sw);
	PG_RETURN_INT64(moved);
}
