"""Tuned kernels checked against their default schedules before tuning keeps their records.

MetaSchedule can make wrong code. The case found here: its multi-level tiling puts a kernel's
epilogue (bias add, ReLU) under the tiles of the GEMM (reverse_compute_at), and TVM gives the
epilogue the hull of the region a tile writes. A block writing out[i, jo * P + ji]
(tvmfront.prepack's dense on panels) writes, per tile of jo and ji, several runs of columns
with gaps between them; the epilogue then also computes the gaps, from a buffer that
CompactBufferAllocation made per tile: garbage over columns an earlier tile got right. Of 30
random samples of that kernel's design spaces 5 to 11 were wrong, on x86 and aarch64 alike,
and a run that keeps the fastest candidate keeps such a one now and then (tests/test_rpc.py's
tuned aarch64 build: all 16 outputs off; 2 of 6 tuned x86 builds of a 16-128-4 MLP: NaN).

So every tuning run checks, before its records are merged into the store, the best record of
each kernel: the kernel scheduled by it and by its default schedule, built for this machine
(schedules are target-independent TIR: an aarch64 record is checked on x86), run on the same
random inputs (floats normal, 8-bit integers small values, wider integers zeros: they may be
indices), every buffer compared. A wrong record is dropped and the next best is checked, up
to TRIES; a kernel without a correct one among them keeps no record (its default schedule is
used). Cost: two builds of the kernels that have records per round (one round unless a
record is wrong): 0.3-1 s for the four kernels of a two-layer MLP, 10-29 s for the 44 of a
small CNN's train step all with records (2 cores at load 8-10).
"""

import json
import logging

import numpy as np

from .._tvm import host_arch, prim_func_type, to_device, tvm
from ..build import compile_kernels, runnable_here, schedule_lowered
from ..target import resolve_target
from .._checks import is_float_dtype
from . import policy, store, symbolic

log = logging.getLogger("tvmfront.tune")

# Records checked per kernel, best first, before the kernel keeps none. The wrong ones are
# often the fastest (they skip work): with 3, tests/test_rpc.py's 4-trial aarch64 tune once
# found its 3 best records wrong (errors 5.8, 5.8, inf) and kept nothing, while a 4th was
# right. A check is one build and run of the kernel per try.
TRIES = 8
RTOL, ATOL = 1e-3, 1e-4  # float reassociation, and atol relative to the output's magnitude


def host_target(target):
    """The target records are checked on: `target` where this machine runs it, else this
    machine's CPU (a schedule's TIR means the same on every CPU)."""
    if target.kind.name == "llvm" and runnable_here(target):
        return target
    return resolve_target("arm" if host_arch() == "aarch64" else "x86")


