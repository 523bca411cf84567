/*
 * registry.h
 *	  Per-backend caches of the registries, the text-keyed hash tables they
 *	  use, and SPI plans kept for the backend's lifetime.
 */
#ifndef ES_REGISTRY_H
#define ES_REGISTRY_H

#include "executor/spi.h"
#include "fmgr.h"
#include "utils/hsearch.h"

/* A registry's cache; declare one statically as {"table", calls_functions} */
typedef struct EsRegistry
{
	const char *relname;		/* table in schema event_store */
	bool		calls_functions;	/* caches user functions: reload when any
									 * function changes */
	Oid			relid;
	bool		valid;
	bool		registered;
	MemoryContext cxt;			/* the cache's memory */
	int			depth;			/* calls into cached functions in progress */
	struct List *retired;		/* old contexts still used by those calls */
} EsRegistry;

extern bool EsRegistryNeedsReload(EsRegistry *reg);
extern void EsRegistryChanged(EsRegistry *reg);
extern void EsRegistryEnsure(EsRegistry *reg, void (*load) (void));
extern MemoryContext EsRegistryNewContext(EsRegistry *reg);
extern Datum EsRegistryCall(EsRegistry *reg, FunctionCallInfo fcinfo);
extern bool EsFunctionExists(Oid fn);
extern SPIPlanPtr EsPrepareKeptPlan(const char *sql, int nargs, Oid *argtypes);
extern SPIPlanPtr EsKeptStatementPlan(const char *sql, int nargs, Oid *argtypes);

/*
 * The hash tables of the registries' caches, keyed by a string (an event
 * type, a category) and a number (a schema version, or 0), compared in
 * full.  Every entry begins with its EsTextKey; the string it points to
 * must live as long as the table (the registry's memory context).
 */
typedef struct EsTextKey
{
	const char *str;
	int			len;
	int32		num;
} EsTextKey;

extern HTAB *EsTextHashCreate(const char *name, Size entrysize, MemoryContext cxt);
extern void *EsTextHashFind(HTAB *hash, const char *str, int len, int32 num);
extern void *EsTextHashEnter(HTAB *hash, const char *str, int len, int32 num,
							 bool *found);

#endif							/* ES_REGISTRY_H */
