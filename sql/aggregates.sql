--
-- aggregates: define_aggregate, load_aggregate (latest and time travel),
-- the snapshot hook of append(), save_snapshot / load_snapshot, state
-- versions and purge_snapshots, reducer checks and argument errors.
--
-- start from an empty store
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS event_store CASCADE;
CREATE EXTENSION event_store;
RESET client_min_messages;
\set SHOW_CONTEXT never

-- A wallet: the balance and the list of versions folded into it, so every
-- state shows exactly which events (and which snapshot) it was built from.
CREATE FUNCTION wallet_reduce(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object(
        'balance', (state ->> 'balance')::numeric + CASE event.event_type
            WHEN 'Deposited' THEN (event.data ->> 'amount')::numeric
            WHEN 'Withdrawn' THEN -(event.data ->> 'amount')::numeric
            ELSE 0 END,
        'versions', (state -> 'versions') || to_jsonb(event.stream_version))
$$;
-- the same fold as an SQL aggregate over read_stream: the reference that
-- load_aggregate is compared with
CREATE AGGREGATE wallet_fold(event_store.event) (
    SFUNC = wallet_reduce, STYPE = jsonb, INITCOND = '{"balance": 0, "versions": []}');

-- deposits of 1, 2, 3, ... so every prefix of a stream has its own balance
CREATE FUNCTION wallet_deposits(first int, n int) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_agg(jsonb_build_object('type', 'Deposited', 'data',
                                        jsonb_build_object('amount', i)) ORDER BY i)
      FROM generate_series(first, first + n - 1) i
$$;

-- the snapshots of a stream, compactly
CREATE FUNCTION wallet_snapshots(sid text)
RETURNS TABLE(stream_version bigint, state_version int, balance numeric, versions text)
LANGUAGE sql AS $$
    SELECT s.stream_version, s.state_version, (s.state ->> 'balance')::numeric,
           (s.state -> 'versions')::text
      FROM event_store.snapshots s WHERE s.stream_id = sid
     ORDER BY s.stream_version, s.state_version
$$;

--
-- define_aggregate and load_aggregate without snapshots
--
SELECT event_store.define_aggregate('wallet', 'wallet_reduce(jsonb,event_store.event)',
                                    '{"balance": 0, "versions": []}');
SELECT category, reducer, initial_state, snapshot_every, state_version
  FROM event_store.aggregates;

SELECT event_store.append('wallet-1', wallet_deposits(1, 3));
SELECT event_store.append('wallet-1', '{"type": "Withdrawn", "data": {"amount": 4}}');
SELECT event_store.append('wallet-1', '{"type": "Renamed", "data": {"name": "spare"}}');
SELECT * FROM event_store.load_aggregate('wallet-1');
SELECT * FROM event_store.load_aggregate('wallet-1', NULL);
-- time travel: every past version, including 0 and beyond the end
SELECT v AS at_version, a.*
  FROM generate_series(0, 7) v, event_store.load_aggregate('wallet-1', v) a;
-- named arguments
SELECT * FROM event_store.load_aggregate(at_version => 2, stream_id => 'wallet-1');

-- a stream without events: version 0 and the initial state
SELECT * FROM event_store.load_aggregate('wallet-404');
SELECT * FROM event_store.load_aggregate('wallet-404', 3);
-- a stream id without "-" is its own category
SELECT * FROM event_store.load_aggregate('wallet');

-- a category without an aggregate: 22023
SELECT * FROM event_store.load_aggregate('nowallet-1');
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('nowallet-1')$$) AS no_aggregate;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('wallets-1')$$) AS prefix_only;
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('walle-1')$$) AS shorter;

--
-- The snapshot hook: with snapshot_every = 3 an append from version a to b
-- stores one snapshot, at b, when floor(a/3) < floor(b/3).
--
SELECT event_store.define_aggregate('wallet', 'wallet_reduce(jsonb,event_store.event)',
                                    '{"balance": 0, "versions": []}', snapshot_every => 3);
-- defining does not snapshot existing streams
SELECT count(*) AS snapshots FROM event_store.snapshots;

-- single appends: 0->1, 1->2 nothing; 2->3 one at 3; 3->4, 4->5 nothing;
-- 5->6 one at 6 (here six appends in one statement)
SELECT v, event_store.append('wallet-2', wallet_deposits(v, 1)) AS version
  FROM generate_series(1, 6) v;
