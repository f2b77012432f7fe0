#!/usr/bin/env bash
# Runs herald-loadgen's `drain` scenario and saves its output with the same
# header as benches/loadgen.sh. The scenario starts its own `herald dev`
# (SQLite in a temp dir, free 127.0.0.1 port, `--drain-window`), opens the
# connections, SIGTERMs the server and times every close and the exit, so
# no server is started here.
#
#   cargo build --release -p herald -p herald-loadgen
#   benches/drain.sh OUT.txt drain --connections 19000 --window 10s
#
# Arguments after OUT.txt go to herald-loadgen as they are (flags before
# `drain`, e.g. --connect-concurrency, are the loadgen's own); HERALD_BIN /
# LOADGEN_BIN override the binaries. Before the run it waits (up to
# BENCH_WAIT_BUILDS_S, default 300 s) until no `rustc`/`cargo` process runs,
# and records how long it waited, the load average, and the machine's CPU
# during the run (to tell the server's and loadgen's share from others').
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
herald=${HERALD_BIN:-$root/target/release/herald}
loadgen=${LOADGEN_BIN:-$root/target/release/herald-loadgen}
out=$1
shift

# shellcheck source=benches/common.sh
. "$root/benches/common.sh"

# Machine-wide CPU ticks (1/100 s): busy (user, nice, system, irq, softirq,
# steal) and all, from the first line of /proc/stat.
cpu_ticks() {
    awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9 }' /proc/stat
}

builds=$(wait_for_builds)
{
    echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "# HEAD at the run: $(git -C "$root" rev-parse --short HEAD)$(git -C "$root" diff --quiet HEAD -- || echo ' (tree with uncommitted changes)')"
    echo "# binaries: $herald built $(date -u -r "$herald" +%Y-%m-%dT%H:%M:%SZ), $loadgen built $(date -u -r "$loadgen" +%Y-%m-%dT%H:%M:%SZ)"
    echo "# compilers (rustc/cargo): $builds"
    echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "# fd limit: soft $(ulimit -Sn), hard $(ulimit -Hn)"
    echo "# command: herald-loadgen $*"
} | tee "$out"
status=0
read -r busy0 all0 <<<"$(cpu_ticks)"
env -u HERALD_API_KEY -u HERALD_JWT_SECRET HERALD_BIN="$herald" \
    "$loadgen" "$@" | tee -a "$out" || status=$?
read -r busy1 all1 <<<"$(cpu_ticks)"
{
    echo "# machine CPU during the run: $(((busy1 - busy0) / 100)).$(printf %02d $(((busy1 - busy0) % 100))) s busy of $(((all1 - all0) / 100)).$(printf %02d $(((all1 - all0) % 100))) s (all cores)"
    echo "# compilers (rustc/cargo) at the end: $(pgrep -x 'rustc|cargo' | wc -l)"
} | tee -a "$out"
exit "$status"
