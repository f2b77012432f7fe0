#!/usr/bin/env bash
# Runs one herald-loadgen scenario against the Redis topology on 127.0.0.1:
# a private redis-server, a private PostgreSQL (default durability: fsync,
# synchronous_commit and full_page_writes on), 1 `herald ingest` and
# BENCH_GATEWAYS (default 1) `herald gateway`s (node ids gw-1, gw-2, ...),
# all release binaries, all on free ports in a temp dir. herald-loadgen gets
# `--pid` of EVERY herald process (ingest first, then the gateways in
# order); the CPU of PostgreSQL, Redis (and nginx) is read from /proc and
# appended to the output. Everything is stopped by PID on exit.
#
#   cargo build --release -p herald -p herald-loadgen
#   benches/topology.sh OUT.txt TARGET [loadgen flags] SCENARIO [scenario flags]
#   BENCH_GATEWAYS=2 benches/topology.sh OUT.txt direct fanout ...
#
# TARGET is what herald-loadgen's --url points at:
#   gateway  each gateway's public port, one --url each (/ws only: idle,
#            connect); connection i goes to gateway i mod BENCH_GATEWAYS
#   ingest   the ingest node's public port (/v1/publish only: ingest); the
#            gateways run (and are measured) but get no connections
#   direct   each gateway's port for WebSockets (one --url each, round
#            robin as above) and `--ingest-url` the ingest node's for
#            publishes (fanout, channels, ramp): no proxy
#   split    an nginx on a free port routing /ws to the gateways (every
#            gateway in one upstream, nginx's round robin) and /v1/ to
#            ingest, one --url for both (the first topology record, made
#            before herald-loadgen had --ingest-url); every WebSocket frame
#            then also crosses nginx (one worker, on the same two cores).
#
# Environment:
#   HERALD_BIN / LOADGEN_BIN   the binaries (default target/release/...)
#   BENCH_GATEWAYS=N           gateways to start, 1..=4 (1); each has its own
#                              ports and log (gw-N.log) and must answer its
#                              /readyz before the next starts
#   BENCH_WAIT_BUILDS_S        wait up to this long for rustc/cargo to finish (300)
#   BENCH_PERF=ROLE            `perf record -F 499 -g` of ROLE (gateway = every
#                              gateway, gw-N = one of them, ingest, postgres =
#                              the postmaster and its children, redis, nginx)
#                              for BENCH_PERF_SECONDS (6) after
#                              BENCH_PERF_DELAY (3) s of the run; perf.data and
#                              a `perf report --no-children` summary go to
#                              BENCH_PERF_DIR (default: a temp dir, printed);
#                              BENCH_PERF_ARGS replaces `-F 499 -g` (e.g. probe
#                              events); with BENCH_PERF_DELAY=0 perf starts 1 s
#                              before the load does
#   BENCH_KEEP=1               keep the temp dir (logs, PostgreSQL data)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD_BIN:-$root/target/release/herald}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
target=$2
shift 2
case "$target" in gateway | ingest | direct | split) ;; *)
    echo "TARGET must be gateway, ingest, direct or split (got $target)" >&2
    exit 64
    ;;
esac
gateways=${BENCH_GATEWAYS:-1}
case "$gateways" in [1-4]) ;; *)
    echo "BENCH_GATEWAYS must be 1, 2, 3 or 4 (got $gateways)" >&2
    exit 64
    ;;
