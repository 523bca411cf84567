#!/usr/bin/env bash
#
# bench/services.sh - imports between databases (create_publication /
# create_import) against the bare limit of the same work: PostgreSQL's
# logical replication of the same rows into a plain table of the same shape
# and indexes (bench.plain_events, as in sql/setup.sql), on the same two
# throwaway clusters (a producer and a consumer, both wal_level = logical,
# track_commit_timestamp = on), one case after the other.
#
#   backfill  IMPORT_EVENTS events (500-byte JSON, 20 per stream, written with
#             batch appends) are on the producer before the import is made;
#             events/s from create_import to the last one in the consumer's
#             store, against a subscription (copy_data) of the same rows;
#   steady    with the import (and the baseline subscription) disabled, 8
#             clients append STEADY_EVENTS single events (the baseline: the
#             same rows inserted); then it is enabled and events/s of its
#             catch-up is measured: the apply of a stream of changes, not a
#             copy;
#   lag       8 clients append LAG_RATE events/s for LAG_SECONDS while the
#             import runs (synchronous_commit = on for them); for every event, the delay from the producer's
#             commit (its commit timestamp) to the moment a follower paging
#             the consumer's read_all first gets it (one machine, one
#             clock): p50, p99 and max; the same for the baseline's rows,
#             taken when the apply worker inserts them.
# The ratios are event_store / baseline (events/s); the lag target is an
# absolute p99 of 200 ms.
#
# Environment:
#   IMPORT_EVENTS    events of the backfill (default 1000000; 100000 for a smoke run)
#   STEADY_EVENTS    events of the steady case (default 200000)
#   LAG_RATE         appends/s of the lag case (default 2000)
#   LAG_SECONDS      seconds of the lag case (default 20)
#   SERVICES_PORT    port of the producer; the consumer uses the next one (default 5590)
#   BENCH_SKIP_BUILD set to 1 to use the installed extension as it is
#   PG_CONFIG        pg_config of the target server (default: pg_config on PATH)
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)

IMPORT_EVENTS=${IMPORT_EVENTS:-1000000}
STEADY_EVENTS=${STEADY_EVENTS:-200000}
LAG_RATE=${LAG_RATE:-2000}
LAG_SECONDS=${LAG_SECONDS:-20}
PORT=${SERVICES_PORT:-5590}
CPORT=$((PORT + 1))
PG_CONFIG=${PG_CONFIG:-pg_config}
CLIENTS=8

log() { printf '%s\n' "$*" >&2; }
die() { log "services.sh: $*"; exit 1; }

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build

REPL_CONF="wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_logical_replication_workers = 6
max_sync_workers_per_subscription = 2
track_commit_timestamp = on
wal_retrieve_retry_interval = '100ms'
shared_buffers = 512MB
max_wal_size = 8GB
checkpoint_timeout = 30min
synchronous_commit = off
autovacuum = off"

bench_cluster_start es-services SERVICES_PORT "$REPL_CONF"
PRODUCER_DATA=$DATA

# the consumer: a second cluster in the same work directory, stopped by the
# exit trap before the producer
CDATA="$WORK/consumer"
CSTARTED=0
bench_before_stop() {
	if [[ $CSTARTED -eq 1 ]]; then
		"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$CDATA" -m fast -w stop >/dev/null 2>&1 ||
			log "could not stop the consumer in $CDATA"
	fi
}
"${RUNAS[@]}" "$PGBIN/initdb" -D "$CDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
cat >>"$CDATA/postgresql.conf" <<CONF

# consumer cluster
port = $CPORT
listen_addresses = ''
unix_socket_directories = '$SOCK'
shared_preload_libraries = 'event_store'
max_connections = 40
jit = off
$REPL_CONF
CONF
"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$CDATA" -l "$WORK/consumer.log" -w start >/dev/null
CSTARTED=1
"$PGBIN/createdb" -p "$CPORT" bench

P=("${PSQL[@]}" -p "$PORT" -d bench)
C=("${PSQL[@]}" -p "$CPORT" -d bench)
PCONN="host=$SOCK port=$PORT dbname=bench user=postgres"

# The baseline table, as bench/sql/setup.sql makes it, on both sides
PLAIN_DDL='
CREATE SCHEMA bench;
CREATE TABLE bench.plain_events (
    global_position bigint      NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL,
    data            jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    schema_version  int         NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (global_position),
    UNIQUE (event_id)
);
CREATE UNIQUE INDEX plain_events_stream_id_stream_version_key
    ON bench.plain_events (stream_id COLLATE "C", stream_version);
