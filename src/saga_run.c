/*
 * saga_run.c
 *	  The saga orchestrator's step loop: event_store._saga_advance runs what
 *	  is ready in a saga -- the pending steps of its current group, the
 *	  compensations of its current group in reverse, its end -- until
 *	  nothing moves any more.  Local steps and local compensations are
 *	  called here, directly, as the saga type's registrant with its pinned
 *	  search_path (EsCallAs), each in a subtransaction: an error of the
 *	  function is a failed attempt.  A step's completion and the saga's
 *	  transitions in the loop are written here too, and appended to the
 *	  saga's stream saga-<saga_id> with EsAppendEvent.
 *
 *	  The rarer transitions -- a failed attempt and its retry, the saga
 *	  failing and cancelling what runs, a nested saga starting or ending, a
 *	  child compensating -- stay readable PL/pgSQL in the install script
 *	  (sql/install/72_sagas_transitions.sql), called from here through SPI
 *	  with kept plans; they call back into _saga_advance and _saga_event.
 *
 *	  Everything runs as the extension owner (EsSpiConnect), every name in
 *	  the SQL schema-qualified; the caller holds no lock: the loop locks the
 *	  saga's row FOR UPDATE in every round.
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "activity.h"
#include "api.h"
#include "append.h"
#include "callback.h"
#include "locks.h"
#include "registry.h"
#include "roles.h"
#include "saga.h"

PG_FUNCTION_INFO_V1(es_saga_advance);
PG_FUNCTION_INFO_V1(es_saga_step_done);
PG_FUNCTION_INFO_V1(es_saga_event);
PG_FUNCTION_INFO_V1(es_saga_wake_worker);
PG_FUNCTION_INFO_V1(es_saga_lock_slot);
PG_FUNCTION_INFO_V1(es_saga_timer_due);
PG_FUNCTION_INFO_V1(es_complete_saga_step);

/* ------------------------------------------------------------------------
 * The statements of the step loop, prepared once and kept
 * ------------------------------------------------------------------------ */

typedef enum EsSagaStmtId
{
	SAGA_LOCK,					/* the saga, locked */
	SAGA_STATE,					/* its status and data, again */
	SAGA_COMPLETED,
	SAGA_COMPENSATED,
	STEPS_NEXT_GROUP,			/* the group that runs next */
	STEPS_READY,				/* its steps that are due */
	STEPS_COMP_GROUP,			/* the group that compensates next */
	STEPS_COMP_READY,			/* its steps that are due */
	STEP_READ,
	STEP_START,
	STEP_KEEP_RESULT,			/* a local step that waits for its event */
	STEP_DONE,
	STEP_NEW_CHILD,				/* a nested step's child saga id */
	STEP_COMPENSATING,
	STEP_COMPENSATED,
	STEP_COMP_ATTEMPT,
	CALL_STEP_FAILED,
	CALL_COMP_FAILED,
	CALL_SAGA_START,
	CALL_COMPENSATE_CHILD,
	CALL_CHILD_FINISHED,
	CALL_TIMER_START,
	CALL_TAKE_SLOT,
	CALL_CIRCUIT_GATE,
	CALL_CIRCUIT_OK,
	SAGA_PARENT,				/* the saga's parent (none: locked alone) */
	SAGA_LOCK_ALONE,
	CALL_LOCK_TREE,
	TIMER_STILL_DUE,
	STEP_TO_REPORT,				/* a step a worker reports on, and its saga's status */
	STEP_EXT_COMPENSATED,
	SAGA_NSTMTS
} EsSagaStmtId;

typedef struct EsSagaStmt
{
	const char *sql;
	int			nargs;
	Oid			argtypes[5];
	SPIPlanPtr	plan;
} EsSagaStmt;

#define EQ " OPERATOR(pg_catalog.=) "
#define NOW "pg_catalog.now()"