esac
# Seconds of user+system CPU a process has used (0 when gone).
cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || {
        echo 0
        return
    }
    # Fields after the command name (which may hold spaces): utime is the
    # 12th, stime the 13th.
    echo "${stat##*) }" | awk '{ print $12 + $13 }'
}
# CPU ticks of a process and its direct children (PostgreSQL backends).
tree_ticks() {
    local t total=0
    for p in "$1" $(pgrep -P "$1" || true); do
        t=$(cpu_ticks "$p")
        total=$((total + t))
    done
    echo "$total"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
tree_rss_kb() {
    local r total=0
    for p in "$1" $(pgrep -P "$1" || true); do
        r=$(rss_kb "$p")
        total=$((total + ${r:-0}))
    done
    echo "$total"
}
# shellcheck source=benches/common.sh
. "$root/benches/common.sh"
# Waits until `curl URL` answers 200, up to 20 s; else prints LOG and fails.
wait_http() {
    for _ in $(seq 1 200); do
        if curl -sf -o /dev/null "$1"; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not answer 200 within 20 s; $2:" >&2
    tail -50 "$2" >&2
    return 1
}

dir=$(mktemp -d -t herald-topology-XXXXXX)
# PostgreSQL runs as `postgres` when we are root: it must reach $dir/pg.
chmod 0711 "$dir"
secret=$(random_hex)
key=$(random_hex)
declare -A PID=()
# Gateway names (gw-1, gw-2, ...): keys of PID, node ids, log names.
GW=()
for i in $(seq 1 "$gateways"); do GW+=("gw-$i"); done

stop_pid() { # NAME SIGNAL: signal, wait up to 15 s, then SIGKILL
    local name=$1 sig=$2 p=${PID[$1]:-}
    [ -n "$p" ] || return 0
    kill "-$sig" "$p" 2>/dev/null || return 0
    for _ in $(seq 1 150); do
        kill -0 "$p" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$p" 2>/dev/null; then
        echo "$name (pid $p) still running after 15 s: SIGKILL" >&2
        kill -KILL "$p" 2>/dev/null || true
    fi
    wait "$p" 2>/dev/null || true
}
cleanup() {
    local code=$?
    [ -n "${PERF_PID:-}" ] && { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
    # Clients first (nginx), then the gateways, ingest, Redis, PostgreSQL
    # (fast shutdown: SIGINT to the postmaster, our direct child).
    stop_pid nginx QUIT
    for g in "${GW[@]}"; do stop_pid "$g" TERM; done
    stop_pid ingest TERM
    stop_pid redis TERM
    stop_pid postgres INT
    if [ -n "${BENCH_KEEP:-}" ]; then
        echo "kept $dir" >&2
    else
        rm -rf "$dir"
    fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Every HERALD_* variable of our environment is removed for the servers
# (herald refuses unknown ones, and known ones would override the flags).
clean_env=(env)
for v in $(compgen -e | grep '^HERALD_' || true); do clean_env+=(-u "$v"); done

# --- Redis ---
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no &
PID[redis]=$!
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping 2>/dev/null | grep -q PONG && break
    sleep 0.1
done

# --- PostgreSQL (initdb + postgres as `postgres` when root; setpriv execs,
# so $! is the postmaster itself) ---
pgbin=$(dirname "$(readlink -f "$(command -v initdb 2>/dev/null || ls /usr/lib/postgresql/*/bin/initdb | tail -1)")")
as_pg=()
if [ "$(id -u)" -eq 0 ]; then
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups)
fi
mkdir -p "$dir/pg"
[ "$(id -u)" -eq 0 ] && chown postgres: "$dir/pg"
pg_port=$(free_port)
(cd "$dir/pg" && "${as_pg[@]}" env -u PGDATA -u PGPORT -u PGHOST -u PGUSER -u PGOPTIONS \
    "$pgbin/initdb" -D "$dir/pg/data" -U herald --auth=trust -E UTF8 --no-locale --no-instructions \
    >"$dir/initdb.log" 2>&1) || {
    cat "$dir/initdb.log" >&2
    exit 1
}
(cd "$dir/pg" && exec "${as_pg[@]}" env -u PGDATA -u PGPORT -u PGHOST -u PGUSER -u PGOPTIONS \
    "$pgbin/postgres" -D "$dir/pg/data" -p "$pg_port" -k "$dir/pg" \
    -c listen_addresses=127.0.0.1 >"$dir/postgres.log" 2>&1) &
PID[postgres]=$!
pg_ready=""
for _ in $(seq 1 300); do
    if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$pg_port" -U herald -d postgres; then pg_ready=1; break; fi
    sleep 0.1
done
[ -n "$pg_ready" ] || { echo "postgres did not start:" >&2; tail -30 "$dir/postgres.log" >&2; exit 1; }
psql=("$pgbin/psql" -h 127.0.0.1 -p "$pg_port" -U herald -d postgres -XAtq)
pg_settings=$("${psql[@]}" -F= -c "SELECT name, setting FROM pg_settings WHERE name IN
    ('fsync','synchronous_commit','full_page_writes','wal_sync_method','shared_buffers','max_connections','commit_delay')
    ORDER BY name" | tr '\n' ' ')
db_url="postgres://herald@127.0.0.1:$pg_port/postgres"

# --- herald ingest + gateways ---
ingest_port=$(free_port)
ingest_admin=$(free_port)
"${clean_env[@]}" "$herald" ingest --listen "127.0.0.1:$ingest_port" --admin-listen "127.0.0.1:$ingest_admin" \
    --database-url "$db_url" --redis-url "redis://127.0.0.1:$redis_port" \
    --api-key "$key" --node-id ingest-1 >"$dir/ingest.log" 2>&1 &
PID[ingest]=$!
wait_http "http://127.0.0.1:$ingest_admin/readyz" "$dir/ingest.log"
declare -A GW_PORT=()
gw_urls=()      # one --url per gateway, in order
gw_pid_args=()  # one --pid per gateway, in order
gw_pids=()
for g in "${GW[@]}"; do
    GW_PORT[$g]=$(free_port)
    gw_admin=$(free_port)
    "${clean_env[@]}" "$herald" gateway --listen "127.0.0.1:${GW_PORT[$g]}" --admin-listen "127.0.0.1:$gw_admin" \
        --redis-url "redis://127.0.0.1:$redis_port" --ingest-url "http://127.0.0.1:$ingest_port" \
        --jwt-secret "$secret" --api-key "$key" --node-id "$g" >"$dir/$g.log" 2>&1 &
    PID[$g]=$!
    wait_http "http://127.0.0.1:$gw_admin/readyz" "$dir/$g.log"
    gw_urls+=(--url "http://127.0.0.1:${GW_PORT[$g]}")
    gw_pid_args+=(--pid "${PID[$g]}")
    gw_pids+=("${PID[$g]}")
done
# For the header: one gateway is named as before the option existed.
if [ "$gateways" -eq 1 ]; then
    gw_desc="1 herald gateway (pid ${gw_pids[0]})"
    gw_roles="gateway pid ${gw_pids[0]}"
    gw_upstream=gateway
else
    gw_roles=$(for g in "${GW[@]}"; do printf '%s pid %s, ' "$g" "${PID[$g]}"; done)
    gw_roles=${gw_roles%, }
    gw_desc="$gateways herald gateways ($gw_roles)"
    gw_upstream="$gateways gateways, round robin"
fi

# --- what loadgen's --url points at ---
case "$target" in
gateway)
    urls=("${gw_urls[@]}")
    url_desc=$(printf -- '--url <%s> ' "${GW[@]}")
    url_desc=${url_desc% }
    ;;
ingest)
    urls=(--url "http://127.0.0.1:$ingest_port")
    url_desc="--url <ingest>"
    ;;
direct)
    urls=("${gw_urls[@]}" --ingest-url "http://127.0.0.1:$ingest_port")
    url_desc="$(printf -- '--url <%s> ' "${GW[@]}")--ingest-url <ingest>"
    ;;
split)
    nginx_port=$(free_port)
    mkdir -p "$dir/nginx"
    cat >"$dir/nginx/nginx.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 19000; multi_accept on; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    upstream gateway {$(for g in "${GW[@]}"; do printf ' server 127.0.0.1:%s;' "${GW_PORT[$g]}"; done) }
    upstream ingest { server 127.0.0.1:$ingest_port; keepalive 256; }
    server {
        listen 127.0.0.1:$nginx_port backlog=4096;
        location = /ws {
            proxy_pass http://gateway;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            proxy_buffering off;
        }
        location /v1/ {
            proxy_pass http://ingest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
    nginx -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log" &
    PID[nginx]=$!
    urls=(--url "http://127.0.0.1:$nginx_port")
    url_desc="--url <nginx>"
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$nginx_port") 2>/dev/null && break
        sleep 0.1
    done
    ;;
esac

# --- the run ---
{
    bench_header_common herald "$herald"
    echo "# topology: redis-server $(redis-server --version | grep -o 'v=[0-9.]*'), PostgreSQL $("$pgbin/postgres" --version | awk '{print $3}') ($pg_settings), 1 herald ingest (pid ${PID[ingest]}), $gw_desc"
    echo "# loadgen --url: $target${PID[nginx]:+ (nginx pid ${PID[nginx]}: /ws -> $gw_upstream, /v1/ -> ingest)}"
    echo "# command: herald-loadgen $url_desc --pid <ingest pid> $(for g in "${GW[@]}"; do printf -- '--pid <%s pid> ' "$g"; done)$*"
} | tee "$out"

if [ -n "${BENCH_PERF:-}" ]; then
    perf_dir=${BENCH_PERF_DIR:-$(mktemp -d -t herald-perf-XXXXXX)}
    mkdir -p "$perf_dir"
    case "$BENCH_PERF" in
    postgres) perf_pids=$(echo "${PID[postgres]}" $(pgrep -P "${PID[postgres]}") | tr ' ' ',') ;;
    gateway) perf_pids=$(IFS=,; echo "${gw_pids[*]}") ;;
    *)
        perf_pids=${PID[$BENCH_PERF]:-}
        [ -n "$perf_pids" ] || { echo "BENCH_PERF=$BENCH_PERF: no such role here" >&2; exit 64; }
        ;;
    esac
    read -r -a perf_args <<<"${BENCH_PERF_ARGS:--F 499 -g}"
    (
        sleep "${BENCH_PERF_DELAY:-3}"
        # PostgreSQL backends connect when the load starts: list them now.
        if [ "$BENCH_PERF" = postgres ]; then
            perf_pids=$(echo "${PID[postgres]}" $(pgrep -P "${PID[postgres]}") | tr ' ' ',')
        fi
        exec timeout -s INT "$((${BENCH_PERF_SECONDS:-6} + 5))" perf record "${perf_args[@]}" -o "$perf_dir/perf.data" \
            -p "$perf_pids" -- sleep "${BENCH_PERF_SECONDS:-6}"
    ) >"$perf_dir/perf-record.log" 2>&1 &
    PERF_PID=$!
    if [ "${BENCH_PERF_DELAY:-3}" = 0 ]; then sleep 1; fi
fi

t0_pg=$(tree_ticks "${PID[postgres]}")
t0_redis=$(cpu_ticks "${PID[redis]}")
t0_nginx=$([ -n "${PID[nginx]:-}" ] && cpu_ticks "${PID[nginx]}" || echo 0)
overflows_before=$(listen_overflows)
status=0
HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret \
    "$loadgen" "${urls[@]}" --pid "${PID[ingest]}" "${gw_pid_args[@]}" "$@" | tee -a "$out" || status=$?
t1_pg=$(tree_ticks "${PID[postgres]}")
t1_redis=$(cpu_ticks "${PID[redis]}")
t1_nginx=$([ -n "${PID[nginx]:-}" ] && cpu_ticks "${PID[nginx]}" || echo 0)
rows=$("${psql[@]}" -c "SELECT count(*) FROM messages" 2>/dev/null || echo '?')
{
    echo "# roles: ingest pid ${PID[ingest]}, $gw_roles"
    echo "# other CPU over the whole loadgen run (incl. connect/drain): postgres (postmaster + backends) $(awk "BEGIN { printf \"%.2f\", ($t1_pg - $t0_pg) / 100 }") s (rss $(tree_rss_kb "${PID[postgres]}") KiB summed), redis-server $(awk "BEGIN { printf \"%.2f\", ($t1_redis - $t0_redis) / 100 }") s${PID[nginx]:+, nginx $(awk "BEGIN { printf \"%.2f\", ($t1_nginx - $t0_nginx) / 100 }") s}"
    echo "# rows in messages after the run: $rows"
    echo "ListenOverflows during run: $(($(listen_overflows) - overflows_before))"
} | tee -a "$out"

if [ -n "${PERF_PID:-}" ]; then
    wait "$PERF_PID" 2>/dev/null || true
    PERF_PID=""
    perf report -i "$perf_dir/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
        | grep -v '^$' | head -400 >"$perf_dir/report.txt" || true
    echo "perf: $perf_dir/perf.data, summary $perf_dir/report.txt" >&2
fi
exit "$status"
