"""tvmfront side of bench/peers.py: runs in .venv (no torch, JAX or matplotlib there).

    .venv/bin/python bench/_peer_tvmfront.py '<json spec>'     (the driver builds the spec)

Sections (spec["section"]): train, infer, ops, compile, cached, tune. Prints one JSON line
{"rows": [...], "info": {...}}; a row is {section, case, contender, seconds | na | error, ...}.
Variants: "tvmfront default" (records=False: default schedules) and "tvmfront tuned" (the
records root spec["records"], default the user store then <repo>/schedules; n/a when it holds no records for this
machine's target key, or none for the module's kernels).
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

# Before TVM creates its thread pool: every core (TVM alone would take half of them on x86).
os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))

# `import tvmfront` alone, as a user's script pays it (numpy included: tvmfront imports it);
# TVM is not imported by it (tests/test_import_lazy.py).
T_IMPORT = time.perf_counter()
import tvmfront as tvf  # noqa: E402

IMPORT_S = time.perf_counter() - T_IMPORT
# TVM itself, and the parts a compile needs (Relax, TE, S-TIR): imported once, by the first
# compile or load of a process; timed apart so the column above stays `import tvmfront`.
T_IMPORT = time.perf_counter()
from tvmfront import _tvm  # noqa: E402

_tvm._tvm_loaded()
import tvm.relax  # noqa: E402,F401
import tvm.s_tir  # noqa: E402,F401
import tvm.te  # noqa: E402,F401

TVM_IMPORT_S = time.perf_counter() - T_IMPORT
import numpy as np  # noqa: E402

from tvmfront import records as records_mod  # noqa: E402
from tvmfront.target import resolve_target, target_key  # noqa: E402
from tvmfront.tuning.measure import time_module  # noqa: E402

from _timing import (emit, guarded, interleaved_medians, median_seconds,  # noqa: E402
                     paired_ratio, read_spec)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "examples"))
import lenet_digits  # noqa: E402  (examples/: LeNet as the main command trains it)
import _tvf_models  # noqa: E402  (the transformer and resnet sections' models)
from _gemm_cases import gemm_apply, gemm_dims, gemm_shapes  # noqa: E402
from _workloads import data, decode_position  # noqa: E402

nn = tvf.nn
NUM_CLASSES = 10


# ---- models: exactly those of examples/mlp_digits.py and examples/lenet_digits.py ----------
def mlp():
    return nn.Sequential(
        nn.Flatten(),                                   # [B, 1, 8, 8] -> [B, 64]
        nn.Linear(64, 256), nn.ReLU(),
        nn.Linear(256, 256), nn.ReLU(),
        nn.Linear(256, 10))


def lenet():
    return lenet_digits.make_model()  # the model of examples/lenet_digits.py, exactly


MODELS = {"mlp": (mlp, (1, 8, 8)), "lenet": (lenet, (1, 16, 16))}


def optimizer(name, hp):
    if name == "sgd":
        return tvf.optim.SGD(lr=hp["lr"], momentum=hp["momentum"])
    return tvf.optim.Adam(lr=hp["lr"], betas=(hp["b1"], hp["b2"]), eps=hp["eps"])


# ---- variants -------------------------------------------------------------------------------
def tuned_records(spec, target):
    """(records argument, None) or (None, why there are none): --records, else what a build
    reads by default (the user store, then the shipped schedules/)."""
    records = spec.get("records")
    if not records_mod.select(records, target):
        where = records or "the user store or schedules/"
        return None, f"no records for {records_mod.store_key(target)} in {where}"
    return records, None


def variants(spec, target):
    """[(contender, records argument or None, reason it is n/a)]."""
    out = [("tvmfront default", False, None)]
    if "tuned" in spec.get("variants", ["default", "tuned"]):
        root, why = tuned_records(spec, target)
        out.append(("tvmfront tuned", root, why))
    return out


def _row(section, case, contender, **kw):
    return dict(section=section, case=case, contender=contender, **kw)


def _timed_or_na(section, case, contender, records, why, build, time_it):
    """One row: build with `records`, time; n/a when tuned records cover none of its kernels."""
    if why:
        return _row(section, case, contender, na=why)
    t0 = time.perf_counter()
    module = build(records)
    compile_s = time.perf_counter() - t0
    tuned = module.build_info.get("tuned_kernels", 0)
    if records is not False and not tuned:
        return _row(section, case, contender, na="no records for its kernels")
    extra = {"tuned_kernels": tuned} if records is not False else {}
    return _row(section, case, contender, seconds=time_it(module), compile_s=compile_s, **extra)


# ---- sections -------------------------------------------------------------------------------
def section_train(spec, target):
    rows = []
    rng = np.random.default_rng(0)
    batch = spec["batch"]
    for model_name in spec["models"]:
        make, x_shape = MODELS[model_name]
        x = rng.standard_normal((batch, *x_shape)).astype("float32")
        y = rng.integers(0, NUM_CLASSES, batch).astype("int64")
        for opt_name in spec["optimizers"]:
            hp = spec["hyper"][opt_name]
            case = f"{model_name} {opt_name}"

            def build(records, make=make, x_shape=x_shape, opt_name=opt_name, hp=hp):
                tvf.manual_seed(0)
                return tvf.compile_training(make(), nn.CrossEntropyLoss(), optimizer(opt_name, hp),
                                            inputs=(batch, *x_shape), labels=(batch,),
                                            target=target, records=records)

            def time_it(module, x=x, y=y, lr=hp["lr"]):
                return median_seconds(lambda: module.step(x, y, lr=lr), spec)

            for contender, records, why in variants(spec, target):
                rows.append(guarded(_timed_or_na, "train", case, contender, records, why, build,
                                    time_it))
                rows[-1].update(section="train", case=case, contender=contender)
    return rows


def section_infer(spec, target):
    rows = []
    rng = np.random.default_rng(0)
    for model_name in spec["models"]:
        make, x_shape = MODELS[model_name]
        for batch in spec["batches"]:
            x = rng.standard_normal((batch, *x_shape)).astype("float32")
            case = f"{model_name} b{batch}"

            def build(records, make=make, x_shape=x_shape, batch=batch):
                tvf.manual_seed(0)
                return tvf.compile_inference(make(), inputs=(batch, *x_shape), target=target,
                                             records=records)

            def time_it(module, x=x):
                return median_seconds(lambda: module(x), spec)

            for contender, records, why in variants(spec, target):
                rows.append(guarded(_timed_or_na, "infer", case, contender, records, why, build,
                                    time_it))
                rows[-1].update(section="infer", case=case, contender=contender)
    return rows


class Gemm(nn.Module):
    """One GEMM-family kernel (bench/_gemm_cases.py): the left operand is the input, the right
    one a parameter."""

    def __init__(self, case):
        super().__init__()
        self.form = gemm_dims(case)[4]
        self.w = nn.Parameter(np.random.default_rng(1).standard_normal(
            gemm_shapes(case)[1]).astype("float32"))

    def forward(self, x):
        if len(x.shape) == 3:
            return tvf.ops.batch_matmul(x, self.w)
        if self.form == "A B^T":
            return tvf.ops.dense(x, self.w)
        if self.form == "A^T B":
            return _at_b(x, self.w)
        return tvf.ops.matmul(x, self.w)


@tvf.op
def _at_b(a, b):
    """[K, M]^T @ [K, N]: the kernel of a Linear layer's d/dw (one kernel, as in a train step;
    ops.transpose before ops.matmul would be a kernel of its own)."""
    k = tvf.te.reduce_axis((0, a.shape[0]), "k")
    return tvf.te.compute((a.shape[1], b.shape[1]),
                          lambda i, j: tvf.te.sum(a[k, i] * b[k, j], axis=k), name="matmul_db")


def _op_model(case):
    """(model, input shape) of one ops case (the driver's OPS table)."""
    if case["kind"] == "gemm":
        return Gemm(case), gemm_shapes(case)[0]
    b, c, k, hw, pad = case["batch"], case["cin"], case["cout"], case["hw"], case["pad"]
    tvf.manual_seed(0)
    return nn.Conv2d(c, k, case["kernel"], padding=pad, bias=False), (b, c, hw, hw)


def _time_kernel(module, x_shape, spec):
    """Median seconds of the module's forward on device-resident inputs (no host copies)."""
    vm = module._vm
    x = tvf._tvm.to_device(np.random.default_rng(0).standard_normal(x_shape).astype("float32"))
    params = module._params
    return median_seconds(lambda: vm["predict"](x, *params), spec)


def _paired_with_numpy(module, case, spec):
    """The default GEMM kernel and numpy's product on the same shapes, timed interleaved in
    this process (bench/_timing.interleaved_medians): {"paired_numpy_ratio": numpy's block
    time / ours, median over rounds, with both medians}. numpy runs here with the driver's
    OPENBLAS_NUM_THREADS, as in _peer_numpy.py."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal(s).astype("float32") for s in gemm_shapes(case))
    vm, params = module._vm, module._params
    x = tvf._tvm.to_device(a)
    blocks = interleaved_medians({"tvmfront": lambda: vm["predict"](x, *params),
                                  "numpy": lambda: gemm_apply(case, a, b)},
                                 rounds=spec.get("paired_rounds", 9))
    return {"paired_numpy_ratio": paired_ratio(blocks, "numpy", "tvmfront"),
            "paired_seconds": statistics.median(blocks["tvmfront"]),
            "paired_numpy_seconds": statistics.median(blocks["numpy"]),
            "paired_rounds": len(blocks["numpy"])}


def section_ops(spec, target):
    rows = []
    tune_budget = spec.get("tune_ops")
    tune_root = spec.get("tune_ops_records")
    for name, case in spec["ops"].items():
        model, x_shape = _op_model(case)
        paired = {}  # the default GEMM's interleaved comparison with numpy

        def build(records, model=model, x_shape=x_shape):
            return tvf.compile_inference(model, inputs=x_shape, target=target, records=records)

        def time_it(module, x_shape=x_shape, case=case, paired=paired):
            seconds = _time_kernel(module, x_shape, spec)
            if case["kind"] == "gemm" and not paired and spec.get("paired_rounds", 9):
                paired.update(_paired_with_numpy(module, case, spec))
            return seconds

        for contender, records, why in variants(spec, target):
            if contender == "tvmfront tuned" and tune_budget:
                row = guarded(_tune_op, model, x_shape, target, tune_budget, tune_root, spec)
            else:
                row = guarded(_timed_or_na, "ops", name, contender, records, why, build, time_it)
            row.update(section="ops", case=name, contender=contender)
            if contender == "tvmfront default":
                row.update(paired)
            rows.append(row)
    return rows


def _tune_op(model, x_shape, target, budget, root, spec):
    """Tune the op's kernel inline (budget trials, records into `root`), time the result."""
    module = tvf.compile_inference(model, inputs=x_shape, target=target, records=False)
    report = tvf.tune(module, budget=budget, records=root, progress=False)
    return dict(seconds=_time_kernel(module, x_shape, spec), tuned_kernels=module.build_info.get(
        "tuned_kernels", 0), tune_s=report.elapsed, trials=report.trials)


def _compile_train(model_name, target, records=False):
    make, x_shape = MODELS[model_name]
    tvf.manual_seed(0)
    t0 = time.perf_counter()
    module = tvf.compile_training(make(), nn.CrossEntropyLoss(), tvf.optim.Adam(lr=1e-3),
                                  inputs=(64, *x_shape), labels=(64,), target=target,
                                  records=records)
    return time.perf_counter() - t0, module.build_info.get("cache")


def section_compile(spec, target):
    """Cold compile (the cache dir is fresh: the driver's temp dir), then the same compile
    again in this process (a cache hit). The first compile of the process also pays TVM's
    lazy initialisation, as a user's first compile does."""
    model_name = spec["model"]
    cold, state = _compile_train(model_name, target)
    again, state2 = _compile_train(model_name, target)
    return [_row("compile", model_name, "cold", seconds=cold, cache=state),
            _row("compile", model_name, "cached, same process", seconds=again, cache=state2)]


def section_cached(spec, target):
    """A new process with the cache dir of an earlier compile: the rebuild is a cache hit."""
    model_name = spec["model"]
    again, state = _compile_train(model_name, target)
    return [_row("compile", model_name, "cached, new process", seconds=again, cache=state,
                 import_s=IMPORT_S, tvm_import_s=TVM_IMPORT_S)]


def section_tune(spec, target):
    """Tune LeNet's train step (Adam) into a fresh records root in chunks of trials; after each
    chunk time the whole step (tvf.tune rebuilds the module with what it kept): when did the
    measured step time reach 90% of the final gain? (Measured steps, not the tuner's estimate:
    MetaSchedule's own timings flush caches and run ~2x slower than the kernels run in a step.)"""
    model_name = spec.get("model", "lenet")
    make, x_shape = MODELS[model_name]
    root = tempfile.mkdtemp(prefix="tvmfront-bench-records-")
    tvf.manual_seed(0)
    module = tvf.compile_training(make(), nn.CrossEntropyLoss(), tvf.optim.Adam(lr=1e-3),
                                  inputs=(64, *x_shape), labels=(64,), target=target,
                                  records=False)
    default_step = time_module(module, min_seconds=1.0)
    budget, chunks = spec["budget"], max(1, int(spec.get("chunks", 4)))
    trace, elapsed, trials, failed, reports = [], 0.0, 0, 0, []
    t0 = time.perf_counter()
    for c in range(chunks):
        n = budget // chunks + (1 if c < budget % chunks else 0)
        if n < 1:
            continue
        report = tvf.tune(module, budget=n, records=root, progress=False, seed=c)
        elapsed += report.elapsed
        trials += report.trials
        failed += report.failed
        reports.append(report.stopped)
        step = time_module(module, min_seconds=1.0)
        trace.append({"elapsed": elapsed, "trials": trials, "step_us": step * 1e6,
                      "default_us": default_step * 1e6})
    total = time.perf_counter() - t0
    tuned_step = min(t["step_us"] for t in trace) * 1e-6 if trace else default_step
    t90 = None
    gain = default_step * 1e6 - tuned_step * 1e6
    for t in trace:
        if gain > 0 and default_step * 1e6 - t["step_us"] >= 0.9 * gain:
            t90 = t
            break
    shutil.rmtree(root, ignore_errors=True)
    return [_row("tune", model_name, "tvmfront tune", seconds=total, search_s=elapsed,
                 trials=trials, failed=failed, stopped=",".join(reports), t90=t90, trace=trace,
                 default_step_s=default_step, tuned_step_s=tuned_step)]


# ---- transformer and resnet (issue 11): the examples' shapes, see _workloads.py --------------
def section_shapes(spec, target):
    """The configuration of spec["workload"] (the driver passes it to every worker)."""
    shapes = {"transformer": _tvf_models.transformer_shapes, "resnet": _tvf_models.resnet_shapes}
    return [_row("shapes", spec["workload"], "config", config=shapes[spec["workload"]]())]


def _workload_rows(section, spec, target, cases):
    """cases: [(case, build(records) -> module, time_it(module) -> seconds, why n/a or None)]."""
    rows = []
    for case, build, time_it, na in cases:
        for contender, records, why in variants(spec, target):
            row = _row(section, case, contender, na=na) if na else guarded(
                _timed_or_na, section, case, contender, records, why, build, time_it)
            rows.append(dict(row, section=section, case=case, contender=contender))
    return rows


def section_transformer(spec, target):
    """Train step (forward, cross-entropy over every position, backward, AdamW with the
    example's clipping), the forward at batch 1 and 64 over the full sequence, and the
    one-token decode step with a KV cache at batch 1 (tvf.nn.CausalLM's decode method)."""
    cfg = spec["config"]
    batch, seq = cfg["batch"], cfg["seq"]
    arrays = data("transformer", cfg, "int64")
    x, y = arrays["x"], arrays["y"]
    lr = cfg["optimizer"]["lr"]

    def train(records):
        tvf.manual_seed(0)
        model, _ = _tvf_models.causal_lm(cfg)
        return tvf.compile_training(model, nn.CrossEntropyLoss(),
                                    _tvf_models.optimizer(cfg),
                                    inputs=tvf.TensorSpec((batch, seq), "int64"),
                                    labels=tvf.TensorSpec((batch, seq), "int64"),
                                    target=target, records=records)

    cases = [(f"train b{batch}", train,
              lambda module: median_seconds(lambda: module.step(x, y, lr=lr), spec), None)]
    for b, xb in arrays["infer"].items():
        def infer(records, b=b):
            tvf.manual_seed(0)
            model, _ = _tvf_models.causal_lm(cfg)
            return tvf.compile_inference(model, inputs=tvf.TensorSpec((b, seq), "int64"),
                                         target=target, records=records)

        cases.append((f"infer b{b}", infer,
                      lambda module, xb=xb: median_seconds(lambda: module(xb), spec), None))
    _, has_cache = _tvf_models.causal_lm(cfg)
    cases.append((f"decode b1 @{decode_position(cfg)}", lambda records: _decoder(cfg, target,
                                                                             records),
                  lambda module: _time_decode(module, cfg, spec),
                  None if has_cache else "tvf.nn.CausalLM with a KV cache not in this tree"))
    return _workload_rows("transformer", spec, target, cases)


def _cache_shape(cfg, batch):
    m = cfg["model"]
    return (m["num_layers"], batch, m["nhead"], m["context"], m["d_model"] // m["nhead"])


def _decoder(cfg, target, records):
    """CausalLM compiled with its decode method at batch 1 (one token [1, 1], its position
    a runtime 0-d int64, the caches), as generation compiles it."""
    tvf.manual_seed(0)
    model, _ = _tvf_models.causal_lm(cfg)
    return tvf.compile_inference(model, inputs=tvf.TensorSpec((1, cfg["seq"]), "int64"),
                                 target=target, records=records,
                                 methods={"decode": model.decode_spec(1)})


def _time_decode(module, cfg, spec):
    """One decode step at the mid-context position, the caches it returns fed back in (rows
    before the position filled, as after a prefill), as a generation loop calls it."""
    rng = np.random.default_rng(0)
    state = {"k": rng.standard_normal(_cache_shape(cfg, 1)).astype("float32"),
             "v": rng.standard_normal(_cache_shape(cfg, 1)).astype("float32")}
    token, pos = np.array([[1]], dtype="int64"), np.array(decode_position(cfg), dtype="int64")

    def step():
        _, state["k"], state["v"] = module.decode(token, pos, state["k"], state["v"])

    return median_seconds(step, spec)


def section_resnet(spec, target):
    """Train step in train mode (BatchNorm batch statistics, running stats updated) with the
    example's optimizer; inference at batch 1 and 64 in eval mode."""
    cfg = spec["config"]
    batch, x_shape = cfg["batch"], tuple(cfg["x_shape"])
    arrays = data("resnet", cfg, "int64")
    x, y = arrays["x"], arrays["y"]
    lr = cfg["optimizer"]["lr"]

    def train(records):
        tvf.manual_seed(0)
        return tvf.compile_training(_tvf_models.resnet(cfg), nn.CrossEntropyLoss(),
                                    _tvf_models.optimizer(cfg),
                                    inputs=(batch, *x_shape), labels=(batch,), target=target,
                                    records=records)

    cases = [(f"train b{batch}", train,
              lambda module: median_seconds(lambda: module.step(x, y, lr=lr), spec), None)]
    for b, xb in arrays["infer"].items():
        def infer(records, b=b):
            tvf.manual_seed(0)
            model = _tvf_models.resnet(cfg)
            model.eval()
            return tvf.compile_inference(model, inputs=(b, *x_shape), target=target,
                                         records=records)

        cases.append((f"infer b{b}", infer,
                      lambda module, xb=xb: median_seconds(lambda: module(xb), spec), None))
    return _workload_rows("resnet", spec, target, cases)


SECTIONS = {"train": section_train, "infer": section_infer, "ops": section_ops,
            "compile": section_compile, "cached": section_cached, "tune": section_tune,
            "shapes": section_shapes, "transformer": section_transformer,
            "resnet": section_resnet}


def main():
    spec = read_spec()
    target = resolve_target(spec.get("target", "x86"))
    rows = SECTIONS[spec["section"]](spec, target)
    emit({"rows": rows, "info": {"target": str(target), "target_key": target_key(target),
                                 "tvm_num_threads": os.environ["TVM_NUM_THREADS"],
                                 "import_s": IMPORT_S,
                                 "tvm_import_s": TVM_IMPORT_S}})
    # Leave without the exit handlers: TVM's thread-pool teardown (ThreadGroup's destructor
    # joining a worker that spins in sched_yield) once held a finished worker for minutes
    # on a loaded machine. Everything is printed and flushed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
