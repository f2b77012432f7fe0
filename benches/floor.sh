#!/usr/bin/env bash
# Runs one herald-loadgen delivery scenario (fanout, ramp, channels) against
# herald-floor, the machine's floor for fan-out (benches/floor/src/main.rs:
# one send(2) per delivery, nothing else), measured with --pid, and saves
# the output with the same header as benches/loadgen.sh. Builds nothing.
#
#   cargo build --release -p herald-floor -p herald-loadgen
#   benches/floor.sh OUT.txt fanout --subscribers 1000 --rate 20 --duration 30s
#
# Flags before the scenario name go to herald-loadgen. FLOOR_BIN /
# LOADGEN_BIN override the binaries; herald-floor listens on a free
# 127.0.0.1 port and is stopped by its PID. Like loadgen.sh it first waits
# (up to BENCH_WAIT_BUILDS_S, default 300 s) until no rustc/cargo runs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
floor=${FLOOR_BIN:-$root/target/release/herald-floor}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
shift

# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

dir=$(mktemp -d -t herald-floor-XXXXXX)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# The floor checks no token signature; the loadgen still signs with one.
secret=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

"$floor" --listen "127.0.0.1:$port" --api-key "$key" >"$dir/floor.log" 2>&1 &
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
    echo "herald-floor did not become ready; its log:" >&2
    cat "$dir/floor.log" >&2
    exit 1
fi

builds=$(wait_for_builds)
{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# commit: $(git -C "$root" rev-parse --short HEAD)"
    echo "# binaries: herald-floor built $(date -u -r "$floor" +%Y-%m-%dT%H:%M:%SZ), herald-loadgen $(date -u -r "$loadgen" +%Y-%m-%dT%H:%M:%SZ)"
    echo "# compilers (rustc/cargo): $builds"
    echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# server: herald-floor (pid $pid), one send(2) per delivery"
    echo "# command: herald-loadgen --pid <herald-floor pid> $*"
} | tee "$out"
overflows_before=$(listen_overflows)
status=0
HERALD_API_KEY=$key HERALD_JWT_SECRET=$secret \
    "$loadgen" --url "http://127.0.0.1:$port" --pid "$pid" "$@" | tee -a "$out" || status=$?
echo "ListenOverflows during run: $(($(listen_overflows) - overflows_before))" | tee -a "$out"
if [ -s "$dir/floor.log" ]; then
    echo "# herald-floor log:" | tee -a "$out"
    sed 's/^/#   /' "$dir/floor.log" | tee -a "$out"
fi
exit "$status"
