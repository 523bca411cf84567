#!/usr/bin/env bash
#
# bench/peers.sh - event_store against its peers on the shapes where they
# lead: batches against Emmett's emt_append_to_stream, category pages against
# Message DB's get_category_messages.  Both peers are installed the way their
# own clients do it, from their npm packages (@eventide/message-db ships its
# SQL and install script; @event-driven-io/emmett-postgresql creates its
# schema from its client), into one throwaway cluster with event_store; the
# pgbench scripts send the statements their clients send.  Needs npm and
# node and the npm registry.  Written to bench/results/peers.txt.
#
# Environment:
#   PEERS_STREAMS   streams of the fixture, 20 events each (default 10000)
#   PEERS_SECONDS   measured seconds per side (default 8)
#   PEERS_CLIENTS   clients of the multi-client cases (default 8)
#   PEERS_CASES     subset of: batch10 batch100 category (default: all)
#   PEERS_PORT      port of the throwaway cluster (default 5542)
#   MESSAGE_DB_VERSION, EMMETT_VERSION  npm versions (default 1.3.1, 0.42.0)
#   BENCH_SKIP_BUILD, PG_CONFIG as in run.sh
#
set -euo pipefail
shopt -s inherit_errexit

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$BENCH_DIR/.." && pwd)
G="$BENCH_DIR/growth"
P="$BENCH_DIR/peers"

STREAMS=${PEERS_STREAMS:-10000}
SECONDS_PER_RUN=${PEERS_SECONDS:-8}
WARMUP=$(( SECONDS_PER_RUN / 5 > 1 ? SECONDS_PER_RUN / 5 : 1 ))
CLIENTS=${PEERS_CLIENTS:-8}
PORT=${PEERS_PORT:-5542}
CASES=${PEERS_CASES:-"batch10 batch100 category"}
MESSAGE_DB_VERSION=${MESSAGE_DB_VERSION:-1.3.1}
EMMETT_VERSION=${EMMETT_VERSION:-0.42.0}
PG_CONFIG=${PG_CONFIG:-pg_config}
NPROC=$(nproc)
RESULTS_DIR="$BENCH_DIR/results"
RESULT_FILE="$RESULTS_DIR/peers.txt"
LOG_DIR="$RESULTS_DIR/peers-logs"

log() { printf '%s\n' "$*" >&2; }
die() { log "peers.sh: $*"; exit 1; }

command -v npm >/dev/null && command -v node >/dev/null || die "needs npm and node"

# shellcheck source=bench/lib.sh
. "$BENCH_DIR/lib.sh"
bench_build
bench_cluster_start es-peers PEERS_PORT "shared_buffers = 512MB
max_wal_size = 8GB
min_wal_size = 1GB
checkpoint_timeout = 30min
autovacuum = off"

# the peers' packages, in a scratch directory of this run
NPM_DIR="$WORK/npm"
mkdir -p "$NPM_DIR"
log "== installing @eventide/message-db@$MESSAGE_DB_VERSION and @event-driven-io/emmett-postgresql@$EMMETT_VERSION (npm)"
(cd "$NPM_DIR" && npm init -y >/dev/null &&
	npm install --no-audit --no-fund --loglevel=error \
		"@eventide/message-db@$MESSAGE_DB_VERSION" \
		"@event-driven-io/emmett-postgresql@$EMMETT_VERSION" >&2)
cp "$P/emmett.mjs" "$NPM_DIR/"
[[ $EUID -eq 0 ]] && chown -R postgres: "$NPM_DIR"

# event_store and the fixture's helpers (bench.event_doc, bench.stream_of)
"${PSQL[@]}" -f "$G/setup.sql" >/dev/null
# Message DB: its install script, into this database; its functions find
# their objects through the search path its role would have
log "== Message DB: install.sh"
PATH="$PGBIN:$PATH" DATABASE_NAME=bench CREATE_DATABASE=off \
	bash "$NPM_DIR/node_modules/@eventide/message-db/database/install.sh" >/dev/null
