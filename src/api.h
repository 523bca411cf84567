/*
 * api.h
 *	  What every SQL-callable function checks first: writability and its
 *	  arguments.
 */
#ifndef ES_API_H
#define ES_API_H

#include "fmgr.h"

extern void EsCheckWritable(const char *what);
extern void EsRequireArg(FunctionCallInfo fcinfo, int argno, const char *name);
extern void EsRejectNegative(int64 value, const char *name, const char *hint);
extern text *EsGetRequiredText(FunctionCallInfo fcinfo, int argno,
							   const char *name);
extern void EsCheckNameLength(const char *what, int len);
extern text *EsGetStreamId(FunctionCallInfo fcinfo, int argno);
extern int	EsArgTextArray(FunctionCallInfo fcinfo, int argno, const char *name,
						   Datum **elems, bool **nulls);
extern void EsCheckCategory(text *category, const char *hint);
extern void EsCheckFilterArg(FunctionCallInfo fcinfo, int argno, const char *name,
							 bool categories);
extern int	EsDecodeTextArray(Datum arr_datum, bool isnull, text ***out);
extern double EsIntervalArgMs(FunctionCallInfo fcinfo, int argno, const char *name,
							  bool positive_only);
extern int	EsCategoryLen(text *stream_id);

/* Is text t the len bytes at s? */
static inline bool
EsTextIs(text *t, const char *s, int len)
{
	return VARSIZE_ANY_EXHDR(t) == len && memcmp(VARDATA_ANY(t), s, len) == 0;
}

#endif							/* ES_API_H */
