"""PyTorch for parity tests: it lives in .venv-bench (bash bench/setup.sh torch; the test
command installs it) or at TVMFRONT_TORCH_PYTHON, and runs in a subprocess, never in this
process: with torch importable, MetaSchedule's build workers time out. Data crosses as .npz
files (np.load(..., allow_pickle=False)), never pickle."""

import os
import subprocess

import numpy as np

from _skip import skip_loudly

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torch_python(request, what):
    """The Python that has torch; skips loudly, saying `what` went unchecked, without one."""
    python = os.environ.get("TVMFRONT_TORCH_PYTHON") or os.path.join(
        ROOT, ".venv-bench", "bin", "python")
    why = os.environ.get("TVMFRONT_TORCH_SETUP_FAILED")
    if why:
        skip_loudly(request, f"{what} NOT CHECKED: {why}")
    if not os.path.exists(python):
        skip_loudly(request, f"{what} NOT CHECKED: no {python} (bash bench/setup.sh torch makes "
                             f".venv-bench, or set TVMFRONT_TORCH_PYTHON)")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    if probe.returncode:
        skip_loudly(request, f"{what} NOT CHECKED: torch does not import in {python}: "
                             f"{probe.stderr.strip()[-300:]}")
    return python


def run_torch(request, what, script, folder, *args, **arrays):
    """Run tests/`script` with PyTorch's Python as `script in.npz [args...] out.npz`, the
    arrays saved to `folder`/in.npz; returns the outputs it saved as {name: array}. Skips
    loudly (saying `what` went unchecked) where PyTorch is missing."""
    python = torch_python(request, what)
    folder = os.fspath(folder)
    src, dst = os.path.join(folder, "in.npz"), os.path.join(folder, "out.npz")
    np.savez(src, **arrays)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # torch's venv alone
    run = subprocess.run([python, os.path.join(ROOT, "tests", script), src, *map(str, args),
                          dst], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, f"PyTorch side ({script}) failed:\n{run.stderr[-3000:]}"
    with np.load(dst, allow_pickle=False) as out:
        return {k: out[k] for k in out.files}
