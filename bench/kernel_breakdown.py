"""Where a tvmfront train step's time goes, by kind of kernel, against the measured FMA peak:
the "what bounds it" of bench/peers.py's transformer and resnet sections, kernel by kernel.

    .venv/bin/python bench/kernel_breakdown.py transformer        # or resnet
    .venv/bin/python bench/kernel_breakdown.py transformer --infer 64 --top 12
    .venv/bin/python bench/kernel_breakdown.py mlp --optimizer adam     # bench/peers.py's MLP
    .venv/bin/python bench/kernel_breakdown.py lenet                    # and its LeNet

The step is compiled with the default schedules (records=False) at the examples' shapes
(bench/_workloads.py's placeholders where an example is missing). Every distinct kernel is
built alone and timed with random inputs (tvmfront.tuning.measure, as tvf.tune measures
them); its FLOPs are TVM's estimate of its loop nest (s_tir.analysis.estimate_tir_flops of
the PrimFunc's body: a multiply-add counts 2); calls per step from the step's Relax functions.
Each kernel is also timed inside the step ("in step": a VM instrument around every call,
wall time, median over --in-step-rounds steps): alone, a kernel's inputs stay in the caches
across repeats; in the step they come from wherever the kernel before left them, so
memory-bound kernels (norms, activations, their gradients) take several times longer there,
and that, not the VM, is most of the gap between the step and the kernels alone. Kinds, by kernel name:
GEMM (dense, matmul), attention (batch_matmul, softmax), conv, and the rest (elementwise,
norms, reductions, copies). The sum of kernel times is set beside the measured step: the
difference is the VM's dispatch, allocation and the host copies. Prints a table; writes
nothing.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import tvmfront as tvf  # noqa: E402
from tvmfront._tvm import s_tir  # noqa: E402
from tvmfront.tuning.measure import measure_kernels, module_call, time_module  # noqa: E402
from tvmfront.tuning.tasks import kernels_of  # noqa: E402

import _tvf_models  # noqa: E402

KINDS = [("attention", re.compile(r"batch_matmul|softmax|attention|causal")),
         ("GEMM", re.compile(r"dense|matmul")),
         ("conv", re.compile(r"conv")),
         ("other", re.compile(r""))]


def kind_of(name):
    return next(k for k, pattern in KINDS if pattern.search(name))


def mlp_shapes(optimizer):
    """bench/peers.py's MLP (64-256-256-10 on 1x8x8 inputs) at its batch, with its optimizer."""
    return {"batch": 64, "x_shape": (1, 8, 8), "optimizer": optimizer,
            "source": f"bench/_peer_tvmfront.py's MLP, batch 64, {optimizer}"}


def lenet_model():
    """examples/lenet_digits.py's model, exactly (as bench/peers.py's LeNet)."""
    import lenet_digits  # examples/, on the path _tvf_models puts it on
    return lenet_digits.make_model()


def build(section, infer, optimizer="sgd"):
    """The compiled module (train step, or the forward at batch `infer`) and its config."""
    tvf.manual_seed(0)
    if section in ("mlp", "lenet"):
        cfg = mlp_shapes(optimizer)
        nn = tvf.nn
        if section == "lenet":
            cfg.update(x_shape=(1, 16, 16), source="examples/lenet_digits.py's model, batch "
                       f"64, {optimizer}")
            model = lenet_model()
        else:
            model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(),
                                  nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        if infer:
            return tvf.compile_inference(model, inputs=(infer, *cfg["x_shape"]),
                                         records=False), cfg
        opt = tvf.optim.SGD(lr=0.05, momentum=0.9) if optimizer == "sgd" else \
            tvf.optim.Adam(lr=1e-3)
        return tvf.compile_training(model, nn.CrossEntropyLoss(), opt,
                                    inputs=(cfg["batch"], *cfg["x_shape"]),
                                    labels=(cfg["batch"],), records=False), cfg
    if section == "transformer":
        cfg = _tvf_models.transformer_shapes()
        model, _ = _tvf_models.causal_lm(cfg)
        seq = cfg["seq"]
        if infer:
            return tvf.compile_inference(model, inputs=tvf.TensorSpec((infer, seq), "int64"),
                                         records=False), cfg
        spec = tvf.TensorSpec((cfg["batch"], seq), "int64")
        return tvf.compile_training(model, tvf.nn.CrossEntropyLoss(),
                                    _tvf_models.optimizer(cfg), inputs=spec,
                                    labels=spec, records=False), cfg
    cfg = _tvf_models.resnet_shapes()
    model = _tvf_models.resnet(cfg)
    if infer:
        model.eval()
        return tvf.compile_inference(model, inputs=(infer, *cfg["x_shape"]), records=False), cfg
    return tvf.compile_training(model, tvf.nn.CrossEntropyLoss(),
                                _tvf_models.optimizer(cfg),
                                inputs=(cfg["batch"], *cfg["x_shape"]), labels=(cfg["batch"],),
                                records=False), cfg


def fma_peak():
    """The measured FMA peak in GFLOP/s (bench/_peer_numpy.py, its own process), or None."""
    out = subprocess.run([sys.executable, os.path.join(HERE, "_peer_numpy.py"),
                          json.dumps({"section": "peak"})], capture_output=True, text=True,
                         cwd=HERE)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    rows = json.loads(lines[-1])["rows"] if lines else []
    return rows[0].get("gflops") if rows else None


def breakdown(module):
    """[(kernel name, kind, calls per step, us per call, FLOPs per call)]."""
    lowered = module._lowered
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items()}
    kernels = [k for k in kernels_of(module) if k.calls]
    latency = measure_kernels(lowered, module._target, {k.name for k in kernels},
                              records=False)
    rows = []
    for k in kernels:
        try:
            flops = float(s_tir.analysis.estimate_tir_flops(funcs[k.name].body))
        except Exception:  # a loop nest TVM cannot count: its time still counts
            flops = 0.0
        rows.append((k.name, kind_of(k.name), k.calls, latency.get(k.name), flops))
    return rows


