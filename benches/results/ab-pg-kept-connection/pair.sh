#!/usr/bin/env bash
# usage: pair.sh TAG kind(floor|topo|topo2)  -- runs one 30 s 1000x20 run, perf stat on the server(s) for 20 s
set -u
tag=$1; kind=$2; out=/tmp/pair/$tag-$kind; mkdir -p /tmp/pair
cd /work/main
for i in $(seq 120); do pgrep -x 'rustc|cargo|node|npm|tsc|pytest|cc|ld' >/dev/null || break; sleep 2; done
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
export BENCH_WAIT_BUILDS_S=0
case $kind in
 floor) benches/floor.sh $out.txt fanout --subscribers 1000 --rate 20 --duration 30s > $out.log 2>&1 & pat='herald-floor --listen';;
 topo) BENCH_GATEWAYS=1 benches/topology.sh $out.txt direct fanout --subscribers 1000 --rate 20 --duration 30s > $out.log 2>&1 & pat='herald gateway';;
 topo2) BENCH_GATEWAYS=2 benches/topology.sh $out.txt direct fanout --subscribers 1000 --rate 20 --duration 30s > $out.log 2>&1 & pat='herald gateway';;
esac
bg=$!
for i in $(seq 200); do pids=$(pgrep -f "$pat" | paste -sd,); [ -n "$pids" ] && break; sleep 0.1; done
# wait for the load to begin: loadgen connected
sleep 8; pids=$(pgrep -f "$pat" | paste -sd,)
for p in ${pids//,/ }; do awk '{print "before",$14,$15}' /proc/$p/stat; done > $out.ut
b0=$(busy)
perf stat -e task-clock,context-switches,cpu-migrations,page-faults -p "$pids" -- sleep 15 > $out.stat 2>&1
b1=$(busy); echo "machine busy $(( (b1-b0) ))cs in 15 s" >> $out.ut
for p in ${pids//,/ }; do awk '{print "after",$14,$15}' /proc/$p/stat; done >> $out.ut
wait $bg
grep -E "deliveries per|per server cpu|p99|lost" $out.txt | head -8
cat $out.ut; grep -E "task-clock|context-sw|migrations" $out.stat
