#!/usr/bin/env bash
# Alternating A/B runs of issue 13's scenario against herald-floor: the way
# every herald change to the per-delivery path is judged (benches/RESULTS.md,
# "Fan-out against the floor"). One 30 s run varies by ±10 points on a
# shared 2-core VM, so two binaries are compared round by round, never one
# run against another record.
#
#   benches/ab.sh OUTDIR ROUNDS A=/path/to/herald B=/path/to/herald
#   python3 benches/ab_summary.py OUTDIR A B
#
# Each round runs herald-floor, then A and B (B first in even rounds), each
# `fanout --subscribers 1000 --rate 20 --duration 30s`; herald as ingest +
# BENCH_GATEWAYS (default 2) gateways over a private Redis and PostgreSQL
# (benches/topology.sh direct). From the 8th second, for 15 s, `perf stat`
# of the delivering processes (the gateways, or herald-floor) goes to
# OUTDIR/<name>-<round>.stat, and their user / system ticks from
# /proc/<pid>/stat with the machine's busy ticks to <name>-<round>.ut; the
# loadgen output is <name>-<round>.txt (the floor's name is `floor`).
# FLOOR_BIN / LOADGEN_BIN as for benches/floor.sh (default
# target/release/...). Each run takes /tmp/herald-bench.lock (which builds
# and tests on this machine take too) and waits for no compiler, node or
# npm to run (up to 240 s). Needs perf.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
[ $# -eq 4 ] || { sed -n '9,10p' "$0" >&2; exit 64; }
out=$1 rounds=$2
names=() bins=()
for spec in "$3" "$4"; do
    names+=("${spec%%=*}")
    bins+=("${spec#*=}")
    [ -x "${spec#*=}" ] || { echo "ab.sh: ${spec#*=} is not an executable" >&2; exit 64; }
done
mkdir -p "$out"
export BENCH_WAIT_BUILDS_S=0
export FLOOR_BIN=${FLOOR_BIN:-$root/target/release/herald-floor}
export LOADGEN_BIN=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
gateways=${BENCH_GATEWAYS:-2}

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }

# Whether a compiler, node or npm runs (pgrep -x takes one name at a time:
# a pattern over 15 characters matches nothing).
busy_tools() {
    local t
    for t in rustc cargo node npm; do
        pgrep -x "$t" >/dev/null && return 0
    done
    return 1
}

# one NAME ROUND [HERALD_BIN]: one run, measured; the floor without a binary.
one() {
    local name=$1 round=$2 bin=${3:-} pat pids b0 b1 bg
    local base=$out/$name-$round
    for _ in $(seq 120); do
        busy_tools || break
        sleep 2
    done
    if [ -z "$bin" ]; then
        "$root/benches/floor.sh" "$base.txt" fanout --subscribers 1000 --rate 20 --duration 30s \
            >"$base.log" 2>&1 &
        pat='herald-floor --listen'
    else
        HERALD_BIN=$bin BENCH_GATEWAYS=$gateways "$root/benches/topology.sh" "$base.txt" direct \
            fanout --subscribers 1000 --rate 20 --duration 30s >"$base.log" 2>&1 &
        pat='herald gateway'
    fi
    bg=$!
    # Connected by the 8th second: every delivering process is up by then.
    sleep 8
    pids=$(pgrep -f "$pat" | paste -sd, || true)
    if [ -z "$pids" ]; then
        echo "ab.sh: no '$pat' process in $name-$round (see $base.log)" >&2
        wait "$bg" || true
        return 1
    fi
    for p in ${pids//,/ }; do awk '{print "before", $14, $15}' "/proc/$p/stat"; done >"$base.ut"
    b0=$(busy)
    perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$pids" -- sleep 15 \
        >"$base.stat" 2>&1
    b1=$(busy)
    echo "machine busy $((b1 - b0)) ticks in 15 s" >>"$base.ut"
    for p in ${pids//,/ }; do awk '{print "after", $14, $15}' "/proc/$p/stat"; done >>"$base.ut"
    wait "$bg"
}

for r in $(seq "$rounds"); do
    echo "=== round $r $(date -u +%T)"
    (flock 9 && one floor "$r") 9>/tmp/herald-bench.lock
    order=(0 1)
    [ $((r % 2)) -eq 0 ] && order=(1 0)
    for i in "${order[@]}"; do
        echo "--- ${names[$i]}-$r $(date -u +%T)"
        (flock 9 && one "${names[$i]}" "$r" "${bins[$i]}") 9>/tmp/herald-bench.lock
    done
done
echo "=== done $(date -u +%T); python3 $root/benches/ab_summary.py $out ${names[*]}"