/* $1 is always the saga's id; a step is $2 (step_no, or name for STEP_DONE) */
static EsSagaStmt saga_stmts[SAGA_NSTMTS] = {
	[SAGA_LOCK] = {
		"SELECT saga_type, status, data, last_error, parent_saga_id, parent_step "
		"FROM event_store.sagas WHERE saga_id" EQ "$1 FOR UPDATE",
	1, {UUIDOID}},
	[SAGA_STATE] = {
		"SELECT status, data FROM event_store.sagas WHERE saga_id" EQ "$1",
	1, {UUIDOID}},
	[SAGA_COMPLETED] = {
		"UPDATE event_store.sagas SET status = 'completed', finished_at = " NOW ", "
		"deadline = NULL, updated_at = " NOW " WHERE saga_id" EQ "$1",
	1, {UUIDOID}},
	[SAGA_COMPENSATED] = {
		"UPDATE event_store.sagas SET status = 'compensated', finished_at = " NOW ", "
		"updated_at = " NOW " WHERE saga_id" EQ "$1",
	1, {UUIDOID}},
	[STEPS_NEXT_GROUP] = {
		"SELECT pg_catalog.min(grp) FROM event_store.saga_steps "
		"WHERE saga_id" EQ "$1 AND status OPERATOR(pg_catalog.<>) 'completed'",
	1, {UUIDOID}},
	[STEPS_READY] = {
		"SELECT step_no FROM event_store.saga_steps "
		"WHERE saga_id" EQ "$1 AND grp" EQ "$2 AND status" EQ "'pending' "
		"AND (next_attempt_at IS NULL OR next_attempt_at OPERATOR(pg_catalog.<=) " NOW ") "
		"ORDER BY step_no",
	2, {UUIDOID, INT4OID}},
	[STEPS_COMP_GROUP] = {
		"SELECT pg_catalog.max(grp) FROM event_store.saga_steps "
		"WHERE saga_id" EQ "$1 AND status IN ('completed', 'compensating')",
	1, {UUIDOID}},
	[STEPS_COMP_READY] = {
		"SELECT step_no FROM event_store.saga_steps "
		"WHERE saga_id" EQ "$1 AND grp" EQ "$2 "
		"AND (status" EQ "'completed' "
		"OR (status" EQ "'compensating' AND comp_kind" EQ "'local' "
		"AND (next_attempt_at IS NULL OR next_attempt_at OPERATOR(pg_catalog.<=) " NOW "))) "
		"ORDER BY step_no DESC",
	2, {UUIDOID, INT4OID}},
	[STEP_READ] = {
		"SELECT name, status, kind, action::pg_catalog.oid, compensation::pg_catalog.oid, "
		"comp_kind, complete_on IS NOT NULL, child_type, child_saga_id, result, "
		"concurrency IS NOT NULL, circuit_failures IS NOT NULL, "
		"(pg_catalog.date_part('epoch', comp_timeout) OPERATOR(pg_catalog.*) "
		"1000::pg_catalog.float8)::pg_catalog.int8 "
		"FROM event_store.saga_steps WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	2, {UUIDOID, INT4OID}},
	[STEP_START] = {
		"UPDATE event_store.saga_steps SET status = 'running', next_attempt_at = NULL, "
		"updated_at = " NOW ", "
		"attempts = attempts OPERATOR(pg_catalog.+) "
		"CASE WHEN kind IN ('local', 'nested', 'event') THEN 1 ELSE 0 END, "
		"deadline = CASE WHEN timeout IS NULL THEN NULL "
		"ELSE " NOW " OPERATOR(pg_catalog.+) timeout END "
		"WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	2, {UUIDOID, INT4OID}},
	[STEP_KEEP_RESULT] = {
		"UPDATE event_store.saga_steps SET result = $3, updated_at = " NOW " "
		"WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	3, {UUIDOID, INT4OID, JSONBOID}},
	/* the step is completed, and its result merged into the saga's data */
	[STEP_DONE] = {
		"WITH step AS ("
		"UPDATE event_store.saga_steps SET status = 'completed', result = $3, "
		"lease_owner = NULL, lease_expires_at = NULL, deadline = NULL, "
		"next_attempt_at = NULL, updated_at = " NOW " "
		"WHERE saga_id" EQ "$1 AND name" EQ "$2 RETURNING circuit_failures) "
		"UPDATE event_store.sagas SET data = CASE "
		"WHEN pg_catalog.jsonb_typeof($3)" EQ "'object' THEN data OPERATOR(pg_catalog.||) $3 "
		"ELSE data END, updated_at = " NOW " WHERE saga_id" EQ "$1 "
		"RETURNING (SELECT circuit_failures IS NOT NULL FROM step)",
	3, {UUIDOID, TEXTOID, JSONBOID}},
	[STEP_NEW_CHILD] = {
		"UPDATE event_store.saga_steps SET child_saga_id = pg_catalog.gen_random_uuid() "
		"WHERE saga_id" EQ "$1 AND step_no" EQ "$2 RETURNING child_saga_id",
	2, {UUIDOID, INT4OID}},
	[STEP_COMPENSATING] = {
		"UPDATE event_store.saga_steps SET status = 'compensating', updated_at = " NOW " "
		"WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	2, {UUIDOID, INT4OID}},
	[STEP_COMPENSATED] = {
		"UPDATE event_store.saga_steps SET status = 'compensated', updated_at = " NOW " "
		"WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	2, {UUIDOID, INT4OID}},
	[STEP_COMP_ATTEMPT] = {
		"UPDATE event_store.saga_steps SET comp_attempts = comp_attempts OPERATOR(pg_catalog.+) 1, "
		"next_attempt_at = NULL WHERE saga_id" EQ "$1 AND step_no" EQ "$2",
	2, {UUIDOID, INT4OID}},
	/* the transitions written in PL/pgSQL */
	[CALL_STEP_FAILED] = {
		"SELECT event_store._saga_step_failed($1, $2, $3, true)",
	3, {UUIDOID, TEXTOID, TEXTOID}},
	[CALL_COMP_FAILED] = {
		"SELECT event_store._saga_comp_failed($1, $2, $3, true)",
	3, {UUIDOID, TEXTOID, TEXTOID}},
	[CALL_SAGA_START] = {
		"SELECT event_store._saga_start($2, $3, $4, $1, $5)",
	5, {UUIDOID, TEXTOID, JSONBOID, UUIDOID, TEXTOID}},
	[CALL_COMPENSATE_CHILD] = {
		"SELECT event_store._saga_compensate_child($1)",
	1, {UUIDOID}},
	[CALL_CHILD_FINISHED] = {
		"SELECT event_store._saga_child_finished($1, $2, $3)",
	3, {UUIDOID, TEXTOID, UUIDOID}},
	[CALL_TIMER_START] = {
		"SELECT event_store._saga_timer_start($1, $2, $3)",
	3, {UUIDOID, INT4OID, JSONBOID}},
	[CALL_TAKE_SLOT] = {
		"SELECT event_store._saga_take_slot($1, $2)",
	2, {UUIDOID, INT4OID}},
	[CALL_CIRCUIT_GATE] = {
		"SELECT event_store._saga_circuit_gate($1, $2)",
	2, {UUIDOID, INT4OID}},
	[CALL_CIRCUIT_OK] = {
		"SELECT event_store._saga_circuit_result($1, $2, true)",
	2, {UUIDOID, TEXTOID}},
	/* a timer step (saga_tick) */
	[SAGA_PARENT] = {
		"SELECT parent_saga_id FROM event_store.sagas WHERE saga_id" EQ "$1",
	1, {UUIDOID}},
	[SAGA_LOCK_ALONE] = {
		"SELECT FROM event_store.sagas WHERE saga_id" EQ "$1 FOR UPDATE",
	1, {UUIDOID}},
	[CALL_LOCK_TREE] = {
		"SELECT event_store._saga_lock_tree($1)",
	1, {UUIDOID}},
	/* (by the step's key only: no plan can scan the due timers for it) */
	[TIMER_STILL_DUE] = {
		"SELECT st.status" EQ "'running' AND st.due_at OPERATOR(pg_catalog.<=) " NOW " "
		"AND s.status" EQ "'running' "
		"FROM event_store.saga_steps st, event_store.sagas s "
		"WHERE st.saga_id" EQ "$1 AND st.name" EQ "$2 AND s.saga_id" EQ "$1",
	2, {UUIDOID, TEXTOID}},
	[STEP_TO_REPORT] = {
		"SELECT st.status, st.kind, st.comp_kind, s.status "
		"FROM event_store.saga_steps st, event_store.sagas s "
		"WHERE st.saga_id" EQ "$1 AND st.name" EQ "$2 AND s.saga_id" EQ "$1",
	2, {UUIDOID, TEXTOID}},
	[STEP_EXT_COMPENSATED] = {
		"UPDATE event_store.saga_steps SET status = 'compensated', lease_owner = NULL, "
		"lease_expires_at = NULL, deadline = NULL, updated_at = " NOW " "
		"WHERE saga_id" EQ "$1 AND name" EQ "$2",
	2, {UUIDOID, TEXTOID}},
};

/*
 * Run one of the statements (values[i] NULL where isnull[i]); returns
 * SPI_processed.  Caller is connected to SPI.
 */
static uint64
es_saga_exec(EsSagaStmtId id, Datum *values, const bool *isnull)
{
	EsSagaStmt *stmt = &saga_stmts[id];
	char		nulls[5];
	int			rc;

	if (stmt->plan == NULL)
		stmt->plan = EsPrepareKeptPlan(stmt->sql, stmt->nargs, stmt->argtypes);
	for (int i = 0; i < stmt->nargs; i++)
		nulls[i] = (isnull != NULL && isnull[i]) ? 'n' : ' ';
	rc = SPI_execute_plan(stmt->plan, values, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "saga statement failed: %s: %s", SPI_result_code_string(rc), stmt->sql);
	return SPI_processed;
}

/* Column attno of row 0 of the last result as text (palloc'd), or NULL */
static char *
es_result_text(int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, attno, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/* Column attno of row 0 of the last result as jsonb (palloc'd), or NULL */
static Jsonb *
es_result_jsonb(int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, attno, &isnull);

	return isnull ? NULL : DatumGetJsonbPCopy(d);
}

/* Column attno of row 0 of the last result as an int4 (false when NULL) */
static bool
es_result_int(int attno, int32 *value)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, attno, &isnull);

	if (!isnull)
		*value = DatumGetInt32(d);
	return !isnull;
}

/* Column attno of row 0 of the last result as a uuid (false when NULL) */
static bool
es_result_uuid(int attno, pg_uuid_t *value)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, attno, &isnull);

	if (!isnull)
		*value = *DatumGetUUIDP(d);
	return !isnull;
}

static bool es_saga_lock(Datum *key);

/* ------------------------------------------------------------------------
 * The saga's events
 * ------------------------------------------------------------------------ */

/* Add "key": text (null for NULL) to the object being built */
static void
es_json_text(JsonbParseState **state, const char *key, const char *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, key);
	v.val.string.len = strlen(key);
	(void) pushJsonbValue(state, WJB_KEY, &v);
	if (value == NULL)
		v.type = jbvNull;
	else
	{
		v.val.string.val = unconstify(char *, value);
		v.val.string.len = strlen(value);
	}
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/* Add "key": jsonb value (null for NULL) to the object being built */
static void
es_json_value(JsonbParseState **state, const char *key, Jsonb *value)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = unconstify(char *, key);
	v.val.string.len = strlen(key);
	(void) pushJsonbValue(state, WJB_KEY, &v);
	if (value == NULL)
		v.type = jbvNull;
	else if (JB_ROOT_IS_SCALAR(value))
		(void) JsonbExtractScalar(&value->root, &v);
	else
	{
		v.type = jbvBinary;
		v.val.binary.data = &value->root;
		v.val.binary.len = VARSIZE(value) - VARHDRSZ;
	}
	(void) pushJsonbValue(state, WJB_VALUE, &v);
}

