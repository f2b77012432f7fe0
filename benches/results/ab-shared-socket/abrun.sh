#!/usr/bin/env bash
# alternating: floor, base, new (order of base/new swapped on even rounds)
export LOADGEN_BIN=/tmp/ab/new/herald-loadgen FLOOR_BIN=/tmp/ab/new/herald-floor
for r in "$@"; do
  echo "=== round $r $(date -u +%T)"
  flock /tmp/herald-bench.lock /tmp/pair.sh floor-$r floor
  if [ $((r % 2)) = 1 ]; then order="base new"; else order="new base"; fi
  for v in $order; do
    echo "--- $v-$r $(date -u +%T)"
    HERALD_BIN=/tmp/ab/$v/herald flock /tmp/herald-bench.lock /tmp/pair.sh $v-$r topo2
  done
done
echo "=== done $(date -u +%T)"
