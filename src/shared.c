/*
 * shared.c
 *	  The extension's shared memory: whether it exists (the library was
 *	  preloaded), and the directory that gives every database using
 *	  event_store one entry number.  Each subsystem with per-database shared
 *	  state (position.c, activity.c) keeps its own array indexed by that
 *	  number and says here how to reset an entry handed to another database.
 *
 * Locking: the directory's LWLock protects dboid[] and full_logged; the
 * resets run under it.
 */
#include "postgres.h"

#include "access/twophase.h"
#include "commands/dbcommands.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/syscache.h"

#include "shared.h"

typedef struct EsDirectory
{
	int			max_databases;
	bool		full_logged;	/* max_databases was reached (logged once) */
	Oid			dboid[FLEXIBLE_ARRAY_MEMBER];	/* InvalidOid: the entry is free */
} EsDirectory;

int			es_max_databases = 16;

static EsDirectory *es_directory = NULL;
static LWLock *es_directory_lock = NULL;

/* this backend's entry, or -1 */
static int	my_entry = -1;

/* what to reset when an entry is handed to a database (see EsOnEntryReuse) */
#define ES_MAX_ENTRY_RESETS 4
static EsEntryReset entry_resets[ES_MAX_ENTRY_RESETS];
static int	n_entry_resets = 0;

/* Number of PGPROC slots, which bounds pgprocno */
int
EsProcCount(void)
{
	return MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
}

Size
EsDirectoryShmemSize(void)
{
	return add_size(offsetof(EsDirectory, dboid),
					mul_size(es_max_databases, sizeof(Oid)));
}

void
EsDirectoryRequestLocks(void)
{
	RequestNamedLWLockTranche("event_store directory", 1);
}

/* Create or attach the directory; caller holds AddinShmemInitLock */
void
EsDirectoryShmemInit(void)
{
	bool		found;

	es_directory = ShmemInitStruct("event_store directory", EsDirectoryShmemSize(), &found);
	if (!found)
	{
		es_directory->max_databases = es_max_databases;
		es_directory->full_logged = false;
		for (int i = 0; i < es_max_databases; i++)
			es_directory->dboid[i] = InvalidOid;
	}
	es_directory_lock = &GetNamedLWLockTranche("event_store directory")[0].lock;
}

/*
 * A subsystem's reset of its part of entry i, run (under the directory
 * lock) when the entry is handed to a database.  Registered while shared
 * memory is requested, so every process has the same list.
 */
void
EsOnEntryReuse(EsEntryReset reset)
{
	if (n_entry_resets >= ES_MAX_ENTRY_RESETS)
		elog(ERROR, "too many event_store entry resets");
	entry_resets[n_entry_resets++] = reset;
}

/*
 * Raise the "not preloaded" error unless our shared memory is there.  Every
 * entry point that needs shared memory calls this first.
 */
void
EsCheckPreloaded(void)
{
	if (es_directory == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("event_store must be loaded via shared_preload_libraries"),
				 errdetail("The extension keeps the global position horizon in shared memory, which is only available to a preloaded library."),
				 errhint("Add event_store to shared_preload_libraries in postgresql.conf and restart the server.")));
}

PG_FUNCTION_INFO_V1(es_assert_preloaded);

/* SQL: event_store._assert_preloaded(), called by the install script */
Datum
es_assert_preloaded(PG_FUNCTION_ARGS)
{
	EsCheckPreloaded();
	PG_RETURN_VOID();
}

/*
 * Entry of database dboid, taking a free one (or, with free_dropped, one of
 * a dropped database: that needs the catalogs)
 */
static int
es_find_entry_of(Oid dboid, bool free_dropped)
{
	int			entry = -1;

	for (int attempt = 0; attempt < (free_dropped ? 2 : 1) && entry < 0; attempt++)
	{
		LWLockAcquire(es_directory_lock, LW_EXCLUSIVE);
		for (int i = 0; i < es_directory->max_databases; i++)
		{
			if (es_directory->dboid[i] == dboid)
			{
				entry = i;
				break;
			}
		}
		for (int i = 0; entry < 0 && i < es_directory->max_databases; i++)
		{
			if (es_directory->dboid[i] == InvalidOid)
			{
				es_directory->dboid[i] = dboid;
				for (int r = 0; r < n_entry_resets; r++)
					entry_resets[r] (i);
				entry = i;
			}
		}
		LWLockRelease(es_directory_lock);

		if (entry < 0 && attempt == 0)
		{
			/* full: free the entries of dropped databases, then retry */
			for (int i = 0; i < es_directory->max_databases; i++)
			{
				Oid			dboid = es_directory->dboid[i];

				if (OidIsValid(dboid) &&
					!SearchSysCacheExists1(DATABASEOID, ObjectIdGetDatum(dboid)))
				{
					LWLockAcquire(es_directory_lock, LW_EXCLUSIVE);
					if (es_directory->dboid[i] == dboid)
						es_directory->dboid[i] = InvalidOid;
					LWLockRelease(es_directory_lock);
				}
			}
		}
	}
	return entry;
}

static int
es_find_entry(void)
{
	return es_find_entry_of(MyDatabaseId, true);
}

/*
 * The entry number of database dboid, for a process that is not connected
 * to it (the startup process replaying WAL on a standby); -1 when every
 * entry is taken.
 */
int
EsEntryOf(Oid dboid)
{
	if (es_directory == NULL)
		return -1;
	/* called for every record replayed: look without the exclusive lock first */
	LWLockAcquire(es_directory_lock, LW_SHARED);
	for (int i = 0; i < es_directory->max_databases; i++)
	{
		if (es_directory->dboid[i] == dboid)
		{
			LWLockRelease(es_directory_lock);
			return i;
		}
	}
	LWLockRelease(es_directory_lock);
	return es_find_entry_of(dboid, false);
}

/* This database's entry number; an error when every entry is taken */
int
EsMyEntry(void)
{
	if (my_entry >= 0)
		return my_entry;
	EsCheckPreloaded();
	my_entry = es_find_entry();
	if (my_entry < 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many databases use event_store"),
				 errdetail("All %d shared memory entries are taken.", es_directory->max_databases),
				 errhint("Increase event_store.max_databases and restart the server.")));
	return my_entry;
}

/*
 * Worker: take this database's entry; false when event_store.max_databases
 * is reached, which the first worker to find so logs.
 */
bool
EsTryMyEntry(void)
{
	bool		first;

	if (my_entry >= 0)
		return true;
	EsCheckPreloaded();
	my_entry = es_find_entry();
	if (my_entry >= 0)
		return true;
	LWLockAcquire(es_directory_lock, LW_EXCLUSIVE);
	first = !es_directory->full_logged;
	es_directory->full_logged = true;
	LWLockRelease(es_directory_lock);
	if (first)
		ereport(LOG,
				(errmsg("event_store.max_databases (%d) is reached: database \"%s\" gets no event_store worker",
						es_directory->max_databases, get_database_name(MyDatabaseId)),
				 errdetail("Every database that uses event_store takes one of the event_store.max_databases entries in shared memory; appends there fail until one is free."),
				 errhint("Increase event_store.max_databases and restart the server.")));
	return false;
}
