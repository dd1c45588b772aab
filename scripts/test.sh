#!/usr/bin/env bash
# Set up and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# qemu, the aarch64 cross compiler, sysroot and wheels for tests/test_arm.py (idempotent);
# offline it fails and the ARM tests skip, printing why.
if ! bash scripts/setup_arm.sh; then
    echo "test: ARM setup failed (above); tests/test_arm.py will skip" >&2
    export TVMFRONT_ARM_SETUP_FAILED="scripts/setup_arm.sh failed in scripts/test.sh (its output is above)"
fi
# PyTorch (CPU) in its own venv, .venv-bench, for the PyTorch-parity tests: they call it in a
# subprocess, never in .venv (with torch importable MetaSchedule's build workers time out).
if ! bash bench/setup.sh torch; then
    echo "test: PyTorch setup failed (above); the PyTorch-parity tests will skip" >&2
    export TVMFRONT_TORCH_SETUP_FAILED="bench/setup.sh torch failed in scripts/test.sh (its output is above)"
fi
# Two pytest-xdist workers, one test file each at a time (module fixtures build once): on CI's
# 2 cores the suite is mostly single-threaded compiles, so two at once nearly halve the time.
# Workers cannot print, so -rs lists every skip with its reason (what went untested).
# pytest-xdist comes with the test extra (pyproject.toml), installed by scripts/setup.sh.
# One TVM thread per worker (and per example a test runs): two workers already fill 2 cores,
# and a TVM thread pool waiting for a core another process holds runs several times slower.
export TVM_NUM_THREADS="${TVM_NUM_THREADS:-1}"
.venv/bin/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder -rs "$@"
