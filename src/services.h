/*
 * services.h
 *	  Services in separate databases: publications of categories (the
 *	  producer's side) and imports of them (the consumer's side).
 */
#ifndef ES_SERVICES_H
#define ES_SERVICES_H

#include "postgres.h"

extern bool EsCategoryImported(const char *category, int len);
extern Size EsImportShmemSize(void);
extern void EsImportShmemInit(void);

#endif							/* ES_SERVICES_H */