CREATE INDEX plain_events_category_position_idx
    ON bench.plain_events ((split_part(stream_id, '"'"'-'"'"', 1) COLLATE "C"), global_position);
CREATE SEQUENCE bench.plain_position;'
for side in P C; do
	declare -n cmd=$side
	"${cmd[@]}" -c "CREATE EXTENSION event_store" -c "$PLAIN_DDL"
	unset -n cmd
done

# wait_count SIDE SQL N TIMEOUT: poll until SQL (a count) reaches N; prints
# the seconds waited (fractional)
wait_count() {
	local -n cmd=$1
	local sql=$2 n=$3 limit=$4 t0 got
	t0=$(date +%s.%N)
	while :; do
		got=$("${cmd[@]}" -Atc "$sql")
		[[ $got -ge $n ]] && break
		if awk -v a="$(date +%s.%N)" -v b="$t0" -v l="$limit" 'BEGIN { exit !(a - b > l) }'; then
			die "timed out after $limit s waiting for $n rows (have $got): $sql"
		fi
		sleep 0.05
	done
	awk -v a="$(date +%s.%N)" -v b="$t0" 'BEGIN { printf "%.3f", a - b }'
}

# ---------------------------------------------------------------------------
# backfill
# ---------------------------------------------------------------------------
STREAMS=$((IMPORT_EVENTS / 20))
log "== producer: $IMPORT_EVENTS events in $STREAMS streams (batch appends of 20, ~500 bytes each)"
"${P[@]}" -o /dev/null <<SQL
SELECT format(\$q\$
SELECT count(event_store.append(
           'imp-' || s,
           (SELECT jsonb_agg(jsonb_build_object(
                       'type', 'OrderLineAdded',
                       'data', jsonb_build_object('order', s, 'line', i, 'sku', 'SKU-' || mod(s * 31 + i, 9973),
                                                  'quantity', 1 + mod(i, 5), 'price', 9.99 + i,
                                                  'note', repeat('x', 300)),
                       'metadata', jsonb_build_object('correlationId', 'c-' || s, 'user', 'bench')))
              FROM generate_series(1, 20) AS i)))
  FROM generate_series(%s, %s) AS s\$q\$, lo, least(lo + 499, $STREAMS))
  FROM generate_series(1, $STREAMS, 500) AS lo
\gexec
INSERT INTO bench.plain_events SELECT * FROM event_store.events ORDER BY global_position;
SELECT setval('bench.plain_position', max(global_position)) FROM bench.plain_events;
SELECT event_store.create_publication('imp', ARRAY['imp', 'steady', 'lag']);
CREATE PUBLICATION plain FOR TABLE bench.plain_events WITH (publish = 'insert');
CHECKPOINT;
SQL
log "   $("${P[@]}" -Atc "SELECT count(*) || ' events, ' || pg_size_pretty(pg_total_relation_size('event_store.events')) FROM event_store.events")"

log "== backfill: event_store import"
t_es=$(
	"${C[@]}" -o /dev/null -c "SELECT event_store.create_import('imp', '$PCONN', 'imp')"
	wait_count C "SELECT count(*) FROM event_store.events" "$IMPORT_EVENTS" 3600
)
log "== backfill: logical replication into the plain table"
t_base=$(
	"${C[@]}" -o /dev/null -c "CREATE SUBSCRIPTION plain CONNECTION '$PCONN' PUBLICATION plain"
	wait_count C "SELECT count(*) FROM bench.plain_events" "$IMPORT_EVENTS" 3600
)
log "   event_store $t_es s, baseline $t_base s"
backfill_es=$(rate "$IMPORT_EVENTS" "$t_es")
backfill_base=$(rate "$IMPORT_EVENTS" "$t_base")

# ---------------------------------------------------------------------------
# steady: the apply of a backlog of single appends
# ---------------------------------------------------------------------------
SCRIPTS="$WORK/scripts"
mkdir -p "$SCRIPTS"
cat >"$SCRIPTS/es_steady.sql.in" <<'SQL'
\set sid random(1, 10000)
SELECT event_store.append('@PREFIX@-' || :sid, '{"type":"BenchEvent","data":{"n":1,"note":"steady stream of single events"}}');
SQL
cat >"$SCRIPTS/base_steady.sql.in" <<'SQL'
\set sid random(1, 10000)
INSERT INTO bench.plain_events
       (global_position, stream_id, stream_version, event_id, event_type,
        data, metadata, schema_version, recorded_at)
