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

command -v node >/dev/null 2>&1 || { echo "run-tests.sh: node (>= 20) is not installed" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "run-tests.sh: npm is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "run-tests.sh: node $(node --version) is too old; @herald/client needs >= 20" >&2
    exit 1
fi

# npm ci when node_modules is missing or older than the lock file (or
# package.json): the installed tree then matches package-lock.json exactly.
marker=node_modules/.package-lock.json
if [ ! -f "$marker" ] || [ package-lock.json -nt "$marker" ] || [ package.json -nt "$marker" ]; then
    npm ci --no-audit --no-fund
fi

npm run build
npm run bundle
npm test -- "$@"
