#!/usr/bin/env bash
# Bench-only peers (PyTorch CPU, JAX) and matplotlib in their own venv, .venv-bench (gitignored),
# kept out of the runtime environment: with torch importable, MetaSchedule's build workers time
# out (see shared notes), and the runtime needs none of them.
#
#     bash bench/setup.sh              # torch, jax, matplotlib
#     bash bench/setup.sh torch        # only PyTorch (the test command's parity tests need it)
#
# Each package is installed on its own, so that one the package index cannot supply leaves
# the others in place: the benchmarks print 'n/a (not installed)' for a missing contender.
set -uo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-bench/bin/python ] || python3 -m venv .venv-bench || exit 1
pip=(.venv-bench/bin/python -m pip install -q)
"${pip[@]}" numpy || exit 1
status=0
declare -A pinned=([torch]="torch==2.13.0+cpu" [jax]="jax[cpu]" [matplotlib]=matplotlib)
wanted=("$@")
[ ${#wanted[@]} -gt 0 ] || wanted=(torch jax matplotlib)
for name in "${wanted[@]}"; do
    pkg=${pinned[$name]:-}
    [ -n "$pkg" ] || { echo "bench/setup.sh: unknown package $name (torch, jax, matplotlib)" >&2; exit 2; }
    if ! "${pip[@]}" "$pkg"; then
        echo "bench/setup.sh: could not install $pkg; its rows will read 'n/a (not installed)'" >&2
        status=1
    fi
done
.venv-bench/bin/python - <<'EOF'
import importlib
for name in ("numpy", "torch", "jax", "matplotlib"):
    try:
        print(f"{name:10s} {importlib.import_module(name).__version__}")
    except ImportError:
        print(f"{name:10s} not installed")
EOF
exit $status
