"""Where a batch-1 call's time goes: InferenceModule.__call__ and TrainingModule.step of the
MLP of bench/ (64-256-256-10, input 1x8x8), part by part, against the kernels alone and
PyTorch eager at batch 1.

    .venv/bin/python bench/call_overhead.py [--repeats 9] [--no-torch]

Parts (median microseconds of many calls, each timed alone):
  call          module(x) / module.step(x, y): everything the user pays
  vm call       the VM's compiled function on tensors already on the device (VM dispatch,
                argument passing, kernels)
  kernels       the same function timed inside TVM (VirtualMachine.time_evaluator): no Python
  framework     call - vm call: checks, numpy -> TVM tensors, lookups, output to numpy
PyTorch eager: `model(torch.from_numpy(x))` under no_grad, in its own process
(bench/_peer_torch.py with .venv-bench's python), when .venv-bench exists.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import timeit

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import tvmfront as tvf  # noqa: E402
from tvmfront._tvm import to_device, to_numpy  # noqa: E402

nn = tvf.nn


def mlp():  # bench/_peer_tvmfront.py's MLP
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256),
                         nn.ReLU(), nn.Linear(256, 10))


def us(fn, repeats, number=500):
    """Median microseconds of one fn() over `repeats` rounds of `number` calls."""
    fn()
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeats)) / number * 1e6


def kernels_us(module, name, args, repeats):
    ev = module._vm.time_evaluator(name, module.device, number=500, repeat=repeats)
    return float(np.median(ev(*args).results)) * 1e6


def infer_parts(repeats):
    tvf.manual_seed(0)
    module = tvf.compile_inference(mlp(), inputs=(1, 1, 8, 8), records=False)
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype("float32")
    args = [to_device(x, module.device), *module._params]
    fn = module._vm["predict"]
    out = fn(*args)
    return {"call": us(lambda: module(x), repeats),
            "predict": us(lambda: module.predict(x), repeats),
            "vm call": us(lambda: fn(*args), repeats),
            "kernels": kernels_us(module, "predict", args, repeats),
            "checks (general path)": us(lambda: module._inputs_in("module", x), repeats),
            "numpy -> new TVM tensor": us(lambda: to_device(x, module.device), repeats),
            "numpy -> reused tensor (fast path)": us(lambda: module._fast_input(x), repeats),
            "VM function lookup": us(lambda: module._vm["predict"], repeats),
            "output -> numpy": us(lambda: to_numpy(out), repeats)}


def train_parts(repeats, batch):
    tvf.manual_seed(0)
    module = tvf.compile_training(mlp(), nn.CrossEntropyLoss(),
                                  tvf.optim.SGD(lr=1e-3, momentum=0.9),
                                  inputs=(batch, 1, 8, 8), labels=(batch,), records=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 1, 8, 8)).astype("float32")
    y = rng.integers(0, 10, batch).astype("int64")
    data = module._check_batch(x, y)
    hyper = module._scalars("step", 1e-3, {})
    fn = module._vm["train_step"]
    # the same parameters every call: the timing needs no update to be kept
    args = [*data, *hyper, *module._params, *module._buffers, *module._state]
    return {"call": us(lambda: module.step(x, y, lr=1e-3), repeats, number=200),
            "vm call": us(lambda: fn(*args), repeats, number=200),
            "kernels": kernels_us(module, "train_step", args, repeats),
            "checks + inputs to device (general path)": us(lambda: module._check_batch(x, y),
                                                            repeats),
            "runtime scalars (general path)": us(lambda: module._scalars("step", 1e-3, {}),
                                                 repeats),
            "inputs + scalars into reused tensors (fast path)":
                us(lambda: module._fast_step_args(x, y, 1e-3), repeats)}


def torch_b1(repeats):
    py = os.environ.get("TVMFRONT_BENCH_PYTHON") or os.path.join(ROOT, ".venv-bench", "bin",
                                                                  "python")
    if not os.path.exists(py):
        return None, f"no {py} (bash bench/setup.sh)"
    spec = {"section": "infer", "models": ["mlp"], "batches": [1], "min_runs": 2000,
            "min_seconds": 1.0}
    best = None
    for _ in range(max(1, repeats // 3)):
        done = subprocess.run([py, os.path.join(HERE, "_peer_torch.py"), json.dumps(spec)],
                              capture_output=True, text=True, cwd=HERE, timeout=600)
        if done.returncode:
            return None, done.stderr.strip().splitlines()[-1:]
        rows = json.loads(done.stdout.strip().splitlines()[-1])["rows"]
        eager = [r for r in rows if r["contender"] == "PyTorch eager" and "seconds" in r]
        if eager:
            t = eager[0]["seconds"] * 1e6
            best = t if best is None else min(best, t)
    return best, "PyTorch eager, MLP b1 (bench/_peer_torch.py, best median of its runs)"


def show(title, parts):
    print(title)
    for name, value in parts.items():
        print(f"  {name:<50} {value:9.2f} us")
    framework = parts["call"] - parts["vm call"]
    print(f"  {'framework (call - vm call)':<50} {framework:9.2f} us")
    print(f"  {'call / kernels':<50} {parts['call'] / parts['kernels']:9.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--no-torch", action="store_true")
    args = parser.parse_args()
    infer = infer_parts(args.repeats)
    show("MLP inference, batch 1 (module(x)):", infer)
    show("MLP train step, batch 1, SGD momentum (module.step(x, y)):",
         train_parts(args.repeats, 1))
    show("MLP train step, batch 64, SGD momentum (module.step(x, y)):",
         train_parts(args.repeats, 64))
    if not args.no_torch:
        t, how = torch_b1(args.repeats)
        if t is None:
            print(f"PyTorch eager: n/a ({how})")
        else:
            print(f"{how}: {t:.2f} us; tvmfront module(x) is {t / infer['call']:.2f}x faster")


if __name__ == "__main__":
    sys.exit(main())
