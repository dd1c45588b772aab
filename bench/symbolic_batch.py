"""Train-step time at batch 64: a step compiled for any batch size vs one compiled for 64.

    .venv/bin/python bench/symbolic_batch.py [--steps 40] [--rounds 5] [--models mlp,lenet]

Models (SGD, cross-entropy, records=False: default schedules only, no tuning):
  mlp          64-256-10 MLP, inputs (batch, 64)
  lenet        the LeNet of bench/default_schedules.py, inputs (batch, 1, 16, 16)
  transformer  one post-norm TransformerEncoderLayer (d_model 32, 4 heads, feed-forward 64,
               dropout 0) over 16 tokens, mean over tokens, Linear(32, 10); inputs (batch, 16, 32)
Each model is compiled twice in this one process, with inputs=(64, ...) and ("batch", ...);
steps alternate between the two so that background load hits both alike. Reported: median
`module.step` time of each, their ratio (the issue's aim: under 1.10) and the median ratio of
the consecutive step pairs (steadier where other jobs share the cores); with
TVM_NUM_THREADS=1 also the ratio of the median CPU times of the step's thread, which other
processes' load does not inflate. A model whose
symbolic build fails (an op not yet converted to symbolic dimensions) is reported as such.

Threads: as bench/default_schedules.py (TVM_NUM_THREADS defaults to the CPUs visible).
"""

import argparse
import os
import statistics
import sys
import time

# Before TVM creates its thread pool (first parallel kernel).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

import tvmfront as tvf  # noqa: E402
from bench.default_schedules import lenet  # noqa: E402
from tvmfront.target import resolve_target  # noqa: E402

nn = tvf.nn
BATCH = 64


def mlp():
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


class TokenClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(tvf.ops.mean(self.layer(x), axis=1))


MODELS = {"mlp": (mlp, (64,)), "lenet": (lenet, (1, 16, 16)),
          "transformer": (TokenClassifier, (16, 32))}


def compile_step(build_model, batch, sample_shape, target):
    tvf.manual_seed(0)
    return tvf.compile_training(build_model(), nn.CrossEntropyLoss(), tvf.optim.SGD(1e-2),
                                inputs=(batch, *sample_shape), labels=(batch,), target=target,
                                records=False)


def time_pairs(fixed, symbolic, x, y, steps):
    """Wall and CPU seconds of steps of both modules, one step of each in turn: on a machine
    whose cores other jobs share, load that comes and goes hits both alike. The CPU time is
    this thread's (time.thread_time): with TVM_NUM_THREADS=1 every kernel runs on it, and it
    leaves out the time other processes held the core."""
    wall = {"fixed": [], "symbolic": []}
    cpu = {"fixed": [], "symbolic": []}
    for _ in range(steps):
        for name, module in (("fixed", fixed), ("symbolic", symbolic)):
            c0, t0 = time.thread_time(), time.perf_counter()
            module.step(x, y)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return wall, cpu


def bench(name, args):
    build_model, sample_shape = MODELS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, *sample_shape)).astype("float32")
    y = rng.integers(0, 10, BATCH)
    fixed = compile_step(build_model, BATCH, sample_shape, args.target)
    try:
        symbolic = compile_step(build_model, "batch", sample_shape, args.target)
    except Exception as err:  # noqa: BLE001 - reported; the other models still run
        line = (str(err).strip().splitlines() or [""])[-1][:160]
        print(f"{name:11s} symbolic build failed: {type(err).__name__}: {line}", flush=True)
        return None
    fallbacks = {**fixed.build_info["fallback_kernels"],
                 **symbolic.build_info["fallback_kernels"]}
    for module in (fixed, symbolic):  # warm up: first call allocates, threads start
        for _ in range(3):
            module.step(x, y)
    np.testing.assert_allclose(symbolic.step(x, y), fixed.step(x, y), rtol=1e-5)
    times, cpu = time_pairs(fixed, symbolic, x, y, args.steps * args.rounds)
    t_fixed, t_sym = (statistics.median(times[k]) * 1e6 for k in ("fixed", "symbolic"))
    paired = statistics.median(s / f for f, s in zip(times["fixed"], times["symbolic"]))
    c_fixed, c_sym = (statistics.median(cpu[k]) * 1e6 for k in ("fixed", "symbolic"))
    one_thread = os.environ["TVM_NUM_THREADS"] == "1"
    print(f"{name:11s} step median at batch {BATCH}: fixed {t_fixed:8.1f} us, symbolic "
          f"{t_sym:8.1f} us | ratio {t_sym / t_fixed:5.2f} (median of step pairs "
          f"{paired:5.2f})"
          f"{f' | CPU time ratio {c_sym / c_fixed:5.2f}' if one_thread else ''}"
          f"{' | fallback kernels: ' + ', '.join(sorted(fallbacks)) if fallbacks else ''}",
          flush=True)
    return t_sym / t_fixed


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds (steps x rounds pairs)")
    p.add_argument("--target", default="x86")
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args()
    print(f"target {resolve_target(args.target)}, {os.cpu_count()} CPUs visible, "
          f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}", flush=True)
    for name in args.models.split(","):
        bench(name, args)


if __name__ == "__main__":
    main()
