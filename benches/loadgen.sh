#!/usr/bin/env bash
# Runs one herald-loadgen scenario against a fresh release `herald dev`
# (SQLite in a temp dir, free 127.0.0.1 port), measuring it with --pid, and
# saves the output. This is how every figure in benches/RESULTS.md was made.
#
#   cargo build --release -p herald -p herald-loadgen
#   benches/loadgen.sh OUT.txt fanout --subscribers 5000 --rate 50 --duration 10s
#
# Flags before the scenario name go to herald-loadgen (e.g. --connect-concurrency 100);
# HERALD_BIN / LOADGEN_BIN override the binaries. herald is stopped by its PID.
# Before the run it waits (up to BENCH_WAIT_BUILDS_S, default 300 s) until no
# `rustc`/`cargo` process runs on the machine, and records how long it waited,
# the load average and the kernel's accept-queue overflow count during the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD_BIN:-$root/target/release/herald}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
shift

# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

dir=$(mktemp -d -t herald-bench-XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

env -u HERALD_API_KEY -u HERALD_JWT_SECRET "$herald" dev --listen "127.0.0.1:$port" \
    --database-url "sqlite://$dir/herald.db" --jwt-secret "$secret" --api-key "$key" \
    >"$dir/herald.log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

ready=""
for _ in $(seq 1 100); do
    if curl -sf "http://127.0.0.1:$port/healthz" >/dev/null; then ready=1; break; fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    echo "herald did not become ready; its log:" >&2
    cat "$dir/herald.log" >&2
    exit 1
fi

builds=$(wait_for_builds)
{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# commit: $(git -C "$root" rev-parse --short HEAD)"
    echo "# binaries: herald built $(date -u -r "$herald" +%Y-%m-%dT%H:%M:%SZ), herald-loadgen $(date -u -r "$loadgen" +%Y-%m-%dT%H:%M:%SZ)"
    echo "# compilers (rustc/cargo): $builds"
    echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# command: herald-loadgen --pid <herald dev pid> $*"
} | tee "$out"
overflows_before=$(listen_overflows)
status=0
HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret \
    "$loadgen" --url "http://127.0.0.1:$port" --pid "$pid" "$@" | tee -a "$out" || status=$?
echo "ListenOverflows during run: $(($(listen_overflows) - overflows_before))" | tee -a "$out"
exit "$status"
