"""Run aarch64 bundles on this x86 machine, under qemu user-mode emulation.

Development and CI tooling: `scripts/setup_arm.sh` installs qemu-aarch64-static and the aarch64
cross compiler, builds an aarch64 sysroot with Python from Debian arm64 packages and unpacks the
aarch64 wheels of the runtime stack (TVM, tvm-ffi, numpy, safetensors) into a cache directory
(`.cache/arm-sysroot`, or $TVMFRONT_ARM_CACHE). This module finds that setup and runs an
aarch64 Python there with this checkout's tvmfront on its path, so a bundle exported for
target="arm" is loaded and run by the very runtime code an ARM board would run.

    env = qemu.arm_env()                        # raises ArmUnavailable(reason) if not set up
    outputs = qemu.run_bundles_aarch64([
        {"bundle": "bundles/infer", "op": "predict", "x": "x", "out": "pred"},
        {"bundle": "bundles/train", "op": "steps", "x": ["x0", "x1"], "y": ["y0", "y1"],
         "lr": 1e-2, "out": "losses"}], {"x": x, "x0": ..., ...})

Timings under emulation mean nothing (importing TVM alone takes ~20 s); results do.
"""

import json
import os
import subprocess
import tempfile
import time

import numpy as np

from ..errors import TvmfrontError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETUP = os.path.join(ROOT, "scripts", "setup_arm.sh")


class ArmUnavailable(TvmfrontError, RuntimeError):
    """qemu, the aarch64 sysroot or the aarch64 wheels are not set up on this machine."""


def cache_dir():
    return os.environ.get("TVMFRONT_ARM_CACHE") or os.path.join(ROOT, ".cache", "arm-sysroot")


def arm_env():
    """{'ARM_SYSROOT', 'ARM_PYTHON', 'ARM_SITE', 'QEMU', 'ARM_CXX'} written by setup_arm.sh;
    raises ArmUnavailable naming what is missing."""
    stamp = os.path.join(cache_dir(), "env.sh")
    if not os.path.exists(stamp):
        raise ArmUnavailable(f"aarch64 emulation is not set up ({stamp} missing): run "
                             f"bash scripts/setup_arm.sh (needs network access and apt-get)")
    env = {}
    with open(stamp) as f:
        for line in f:
            if "=" in line and not line.startswith("#"):
                key, value = line.rstrip("\n").split("=", 1)
                env[key] = value
    for key in ("QEMU", "ARM_PYTHON", "ARM_SITE", "ARM_SYSROOT"):
        if not env.get(key) or not os.path.exists(env[key]):
            raise ArmUnavailable(f"{stamp}: {key}={env.get(key)!r} does not exist; "
                                 "run bash scripts/setup_arm.sh again")
    return env


def setup_arm(quiet=True):
    """Run scripts/setup_arm.sh (idempotent); returns arm_env() or raises ArmUnavailable."""
    try:
        return arm_env()
    except ArmUnavailable:
        pass
    if os.environ.get("TVMFRONT_ARM_SETUP_FAILED"):  # already tried (scripts/test.sh): no retry
        raise ArmUnavailable(os.environ["TVMFRONT_ARM_SETUP_FAILED"])
    out = subprocess.run(["bash", SETUP], capture_output=quiet, text=True)
    if out.returncode != 0:
        tail = (out.stderr or "").strip().splitlines()[-3:] if quiet else []
        raise ArmUnavailable("scripts/setup_arm.sh failed: " + " | ".join(tail))
    return arm_env()


def run_aarch64_python(args, timeout=900, cwd=None):
    """Run the emulated aarch64 Python with `args` (e.g. ['-c', code, ...]); this checkout's
    tvmfront and the aarch64 wheels are on its path. Returns the CompletedProcess."""
    env = arm_env()
    proc_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PYTHONPATH": os.pathsep.join([env["ARM_SITE"], ROOT]),
        "PYTHONNOUSERSITE": "1",
        # bytecode of the emulated interpreter goes to the cache, never into the checkout
        "PYTHONPYCACHEPREFIX": os.path.join(cache_dir(), "pycache"),
        "OMP_NUM_THREADS": "1",
        "TVM_NUM_THREADS": "1",
    }
    cmd = [env["QEMU"], "-L", env["ARM_SYSROOT"], env["ARM_PYTHON"], *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=proc_env,
                          cwd=cwd or ROOT)


# Runs on the aarch64 side: only the runtime layer of tvmfront (tvmfront.load) is used.
_RUNNER = r"""
import json, platform, sys, time
t0 = time.time()
import numpy as np
from tvmfront.runtime import load
spec = json.load(open(sys.argv[1]))
data = dict(np.load(spec["inputs"], allow_pickle=False))
t_import = time.time() - t0
out, report = {}, {"machine": platform.machine(), "import_s": round(t_import, 1), "jobs": []}
for job in spec["jobs"]:
    m = load(job["bundle"])
    if job["op"] == "predict":
        out[job["out"]] = m.predict(data[job["x"]])
    elif job["op"] == "call":
        out[job["out"]] = m(data[job["x"]])
    elif job["op"] == "steps":
        out[job["out"]] = np.array([m.step(data[x], data[y], lr=job.get("lr"))
                                    for x, y in zip(job["x"], job["y"])])
        if job.get("export"):
            m.export(job["export"])
    else:
        raise ValueError(job["op"])
    report["jobs"].append({"bundle": job["bundle"], "op": job["op"], "module": repr(m)})
np.savez(spec["outputs"], **out)
report["total_s"] = round(time.time() - t0, 1)
print("RESULT " + json.dumps(report))
"""


def run_bundles_aarch64(jobs, arrays, timeout=900):
    """Load bundles with tvmfront's runtime under the emulated aarch64 Python and run them.

    jobs: [{"bundle": dir, "op": "predict" | "call", "x": array name, "out": name}
           | {"bundle": dir, "op": "steps", "x": [names], "y": [names], "lr": float or None,
              "out": name, "export": optional dir to re-export the trained bundle to}]
    arrays: {name: numpy array} the jobs refer to.
    Returns ({out name: numpy array}, report dict with the aarch64 machine name and timings).
    """
    with tempfile.TemporaryDirectory(prefix="tvmfront-qemu-") as tmp:
        inputs, outputs = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inputs, **arrays)
        spec = os.path.join(tmp, "spec.json")
        with open(spec, "w") as f:
            json.dump({"jobs": jobs, "inputs": inputs, "outputs": outputs}, f)
        t0 = time.time()
        proc = run_aarch64_python(["-c", _RUNNER, spec], timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"aarch64 run failed (exit {proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        report = json.loads(next(line[len("RESULT "):] for line in proc.stdout.splitlines()
                                 if line.startswith("RESULT ")))
        report["wall_s"] = round(time.time() - t0, 1)
        with np.load(outputs, allow_pickle=False) as result:
            return {k: result[k] for k in result.files}, report
