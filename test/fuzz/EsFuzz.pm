# EsFuzz: a seeded fuzzer for the SQL API of event_store.
#
# It throws random, mostly malformed, argument combinations at every public
# function of the schema event_store (the ones in sql/install/*.sql whose
# names do not start with "_"), mixed with enough valid calls that state
# exists (streams, aggregates, snapshots, upcasters, projections, saga
# definitions, running sagas, category grants, deleted, purged and reopened
# streams, retention settings) and the deeper code paths are reached.
#
# Every call runs in a transaction of its own (reads sometimes REPEATABLE
# READ), through one long-lived psql session of a superuser (the
# extension's owner):
#
#   BEGIN; [SET LOCAL event_store.allow_purge = on;] [SET LOCAL ROLE r;]
#   SELECT pg_current_xact_id();
#   SELECT <the arguments>;          -- PostgreSQL's input functions
#   SELECT event_store.f(<the arguments>);
#   COMMIT;
#
# and is judged:
#   - an error while reading the arguments (a malformed jsonb literal, an
#     unknown function for a regprocedure, ...) happens before event_store
#     runs: its SQLSTATE must be one of docs/sqlstates.md's section
#     "Before event_store runs";
#   - an error of the call itself must be documented for that function in
#     docs/sqlstates.md (or be the SQLSTATE of a fuzz callback, for the
#     functions the section "Errors of callbacks" lists);
#   - a rejected call must not have written anything: a fingerprint of every
#     table of the extension (and of the fuzz callbacks' tables) is the same
#     before and after it.  The background worker may write meanwhile, so a
#     difference counts only when no other transaction can have committed in
#     between (the snapshots before and after prove it); otherwise the call
#     is repeated, and after three tries it is counted as not verified;
#   - the backend must survive (psql losing its connection is a crash);
#   - every check_every calls (and at the end): the server answers a new
#     connection, its log shows no crash, no SQLSTATE XX000 and no error of
#     the background workers, the per-backend caches of the fuzzing
#     session agree with a fresh session (fz.probe() in both: aggregates,
#     upcast streams, deleted streams, category grants as fz_alice and
#     fz_bob see them), and the stream lifecycle keeps its promises
#     (fz.invariants(): deleted streams read as empty and get no events,
#     purged ones keep only their marker, reopened ones read from after
#     their tombstone, retention leaves no more than it keeps, the view
#     event_store.stats counts the open sagas the table holds, and its
#     estimates are not negative); at the end, the
#     errors event_store recorded (last_error of projections, sagas and
#     saga steps) must not look like internal errors.
#
# Accepted purge_stream and retention calls (and the background worker's
# retention) remove events; only rejected calls must leave everything as it
# was.
#
# event_store.allow_purge is on in most purge_stream calls.  Some calls run
# as the roles fz_alice or fz_bob (members of fz_team), which may run every
# public function: category grants (grant_category, the roles' own calls)
# then apply to them, and the callbacks they register run as them.
#
# The generator is a pure function of the seed: the same seed produces the
# same calls (arguments that depend on the database's state are subqueries
# in the SQL text).  Outcomes can still differ a little between runs: the
# background worker drives saga timers, async projections and retention
# concurrently,
# start_saga without a saga_id gets a random one, and one fuzz step function
# fails at random.
#
# Every problem is matched against the known defects the caller passes
# (known_defects): a match is counted and shown, but is no violation.
#
# Used by test/t/050_fuzz.pl; see there for the settings (ES_FUZZ_SEED,
# ES_FUZZ_ITERATIONS, ...).
package EsFuzz;

use strict;
use warnings;

use IPC::Run ();
use Time::HiRes ();

# The fuzz callbacks raise this SQLSTATE (a class of its own: "UF")
our $CALLBACK_SQLSTATE = 'UF001';

my $MARK = '@@fz';

# ------------------------------------------------------------------ setup SQL

# Tables and callbacks the fuzzer uses, created once in the fuzz database.
my $SETUP_SQL = <<'SQL';
CREATE EXTENSION IF NOT EXISTS event_store;
CREATE SCHEMA fz;
CREATE TABLE fz.read_model (event_id uuid PRIMARY KEY, stream_id text, event_type text, position bigint);
CREATE TABLE fz.async_model (event_id uuid PRIMARY KEY, position bigint);
CREATE TABLE fz.resets (at timestamptz DEFAULT clock_timestamp());