VALUES (nextval('bench.plain_position'), '@PREFIX@-' || :sid, currval('bench.plain_position'),
        gen_random_uuid(), 'BenchEvent', '{"n":1,"note":"steady stream of single events"}', '{}', 1, now());
SQL
for f in es_steady base_steady; do
	for prefix in steady lag; do
		sed "s/@PREFIX@/$prefix/" "$SCRIPTS/$f.sql.in" >"$SCRIPTS/${f}_$prefix.sql"
	done
done

# subscription_off NAME / subscription_on NAME, on the consumer
subscription_off() {
	"${C[@]}" -c "ALTER SUBSCRIPTION $1 DISABLE"
	wait_count C "SELECT count(*) FROM pg_stat_subscription s WHERE s.subname = '$1' AND s.pid IS NULL
	              OR NOT EXISTS (SELECT FROM pg_stat_subscription s WHERE s.subname = '$1')" 1 60 >/dev/null
}
# pgbench_fixed SCRIPT PREFIX EVENTS: EVENTS transactions from CLIENTS clients
pgbench_fixed() {
	local per=$(($3 / CLIENTS))
	"$PGBIN/pgbench" -n -M prepared -p "$PORT" -c "$CLIENTS" -j 2 -t "$per" \
		-f "$SCRIPTS/${1}_$2.sql" bench >"$WORK/pgbench_$1.log" 2>&1 || { tail "$WORK/pgbench_$1.log" >&2; die "pgbench failed"; }
	echo $((per * CLIENTS))
}

subscription_off imp
subscription_off plain
log "== steady: $STEADY_EVENTS appends and as many inserts while both are disabled"
n_es=$(pgbench_fixed es_steady steady "$STEADY_EVENTS")
n_base=$(pgbench_fixed base_steady steady "$STEADY_EVENTS")
have_es=$("${C[@]}" -Atc "SELECT count(*) FROM event_store.events")
have_base=$("${C[@]}" -Atc "SELECT count(*) FROM bench.plain_events")
log "== steady: event_store import catching up"
"${C[@]}" -c "ALTER SUBSCRIPTION imp ENABLE"
t_es=$(wait_count C "SELECT count(*) FROM event_store.events" $((have_es + n_es)) 3600)
log "== steady: logical replication into the plain table catching up"
"${C[@]}" -c "ALTER SUBSCRIPTION plain ENABLE"
t_base=$(wait_count C "SELECT count(*) FROM bench.plain_events" $((have_base + n_base)) 3600)
log "   event_store $t_es s, baseline $t_base s"
steady_es=$(rate "$n_es" "$t_es")
steady_base=$(rate "$n_base" "$t_base")

# ---------------------------------------------------------------------------
# lag: LAG_RATE appends/s from 8 clients, both flows running
# ---------------------------------------------------------------------------
# The consumer's side of the lag: when each event became visible there.
# For the import, a follower paging read_all (what an application does)
# records the clock when it first gets each event; for the baseline, an
# ALWAYS trigger on the plain table records the clock when the apply worker
# inserts the row (a little before its commit: the baseline's lag is a lower
# bound).  (The commit timestamps of the consumer cannot serve: an apply
# worker commits with the producer's commit time.)
"${C[@]}" <<'SQL'
CREATE TABLE bench.seen (event_id uuid PRIMARY KEY, at timestamptz NOT NULL);
CREATE TABLE bench.follow_stop (stop boolean);
CREATE PROCEDURE bench.follow(prefix text) LANGUAGE plpgsql AS $$
DECLARE
    cursor_pos bigint := (SELECT coalesce(max(global_position), 0) FROM event_store.events);
    page_max bigint;
BEGIN
    LOOP
        WITH page AS (SELECT * FROM event_store.read_all(cursor_pos, 10000)),
             seen AS (INSERT INTO bench.seen
                      SELECT event_id, clock_timestamp() FROM page WHERE stream_id LIKE prefix || '-%')
        SELECT max(global_position) INTO page_max FROM page;
        cursor_pos := coalesce(page_max, cursor_pos);
        COMMIT;
        EXIT WHEN EXISTS (SELECT FROM bench.follow_stop);
        IF page_max IS NULL THEN
            PERFORM pg_sleep(0.002);
        END IF;
    END LOOP;
END $$;
CREATE FUNCTION bench.seen_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO bench.seen VALUES (NEW.event_id, clock_timestamp());
    RETURN NULL;
END $$;
SQL

