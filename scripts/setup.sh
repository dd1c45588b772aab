#!/usr/bin/env bash
# Creates .venv (if missing) and installs tvmfront with its pinned stack. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
    echo "setup: python3-venv missing; installing it with apt-get" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
fi
# g++ links every exported module.so; make builds examples/deploy_cpp (its test).
if ! command -v g++ >/dev/null || ! command -v make >/dev/null; then
    echo "setup: g++ or make missing; installing them with apt-get" >&2
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq g++ make
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
