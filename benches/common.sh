# Shared by benches/loadgen.sh, benches/floor.sh, benches/topology.sh and
# benches/drain.sh (sourced, not run). The bench_* functions read the
# caller's root, loadgen, dir, port, key and secret and set its pid and
# status, which shellcheck cannot see from here.
# shellcheck shell=bash disable=SC2154,SC2034

# Waits until no compiler runs (other engineers share the machine); prints
# what it found.
wait_for_builds() {
    local waited=0 limit=${BENCH_WAIT_BUILDS_S:-300}
    while pgrep -x rustc >/dev/null || pgrep -x cargo >/dev/null; do
        if [ "$waited" -ge "$limit" ]; then
            echo "still running after ${waited} s: $(pgrep -x -l 'rustc|cargo' | tr '\n' ' ')"
            return
        fi
        sleep 5
        waited=$((waited + 5))
    done
    echo "none running at start (waited ${waited} s)"
}

# TcpExtListenOverflows: SYNs dropped because an accept queue was full.
listen_overflows() {
    awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[i] = $i; h = 1 } else for (i = 1; i <= NF; i++) if (n[i] == "ListenOverflows") print $i }' /proc/net/netstat
}

# A port on 127.0.0.1 that was free a moment ago.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# 32 random hex characters (secrets, API keys).
random_hex() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# --- One server under test (benches/loadgen.sh, benches/floor.sh) ---
# The caller sets `dir` (its temp dir) and `port` (where the server will
# listen); these set `pid` and `status`.

# bench_server_start NAME LOG CMD...: starts CMD in the background with its
# output in LOG, stops it by PID (and removes $dir) on exit, and waits up to
# 10 s for http://127.0.0.1:$port/healthz to answer; else prints LOG and
# exits 1.
bench_server_start() {
    local name=$1 log=$2
    shift 2
    "$@" >"$log" 2>&1 &
    pid=$!
    trap bench_server_cleanup EXIT
    for _ in $(seq 1 100); do
        if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$name did not become ready; its log:" >&2
    cat "$log" >&2
    exit 1
}
bench_server_cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}

# bench_header_common NAME BIN: waits for compilers (wait_for_builds), then
# prints the first lines of every results header: date, commit, the build
# times of the server binary NAME at BIN and of $loadgen, compilers, load.
bench_header_common() {
    local builds
    builds=$(wait_for_builds)
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# commit: $(git -C "$root" rev-parse --short HEAD)"
    echo "# binaries: $1 built $(date -u -r "$2" +%Y-%m-%dT%H:%M:%SZ), herald-loadgen $(date -u -r "$loadgen" +%Y-%m-%dT%H:%M:%SZ)"
    echo "# compilers (rustc/cargo): $builds"
    echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
}

# bench_header OUT NAME BIN WHO EXTRA LOADGEN_ARGS...: waits for compilers
# (wait_for_builds), then writes the results header to OUT and stdout. NAME
# is the server binary's name, BIN its path, WHO how the command line names
# the server's pid, EXTRA a line after the load average (none when empty).
bench_header() {
    local out=$1 name=$2 bin=$3 who=$4 extra=$5
    shift 5
    {
        bench_header_common "$name" "$bin"
        if [ -n "$extra" ]; then echo "$extra"; fi
        echo "# command: herald-loadgen --pid <$who pid> $*"
    } | tee "$out"
}

# bench_run_loadgen OUT LOADGEN_ARGS...: runs $loadgen against the server
# (--url, --pid, the key and secret through the environment), appending
# its output and the accept-queue overflows during the run to OUT; sets
# `status` to its exit status.
bench_run_loadgen() {
    local out=$1 overflows_before
    shift
    overflows_before=$(listen_overflows)
    status=0
    HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret \
        "$loadgen" --url "http://127.0.0.1:$port" --pid "$pid" "$@" | tee -a "$out" || status=$?
    echo "ListenOverflows during run: $(($(listen_overflows) - overflows_before))" | tee -a "$out"
}