-- projection handlers: (event event_store.event) RETURNS void
CREATE FUNCTION fz.h_inline(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'FzBoom' THEN
        RAISE EXCEPTION 'fuzz handler failure' USING ERRCODE = 'UF001';
    END IF;
    INSERT INTO fz.read_model VALUES (e.event_id, e.stream_id, e.event_type, e.global_position)
        ON CONFLICT DO NOTHING;
END $$;
CREATE FUNCTION fz.h_async(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'FzBoom' THEN
        RAISE EXCEPTION 'fuzz async handler failure' USING ERRCODE = 'UF001';
    END IF;
    INSERT INTO fz.async_model VALUES (e.event_id, e.global_position) ON CONFLICT DO NOTHING;
END $$;
-- a trigger-function handler: its batch is the transition table new_events
CREATE FUNCTION fz.h_table() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM new_events WHERE event_type = 'FzBoom') THEN
        RAISE EXCEPTION 'fuzz table handler failure' USING ERRCODE = 'UF001';
    END IF;
    INSERT INTO fz.async_model SELECT event_id, global_position FROM new_events ON CONFLICT DO NOTHING;
    RETURN NULL;
END $$;
-- The callbacks that change registries (h_mutate, r_mutate, u_mutate) write
-- the same rows in the same order (upcaster, then aggregate): the worker
-- runs them too, concurrently.  They run as the role that registered them,
-- which may not change what another role registered (42501: skipped).
-- changes registries while an append applies its inline projections (not
-- when it runs inside itself: as the handler of fz_inline, resuming
-- fz_inline replays the event it is handling, which calls it again)
-- Once per transaction: a read of thousands of events, each upcast by
-- u_mutate, would otherwise update the same registry rows thousands of times
-- in one transaction (each update a new subtransaction's row version, which
-- every later update walks: quadratic), which says nothing more about
-- event_store than the first change does.
CREATE FUNCTION fz.mutate_registries() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('fz.registries_changed', true) = 'on' THEN
        RETURN;
    END IF;
    PERFORM set_config('fz.registries_changed', 'on', true);
    BEGIN
        PERFORM event_store.register_upcaster('FzOther', 1, 'fz.u_ok(jsonb, jsonb)');
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
    BEGIN
        PERFORM event_store.define_aggregate('fzother', 'fz.r_count(jsonb, event_store.event)');
    EXCEPTION WHEN insufficient_privilege THEN NULL;
    END;
END $$;
CREATE FUNCTION fz.h_mutate(e event_store.event) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'FzMutate' AND current_setting('fz.mutating', true) IS DISTINCT FROM 'on' THEN
        PERFORM set_config('fz.mutating', 'on', true);
        PERFORM fz.mutate_registries();
        BEGIN
            PERFORM event_store.pause_projection('fz_inline');
            PERFORM event_store.resume_projection('fz_inline');
        EXCEPTION WHEN undefined_object OR insufficient_privilege THEN NULL;
        END;
        PERFORM set_config('fz.mutating', 'off', true);
    END IF;
END $$;
CREATE FUNCTION fz.reset_models() RETURNS void LANGUAGE sql AS
    $$ DELETE FROM fz.read_model; INSERT INTO fz.resets DEFAULT VALUES $$;
CREATE FUNCTION fz.reset_boom() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fuzz reset failure' USING ERRCODE = 'UF001';
END $$;

-- reducers: (state jsonb, event event_store.event) RETURNS jsonb
CREATE FUNCTION fz.r_count(state jsonb, e event_store.event) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'FzBoom' THEN
        RAISE EXCEPTION 'fuzz reducer failure' USING ERRCODE = 'UF001';
    ELSIF e.event_type = 'FzNull' THEN
        RETURN NULL;
    END IF;
    RETURN jsonb_build_object('n', COALESCE((CASE WHEN jsonb_typeof(state) = 'object'
                                                  THEN state ->> 'n' END)::bigint, 0) + 1,
                              'last', e.event_type, 'v', e.stream_version);
END $$;
CREATE FUNCTION fz.r_mutate(state jsonb, e event_store.event) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF e.event_type = 'FzMutate' THEN
        PERFORM fz.mutate_registries();
    END IF;
    RETURN fz.r_count(state, e);
END $$;

-- upcasters: (data jsonb, metadata jsonb) RETURNS jsonb
CREATE FUNCTION fz.u_ok(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(data) = 'object' AND data ? 'boom' THEN
        RAISE EXCEPTION 'fuzz upcaster failure' USING ERRCODE = 'UF001';
    ELSIF jsonb_typeof(data) = 'object' AND data ? 'nul' THEN
        RETURN NULL;
    ELSIF jsonb_typeof(data) = 'object' THEN
        RETURN data || '{"up": 1}';
    END IF;
    RETURN jsonb_build_object('v', data);
END $$;
CREATE FUNCTION fz.u_mutate(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fz.mutate_registries();
    RETURN data;
END $$;
-- reads another stream (one without upcast events) from inside an upcaster
CREATE FUNCTION fz.u_read(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RETURN jsonb_build_object('seen', (SELECT count(*) FROM event_store.read_stream('fzfixed-1')), 'd', data);
END $$;

-- saga step functions: (saga_id uuid, data jsonb) RETURNS jsonb
CREATE FUNCTION fz.s_ok(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS
    $$ SELECT jsonb_build_object('ok', true) $$;
CREATE FUNCTION fz.s_fail(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fuzz step failure' USING ERRCODE = 'UF001';
END $$;
CREATE FUNCTION fz.s_null(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT NULL::jsonb $$;
CREATE FUNCTION fz.s_scalar(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '42'::jsonb $$;
CREATE FUNCTION fz.s_array(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT '[1, {"a": 2}]'::jsonb $$;
CREATE FUNCTION fz.s_flaky(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF hashtext(saga_id::text || clock_timestamp()::text) % 2 = 0 THEN
        RAISE EXCEPTION 'fuzz flaky step' USING ERRCODE = 'UF001';
    END IF;
    RETURN '{"flaky": "ok"}';
END $$;
-- appends the events event-driven steps wait for, from inside a step
CREATE FUNCTION fz.s_emit(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    PERFORM event_store.append('fzsaga-' || saga_id,
        jsonb_build_array(jsonb_build_object('type', 'FzDone', 'metadata', jsonb_build_object('saga_id', saga_id)),
                          jsonb_build_object('type', 'FzDone2', 'metadata', jsonb_build_object('saga_id', saga_id))));
    RETURN '{"emitted": true}';
END $$;
-- starts another saga, but never from a saga it started (no endless chains)
CREATE FUNCTION fz.s_start(saga_id uuid, data jsonb) RETURNS jsonb LANGUAGE plpgsql AS $$
BEGIN
    IF data ? 'parent' OR (SELECT s.parent_saga_id IS NOT NULL FROM event_store.sagas s WHERE s.saga_id = s_start.saga_id) THEN
        RETURN '{"started": null}';
    END IF;
    RETURN jsonb_build_object('started', event_store.start_saga('fz_leaf', jsonb_build_object('parent', saga_id)));
END $$;
-- wrong signatures for step functions
CREATE FUNCTION fz.s_text(saga_id uuid, data jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION fz.s_setof(saga_id uuid, data jsonb) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT '{}'::jsonb $$;
CREATE PROCEDURE fz.s_proc(saga_id uuid, data jsonb) LANGUAGE sql AS $$ SELECT 1 $$;

-- wrong signatures for the other callbacks
CREATE FUNCTION fz.r_setof(state jsonb, e event_store.event) RETURNS SETOF jsonb LANGUAGE sql AS $$ SELECT state $$;
CREATE FUNCTION fz.u_text(data jsonb, metadata jsonb) RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$;
CREATE FUNCTION fz.u_three(data jsonb, metadata jsonb, x int) RETURNS jsonb LANGUAGE sql AS $$ SELECT data $$;
CREATE FUNCTION fz.h_ret(e event_store.event) RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION fz.h_json(e jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE PROCEDURE fz.h_proc(e event_store.event) LANGUAGE sql AS $$ SELECT 1 $$;
CREATE FUNCTION fz.reset_args(x int) RETURNS void LANGUAGE sql AS $$ SELECT $$;
CREATE AGGREGATE fz.agg_json(jsonb) (SFUNC = jsonb_concat, STYPE = jsonb);

-- a function that existed once: its OID names no function any more
CREATE FUNCTION fz.dropped(data jsonb, metadata jsonb) RETURNS jsonb LANGUAGE sql AS $$ SELECT data $$;
CREATE TABLE fz.dropped_oid AS SELECT 'fz.dropped(jsonb, jsonb)'::regprocedure::oid AS oid;
DROP FUNCTION fz.dropped(jsonb, jsonb);

-- Roles for category grants.  Some calls run as fz_alice or fz_bob (SET
-- LOCAL ROLE), members of fz_team, which may run every public function of
-- event_store, read its tables (through row-level security) and use the
-- fuzz callbacks' tables.  fz_gone existed once: its OID names no role.
-- (Roles belong to the cluster: another run may have left them behind.)
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['fz_team', 'fz_alice', 'fz_bob', 'fz_gone'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
        END IF;
    END LOOP;
END $$;
GRANT fz_team TO fz_alice, fz_bob;
CREATE TABLE fz.gone_role AS SELECT 'fz_gone'::regrole::oid AS oid;
DROP ROLE fz_gone;
GRANT USAGE ON SCHEMA fz TO fz_team;
GRANT ALL ON ALL TABLES IN SCHEMA fz TO fz_team;
GRANT SELECT ON ALL TABLES IN SCHEMA event_store TO fz_team;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc p
              WHERE p.pronamespace = 'event_store'::regnamespace AND p.proname !~ '^_' LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO fz_team', f);
    END LOOP;
END $$;

-- The state some per-backend caches decide: aggregates (reducers, snapshots)
-- and upcasters, as seen through the API.  Compared between the fuzzing
-- session and a fresh one.
CREATE FUNCTION fz.probe() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    r record;
    v text;
    rl text;
    acc text := '';
BEGIN
    FOR r IN SELECT DISTINCT ON (split_part(stream_id, '-', 1)) stream_id
               FROM event_store.events
              WHERE stream_id NOT LIKE 'saga-%' AND stream_id NOT LIKE 'fzsaga-%'
              ORDER BY split_part(stream_id, '-', 1), stream_id
              LIMIT 40 LOOP
        BEGIN
            SELECT string_agg(x::text, ',') INTO v FROM event_store.load_aggregate(r.stream_id) x;
        EXCEPTION WHEN OTHERS THEN
            v := 'error ' || SQLSTATE;
        END;
        acc := acc || r.stream_id || ' aggregate ' || COALESCE(v, '') || E'\n';
        BEGIN
            SELECT md5(string_agg(x::text, ',' ORDER BY x.stream_version)) INTO v
              FROM event_store.read_stream(r.stream_id) x;
        EXCEPTION WHEN OTHERS THEN
            v := 'error ' || SQLSTATE;
        END;
        acc := acc || r.stream_id || ' read ' || COALESCE(v, '') || E'\n';
        -- category grants (and their cache) as the other roles see them
        FOREACH rl IN ARRAY ARRAY['fz_alice', 'fz_bob'] LOOP
            PERFORM set_config('role', rl, true);
            BEGIN
                SELECT event_store.stream_version(r.stream_id)::text || ' '
                       || (SELECT count(*) FROM event_store.load_snapshot(r.stream_id)) INTO v;
            EXCEPTION WHEN OTHERS THEN
                v := 'error ' || SQLSTATE;
            END;
            PERFORM set_config('role', 'none', true);
            acc := acc || r.stream_id || ' as ' || rl || ' ' || COALESCE(v, '') || E'\n';
        END LOOP;
    END LOOP;
    RETURN acc;
END $$;

-- What the stream lifecycle promises, as violations.  The caller locks
-- event_store.events against appends and runs enforce_retention() first,
-- in a transaction it rolls back.
CREATE FUNCTION fz.invariants() RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    m record;
    n bigint;
    v bigint;
    t text;
    s record;
BEGIN
    FOR m IN SELECT * FROM event_store.stream_metadata ORDER BY stream_id LOOP
        SELECT e.stream_version, e.event_type INTO v, t FROM event_store.events e
         WHERE e.stream_id = m.stream_id ORDER BY e.stream_version DESC LIMIT 1;
        IF m.deleted_at IS NOT NULL THEN
            -- nothing is appended to a deleted stream: its newest event is
            -- the tombstone or the purge marker, where its reads start after
            IF t IS DISTINCT FROM '$StreamDeleted' AND t IS DISTINCT FROM '$StreamPurged'
               OR v IS DISTINCT FROM m.start_after THEN
                RETURN NEXT format('deleted stream %s: its newest event is %s at version %s, its reads start after %s',
                                   m.stream_id, t, v, m.start_after);
            END IF;
            SELECT count(*) INTO n FROM event_store.read_stream(m.stream_id, raw => true);
            IF n <> 0 THEN
                RETURN NEXT format('read_stream of deleted stream %s returns %s events', m.stream_id, n);
            END IF;
            BEGIN
                SELECT count(*) INTO n FROM event_store.load_aggregate(m.stream_id);
                IF n <> 0 THEN
                    RETURN NEXT format('load_aggregate of deleted stream %s returns a state', m.stream_id);
                END IF;
            EXCEPTION WHEN OTHERS THEN
                NULL;    -- no aggregate, a failing reducer, ...
            END;
            FOR s IN SELECT * FROM event_store.load_snapshot(m.stream_id) LOOP
                RETURN NEXT format('load_snapshot of deleted stream %s returns its snapshot at version %s',
                                   m.stream_id, s.stream_version);
            END LOOP;
            IF t = '$StreamPurged' THEN
                SELECT count(*) INTO n FROM event_store.events e WHERE e.stream_id = m.stream_id;
                IF n <> 1 THEN
                    RETURN NEXT format('purged stream %s keeps %s events', m.stream_id, n);
                END IF;
            END IF;
            CONTINUE;
        END IF;
        IF m.start_after > 0 THEN
            -- reopened: reads start after the tombstone
            SELECT min(x.stream_version) INTO n FROM event_store.read_stream(m.stream_id, raw => true) x;
            IF n <= m.start_after THEN
                RETURN NEXT format('read_stream of reopened stream %s returns version %s, at or before its tombstone %s',
                                   m.stream_id, n, m.start_after);
            END IF;
            FOR s IN SELECT * FROM event_store.load_snapshot(m.stream_id) WHERE stream_version <= m.start_after LOOP
                RETURN NEXT format('load_snapshot of reopened stream %s returns its snapshot at version %s, at or before its tombstone %s',
                                   m.stream_id, s.stream_version, m.start_after);
            END LOOP;
        END IF;
        -- retention, just enforced: at most max_count events, none older
        -- than max_age but the newest
        IF m.max_count IS NOT NULL THEN
            SELECT count(*) INTO n FROM event_store.events e WHERE e.stream_id = m.stream_id;
            IF n > m.max_count THEN
                RETURN NEXT format('stream %s keeps %s events, its retention max_count is %s', m.stream_id, n, m.max_count);
            END IF;
        END IF;
        IF m.max_age IS NOT NULL THEN
            SELECT count(*) INTO n FROM event_store.events e
             WHERE e.stream_id = m.stream_id AND e.stream_version < v AND e.recorded_at < now() - m.max_age;
            IF n > 0 THEN
                RETURN NEXT format('stream %s keeps %s events older than its retention max_age %s', m.stream_id, n, m.max_age);
            END IF;
        END IF;
    END LOOP;
    -- the monitoring view: events, streams and deleted streams are
    -- estimates (the statistics system's live rows, ANALYZE's distinct
    -- stream ids and null fractions), never negative; the open sagas are
    -- counted (exact comparisons: the lifecycle regress test and the upgrade
    -- test, after ANALYZE)
    RETURN QUERY
    SELECT format('event_store.stats says %s events, %s streams, %s deleted streams, sagas %s; the table holds %s open sagas',
                  st.events, st.streams, st.deleted_streams, st.sagas_by_status, o.open)
      FROM event_store.stats st,
           (SELECT COALESCE(jsonb_object_agg(x.status, x.cnt), '{}') AS open
              FROM (SELECT sg.status, count(*) AS cnt FROM event_store.sagas sg
                     WHERE sg.status IN ('running', 'compensating', 'compensation_failed')
                     GROUP BY sg.status) x) o
     WHERE st.events IS NULL OR st.events < 0 OR st.streams < 0 OR st.deleted_streams < 0
        OR EXISTS (SELECT 1 FROM jsonb_each_text(o.open) e
                    WHERE (st.sagas_by_status ->> e.key) IS DISTINCT FROM e.value);
    -- every committed event is below the follower horizon
    RETURN QUERY
    SELECT format('head_position() is %s, below the newest event %s', event_store.head_position(), max(global_position))
      FROM event_store.events
    HAVING max(global_position) > event_store.head_position();
END $$;

-- the initial state: streams, an aggregate with snapshots, upcasters,
-- projections (inline and async), saga types
SELECT event_store.append('fzfixed-1', '[{"type": "Plain"}, {"type": "Plain", "data": [1]}]', 0);
SELECT event_store.append('fzord-1', '[{"type": "OrderPlaced", "data": {"n": 1}}, {"type": "ItemAdded"}]', 0);
SELECT event_store.append('fzagg-1', '[{"type": "Added"}, {"type": "Added"}, {"type": "Added"}]', 0);
SELECT event_store.define_aggregate('fzagg', 'fz.r_count(jsonb, event_store.event)', '{"n": 0}', 3);
SELECT event_store.define_aggregate('fzord', 'fz.r_mutate(jsonb, event_store.event)');
SELECT event_store.register_upcaster('OrderPlaced', 1, 'fz.u_ok(jsonb, jsonb)', 'OrderPlacedV2');
SELECT event_store.register_upcaster('OrderPlacedV2', 2, 'fz.u_ok(jsonb, jsonb)');
SELECT event_store.register_upcaster('FzRead', 1, 'fz.u_read(jsonb, jsonb)');
SELECT event_store.create_projection('fz_inline', 'fz.h_inline(event_store.event)',
                                     categories => ARRAY['fzord', 'fzagg', 'fzmisc'], reset => 'fz.reset_models()');
SELECT event_store.create_projection('fz_async', 'fz.h_async(event_store.event)', mode => 'async');
SELECT event_store.create_projection('fz_mutate', 'fz.h_mutate(event_store.event)', event_types => ARRAY['FzMutate']);
SELECT event_store.create_subscription('fz_sub', partitions => 4, max_attempts => 2, retry_backoff => '10 ms');
SELECT event_store.define_saga('fz_leaf', '{"steps": [{"name": "a", "action": "fz.s_ok"}]}');
SELECT event_store.define_saga('fz_a', '{"steps": [
    {"name": "a", "action": "fz.s_ok", "compensation": "fz.s_ok"},
    {"name": "b", "max_attempts": 2, "backoff": "10 ms", "timeout": "1 second"},
    {"name": "c", "complete_on": "FzDone", "fail_on": "FzLost"}], "timeout": "1 hour"}');
SELECT event_store.define_saga('fz_b', '{"steps": [
    {"name": "a", "saga": "fz_leaf"},
    {"name": "b", "action": "fz.s_emit", "group": 2},
    {"name": "c", "complete_on": "FzDone2", "group": 2},
    {"name": "d", "action": "fz.s_flaky", "compensation": "fz.s_flaky", "max_attempts": 3, "backoff": "10 ms"}]}');
-- category grants, a deleted stream, a stream with retention
SELECT event_store.append('fzgrant-1', '[{"type": "Plain"}]', 0);
SELECT event_store.grant_category('fz_alice', 'fzgrant');
SELECT event_store.grant_category('fz_team', 'fzord', '{read}');
SELECT event_store.append('fzdel-1', '[{"type": "Plain"}, {"type": "Added"}]', 0);
SELECT event_store.delete_stream('fzdel-1');
SELECT event_store.append('fzret-1', '[{"type": "Plain"}, {"type": "Plain"}, {"type": "Plain"}]', 0);
SELECT event_store.set_stream_retention('fzret-1', max_count => 2);
SQL

# ------------------------------------------------------------- value helpers

sub new
{
	my ($class, %o) = @_;
	my $self = bless {
		connstr     => $o{connstr},                 # libpq connection string
		psql        => $o{psql} // 'psql',
		logfile     => $o{logfile},                 # server log, for the log checks
		seed        => $o{seed},
		iterations  => $o{iterations},
		doc         => $o{sqlstates_doc},           # docs/sqlstates.md
		known       => $o{known_defects} // [],
		calls_log   => $o{calls_log},
		check_every => $o{check_every} // 250,
		note        => $o{note} // sub { print STDERR "$_[0]\n" },
		timeout     => $o{call_timeout} // 60,
	}, $class;
	$self->{rng} = $self->{seed} + 1;
	$self->_rand for 1 .. 20;
	$self->_parse_doc;
	$self->{log_offset} = 0;
	return $self;
}

# A small deterministic generator of our own (xorshift64*), so that a seed
# gives the same calls on every platform and Perl version.
sub _rand
{
	my ($self) = @_;
	my $x = $self->{rng};
	$x ^= $x << 13;
	$x ^= $x >> 7;
	$x ^= $x << 17;
	$self->{rng} = $x;
	return ($x >> 11) / 9007199254740992;    # 53 bits
}

# integer in [0, n)
sub _int { my ($self, $n) = @_; return int($self->_rand * $n); }
sub _pick { my ($self, @a) = @_; return $a[ $self->_int(scalar @a) ]; }
sub _chance { my ($self, $p) = @_; return $self->_rand < $p; }

# weighted pick: list of [weight, value]
sub _wpick
{
	my ($self, @items) = @_;
	my $total = 0;
	$total += $_->[0] for @items;
	my $r = $self->_rand * $total;
	for my $it (@items)
	{
		return $it->[1] if ($r -= $it->[0]) < 0;
	}
	return $items[-1][1];
}

sub _uuid
{
	my ($self) = @_;
	my $hex = join '', map { sprintf '%04x', $self->_int(65536) } 1 .. 8;
	substr($hex, 12, 1) = '4';
	return join '-', substr($hex, 0, 8), substr($hex, 8, 4), substr($hex, 12, 4),
	  substr($hex, 16, 4), substr($hex, 20, 12);
}

# SQL literal (standard_conforming_strings on)
sub lit
{
	my ($s) = @_;
	return 'NULL' unless defined $s;
	$s =~ s/'/''/g;
	return "'$s'";
}

sub typed
{
	my ($s, $type) = @_;
	return defined $s ? lit($s) . "::$type" : "NULL::$type";
}

# --------------------------------------------------------------- JSON text

# JSON values: Perl strings are JSON strings; \'raw' is inserted verbatim
# (numbers, true, null, broken text); [..] arrays; obj(k, v, ...) objects
# (ordered, keys may repeat); rawstr('..') a string with raw escapes.
sub obj { return bless [@_], 'EsFuzz::Obj'; }
sub rawstr { my ($s) = @_; return bless \$s, 'EsFuzz::RawStr'; }

sub js
{
	no warnings 'recursion';
	my ($v) = @_;
	return 'null' unless defined $v;
	my $r = ref $v;
	return $$v if $r eq 'SCALAR';
	return '"' . $$v . '"' if $r eq 'EsFuzz::RawStr';
	return '[' . join(', ', map { js($_) } @$v) . ']' if $r eq 'ARRAY';
	if ($r eq 'EsFuzz::Obj')
	{
		my @p = @$v;
		my @out;
		while (@p)
		{
			my ($k, $x) = splice(@p, 0, 2);
			push @out, js($k) . ': ' . js($x);
		}
		return '{' . join(', ', @out) . '}';
	}
	my $s = $v;
	$s =~ s/(["\\])/\\$1/g;
	$s =~ s/([\x00-\x1f])/sprintf('\\u%04x', ord $1)/ge;
	return "\"$s\"";
}

sub jsonb_lit { my ($v) = @_; return lit(js($v)) . '::jsonb'; }

# ------------------------------------------------------------ value pools

my @UNICODE = (
	"\xc3\xbc",                    # u umlaut
	"\xe6\x97\xa5\xe6\x9c\xac",    # CJK
	"\xf0\x9f\x98\x80",            # emoji
	"e\xcc\x81",                   # combining accent
	"\xe2\x80\x8f",                # right-to-left mark
	"\xe2\x80\x8d",                # zero width joiner
	"\xc2\xa0",                    # no-break space
	"\xef\xbb\xbf",                # BOM
	"\xef\xbf\xbd",                # replacement character
);

# text that is hard to compress (long names that do not fit a btree entry)
sub _noise
{
	my ($self, $len) = @_;
	my @c = ('a' .. 'z', 'A' .. 'Z', 0 .. 9);
	return join '', map { $c[ $self->_int(scalar @c) ] } 1 .. $len;
}

# Some text: odd, empty, long, unicode, or one of the given good values
sub _text
{
	my ($self, @good) = @_;
	return $self->_pick(@good ? @good : 'fz') if $self->{valid};
	return $self->_wpick(
		[ 12, @good ? $self->_pick(@good) : 'fz' ],
		[ 1,  undef ],
		[ 1,  '' ],
		[ 1,  ' ' ],
		[ 1,  $self->_pick('-', '--', 'a-', '-a', 'a-b-c', "tab\there", "new\nline", "quote'\"", '%s%n', '\\', 'NULL', 'null') ],
		[ 1,  $self->_pick(@UNICODE) . 'x' . $self->_pick(@UNICODE) ],
		[ 0.4, 'x' x $self->_pick(127, 128, 1023, 1024, 1025, 5000) ],
		[ 0.2, $self->_noise($self->_pick(200, 3000)) ],
	);
}

my @I64 = ('0', '1', '-1', '2', '3', '10', '100', '2147483647', '2147483648', '9223372036854775807', '-9223372036854775808', '-2');
my @I32 = ('0', '1', '-1', '2', '3', '5', '10', '1000', '2147483647', '-2147483648', '-100');

sub _bigint
{
	my ($self, @good) = @_;
	return typed($self->_pick(@good ? @good : (0, 1, 2)), 'bigint') if $self->{valid};
	my $v = $self->_wpick([ 1, undef ], [ 0.1, $self->_pick('9223372036854775808', '1.5', 'x') ], [ 3, $self->_pick(@I64) ], [ 3, $self->_int(20) ], [ @good ? 4 : 0, $self->_pick(@good, 0) ]);
	return typed($v, 'bigint');
}

sub _int4
{
	my ($self, @good) = @_;
	return typed($self->_pick(@good ? @good : (1, 2)), 'int') if $self->{valid};
	my $v = $self->_wpick([ 1, undef ], [ 0.1, $self->_pick('2147483648', '-2147483649', '') ], [ 3, $self->_pick(@I32) ], [ 2, $self->_int(10) ], [ @good ? 4 : 0, $self->_pick(@good, 0) ]);
	return typed($v, 'int');
}

sub _bool
{
	my ($self) = @_;
	return typed($self->_pick('true', 'false'), 'boolean') if $self->{valid};
	return typed($self->_wpick([ 1, undef ], [ 4, 'true' ], [ 4, 'false' ], [ 0.1, 'maybe' ]), 'boolean');
}

sub _interval_small
{
	my ($self) = @_;
	return typed($self->_pick('0', '1 ms', '5 ms'), 'interval') if $self->{valid};
	return typed(
		$self->_pick(undef, '0', '1 microsecond', '1 ms', '5 ms', '-1 ms', '-178000000 years', '-1 mons', '-1 day +100 ms', '1 mon -30 days',
			'abc', '178000000000 years'),
		'interval');
}

# A text[] literal
sub _text_array
{
	my ($self, @good) = @_;
	my $q = sub { my $s = shift; $s =~ s/(["\\])/\\$1/g; return "\"$s\"" };
	if ($self->{valid})
	{
		return 'NULL::text[]' if $self->_chance(0.5);
		return typed('{' . join(',', map { $q->($self->_pick(@good)) } 1 .. 1 + $self->_int(3)) . '}', 'text[]');
	}
	my $v = $self->_wpick(
		[ 3, undef ],
		[ 1, '{}' ],
		[ 1, '{NULL}' ],
		[ 1, '{""}' ],
		[ 4, '{' . join(',', map { $q->($self->_pick(@good)) } 1 .. 1 + $self->_int(3)) . '}' ],
		[ 1, '{' . $q->($self->_pick(@good)) . ',NULL}' ],
		[ 1, '{{a,b},{c,d}}' ],
		[ 0.1, '{a' ],
		[ 1, '[5:6]={' . $q->($self->_pick(@good)) . ',x}' ],
		[ 1, '{"a-b","x y"}' ],
		[ 0.3, '{' . join(',', map { $q->("t$_") } 1 .. 300) . '}' ],
		[ 0.5, '{' . $q->($self->_text('x') // 'n') . '}' ],
	);
	return typed($v, 'text[]');
}

# --------------------------------------------------------------- fuzz state

# What the generator remembers (never read back from the database, so that
# the calls depend on the seed only)
sub _init_pools
{
	my ($self) = @_;
	# (never fzfixed-1: fz.u_read reads it, so an upcast event there would recurse)
	$self->{streams}     = [qw(fzord-1 fzagg-1 fzord-2 fzagg-2 fzmisc-1 fzmisc fzboom-1 fzgrant-1 fzdel-1 fzret-1)];
	$self->{event_ids}   = [];
	$self->{id_batches}  = [];
	$self->{saga_ids}    = [];
	$self->{saga_types}  = [qw(fz_leaf fz_a fz_b fz_c fz_d)];
	$self->{projections} = [qw(fz_inline fz_async fz_mutate fz_p1 fz_p2 fz_p3)];
	$self->{categories}  = [qw(fzord fzagg fzmisc fzother fzboom saga fzsaga fzgrant fzdel fzret)];
	$self->{types} = [qw(OrderPlaced OrderPlacedV2 ItemAdded Added FzBoom FzNull FzMutate FzDone FzDone2 FzLost FzOther FzRead Plain
	  SagaStarted SagaStepCompleted SagaStepFailed SagaCompleted $StreamDeleted $StreamReopened $StreamPurged)];
	$self->{step_names} = [qw(a b c d pay ship wait child)];
	$self->{tmp_functions} = [];
	$self->{tmp_seq} = 0;
}

sub _remember
{
	my ($self, $list, $v, $max) = @_;
	return unless defined $v;
	push @{ $self->{$list} }, $v;
	splice(@{ $self->{$list} }, 0, @{ $self->{$list} } - ($max // 200)) if @{ $self->{$list} } > ($max // 200);
}

sub _stream_id
{
	my ($self) = @_;
	return $self->_pick(@{ $self->{streams} }) if $self->{valid};
	my $s = $self->_wpick(
		[ 10, $self->_pick(@{ $self->{streams} }) ],
		[ 4,  $self->_pick(@{ $self->{categories} }) . '-' . $self->_int(30) ],
		[ 1,  'saga-' . ($self->_pick(@{ $self->{saga_ids} }) // $self->_uuid) ],
		[ 3,  $self->_text('fzmisc-' . $self->_int(5)) ],
	);
	$self->_remember('streams', $s, 60)
	  if defined $s && length($s) && length($s) <= 64 && $s !~ /^saga-/ && $self->_chance(0.3);
	return $s;
}

# ------------------------------------------------------------ events document

# A valid event object (as pairs), sometimes with a saga id in the metadata
sub _good_event
{
	my ($self, %o) = @_;
	my @p = (type => $o{type} // $self->_pick(@{ $self->{types} }));
	push @p, data => $self->_json_value(2) if $self->_chance(0.7);
	if ($self->_chance(0.4))
	{
		my @m = (user => 'fz');
		push @m, saga_id => $self->_pick(@{ $self->{saga_ids} }) if @{ $self->{saga_ids} } && $self->_chance(0.5);
		push @m, correlationId => $self->_pick('fz-corr', ($self->_pick(@{ $self->{saga_ids} }) // 'fz-corr')) if $self->_chance(0.3);
		push @p, metadata => obj(@m);
	}
	if ($self->_chance(0.3))
	{
		my $id = $self->_uuid;
		push @p, id => $id;
		$self->_remember('event_ids', $id, 100);
	}
	push @p, schema_version => \($self->_pick(1, 1, 2, 3)) if $self->_chance(0.3);
	return @p;
}

# Some JSON value, nested up to depth levels
sub _json_value
{
	my ($self, $depth) = @_;
	my $k = $self->_int($depth > 0 ? 9 : 6);
	return \'null' if $k == 0;
	return \($self->_pick('true', 'false')) if $k == 1;
	return \($self->_pick('0', '-0', '1', '-1', '1.5', '1e400', '-1e-400', '123456789012345678901234567890', '1E2', '0.000001')) if $k == 2;
	return $self->_pick('', 'x', 'boom', 'nul', $self->_pick(@UNICODE), 'a' x 300) if $k == 3;
	return rawstr($self->_pick('\\u00e9', '\\ud83d\\ude00', '\\"', '\\\\', '\\/', '\\n\\t')) if $k == 4;
	return obj() if $k == 5;
	return obj(map { ($self->_pick('a', 'b', 'boom', 'nul', 'saga_id', 'type', ''), $self->_json_value($depth - 1)) } 1 .. 1 + $self->_int(3)) if $k <= 7;
	return [ map { $self->_json_value($depth - 1) } 0 .. $self->_int(4) ];
}

# Mutate one event's pairs into something malformed or borderline
sub _mutate_event
{
	my ($self, @p) = @_;
	my %bad_type = (
		missing => sub { my @q; while (@_) { my ($k, $v) = splice(@_, 0, 2); push @q, $k, $v unless $k eq 'type' } @q },
	);
	my $m = $self->_int(23);
	if ($m == 0) { return $bad_type{missing}->(@p); }
	if ($m == 1) { return (@p, type => $self->_pick(\'1', \'true', \'null', [], obj(), [ 'X' ], '')); }
	if ($m == 2) { return (@p, type => ''); }
	if ($m == 3) { return (@p, metadata => $self->_pick('x', \'1', \'true', [], [ obj() ], \'null', '')); }
	if ($m == 4)
	{
		return (@p, id => $self->_pick(\'1', \'null', [], obj(), '', 'not-a-uuid', '12345678-1234-1234-1234-12345678901',
				'12345678-1234-1234-1234-1234567890123', '{12345678-1234-1234-1234-123456789012', '12345678123412341234123456789012',
				'{12345678123412341234123456789012}', '12345678-1234-1234-1234-123456789012}', '1234-5678-1234-1234-1234-12345678-9012',
				'12345678--1234-1234-1234-123456789012', '-12345678-1234-1234-1234-123456789012', '12345678-1234-1234-1234-123456789012-',
				'ABCDEF01-2345-6789-ABCD-EF0123456789', 'g2345678-1234-1234-1234-123456789012', ' 12345678-1234-1234-1234-123456789012',
				"\xef\xbc\x91" x 32, '00000000-0000-0000-0000-000000000000'));
	}
	if ($m == 5)
	{
		return (@p, schema_version => $self->_pick(\'0', \'-1', \'1.5', \'1.0', \'1e0', \'2147483647', \'2147483648', \'1e10', \'1e-5',
				\'99999999999999999999', '1', \'null', \'true', [], obj(), \'-0', \'0.0'));
	}
	if ($m == 6) { return (@p, $self->_pick('Type', 'typ', '', ' type', "type\n", "\xc3\xbc", 'data ', 'extra', 'saga_id'), \'1'); }
	if ($m == 7) { return (@p, data => $self->_deep($self->_pick(50, 500, 2000))); }
	if ($m == 8) { return (@p, data => 'x' x $self->_pick(10000, 200000)); }
	if ($m == 9) { return (@p, data => rawstr('a\\u0000b')); }
	if ($m == 10) { return (@p, data => rawstr($self->_pick('\\ud800', '\\udc00x', '\\uZZZZ'))); }
	if ($m == 11) { return (@p, type => 'T' x $self->_pick(200, 10000)); }
	if ($m == 12) { return (@p, type => $self->_pick(@UNICODE) . "\n\t" . $self->_pick(@UNICODE)); }
	if ($m == 13) { return (@p, data => \'null', metadata => \'null'); }
	if ($m == 14) { return (@p, type => $self->_pick(@{ $self->{types} })); }    # duplicate key: the last one counts
	if ($m == 15) { return (@p, metadata => obj(saga_id => $self->_pick('x', \'1', $self->_uuid, ($self->_pick(@{ $self->{saga_ids} }) // 'y'))), type => $self->_pick('FzDone', 'FzDone2', 'FzLost')); }
	if ($m == 16) { return (@p, data => obj(boom => \'true')); }
	if ($m == 17) { return (@p, data => obj(nul => \'true')); }
	if ($m == 18) { return (@p, id => ($self->_pick(@{ $self->{event_ids} }) // $self->_uuid)); }
	if ($m == 19) { return (@p, metadata => obj(map { ("k$_" => $_) } 1 .. 300)); }
	if ($m == 20) { return (@p, type => $self->_pick('FzBoom', 'FzNull', 'FzMutate')); }
	if ($m == 21) { return (@p, metadata => obj(correlationId => $self->_pick(obj(a => \'1'), [], \'null', \'7', 'c' x 1024, 'c' x 1025, 'x' x 3000, ''))); }
	return (@p, schema_version => \($self->_pick(1, 2, 3)), type => $self->_pick('OrderPlaced', 'OrderPlacedV2', 'FzRead', 'FzOther'));
}

sub _deep
{
	my ($self, $n) = @_;
	my $v = \'1';
	for (1 .. $n) { $v = $self->_chance(0.5) ? [$v] : obj(x => $v); }
	return $v;
}

# The events argument of append(), as an SQL expression
sub _events_arg
{
	my ($self) = @_;
	my $shape = $self->{valid} ? 4 + $self->_int(16) : $self->_int(20);
	return 'NULL::jsonb' if $shape == 0;
	if ($shape == 1)
	{
		return $self->_pick(q|'[]'::jsonb|, q|'{}'::jsonb|, q|'"x"'::jsonb|, q|'1'::jsonb|, q|'null'::jsonb|, q|'true'::jsonb|,
			q|'[[]]'::jsonb|, q|'[null]'::jsonb|, q|'[1, 2]'::jsonb|, q|'["OrderPlaced"]'::jsonb|, q|'[{"type": "A"}, 5]'::jsonb|,
			q|'{"type": "A"} '::jsonb|, q|'{"type": '::jsonb|, q|'{type: "A"}'::jsonb|, q|''::jsonb|, q|'[{"type": "A"},]'::jsonb|);
	}
	if ($shape == 2)
	{
		# idempotent retry of an earlier batch with ids, or a permutation of it
		my $b = $self->_pick(@{ $self->{id_batches} });
		if ($b)
		{
			my ($sid, $doc) = @$b;
			$self->{next_stream} = $sid if $self->_chance(0.7);
			$self->{next_expected_null} = 1 if $self->_chance(0.5);
			return jsonb_lit($self->_chance(0.8) ? $doc : [ reverse @$doc ]);
		}
	}
	if ($shape == 3)
	{
		# a big batch
		my $n = $self->_pick(100, 1000);
		return jsonb_lit([ map { obj(type => 'Bulk', data => obj(i => \$_)) } 1 .. $n ]);
	}
	my $n = $self->_wpick([ 6, 1 ], [ 3, 2 ], [ 2, 3 ], [ 1, 6 ]);
	my @events;
	my $with_ids = $self->_chance(0.15);
	for (1 .. $n)
	{
		my @p = $self->_good_event;
		push @p, id => $self->_uuid if $with_ids && !grep { !ref && $_ eq 'id' } @p;
		@p = $self->_mutate_event(@p) if !$self->{valid} && $self->_chance($n > 1 ? 0.25 : 0.45);
		push @events, obj(@p);
	}
	# duplicate ids inside the batch
	if ($n > 1 && !$self->{valid} && $self->_chance(0.1))
	{
		my $id = $self->_uuid;
		push @{ $events[0] }, id => $id;
		push @{ $events[-1] }, id => $id;
	}
	my $doc = ($n == 1 && $self->_chance(0.6)) ? $events[0] : \@events;
	if ($with_ids && ref $doc eq 'ARRAY')
	{
		$self->{pending_batch} = $doc;
	}
	return jsonb_lit($doc);
}

# ----------------------------------------------------------- saga documents

sub _step_function
{
	my ($self) = @_;
	return $self->_wpick(
		[ 10, $self->_pick(qw(fz.s_ok fz.s_ok fz.s_fail fz.s_null fz.s_scalar fz.s_array fz.s_flaky fz.s_emit fz.s_start)) ],
		[ 2,  $self->_pick(qw(fz.s_text fz.s_setof fz.s_proc fz.nope nope fz.h_inline lower)) ],
		[ 2,  $self->_pick('x.y.z', 'a.b.c.d', 'foo(int', '"', 'fz.s_ok(uuid, jsonb)', 'fz."s_ok"', 'FZ.S_OK', 'pg_catalog.now', ' fz.s_ok',
			'fz.s_ok;drop', 'fz.', '.s_ok', "\xc3\xbc", 'x' x 100, 'fz.s_ok--', 'fz.s_ok)', '(', ')', "fz.s\nok") ],
		[ 1,  $self->_pick(\'1', \'null', [], obj(), '') ],
	);
}

sub _interval_text
{
	my ($self) = @_;
	return $self->_wpick(
		[ 6, $self->_pick('1 ms', '10 ms', '50 ms', '1 second', '1 hour', '0', '1 microsecond') ],
		[ 2, $self->_pick('abc', '-1 second', '101 years', '100 years', '1e300 seconds', 'infinity', '', 'P1D', '1 mon', '99999999999 years',
				'2147483647 days', '-0', '1 day -1 second', '@ 1 minute ago', '00:00:01', '1.5 ms', '1000000000 hours', "1\xc3\xbc") ],
		[ 1, $self->_pick(\'5', \'null', \'true', [], obj()) ],
	);
}

sub _saga_definition
{
	my ($self, $type) = @_;
	my @steps;
	my $n = 1 + $self->_int(4);
	for my $i (1 .. $n)
	{
		my @s = (name => $self->_pick(@{ $self->{step_names} }));
		my $kind = $self->_pick(qw(local local external event nested));
		if ($kind eq 'local') { push @s, action => $self->_step_function; }
		elsif ($kind eq 'event')
		{
			push @s, complete_on => $self->_pick('FzDone', 'FzDone2');
			push @s, fail_on => 'FzLost' if $self->_chance(0.5);
			push @s, action => $self->_step_function if $self->_chance(0.3);
		}
		elsif ($kind eq 'nested') { push @s, saga => $self->_pick(@{ $self->{saga_types} }); }
		push @s, compensation => $self->_step_function if $self->_chance(0.3);
		push @s, group => \($self->_pick(1, 1, 2, 3)) if $self->_chance(0.3);
		push @s, timeout => $self->_interval_text if $self->_chance(0.3);
		push @s, max_attempts => \($self->_pick(1, 2, 3)) if $self->_chance(0.3);
		push @s, backoff => $self->_interval_text if $self->_chance(0.3);
		push @steps, obj(@s);
	}
	my @d = (steps => \@steps);
	push @d, timeout => $self->_interval_text if $self->_chance(0.3);

	# and now break it, often
	my $mutations = $self->{valid} ? 0 : $self->_wpick([ 5, 0 ], [ 3, 1 ], [ 1, 2 ]);
	for (1 .. $mutations)
	{
		my $m = $self->_int(16);
		my @objs = grep { ref $_ eq 'EsFuzz::Obj' } @steps;
		my $st = @objs ? $objs[ $self->_int(scalar @objs) ] : obj();
		if ($m == 0) { push @d, $self->_pick('step', 'Steps', '', 'extra'), \'1'; }
		elsif ($m == 1) { @d = (steps => $self->_pick(obj(), 'x', \'1', \'null', [], obj(a => \'1'))); }
		elsif ($m == 2) { @d = (timeout => '1 hour'); }
		elsif ($m == 3) { $steps[0] = $self->_pick(\'1', 'x', \'null', [], [ obj(name => 'a') ]); }
		elsif ($m == 4) { push @$st, name => $self->_pick(\'1', '', \'null', [], obj(), 'a' x 5000, $self->_noise(3000), "\xc3\xbc"); }
		elsif ($m == 5) { push @$st, $self->_pick(@{ [qw(Name act compensate group_ step)] }, ''), \'1'; }
		elsif ($m == 6) { push @$st, group => $self->_pick(\'0', \'-1', \'1.5', '1', \'1e10', \'2147483648', \'2147483647', \'null', \'true', \'1e400', \'1.0'); }
		elsif ($m == 7) { push @$st, max_attempts => $self->_pick(\'0', \'1000001', \'1000000', \'1.5', '3', \'null', \'-3', \'1e-400'); }
		elsif ($m == 8) { push @$st, $self->_pick('timeout', 'backoff'), $self->_interval_text; }
		elsif ($m == 9) { push @$st, saga => $self->_pick('nope', $type // 'x', '', \'1', @{ $self->{saga_types} }); }
		elsif ($m == 10) { push @$st, saga => 'fz_leaf', action => 'fz.s_ok'; }
		elsif ($m == 11) { push @$st, fail_on => 'FzLost'; my @q; my @x = @$st; while (@x) { my ($k, $v) = splice(@x, 0, 2); push @q, $k, $v unless $k eq 'complete_on' || $k eq 'action' } @$st = @q; }
		elsif ($m == 12) { push @$st, $self->_pick('complete_on', 'fail_on'), $self->_pick('', \'1', 'T' x 3000, $self->_noise(3000), 'FzDone'); }
		elsif ($m == 13) { push @steps, obj(name => $self->_pick(@{ $self->{step_names} })); }
		elsif ($m == 14) { @steps = map { obj(name => "s$_", action => 'fz.s_ok') } 1 .. 200; @d = (steps => \@steps); }
		else { push @$st, action => $self->_step_function, compensation => $self->_step_function; }
	}
	return obj(@d);
}

# ------------------------------------------------------- function specs
#
# Each public function: its family, whether it returns a set, and its
# arguments as [name, has_default, generator].  A generator returns an SQL
# expression (typed literal or subquery).

sub _regproc
{
	my ($self, $role) = @_;
	my %good = (
		reducer  => [ 'fz.r_count(jsonb, event_store.event)', 'fz.r_mutate(jsonb, event_store.event)' ],
		upcaster => [ 'fz.u_ok(jsonb, jsonb)', 'fz.u_ok(jsonb, jsonb)', 'fz.u_mutate(jsonb, jsonb)' ],
		handler  => [ 'fz.h_inline(event_store.event)', 'fz.h_async(event_store.event)', 'fz.h_mutate(event_store.event)',
		              'fz.h_table()' ],
		reset    => [ 'fz.reset_models()', 'fz.reset_boom()' ],
	);
	my @tmp = map { $_->[1] } grep { $_->[0] eq $role } @{ $self->{tmp_functions} };
	return typed($self->_pick(@{ $good{$role} }), 'regprocedure') if $self->{valid};
	my $v = $self->_wpick(
		[ 10, $self->_pick(@{ $good{$role} }) ],
		[ @tmp ? 3 : 0, $self->_pick(@tmp, 'x') ],
		[ 1, undef ],
		[ 4,
			$self->_pick(
				'lower(text)', 'now()', 'fz.h_inline(event_store.event)', 'fz.r_count(jsonb, event_store.event)',
				'fz.u_ok(jsonb, jsonb)', 'fz.s_ok(uuid, jsonb)', 'sum(integer)', 'fz.agg_json(jsonb)', 'row_number()',
				'fz.h_proc(event_store.event)', 'fz.s_proc(uuid, jsonb)', 'fz.r_setof(jsonb, event_store.event)',
				'fz.s_setof(uuid, jsonb)', 'fz.u_text(jsonb, jsonb)', 'fz.u_three(jsonb, jsonb, integer)', 'fz.h_ret(event_store.event)',
				'fz.h_json(jsonb)', 'fz.reset_args(integer)', 'event_store.head_position()', 'event_store.saga_tick()',
				'event_store.append(text, jsonb, bigint)', 'jsonb_concat(jsonb, jsonb)', 'fz.reset_models()', 'pg_sleep(double precision)')
		],
		[ 1, $self->_pick('0', '1', '4294967295', '-', $self->{dropped_oid}) ],
		[ 0.5, $self->_pick('fz.nope(jsonb, jsonb)', 'nosuch.f()', 'f(nosuchtype)', 'foo(', 'fz.u_ok', '', ' ', 'fz.u_ok(jsonb)', 'a.b.c.d()') ],
	);
	return typed($v, 'regprocedure');
}

# a saga id: one we started, a running or claimed step's saga, a random one
sub _saga_id_arg
{
	my ($self) = @_;
	return typed($self->_pick(@{ $self->{saga_ids} }) // $self->_uuid, 'uuid') if $self->{valid} && $self->_chance(0.5);
	return $self->_wpick(
		[ 4, typed($self->_pick(@{ $self->{saga_ids} }) // $self->_uuid, 'uuid') ],
		[ 4, "(SELECT saga_id FROM event_store.saga_steps WHERE status IN ('running', 'compensating') ORDER BY saga_id, step_no LIMIT 1 OFFSET " . $self->_int(5) . ')' ],
		[ 1, "(SELECT saga_id FROM event_store.sagas ORDER BY saga_id LIMIT 1 OFFSET " . $self->_int(50) . ')' ],
		[ 1, typed($self->_uuid, 'uuid') ],
		[ 1, 'NULL::uuid' ],
		[ 0.3, typed($self->_pick('not-a-uuid', '', '{12345678-1234-1234-1234-123456789012}'), 'uuid') ],
	);
}

# a regrole argument: the fuzz roles, the superuser, OIDs of no role, names
# of no role, malformed names
sub _role_arg
{
	my ($self) = @_;
	my @roles = qw(fz_alice fz_bob fz_team);
	return typed($self->_pick(@roles), 'regrole') if $self->{valid};
	return typed(
		$self->_wpick(
			[ 12,  $self->_pick(@roles) ],
			[ 1,   undef ],
			[ 1,   $self->_pick('postgres', 'pg_monitor', 'FZ_ALICE', '"fz_alice"') ],
			[ 1,   $self->_pick('-', '0', '4294967295', $self->{gone_role}) ],
			[ 0.5, $self->_pick('fz_nobody', 'public', '', ' ') ],
			[ 0.3, $self->_pick('a.b', '"', 'fz_alice)', 'x' x 100, "\xc3\xbc") ],
		),
		'regrole');
}

# the privileges of grant_category / revoke_category
sub _privileges_arg
{
	my ($self) = @_;
	my @good = ('{append,read}', '{append}', '{read}', '{read,append}');
	return typed($self->_pick(@good), 'text[]') if $self->{valid};
	return $self->_wpick(
		[ 6, typed($self->_pick(@good), 'text[]') ],
		[ 1, typed($self->_pick('{read,read}', '{append,read,append}', '[2:3]={append,read}'), 'text[]') ],
		[ 4, $self->_text_array('append', 'read', 'write', 'APPEND', ' read', 'select') ],
	);
}

# a stream id for the lifecycle functions: mostly one that exists (a saga's
# stream too), else what _stream_id gives
sub _lifecycle_stream
{
	my ($self) = @_;
	return $self->_wpick(
		[ 8, typed($self->_stream_id, 'text') ],
		[ 1, "(SELECT 'saga-' || saga_id FROM event_store.sagas ORDER BY saga_id LIMIT 1 OFFSET " . $self->_int(20) . ')' ],
		[ 1, "(SELECT stream_id FROM event_store.stream_metadata WHERE deleted_at IS NOT NULL ORDER BY stream_id LIMIT 1 OFFSET "
			  . $self->_int(10) . ')' ],
	);
}

# max_age of set_stream_retention (intervals beyond the range of timestamps
# are in @HUGE_MAX_AGE)
our @HUGE_MAX_AGE = ('7000 years', '10000 years', '178000000 years', '2147483647 days');

sub _max_age
{
	my ($self) = @_;
	my @good = ('1 microsecond', '1 ms', '100 ms', '1 second', '1 hour', '30 days', '1 mon', '100 years');
	return $self->_chance(0.3) ? 'NULL::interval' : typed($self->_pick(@good), 'interval') if $self->{valid};
	return typed(
		$self->_wpick(
			[ 4, undef ],
			[ 8, $self->_pick(@good) ],
			[ 2, $self->_pick('0', '-1 ms', '-1 mons', '1 mon -30 days', '-1 day +100 ms', '1 day -1 second', '-0') ],
			[ 0.3, $self->_pick('abc', '178000001 years', '') ],
			[ 0.5, $self->_pick(@HUGE_MAX_AGE) ],
		),
		'interval');
}

sub _specs
{
	my ($self) = @_;
	my $stream    = sub { typed($self->_stream_id, 'text') };
	my $category  = sub { typed($self->_text(@{ $self->{categories} }), 'text') };
	my $types_arr = sub { $self->_text_array(@{ $self->{types} }) };
	# mostly the projections of the setup, which exist unless dropped
	my $sub_name = sub { typed($self->_text('fz_sub', 'fz_sub', 'fz_sub2'), 'text') };
	my $consumer = sub { typed($self->_text('k1', 'k2', 'k3'), 'text') };
	my $parked_stream = sub { $self->_chance(0.5) ? 'NULL::text' : typed($self->_stream_id, 'text') };
	my $proj_name = sub { typed($self->_text($self->_chance(0.7) ? qw(fz_inline fz_async fz_mutate) : @{ $self->{projections} }), 'text') };
	my $saga_type = sub { typed($self->_text(@{ $self->{saga_types} }), 'text') };
	my $step      = sub { typed($self->_text(@{ $self->{step_names} }), 'text') };
	my $jsonv     = sub { !$self->{valid} && $self->_chance(0.1) ? 'NULL::jsonb' : jsonb_lit($self->_json_value(3)) };
	# grant_category and revoke_category take the same arguments
	my $grant_args = [
		[ role       => 0, sub { $self->_role_arg } ],
		[ category   => 0, $category ],
		[ privileges => 1, sub { $self->_privileges_arg } ],
	];
	# the stream's current version (of the stream in argument 1) plus one of @_
	my $cur_version = sub {
		'(SELECT COALESCE(max(stream_version), 0) + ' . $self->_pick(@_) . " FROM event_store.events WHERE stream_id = \$1)";
	};
	# a saga and one of its steps (same row of saga_steps), or each on its own
	my $pair = sub {
		return unless $self->_chance(0.6);
		my $k = $self->_pick(0, 0, 1, 2);
		my $st = $self->_pick(q{('running', 'compensating')}, q{('running')}, q{('running')}, q{('compensating')},
			q{('pending', 'completed', 'failed', 'compensated')});
		my $q = "FROM event_store.saga_steps WHERE status IN $st ORDER BY saga_id, step_no LIMIT 1 OFFSET $k)";
		$self->{pair} = [ "(SELECT saga_id $q", "(SELECT name $q" ];
	};
	my $pair_saga = sub { $self->{pair} ? $self->{pair}[0] : $self->_saga_id_arg };
	my $pair_step = sub { $self->{pair} ? $self->{pair}[1] : $step->() };
	my $after = sub {
		$self->_chance(0.3)
		  ? '(SELECT GREATEST(event_store.head_position() - ' . $self->_int(50) . ', 0))'
		  : $self->_bigint;
	};

	return {
		append => {
			family => 'append',
			args   => [
				[ stream_id        => 0, sub { typed($self->{next_stream} // $self->_stream_id, 'text') } ],
				[ events           => 0, sub { $self->{append_events} } ],
				[ expected_version => 1, sub {
					return 'NULL::bigint' if $self->{next_expected_null};
					$self->_chance(0.5) ? $cur_version->(0, 0, 0, -1, 1) : $self->_bigint(0, 1);
				} ],
			],
			# the events first: an idempotent retry picks its stream too
			prepare => sub { $self->{append_events} = $self->_events_arg },
		},
		last_appended_position => { family => 'append', args => [] },
		stream_version => { family => 'read', args => [ [ stream_id => 0, $stream ] ] },
		read_stream    => {
			family => 'read', set => 1,
			args   => [
				[ stream_id => 0, $stream ],
				[ from_version => 1, sub { $self->_bigint(1, 2) } ],
				[ max_count    => 1, sub { $self->_bigint(1, 5) } ],
				[ backward     => 1, sub { $self->_bool } ],
				[ raw          => 1, sub { $self->_bool } ],
			],
		},
		read_all => {
			family => 'read', set => 1,
			args   => [
				[ after_position => 1, $after ],
				[ max_count      => 1, sub { $self->_int4(1, 10, 100) } ],
				[ event_types    => 1, $types_arr ],
				[ raw            => 1, sub { $self->_bool } ],
			],
		},
		read_category => {
			family => 'read', set => 1,
			args   => [
				[ category       => 0, $category ],
				[ after_position => 1, $after ],
				[ max_count      => 1, sub { $self->_int4(1, 10, 100) } ],
				[ event_types    => 1, $types_arr ],
				[ raw            => 1, sub { $self->_bool } ],
			],
		},
		read_correlated => {
			family => 'read', set => 1,
			args   => [
				# the saga ids (their events are stamped with them), or anything
				[ correlation_id => 0, sub { typed($self->_text((map { "$_" } @{ $self->{saga_ids} }), 'fz-corr'), 'text') } ],
				[ after_position => 1, $after ],
				[ max_count      => 1, sub { $self->_int4(1, 10, 100) } ],
			],
		},
		head_position   => { family => 'read', args => [] },
		wait_for_events => {
			family => 'read',
			args   => [
				[ after_position => 0, sub { $self->{wait_after} } ],
				# (left out, the default of 10 seconds, only where it does not wait)
				[ timeout => 0, sub { $self->{wait_timeout} } ],
			],
			prepare => sub {
				# a long timeout only where the head is past after_position already
				if ($self->_chance(0.2))
				{
					$self->{wait_timeout} = $self->_pick(undef, map { typed($_, 'interval') } '1 hour', '178000000 years', '10 seconds');
					$self->{wait_after} = $self->_pick('0::bigint', '(SELECT GREATEST(event_store.head_position() - 1, 0))', '-1::bigint', 'NULL::bigint');
				}
				else
				{
					$self->{wait_timeout} = $self->_interval_small;
					$self->{wait_after} = $self->_chance(0.5) ? $after->() : $self->_bigint;
				}
			},
		},
		register_upcaster => {
			family => 'upcaster',
			args   => [
				[ event_type          => 0, sub { typed($self->_text(@{ $self->{types} }), 'text') } ],
				[ from_schema_version => 0, sub { $self->_int4(1, 1, 2, 3) } ],
				[ upcaster            => 0, sub { $self->_regproc('upcaster') } ],
				[ to_event_type       => 1, sub { typed($self->_chance(0.5) ? undef : $self->_text(@{ $self->{types} }), 'text') } ],
			],
		},
		drop_upcaster => {
			family => 'upcaster',
			args   => [
				[ event_type          => 0, sub { typed($self->_text(@{ $self->{types} }), 'text') } ],
				[ from_schema_version => 0, sub { $self->_int4(1, 1, 2, 3) } ],
			],
		},
		define_aggregate => {
			family => 'aggregate',
			args   => [
				[ category       => 0, $category ],
				[ reducer        => 0, sub { $self->_regproc('reducer') } ],
				[ initial_state  => 1, $jsonv ],
				[ snapshot_every => 1, sub { $self->_chance(0.4) ? 'NULL::int' : $self->_int4(1, 2, 3) } ],
				[ state_version  => 1, sub { $self->_int4(1, 1, 2) } ],
			],
		},
		load_aggregate => {
			family => 'aggregate', set => 1,
			args   => [ [ stream_id => 0, $stream ], [ at_version => 1, sub { $self->_bigint(1, 2, 3) } ] ],
		},
		save_snapshot => {
			family => 'aggregate',
			args   => [
				[ stream_id      => 0, $stream ],
				[ stream_version => 0, sub { $self->_chance(0.5) ? $cur_version->(-1, 0, 0, 1) : $self->_bigint(1, 2, 3) } ],
				[ state          => 0, $jsonv ],
				[ state_version  => 1, sub { $self->_int4(1, 1, 2) } ],
			],
		},
		load_snapshot => {
			family => 'aggregate', set => 1,
			args   => [ [ stream_id => 0, $stream ], [ max_version => 1, sub { $self->_bigint(1, 2, 3) } ] ],
		},
		purge_snapshots => { family => 'aggregate', args => [ [ category => 1, $category ] ] },
		create_projection => {
			family => 'projection',
			args   => [
				[ name        => 0, $proj_name ],
				[ handler     => 0, sub { $self->_regproc('handler') } ],
				[ event_types => 1, $types_arr ],
				[ categories  => 1, sub { $self->_text_array(@{ $self->{categories} }) } ],
				[ mode        => 1, sub { typed($self->_text('inline', 'async', 'async'), 'text') } ],
				[ reset       => 1, sub { $self->_chance(0.5) ? 'NULL::regprocedure' : $self->_regproc('reset') } ],
				[ partitions  => 1, sub { $self->_int4(1, 1, 2, 4) } ],
				[ on_error    => 1, sub { typed($self->_text('fail', 'fail', 'park'), 'text') } ],
			],
		},
		rebuild_projection => { family => 'projection', args => [ [ name => 0, $proj_name ] ] },
		pause_projection   => { family => 'projection', args => [ [ name => 0, $proj_name ] ] },
		resume_projection  => { family => 'projection', args => [ [ name => 0, $proj_name ] ] },
		drop_projection    => { family => 'projection', args => [ [ name => 0, $proj_name ] ] },
		wait_for_projection => {
			family => 'projection',
			args   => [
				[ name     => 0, $proj_name ],
				[ position => 0, sub { $self->_chance(0.5) ? '(SELECT event_store.head_position())' : $after->() } ],
				# always short: a projection that never gets there waits the whole timeout
				[ timeout  => 0, sub { $self->_interval_small } ],
			],
		},
		run_projections    => { family => 'projection', args => [ [ max_events => 1, sub { $self->_int4(1, 10, 10000) } ] ] },
		define_saga => {
			family => 'saga',
			args   => [
				[ saga_type  => 0, sub { $self->{saga_type_lit} } ],
				[ definition => 0, sub {
					$self->_wpick(
						[ 20, jsonb_lit($self->_saga_definition($self->{saga_type_val})) ],
						[ 1,  'NULL::jsonb' ],
						[ 1,  $self->_pick(q{'[]'::jsonb}, q{'"x"'::jsonb}, q{'null'::jsonb}, q{'{}'::jsonb}, q{'{"steps": []}'::jsonb}) ],
					);
				} ],
			],
			prepare => sub {
				$self->{saga_type_val} = $self->_text(@{ $self->{saga_types} });
				$self->{saga_type_lit} = typed($self->{saga_type_val}, 'text');
			},
		},
		start_saga => {
			family => 'saga',
			args   => [
				[ saga_type => 0, $saga_type ],
				[ data      => 0, sub { $self->_chance(0.8) ? jsonb_lit(obj(order => $self->_int(5), map { ($_ => $self->_json_value(1)) } $self->_pick('a', 'b'))) : $jsonv->() } ],
				[ saga_id   => 1, sub {
					my $id = $self->_wpick([ 6, $self->_uuid ], [ 2, $self->_pick(@{ $self->{saga_ids} }) ], [ 1, undef ]);
					$self->_remember('saga_ids', $id, 100) if defined $id;
					return typed($id, 'uuid');
				} ],
			],
		},
		complete_saga_step => {
			family  => 'saga',
			args    => [ [ saga_id => 0, $pair_saga ], [ step => 0, $pair_step ], [ result => 1, $jsonv ] ],
			prepare => $pair,
		},
		fail_saga_step => {
			family => 'saga',
			args   => [
				[ saga_id   => 0, $pair_saga ],
				[ step      => 0, $pair_step ],
				[ error     => 0, sub { typed($self->_text('card declined', 'x'), 'text') } ],
				[ retryable => 1, sub { $self->_bool } ],
			],
			prepare => $pair,
		},
		claim_saga_steps => {
			family => 'saga', set => 1,
			args   => [
				[ worker     => 0, sub { typed($self->_text('w1', 'w2'), 'text') } ],
				[ max_count  => 1, sub { $self->_int4(1, 10) } ],
				[ step_names => 1, sub { $self->_text_array(@{ $self->{step_names} }) } ],
				[ lease      => 1, sub { $self->_chance(0.5) ? typed($self->_pick('30 seconds', '1 ms', '100 ms'), 'interval') : $self->_interval_small } ],
			],
		},
		create_subscription => {
			family => 'subscription',
			args   => [
				[ name           => 0, $sub_name ],
				[ categories     => 1, sub { $self->_text_array(@{ $self->{categories} }) } ],
				[ event_types    => 1, $types_arr ],
				[ partitions     => 1, sub { $self->_int4(1, 2, 4, 1024, 1025) } ],
				[ start_position => 1, sub { $self->_chance(0.5) ? $after->() : $self->_bigint(0, 0, 1) } ],
				[ max_attempts   => 1, sub { $self->_int4(1, 2, 5) } ],
				[ retry_backoff  => 1, sub { $self->_chance(0.5) ? typed($self->_pick('10 ms', '1 second'), 'interval') : $self->_interval_small } ],
			],
		},
		drop_subscription => { family => 'subscription', args => [ [ name => 0, $sub_name ] ] },
		claim_events => {
			family => 'subscription', set => 1,
			args   => [
				[ subscription => 0, $sub_name ],
				[ consumer     => 0, $consumer ],
				[ max_count    => 1, sub { $self->_int4(1, 10, 100) } ],
				[ lease        => 1, sub { $self->_chance(0.5) ? typed($self->_pick('30 seconds', '1 ms', '100 ms'), 'interval') : $self->_interval_small } ],
				[ wait         => 1, sub { $self->_interval_small } ],
			],
		},
		ack_events => {
			family => 'subscription',
			args   => [
				[ subscription   => 0, $sub_name ],
				[ consumer       => 0, $consumer ],
				[ up_to_position => 0, sub { $self->_chance(0.5) ? '(SELECT event_store.head_position())' : $after->() } ],
			],
		},
		nack_event => {
			family => 'subscription',
			args   => [
				[ subscription    => 0, $sub_name ],
				[ consumer        => 0, $consumer ],
				[ global_position => 0, $after ],
				[ error           => 0, sub { typed($self->_text('handler failed', 'x'), 'text') } ],
				[ retry_after     => 1, sub { $self->_chance(0.5) ? 'NULL::interval' : $self->_interval_small } ],
			],
		},
		release_events => { family => 'subscription', args => [ [ subscription => 0, $sub_name ], [ consumer => 0, $consumer ] ] },
		replay_parked  => { family => 'subscription', args => [ [ subscription => 0, $sub_name ], [ stream_id => 1, $parked_stream ] ] },
		skip_parked    => { family => 'subscription', args => [ [ subscription => 0, $sub_name ], [ stream_id => 1, $parked_stream ] ] },
		saga_tick  => { family => 'saga', args => [] },
		saga_state => { family => 'saga', args => [ [ saga_id => 0, sub { $self->_saga_id_arg } ] ] },
		# (the overload of the saga type: the argument names of the last definition)
		saga_diagram => { family => 'saga', args => [ [ saga_type => 0, $saga_type ] ] },
		retry_saga => { family => 'saga', args => [ [ saga_id => 0, sub { $self->_saga_id_arg } ] ] },
		resolve_saga => {
			family => 'saga',
			args   => [
				[ saga_id => 0, sub { $self->_saga_id_arg } ],
				[ status  => 0, sub { typed($self->_text('completed', 'compensated'), 'text') } ],
				[ note    => 0, sub { typed($self->_text('settled by hand', ''), 'text') } ],
			],
		},
		grant_category  => { family => 'grants', args => $grant_args },
		revoke_category => { family => 'grants', args => $grant_args },
		delete_stream => {
			family => 'lifecycle',
			args   => [
				[ stream_id        => 0, sub { $self->_lifecycle_stream } ],
				[ expected_version => 1, sub {
					return 'NULL::bigint' if $self->_chance(0.4);
					$self->_chance(0.6) ? $cur_version->(0, 0, 0, -1, 1) : $self->_bigint(0, 1, 2);
				} ],
			],
		},
		reopen_stream => { family => 'lifecycle', args => [ [ stream_id => 0, sub { $self->_lifecycle_stream } ] ] },
		purge_stream  => {
			family  => 'lifecycle',
			args    => [ [ stream_id => 0, sub { $self->_lifecycle_stream } ] ],
			# event_store.allow_purge: on in most calls (a superuser-only setting)
			prepare => sub { $self->{pre_sql} = 'SET LOCAL event_store.allow_purge = on' if $self->_chance(0.7) },
		},
		set_stream_retention => {
			family => 'lifecycle',
			args   => [
				[ stream_id => 0, sub { $self->_lifecycle_stream } ],
				[ max_count => 1, sub { $self->_chance(0.4) ? 'NULL::bigint' : $self->_bigint(1, 2, 3, 5, 100) } ],
				[ max_age   => 1, sub { $self->_max_age } ],
			],
		},
		enforce_retention => { family => 'lifecycle', args => [] },
		# archiving to the default tablespace (the fuzz node has no other):
		# positions around the head, on and off the ranges' boundaries
		archive_events => {
			family => 'lifecycle',
			args   => [
				[ before_position => 0, sub {
					return '(SELECT event_store.head_position() + 1)' if $self->_chance(0.2);
					return '(SELECT max(end_position) FROM event_store.archived_ranges)' if $self->_chance(0.2);
					$self->_bigint(1, 10, 50, 100, 200);
				} ],
				[ tablespace => 0, sub {
					typed($self->{valid} ? 'pg_default'
						: $self->_pick('pg_default', 'pg_default', 'pg_default', 'fz_no_such_space', 'pg_global', '', undef), 'name');
				} ],
			],
		},
		# services: the fuzz node's wal_level is not logical, so a well-formed
		# create_publication is refused (55000); an import's connection never
		# reaches a server (08006) or is malformed (22023)
		create_publication => {
			family => 'services',
			args   => [
				[ name        => 0, sub { typed($self->_text('fz_pub'), 'text') } ],
				[ categories  => 0, sub { $self->_text_array(@{ $self->{categories} }) } ],
				[ event_types => 1, $types_arr ],
			],
		},
		drop_publication => { family => 'services', args => [ [ name => 0, sub { typed($self->_text('fz_pub'), 'text') } ] ] },
		create_import => {
			family => 'services',
			args   => [
				[ name        => 0, sub { typed($self->_text('fz_import'), 'text') } ],
				[ connection  => 0, sub {
					typed($self->_pick('host=/nonexistent port=1 dbname=fz connect_timeout=1',
							'not a connection string', "dbname='unterminated", undef), 'text');
				} ],
				[ publication => 0, sub { typed($self->_text('fz_pub'), 'text') } ],
			],
		},
		drop_import => { family => 'services', args => [ [ name => 0, sub { typed($self->_text('fz_import'), 'text') } ] ] },
	};
}

# The other statements: the views, DML on the immutable table, and DDL that
# drops and replaces callbacks under the registries.
sub _other_statement
{
	my ($self) = @_;
	my $k = $self->_int(10);
	if ($k <= 1)
	{
		return ('view', $self->_pick('SELECT count(*) FROM event_store.projection_status',
				'SELECT count(*) FROM event_store.saga_problems',
				'SELECT count(*), sum(lag_events) FROM event_store.projection_status',
				'SELECT * FROM event_store.stats', 'SELECT * FROM event_store.stats'));
	}
	if ($k <= 3)
	{
		my $what = $self->_pick('UPDATE', 'DELETE', 'TRUNCATE');
		my $sql = {
			UPDATE   => "UPDATE event_store.events SET data = '{}' WHERE global_position = " . $self->_int(10),
			DELETE   => 'DELETE FROM event_store.events WHERE global_position = ' . $self->_int(10),
			TRUNCATE => 'TRUNCATE event_store.events',
		}->{$what};
		return ($what, $sql);
	}
	# DDL: a temporary callback, later dropped or replaced
	my $n = ++$self->{tmp_seq};
	if (@{ $self->{tmp_functions} } && $self->_chance(0.5))
	{
		my $i = $self->_int(scalar @{ $self->{tmp_functions} });
		my ($role, $sig) = @{ $self->{tmp_functions}[$i] };
		if ($self->_chance(0.7))
		{
			splice(@{ $self->{tmp_functions} }, $i, 1);
			return ('ddl', "DROP FUNCTION IF EXISTS $sig");
		}
		return ('ddl', $self->_tmp_function_sql($role, $sig, 1));
	}
	my $role = $self->_pick('reducer', 'upcaster', 'handler', 'reset');
	my $sig = {
		reducer  => "fz.tmp_r$n(jsonb, event_store.event)",
		upcaster => "fz.tmp_u$n(jsonb, jsonb)",
		handler  => "fz.tmp_h$n(event_store.event)",
		reset    => "fz.tmp_reset$n()",
	}->{$role};
	push @{ $self->{tmp_functions} }, [ $role, $sig ];
	return ('ddl', $self->_tmp_function_sql($role, $sig, 0));
}

sub _tmp_function_sql
{
	my ($self, $role, $sig, $replace) = @_;
	my $cr = $replace ? 'CREATE OR REPLACE' : 'CREATE';
	my $body = {
		reducer  => "RETURNS jsonb LANGUAGE sql AS \$\$ SELECT jsonb_build_object('t', \$2.event_type, 'r', $replace) \$\$",
		upcaster => "RETURNS jsonb LANGUAGE sql AS \$\$ SELECT jsonb_build_object('tmp', $replace) \$\$",
		handler  => 'RETURNS void LANGUAGE sql AS $$ SELECT $$',
		reset    => 'RETURNS void LANGUAGE sql AS $$ SELECT $$',
	}->{$role};
	return "$cr FUNCTION $sig $body";
}

# ---------------------------------------------------------- building a call

my @FUNCTION_WEIGHTS = (
	[ 30, 'append' ],
	[ 3,  'stream_version' ],
	[ 5,  'read_stream' ],
	[ 4,  'read_all' ],
	[ 4,  'read_category' ],
	[ 2,  'read_correlated' ],
	[ 1,  'head_position' ],
	[ 2,  'wait_for_events' ],
	[ 3,  'register_upcaster' ],
	[ 2,  'drop_upcaster' ],
	[ 3,  'define_aggregate' ],
	[ 4,  'load_aggregate' ],
	[ 3,  'save_snapshot' ],
	[ 2,  'load_snapshot' ],
	[ 1,  'purge_snapshots' ],
	[ 5,  'create_projection' ],
	[ 2,  'rebuild_projection' ],
	[ 2,  'pause_projection' ],
	[ 2,  'resume_projection' ],
	[ 1,  'drop_projection' ],
	[ 2,  'run_projections' ],
	[ 2,  'wait_for_projection' ],
	[ 1,  'last_appended_position' ],
	[ 5,  'define_saga' ],
	[ 5,  'start_saga' ],
	[ 4,  'complete_saga_step' ],
	[ 3,  'fail_saga_step' ],
	[ 3,  'claim_saga_steps' ],
	[ 1,  'saga_tick' ],
	[ 2,  'saga_state' ],
	[ 1,  'saga_diagram' ],
	[ 1,  'retry_saga' ],
	[ 1,  'resolve_saga' ],
	[ 2,  'create_subscription' ],
	[ 1,  'drop_subscription' ],
	[ 6,  'claim_events' ],
	[ 4,  'ack_events' ],
	[ 3,  'nack_event' ],
	[ 1,  'release_events' ],
	[ 1,  'replay_parked' ],
	[ 1,  'skip_parked' ],
	[ 2,  'grant_category' ],
	[ 2,  'revoke_category' ],
	[ 3,  'delete_stream' ],
	[ 2,  'reopen_stream' ],
	[ 2,  'purge_stream' ],
	[ 2,  'set_stream_retention' ],
	[ 1,  'enforce_retention' ],
	[ 1,  'archive_events' ],
	[ 1,  'create_publication' ],
	[ 1,  'drop_publication' ],
	[ 1,  'create_import' ],
	[ 1,  'drop_import' ],
	[ 2,  '(other)' ],
);

# The roles some calls run as (their category grants apply to them)
my @CALL_ROLES = ([ 4, 'fz_alice' ], [ 4, 'fz_bob' ], [ 1, 'fz_team' ]);

# One generated call: { function, family, args_sql (for the argument check),
# sql (the call) }
sub _next_call
{
	my ($self) = @_;
	my $fn = $self->_wpick(@FUNCTION_WEIGHTS);
	if ($fn eq '(other)')
	{
		my ($what, $sql) = $self->_other_statement;
		my $family = { view => 'view', UPDATE => 'dml', DELETE => 'dml', TRUNCATE => 'dml', ddl => 'ddl' }->{$what};
		return { function => $what, family => $family, sql => $sql, display => $sql };
	}
	my $spec = $self->{specs}{$fn};
	delete @{$self}{qw(next_stream next_expected_null pending_batch pair pre_sql)};
	# some calls use well-formed values only, so that state builds up
	$self->{valid} = $self->_chance(0.3);
	$spec->{prepare}->() if $spec->{prepare};

	# the arguments, in order; $1 in an argument stands for the first argument
	# (a generator returning undef leaves its argument, and those after it, out)
	my @args;
	for my $a (@{ $spec->{args} })
	{
		my ($name, $has_default, $gen) = @$a;
		my $v = $gen->();
		last unless defined $v;
		push @args, [ $name, $has_default, $v ];
	}
	if (@args && $args[0][2] !~ /^\(/)
	{
		my $first = $args[0][2];
		$_->[2] =~ s/\$1/$first/g for @args[ 1 .. $#args ];
	}
	else
	{
		$_->[2] =~ s/\$1/NULL::text/g for @args;
	}

	# positional, positional with a prefix of the defaults, or named with any subset
	my @parts;
	my $style = $self->_int(3);
	if ($style == 0)
	{
		@parts = map { $_->[2] } @args;
	}
	elsif ($style == 1)
	{
		my $keep = scalar grep { !$_->[1] } @args;
		$keep += $self->_int(@args - $keep + 1);
		@parts = map { $_->[2] } @args[ 0 .. $keep - 1 ];
	}
	else
	{
		@parts = map { "\"$_->[0]\" => $_->[2]" } grep { !$_->[1] || $self->_chance(0.5) } @args;
	}
	my $call = "event_store.$fn(" . join(', ', @parts) . ')';
	my $sql = $spec->{set} ? "SELECT count(*) FROM $call" : "SELECT $call";
	my $args_sql = @args ? 'SELECT 1 FROM (SELECT ' . join(', ', map { $_->[2] } @args) . ') fz_args' : undef;

	# a batch with ids, for idempotent retries later (whatever this call's
	# outcome: the calls depend on the seed only)
	if ($fn eq 'append' && $self->{pending_batch} && $args[0][2] =~ /^'(.*)'::text$/s)
	{
		(my $sid = $1) =~ s/''/'/g;
		$self->_remember('id_batches', [ $sid, $self->{pending_batch} ], 20);
	}
	# reads also in REPEATABLE READ (they stop at the first event the
	# transaction's snapshot cannot see)
	my $rr = ($spec->{family} eq 'read' || $fn =~ /^load_/) && $self->_chance(0.3);
	# some calls run as a role other than the extension's owner (SET LOCAL
	# ROLE after the settings: event_store.allow_purge is the superuser's)
	my @pre = grep { defined } $self->{pre_sql};
	my $role = $self->_chance(0.15) ? $self->_wpick(@CALL_ROLES) : undef;
	push @pre, "SET LOCAL ROLE $role" if $role;
	return { function => $fn, family => $spec->{family}, sql => $sql, args_sql => $args_sql, valid => $self->{valid}, rr => $rr,
		pre => \@pre, role => $role, display => join('', map { "$_; " } @pre) . $sql };
}

# ------------------------------------------------------------ the session

sub _start_session
{
	my ($self) = @_;
	my $s = { in => '', out => '', err => '' };
	$s->{timer} = IPC::Run::timeout($self->{timeout});
	$s->{h} = IPC::Run::start(
		[ $self->{psql}, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=0', '-d', $self->{connstr} ],
		'<', \$s->{in}, '>', \$s->{out}, '2>', \$s->{err}, $s->{timer});
	$self->{session} = $s;
	my $r = $self->_roundtrip(
		"SET statement_timeout = '20s';\nSET client_min_messages = warning;\n"
		  . "SET log_min_error_statement = panic;\nSET application_name = 'es_fuzz';\n", 'S');
	die "fuzz: could not start the psql session: $r->{lost}\n" if $r->{lost};
	return;
}

sub _stop_session
{
	my ($self) = @_;
	my $s = delete $self->{session} or return;
	eval { $s->{in} .= "\\q\n"; $s->{h}->finish; 1 } or eval { $s->{h}->kill_kill; };
	return;
}

# Send a script, read up to the marker line "<MARK><tag> <sqlstate>".
# Returns { out => text before the marker, state => its sqlstate } or
# { lost => why } when psql ended (the backend died) or timed out.
sub _roundtrip
{
	my ($self, $script, $tag) = @_;
	my $s = $self->{session};
	my $mark = "$MARK$tag";
	$s->{out} = '';
	$s->{err} = '' if length($s->{err}) > 100000;
	$s->{in} .= $script . "\\echo $mark :SQLSTATE\n";
	$s->{timer}->start($self->{timeout});
	my $ok = eval {
		while ($s->{out} !~ /^\Q$mark\E (\S+)$/m)
		{
			die "psql exited\n" unless $s->{h}->pumpable;
			$s->{h}->pump;
		}
		1;
	};
	if (!$ok)
	{
		my $why = $@ || 'unknown';
		chomp $why;
		$why = "no answer within $self->{timeout} s" if $why =~ /timeout/i;
		my $err = $s->{err};
		$self->_stop_session;
		return { lost => $why, stderr => substr($err, -2000) };
	}
	$s->{out} =~ /^(.*?)^\Q$mark\E (\S+)$/ms;
	return { out => $1, state => $2 };
}

# Fingerprint of everything a call could write: the extension's tables and
# the fuzz callbacks' tables, with the snapshot it was taken with
my $FINGERPRINT_SQL = <<'SQL';
SELECT concat_ws(' ',
  (SELECT count(*) || ':' || COALESCE(max(global_position), 0) || ':' || COALESCE(sum(global_position), 0) FROM event_store.events),
  (SELECT md5(COALESCE(string_agg(t::text, ',' ORDER BY t.event_type, t.from_schema_version), '')) FROM event_store.upcasters t),
  (SELECT md5(COALESCE(string_agg(t::text, ',' ORDER BY t.category), '')) FROM event_store.aggregates t),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.snapshots),
  (SELECT md5(COALESCE(string_agg(t::text, ',' ORDER BY t.name), '')) FROM event_store.projections t),
  (SELECT md5(COALESCE(string_agg(t::text, ',' ORDER BY t.saga_type), '')) FROM event_store.saga_definitions t),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.saga_watched_types),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.sagas),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.saga_steps),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM fz.read_model),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM fz.async_model),
  (SELECT count(*) FROM fz.resets),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.stream_metadata),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.category_grants),
  (SELECT md5(COALESCE(string_agg(t::text, ',' ORDER BY t.name), '')) FROM event_store.subscriptions t),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.subscription_partitions),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.subscription_consumers),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.subscription_streams),
  (SELECT count(*) || ':' || COALESCE(sum(xmin::text::bigint), 0) FROM event_store.subscription_skipped),
  '@' || pg_current_snapshot()::text);
SQL

sub _fingerprint
{
	my ($self) = @_;
	my $r = $self->_roundtrip($FINGERPRINT_SQL, 'F');
	return undef if $r->{lost} || $r->{state} ne '00000';
	my ($fp, $snap) = $r->{out} =~ /^(.*) \@(\S+)\s*$/s or return undef;
	my ($xmin, $xmax, $xip) = split /:/, $snap, 3;
	return { fp => $fp, xmax => $xmax, xip => $xip // '' };
}

# Run one call in a transaction of its own.  Returns
# { outcome => ok|input|rejected|lost, state, message, xid }
sub _execute
{
	my ($self, $c) = @_;
	my $begin = $c->{rr} ? 'BEGIN ISOLATION LEVEL REPEATABLE READ' : 'BEGIN';
	my $script = "$begin;\n" . join('', map { "$_;\n" } @{ $c->{pre} || [] }) . "SELECT pg_current_xact_id();\n\\echo ${MARK}X :SQLSTATE\n";
	if ($c->{args_sql})
	{
		$script .= "$c->{args_sql};\n\\if :ERROR\n\\echo ${MARK}A :SQLSTATE\n\\echo :LAST_ERROR_MESSAGE\n\\endif\n";
	}
	$script .= "$c->{sql};\n\\echo ${MARK}C :SQLSTATE\n\\if :ERROR\n\\echo :LAST_ERROR_MESSAGE\n\\endif\nCOMMIT;\n";
	my $r = $self->_roundtrip($script, 'E');
	return { outcome => 'lost', message => $r->{lost}, stderr => $r->{stderr} } if $r->{lost};
	my $out = $r->{out};
	my ($xid) = $out =~ /^(\d+)\n\Q$MARK\EX /m;
	if ($out =~ /^\Q$MARK\EA (\S+)\n(.*?)\n?^\Q$MARK\EC /ms)
	{
		return { outcome => 'input', state => $1, message => $2, xid => $xid };
	}
	my ($cstate, $cmsg) = $out =~ /^\Q$MARK\EC (\S+)\n(.*)\z/ms;
	return { outcome => 'lost', message => "unexpected psql output: $out" } unless defined $cstate;
	if ($cstate ne '00000')
	{
		$cmsg =~ s/\n\z//;
		return { outcome => 'rejected', state => $cstate, message => $cmsg, xid => $xid };
	}
	if ($r->{state} ne '00000')
	{
		# COMMIT itself failed
		return { outcome => 'rejected', state => $r->{state}, message => 'at COMMIT', xid => $xid, at_commit => 1 };
	}
	my ($result) = $out =~ /^\Q$MARK\EX \S+\n(.*?)^\Q$MARK\EC /ms;
	return { outcome => 'ok', result => $result, xid => $xid };
}

# ------------------------------------------------------- docs/sqlstates.md

# The documented SQLSTATEs: per function (section "Errors of the API
# functions" and "Statements on the tables"), the functions that run
# callbacks ("Errors of callbacks") and the argument input errors ("Before
# event_store runs").
sub _parse_doc
{
	my ($self) = @_;
	open my $fh, '<', $self->{doc} or die "cannot read $self->{doc}: $!";
	my $section = '';
	my (%allowed, %callback_runners, %input);
	while (my $line = <$fh>)
	{
		if ($line =~ /^##\s+(.*?)\s*$/) { $section = $1; next; }
		next unless $line =~ /^\|/;
		my @cells = map { s/^\s+|\s+$//gr } split /\|/, $line;
		shift @cells;
		next if !@cells || $cells[0] =~ /^-+$/;
		if ($section =~ /^Errors of the API functions|^Statements on the tables/)
		{
			my ($code) = $cells[0] =~ /^`([0-9A-Z]{5})`$/ or next;
			for my $f ($cells[2] =~ /`([^`]+)`/g)
			{
				$allowed{$f}{$code} = 1;
			}
		}
		elsif ($section =~ /^Errors of callbacks/)
		{
			next if $cells[0] =~ /^callback$/i;
			$callback_runners{$_} = 1 for $cells[1] =~ /`([^`]+)`/g;
		}
		elsif ($section =~ /^Before event_store runs/)
		{
			my ($code) = $cells[0] =~ /^`([0-9A-Z]{5})`$/ or next;
			$input{$code} = 1;
		}
	}
	close $fh;
	die "no documented SQLSTATEs found in $self->{doc}\n" unless %allowed && %input && %callback_runners;
	$self->{allowed}          = \%allowed;
	$self->{callback_runners} = \%callback_runners;
	$self->{input_allowed}    = \%input;
	return;
}

# Public functions of the install script: name => [argument names]
sub api_functions
{
	my (@paths) = @_;
	my $sql = '';
	for my $path (@paths)
	{
		open my $fh, '<', $path or die "cannot read $path: $!";
		local $/;
		$sql .= <$fh>;
		close $fh;
	}
	my %f;
	while ($sql =~ /CREATE FUNCTION event_store\.([a-z][a-z_0-9]*)\s*\((.*?)\)\s*RETURNS/gs)
	{
		my ($name, $args) = ($1, $2);
		my @names;
		for my $a (split /,/, $args)
		{
			next if $a =~ /^\s*$/;
			push @names, $1 if $a =~ /^\s*"?([a-z_]+)"?\s/;
		}
		$f{$name} = \@names;
	}
	return \%f;
}

# The fuzzer's functions and their argument names (for the coverage check)
sub fuzzed_functions
{
	my ($self) = @_;
	my $specs = $self->{specs} // $self->_specs;
	return { map { $_ => [ map { $_->[0] } @{ $specs->{$_}{args} } ] } keys %$specs };
}

# ------------------------------------------------------------- judging

sub _known
{
	my ($self, %v) = @_;
	for my $k (@{ $self->{known} })
	{
		next if defined $k->{function} && $k->{function} ne ($v{function} // '');
		next if defined $k->{sqlstate} && $k->{sqlstate} ne ($v{state} // '');
		next if defined $k->{kind} && $k->{kind} ne $v{kind};
		next if defined $k->{message} && ($v{message} // '') !~ $k->{message};
		return $k;
	}
	return undef;
}

# Record a problem: a known defect (listed, does not fail) or a violation
sub _problem
{
	my ($self, %v) = @_;
	$v{seed} = $self->{seed};
	my $k = $self->_known(%v);
	if ($k)
	{
		$self->{known_hits}{ $k->{name} }++;
		$self->{known_examples}{ $k->{name} } //= \%v;
		return;
	}
	push @{ $self->{violations} }, \%v;
	return if @{ $self->{violations} } > 50;    # (all of them are reported at the end)
	$self->{note}->(sprintf('fuzz: call %d (%s): %s %s: %s', $v{n} // 0, $v{function} // '-', $v{kind}, $v{state} // '', $v{message} // ''));
	return;
}

sub _log_call
{
	my ($self, $n, $c, $r) = @_;
	my $fh = $self->{calls_fh} or return;
	my $sql = $c->{display};
	$sql = substr($sql, 0, 4000) . ' ... [' . length($sql) . ' bytes]' if length($sql) > 4000;
	my $what = $r->{outcome} eq 'ok' ? 'ok' : "$r->{outcome} " . ($r->{state} // '') . ' ' . ($r->{message} // '');
	$what =~ s/\n/ /g;
	printf $fh "-- #%d %s (%.3f s%s): %s\n%s;\n", $n, $c->{function}, $r->{seconds} // 0,
	  ($c->{valid} ? ', valid values' : '') . ($c->{rr} ? ', repeatable read' : ''), $what, $sql;
	return;
}

# ------------------------------------------------------------- log checks

# New lines of the server log: crashes, XX000, errors of the workers (with
# their CONTEXT, which tells what the worker was doing)
sub check_log
{
	my ($self) = @_;
	return unless $self->{logfile} && -f $self->{logfile};
	open my $fh, '<', $self->{logfile} or return;
	seek $fh, $self->{log_offset}, 0;
	my @lines;
	while (my $line = <$fh>)
	{
		# a complete line only (the server may be writing the rest)
		last unless $line =~ /\n\z/;
		$self->{log_offset} = tell $fh;
		if ($line =~ /^\t/ && @lines) { $lines[-1] .= $line; }
		else { push @lines, $line; }
	}
	close $fh;
	for my $i (0 .. $#lines)
	{
		my $line = $lines[$i];
		# log_line_prefix = '%m [%p] <%b> %e '
		if ($line =~ /terminated by signal|\bPANIC:|^TRAP:|was terminated by exception|exited with exit code [2-9]/)
		{
			$self->_problem(kind => 'crash in server log', message => $line =~ s/\s+$//r, n => $self->{n});
			next;
		}
		my ($pid, $btype, $state) = $line =~ /^\S+ \S+ \S+ \[(\d+)\] <([^>]*)> (\S{5}) .*?\b(?:ERROR|FATAL|PANIC):/ or next;
		my $text = $line;
		for my $j ($i + 1 .. $#lines)
		{
			last unless $lines[$j] =~ /^\S+ \S+ \S+ \[$pid\] .*?\b(?:DETAIL|HINT|CONTEXT|LOCATION|STATEMENT):/;
			$text .= $lines[$j];
		}
		$text =~ s/\s+$//;
		if ($state =~ /^XX/)
		{
			$self->_problem(kind => 'internal error in server log', state => $state, message => $text, n => $self->{n});
		}
		elsif ($btype =~ /^event_store/ && !$self->{stopping})
		{
			$self->_problem(kind => 'background worker error', state => $state, message => $text, n => $self->{n});
		}
	}
	return;
}

# A fresh session: the server answers, and its caches agree with ours.  The
# background worker may change what the probe sees in between (retention
# removes events): the probe runs in the fresh session before and after
# ours, and our result must equal one of them; three tries.
sub _check_fresh
{
	my ($self, $n) = @_;
	my $fresh = sub {
		my ($out, $err) = ('', '');
		my $ok = eval {
			IPC::Run::run([ $self->{psql}, '-X', '-q', '-A', '-t', '-d', $self->{connstr}, '-c', 'SELECT fz.probe()' ],
				'<', \'', '>', \$out, '2>', \$err, IPC::Run::timeout(120));
		};
		return $out if $ok;
		$self->_problem(kind => 'server not answering', message => "fresh session: $err $@", n => $n);
		return undef;
	};
	my ($mine, $before, $after);
	for my $try (1 .. 3)
	{
		$before = $fresh->() // return;
		return if !$self->{session};
		my $r = $self->_roundtrip("SELECT fz.probe();\n", 'P');
		return if $r->{lost};
		$mine = $r->{out};
		$self->{probes}++;
		return if $mine eq $before;
		$after = $fresh->() // return;
		return if $mine eq $after;
	}
	my @a = split /\n/, $mine;
	my @b = split /\n/, $after;
	my @d;
	for my $i (0 .. ($#a > $#b ? $#a : $#b))
	{
		push @d, 'fuzz session: ' . ($a[$i] // '') . ' | fresh session: ' . ($b[$i] // '')
		  if ($a[$i] // '') ne ($b[$i] // '');
	}
	$self->_problem(kind => 'per-backend cache differs from a fresh session', message => join('; ', @d[ 0 .. ($#d > 4 ? 4 : $#d) ]), n => $n);
	return;
}

# The stream lifecycle's promises (fz.invariants()), with retention
# enforced, in a transaction that is rolled back: appends wait meanwhile.
sub _check_invariants
{
	my ($self, $n) = @_;
	return if !$self->{session};
	my $r = $self->_roundtrip(<<'SQL', 'I');
BEGIN;
LOCK TABLE event_store.events IN SHARE MODE;
SELECT event_store.enforce_retention() >= 0;
SELECT 'violated: ' || x FROM fz.invariants() x;
\echo @@fzI2 :SQLSTATE
\if :ERROR
\echo :LAST_ERROR_MESSAGE
\endif
ROLLBACK;
SQL
	return if $r->{lost};
	my ($state, $msg) = $r->{out} =~ /^\Q${MARK}I2\E (\S+)\n(.*)\z/ms;
	# a deadlock with the background worker (the reducers of the deleted
	# streams' aggregates run): not checked this time
	return if defined $state && $state eq '40P01';
	$self->{invariant_checks}++;
	if (!defined $state || $state ne '00000')
	{
		$self->_problem(kind => 'invariant check failed', state => $state, message => $msg // $r->{out}, n => $n);
		return;
	}
	for my $line (split /\n/, $r->{out})
	{
		next unless $line =~ /^violated: (.*)/;
		$self->_problem(kind => 'lifecycle invariant violated', message => $1, n => $n);
	}
	return;
}

# ---------------------------------------------------------------- run

sub setup
{
	my ($self) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $self->{psql}, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-d', $self->{connstr} ],
		'<', \$SETUP_SQL, '>', \$out, '2>', \$err)
	  or die "fuzz setup failed: $err\n";
	IPC::Run::run([ $self->{psql}, '-X', '-q', '-A', '-t', '-d', $self->{connstr}, '-c', 'SELECT oid FROM fz.dropped_oid' ],
		'<', \'', '>', \$out, '2>', \$err)
	  or die "fuzz setup failed: $err\n";
	chomp($self->{dropped_oid} = $out);
	IPC::Run::run([ $self->{psql}, '-X', '-q', '-A', '-t', '-d', $self->{connstr}, '-c', 'SELECT oid FROM fz.gone_role' ],
		'<', \'', '>', \$out, '2>', \$err)
	  or die "fuzz setup failed: $err\n";
	chomp($self->{gone_role} = $out);
	return;
}

sub run
{
	my ($self) = @_;
	$self->_init_pools;
	$self->{specs} = $self->_specs;
	$self->{violations} = [];
	$self->{stats} = {};
	$self->{known_hits} = {};
	if ($self->{calls_log})
	{
		open $self->{calls_fh}, '>', $self->{calls_log} or die "cannot write $self->{calls_log}: $!";
	}
	$self->check_log;    # skip what the setup logged
	$self->_start_session;
	my $t0 = Time::HiRes::time();
	my $fp;
	for my $n (1 .. $self->{iterations})
	{
		$self->{n} = $n;
		if ($n > 1 && ($n - 1) % $self->{check_every} == 0 && $self->{session})
		{
			$self->check_log;
			$self->_check_fresh($n - 1);
			$self->_check_invariants($n - 1);
			$fp = undef;
		}
		my $c = $self->_next_call;
		my $st = $self->{stats}{ $c->{family} }{ $c->{function} } //= { ok => 0, rejected => 0, input => 0, verified => 0, unverified => 0 };

		my ($avoid) = grep { $_->{avoid} && $_->{avoid}->($c) } @{ $self->{known} };
		if ($avoid)
		{
			$st->{avoided}++;
			$self->{known_hits}{ $avoid->{name} }++;
			$self->{known_examples}{ $avoid->{name} } //=
			  { kind => 'call avoided', function => $c->{function}, message => 'not run (it would spoil the rest of the run)',
				sql => $c->{display}, n => $n, seed => $self->{seed} };
			next;
		}
		my $r;
		my $t = Time::HiRes::time();
		for my $try (1 .. 3)
		{
			$fp = $self->_fingerprint unless $fp;
			$r = $self->_execute($c);
			last if $r->{outcome} ne 'rejected';

			# nothing written?  (fp: before the call; after: now)
			my $after = $self->_fingerprint;
			my $before = $fp;
			$fp = $after;
			if (!$before || !$after)
			{
				$r->{unverified} = 1;
				last;
			}
			if ($before->{fp} eq $after->{fp})
			{
				$r->{verified} = 1;
				last;
			}
			# another transaction may have committed in between?
			my $quiet = $before->{xip} eq '' && defined $r->{xid} && $r->{xid} == $before->{xmax}
			  && $after->{xmax} == $before->{xmax} + 1;
			if ($quiet)
			{
				$r->{wrote} = "before: $before->{fp}; after: $after->{fp}";
				last;
			}
			$r->{unverified} = 1;
		}
		$r->{seconds} = Time::HiRes::time() - $t;
		$st->{seconds} += $r->{seconds};
		push @{ $self->{slowest} }, [ $r->{seconds}, $n, $c->{function}, substr($c->{sql}, 0, 300) ];
		@{ $self->{slowest} } = (sort { $b->[0] <=> $a->[0] } @{ $self->{slowest} })[ 0 .. 2 ] if @{ $self->{slowest} } > 3;
		$self->_log_call($n, $c, $r);

		if ($r->{outcome} eq 'lost')
		{
			$self->_problem(kind => 'backend lost', function => $c->{function}, message => "$r->{message} " . ($r->{stderr} // ''), sql => $c->{display}, n => $n);
			$self->{lost}++;
			$fp = undef;
			$self->check_log;
			last if $self->{lost} > 3 || !$self->_wait_for_server;
			$self->_start_session;
			next;
		}
		if ($r->{outcome} eq 'ok')
		{
			$st->{ok}++;
			$fp = undef;
			next;
		}
		if ($r->{outcome} eq 'input')
		{
			$st->{input}++;
			$self->{input_states}{ $r->{state} }++;
			$self->_problem(kind => 'undocumented input error', function => $c->{function}, state => $r->{state}, message => $r->{message}, sql => join('', map { "$_; " } @{ $c->{pre} }) . $c->{args_sql}, n => $n)
			  unless $self->{input_allowed}{ $r->{state} };
			next;
		}
		# rejected
		$st->{rejected}++;
		$st->{states}{ $r->{state} }++;
		$st->{verified}++ if $r->{verified};
		$st->{unverified}++ if $r->{unverified};
		my $documented = $self->{allowed}{ $c->{function} }{ $r->{state} }
		  || ($r->{state} eq $CALLBACK_SQLSTATE && $self->{callback_runners}{ $c->{function} });
		if ($r->{state} eq '57014')
		{
			$self->_problem(kind => 'hang (statement timeout)', function => $c->{function}, state => $r->{state}, message => $r->{message}, sql => $c->{display}, n => $n);
		}
		elsif (!$documented)
		{
			$self->_problem(kind => 'undocumented SQLSTATE', function => $c->{function}, state => $r->{state}, message => $r->{message}, sql => $c->{display}, n => $n);
		}
		if ($r->{wrote})
		{
			$self->_problem(kind => 'rejected call wrote something', function => $c->{function}, state => $r->{state}, message => $r->{wrote}, sql => $c->{display}, n => $n);
		}
	}
	$self->{elapsed} = Time::HiRes::time() - $t0;
	$self->_check_fresh($self->{iterations}) if $self->{session};
	$self->_check_invariants($self->{iterations}) if $self->{session};
	$self->check_log;
	$self->_final_checks if $self->{session};
	$self->_stop_session;
	close $self->{calls_fh} if $self->{calls_fh};
	return;
}

sub _wait_for_server
{
	my ($self) = @_;
	for (1 .. 120)
	{
		my ($out, $err) = ('', '');
		my $ok = eval { IPC::Run::run([ $self->{psql}, '-X', '-A', '-t', '-d', $self->{connstr}, '-c', 'SELECT 1' ], '<', \'', '>', \$out, '2>', \$err, IPC::Run::timeout(10)) };
		return 1 if $ok && $out =~ /1/;
		Time::HiRes::sleep(0.5);
	}
	return 0;
}

# Errors that event_store swallowed and recorded: none may look internal
sub _final_checks
{
	my ($self) = @_;
	my $r = $self->_roundtrip(<<'SQL', 'Z');
SELECT 'recorded: ' || e FROM (
    SELECT last_error AS e FROM event_store.projections
    UNION SELECT last_error FROM event_store.sagas
    UNION SELECT last_error FROM event_store.saga_steps) x
 WHERE e ~* 'cache lookup failed|unrecognized|unexpected|SPI_|internal error|XX000|invalid memory alloc|corrupt|should not happen';
SQL
	return if $r->{lost};
	for my $line (split /\n/, $r->{out})
	{
		$self->_problem(kind => 'internal error recorded', message => $line, n => $self->{iterations});
	}
	my $s = $self->_roundtrip(<<'SQL', 'Y');
SELECT (SELECT count(*) FROM event_store.events) || ' events, '
    || (SELECT count(DISTINCT stream_id) FROM event_store.events) || ' streams, '
    || (SELECT count(*) FROM event_store.sagas) || ' sagas ('
    || (SELECT COALESCE(string_agg(status || ' ' || n, ', '), '') FROM (SELECT status, count(*) n FROM event_store.sagas GROUP BY 1 ORDER BY 1) s)
    || '), ' || (SELECT count(*) FROM event_store.saga_definitions) || ' saga types, '
    || (SELECT count(*) FROM event_store.projections) || ' projections, '
    || (SELECT count(*) FROM event_store.aggregates) || ' aggregates, '
    || (SELECT count(*) FROM event_store.upcasters) || ' upcasters, '
    || (SELECT count(*) FROM event_store.snapshots) || ' snapshots, '
    || (SELECT count(*) FROM event_store.stream_metadata WHERE deleted_at IS NOT NULL) || ' deleted streams, '
    || (SELECT count(*) FROM event_store.stream_metadata WHERE max_count IS NOT NULL OR max_age IS NOT NULL) || ' streams with retention, '
    || (SELECT count(*) FROM event_store.category_grants) || ' category grants';
SQL
	($self->{final_state} = $s->{out} // '') =~ s/\s+$//;
	return;
}

# ------------------------------------------------------------- reporting

sub families
{
	my ($self) = @_;
	return sort keys %{ $self->{stats} };
}

sub violations
{
	my ($self, $family) = @_;
	my @v = @{ $self->{violations} };
	return @v unless defined $family;
	my %fns = map { $_ => 1 } keys %{ $self->{stats}{$family} || {} };
	return grep { defined $_->{function} && $fns{ $_->{function} } } @v;
}

sub describe
{
	my ($self, $v) = @_;
	my $sql = $v->{sql} // '';
	$sql = substr($sql, 0, 1500) . " ... [" . length($sql) . " bytes]" if length($sql) > 1500;
	my $msg = $v->{message} // '';
	$msg = substr($msg, 0, 1500) . ' ...' if length($msg) > 1500;
	return sprintf("seed %s, call %s (%s): %s%s\n  message: %s%s", $self->{seed}, $v->{n} // '?', $v->{function} // '-', $v->{kind},
		defined $v->{state} ? " $v->{state}" : '', $msg, $sql ne '' ? "\n  call: $sql;" : '');
}

sub summary
{
	my ($self) = @_;
	my @l;
	my ($calls, $rej, $ver, $unv) = (0, 0, 0, 0);
	for my $fam ($self->families)
	{
		for my $fn (sort keys %{ $self->{stats}{$fam} })
		{
			my $s = $self->{stats}{$fam}{$fn};
			$calls += $s->{ok} + $s->{rejected} + $s->{input};
			$rej += $s->{rejected};
			$ver += $s->{verified};
			$unv += $s->{unverified};
			push @l, sprintf('%-11s %-19s %5d ok %5d rejected %4d input errors %5.1f s%s  [%s]', $fam, $fn, $s->{ok}, $s->{rejected}, $s->{input}, $s->{seconds} // 0,
				$s->{avoided} ? " $s->{avoided} avoided" : '',
				join(' ', map { "$_:$s->{states}{$_}" } sort keys %{ $s->{states} || {} }));
		}
	}
	unshift @l, sprintf('%d calls in %.1f s (seed %s): %d rejected, %d of them checked for writes (%d could not be checked: concurrent commits)',
		$calls, $self->{elapsed} // 0, $self->{seed}, $rej, $ver, $unv);
	push @l, 'input errors: ' . join(' ', map { "$_:$self->{input_states}{$_}" } sort keys %{ $self->{input_states} || {} });
	push @l, "final state: $self->{final_state}" if $self->{final_state};
	push @l, sprintf('slowest: %.2f s, call %d (%s): %s', @$_) for @{ $self->{slowest} || [] };
	for my $k (sort keys %{ $self->{known_hits} })
	{
		push @l, "known defect $k: $self->{known_hits}{$k} hits, e.g. " . $self->describe($self->{known_examples}{$k});
	}
	return @l;
}

1;
