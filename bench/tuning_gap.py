"""Does MetaSchedule's runner time a record as this process does, and can its search reach
tvmfront's default schedule? (The README's "AVX2 records" entry quotes this.)

    .venv/bin/python bench/tuning_gap.py [--shape 64x256x64] [--trials 128] [--rounds 5]

For one dense product, as ``x @ w.T`` (a Linear's forward: w is [N, K]) and as ``x @ wt``
(w pre-transposed, [K, N]): tune it with the builder and runner tvf.tune uses, then time the
best record and tvmfront's default schedule with MetaSchedule's LocalRunner and in this
process, in turns, at the same moment (the runner's own EvaluatorConfig both ways). Prints
the search's best runner time beside the re-timings: a search's best of N single samples
is the luckiest of them, and a comparison of timings taken at other moments measures the
load as much as the kernels. Takes ~3 min per 128 trials and form on 2 cores.
"""

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tvmfront._tvm import meta_schedule, ms_local_builder, tvm  # noqa: E402
from tvmfront.build import codegen_target  # noqa: E402
from tvmfront.schedule import default_cpu_schedule  # noqa: E402
from tvmfront.target import resolve_target  # noqa: E402


def dense(m, n, k, transposed_weight):
    te = tvm.te
    x = te.placeholder((m, k), name="x")
    r = te.reduce_axis((0, k), "k")
    if transposed_weight:  # x @ wt, wt [K, N]: contiguous along the output's j
        w = te.placeholder((k, n), name="w")
        y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[r, j], axis=r), name="dense")
    else:  # x @ w.T, w [N, K]: strided along j
        w = te.placeholder((n, k), name="w")
        y = te.compute((m, n), lambda i, j: te.sum(x[i, r] * w[j, r], axis=r), name="dense")
    return tvm.IRModule({"main": te.create_prim_func([x, w, y]).with_attr("global_symbol",
                                                                         "main")})


def mean_us(secs):
    return float(np.mean([float(s) for s in secs])) * 1e6


def retime(ms, func, target, rounds):
    """([runner us], [in-process us]) of `func`, built once by the tuning builder, the two
    timed in turns with the runner's evaluator settings (number 3, repeat 1, 100 ms)."""
    builder, runner = ms_local_builder(timeout_sec=120), ms.runner.LocalRunner(timeout_sec=60)
    built = builder.build([ms.builder.BuilderInput(tvm.IRModule({"main": func}), target)])[0]
    if built.error_msg:
        raise RuntimeError(built.error_msg)
    lib, dev = tvm.runtime.load_module(built.artifact_path), tvm.cpu()
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.uniform(0.1, 1, [int(s) for s in p.shape]).astype("float32"),
                               dev) for p in func.params]
    info = ms.arg_info.ArgInfo.from_prim_func(func)
    by_runner, here = [], []
    for _ in range(rounds):
        res = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", info)])[0].result()
        if res.error_msg:
            raise RuntimeError(res.error_msg)
        by_runner.append(mean_us(res.run_secs))
        timer = lib.time_evaluator("main", dev, number=3, repeat=1, min_repeat_ms=100)
        here.append(mean_us(timer(*args).results))
    return by_runner, here


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="64x256x64", help="MxNxK (default: the MLP's first "
                                                         "Linear at batch 64)")
    ap.add_argument("--trials", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)  # per-batch lines
    m, n, k = (int(v) for v in a.shape.split("x"))
    ms = meta_schedule()
    target = resolve_target("x86")
    codegen = codegen_target(target)  # candidates compiled as builds compile kernels
    flops = 2 * m * n * k
    for transposed in (False, True):
        mod = dense(m, n, k, transposed)
        t0 = time.time()
        db = ms.tune_tir(mod, codegen, work_dir=tempfile.mkdtemp(prefix="tuning-gap-"),
                         max_trials_global=a.trials, num_trials_per_iter=16,
                         builder=ms_local_builder(timeout_sec=120),
                         runner=ms.runner.LocalRunner(timeout_sec=60))
        wall = time.time() - t0
        recs = sorted((r for r in db.get_all_tuning_records() if r.run_secs),
                      key=lambda r: mean_us(r.run_secs))
        sch = tvm.s_tir.Schedule(recs[0].workload.mod)
        recs[0].trace.apply_to_schedule(sch, False)
        form = "x @ wt " if transposed else "x @ w.T"
        print(f"{a.shape} {form}: {len(recs)} records in {wall:.0f} s; search's best "
              f"{mean_us(recs[0].run_secs):.1f} us (next: "
              f"{', '.join(f'{mean_us(r.run_secs):.1f}' for r in recs[1:4])})")
        for name, func in (("record ", sch.mod["main"]),
                           ("default", default_cpu_schedule(mod, target)["main"])):
            by_runner, here = retime(ms, func.with_attr("global_symbol", "main"), codegen,
                                     a.rounds)
            print(f"  {name} runner {np.round(by_runner, 1)} us, in-process {np.round(here, 1)}"
                  f" us ({flops / np.median(here) / 1e3:.0f} GFLOP/s)", flush=True)
    print("load average", " ".join(open("/proc/loadavg").read().split()[:3]))


if __name__ == "__main__":
    main()
