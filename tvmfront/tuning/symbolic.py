"""Tuning records for kernels with symbolic dimensions (a module compiled for any batch size).

MetaSchedule (TVM 0.27) cannot tune such a kernel itself: its runner makes random inputs from
the kernel's argument shapes (ArgInfo refuses a symbolic one), and SamplePerfectTile on a loop
of symbolic extent ignores its decision and returns [None, 1, 1, ...]: the loop is never
tiled, and replaying that sample from a trace fails ("old_rv != nullptr && new_rv != nullptr"
in TranslateAddOutputRVs). So, as TVM users do:

1. tvf.tune specializes each symbolic kernel at a representative size (sizes=, default
   DEFAULT_SIZE per name) and tunes the static specialization: a record of the static kernel,
   keyed by its structural hash as usual.
2. It then *generalizes* the best record of each specialization into a record of the symbolic
   kernel itself (keyed by the symbolic kernel's structural hash, so a fresh compile of the
   same symbolic module finds it): every SamplePerfectTile on a loop whose extent is symbolic
   is removed, and the split that used it takes the sampled inner factors as constants with
   an inferred outer factor (``split(loop, [None, f1, f2, f3])``): the outer loop runs
   ceil(n / (f1 f2 f3)) times and TIR guards the tail with a predicate, so the schedule is
   correct at every size (1, and sizes that no tile divides), not only the tuned one.
3. A build replays such a record onto the symbolic kernel (apply); a record that does not
   replay leaves the kernel to the default schedule (logged, named in build_info).
"""

import logging

from .._checks import is_whole
from .._tvm import meta_schedule, normalize_prim_func, prim_func_type, s_tir, \
    schedule_trace_types, structural_hash, structural_map, \
    tirx, tvm

log = logging.getLogger("tvmfront.tune")

DEFAULT_SIZE = 64  # a symbolic dimension is tuned at this size unless tune(sizes=) says


class SymbolicError(ValueError):
    """A symbolic kernel that cannot be specialized, or a record that cannot be generalized."""


# ---- which kernels are symbolic ----------------------------------------------------------------
def is_scalar(param):
    """Whether a PrimFunc parameter is a scalar (not a buffer)."""
    return isinstance(param.ty, tvm.ir.PrimType)


def _shape_vars(func):
    """{name: [tirx.Var]} of the variables in `func`'s buffer shapes, with the integer scalar
    parameters that give them (Relax passes a size no shape gives alone as one, e.g. batch
    and seq of a [batch * seq, d] buffer)."""
    out = {}
    for param in func.params:
        if is_scalar(param):
            continue
        for dim in param.shape:
            if isinstance(dim, tirx.IntImm):
                continue
            for v in tirx.analysis.undefined_vars(dim, []):
                out.setdefault(v.name, []).append(v)
    for param in func.params:
        if is_scalar(param) and any(param.same_as(v) for v in out.get(param.name, ())):
            out[param.name].append(param)
    return out


def names(func):
    """The symbolic dimension names of a PrimFunc (empty for a static kernel)."""
    return set(_shape_vars(func))


def module_names(mod):
    """The symbolic dimension names of all PrimFuncs of `mod`."""
    return {n for f in mod.functions.values() if isinstance(f, prim_func_type())
            for n in names(f)}


def workload_hash(func):
    """The structural hash records key `func` by (as tvmfront.tuning.tasks)."""
    return str(structural_hash(normalize_prim_func(func)))


def symbolic_kernels(mod):
    """{kernel name: (PrimFunc, workload hash)} of the symbolic PrimFuncs of `mod`."""
    return {gv.name_hint: (f, workload_hash(f)) for gv, f in mod.functions.items()
            if isinstance(f, prim_func_type()) and names(f)}