/* The text form of a uuid (palloc'd) */
static char *
es_uuid_text(pg_uuid_t *id)
{
	return DatumGetCString(DirectFunctionCall1(uuid_out, UUIDPGetDatum(id)));
}

/* The stream of a saga's transitions: saga-<saga_id> */
static text *
es_saga_stream(pg_uuid_t *saga_id)
{
	return cstring_to_text(psprintf("saga-%s", es_uuid_text(saga_id)));
}

/* ------------------------------------------------------------------------
 * Correlation: every event a saga writes carries the metadata
 * {"correlationId": <saga id>, "causationId": <id of the event that caused
 * it>}.  Within a transaction, the cause of a saga's transitions is the
 * event that moved it last: its SagaStarted (whose own cause, for a nested
 * saga, is its parent's), the event of another stream that completed or
 * failed one of its steps (EsSagaSetCause: it is the cause of that step's
 * SagaStepCompleted or SagaStepFailed and of what follows them), else its
 * latest SagaStepCompleted, SagaStepFailed or SagaTimedOut.  A transaction
 * starts without causes (a step completed by complete_saga_step has none);
 * a rolled back subtransaction takes back the causes it set.
 * ------------------------------------------------------------------------ */

#define ES_SAGA_MAX_CAUSES 16

typedef struct EsSagaCause
{
	pg_uuid_t	saga_id;
	pg_uuid_t	event_id;
	bool		external;		/* an event of another stream */
	SubTransactionId subid;		/* set in this subtransaction */
} EsSagaCause;

static EsSagaCause saga_causes[ES_SAGA_MAX_CAUSES];
static int	saga_ncauses = 0;
static bool saga_cause_callbacks = false;

static void
es_saga_causes_xact(XactEvent event, void *arg)
{
	saga_ncauses = 0;
}

