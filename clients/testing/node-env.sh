# Sourced by clients/js/run-tests.sh and clients/node/run-tests.sh, in the
# package's directory, before they build and test: checks that Node >= 20
# and npm are there, then brings node_modules in line with package-lock.json.
# Exits the calling script when something is missing.

command -v node >/dev/null 2>&1 || { echo "run-tests.sh: node (>= 20) is not installed" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "run-tests.sh: npm is not installed" >&2; exit 1; }
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
    echo "run-tests.sh: node $(node --version) is too old; $(node -p 'require("./package.json").name') needs >= 20" >&2
    exit 1
fi

# npm ci when node_modules is missing or older than the lock file (or
# package.json): the installed tree then matches package-lock.json exactly.
marker=node_modules/.package-lock.json
if [ ! -f "$marker" ] || [ package-lock.json -nt "$marker" ] || [ package.json -nt "$marker" ]; then
    npm ci --no-audit --no-fund
fi