def _inputs(funcs, seed=0):
    """{kernel name: [numpy array per parameter]}: floats standard normal, 8-bit integers
    (quantized data) small random values, wider integers zeros (they may be indices)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, func in funcs.items():
        arrays = []
        for buf in func.params:  # TVM 0.27: a PrimFunc's parameters are its buffers
            shape, dtype = [int(d) for d in buf.shape], str(buf.dtype)
            if dtype.startswith("float"):
                arrays.append(rng.standard_normal(shape).astype(dtype))
            elif dtype in ("int8", "uint8"):
                arrays.append(rng.integers(0 if dtype == "uint8" else -8, 8, shape, dtype))
            else:
                arrays.append(np.zeros(shape, dtype))
        out[name] = arrays
    return out


def _static_kernels(lowered, names):
    """{name: PrimFunc} of the named kernels whose shapes are all static."""
    funcs = {}
    for gvar, func in lowered.functions.items():
        if gvar.name_hint in names and isinstance(func, prim_func_type()) \
                and not symbolic.names(func):
            funcs[gvar.name_hint] = func
    return funcs


def run_kernels(lowered, target, selection, names, inputs):
    """{kernel name: its buffers after one call} of the named kernels of `lowered`, scheduled
    for `target` by `selection` (a policy.Selection; empty: default schedules), built for
    this machine and called on copies of `inputs`."""
    alone = tvm.IRModule({g: f for g, f in lowered.functions.items() if g.name_hint in names})
    scheduled, _ = schedule_lowered(alone, target, selection)  # these kernels only: cheaper
    funcs = {g.name_hint: f.with_attr("global_symbol", g.name_hint)
             for g, f in scheduled.functions.items()}
    lib = compile_kernels(tvm.IRModule(funcs), host_target(target))
    lib = lib.jit() if hasattr(lib, "jit") else lib
    out = {}
    for name in funcs:
        tensors = [to_device(a.copy()) for a in inputs[name]]
        lib[name](*tensors)
        out[name] = [t.numpy() for t in tensors]
    return out


def max_error(got, want):
    """0.0 when every buffer of `got` matches `want` (floats within RTOL / ATOL x the
    magnitude, NaN where NaN; integers exactly), else the largest excess found (inf for a
    mismatch of integers or of NaNs)."""
    worst = 0.0
    for g, w in zip(got, want):
        if not is_float_dtype(g.dtype):
            worst = max(worst, 0.0 if np.array_equal(g, w) else np.inf)
            continue
        if not np.array_equal(np.isnan(g), np.isnan(w)):
            return np.inf
        g, w = np.nan_to_num(g, nan=0.0), np.nan_to_num(w, nan=0.0)
        scale = float(np.max(np.abs(w[np.isfinite(w)]), initial=1.0))
        excess = np.abs(g - w) - (RTOL * np.abs(w) + ATOL * scale)
        worst = max(worst, float(np.max(excess, initial=0.0)))
    return worst


def _by_workload(db):
    """{workload index: [records, fastest first]} of the valid records of `db`."""
    grouped = {}
    for w, rec in db.records:
        if store.mean_seconds(rec) is not None:
            grouped.setdefault(w, []).append(rec)
    for recs in grouped.values():
        recs.sort(key=store.mean_seconds)
    return grouped


def check_database(work, lowered, target, kernels):
    """Check the records of the database folder `work` (a tuning run's, before its merge) on
    the kernels of `lowered` (the module tuned); rewrite `work` without the wrong ones.
    kernels: {workload hash: kernel name}. Records of other workloads (symbolic kernels)
    are left as they are. Returns ({kernel name: [error of each wrong record dropped]},
    [(workload hash, record) dropped as wrong]): the run's database holds the store's best
    records too (the search starts from them), and prune() takes the wrong ones out of the
    store as well."""
    db = store.read(work)
    if db is None or target.kind.name != "llvm":
        return {}, []
    grouped = _by_workload(db)
    names = {w: kernels[db.workloads[w][0]] for w in grouped if db.workloads[w][0] in kernels}
    funcs = _static_kernels(lowered, set(names.values()))
    names = {w: n for w, n in names.items() if n in funcs}
    if not names:
        return {}, []
    inputs = _inputs(funcs)
    want = run_kernels(lowered, target, policy.Selection(), set(funcs), inputs)
    wrong, dropped, verified, pending = {}, [], {}, dict(names)
    for attempt in range(TRIES):
        trying = {w: grouped[w][attempt] for w in pending if attempt < len(grouped[w])}
        if not trying:
            break
        chosen = store.Database(db.workloads, sorted(trying.items()))
        got = run_kernels(lowered, target, policy.Selection(chosen),
                          {names[w] for w in trying}, inputs)
        for w, rec in trying.items():
            error = max_error(got[names[w]], want[names[w]])
            if error == 0.0:
                verified[w] = rec
                del pending[w]
            else:
                wrong.setdefault(names[w], []).append(error)
                dropped.append((db.workloads[w][0], rec))
                log.warning("kernel %s: a tuned schedule computes wrong results (error %.3g "
                            "past the tolerance, against its default schedule): record "
                            "dropped", names[w], error)
    if wrong:  # kept: each checked kernel's correct record, and the records of the others
        kept = [(w, rec) for w, rec in db.records
                if (w not in names and store.mean_seconds(rec) is not None)
                or verified.get(w) is rec]
        store.write(work, store.Database(db.workloads, kept), meta=db.meta or None)
    return wrong, dropped


def prune(folder, dropped):
    """Take the records `dropped` ([(workload hash, record)], check_database's) out of the
    store `folder`, under its lock; returns how many it held."""
    if not dropped or not store.is_database(folder):
        return 0
    bad = {(h, _trace_text(rec)) for h, rec in dropped}
    with store.locked(folder):
        db = store.read(folder, warn=False)
        if db is None:
            return 0
        kept = [(w, rec) for w, rec in db.records
                if (db.workloads[w][0], _trace_text(rec)) not in bad]
        if len(kept) < len(db.records):
            store.write(folder, store.Database(db.workloads, kept), meta=db.meta or None)
    return len(db.records) - len(kept)


def _trace_text(record):
    return json.dumps(record[0], sort_keys=True)


__all__ = ["TRIES", "check_database", "host_target", "max_error", "prune", "run_kernels"]
