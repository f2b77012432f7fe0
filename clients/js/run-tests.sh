#!/usr/bin/env bash
# Builds @herald/client (ESM + types, and the browser bundle
# dist/herald.browser.js) and runs its tests: unit tests with a fake socket
# and clock, then integration tests against real herald processes (herald
# dev; redis-server + herald ingest + two herald gateways behind a private
# nginx) that the tests start on free 127.0.0.1 ports and stop by PID.
#
# Needs: Node >= 20 with npm, redis-server on PATH, nginx (/usr/sbin/nginx
# or NGINX_BIN), and the herald binary at <repo>/target/debug/herald
# (cargo build -p herald --bin herald) or in HERALD_BIN. Extra arguments go
# to `node --test`, e.g.
#   clients/js/run-tests.sh --test-name-pattern=msgpack
set -euo pipefail
cd "$(dirname "$0")"

# Node >= 20, npm, and node_modules as package-lock.json says.
. ../testing/node-env.sh

npm run build
npm run bundle
npm test -- "$@"
