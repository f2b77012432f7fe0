# Shared by benches/loadgen.sh, benches/topology.sh and benches/floor.sh (sourced, not run).

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