static void
es_saga_causes_subxact(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			n = 0;

	if (event != SUBXACT_EVENT_ABORT_SUB)
		return;
	for (int i = 0; i < saga_ncauses; i++)
		if (saga_causes[i].subid < mySubid)
			saga_causes[n++] = saga_causes[i];
	saga_ncauses = n;
}

static EsSagaCause *
es_saga_cause(const pg_uuid_t *saga_id)
{
	for (int i = 0; i < saga_ncauses; i++)
		if (memcmp(saga_causes[i].saga_id.data, saga_id->data, UUID_LEN) == 0)
			return &saga_causes[i];
	return NULL;
}

/* The event event_id causes what saga_id writes next in this transaction */
void
EsSagaSetCause(const pg_uuid_t *saga_id, const pg_uuid_t *event_id, bool external)
{
	EsSagaCause *c = es_saga_cause(saga_id);

	if (!saga_cause_callbacks)
	{
		RegisterXactCallback(es_saga_causes_xact, NULL);
		RegisterSubXactCallback(es_saga_causes_subxact, NULL);
		saga_cause_callbacks = true;
	}
	if (c == NULL)
	{
		/* full: forget the oldest */
		if (saga_ncauses == ES_SAGA_MAX_CAUSES)
		{
			memmove(&saga_causes[0], &saga_causes[1],
					sizeof(EsSagaCause) * (ES_SAGA_MAX_CAUSES - 1));
			saga_ncauses--;
		}
		c = &saga_causes[saga_ncauses++];
		c->saga_id = *saga_id;
	}
	c->event_id = *event_id;
	c->external = external;
	c->subid = GetCurrentSubTransactionId();
}

/*
 * Append an event of the saga to its stream saga-<saga_id>, stamped with
 * the saga's correlation (see above)
 */
static void
es_saga_append(pg_uuid_t *saga_id, text *type, Jsonb *data)
{
	JsonbParseState *state = NULL;
	JsonbValue *obj;
	EsSagaCause *cause = es_saga_cause(saga_id);
	pg_uuid_t	event_id;

#define TYPE_IS(name) EsTextIs(type, name, strlen(name))
	/* a nested saga is started by what moved its parent */
	if (cause == NULL && TYPE_IS("SagaStarted"))
	{
		JsonbValue	k;
		JsonbValue *v;
		pg_uuid_t	parent;

		k.type = jbvString;
		k.val.string.val = "parent_saga_id";
		k.val.string.len = strlen("parent_saga_id");
		v = findJsonbValueFromContainer(&data->root, JB_FOBJECT, &k);
		if (v != NULL && v->type == jbvString &&
			EsParseUuid(v->val.string.val, v->val.string.len, &parent))
			cause = es_saga_cause(&parent);
	}
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	if (cause != NULL)
		es_json_text(&state, "causationId", es_uuid_text(&cause->event_id));
	es_json_text(&state, "correlationId", es_uuid_text(saga_id));
	obj = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	(void) EsAppendEventWithMetadata(es_saga_stream(saga_id), type, data,
									 JsonbValueToJsonb(obj), &event_id);
	if (TYPE_IS("SagaStarted") || TYPE_IS("SagaTimedOut"))
		EsSagaSetCause(saga_id, &event_id, false);
	else if (TYPE_IS("SagaStepCompleted") || TYPE_IS("SagaStepFailed"))
	{
		cause = es_saga_cause(saga_id);
		/* the event of another stream that did it stays the cause */
		if (cause != NULL && cause->external)
			cause->external = false;
		else
			EsSagaSetCause(saga_id, &event_id, false);
	}
#undef TYPE_IS
}

/*
 * Append a transition to the saga's stream: type with data {"saga_id": ...,
 * "key1": value1, ...}, where the keys are step (text), result (jsonb),
 * data (jsonb) or reason (text), as given (NULL: leave out)
 */
static void
es_saga_transition(pg_uuid_t *saga_id, const char *type, const char *step,
				   bool with_result, Jsonb *result, Jsonb *data,
				   bool with_reason, const char *reason)
{
	JsonbParseState *state = NULL;
	JsonbValue *obj;

	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	es_json_text(&state, "saga_id", es_uuid_text(saga_id));
	if (step != NULL)
		es_json_text(&state, "step", step);
	if (with_result)
		es_json_value(&state, "result", result);
	if (data != NULL)
		es_json_value(&state, "data", data);
	if (with_reason)
		es_json_text(&state, "reason", reason);
	obj = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	es_saga_append(saga_id, cstring_to_text(type), JsonbValueToJsonb(obj));
}

/*
 * SQL: event_store._saga_event(saga_id uuid, type text, data jsonb) -- the
 * transitions written in PL/pgSQL append theirs with this: data is
 * {"saga_id": saga_id} || data
 */
Datum
es_saga_event(PG_FUNCTION_ARGS)
{
	pg_uuid_t  *saga_id;
	JsonbParseState *state = NULL;
	JsonbValue *obj;
	Datum		data;

	EsRequireArg(fcinfo, 0, "saga_id");
	EsRequireArg(fcinfo, 1, "type");
	saga_id = PG_GETARG_UUID_P(0);
	(void) pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	es_json_text(&state, "saga_id", es_uuid_text(saga_id));
	obj = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	data = JsonbPGetDatum(JsonbValueToJsonb(obj));
	if (!PG_ARGISNULL(2))
		data = DirectFunctionCall2(jsonb_concat, data, PG_GETARG_DATUM(2));
	es_saga_append(saga_id, PG_GETARG_TEXT_PP(1), DatumGetJsonbP(data));
	PG_RETURN_VOID();
}

/* ------------------------------------------------------------------------
 * Transitions
 * ------------------------------------------------------------------------ */

/*
 * A step completed with a result (NULL: SQL NULL): its result becomes its
 * compensation data and is merged into the saga's data.  Caller is
 * connected to SPI.
 */
