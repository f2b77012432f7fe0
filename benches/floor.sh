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
# Start, readiness, header and run are shared with benches/loadgen.sh
# (benches/common.sh); this adds a `# server:` line and the floor's log.
# FLOOR_ARGS adds flags to herald-floor, e.g. FLOOR_ARGS=--io-uring=defer
# (the io_uring experiment, benches/RESULTS.md). CPU of batched-in-kernel
# modes is best read with `perf stat -e task-clock` (RESULTS.md says why).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
floor=${FLOOR_BIN:-$root/target/release/herald-floor}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
shift

# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

dir=$(mktemp -d -t herald-floor-XXXXXX)
port=$(free_port)
# The floor checks no token signature; the loadgen still signs with one.
secret=$(random_hex)
key=$(random_hex)

read -r -a floor_args <<<"${FLOOR_ARGS:-}"
bench_server_start herald-floor "$dir/floor.log" \
    "$floor" --listen "127.0.0.1:$port" --api-key "$key" "${floor_args[@]}"
how="one send(2) per delivery"
[ ${#floor_args[@]} -eq 0 ] || how="flags ${floor_args[*]}"
bench_header "$out" herald-floor "$floor" herald-floor \
    "# server: herald-floor (pid $pid), $how" "$@"
bench_run_loadgen "$out" "$@"
if [ -s "$dir/floor.log" ]; then
    echo "# herald-floor log:" | tee -a "$out"
    sed 's/^/#   /' "$dir/floor.log" | tee -a "$out"
fi
exit "$status"
