"""Gradient kernels vs their forward, and vs PyTorch's backward, measured in one run.

    .venv/bin/python bench/grad_kernels.py            # PyTorch from .venv-bench if present
    .venv/bin/python bench/grad_kernels.py --gradient derived --only resnet --no-torch
    bash bench/setup.sh                               # makes .venv-bench (torch, CPU)

For each case: tvmfront's forward kernel and the backward kernels (one per input, as in a
compiled train step), both with tvmfront's default CPU schedules; their median times and
ratio; and PyTorch's forward and backward on the same shapes, in its own process. The
backward is the op's explicit `.grad` (what a train step uses) or, with --gradient derived,
the one autodiff derives from the forward. --rules prints the schedule rule of each kernel.
A case's forward and gradient kernels are timed in alternating rounds (--rounds), each the
median of its rounds, so that a slow phase of a shared machine weighs on all of them alike.

Threads: TVM_NUM_THREADS defaults to the CPUs visible, set before TVM starts its pool (as in
bench/default_schedules.py). Unset, TVM runs one thread on a 2-CPU x86 machine yet hands every
parallel kernel to a worker: 8-22 us a launch on a loaded machine, which made a serial forward
and its parallel backward incomparable (LeNet's max-pool backward 24 us unset, 15 us at 1).
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np  # noqa: E402

import tvmfront as tvf  # noqa: E402
from tvmfront import ops  # noqa: E402
from tvmfront._tvm import te, to_device, tvm  # noqa: E402
from tvmfront.build import compile_kernels  # noqa: E402
from tvmfront.target import resolve_target  # noqa: E402

from _timing import alternating_medians  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = {
    "matmul 512": ("matmul", ops.matmul, [(512, 512), (512, 512)], {}),
    "conv2d b32 32->64 @28 3x3": ("conv2d", ops.conv2d, [(32, 32, 28, 28), (64, 32, 3, 3)],
                                  {"padding": 1}),
    "conv2d b32 64->64 @14 3x3 s2": ("conv2d", ops.conv2d, [(32, 64, 14, 14), (64, 64, 3, 3)],
                                     {"stride": 2, "padding": 1}),
    "max_pool2d b32 64@28 k2": ("max_pool2d", ops.max_pool2d, [(32, 64, 28, 28)], {"kernel": 2}),
    "max_pool2d b32 64@28 k3 s2 p1": ("max_pool2d", ops.max_pool2d, [(32, 64, 28, 28)],
                                      {"kernel": 3, "stride": 2, "padding": 1}),
    # rows of windows filling whole vectors (16 a row): a CIFAR-sized ResNet stem's pool
    "max_pool2d b32 16@32 k3 s2 p1": ("max_pool2d", ops.max_pool2d, [(32, 16, 32, 32)],
                                      {"kernel": 3, "stride": 2, "padding": 1}),
    "avg_pool2d b32 64@28 k2": ("avg_pool2d", ops.avg_pool2d, [(32, 64, 28, 28)], {"kernel": 2}),
    "relu b32 64@28": ("relu", ops.relu, [(32, 64, 28, 28)], {}),
}
# examples/resnet_digits.py's convolutions at batch 64: stem, stage convs at 32/16/8 (stride 1),
# the first conv of stages 2 and 3 (stride 2) and their 1x1 stride-2 projections.
for _name, _cin, _cout, _hw, _k, _s in (("stem 1->16", 1, 16, 32, 3, 1),
                                        ("16->16 @32", 16, 16, 32, 3, 1),
                                        ("16->32 @32 s2", 16, 32, 32, 3, 2),
                                        ("32->32 @16", 32, 32, 16, 3, 1),
                                        ("1x1 16->32 @32 s2", 16, 32, 32, 1, 2),
                                        ("32->64 @16 s2", 32, 64, 16, 3, 2),
                                        ("64->64 @8", 64, 64, 8, 3, 1),
                                        ("1x1 32->64 @16 s2", 32, 64, 16, 1, 2)):
    CASES[f"resnet b64 {_name}"] = ("conv2d", ops.conv2d, [(64, _cin, _hw, _hw),
                                                           (_cout, _cin, _k, _k)],
                                    {"stride": _s, "padding": _k // 2})

# examples/lenet_digits.py at batch 64: its two convolutions and max-pools.
CASES["lenet b64 conv 1->6 @16 5x5 p2"] = ("conv2d", ops.conv2d,
                                           [(64, 1, 16, 16), (6, 1, 5, 5)], {"padding": 2})
CASES["lenet b64 conv 6->16 @8 5x5"] = ("conv2d", ops.conv2d, [(64, 6, 8, 8), (16, 6, 5, 5)], {})
CASES["lenet b64 max_pool2d 6@16 k2"] = ("max_pool2d", ops.max_pool2d, [(64, 6, 16, 16)],
                                         {"kernel": 2})
CASES["lenet b64 max_pool2d 16@4 k2"] = ("max_pool2d", ops.max_pool2d, [(64, 16, 4, 4)],
                                         {"kernel": 2})


def _schedule(func, target, rules):
    try:
        from tvmfront.schedule import schedule_prim_func
    except ImportError:  # default schedules not available: time the naive loops
        return func
    scheduled, rule = schedule_prim_func(func, target)
    if rules is not None:
        rules.append(rule)
    return scheduled


def _build(func, args, target, rules=None):
    """A timer of the scheduled kernel on `args`: each call returns one median in us."""
    lib = compile_kernels(_schedule(func, target, rules), target)
    timer = lib.mod.time_evaluator("main", tvm.cpu(), number=3, repeat=3, min_repeat_ms=30)
    return lambda: float(np.median(timer(*args).results)) * 1e6


def tvmfront_times(op, shapes, attrs, target, derived=True, rules=None, rounds=5):
    rng = np.random.default_rng(0)
    xs = [te.placeholder(s, "float32", name=f"x{i}") for i, s in enumerate(shapes)]
    data = [to_device(rng.standard_normal(s).astype("float32")) for s in shapes]
    out = op.te_forward(*xs, **attrs)
    out_data = tvm.runtime.empty(tuple(int(d) for d in out.shape), "float32", tvm.cpu())
    timers = [_build(te.create_prim_func(xs + [out]), data + [out_data], target, rules)]
    dy = te.placeholder(out.shape, "float32", name="dy")
    dy_data = to_device(rng.standard_normal(tuple(int(d) for d in out.shape)).astype("float32"))
    for i, x in enumerate(xs):  # one kernel per input, as the train step emits them
        grad = op.te_grad(dy, *xs, derived=derived, **attrs)[i]
        grad_data = tvm.runtime.empty(shapes[i], "float32", tvm.cpu())
        timers.append(_build(te.create_prim_func([dy] + xs + [grad]),
                             [dy_data] + data + [grad_data], target, rules))
    forward, *per_input = alternating_medians(timers, rounds)
    return forward, per_input


def torch_times(threads, cases):
    python = os.path.join(ROOT, ".venv-bench", "bin", "python")
    if not os.path.exists(python):
        return None, "no .venv-bench (bash bench/setup.sh)"
    spec = {n: {"op": k, "shapes": s, "attrs": a} for n, (k, _, s, a) in cases.items()}
    out = subprocess.run([python, os.path.join(ROOT, "bench", "_torch_grad_kernels.py"),
                          json.dumps(spec), str(threads)], capture_output=True, text=True)
    if out.returncode:
        return None, out.stderr.strip().splitlines()[-1]
    return json.loads(out.stdout.strip().splitlines()[-1]), None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gradient", choices=("explicit", "derived"), default="explicit",
                        help="the op's explicit .grad (a train step's) or autodiff's")
    parser.add_argument("--only", default="", help="cases whose name contains this text")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch's timings")
    parser.add_argument("--rules", action="store_true", help="print each kernel's rule")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the forward and gradient kernels, alternating")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be 1 or more, got {args.rounds}")
    cases = {n: c for n, c in CASES.items() if args.only in n}
    target = resolve_target("x86")
    # PyTorch gets the threads TVM's pool runs (not the target's num-cores, which sizes the
    # parallel loops): at TVM_NUM_THREADS=1 it had run on 2 threads against tvmfront's 1.
    threads = int(os.environ["TVM_NUM_THREADS"])
    torch_result, why = (None, "--no-torch") if args.no_torch else torch_times(threads, cases)
    print(f"target {target}; {threads} thread(s) each; "
          f"PyTorch: {'measured' if torch_result else why}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{args.gradient} bwd: all input gradients (d/dx + d/dw for conv and matmul); worst "
          "kernel: the slowest single input's gradient kernel / the forward")
    print(f"{'case':<34} {'fwd us':>9} {'bwd us':>9} {'bwd/fwd':>8} {'worst/fwd':>10} "
          f"{'torch fwd us':>13} {'torch bwd us':>13} {'bwd vs torch':>13}")
    for name, (_, op, shapes, attrs) in cases.items():
        rules = [] if args.rules else None
        fwd, per_input = tvmfront_times(op, shapes, attrs, target,
                                        derived=args.gradient == "derived", rules=rules,
                                        rounds=args.rounds)
        bwd = sum(per_input)
        row = (f"{name:<34} {fwd:>9.0f} {bwd:>9.0f} {bwd / fwd:>8.2f} "
               f"{max(per_input) / fwd:>10.2f}")
        if torch_result:
            t = torch_result[name]
            row += (f" {t['forward_us']:>13.0f} {t['backward_us']:>13.0f} "
                    f"{bwd / t['backward_us']:>12.2f}x")
        print(row, flush=True)
        for rule in rules or []:
            print(f"    {rule}")


if __name__ == "__main__":
    sys.exit(main())