# ---- specialization (what tuning measures) -----------------------------------------------------
def specialize(func, sizes=None):
    """`func` with every symbolic dimension replaced by its size (sizes: {name: int}, names
    missing there take DEFAULT_SIZE). SymbolicError when a shape does not become static."""
    sizes = dict(sizes or {})
    found = _shape_vars(func)
    if not found:
        return func
    values = {}
    for name, vs in found.items():
        size = sizes.get(name, DEFAULT_SIZE)
        for v in vs:
            values[v] = tirx.IntImm(str(getattr(v.ty, "dtype", "int64")), int(size))

    def bind(v):
        for var, value in values.items():
            if v.same_as(var):
                return value
        return v

    scalars = {p: values[p] for p in func.params if is_scalar(p) and p in values}
    out = func.specialize(scalars) if scalars else func  # drops those parameters
    out = structural_map(out, (tvm.ir.Var, bind), order="post")
    for _ in range(5):  # batch * seq became 64 * 16: make it 1024 (nested: a few rounds)
        still = [str(d) for p in out.params if not is_scalar(p) for d in p.shape
                 if not isinstance(d, tirx.IntImm)]
        if not still:
            return out
        for kind, fold in _FOLD.items():
            out = structural_map(out, (kind, _folder(fold)), order="post")
    raise SymbolicError(f"shape dimension(s) {', '.join(still)} stay symbolic after binding "
                        f"{sorted(found)}")


_FOLD = {tirx.Mul: lambda a, b: a * b, tirx.Add: lambda a, b: a + b,
         tirx.Sub: lambda a, b: a - b, tirx.FloorDiv: lambda a, b: a // b,
         tirx.FloorMod: lambda a, b: a % b, tirx.Min: min, tirx.Max: max}


def _folder(fold):
    def folded(e):
        if isinstance(e.a, tirx.IntImm) and isinstance(e.b, tirx.IntImm) and (
                fold not in (_FOLD[tirx.FloorDiv], _FOLD[tirx.FloorMod]) or e.b.value):
            return tirx.IntImm(str(e.a.ty.dtype), fold(e.a.value, e.b.value))
        return e
    return folded


def evaluate(expr, sizes=None):
    """The int value of a shape expression (IntImm, a symbolic dimension, arithmetic on
    them) at `sizes` ({name: size}, DEFAULT_SIZE for a name not there)."""
    if isinstance(expr, int):
        return expr
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tvm.ir.Var):
        return int((sizes or {}).get(expr.name, DEFAULT_SIZE))
    for kind, fold in _FOLD.items():
        if isinstance(expr, kind):
            return fold(evaluate(expr.a, sizes), evaluate(expr.b, sizes))
    raise SymbolicError(f"cannot evaluate the shape expression {expr}")


def check_sizes(sizes):
    """tune(sizes=...) validated: {name: positive int}."""
    if sizes is None:
        return {}
    if not isinstance(sizes, dict):
        raise TypeError(f"sizes must be a dict {{dimension name: size}}, e.g. {{'batch': 64}}, "
                        f"got {type(sizes).__name__}")
    for name, size in sizes.items():
        if not isinstance(name, str) or not is_whole(size, least=1):
            raise ValueError(f"sizes: {name!r}: {size!r} must be a positive int for a "
                             f"dimension name")
    return {name: int(size) for name, size in sizes.items()}


def tuning_module(lowered, sizes=None):
    """(IRModule of `lowered`'s PrimFuncs with the symbolic ones specialized at `sizes`,
    {kernel name: hash of the symbolic kernel} for those specialized). A symbolic kernel that
    cannot be specialized is left out (logged): it keeps its default schedule."""
    funcs, symbolic = {}, {}
    for gv, func in lowered.functions.items():
        if not isinstance(func, prim_func_type()):
            continue
        if names(func):
            try:
                funcs[gv.name_hint] = specialize(func, sizes)
            except SymbolicError as err:
                log.warning("kernel %s is not tuned (its default schedule stays): %s",
                            gv.name_hint, err)
                continue
            symbolic[gv.name_hint] = workload_hash(func)
        else:
            funcs[gv.name_hint] = func
    return tvm.IRModule(funcs), symbolic


# ---- generalization (a static record made symbolic) ---------------------------------------------
def _without_samples(trace, drop):
    """`trace` with the SamplePerfectTile instructions at indices `drop` removed: their
    first output (the outer factor) becomes None (inferred), the others their decided
    constants, wherever later instructions use them."""
    Instruction, Trace = schedule_trace_types()

    decisions = dict(trace.decisions)
    replace, insts, kept = [], [], {}

    def sub(x):
        if x is None or isinstance(x, (int, float, str)):
            return x
        for rv, value in replace:
            if x.same_as(rv):
                return value
        return x

    for i, inst in enumerate(trace.insts):
        decision = decisions.get(inst)
        if i in drop:
            factors = [int(f) for f in decision]
            replace.append((inst.outputs[0], None))
            replace += [(rv, tirx.IntImm("int64", f))
                        for rv, f in zip(list(inst.outputs)[1:], factors[1:])]
            continue
        new = Instruction(inst.kind, [sub(x) for x in inst.inputs], inst.attrs,
                          list(inst.outputs))
        insts.append((i, new))
        if decision is not None:
            kept[new] = decision
    return Trace([new for _, new in insts], kept), [i for i, _ in insts]


