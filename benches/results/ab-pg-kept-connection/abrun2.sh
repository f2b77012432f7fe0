#!/usr/bin/env bash
# alternating: floor, A, B (order of A/B swapped on even rounds); A B from env
export LOADGEN_BIN=/tmp/ab/new/herald-loadgen FLOOR_BIN=/tmp/ab/new/herald-floor
A=${A:-s0}; B=${B:-s1}
for r in "$@"; do
  echo "=== round $r $(date -u +%T)"
  flock /tmp/herald-bench.lock /tmp/pair.sh floor-$r floor
  if [ $((r % 2)) = 1 ]; then order="$A $B"; else order="$B $A"; fi
  for v in $order; do
    echo "--- $v-$r $(date -u +%T)"
    HERALD_BIN=/tmp/ab/$v/herald flock /tmp/herald-bench.lock /tmp/pair.sh $v-$r topo2
  done
done
echo "=== done $(date -u +%T)"
