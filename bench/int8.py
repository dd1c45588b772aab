"""Int8 quantization (tvf.quantize) against float32 and PyTorch's x86 int8: accuracy and speed.

    .venv/bin/python bench/int8.py [--models mlp,lenet,resnet,transformer] [--epochs 10]
        [--resnet-epochs 3] [--qat-epochs 5] [--prune-epochs 4] [--transformer-steps 300]
        [--rounds 5] [--asm] [--no-torch]

Models: the digits MLP (examples/mlp_digits.py, 64-256-256-10), LeNet
(examples/lenet_digits.py, digits upsampled to 16x16) and the ResNet
(examples/resnet_digits.py, 32x32, its schedule and augmentation, fewer epochs), trained here
(seed 0), then
- accuracy on the digits test split: float32; int8 post-training with min/max calibration
  and with the 99.99th percentile, both on 512 training samples; int8 from QAT
  (prepare_qat, fine-tuned --qat-epochs at lr 3e-4, converted by tvf.quantize; 2 epochs left
  the MLP 1-2 test samples below float, 5 match it: see qat());
- inference time at batch 1 and 64: float32 (compile_inference, default schedules, no
  records) vs int8 (tvf.quantize, same), each compiled for that fixed batch. Rounds alternate
  float and int8 so that background load hits both alike; reported: the median over rounds of
  each one's median call time (wall), the ratio, and the process CPU time (user+sys) per call,
  with the load average before and after;
- pruned (LeNet, ResNet): accuracy at 50 / 80 / 90 % sparsity, gradual global magnitude
  pruning over --prune-epochs of fine-tuning (examples/compress_digits.py's recipe);
- PyTorch (/work/main/.venv-bench, a subprocess, MLP, LeNet and the ResNet with its
  conv-BN(-ReLU) fused, bench/_torch_resnet_q.py): the same weights in float32 and int8 with
  torch.ao.quantization's "x86" backend, its accuracy and call times. (Not the Transformer:
  there is no torch twin of CausalLM here.)
On an AVX2 CPU without VNNI, tvf.quantize quantizes activations to [0, 127] (vpmaddubsw's
int16 pair sums saturate otherwise; PyTorch's x86 backend does the same, reduce_range), and
the QAT model is prepared with that range. The char Transformer (examples/char_transformer.py's model, --transformer-steps steps): its
validation bits per character float vs int8 (its Linear layers) and its forward's time.
Writes bench/results/int8.txt (--out).
--asm: the integer dot-product instructions in the generated code of the int8 dense and conv
  kernels (default schedules, widening and packed) for this CPU, an AVX-512 VNNI target
  (mcpu=cascadelake) and an AVX2 one (mcpu=haswell), those two compiled only.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
TORCH_PYTHON = "/work/main/.venv-bench/bin/python"
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import numpy as np  # noqa: E402

import tvmfront as tvf  # noqa: E402
from bench._timing import median_seconds  # noqa: E402

SPARSITY = (0.5, 0.8, 0.9)
INSTRUCTIONS = ("vpdpbusd", "vpdpwssd", "vpmaddubsw", "vpmaddwd", "vpmulld")


def load(model):
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    up = {"lenet": 2, "resnet": 4}.get(model)
    if up:
        x_train, x_test = tvf.data.upsample(x_train, up), tvf.data.upsample(x_test, up)
    return x_train, y_train, x_test, y_test


EXAMPLES = {"mlp": "mlp_digits", "lenet": "lenet_digits", "resnet": "resnet_digits"}


def train(name, epochs):
    example = __import__(EXAMPLES[name])
    x_train, y_train, x_test, y_test = load(name)
    tvf.manual_seed(0)
    model = example.make_model()
    spec = ("batch", *x_train.shape[1:])
    step = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), example.make_optimizer(),
                                inputs=spec, labels=("batch",))
    extra = {}
    if name == "resnet":  # as the example trains it: warmup + cosine, random shifts
        extra = {"lr_schedule": example.lr_schedule(epochs, -(-len(y_train) // 64))}
    trainer = tvf.Trainer(step, seed=0, progress=False, **extra)
    trainer.fit(x_train, y_train, epochs=epochs, batch_size=64,
                **({"augment": example.random_shift} if name == "resnet" else {}))
    model.load_state_dict(step.state_dict())
    return model, (x_train, y_train, x_test, y_test)


def qat(model, data, epochs, activation_range):
    """prepare_qat on the trained model, fine-tuned `epochs` at a low rate: the QAT model.
    Too few epochs are what cost the MLP its QAT points (seed 0; fake-quant eval and int8
    agree exactly in every case, so the conversion is not it): float 97.77; at lr 3e-4 2
    epochs 97.49 (97.21 in an earlier run), 5 epochs 97.77; at lr 1e-4 2 epochs 97.49, 5
    epochs 98.05; at 3e-5 3 epochs 97.77. Right after prepare_qat the weights meet their
    quantization noise and the observers' moving averages (constant 0.01) still lean on
    the first batches' ranges; two epochs (46 steps) do not settle either."""
    x_train, y_train, _, _ = data
    model = tvf.nn.quantization.prepare_qat(model, activation_range=activation_range)
    step = tvf.compile_training(model, tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(3e-4),
                                inputs=("batch", *x_train.shape[1:]), labels=("batch",))
    tvf.Trainer(step, seed=0, progress=False).fit(x_train, y_train, epochs=epochs,
                                                  batch_size=64)
    model.load_state_dict(step.state_dict())
    return model