def in_step_times(module, rounds):
    """({kernel name: median microseconds per step inside the step}, median ms per step of
    the VM's builtins (allocation, shape checks)), over `rounds` instrumented steps. Run
    last: the module's VM keeps the instrument."""
    per_step, started, current = [], {}, {}

    def instrument(func, symbol, before, ret, *_):
        if before:
            started[symbol] = time.perf_counter()
        else:
            current[symbol] = current.get(symbol, 0.0) + \
                (time.perf_counter() - started.pop(symbol)) * 1e6
        return 0

    step = module_call(module)
    module._vm.set_instrument(instrument)
    for _ in range(rounds + 2):  # two warm-up steps
        current.clear()
        step()
        per_step.append(dict(current))
    per_step = per_step[2:]
    names = set().union(*per_step)
    median = {n: statistics.median(r.get(n, 0.0) for r in per_step) for n in names}
    builtins = sum(us for n, us in median.items() if n.startswith("vm.builtin"))
    return median, builtins / 1e3


def report(rows, step_s, peak, top, in_step=None):
    """The table by kind and the `top` kernels; `in_step` ({name: us per step}, builtins ms)
    adds the kernels' time inside the step beside their time alone."""
    timed = [r for r in rows if r[3] is not None]
    total_us = sum(calls * us for _, _, calls, us, _ in timed)
    inside, builtins_ms = in_step if in_step else ({}, None)
    step_col = f" {'in step':>8}" if inside else ""

    def in_step_ms(mine):
        return f" {sum(inside.get(r[0], 0.0) for r in mine) / 1e3:>8.2f}" if inside else ""

    lines = [f"{'kind':<10} {'kernels':>7} {'calls':>6} {'ms/step':>8} {'share':>6} "
             f"{'GFLOP':>7} {'GFLOP/s':>8} {'% peak':>7}{step_col}"]
    for kind, _ in KINDS:
        mine = [r for r in timed if r[1] == kind]
        if not mine:
            continue
        us = sum(c * t for _, _, c, t, _ in mine)
        flop = sum(c * f for _, _, c, _, f in mine)
        g = flop / us / 1e3 if us else 0.0
        lines.append(f"{kind:<10} {len(mine):>7} {sum(r[2] for r in mine):>6} {us / 1e3:>8.2f} "
                     f"{100 * us / total_us:>5.1f}% {flop / 1e9:>7.2f} {g:>8.1f} "
                     + (f"{100 * g / peak:>6.1f}%" if peak else "    n/a") + in_step_ms(mine))
    flop = sum(c * f for _, _, c, _, f in timed)
    lines.append(f"{'all':<10} {len(timed):>7} {sum(r[2] for r in timed):>6} "
                 f"{total_us / 1e3:>8.2f} {100.0:>5.1f}% {flop / 1e9:>7.2f} "
                 f"{flop / total_us / 1e3:>8.1f} "
                 + (f"{100 * flop / total_us / 1e3 / peak:>6.1f}%" if peak else "    n/a")
                 + in_step_ms(timed))
    lines.append(f"kernels alone {total_us / 1e3:.2f} ms; the whole step measured "
                 f"{step_s * 1e3:.2f} ms ({step_s * 1e3 - total_us / 1e3:+.2f} ms outside the "
                 f"kernels, or the kernels run slower in the step than alone)"
                 + (f"; measured FMA peak {peak:.0f} GFLOP/s" if peak else ""))
    if inside:
        lines.append(f"inside the step (instrumented, each call timed): kernels "
                     f"{sum(inside.get(r[0], 0.0) for r in timed) / 1e3:.2f} ms, the VM's "
                     f"builtins {builtins_ms:.2f} ms")
    lines.append(f"\nthe {top} kernels taking the most time per step"
                 + (" (in the step)" if inside else "") + ":")
    lines.append(f"{'kernel':<48} {'kind':<9} {'calls':>5} {'us/call':>9} {'GFLOP/s':>8}"
                 + (f" {'in step us/call':>15}" if inside else ""))

    def weight(r):
        return -inside.get(r[0], 0.0) if inside else -r[2] * r[3]

    for name, kind, calls, us, f in sorted(timed, key=weight)[:top]:
        lines.append(f"{name[:48]:<48} {kind:<9} {calls:>5} {us:>9.1f} "
                     f"{f / us / 1e3 if us else 0:>8.1f}"
                     + (f" {inside.get(name, 0.0) / calls:>15.1f}" if inside else ""))
    untimed = [r[0] for r in rows if r[3] is None]
    if untimed:
        lines.append(f"not timed alone (left out above): {', '.join(untimed)}")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=["transformer", "resnet", "mlp", "lenet"])
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                   help="the optimizer of the mlp and lenet sections")
    p.add_argument("--infer", type=int, default=0, metavar="B",
                   help="the forward at batch B instead of the train step")
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--in-step-rounds", type=int, default=5, metavar="N",
                   help="instrumented steps timing each kernel inside the step (0: none)")
    args = p.parse_args()
    module, cfg = build(args.section, args.infer, args.optimizer)
    step_s = time_module(module, min_seconds=1.0)
    rows = breakdown(module)
    in_step = in_step_times(module, args.in_step_rounds) if args.in_step_rounds else None
    what = f"forward at batch {args.infer}" if args.infer else "train step"
    print(f"{args.section} {what}, default schedules; shapes: {cfg['source']}; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(report(rows, step_s, fma_peak(), args.top, in_step))


if __name__ == "__main__":
    sys.exit(main())
