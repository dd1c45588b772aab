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
--tensorize: the follow-up measured: the int8 GEMM's reduction tensorized 4 bytes at a time
  with x86 intrinsics on a packed weight [N/L, K/4, L, 4] (L = 8 int32 lanes on AVX2:
  vpmaddubsw + vpmaddwd, run here against float32 and the default int8 kernel, one thread, no
  epilogue; L = 16 on cascadelake: vpdpbusd, compiled only). Needs activations in [0, 127] on
  AVX2 (vpmaddubsw saturates its int16 pair sums otherwise; PyTorch's reduce_range).
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


def _dot_intrinsics():
    """Register tvmfront_dot_8x4_avx2 and tvmfront_dot_16x4_vnni: C[L] += sum_k<4 A[k] (u8)
    * B[L, k] (s8) in int32. (TVM 0.27's own VNNI_DOT_16x4_INTRIN passes <16 x i32> operands
    to llvm.x86.avx512.vpdpbusd.512, which the LLVM it ships declares on <64 x i8>: module
    verification fails. These pass bytes.)"""
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    def desc_of(lanes):
        @T.prim_func(s_tir=True)
        def desc(A: T.Buffer((4,), "uint8", offset_factor=1),
                 B: T.Buffer((lanes, 4), "int8", offset_factor=1),
                 C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                for i, k in T.grid(lanes, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")
        return desc

    def impl_of(lanes, dot):
        @T.prim_func(s_tir=True)
        def impl(A: T.Buffer((4,), "uint8", offset_factor=1),
                 B: T.Buffer((lanes, 4), "int8", offset_factor=1),
                 C: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
            with T.sblock("root"):
                T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
                T.writes(C[0:lanes])
                a = T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"),
                                                            dtype="int32"), lanes),
                                  dtype=f"uint8x{4 * lanes}")
                C[T.ramp(T.int32(0), 1, lanes)] = dot(C.vload([0], dtype=f"int32x{lanes}"), a,
                                                      B.vload([0, 0], dtype=f"int8x{4 * lanes}"))
        return impl

    def intrin(name, *args, dtype):
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), *args, dtype=dtype)

    def avx2(c, a, b):  # u8 x s8 pairs summed to int16 (saturating), then pairs to int32
        pairs = intrin("llvm.x86.avx2.pmadd.ub.sw", a, b, dtype="int16x16")
        return c + intrin("llvm.x86.avx2.pmadd.wd", pairs, T.broadcast(T.int16(1), 16),
                          dtype="int32x8")

    def vnni(c, a, b):
        return intrin("llvm.x86.avx512.vpdpbusd.512", c, a, b, dtype="int32x16")

    TensorIntrin.register("tvmfront_dot_8x4_avx2", desc_of(8), impl_of(8, avx2), override=True)
    TensorIntrin.register("tvmfront_dot_16x4_vnni", desc_of(16), impl_of(16, vnni),
                          override=True)


def _check_packed(f, m, k, n, lanes):
    """The tensorized kernel equals numpy's integer product (activations in [0, 127])."""
    import tvm

    rng = np.random.default_rng(0)
    x = rng.integers(0, 128, (m, k)).astype(np.uint8)
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    wp = np.ascontiguousarray(w.reshape(n // lanes, lanes, k // 4, 4).transpose(0, 2, 1, 3))
    out = tvm.runtime.tensor(np.zeros((m, n), np.int32))
    f(tvm.runtime.tensor(x), tvm.runtime.tensor(wp), out)
    want = x.astype(np.int64) @ w.astype(np.int64).T
    if not np.array_equal(out.numpy(), want):
        raise AssertionError(f"tensorized GEMM {m}x{k}x{n} differs from numpy")


def tensorized():
    """The packed-weight GEMM tensorized (see the docstring) against float32 and the default
    int8 kernel at batch 1 and 64, 256x256; one thread (the tensorized one is not parallel)."""
    import tvm
    from tvm import s_tir, te

    from tvmfront import ops, schedule
    from tvmfront.ops import int8 as q
    from tvmfront.target import resolve_target

    _dot_intrinsics()
    host = resolve_target("x86")
    vnni = tvm.target.Target({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 1})

    def packed(m, k, n, lanes, intrin):
        x = te.placeholder((m, k), "uint8", "x")
        wp = te.placeholder((n // lanes, k // 4, lanes, 4), "int8", "wp")
        r = te.reduce_axis((0, k), "k")
        acc = te.compute((m, n), lambda i, j: te.sum(x[i, r].astype("int32") * wp[
            j // lanes, r // 4, j % lanes, r % 4].astype("int32"), axis=r), name="acc")
        sch = s_tir.Schedule(te.create_prim_func([x, wp, acc]).with_attr("global_symbol", "k"))
        block = sch.get_sblock("acc")
        i, j, r = sch.get_loops(block)
        jo, ji = sch.split(j, [None, lanes])
        ro, ri = sch.split(r, [None, 4])
        io, ii = sch.split(i, [None, 4]) if m % 4 == 0 else (i, None)
        sch.reorder(*[a for a in (io, jo, ro, ii, ji, ri) if a is not None])
        sch.decompose_reduction(block, ro)
        sch.tensorize(ji, intrin)
        return sch.mod, [((m, k), "uint8"), (tuple(int(d) for d in wp.shape), "int8"),
                         ((m, n), "int32")]

    def default(fn, ins):
        func = te.create_prim_func(ins + [fn(*ins)]).with_attr("global_symbol", "k")
        return schedule.default_cpu_schedule(tvm.IRModule({"k": func}), host)

    def run(mod, shapes):
        f = tvm.compile(mod, host)["k"]
        args = [tvm.runtime.tensor(np.zeros(s, d)) for s, d in shapes]
        return 1e6 * median_seconds(lambda: f(*args), {"min_runs": 100, "min_seconds": 0.5})

    out = {}
    for m in (1, 64):
        k = n = 256
        xf, wf = te.placeholder((m, k), "float32", "x"), te.placeholder((n, k), "float32", "w")
        xq, wq = te.placeholder((m, k), "uint8", "x"), te.placeholder((n, k), "int8", "w")
        b, mul = te.placeholder((n,), "int32", "b"), te.placeholder((n,), "float32", "m")
        mod, shapes = packed(m, k, n, 8, "tvmfront_dot_8x4_avx2")
        _check_packed(tvm.compile(mod, host)["k"], m, k, n, 8)
        asm = tvm.compile(packed(m, k, n, 16, "tvmfront_dot_16x4_vnni")[0], vnni)
        out[f"gemm {m}x{k}x{n}"] = {
            "float32_us": run(default(ops.dense.fn, [xf, wf]), [((m, k), "float32"),
                                                                ((n, k), "float32"),
                                                                ((m, n), "float32")]),
            "int8_default_us": run(default(q.qdense.fn, [xq, wq, b, mul]), [
                ((m, k), "uint8"), ((n, k), "int8"), ((n,), "int32"), ((n,), "float32"),
                ((m, n), "float32")]),
            "int8_vpmaddubsw_us": run(mod, shapes),
            "cascadelake_vpdpbusd": len(re.findall(r"\bvpdpbusd\b",
                                                   asm.mod.inspect_source("asm")))}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,lenet")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--asm", action="store_true")
    parser.add_argument("--tensorize", action="store_true")
    args = parser.parse_args()
    if args.asm:
        print(json.dumps(instructions(), indent=1))
    if args.tensorize:
        print(json.dumps(tensorized(), indent=1), flush=True)
    for name in args.models.split(","):
        if name:
            print(json.dumps(bench_model(name, args.epochs, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