SELECT * FROM wallet_snapshots('wallet-2');
-- the same, one statement per append
SELECT event_store.append('wallet-3', wallet_deposits(1, 1));
SELECT count(*) FROM event_store.snapshots WHERE stream_id = 'wallet-3';
SELECT event_store.append('wallet-3', wallet_deposits(2, 1));
SELECT count(*) FROM event_store.snapshots WHERE stream_id = 'wallet-3';
SELECT event_store.append('wallet-3', wallet_deposits(3, 1));
SELECT * FROM wallet_snapshots('wallet-3');
SELECT event_store.append('wallet-3', wallet_deposits(4, 1));
SELECT event_store.append('wallet-3', wallet_deposits(5, 1));
SELECT * FROM wallet_snapshots('wallet-3');
SELECT event_store.append('wallet-3', wallet_deposits(6, 1));
SELECT * FROM wallet_snapshots('wallet-3');
-- batches: 6->8 nothing; 8->9 ends on a multiple: one at 9
SELECT event_store.append('wallet-3', wallet_deposits(7, 2));
SELECT event_store.append('wallet-3', wallet_deposits(9, 1));
SELECT * FROM wallet_snapshots('wallet-3');
-- 9->17 jumps over 12 and 15: exactly one, at 17
SELECT event_store.append('wallet-3', wallet_deposits(10, 8));
SELECT * FROM wallet_snapshots('wallet-3');
-- 17->18 crosses 18: one at 18; 18->20 nothing; 20->21 one at 21
SELECT event_store.append('wallet-3', wallet_deposits(18, 1));
SELECT event_store.append('wallet-3', wallet_deposits(19, 2));
SELECT event_store.append('wallet-3', wallet_deposits(21, 1));
SELECT * FROM wallet_snapshots('wallet-3');
-- a new stream whose first batch jumps over 3 and 6: one, at 7
SELECT event_store.append('wallet-4', wallet_deposits(1, 7));
SELECT * FROM wallet_snapshots('wallet-4');
-- a first batch that ends on 3: one, at 3; 3->5 nothing
SELECT event_store.append('wallet-5', wallet_deposits(1, 3), 0);
SELECT event_store.append('wallet-5', wallet_deposits(4, 2), 3);
SELECT * FROM wallet_snapshots('wallet-5');
-- every snapshot the hook stored holds the state at its version
SELECT count(*) AS hook_snapshots,
       count(*) FILTER (WHERE s.state = (SELECT wallet_fold(e ORDER BY e.stream_version)
                                           FROM event_store.read_stream(s.stream_id,
                                                max_count => s.stream_version) e)) AS correct
  FROM event_store.snapshots s;

-- load_aggregate with these snapshots equals the reference fold at every
-- version of every stream
SELECT s.stream_id, count(*) AS versions_checked,
       count(*) FILTER (WHERE a.state = (SELECT wallet_fold(e ORDER BY e.stream_version)
                                          FROM event_store.read_stream(s.stream_id, max_count => v) e)
                          AND a.stream_version = v) AS correct
  FROM (VALUES ('wallet-1'), ('wallet-2'), ('wallet-3'), ('wallet-4'), ('wallet-5')) s(stream_id),
       generate_series(0, event_store.stream_version(s.stream_id)) v,
       event_store.load_aggregate(s.stream_id, v) a
 GROUP BY s.stream_id ORDER BY s.stream_id;

-- a rolled-back append leaves no snapshot
BEGIN;
SELECT event_store.append('wallet-5', wallet_deposits(6, 1));
SELECT * FROM wallet_snapshots('wallet-5');
ROLLBACK;
SELECT * FROM wallet_snapshots('wallet-5');
SELECT event_store.stream_version('wallet-5');
-- so does one rolled back to a savepoint
BEGIN;
SAVEPOINT s;
SELECT event_store.append('wallet-5', wallet_deposits(6, 4));
ROLLBACK TO SAVEPOINT s;
SELECT event_store.append('wallet-5', '{"type": "Renamed"}');
COMMIT;
SELECT * FROM wallet_snapshots('wallet-5');
-- and a rejected append stores nothing either
SELECT event_store.append('wallet-5', wallet_deposits(7, 3), 2);
SELECT * FROM wallet_snapshots('wallet-5');

-- streams of other categories and categories without snapshot_every: none
SELECT event_store.define_aggregate('plain', 'wallet_reduce(jsonb,event_store.event)',
                                    '{"balance": 0, "versions": []}');
SELECT event_store.append('plain-1', wallet_deposits(1, 7));
SELECT event_store.append('walletx-1', wallet_deposits(1, 7));
SELECT count(*) AS snapshots FROM event_store.snapshots
 WHERE stream_id IN ('plain-1', 'walletx-1');

