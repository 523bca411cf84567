/*
 * roles.h
 *	  Acting as the extension's owner, or as a callback's registrant.
 */
#ifndef ES_ROLES_H
#define ES_ROLES_H

/* What EsRestoreUser restores */
typedef struct EsUserSwitch
{
	Oid			save_userid;
	int			save_sec_context;
	int			guc_level;		/* -1: no GUC nest level was opened */
	bool		callback;		/* made by EsBecomeRole */
} EsUserSwitch;

/* event_store.allow_purge: off inside every callback */
extern bool es_allow_purge;

extern Oid	EsExtensionOwner(void);
extern void EsBecomeOwner(EsUserSwitch *sw);
extern void EsBecomeRole(EsUserSwitch *sw, Oid role, const char *search_path);
extern void EsRestoreUser(EsUserSwitch *sw);
extern void EsSpiConnect(EsUserSwitch *sw);
extern void EsSpiFinish(EsUserSwitch *sw);
extern char *EsPinSearchPath(const char *path);
extern const char *EsRoleName(Oid role);

extern int	EsCallbackScopeBegin(void);
extern void EsCallbackScopeEnd(int level);
extern void EsCallbackScopeAbandon(void);
extern int	EsCallbackScopeDepth(void);
extern void EsCallbackScopeUnwind(int depth);

#endif							/* ES_ROLES_H */
