"""PyTorch for parity tests: it lives in .venv-bench (bash bench/setup.sh torch; the test
command installs it) and runs in a subprocess, never in this process: with torch importable,
MetaSchedule's build workers time out. Data crosses as .npz files, never pickle."""

import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from _skip import skip_loudly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = os.path.join(ROOT, ".venv-bench", "bin", "python")


def require_torch(request):
    """Skip (loudly, with the reason) when the torch venv is missing or broken."""
    why = os.environ.get("TVMFRONT_TORCH_SETUP_FAILED")
    if why:
        skip_loudly(request, why)
    if not os.path.exists(PYTHON):
        skip_loudly(request, f"no PyTorch venv at {PYTHON} (bash bench/setup.sh torch)")
    probe = subprocess.run([PYTHON, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode:
        skip_loudly(request, f"torch does not import in {PYTHON}: {probe.stderr.strip()[-300:]}")


def run_torch(script, arrays, args=None, timeout=300):
    """Run `script` (Python source) with .venv-bench's Python. It finds its inputs in
    np.load(sys.argv[1]) and JSON args in sys.argv[2], and writes its outputs with
    np.savez(sys.argv[3], ...); returns those outputs as {name: array}."""
    with tempfile.TemporaryDirectory(prefix="tvmfront-torch-") as tmp:
        src, inp, out = (os.path.join(tmp, n) for n in ("script.py", "in.npz", "out.npz"))
        with open(src, "w") as f:
            f.write(script)
        np.savez(inp, **arrays)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        done = subprocess.run([PYTHON, src, inp, json.dumps(args or {}), out], env=env,
                              capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise AssertionError(f"PyTorch side failed:\n{done.stderr[-3000:]}")
        with np.load(out, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