static void
es_complete_step(pg_uuid_t *saga_id, const char *step, Jsonb *result)
{
	Datum		values[3];
	bool		isnull[3] = {false, false, result == NULL};

	values[0] = UUIDPGetDatum(saga_id);
	values[1] = CStringGetTextDatum(step);
	values[2] = result ? JsonbPGetDatum(result) : (Datum) 0;
	if (es_saga_exec(STEP_DONE, values, isnull) > 0)
	{
		bool		null_circuit;
		Datum		circuit = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &null_circuit);

		/* a success closes the step's circuit */
		if (!null_circuit && DatumGetBool(circuit))
			(void) es_saga_exec(CALL_CIRCUIT_OK, values, NULL);
	}
	es_saga_transition(saga_id, "SagaStepCompleted", step, true, result, NULL, false, NULL);
}

/*
 * SQL: event_store._saga_step_done(saga_id uuid, step text, result jsonb)
 * -- for the transitions written in PL/pgSQL (a step completed by
 * complete_saga_step, its event or its nested saga)
 */
Datum
es_saga_step_done(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	pg_uuid_t  *saga_id;
	char	   *step;
	Jsonb	   *result = PG_ARGISNULL(2) ? NULL : PG_GETARG_JSONB_P(2);

	EsRequireArg(fcinfo, 0, "saga_id");
	EsRequireArg(fcinfo, 1, "step");
	saga_id = PG_GETARG_UUID_P(0);
	step = text_to_cstring(PG_GETARG_TEXT_PP(1));
	EsSpiConnect(&sw);
	es_complete_step(saga_id, step, result);
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}

/*
 * Call the step function fn(saga_id, data) -- an action or a compensation
 * -- as the role that defined the saga's type, with the search_path it was
 * defined with (pinned), never the session's or the orchestrator's; returns
 * its result (NULL: SQL NULL).  A strict function is not called with a
 * NULL data, and returns NULL.
 */
static Jsonb *
es_call_step_function(pg_uuid_t *saga_id, const char *saga_type, Oid fn, Jsonb *data)
{
	Oid			role;
	const char *path;
	FmgrInfo	flinfo;
	int			scope;
	Datum		result;
	LOCAL_FCINFO(call, 2);

	if (!EsSagaRegistrant(UUIDPGetDatum(saga_id), CurrentMemoryContext, &role, &path))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("saga type \"%s\" is not defined", saga_type),
				 errhint("Define it with event_store.define_saga().")));
	if (!EsFunctionExists(fn))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("saga step function with OID %u no longer exists", fn)));
	EsCheckCallbackOwner(fn, role, "a saga step function");
	fmgr_info(fn, &flinfo);
	if (flinfo.fn_strict && data == NULL)
		return NULL;
	InitFunctionCallInfoData(*call, &flinfo, 2, InvalidOid, NULL, NULL);
	call->args[0].value = UUIDPGetDatum(saga_id);
	call->args[0].isnull = false;
	call->args[1].value = data ? JsonbPGetDatum(data) : (Datum) 0;
	call->args[1].isnull = (data == NULL);

	/* a scope of its own: what the function sets ends when it returns */
	scope = EsCallbackScopeBegin();
	result = EsCallAs(NULL, call, role, path);
	EsCallbackScopeEnd(scope);
	return call->isnull ? NULL : DatumGetJsonbP(result);
}

/*
 * Run a step function (es_call_step_function) in a subtransaction.
 * Returns whether it succeeded, with its result; otherwise its error
 * message is in *error and what it did is rolled back: a failed attempt.
 * A cancel (query cancel, statement timeout) or a failed assertion is no
 * failed attempt: it goes on, as PL/pgSQL's WHEN OTHERS lets it through
 * (the rule of es_apply_in_subxact, projection.c).  Caller is connected to
 * SPI.
 */
static bool
es_try_step_function(pg_uuid_t *saga_id, const char *saga_type, Oid fn,
					 Jsonb *data, int64 timeout_ms, Jsonb **result, char **error)
{
	TimestampTz start = GetCurrentTimestamp();
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	int			nscopes = EsCallbackScopeDepth();
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		*result = es_call_step_function(saga_id, saga_type, fn, data);
		/* too slow: a failed attempt, and what it did is rolled back */
		if (timeout_ms > 0 &&
			TimestampDifferenceExceeds(start, GetCurrentTimestamp(), (int) Min(timeout_ms, PG_INT32_MAX)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("compensation timed out"),
					 errdetail("It took longer than the step's compensation_timeout of " INT64_FORMAT " ms.",
							   timeout_ms)));
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		/* the function's callback scope, if it had begun, is gone */
		EsCallbackScopeUnwind(nscopes);
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ASSERT_FAILURE)
			ReThrowError(edata);
		*error = edata->message ? edata->message : pstrdup("unknown error");
		ok = false;
	}
	PG_END_TRY();
	return ok;
}

/* ------------------------------------------------------------------------
 * The step loop
 * ------------------------------------------------------------------------ */

/* A saga, as the loop reads it */
typedef struct EsSagaRow
{
	char	   *saga_type;
	char	   *status;
	Jsonb	   *data;
	char	   *last_error;
	bool		has_parent;
	pg_uuid_t	parent;
	char	   *parent_step;
} EsSagaRow;

/* A step, as the loop reads it */
typedef struct EsStepRow
{
	char	   *name;
	char	   *status;
	char	   *kind;
	Oid			action;
	Oid			compensation;
	char	   *comp_kind;
	bool		waits_for_event;	/* has complete_on */
	char	   *child_type;
	bool		has_child;
	pg_uuid_t	child;
	Jsonb	   *result;
	bool		limited;		/* has a concurrency limit */
	bool		breaker;		/* has a circuit */
	int64		comp_timeout_ms;	/* 0: none */
} EsStepRow;

