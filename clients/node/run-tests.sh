#!/usr/bin/env bash
# Builds @herald/server and runs its tests against real herald processes
# (herald dev; redis-server + herald ingest + herald gateway) that the tests
# start on free 127.0.0.1 ports and stop by PID.
#
# Needs: Node >= 20 with npm, redis-server on PATH, and the herald binary at
# <repo>/target/debug/herald (cargo build -p herald --bin herald) or in
# HERALD_BIN. Extra arguments go to `node --test`, e.g.
#   clients/node/run-tests.sh --test-name-pattern=webhooks
set -euo pipefail
cd "$(dirname "$0")"

# Node >= 20, npm, and node_modules as package-lock.json says.
. ../testing/node-env.sh

npm run build
npm test -- "$@"