def pruned(name, model, data, sparsity, epochs):
    """Test accuracy of the trained model pruned gradually to `sparsity` (global magnitude
    pruning, Zhu & Gupta's schedule over the first two thirds of `epochs` fine-tuning epochs
    at lr 1e-3 with Adam, masks between epochs), folded (pruning.remove) and compiled for
    inference: examples/compress_digits.py's recipe."""
    x_train, y_train, x_test, y_test = data
    example = __import__(EXAMPLES[name])
    fresh = example.make_model()
    fresh.load_state_dict(model.state_dict())
    fresh = tvf.nn.pruning.prune(fresh, amount=0.0)
    step = tvf.compile_training(fresh, tvf.nn.CrossEntropyLoss(), tvf.optim.Adam(1e-3),
                                inputs=("batch", *x_train.shape[1:]), labels=("batch",))
    steps = epochs * -(-len(x_train) // 64)
    schedule = tvf.nn.pruning.PolynomialSparsity(sparsity, end_step=max(1, 2 * steps // 3))
    tvf.nn.pruning.fit(tvf.Trainer(step, seed=0, progress=False), x_train, y_train, schedule,
                       epochs=epochs, batch_size=64)
    tvf.nn.pruning.update_masks(step, sparsity)  # the final sparsity, whatever the epochs
    fresh.load_state_dict(step.state_dict())
    tvf.nn.pruning.remove(fresh)
    return accuracy(tvf.compile_inference(fresh, ("batch", *x_train.shape[1:])), x_test, y_test)


def accuracy(module, x, y):
    return float((module.predict(x).argmax(1) == y).mean())


def timed(fn):
    """(median wall seconds per call, process CPU seconds per call)."""
    c0, t0 = time.process_time(), time.perf_counter()
    wall = median_seconds(fn, {"min_runs": 30, "min_seconds": 0.5})
    runs = max(1, round((time.perf_counter() - t0) / max(wall, 1e-9)))
    return wall, (time.process_time() - c0) / runs


def torch_peer(name, model, data, calib, python):
    """PyTorch float32 and x86 int8 (bench/_torch_int8.py) on the same weights, or {}."""
    if not python or name not in ("mlp", "lenet", "resnet"):
        return {}
    _, _, x_test, y_test = data
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        weights = {f"w:{k}": np.asarray(v) for k, v in model.state_dict().items()}
        np.savez(path, x_test=x_test.astype(np.float32), y_test=y_test, calibration=calib,
                 **weights)
        spec = {"model": name, "data": path, "threads": os.environ["TVM_NUM_THREADS"]}
        out = subprocess.run([python, os.path.join(HERE, "_torch_int8.py"), json.dumps(spec)],
                             capture_output=True, text=True, timeout=600)
    if out.returncode:
        return {"torch_error": out.stderr.strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_model(name, epochs, rounds, qat_epochs, python, prune_epochs=0):
    model, data = train(name, epochs)
    x_train, y_train, x_test, y_test = data
    calib, sample = x_train[:512], x_train.shape[1:]
    spec = ("batch", *sample)
    row = {"model": name, "epochs": epochs, "qat_epochs": qat_epochs,
           "float32": accuracy(tvf.compile_inference(model, spec), x_test, y_test)}
    with warnings.catch_warnings(record=True) as kept:
        warnings.simplefilter("always")
        for method in ("minmax", "percentile"):
            q = tvf.quantize(model, calibration=calib, method=method, inputs=spec)
            row[f"int8_{method}"] = accuracy(q, x_test, y_test)
    row["float_kept"] = [f"{n} ({k})" for n, k in q.quantization["float"]]
    row["folded"] = [f"{c}+{b}" for c, b in q.quantization["folded"]]
    row["activation_range"] = [int(q.quantization["scales"][n]["input_qmax"]) for n in
                               q.quantization["int8"][:1]]
    if qat_epochs:
        trained = qat(model, data, qat_epochs, (0, row["activation_range"][0]))
        row["int8_qat"] = accuracy(tvf.quantize(trained, inputs=spec), x_test, y_test)
    if prune_epochs and name != "mlp":
        for sparsity in SPARSITY:
            row[f"pruned{round(100 * sparsity)}"] = pruned(name, model, data, sparsity,
                                                           prune_epochs)
    for batch in (1, 64):
        spec = (batch, *sample)
        modules = {"float32": tvf.compile_inference(model, spec),
                   "int8": tvf.quantize(model, calibration=calib, inputs=spec)}
        _time_modules(row, modules, x_test[:batch], batch, rounds)
    row.update(torch_peer(name, model, data, calib, python))
    return row


def bench_transformer(steps, rounds, val_chars=16384):
    """The char Transformer (examples/char_transformer.py's model), trained `steps` steps:
    validation bits per character float vs int8 (its Linear layers; embeddings, attention's
    fused in-projection, LayerNorms stay float) and the forward's time on windows of CONTEXT
    characters at batch 1 and 64. Calibration: 64 training windows."""
    import char_transformer as ct

    text = tvf.data.load_pydoc_text()[0]
    vocab = tvf.data.char_vocab(text)
    train_ids, val_ids = ct.split(tvf.data.encode(text, vocab))
    val_ids = val_ids[:val_chars + 1]
    tvf.manual_seed(0)
    model = tvf.nn.CausalLM(**ct.model_config(len(vocab)))
    step = ct.compile_train_step(model, "x86")
    with contextlib.redirect_stdout(io.StringIO()):
        ct.train(step, train_ids, steps, 0, every=steps)
    model.load_state_dict(step.state_dict())
    ctx = ct.CONTEXT
    calib = tvf.data.lm_windows(train_ids, 64, ctx, np.random.default_rng(1))[0]
    spec = tvf.TensorSpec(("batch", ctx), "int64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the float-kept layers: listed in the row
        q = tvf.quantize(model, calibration=calib, inputs=spec)
    row = {"model": "transformer", "steps": steps,
           "float32_bpc": ct.bits_per_char(tvf.compile_inference(model, spec), val_ids, ctx),
           "int8_minmax_bpc": ct.bits_per_char(q, val_ids, ctx),
           "int8_layers": q.quantization["int8"],
           "float_kept": [f"{n} ({k})" for n, k in q.quantization["float"]]}
    x_all = calib
    for batch in (1, 64):
        spec = tvf.TensorSpec((batch, ctx), "int64")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            modules = {"float32": tvf.compile_inference(model, spec),
                       "int8": tvf.quantize(model, calibration=calib, inputs=spec)}
        _time_modules(row, modules, x_all[:batch], batch, rounds)
    return row


def _time_modules(row, modules, x, batch, rounds):
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


def summary(rows):
    """The text table of bench/results/int8.txt: accuracy (bits per char for the
    Transformer), then per batch float32 / int8 wall ms, the speedup by wall and by process
    CPU time (the one to trust on a loaded machine), and PyTorch's x86 int8 wall ms."""
    lines = [f"{'model':11} {'float32':>8} {'int8 mm':>8} {'int8 pct':>8} {'int8 QAT':>8}  "
             + "  ".join(f"{'b%d f32/i8 ms' % b:>15} {'x wall':>6} {'x cpu':>6}" for b in (1, 64))
             + f"  {'torch i8 b1/b64 ms':>18}"]
    for r in rows:
        if "float32_bpc" in r:  # bits per character, not accuracy
            pct = (lambda k: f"{r[k + '_bpc']:.3f}b" if k + "_bpc" in r else "-")
        else:
            pct = (lambda k: f"{100 * r[k]:.2f}" if k in r else "-")
        cells = []
        for b in (1, 64):
            cpu = r[f"float32_b{b}_cpu_ms"] / r[f"int8_b{b}_cpu_ms"]
            cells.append(f"{r[f'float32_b{b}_ms']:.3f}/{r[f'int8_b{b}_ms']:.3f}".rjust(15)
                         + f" {r[f'speedup_b{b}']:6.2f} {cpu:6.2f}")
        torch_ms = (f"{r['torch_int8_b1_ms']:.3f}/{r['torch_int8_b64_ms']:.3f}"
                    if "torch_int8_b1_ms" in r else "-")
        lines.append(f"{r['model']:11} {pct('float32'):>8} {pct('int8_minmax'):>8} "
                     f"{pct('int8_percentile'):>8} {pct('int8_qat'):>8}  " + "  ".join(cells)
                     + f"  {torch_ms:>18}")
    lines.append("")
    lines.append(f"{'model':11} {'folded BN':>9} {'torch f32':>9} {'torch i8':>8}  "
                 + " ".join(f"{'pruned %d%%' % round(100 * s):>10}" for s in SPARSITY))
    for r in rows:
        if "float32_bpc" in r:
            continue
        acc = (lambda k: f"{100 * r[k]:.2f}" if k in r else "-")
        lines.append(f"{r['model']:11} {len(r.get('folded', [])):9d} {acc('torch_float32'):>9} "
                     f"{acc('torch_int8'):>8}  " + " ".join(
                         f"{acc('pruned%d' % round(100 * s)):>10}" for s in SPARSITY))
    return "\n".join(lines)


def instructions():
    """{target: {kernel: {instruction: count}}} in the int8 kernels' assembly."""
    import tvm
    from tvm import te

    from tvmfront import schedule
    from tvmfront.ops import int8 as q
    from tvmfront.target import resolve_target

    def kernel(kind, target):
        m = te.placeholder((256 if "dense" in kind else 16,), "float32", "m")
        b = te.placeholder(m.shape, "int32", "b")
        packed = kind.endswith("packed")
        if "dense" in kind:  # the MLP's hidden layer at batch 64
            x = te.placeholder((64, 256), "uint8", "x")
            w = te.placeholder((16, 64, 16, 4) if packed else (256, 256), "int8", "w")
            fn = q.qdense_packed.fn if packed else q.qdense.fn
            out = fn(x, w, b, m, out_dtype="uint8", **({"x_max": 127} if packed else {}))
        else:  # LeNet's second convolution at batch 64
            x = te.placeholder((64, 6, 8, 8), "uint8", "x")
            w = te.placeholder((1, 38, 16, 4) if packed else (16, 6, 5, 5), "int8", "w")
            extra = {"kernel": (5, 5), "x_max": 127} if packed else {}
            out = (q.qconv2d_packed.fn if packed else q.qconv2d.fn)(x, w, b, m,
                                                                     out_dtype="uint8", **extra)
        func = te.create_prim_func([x, w, b, m, out]).with_attr("global_symbol", kind)
        report = {}
        mod = schedule.default_cpu_schedule(tvm.IRModule({kind: func}), target, report=report)
        asm = tvm.compile(mod, target).mod.inspect_source("asm")
        counts = {i: len(re.findall(rf"\b{i}\b", asm)) for i in INSTRUCTIONS}
        return {"schedule": report[kind], **counts}

    targets = {"this CPU": resolve_target("x86"),
               "cascadelake (VNNI, compile only)": tvm.target.Target(
                   {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}),
               "haswell (AVX2, compile only)": tvm.target.Target(
                   {"kind": "llvm", "mcpu": "haswell", "num-cores": 2})}
    kinds = ("dense", "conv2d", "dense_packed", "conv2d_packed")
    return {t: {k: kernel(k, target) for k in kinds} for t, target in targets.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp,lenet,resnet,transformer")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--qat-epochs", type=int, default=5)
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--transformer-steps", type=int, default=300)
    parser.add_argument("--prune-epochs", type=int, default=4,
                        help="fine-tuning epochs per sparsity (LeNet, ResNet); 0: skip")
    parser.add_argument("--asm", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "int8.txt"))
    args = parser.parse_args()
    if args.asm:
        print(json.dumps(instructions(), indent=1))
    python = None if args.no_torch or not os.path.exists(TORCH_PYTHON) else TORCH_PYTHON
    rows = []
    for name in args.models.split(","):
        if name == "transformer":
            rows.append(bench_transformer(args.transformer_steps, args.rounds))
        elif name:
            epochs = args.resnet_epochs if name == "resnet" else args.epochs
            rows.append(bench_model(name, epochs, args.rounds, args.qat_epochs, python,
                                    args.prune_epochs))
        if name:
            print(json.dumps(rows[-1]), flush=True)
    if rows and args.out:
        with open(args.out, "w") as f:
            f.write(f"# python bench/int8.py {' '.join(sys.argv[1:])}\n# CPU: "
                    f"{platform.processor() or platform.machine()}, TVM_NUM_THREADS="
                    f"{os.environ['TVM_NUM_THREADS']}, load {os.getloadavg()}\n"
                    f"{summary(rows)}\n\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
        print(summary(rows))


if __name__ == "__main__":
    main()