/* Read step step_no of the saga; false when it is not there */
static bool
es_saga_read_step(Datum *key, EsStepRow *st)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	if (es_saga_exec(STEP_READ, key, NULL) == 0)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	st->name = es_result_text(1);
	st->status = es_result_text(2);
	st->kind = es_result_text(3);
	d = SPI_getbinval(tup, desc, 4, &isnull);
	st->action = isnull ? InvalidOid : DatumGetObjectId(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	st->compensation = isnull ? InvalidOid : DatumGetObjectId(d);
	st->comp_kind = es_result_text(6);
	st->waits_for_event = DatumGetBool(SPI_getbinval(tup, desc, 7, &isnull));
	st->child_type = es_result_text(8);
	st->has_child = es_result_uuid(9, &st->child);
	st->result = es_result_jsonb(10);
	st->limited = DatumGetBool(SPI_getbinval(tup, desc, 11, &isnull));
	st->breaker = DatumGetBool(SPI_getbinval(tup, desc, 12, &isnull));
	d = SPI_getbinval(tup, desc, 13, &isnull);
	st->comp_timeout_ms = isnull ? 0 : Max(DatumGetInt64(d), 1);
	return true;
}

/* The step numbers a query (STEPS_READY, STEPS_COMP_READY) returned */
static int32 *
es_saga_step_list(EsSagaStmtId id, Datum *key, int *n)
{
	int32	   *list;

	*n = (int) es_saga_exec(id, key, NULL);
	list = palloc(sizeof(int32) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
	{
		bool		isnull;

		list[i] = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
	}
	return list;
}

/* The saga's status (NULL when it is gone) and, if data is given, data */
static char *
es_saga_status(Datum *key, Jsonb **data)
{
	if (es_saga_exec(SAGA_STATE, key, NULL) == 0)
		return NULL;
	if (data != NULL)
		*data = es_result_jsonb(2);
	return es_result_text(1);
}

/* A nested saga reached its end: move its parent step on */
static void
es_saga_report_to_parent(pg_uuid_t *saga_id, EsSagaRow *s)
{
	Datum		values[3] = {UUIDPGetDatum(&s->parent), CStringGetTextDatum(s->parent_step),
	UUIDPGetDatum(saga_id)};
	bool		isnull[3] = {false, s->parent_step == NULL, false};

	(void) es_saga_exec(CALL_CHILD_FINISHED, values, isnull);
}

/*
 * One round of a running saga in its current group g: start every due
 * pending step (a local one is called at once, a nested one starts its
 * child; external ones wait to be claimed, event-driven ones for their
 * event).  Returns how many steps were started; *moved tells whether one
 * of them may have moved the saga on by itself (a local, nested or timer
 * step): only then can another round find more to do.
 */
static int
es_saga_run_group(pg_uuid_t *saga_id, EsSagaRow *s, int32 g, bool *moved)
{
	Datum		key[2] = {UUIDPGetDatum(saga_id), Int32GetDatum(g)};
	int			nsteps;
	int32	   *steps = es_saga_step_list(STEPS_READY, key, &nsteps);
	int			n = 0;

	for (int i = 0; i < nsteps; i++)
	{
		EsStepRow	st;
		char	   *status;
		Jsonb	   *data = NULL;

		key[1] = Int32GetDatum(steps[i]);
		/* re-read: a nested call may have moved things on */
		if (!es_saga_read_step(key, &st) || strcmp(st.status, "pending") != 0)
			continue;
		/* (nothing ran since the saga was read for the first one) */
		if (n == 0 && !*moved)
		{
			status = s->status;
			data = s->data;
		}
		else
			status = es_saga_status(key, &data);
		if (status != NULL && strcmp(status, "running") != 0)
			break;
		/* its circuit is open: it waits, pending, without an attempt */
		if (st.breaker)
		{
			bool		isnull;

			(void) es_saga_exec(CALL_CIRCUIT_GATE, key, NULL);
			if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
				continue;
		}
		/* no free concurrency slot: it waits, pending, without an attempt */
		if (st.limited)
		{
			bool		isnull;

			(void) es_saga_exec(CALL_TAKE_SLOT, key, NULL);
			if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
				continue;
		}
		n++;
		(void) es_saga_exec(STEP_START, key, NULL);
		if (strcmp(st.kind, "external") != 0 && strcmp(st.kind, "event") != 0)
			*moved = true;

		if (strcmp(st.kind, "local") == 0)
		{
			Jsonb	   *result = NULL;
			char	   *error = NULL;

			if (!es_try_step_function(saga_id, s->saga_type, st.action, data, 0, &result, &error))
			{
				Datum		values[3] = {key[0], CStringGetTextDatum(st.name),
				CStringGetTextDatum(error)};

				(void) es_saga_exec(CALL_STEP_FAILED, values, NULL);
			}
			else if (!st.waits_for_event)
				es_complete_step(saga_id, st.name, result);
			else
			{
				/* done its part; now waits for its completion event */
				Datum		values[3] = {key[0], key[1], result ? JsonbPGetDatum(result) : (Datum) 0};
				bool		isnull[3] = {false, false, result == NULL};

				(void) es_saga_exec(STEP_KEEP_RESULT, values, isnull);
			}
		}
		else if (strcmp(st.kind, "nested") == 0)
		{
			Datum		values[5];
			bool		isnull[5] = {false, st.child_type == NULL, data == NULL, false, false};

			(void) es_saga_exec(STEP_NEW_CHILD, key, NULL);
			values[0] = key[0];
			values[1] = st.child_type ? CStringGetTextDatum(st.child_type) : (Datum) 0;
			values[2] = data ? JsonbPGetDatum(data) : (Datum) 0;
			values[3] = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull[3]);
			values[4] = CStringGetTextDatum(st.name);
			(void) es_saga_exec(CALL_SAGA_START, values, isnull);
		}
		else if (strcmp(st.kind, "timer") == 0)
		{
			/* due at once, it completes now; otherwise saga_tick completes it */
			Datum		values[3] = {key[0], key[1], data ? JsonbPGetDatum(data) : (Datum) 0};
			bool		isnull[3] = {false, false, data == NULL};

			(void) es_saga_exec(CALL_TIMER_START, values, isnull);
		}
		/* external steps wait to be claimed, event-driven ones for their event */
	}
	return n;
}