--
-- load_aggregate uses the newest snapshot at or below at_version.  To show
-- it, overwrite two of wallet-3's snapshots with states no fold produces.
--
SELECT * FROM wallet_snapshots('wallet-3');
SELECT event_store.save_snapshot('wallet-3', 9, '{"balance": 1000, "versions": ["forged at 9"]}');
SELECT event_store.save_snapshot('wallet-3', 21, '{"balance": 5000, "versions": ["forged at 21"]}');
SELECT * FROM wallet_snapshots('wallet-3');
-- latest: the forged snapshot at 21 as it is
SELECT * FROM event_store.load_aggregate('wallet-3');
-- later events are folded on top of it
SELECT event_store.append('wallet-3', wallet_deposits(22, 1));
SELECT * FROM event_store.load_aggregate('wallet-3');
-- time travel: below 9 the genuine snapshots 3 and 6 (or the events), from
-- 9 to 16 the forged one at 9, 17 to 20 the one at 17 or 18, 21 and later
-- the forged one at 21; never a snapshot above at_version
SELECT v AS at_version, a.stream_version, (a.state ->> 'balance')::numeric AS balance,
       (a.state -> 'versions')::text AS versions
  FROM generate_series(0, 23) v, event_store.load_aggregate('wallet-3', v) a;
-- with the forged snapshots out of the way (a higher state_version makes
-- them unusable), every version of every stream equals the reference fold
SELECT event_store.define_aggregate('wallet', 'wallet_reduce(jsonb,event_store.event)',
                                    '{"balance": 0, "versions": []}', 3, state_version => 2);
SELECT s.stream_id, count(*) AS versions_checked,
       count(*) FILTER (WHERE a.state = (SELECT wallet_fold(e ORDER BY e.stream_version)
                                          FROM event_store.read_stream(s.stream_id, max_count => v) e)
                          AND a.stream_version = v) AS correct
  FROM (VALUES ('wallet-1'), ('wallet-2'), ('wallet-3'), ('wallet-4'), ('wallet-5')) s(stream_id),
       generate_series(0, event_store.stream_version(s.stream_id)) v,
       event_store.load_aggregate(s.stream_id, v) a
 GROUP BY s.stream_id ORDER BY s.stream_id;

--
-- State versions: snapshots of another state_version are ignored, new ones
-- are stored with the current state_version, and purge_snapshots() removes
-- the stale ones.
--
SELECT * FROM event_store.load_aggregate('wallet-3');
SELECT * FROM event_store.load_aggregate('wallet-3', 21);
SELECT * FROM event_store.load_aggregate('wallet-3', 10);
-- 22->24 crosses 24: a snapshot of state_version 2
SELECT event_store.append('wallet-3', wallet_deposits(23, 2));
SELECT * FROM wallet_snapshots('wallet-3');
-- load_snapshot returns the newest snapshot whatever its state_version
SELECT stream_version, state, state_version FROM event_store.load_snapshot('wallet-3');
SELECT stream_version, state, state_version FROM event_store.load_snapshot('wallet-3', 23);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('wallet-3', 10);
-- purge: per category, then all; a second purge finds nothing
SELECT count(*) AS stale FROM event_store.snapshots WHERE state_version <> 2;
SELECT event_store.purge_snapshots('plain') AS purged_plain;
SELECT event_store.purge_snapshots('wallet') AS purged_wallet;
SELECT event_store.purge_snapshots('wallet') AS purged_again;
SELECT event_store.purge_snapshots() AS purged_all;
SELECT * FROM wallet_snapshots('wallet-3');
-- load_aggregate is unchanged by the purge
SELECT * FROM event_store.load_aggregate('wallet-3');
SELECT * FROM event_store.load_aggregate('wallet-3', 21);
-- snapshots of a stream whose category has no aggregate are not purged
SELECT event_store.save_snapshot('walletx-1', 2, '{"x": 1}', 7);
SELECT event_store.purge_snapshots() AS purged_all;
SELECT * FROM wallet_snapshots('walletx-1');