def generalize(trace, func):
    """(a Trace that schedules the symbolic PrimFunc `func` as `trace` schedules its
    specialization, the schedule it gives). SymbolicError when it does not replay."""
    mod = tvm.IRModule({"main": func})
    drop = set()
    for _ in range(len(trace.insts) + 1):
        candidate, origin = _without_samples(trace, drop)
        insts = list(candidate.insts)
        sch = s_tir.Schedule(mod)
        found = []

        def provider(inst, inputs, attrs, decision):
            # called just before each sampling instruction runs: the loop is known here
            if inst.kind.name == "SamplePerfectTile" and \
                    not isinstance(sch.get(inputs[0]).extent, tirx.IntImm):
                found.append(origin[next(i for i, x in enumerate(insts) if x.same_as(inst))])
            return decision

        try:
            candidate.apply_to_schedule(sch, remove_postproc=False, decision_provider=provider)
            return candidate, sch
        except Exception as err:  # noqa: BLE001 - TVM raises several kinds
            if not found:
                raise SymbolicError(f"the record does not replay on the symbolic kernel: "
                                    f"{_last_line(err)}") from None
            drop |= set(found)
    raise SymbolicError("the record does not replay on the symbolic kernel")


def add_generalized(work, lowered, tuning, symbolic, target):
    """Into the MetaSchedule database folder `work`: for every symbolic kernel (symbolic:
    {name: symbolic hash}) whose specialization in `tuning` has a record there, the record
    generalized to the symbolic kernel of `lowered` (same measured time, target and args).
    Returns {name: why} for those that could not be generalized (logged)."""
    ms = meta_schedule(target)
    db = ms.database.JSONDatabase(work_dir=work)
    failed = {}
    for name in sorted(symbolic):
        static_mod = normalize_prim_func(tuning[name])
        if not db.has_workload(static_mod):
            continue
        records = db.get_top_k(db.commit_workload(static_mod), 1)
        if not records:
            continue
        best = records[0]
        try:
            trace, _ = generalize(best.trace, lowered[name])
        except SymbolicError as err:
            failed[name] = str(err)
            log.warning("kernel %s: its tuned record does not carry over to the symbolic "
                        "kernel (it keeps its default schedule at other sizes): %s", name, err)
            continue
        workload = db.commit_workload(normalize_prim_func(lowered[name]))
        db.commit_tuning_record(ms.database.TuningRecord(
            trace, workload, best.run_secs, best.target, best.args_info))
    return failed


# ---- applying records to symbolic kernels (build) ----------------------------------------------
def apply(mod, records, failures=None):
    """(`mod` with each symbolic kernel that has a record in `records` ({workload hash: trace
    JSON}) scheduled by replaying it, how many were). A record that does not replay leaves
    its kernel unscheduled (for the default schedule); `failures`, when a dict, receives
    {kernel name: cause}."""
    _, Trace = schedule_trace_types()

    updates = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, prim_func_type()) or not names(func):
            continue
        trace = records.get(workload_hash(func))
        if trace is None:
            continue
        sch = s_tir.Schedule(tvm.IRModule({"main": func}))
        try:
            Trace.apply_json_to_schedule(trace, sch)
        except Exception as err:  # noqa: BLE001 - TVM raises several kinds
            cause = _last_line(err)
            log.warning("kernel %s: its tuning record does not replay on the symbolic kernel "
                        "(default schedule used): %s", gv.name_hint, cause)
            if failures is not None:
                failures[gv.name_hint] = cause
            continue
        updates[gv] = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    if not updates:
        return mod, 0
    mod = mod.clone()
    for gv, func in updates.items():
        mod.update_func(gv, func)
    return mod, len(updates)


def _last_line(err):
    lines = str(err).strip().splitlines()
    return lines[-1] if lines else type(err).__name__
