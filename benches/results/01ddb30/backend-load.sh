#!/usr/bin/env bash
# Redis and PostgreSQL load of a herald topology, per publish and per idle
# connection (docs/operations.md "Capacity guide"). The same private servers
# as benches/topology.sh (redis-server without persistence, PostgreSQL with
# default durability, one herald ingest, one herald gateway, 127.0.0.1), then:
#
#   A. herald-loadgen ingest --rate R: R publishes/s over 16 channels to
#      ingest. Window A0 (8 s): no Redis subscriber on those channels. Then K
#      `redis-cli SUBSCRIBE` clients on the 16 channels (stand-ins for K
#      gateways with local subscribers: a gateway holds one such
#      subscription per channel); window AK (8 s). Redis INFO commandstats /
#      cpu / stats, PostgreSQL pg_stat_database / pg_stat_wal and the
#      processes' CPU (/proc) are read at each window's ends.
#   B. herald-loadgen idle: N connections (one channel each, presence
#      granted) held; window B (30 s, after the connects): Redis per idle
#      connection (presence refresh every ttl/3, bus PINGs).
#
#   backend-load.sh OUT [R] [K] [N]      (defaults 1000 10 5000)
set -euo pipefail
out=$1
rate=${2:-1000}
subs=${3:-10}
idle=${4:-5000}
herald=${HERALD_BIN:?set HERALD_BIN}
loadgen=${LOADGEN_BIN:?set LOADGEN_BIN}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cpu_ticks() { local s; s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }; echo "${s##*) }" | awk '{ print $12 + $13 }'; }
tree_ticks() { local t=0; for p in "$1" $(pgrep -P "$1" || true); do t=$((t + $(cpu_ticks "$p"))); done; echo "$t"; }

dir=$(mktemp -d -t herald-backend-XXXXXX)
chmod 0711 "$dir"
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
declare -A PID=()
SUBPIDS=()
cleanup() {
    for p in "${SUBPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for n in gateway ingest redis; do [ -n "${PID[$n]:-}" ] && { kill -TERM "${PID[$n]}" 2>/dev/null || true; wait "${PID[$n]}" 2>/dev/null || true; }; done
    [ -n "${PID[postgres]:-}" ] && { kill -INT "${PID[postgres]}" 2>/dev/null || true; wait "${PID[postgres]}" 2>/dev/null || true; }
    rm -rf "$dir"
}
trap cleanup EXIT
clean_env=(env)
for v in $(compgen -e | grep '^HERALD_' || true); do clean_env+=(-u "$v"); done

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" --logfile "$dir/redis.log" &
PID[redis]=$!
rc=(redis-cli -p "$redis_port")
until "${rc[@]}" ping 2>/dev/null | grep -q PONG; do sleep 0.1; done

