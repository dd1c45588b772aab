"""Int8 post-training quantization (tvf.quantize) against float32: accuracy and inference time.

    .venv/bin/python bench/int8.py [--models mlp,lenet] [--epochs 10] [--rounds 5] [--asm]

Models: the digits MLP (examples/mlp_digits.py, 64-256-256-10) and LeNet
(examples/lenet_digits.py, digits upsampled to 16x16), trained here with Adam for --epochs
(seed 0), then
- accuracy on the digits test split: float32, int8 with min/max calibration and with the
  99.99th percentile, both on 512 training samples;
- inference time at batch 1 and 64: float32 (compile_inference, default schedules, no
  records) vs int8 (tvf.quantize, same), each compiled for that fixed batch. Rounds alternate
  float and int8 so that background load hits both alike; reported: the median over rounds of
  each one's median call time (wall), the ratio, and the process CPU time (user+sys) per call,
  with the load average before and after.
--asm: the integer dot-product instructions in the generated code of the int8 dense and conv
  kernels (default schedules) for this CPU and for an AVX-512 VNNI target (mcpu=cascadelake,
  compiled only).
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import numpy as np  # noqa: E402

import tvmfront as tvf  # noqa: E402
from bench._timing import median_seconds  # noqa: E402

INSTRUCTIONS = ("vpdpbusd", "vpdpwssd", "vpmaddubsw", "vpmaddwd", "vpmulld")


def load(model):
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    if model == "lenet":
        x_train, x_test = tvf.data.upsample(x_train, 2), tvf.data.upsample(x_test, 2)
    return x_train, y_train, x_test, y_test


def train(name, epochs):
    example = __import__({"mlp": "mlp_digits", "lenet": "lenet_digits"}[name])
    x_train, y_train, x_test, y_test = load(name)
    tvf.manual_seed(0)
    model = example.make_model()
    spec = ("batch", *x_train.shape[1:])
    step = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), example.make_optimizer(),
                                inputs=spec, labels=("batch",))
    tvf.Trainer(step, seed=0, progress=False).fit(x_train, y_train, epochs=epochs, batch_size=64)
    model.load_state_dict(step.state_dict())
    return model, (x_train, y_train, x_test, y_test)


def accuracy(module, x, y):
    return float((module.predict(x).argmax(1) == y).mean())


def timed(fn):
    """(median wall seconds per call, process CPU seconds per call)."""
    c0, t0 = time.process_time(), time.perf_counter()
    wall = median_seconds(fn, {"min_runs": 30, "min_seconds": 0.5})
    runs = max(1, round((time.perf_counter() - t0) / max(wall, 1e-9)))
    return wall, (time.process_time() - c0) / runs


def bench_model(name, epochs, rounds):
    model, (x_train, y_train, x_test, y_test) = train(name, epochs)
    calib, sample = x_train[:512], x_train.shape[1:]
    row = {"model": name, "epochs": epochs,
           "float32": accuracy(tvf.compile_inference(model, ("batch", *sample)), x_test, y_test)}
    for method in ("minmax", "percentile"):
        q = tvf.quantize(model, calibration=calib, method=method, inputs=("batch", *sample))
        row[f"int8_{method}"] = accuracy(q, x_test, y_test)
    for batch in (1, 64):
        spec = (batch, *sample)
        modules = {"float32": tvf.compile_inference(model, spec),
                   "int8": tvf.quantize(model, calibration=calib, inputs=spec)}
        x = x_test[:batch]
        runs = {k: [] for k in modules}
        load0 = os.getloadavg()[0]
        for _ in range(rounds):  # interleaved
            for k, m in modules.items():
                runs[k].append(timed(lambda m=m: m(x)))
        for k, r in runs.items():
            row[f"{k}_b{batch}_ms"] = 1e3 * statistics.median(w for w, _ in r)
            row[f"{k}_b{batch}_cpu_ms"] = 1e3 * statistics.median(c for _, c in r)
        row[f"speedup_b{batch}"] = row[f"float32_b{batch}_ms"] / row[f"int8_b{batch}_ms"]
        row[f"load_b{batch}"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
    return row


def instructions():
    """{target: {kernel: {instruction: count}}} in the int8 kernels' assembly."""
    import tvm
    from tvm import te

    from tvmfront import schedule
    from tvmfront.ops import int8 as q
    from tvmfront.target import resolve_target

    def kernel(kind, target):
        m = te.placeholder((256 if kind == "dense" else 16,), "float32", "m")
        b = te.placeholder(m.shape, "int32", "b")
        if kind == "dense":  # the MLP's hidden layer at batch 64
            x = te.placeholder((64, 256), "uint8", "x")
            w = te.placeholder((256, 256), "int8", "w")
            out = q.qdense.fn(x, w, b, m, out_dtype="uint8")
        else:  # LeNet's second convolution at batch 64
            x = te.placeholder((64, 6, 8, 8), "uint8", "x")
            w = te.placeholder((16, 6, 5, 5), "int8", "w")
            out = q.qconv2d.fn(x, w, b, m, out_dtype="uint8")
        func = te.create_prim_func([x, w, b, m, out]).with_attr("global_symbol", kind)
        report = {}
        mod = schedule.default_cpu_schedule(tvm.IRModule({kind: func}), target, report=report)
        asm = tvm.compile(mod, target).mod.inspect_source("asm")
        counts = {i: len(re.findall(rf"\b{i}\b", asm)) for i in INSTRUCTIONS}
        return {"schedule": report[kind], **counts}

    targets = {"this CPU": resolve_target("x86"),
               "cascadelake (VNNI, compile only)": tvm.target.Target(
                   {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2})}
    return {t: {k: kernel(k, target) for k in ("dense", "conv2d")} for t, target in
            targets.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,lenet")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--asm", action="store_true")
    args = parser.parse_args()
    if args.asm:
        print(json.dumps(instructions(), indent=1))
    for name in args.models.split(","):
        if name:
            print(json.dumps(bench_model(name, args.epochs, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
