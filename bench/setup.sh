#!/usr/bin/env bash
# Bench-only peers (PyTorch CPU, JAX) in their own venv, kept out of the runtime environment:
# with torch importable, MetaSchedule's build workers time out (see shared notes).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install -q "torch==2.13.0+cpu" "jax[cpu]" numpy