/*
 * One round of a compensating saga in its current group g, in reverse
 * step order: a completed step starts compensating; one without a
 * compensation is compensated at once, a local compensation is called (now
 * or once its retry is due), a nested step compensates its child saga, an
 * external compensation waits to be claimed.  Returns how many steps were
 * visited; *progressed tells the loop whether to go round again.
 */
static int
es_saga_compensate_group(pg_uuid_t *saga_id, EsSagaRow *s, int32 g, bool *progressed)
{
	Datum		key[2] = {UUIDPGetDatum(saga_id), Int32GetDatum(g)};
	int			nsteps;
	int32	   *steps = es_saga_step_list(STEPS_COMP_READY, key, &nsteps);
	int			n = 0;

	for (int i = 0; i < nsteps; i++)
	{
		EsStepRow	st;
		char	   *status;
		bool		was_completed;

		key[1] = Int32GetDatum(steps[i]);
		if (!es_saga_read_step(key, &st))
			continue;
		/* a nested call may have compensated it meanwhile: never twice */
		if (strcmp(st.status, "completed") != 0 && strcmp(st.status, "compensating") != 0)
			continue;
		status = es_saga_status(key, NULL);
		if (status != NULL && strcmp(status, "compensating") != 0)
			break;
		n++;
		*progressed = true;
		was_completed = strcmp(st.status, "completed") == 0;
		if (was_completed)
			(void) es_saga_exec(STEP_COMPENSATING, key, NULL);

		if (strcmp(st.comp_kind, "none") == 0)
		{
			(void) es_saga_exec(STEP_COMPENSATED, key, NULL);
			es_saga_transition(saga_id, "SagaStepCompensated", st.name, false, NULL, NULL, false, NULL);
		}
		else if (strcmp(st.comp_kind, "local") == 0)
		{
			Jsonb	   *result;
			char	   *error = NULL;

			(void) es_saga_exec(STEP_COMP_ATTEMPT, key, NULL);
			if (es_try_step_function(saga_id, s->saga_type, st.compensation, st.result,
									 st.comp_timeout_ms, &result, &error))
			{
				(void) es_saga_exec(STEP_COMPENSATED, key, NULL);
				es_saga_transition(saga_id, "SagaStepCompensated", st.name, false, NULL, NULL, false, NULL);
			}
			else
			{
				Datum		values[3] = {key[0], CStringGetTextDatum(st.name),
				CStringGetTextDatum(error)};

				(void) es_saga_exec(CALL_COMP_FAILED, values, NULL);
			}
		}
		else if (strcmp(st.comp_kind, "nested") == 0 && was_completed)
		{
			Datum		child = UUIDPGetDatum(&st.child);
			bool		isnull = !st.has_child;

			(void) es_saga_exec(CALL_COMPENSATE_CHILD, &child, &isnull);
		}
		else
		{
			/* an external compensation: waits to be claimed */
			*progressed = was_completed;
		}
	}
	return n;
}

/*
 * Run whatever is ready in the saga -- the next group's steps,
 * compensations, its end -- until nothing moves; returns how many steps
 * were started or compensated, plus one when the saga ended.  Caller is
 * connected to SPI.
 */
static int
es_saga_advance_loop(pg_uuid_t *saga_id)
{
	Datum		key[1] = {UUIDPGetDatum(saga_id)};
	int			n = 0;
	bool		progressed;

	do
	{
		EsSagaRow	s;
		int32		g;
		int			started;

		progressed = false;
		if (es_saga_exec(SAGA_LOCK, key, NULL) == 0)
			return n;
		s.saga_type = es_result_text(1);
		s.status = es_result_text(2);
		s.data = es_result_jsonb(3);
		s.last_error = es_result_text(4);
		s.has_parent = es_result_uuid(5, &s.parent);
		s.parent_step = es_result_text(6);

		if (strcmp(s.status, "running") == 0)
		{
			(void) es_saga_exec(STEPS_NEXT_GROUP, key, NULL);
			if (!es_result_int(1, &g))
			{
				/* every step completed: so is the saga */
				(void) es_saga_exec(SAGA_COMPLETED, key, NULL);
				es_saga_transition(saga_id, "SagaCompleted", NULL, false, NULL, s.data, false, NULL);
				if (s.has_parent)
					es_saga_report_to_parent(saga_id, &s);
				return n + 1;
			}
			started = es_saga_run_group(saga_id, &s, g, &progressed);
			n += started;
		}
		else if (strcmp(s.status, "compensating") == 0)
		{
			(void) es_saga_exec(STEPS_COMP_GROUP, key, NULL);
			if (!es_result_int(1, &g))
			{
				/* nothing left to compensate */
				(void) es_saga_exec(SAGA_COMPENSATED, key, NULL);
				es_saga_transition(saga_id, "SagaCompensated", NULL, false, NULL, NULL, true, s.last_error);
				if (s.has_parent)
					es_saga_report_to_parent(saga_id, &s);
				return n + 1;
			}
			n += es_saga_compensate_group(saga_id, &s, g, &progressed);
		}
		else
			return n;
	} while (progressed);
	return n;
}

/*
 * SQL: event_store._saga_advance(saga_id uuid) RETURNS int -- run whatever
 * is ready (es_saga_advance_loop); called by every entry point of the
 * orchestrator after its transition, with the saga (and its ancestors)
 * locked
 */
Datum
es_saga_advance(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	int			n;

	if (PG_ARGISNULL(0))
		PG_RETURN_INT32(0);
	EsSpiConnect(&sw);
	n = es_saga_advance_loop(PG_GETARG_UUID_P(0));
	EsSpiFinish(&sw);
	PG_RETURN_INT32(n);
}

