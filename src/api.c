/*
 * api.c
 *	  What every SQL-callable function checks first: that the library was
 *	  preloaded, that the server and transaction may write (for the writers),
 *	  and its arguments -- required (non-NULL) arguments, non-empty text,
 *	  stream ids, text arrays, categories -- with class-22 errors.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "api.h"
#include "catalog.h"

PG_FUNCTION_INFO_V1(es_check_name_length);

/* Raise the class-22 error for a NULL required argument */
void
EsRequireArg(FunctionCallInfo fcinfo, int argno, const char *name)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", name)));
}

/* Error out when a numeric argument is negative (hint: what to pass instead) */
void
EsRejectNegative(int64 value, const char *name, const char *hint)
{
	if (value < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", name),
				 errdetail("Got " INT64_FORMAT ".", value),
				 hint ? errhint("%s", hint) : 0));
}

/* A required text argument: not NULL, not empty */
text *
EsGetRequiredText(FunctionCallInfo fcinfo, int argno, const char *name)
{
	text	   *t;

	EsRequireArg(fcinfo, argno, name);
	t = PG_GETARG_TEXT_PP(argno);
	if (VARSIZE_ANY_EXHDR(t) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name)));
	EsCheckNameLength(name, VARSIZE_ANY_EXHDR(t));
	return t;
}

/*
 * Stream ids, names, event types and categories are keys of btree indexes:
 * raise 22001 when one (what names it) is longer than ES_MAX_NAME_BYTES
 */
void
EsCheckNameLength(const char *what, int len)
{
	if (len > ES_MAX_NAME_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
				 errmsg("%s is too long", what),
				 errdetail("It has %d bytes; the maximum is %d.", len, ES_MAX_NAME_BYTES)));
}

/*
 * SQL: event_store._check_name_length(name text, what text) -- the same
 * check for the names the SQL-language functions take (a NULL name passes:
 * they check for NULL with their own messages)
 */
Datum
es_check_name_length(PG_FUNCTION_ARGS)
{
	EsRequireArg(fcinfo, 1, "what");
	if (!PG_ARGISNULL(0))
		EsCheckNameLength(text_to_cstring(PG_GETARG_TEXT_PP(1)),
						  VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * A stream id argument: a required text whose category (the part before
 * the first "-") is not empty, for no grant could ever name that category.
 */
text *
EsGetStreamId(FunctionCallInfo fcinfo, int argno)
{
	text	   *stream_id = EsGetRequiredText(fcinfo, argno, "stream_id");

	if (*VARDATA_ANY(stream_id) == '-')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("stream id \"%s\" has an empty category", text_to_cstring(stream_id)),
				 errdetail("A stream's category is the part of its id before the first \"-\"."),
				 errhint("Start the stream id with its category, as in \"order-42\".")));
	return stream_id;
}

/*
 * The elements of a one-dimensional text[] argument (which must not be
 * NULL); the caller checks the elements.
 */
int
EsArgTextArray(FunctionCallInfo fcinfo, int argno, const char *name,
			   Datum **elems, bool **nulls)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(argno);
	int			n;

	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("%s must be a one-dimensional array", name)));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, elems, nulls, &n);
	return n;
}

/* Length of the category part of a stream id: up to its first "-", or all */
int
EsCategoryLen(text *stream_id)
{
	const char *s = VARDATA_ANY(stream_id);
	int			len = VARSIZE_ANY_EXHDR(stream_id);
	const char *dash = memchr(s, '-', len);

	return dash ? (int) (dash - s) : len;
}

/* A category names the part of stream ids before the first "-": no "-" in it */
void
EsCheckCategory(text *category, const char *hint)
{
	if (memchr(VARDATA_ANY(category), '-', VARSIZE_ANY_EXHDR(category)) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("category \"%s\" contains \"-\"", text_to_cstring(category)),
				 errdetail("A stream's category is the part of its id before the first \"-\"."),
				 hint ? errhint("%s", hint) : 0));
}

/*
 * Refuse, before doing anything, to change state on a hot standby or in a
 * read-only transaction (25006, as an INSERT would); what names the
 * function ("append()").  Every entry point that writes calls this first.
 */
void
EsCheckWritable(const char *what)
{
	PreventCommandDuringRecovery(what);
	PreventCommandIfReadOnly(what);
}

PG_FUNCTION_INFO_V1(es_check_writable);

/* SQL: event_store._check_writable(what text), for the SQL-language writers */
Datum
es_check_writable(PG_FUNCTION_ARGS)
{
	EsCheckWritable(PG_ARGISNULL(0) ? "this function" : text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/* Decode a text[] filter column/argument into an EsTypeFilter-like list */
int
EsDecodeTextArray(Datum arr_datum, bool isnull, text ***out)
{
	ArrayType  *arr;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (isnull)
	{
		*out = NULL;
		return -1;
	}
	arr = DatumGetArrayTypeP(arr_datum);
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	*out = palloc(sizeof(text *) * Max(n, 1));
	for (int i = 0; i < n; i++)
		(*out)[i] = DatumGetTextPCopy(elems[i]);
	return n;
}

/* Validate a text[] filter argument */
void
EsCheckFilterArg(FunctionCallInfo fcinfo, int argno, const char *name, bool categories)
{
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	if (PG_ARGISNULL(argno))
		return;
	n = EsArgTextArray(fcinfo, argno, name, &elems, &nulls);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", name),
				 errhint("Pass NULL to accept every value.")));
	for (int i = 0; i < n; i++)
	{
		text	   *t;

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not contain nulls", name)));
		t = DatumGetTextPP(elems[i]);
		if (VARSIZE_ANY_EXHDR(t) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s must not contain empty strings", name)));
		if (categories)
			EsCheckCategory(t, NULL);
	}
}

/*
 * An interval argument in milliseconds (months count as 30 days, as when
 * intervals are compared), as a double: no overflow for any interval.
 * NULL is refused (22004); so is a negative one, or unless positive_only a
 * zero one (22023).
 */
double
EsIntervalArgMs(FunctionCallInfo fcinfo, int argno, const char *name, bool positive_only)
{
	Interval   *iv;
	double		ms;

	EsRequireArg(fcinfo, argno, name);
	iv = PG_GETARG_INTERVAL_P(argno);
	ms = (double) iv->time / 1000.0 +
		((double) iv->day + (double) iv->month * DAYS_PER_MONTH) *
		(double) (SECS_PER_DAY * 1000);
	if (ms < 0 || (positive_only && ms <= 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg(positive_only ? "%s must be a positive interval" : "%s must not be negative",
						name)));
	return ms;
}
