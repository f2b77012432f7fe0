#!/usr/bin/env bash
# Type-checks and tests the Python SDK and the Python examples.
#
#   clients/python/run-tests.sh [pytest arguments]
#
# Creates clients/python/.venv when missing (PYTHON, default python3, must be
# 3.10 or newer), installs the pinned dev tools (requirements-dev.txt) and the
# package (editable), then runs mypy --strict and pytest. The tests start real
# herald processes: they need the herald binary (HERALD_BIN, default
# target/debug/herald) and redis-server on PATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

py="${PYTHON:-python3}"
if ! command -v "$py" >/dev/null 2>&1; then
    echo "run-tests.sh: $py not found (install Python 3.10+, e.g. Debian's python3 and python3-venv)" >&2
    exit 1
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
    echo "run-tests.sh: $py is $("$py" -V 2>&1); 3.10 or newer is needed (set PYTHON)" >&2
    exit 1
fi

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "run-tests.sh: creating $venv"
    if ! "$py" -m venv "$venv"; then
        rm -rf "$venv"
        echo "run-tests.sh: '$py -m venv' failed (on Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
fi

# Reinstall only when the lock or the package metadata changed.
stamp="$venv/.installed"
want="$(cat requirements-dev.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
    "${pip[@]}" install -r requirements-dev.txt
    # The build backend (hatchling) comes from the lock too.
    "${pip[@]}" install --no-build-isolation --no-deps -e .
    echo "$want" >"$stamp"
fi

echo "run-tests.sh: mypy --strict"
"$venv/bin/python" -m mypy
echo "run-tests.sh: pytest"
exec "$venv/bin/python" -m pytest "$@"