# lag_of SIDE PREFIX: p50 p99 max (ms) and count of (visible on the consumer
# - committed on the producer), per event
lag_of() {
	local side=$1 prefix=$2 table script n follower=
	if [[ $side == es ]]; then
		table=event_store.events script=es_steady
		"${C[@]}" -c "CALL bench.follow('$prefix')" &
		follower=$!
	else
		table=bench.plain_events script=base_steady
		"${C[@]}" -c "CREATE TRIGGER seen AFTER INSERT ON bench.plain_events FOR EACH ROW EXECUTE FUNCTION bench.seen_row();
		              ALTER TABLE bench.plain_events ENABLE ALWAYS TRIGGER seen"
	fi
	# committed for real (synchronous_commit = on): with it off, a commit
	# reaches the WAL sender only when the WAL writer flushes, up to 200 ms
	# (wal_writer_delay) later, on both sides alike
	PGOPTIONS="-c synchronous_commit=on" \
		"$PGBIN/pgbench" -n -M prepared -p "$PORT" -c "$CLIENTS" -j 2 -T "$LAG_SECONDS" -R "$LAG_RATE" \
		-f "$SCRIPTS/${script}_$prefix.sql" bench >"$WORK/pgbench_lag_$side.log" 2>&1 ||
		{ tail "$WORK/pgbench_lag_$side.log" >&2; die "pgbench failed"; }
	n=$("${P[@]}" -Atc "SELECT count(*) FROM $table WHERE stream_id LIKE '$prefix-%'")
	wait_count C "SELECT count(*) FROM bench.seen s JOIN $table e USING (event_id) WHERE e.stream_id LIKE '$prefix-%'" "$n" 600 >/dev/null
	if [[ -n $follower ]]; then
		"${C[@]}" -c "INSERT INTO bench.follow_stop VALUES (true)"
		wait "$follower"
	else
		"${C[@]}" -c "DROP TRIGGER seen ON bench.plain_events"
	fi
	"${C[@]}" -Atc "COPY (SELECT s.event_id, s.at FROM bench.seen s JOIN $table e USING (event_id)
	                      WHERE e.stream_id LIKE '$prefix-%') TO STDOUT" >"$WORK/lag_$side.tsv"
	"${P[@]}" -At <<SQL
CREATE TEMP TABLE arrived (event_id uuid PRIMARY KEY, at timestamptz);
\copy arrived FROM '$WORK/lag_$side.tsv'
SELECT concat_ws(' ',
         round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1),
         round(max(ms)::numeric, 1), count(*))
  FROM (SELECT extract(epoch FROM a.at - pg_xact_commit_timestamp(e.xmin)) * 1000 AS ms
          FROM $table e JOIN arrived a USING (event_id)
         WHERE e.stream_id LIKE '$prefix-%') d;
SQL
}
log "== lag: $LAG_RATE appends/s for $LAG_SECONDS s through the import"
read -r lag_es_p50 lag_es_p99 lag_es_max lag_es_n < <(lag_of es lag)
log "== lag: $LAG_RATE inserts/s for $LAG_SECONDS s through plain logical replication"
read -r lag_base_p50 lag_base_p99 lag_base_max lag_base_n < <(lag_of base lag)

# every imported event is there once, with the producer's data
"${C[@]}" -Atc "SELECT count(*) = count(DISTINCT event_id) FROM event_store.events" | grep -qx t ||
	die "the consumer holds an event twice"

mkdir -p "$BENCH_DIR/results"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }'; }
{
	echo "services benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, event_store $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'))"
	printf '%-34s %12s %12s %8s\n' case event_store baseline ratio
	printf '%-34s %12s %12s %8s\n' "backfill $IMPORT_EVENTS (events/s)" "$backfill_es" "$backfill_base" "$(ratio "$backfill_es" "$backfill_base")"
	printf '%-34s %12s %12s %8s\n' "steady $n_es (events/s)" "$steady_es" "$steady_base" "$(ratio "$steady_es" "$steady_base")"
	printf '%-34s %12s %12s\n' "lag at $LAG_RATE/s, p50 ms" "$lag_es_p50" "$lag_base_p50"
	printf '%-34s %12s %12s   (target: p99 <= 200 ms)\n' "lag at $LAG_RATE/s, p99 ms" "$lag_es_p99" "$lag_base_p99"
	printf '%-34s %12s %12s\n' "lag at $LAG_RATE/s, max ms" "$lag_es_max" "$lag_base_max"
	printf '%-34s %12s %12s\n' "lag events measured" "$lag_es_n" "$lag_base_n"
} | tee "$BENCH_DIR/results/services.txt"
