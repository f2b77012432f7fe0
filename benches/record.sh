#!/usr/bin/env bash
# Runs every scenario of the performance record in benches/RESULTS.md, one
# after the other, with release binaries built from a clean HEAD, and saves
# each output under benches/results/<commit>/.
#
#   benches/record.sh            # all of it (~15 min on 2 cores)
#   benches/record.sh fanout     # only the runs whose name contains "fanout"
#
# The binaries are built once, then copied to /tmp/herald-bin-<commit> so a
# later build cannot replace them mid-record. Each run starts its own servers
# (benches/loadgen.sh: `herald dev`; benches/topology.sh: Redis, PostgreSQL,
# ingest, one gateway, or two for `topology2-*`; benches/floor.sh:
# herald-floor) and stops them by PID; in benches/drain.sh the loadgen
# starts `herald dev` itself and ends it with the SIGTERM it measures.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
only=${1:-}

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    echo "record.sh: the tree has uncommitted changes; commit first so the figures name a commit" >&2
    exit 1
fi
commit=$(git rev-parse --short HEAD)
bin=/tmp/herald-bin-$commit
if [ ! -x "$bin/herald" ] || [ ! -x "$bin/herald-loadgen" ] || [ ! -x "$bin/herald-floor" ]; then
    cargo build --release --locked -j2 -p herald -p herald-loadgen -p herald-floor
    mkdir -p "$bin"
    rel=${CARGO_TARGET_DIR:-target}/release
    cp "$rel/herald" "$rel/herald-loadgen" "$rel/herald-floor" "$bin/"
fi
export HERALD_BIN=$bin/herald LOADGEN_BIN=$bin/herald-loadgen FLOOR_BIN=$bin/herald-floor
# Every topology run has one gateway unless its line says otherwise, even
# when the caller's shell sets BENCH_GATEWAYS.
unset BENCH_GATEWAYS
out=benches/results/$commit
mkdir -p "$out"

run() {
    local name=$1 script=$2
    shift 2
    if [ -n "$only" ] && [[ "$name" != *"$only"* ]]; then return; fi
    echo "=== $name"
    "benches/$script" "$out/$name.txt" "$@" >/dev/null 2>"$out/$name.err" || echo "    exit status $? (see $out/$name.err)"
    grep -E '^RESULT ' "$out/$name.txt" | head -c 300 || true
    echo
}

# herald dev: one process (gateway + ingest + SQLite + in-process bus).
run idle-19000 loadgen.sh idle --connections 19000 --checkpoints 1000,5000,10000,15000 --settle 2s --hold 30s
run connect-10000-c100 loadgen.sh --connect-concurrency 100 connect --connections 10000
run ingest-sqlite-c4 loadgen.sh ingest --duration 10s --concurrency 4
run ingest-sqlite-c32 loadgen.sh ingest --duration 10s --concurrency 32
# Each delivery run is followed by its twin on herald-floor (one send(2)
# per delivery, benches/floor/), so every fan-out figure has the floor of
# the same record beside it (issue 13).
run fanout-5000-r50 loadgen.sh fanout --subscribers 5000 --rate 50 --duration 10s
run floor-fanout-5000-r50 floor.sh fanout --subscribers 5000 --rate 50 --duration 10s
run fanout-5000-r200 loadgen.sh fanout --subscribers 5000 --rate 200 --duration 10s
run floor-fanout-5000-r200 floor.sh fanout --subscribers 5000 --rate 200 --duration 10s
run ramp-5000-throughput loadgen.sh ramp --subscribers 5000 --start 50 --step 50 --max-p99-ms 60000 --duration-per-step 5s --max-steps 10
run floor-ramp-5000-throughput floor.sh ramp --subscribers 5000 --start 50 --step 50 --max-p99-ms 60000 --duration-per-step 5s --max-steps 10
run ramp-5000-curve loadgen.sh ramp --subscribers 5000 --start 10 --step 10 --max-p99-ms 5000 --duration-per-step 5s --max-steps 6
run floor-ramp-5000-curve floor.sh ramp --subscribers 5000 --start 10 --step 10 --max-p99-ms 5000 --duration-per-step 5s --max-steps 6
run ramp-1000-curve loadgen.sh ramp --subscribers 1000 --start 25 --step 25 --max-p99-ms 2000 --duration-per-step 5s --max-steps 10
run floor-ramp-1000-curve floor.sh ramp --subscribers 1000 --start 25 --step 25 --max-p99-ms 2000 --duration-per-step 5s --max-steps 10
run channels-1000 loadgen.sh channels --connections 1000 --dashboard-subscribers 10 --rate 500 --duration 10s
run floor-channels-1000 floor.sh channels --connections 1000 --dashboard-subscribers 10 --rate 500 --duration 10s

# Drain pacing (issue 9): N connections, SIGTERM, every 1012 timed.
run drain-19000-w10 drain.sh drain --connections 19000 --window 10s
run drain-4000-w1 drain.sh drain --connections 4000 --window 1s
run drain-19000-w2 drain.sh drain --connections 19000 --window 2s

# Redis topology: 1 ingest + 1 gateway over a private Redis and PostgreSQL
# (default durability); publishes go straight to ingest (--ingest-url).
run topology-idle-19000 topology.sh gateway idle --connections 19000 --checkpoints 5000,10000,15000 --settle 2s --hold 30s
run topology-connect-10000-c100 topology.sh gateway --connect-concurrency 100 connect --connections 10000
run topology-ingest-pg-c32 topology.sh ingest ingest --duration 10s --concurrency 32
run topology-ingest-pg-c128 topology.sh ingest ingest --duration 10s --concurrency 128
run topology-ingest-pg-c512 topology.sh ingest ingest --duration 10s --concurrency 512
run topology-fanout-5000-r50 topology.sh direct fanout --subscribers 5000 --rate 50 --duration 10s
run topology-fanout-5000-r200 topology.sh direct fanout --subscribers 5000 --rate 200 --duration 10s

# Fan-out against the floor (issue 13): herald-floor and then the Redis
# topology, same load: ingest + 1 gateway, then ingest + 2 gateways (500
# subscribers each; an assignment before a function call holds for that
# call only).
run floor-fanout-1000-r20 floor.sh fanout --subscribers 1000 --rate 20 --duration 30s
run topology-fanout-1000-r20 topology.sh direct fanout --subscribers 1000 --rate 20 --duration 30s
BENCH_GATEWAYS=2 run topology2-fanout-1000-r20 topology.sh direct fanout --subscribers 1000 --rate 20 --duration 30s
echo "record.sh: outputs in $out"
