/*
 * grants.h
 *	  Category grants: who may append to and read which categories.
 */
#ifndef ES_GRANTS_H
#define ES_GRANTS_H

#define ES_PRIV_APPEND	1
#define ES_PRIV_READ	2

/* Categories a role may not read (or append to), for filtering scans */
typedef struct EsDeniedSet
{
	int			n;
	text	  **categories;
} EsDeniedSet;

extern bool EsCategoryGrantsExist(void);
extern bool EsCategoryHasGrants(const char *category, int len);
extern int	EsGrantedCategories(text ***categories);
extern void EsCheckStreamAccess(text *stream_id, int priv);
extern bool EsRoleMayAccessStream(Oid role, text *stream_id, int priv);
extern EsDeniedSet *EsDeniedCategories(Oid role);
extern EsDeniedSet *EsDeniedCategoriesFor(Oid role, int privs);
extern bool EsStreamDenied(const EsDeniedSet *set, text *stream_id);
extern void EsPrivilegesHintInit(void);

#endif							/* ES_GRANTS_H */