"${PSQL[@]}" -c "ALTER DATABASE bench SET search_path = \"\$user\", public, message_store"
# Emmett: its client migrates the schema
log "== Emmett: schema.migrate()"
CONN="postgresql://$PGUSER@localhost/bench?host=$PGHOST&port=$PGPORT"
(cd "$NPM_DIR" && node emmett.mjs "$CONN" migrate)

log "== loading $((STREAMS * 20)) events of about 500 bytes into each store"
t0=$(date +%s)
pids=()
chunk=$(( (STREAMS + NPROC - 1) / NPROC ))
for (( lo = 1; lo <= STREAMS; lo += chunk )); do
	hi=$(( lo + chunk - 1 < STREAMS ? lo + chunk - 1 : STREAMS ))
	PGOPTIONS="-c synchronous_commit=off" "${PSQL[@]}" -v lo="$lo" -v hi="$hi" -v per_stream=20 -f "$G/load.sql" >&2 &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a loader failed"; done
pids=()
for (( lo = 1; lo <= STREAMS; lo += chunk )); do
	hi=$(( lo + chunk - 1 < STREAMS ? lo + chunk - 1 : STREAMS ))
	PGOPTIONS="-c synchronous_commit=off" "${PSQL[@]}" -v lo="$lo" -v hi="$hi" -f "$P/load.sql" >&2 &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || die "a peer loader failed"; done
