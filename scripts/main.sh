#!/usr/bin/env bash
# The main job: set up, train LeNet on the digits, export the bundle, reload it, evaluate.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/lenet_digits.py --out artifacts/lenet_digits "$@"
