#!/usr/bin/env bash
# Starts aiostratum-proxy with HashgateWorkerProtocol: miners on LISTEN_PORT, upstream POOL.
#   run.sh LISTEN_PORT POOL_HOST:POOL_PORT [aiostratum-proxy options, e.g. -q]
# Environment: VENV (/tmp/aio-venv, see setup.sh), LISTEN_HOST (127.0.0.1),
# POOL_ACCOUNT (aiostratum). The process execs into Python: its pid is the proxy's.
set -euo pipefail

if [ $# -lt 2 ]; then
    echo "usage: $0 LISTEN_PORT POOL_HOST:POOL_PORT [aiostratum-proxy options]" >&2
    exit 2
fi
here=$(cd "$(dirname "$0")" && pwd)
venv=${VENV:-/tmp/aio-venv}

export LISTEN_HOST=${LISTEN_HOST:-127.0.0.1}
export LISTEN_PORT=$1
export POOL_HOST=${2%:*}
export POOL_PORT=${2##*:}
export POOL_ACCOUNT=${POOL_ACCOUNT:-aiostratum}
shift 2

config=${TMPDIR:-/tmp}/aiostratum-proxy-$LISTEN_PORT.yaml
envsubst '${LISTEN_HOST} ${LISTEN_PORT} ${POOL_HOST} ${POOL_PORT} ${POOL_ACCOUNT}' \
    <"$here/proxy.yaml" >"$config"

# one socket per miner: as many as the hard limit allows
ulimit -n "$(ulimit -Hn)"

export PYTHONPATH=$here${PYTHONPATH:+:$PYTHONPATH}
exec "$venv/bin/aiostratum-proxy" --config "$config" "$@"
