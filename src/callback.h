/*
 * callback.h
 *	  User callbacks: checks, registrations, calls, and the one backoff
 *	  rule of everything that is retried.
 */
#ifndef ES_CALLBACK_H
#define ES_CALLBACK_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"

#include "registry.h"
#include "roles.h"

extern HeapTuple EsSearchProc(Oid fn);
extern void EsCheckCallbackSignature(Oid fn, const char *role, int nargs,
									 const Oid *argtypes, Oid rettype,
									 const char *expected);
extern void EsCheckCallbackOwner(Oid fn, Oid role, const char *what);
extern Oid	EsRegistrant(Oid owner);
extern Datum EsCallAs(EsRegistry *reg, FunctionCallInfo fcinfo, Oid role,
					  const char *search_path);

/* what registrations record: the registrant and its search_path */
extern const char *EsOwnerColumns(void);
extern void EsRegistrantOf(HeapTuple tup, TupleDesc desc, int attno, Oid *role,
						   const char **search_path);
extern char *EsRegistrationSearchPath(void);

/* SQL fragments of a registration's registrant columns (EsRegistrantSql) */
typedef struct EsRegistrantInsert
{
	const char *columns;		/* ", owner, search_path" */
	const char *params;			/* ", $n::pg_catalog.regrole, $n+1" */
	const char *updates;		/* ", owner = EXCLUDED.owner, ..." */
	int			nparams;
} EsRegistrantInsert;

extern void EsRegistrantSql(int param, EsRegistrantInsert *sql);
extern void EsCheckMayChange(EsUserSwitch *sw, Oid owner, const char *what);
extern bool EsLockRegistration(EsUserSwitch *sw, const char *sql, int nargs,
							   Oid *types, Datum *values, const char *what);

/* the backoff of every retry (see EsBackoffMs) */
#define ES_BACKOFF_MIN_MS		10	/* a smaller base counts as this */
#define ES_BACKOFF_CAP_FACTOR	300 /* a wait grows to at most 300 x its base */
/* a larger base counts as this (100 years: define_saga's largest interval) */
#define ES_BACKOFF_MAX_BASE_MS	(INT64CONST(100) * 366 * 24 * 3600 * 1000)
/* the base of the worker's units' and the async projections' retries */
#define ES_RETRY_BASE_MS		1000

extern int64 EsBackoffMs(int64 base_ms, int32 attempts, bool jitter);

#endif							/* ES_CALLBACK_H */
