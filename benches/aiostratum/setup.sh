#!/usr/bin/env bash
# Installs aiostratum-proxy 1.1 into a venv (default /tmp/aio-venv). Its pinned PyYAML 3.12
# does not build on Python 3.11, so it is installed without deps and they are added by hand,
# PyYAML 5.4.1 instead (built with Cython < 3: its setup.py breaks on Cython 3).
# AIOSTRATUM_WHEEL=/path/to/aiostratum_proxy-1.1-py3-none-any.whl installs from a local wheel.
set -euo pipefail

venv=${1:-/tmp/aio-venv}

installed() {
    "$venv/bin/python" - <<'PY' 2>/dev/null
import sys, aiojsonrpc2, aiostratum_proxy, yaml
sys.exit(0 if (aiostratum_proxy.__version__, aiojsonrpc2.__version__, yaml.__version__)
         == ("1.1", "1.0.0", "5.4.1") else 1)
PY
}

if [ -x "$venv/bin/python" ] && installed; then
    echo "aiostratum-proxy 1.1 already in $venv"
    exit 0
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"

constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo 'cython<3' >"$constraints"
pip=("$venv/bin/pip" install --disable-pip-version-check --quiet)
PIP_CONSTRAINT="$constraints" "${pip[@]}" PyYAML==5.4.1 aiojsonrpc2==1.0.0
"${pip[@]}" --no-deps "${AIOSTRATUM_WHEEL:-aiostratum-proxy==1.1}"

installed
echo "aiostratum-proxy 1.1 installed in $venv"