"${PSQL[@]}" -c "VACUUM ANALYZE" >/dev/null
log "   loaded in $(( $(date +%s) - t0 )) s"
read -r ES_N MDB_N EMT_N < <("${PSQL[@]}" -Atc "SELECT (SELECT count(*) FROM event_store.events),
	(SELECT count(*) FROM message_store.messages), (SELECT count(*) FROM emt_messages)" | tr '|' ' ')
[[ "$ES_N" == "$MDB_N" && "$ES_N" == "$EMT_N" ]] || die "stores differ: $ES_N / $MDB_N / $EMT_N events"
CATMAX=$("${PSQL[@]}" -Atc "SELECT min(global_position) FROM (SELECT global_position FROM event_store.events
          WHERE split_part(stream_id, '-', 1) COLLATE \"C\" = 'order' ORDER BY global_position DESC LIMIT 1000) AS l")
MDBCATMAX=$("${PSQL[@]}" -Atc "SELECT min(global_position) FROM (SELECT global_position FROM message_store.messages
          WHERE category(stream_name) = 'order' ORDER BY global_position DESC LIMIT 1000) AS l")
MAXPOS=0
PAIR_EXTRA=(-D streams="$STREAMS" -D catmax="$CATMAX" -D mdbcatmax="$MDBCATMAX")

# The batch documents: the same events for both sides, pasted as literals
# (no single quotes in them)
SCRIPTS="$WORK/scripts"
mkdir -p "$SCRIPTS" "$LOG_DIR" "$RESULTS_DIR"
rm -f "$LOG_DIR"/*.log "$LOG_DIR/segments.txt"
cp "$P"/es_read_category.sql "$P"/mdb_read_category.sql "$SCRIPTS/"
for n in 10 100; do
	"${PSQL[@]}" -At -F $'\t' -c "
		SELECT jsonb_agg(d ORDER BY i),
		       string_agg(quote_literal(gen_random_uuid()::text), ',' ORDER BY i),
		       string_agg(quote_literal(d->'data'), ',' ORDER BY i),
		       string_agg(quote_literal(d->'metadata'), ',' ORDER BY i),
		       string_agg('''1''', ',' ORDER BY i),
		       string_agg(quote_literal(d->>'type'), ',' ORDER BY i),
		       string_agg('''E''', ',' ORDER BY i)
		  FROM (SELECT i, bench.event_doc('Event' || (i % 7), 900000 + i) AS d
		          FROM generate_series(1, $n) AS i) AS e" >"$WORK/docs$n.tsv"
	IFS=$'\t' read -r batch ids data meta vers types kinds <"$WORK/docs$n.tsv"
	awk -v v="$batch" '{ while ((i = index($0, "@BATCH@")) > 0) $0 = substr($0, 1, i - 1) v substr($0, i + 7); print }' \
		"$P/es_append_batch.sql" >"$SCRIPTS/es_append_batch$n.sql"
	awk -v ids="$ids" -v data="$data" -v meta="$meta" -v vers="$vers" -v types="$types" -v kinds="$kinds" '
		function put(tag, val) { while ((i = index($0, tag)) > 0) $0 = substr($0, 1, i - 1) val substr($0, i + length(tag)) }
		{ put("@EMT_IDS@", ids); put("@EMT_DATA@", data); put("@EMT_META@", meta)
		  put("@EMT_VERSIONS@", vers); put("@EMT_TYPES@", types); put("@EMT_KINDS@", kinds); print }' \
		"$P/emmett_append_batch.sql" >"$SCRIPTS/emmett_append_batch$n.sql"
done

if (( SECONDS_PER_RUN >= 8 )); then
	SEGMENTS=4
	ORDER=(es base base es base es es base)
else
	SEGMENTS=2
	ORDER=(es base base es)
fi
SEGMENT=$(( SECONDS_PER_RUN / SEGMENTS > 1 ? SECONDS_PER_RUN / SEGMENTS : 1 ))
ROWS=()
TARGETS_MET=0 TARGETS_TOTAL=0 SYNC_MET=0 SYNC_TOTAL=0

for c in $CASES; do
	case $c in
	batch10 | batch100)
		n=${c#batch}
		pair "batch $n vs Emmett" "es_append_batch$n.sql" "emmett_append_batch$n.sql" 1 off "$n" events 1.0
		pair "batch $n vs Emmett" "es_append_batch$n.sql" "emmett_append_batch$n.sql" "$CLIENTS" off "$n" events 1.0 ;;
	category)
		pair "category vs Message DB" es_read_category.sql mdb_read_category.sql 1 off 1000 rows 1.1
		pair "category vs Message DB" es_read_category.sql mdb_read_category.sql "$CLIENTS" off 1000 rows 1.1 ;;
	*) die "unknown case $c" ;;
	esac
done

# every store still whole: gapless versions in each
CHECK=$("${PSQL[@]}" -Atc "
	SELECT (SELECT bool_and(n = v) FROM (SELECT count(*) AS n, max(stream_version) AS v FROM event_store.events GROUP BY stream_id) s)
	   AND (SELECT bool_and(n = v + 1) FROM (SELECT count(*) AS n, max(position) AS v FROM message_store.messages GROUP BY stream_name) s)
	   AND (SELECT bool_and(n = v) FROM (SELECT count(*) AS n, max(stream_position) AS v FROM emt_messages GROUP BY stream_id) s)")

{
	echo "event_store against its peers, $(date -u '+%Y-%m-%d %H:%M UTC')"
	echo "server:   $("${PSQL[@]}" -Atc 'SELECT version()')"
	echo "build:    event_store $(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo '?'), Message DB $MESSAGE_DB_VERSION, Emmett $EMMETT_VERSION"
	echo "machine:  $(uname -sm), nproc=$NPROC; shared_buffers=512MB, synchronous_commit=off, pgbench -M prepared"
	echo "fixture:  $ES_N events (about 500 bytes of JSON each, $STREAMS streams in 10 categories) in each store"
	echo "per side ${WARMUP}s warm-up, then $SEGMENTS segments of -T $SEGMENT in the order ${ORDER[*]} (es = event_store, base = the peer)"
	echo "ratio = event_store tps / peer tps; cpu r. = peer cpu/op / event_store cpu/op"
	echo
	table_row "case" "clients" "sync_commit" "event_store tps" "peer tps" "ratio" "noise" \
		"es cpu/op" "peer cpu" "cpu r." "unit" "event_store" "peer" "target"
	echo
	printf '%s\n' "${ROWS[@]}"
	echo
	echo "targets met: $TARGETS_MET of $TARGETS_TOTAL; every stream gapless in all three stores: $CHECK"
} | tee "$RESULT_FILE"
