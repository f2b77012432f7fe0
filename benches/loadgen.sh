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
# Start, readiness, header and run are shared with benches/floor.sh
# (benches/common.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD_BIN:-$root/target/release/herald}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
shift

# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

dir=$(mktemp -d -t herald-bench-XXXXXX)
port=$(free_port)
secret=$(random_hex)
key=$(random_hex)

bench_server_start herald "$dir/herald.log" \
    env -u HERALD_API_KEY -u HERALD_JWT_SECRET "$herald" dev --listen "127.0.0.1:$port" \
    --database-url "sqlite://$dir/herald.db" --jwt-secret "$secret" --api-key "$key"
bench_header "$out" herald "$herald" "herald dev" "" "$@"
bench_run_loadgen "$out" "$@"
exit "$status"