-- redefining replaces the definition: initial_state and reducer
CREATE FUNCTION wallet_count(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT jsonb_build_object('events', (state ->> 'events')::int + 1)
$$;
SELECT event_store.define_aggregate('wallet', 'wallet_count(jsonb,event_store.event)',
                                    '{"events": 100}', state_version => 3);
SELECT category, reducer, initial_state, snapshot_every, state_version
  FROM event_store.aggregates ORDER BY category;
SELECT * FROM event_store.load_aggregate('wallet-3');
SELECT * FROM event_store.load_aggregate('wallet-404');
-- no snapshot_every any more: appends store no snapshot
SELECT event_store.append('wallet-3', wallet_deposits(25, 6));
SELECT count(*) AS state_version_3 FROM event_store.snapshots WHERE state_version = 3;

--
-- save_snapshot / load_snapshot
--
SELECT event_store.save_snapshot('plain-1', 2, '{"balance": 200, "versions": ["saved at 2"]}');
SELECT event_store.save_snapshot(stream_id => 'plain-1', stream_version => 5,
                                 state => '{"balance": 500, "versions": ["saved at 5"]}',
                                 state_version => 2);
SELECT * FROM wallet_snapshots('plain-1');
-- at most one row: the newest at or below max_version, whatever its
-- state_version
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1');
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', NULL);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 5);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 4);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 2);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 1);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 0);
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-404');
SELECT stream_version, state, state_version
  FROM event_store.load_snapshot(max_version => 3, stream_id => 'plain-1');
SELECT created_at IS NOT NULL AS has_created_at FROM event_store.load_snapshot('plain-1', 2);
-- the aggregate (state_version 1) uses the one of its state_version: the
-- snapshot at 2, then events 3 to 7
SELECT * FROM event_store.load_aggregate('plain-1');
-- saving again at the same version and state_version replaces it
SELECT event_store.save_snapshot('plain-1', 2, '{"balance": 2000, "versions": ["saved again at 2"]}');
SELECT * FROM wallet_snapshots('plain-1');
SELECT stream_version, state, state_version FROM event_store.load_snapshot('plain-1', 3);
SELECT * FROM event_store.load_aggregate('plain-1');
-- a snapshot saved in a rolled-back transaction is gone
BEGIN;
SELECT event_store.save_snapshot('plain-1', 7, '{"balance": 7, "versions": ["saved at 7"]}');
SELECT * FROM event_store.load_aggregate('plain-1');
ROLLBACK;
SELECT stream_version, state FROM event_store.load_snapshot('plain-1');
SELECT * FROM event_store.load_aggregate('plain-1');

-- save_snapshot only at a version the stream has
SELECT event_store.save_snapshot('plain-1', 8, '{}');
SELECT stmt, regress.try(stmt) AS error
  FROM (VALUES
    ($$SELECT event_store.save_snapshot('plain-1', 8, '{}')$$),
    ($$SELECT event_store.save_snapshot('plain-404', 1, '{}')$$),
    ($$SELECT event_store.save_snapshot('plain-1', 0, '{}')$$),
    ($$SELECT event_store.save_snapshot('plain-1', -1, '{}')$$),
    ($$SELECT event_store.save_snapshot(NULL, 1, '{}')$$),
    ($$SELECT event_store.save_snapshot('', 1, '{}')$$),
    ($$SELECT event_store.save_snapshot('plain-1', NULL, '{}')$$),
    ($$SELECT event_store.save_snapshot('plain-1', 1, NULL)$$),
    ($$SELECT event_store.save_snapshot('plain-1', 1, '{}', NULL)$$),
    ($$SELECT event_store.save_snapshot('plain-1', 1, '{}', 0)$$),
    ($$SELECT * FROM event_store.load_snapshot(NULL)$$),
    ($$SELECT * FROM event_store.load_snapshot('')$$),
    ($$SELECT * FROM event_store.load_snapshot('plain-1', -1)$$),
    ($$SELECT * FROM event_store.load_aggregate(NULL)$$),
    ($$SELECT * FROM event_store.load_aggregate('')$$),
    ($$SELECT * FROM event_store.load_aggregate('wallet-1', -1)$$)
  ) v(stmt);
SELECT * FROM wallet_snapshots('plain-1');

--
-- define_aggregate checks its arguments and the reducer's signature.
--
CREATE FUNCTION bad_jsonb_event(state jsonb, event jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT state $$;
CREATE FUNCTION bad_returns_text(state jsonb, event event_store.event) RETURNS text
LANGUAGE sql AS $$ SELECT state::text $$;
CREATE FUNCTION bad_text_state(state text, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$ SELECT state::jsonb $$;
CREATE FUNCTION bad_set(state jsonb, event event_store.event) RETURNS SETOF jsonb
LANGUAGE sql AS $$ SELECT state $$;
CREATE FUNCTION bad_one_arg(state jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT state $$;
CREATE FUNCTION bad_swapped(event event_store.event, state jsonb) RETURNS jsonb
LANGUAGE sql AS $$ SELECT state $$;
SELECT event_store.define_aggregate('bad', 'bad_returns_text(jsonb,event_store.event)');
SELECT sig, regress.try(format('SELECT event_store.define_aggregate(%L, %L)', 'bad', sig))
  FROM (VALUES ('bad_jsonb_event(jsonb,jsonb)'),
               ('bad_text_state(text,event_store.event)'),
               ('bad_set(jsonb,event_store.event)'),
               ('bad_one_arg(jsonb)'),
               ('bad_swapped(event_store.event,jsonb)'),
               ('jsonb_concat(jsonb,jsonb)')) v(sig);
SELECT stmt, regress.try(stmt) AS error
  FROM (VALUES
    ($$SELECT event_store.define_aggregate(NULL, 'wallet_reduce(jsonb,event_store.event)')$$),
    ($$SELECT event_store.define_aggregate('', 'wallet_reduce(jsonb,event_store.event)')$$),
    ($$SELECT event_store.define_aggregate('bad-1', 'wallet_reduce(jsonb,event_store.event)')$$),
    ($$SELECT event_store.define_aggregate('bad', NULL)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', NULL)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', '{}', 0)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', '{}', -3)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', '{}', NULL, NULL)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', '{}', NULL, 0)$$),
    ($$SELECT event_store.define_aggregate('bad', 'wallet_reduce(jsonb,event_store.event)', '{}', NULL, -1)$$)
  ) v(stmt);
-- nothing was defined; the defaults: initial_state {}, no snapshot_every,
-- state_version 1
SELECT count(*) AS bad_defined FROM event_store.aggregates WHERE category = 'bad';
SELECT event_store.define_aggregate('dflt', 'wallet_count(jsonb,event_store.event)');
SELECT category, reducer, initial_state, snapshot_every, state_version
  FROM event_store.aggregates WHERE category = 'dflt';
SELECT * FROM event_store.load_aggregate('dflt-1');

--
-- A reducer that returns NULL: a clear error from load_aggregate, and from
-- the snapshot hook, which then aborts the append.
--
CREATE FUNCTION null_on_poison(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN event.event_type = 'Poison' THEN NULL
                ELSE state || jsonb_build_object('n', (state ->> 'n')::int + 1) END
$$;
SELECT event_store.define_aggregate('poison', 'null_on_poison(jsonb,event_store.event)',
                                    '{"n": 0}', snapshot_every => 2);
SELECT event_store.append('poison-1', '{"type": "Fine"}');
SELECT event_store.append('poison-1', '{"type": "Poison"}');
SELECT event_store.stream_version('poison-1');
SELECT count(*) AS snapshots FROM event_store.snapshots WHERE stream_id = 'poison-1';
SELECT event_store.define_aggregate('poison', 'null_on_poison(jsonb,event_store.event)', '{"n": 0}');
SELECT event_store.append('poison-1', '{"type": "Poison"}');
SELECT * FROM event_store.load_aggregate('poison-1');
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('poison-1')$$) AS reducer_null;
SELECT * FROM event_store.load_aggregate('poison-1', 1);
-- a reducer's own error aborts load_aggregate with its message
CREATE FUNCTION raise_on_poison(state jsonb, event event_store.event) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF event.event_type = 'Poison' THEN
        RAISE EXCEPTION 'poisoned at version %', event.stream_version
            USING ERRCODE = 'P0001';
    END IF;
    RETURN state;
END
$$;
SELECT event_store.define_aggregate('poison', 'raise_on_poison(jsonb,event_store.event)', '{"n": 0}');
SELECT regress.try($$SELECT * FROM event_store.load_aggregate('poison-1')$$) AS reducer_error;

--
-- Definitions made by another session are used by a session that has
-- already loaded them.
--
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS dblink;
RESET client_min_messages;
SELECT dblink_connect('agg_other',
                      format('dbname=%s port=%s host=%s', current_database(),
                             current_setting('port'),
                             split_part(current_setting('unix_socket_directories'), ',', 1)))
       AS other_session;
SELECT * FROM event_store.load_aggregate('dflt-1');
SELECT * FROM dblink('agg_other', $$SELECT event_store.define_aggregate('dflt',
                     'wallet_count(jsonb,event_store.event)', '{"events": 1}')::text$$)
    AS t(defined text);
SELECT * FROM event_store.load_aggregate('dflt-1');
-- also when the definition committed while this session was inside a
-- REPEATABLE READ transaction that could not see it
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT 1 AS snapshot_taken;
SELECT * FROM dblink('agg_other', $$SELECT event_store.define_aggregate('dflt',
                     'wallet_count(jsonb,event_store.event)', '{"events": 2}')::text$$)
    AS t(defined text);
SELECT count(*) FROM event_store.load_aggregate('dflt-1');
COMMIT;
SELECT * FROM event_store.load_aggregate('dflt-1');
SELECT dblink_disconnect('agg_other');
