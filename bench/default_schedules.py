"""Train-step time of untuned CPU builds: naive loop nests vs tvmfront's default schedules.

    .venv/bin/python bench/default_schedules.py [--steps 40] [--rounds 5] [--target x86]

Models: the LeNet of examples/lenet_digits.py (batch 64, 1x16x16 inputs, Adam) and an MLP
64-256-256-10 (batch 64, Adam), trained on the digits data. Both builds of a model are made
and timed in this one process; timing rounds alternate between them so that background load
hits both alike. Reported: compile time of each build, median `module.step` time, speedup.

Threads: TVM's CPU thread pool takes half the logical CPUs on x86 (1 thread on a 2-vCPU
machine) unless TVM_NUM_THREADS is set; this script sets it to the target's num-cores
(os.cpu_count() for "x86") when it is not set, so that parallel loops run on every core.
Run with TVM_NUM_THREADS=1 to time the schedules on one core.
"""

import argparse
import os
import statistics
import sys
import time

# Before TVM creates its thread pool (first parallel kernel).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import tvmfront as tvf  # noqa: E402
from tvmfront import schedule as cpu_schedule  # noqa: E402
from tvmfront.target import resolve_target  # noqa: E402

nn = tvf.nn


def lenet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, 10))


def mlp():
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10))


def compile_step(build_model, x_shape, target, scheduled):
    """(module, cold compile seconds). `scheduled=False` builds the naive loop nests."""
    tvf.manual_seed(0)
    model = build_model()
    original = cpu_schedule.default_cpu_schedule
    if not scheduled:
        cpu_schedule.default_cpu_schedule = lambda mod, target, *args, **kwargs: mod
    # Cold compiles, and never a cached build: the cache cannot see the patch above.
    os.environ["TVMFRONT_CACHE"] = "0"
    try:
        t0 = time.perf_counter()
        module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(lr=2e-3),
                                      inputs=(64, *x_shape), labels=(64,), target=target,
                                      records=False)  # default schedules vs naive, no tuning
        return module, time.perf_counter() - t0
    finally:
        cpu_schedule.default_cpu_schedule = original


def time_steps(module, x, y, steps):
    times = []
    for i in range(steps):
        lo = (i * 64) % (len(x) - 64)
        t0 = time.perf_counter()
        module.step(x[lo:lo + 64], y[lo:lo + 64], lr=1e-3)
        times.append(time.perf_counter() - t0)
    return times


def bench(name, build_model, x_shape, x, y, args):
    naive, naive_compile = compile_step(build_model, x_shape, args.target, scheduled=False)
    fast, fast_compile = compile_step(build_model, x_shape, args.target, scheduled=True)
    for module in (naive, fast):  # warm up: first call allocates, threads start
        time_steps(module, x, y, 3)
    naive_times, fast_times = [], []
    for _ in range(args.rounds):
        naive_times += time_steps(naive, x, y, args.steps)
        fast_times += time_steps(fast, x, y, args.steps)
    t_naive = statistics.median(naive_times) * 1e3
    t_fast = statistics.median(fast_times) * 1e3
    print(f"{name:6s} compile naive {naive_compile:5.1f} s, scheduled {fast_compile:5.1f} s | "
          f"step median naive {t_naive:8.2f} ms, scheduled {t_fast:7.2f} ms | "
          f"speedup {t_naive / t_fast:5.1f}x", flush=True)
    return t_naive / t_fast


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="steps per timing round")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    p.add_argument("--target", default="x86")
    p.add_argument("--models", default="lenet,mlp")
    args = p.parse_args()

    x_train, y_train, _, _ = tvf.data.load_digits(seed=0)
    print(f"target {resolve_target(args.target)}, {os.cpu_count()} CPUs visible, "
          f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']}", flush=True)
    if "lenet" in args.models:
        bench("LeNet", lenet, (1, 16, 16), tvf.data.upsample(x_train, 2), y_train, args)
    if "mlp" in args.models:
        bench("MLP", mlp, (1, 8, 8), x_train, y_train, args)


if __name__ == "__main__":
    main()