pgbin=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | tail -1)")
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
mkdir -p "$dir/pg"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pg"
pg_port=$(free_port)
(cd "$dir/pg" && "${as_pg[@]}" "$pgbin/initdb" -D "$dir/pg/data" -U herald --auth=trust -E UTF8 --no-locale --no-instructions >"$dir/initdb.log" 2>&1)
(cd "$dir/pg" && exec "${as_pg[@]}" "$pgbin/postgres" -D "$dir/pg/data" -p "$pg_port" -k "$dir/pg" -c listen_addresses=127.0.0.1 >"$dir/postgres.log" 2>&1) &
PID[postgres]=$!
until "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U herald -d postgres; do sleep 0.1; done
psql=("$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U herald -d postgres -XAtq)

ingest_port=$(free_port); ingest_admin=$(free_port); gw_port=$(free_port); gw_admin=$(free_port)
"${clean_env[@]}" "$herald" ingest --listen "127.0.0.1:$ingest_port" --admin-listen "127.0.0.1:$ingest_admin" \
    --database-url "postgres://herald@127.0.0.1:$pg_port/postgres" --redis-url "redis://127.0.0.1:$redis_port" \
    --api-key "$key" --node-id ingest-1 >"$dir/ingest.log" 2>&1 &
PID[ingest]=$!
until curl -sf -o /dev/null "http://127.0.0.1:$ingest_admin/readyz"; do sleep 0.1; done
"${clean_env[@]}" "$herald" gateway --listen "127.0.0.1:$gw_port" --admin-listen "127.0.0.1:$gw_admin" \
    --redis-url "redis://127.0.0.1:$redis_port" --ingest-url "http://127.0.0.1:$ingest_port" \
    --jwt-secret "$secret" --api-key "$key" --node-id gw-1 >"$dir/gateway.log" 2>&1 &
PID[gateway]=$!
until curl -sf -o /dev/null "http://127.0.0.1:$gw_admin/readyz"; do sleep 0.1; done

# One snapshot: Redis counters, PostgreSQL counters, CPU ticks, time.
snap() {
    local info
    info=$("${rc[@]}" info all | tr -d '\r')
    echo "t=$(date +%s.%N)"
    echo "$info" | grep -E '^(used_cpu_sys|used_cpu_user|total_commands_processed|total_net_input_bytes|total_net_output_bytes|cmdstat_[a-z|]+):'
    echo "pg_db=$("${psql[@]}" -F, -c "SELECT xact_commit, tup_inserted, tup_updated, tup_deleted FROM pg_stat_database WHERE datname = 'postgres'")"
    echo "pg_wal=$("${psql[@]}" -F, -c "SELECT wal_records, wal_bytes, wal_sync FROM pg_stat_wal")"
    echo "ticks_pg=$(tree_ticks "${PID[postgres]}") ticks_ingest=$(cpu_ticks "${PID[ingest]}") ticks_gateway=$(cpu_ticks "${PID[gateway]}")"
}

{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# binaries: herald built $(date -u -r "$herald" +%Y-%m-%dT%H:%M:%SZ), herald-loadgen $(date -u -r "$loadgen" +%Y-%m-%dT%H:%M:%SZ)"
    echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}'), default settings"
    echo "# A: rate $rate/s, 16 channels, $subs redis-cli subscribers in window AK; B: $idle idle connections"
} >"$out"

# --- A ---
HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret "$loadgen" --url "http://127.0.0.1:$ingest_port" \
    --pid "${PID[ingest]}" ingest --rate "$rate" --duration 26s --concurrency 32 --channels 16 >"$dir/a.txt" 2>&1 &
lg=$!
sleep 2
# The run's channel names, from one second of MONITOR.
channels=$(timeout 1 "${rc[@]}" monitor 2>/dev/null | grep -o '"PUBLISH" "[^"]*"' | awk '{print $2}' | tr -d '"' | sort -u | tr '\n' ' ' || true)
echo "# channels seen: $(echo "$channels" | wc -w)" >>"$out"
sleep 1
{ echo "== A0 start"; snap; } >>"$out"
sleep 8
{ echo "== A0 end"; snap; } >>"$out"
for i in $(seq 1 "$subs"); do
    # shellcheck disable=SC2086
    "${rc[@]}" subscribe $channels >/dev/null 2>&1 &
    SUBPIDS+=($!)
done
sleep 2
{ echo "== AK start ($("${rc[@]}" info clients | tr -d '\r' | grep '^connected_clients'))"; snap; } >>"$out"
sleep 8
{ echo "== AK end"; snap; } >>"$out"
wait "$lg" || true
for p in "${SUBPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
SUBPIDS=()
grep -E 'persisted|latency' "$dir/a.txt" | sed 's/^/# loadgen A: /' >>"$out"
echo "# messages table: $("${psql[@]}" -F, -c "SELECT count(*), pg_total_relation_size('messages'), pg_relation_size('messages') FROM messages")" >>"$out"
echo "# database size: $("${psql[@]}" -c "SELECT pg_database_size('postgres')")" >>"$out"

# --- B ---
HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret "$loadgen" --url "http://127.0.0.1:$gw_port" \
    --pid "${PID[gateway]}" idle --connections "$idle" --settle 2s --hold 45s >"$dir/b.txt" 2>&1 &
lg=$!
sleep 10
{ echo "== B start (gateway: $(curl -s "http://127.0.0.1:$gw_admin/metrics" | grep -E '^herald_connections' | tr '\n' ' '))"; snap; } >>"$out"
sleep 30
{ echo "== B end"; snap; } >>"$out"
wait "$lg" || true
grep -E 'connections|rss per' "$dir/b.txt" | sed 's/^/# loadgen B: /' >>"$out"
cat "$out"