/*
 * SQL: event_store._saga_wake_worker() -- a timer step is due before the
 * worker's next round: wake it when the transaction commits, to learn the
 * due time (the worker then waits for it on its latch's timeout)
 */
Datum
es_saga_wake_worker(PG_FUNCTION_ARGS)
{
	EsWakeWorker();
	PG_RETURN_VOID();
}

/*
 * SQL: event_store._saga_lock_slot(slot text) RETURNS boolean -- see
 * EsTryLockSagaSlot: false when another transaction holds the slot's lock
 */
Datum
es_saga_lock_slot(PG_FUNCTION_ARGS)
{
	text	   *slot;

	EsRequireArg(fcinfo, 0, "slot");
	slot = PG_GETARG_TEXT_PP(0);
	PG_RETURN_BOOL(EsTryLockSagaSlot(VARDATA_ANY(slot), VARSIZE_ANY_EXHDR(slot)));
}

/*
 * SQL: event_store._saga_timer_due(saga_id uuid, step text) RETURNS int --
 * for saga_tick: a timer step was found due.  Lock the saga (and its
 * ancestors, root first, as _saga_lock_tree does); if the step still runs,
 * is due and its saga runs, complete it and run what is ready.  Returns
 * what moved, plus one for the step (0: it was no longer due).
 */
Datum
es_saga_timer_due(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	pg_uuid_t  *saga_id;
	Datum		values[2];
	int			n = 0;

	EsRequireArg(fcinfo, 0, "saga_id");
	EsRequireArg(fcinfo, 1, "step");
	saga_id = PG_GETARG_UUID_P(0);
	values[0] = UUIDPGetDatum(saga_id);
	values[1] = PG_GETARG_DATUM(1);
	EsSpiConnect(&sw);
	if (es_saga_lock(values))
	{
		if (es_saga_exec(TIMER_STILL_DUE, values, NULL) > 0)
		{
			bool		isnull;
			Datum		due = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			if (!isnull && DatumGetBool(due))
			{
				es_complete_step(saga_id, text_to_cstring(PG_GETARG_TEXT_PP(1)), NULL);
				n = 1 + es_saga_advance_loop(saga_id);
			}
		}
	}
	EsSpiFinish(&sw);
	PG_RETURN_INT32(n);
}

/*
 * Lock the saga (and its ancestors, root first, as _saga_lock_tree does);
 * false when there is no such saga.  Caller is connected to SPI.
 */
static bool
es_saga_lock(Datum *key)
{
	pg_uuid_t	parent;

	if (es_saga_exec(SAGA_PARENT, key, NULL) == 0)
		return false;
	/* a saga's parent never changes: one without is locked alone */
	if (es_result_uuid(1, &parent))
		(void) es_saga_exec(CALL_LOCK_TREE, key, NULL);
	else
		(void) es_saga_exec(SAGA_LOCK_ALONE, key, NULL);
	return true;
}

/*
 * SQL: event_store.complete_saga_step(saga_id uuid, step text, result jsonb)
 * (SECURITY DEFINER) -- a worker reports a step, or its external
 * compensation, done: the result becomes the step's compensation data and
 * is merged into the saga's data; then whatever is ready runs.
 */
Datum
es_complete_saga_step(PG_FUNCTION_ARGS)
{
	EsUserSwitch sw;
	pg_uuid_t  *saga_id;
	char	   *step;
	char	   *id;
	char	   *status;
	char	   *kind;
	char	   *comp_kind;
	char	   *saga_status;
	Datum		key[2];

	/* first: on a standby the lock below would fail with a less telling message */
	EsCheckWritable("complete_saga_step()");
	EsRequireArg(fcinfo, 0, "saga_id");
	if (PG_ARGISNULL(1) || VARSIZE_ANY_EXHDR(PG_GETARG_TEXT_PP(1)) == 0)
		ereport(ERROR,
				(errcode(PG_ARGISNULL(1) ? ERRCODE_NULL_VALUE_NOT_ALLOWED : ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("step must not be null or empty")));
	saga_id = PG_GETARG_UUID_P(0);
	step = text_to_cstring(PG_GETARG_TEXT_PP(1));
	id = es_uuid_text(saga_id);
	key[0] = UUIDPGetDatum(saga_id);
	key[1] = PG_GETARG_DATUM(1);

	EsSpiConnect(&sw);
	if (!es_saga_lock(key))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("saga %s does not exist", id)));
	if (es_saga_exec(STEP_TO_REPORT, key, NULL) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("saga %s has no step \"%s\"", id, step)));
	status = es_result_text(1);
	kind = es_result_text(2);
	comp_kind = es_result_text(3);
	saga_status = es_result_text(4);
	if (strcmp(kind, "nested") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("step \"%s\" of saga %s is completed by its nested saga", step, id),
				 errhint("Complete the steps of the nested saga instead.")));
	if (strcmp(status, "running") == 0 && strcmp(saga_status, "running") == 0)
	{
		Jsonb	   *result;

		if (PG_ARGISNULL(2))
			result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));
		else
			result = PG_GETARG_JSONB_P(2);
		es_complete_step(saga_id, step, result);
	}
	else if (strcmp(status, "compensating") == 0 && strcmp(comp_kind, "external") == 0 &&
			 strcmp(saga_status, "compensating") == 0)
	{
		(void) es_saga_exec(STEP_EXT_COMPENSATED, key, NULL);
		es_saga_transition(saga_id, "SagaStepCompensated", step, false, NULL, NULL, false, NULL);
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("step \"%s\" of saga %s cannot be completed: it is %s", step, id, status),
				 errdetail("The saga is %s.", saga_status),
				 errhint("Only a running step (or a step whose external compensation is running) can be completed.")));
	(void) es_saga_advance_loop(saga_id);
	EsSpiFinish(&sw);
	PG_RETURN_VOID();
}
