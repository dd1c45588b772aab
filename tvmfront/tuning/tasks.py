"""Tuning tasks: the distinct kernels of a compiled module, and how often a step calls each."""

from .._tvm import normalize_prim_func, relax, relax_call_tir_op, structural_hash, tvm
from ..errors import TvmfrontError
from .symbolic import tuning_module
from ..prepack import PACKED as PACKED_FORWARD

OTHER_CALLS_WEIGHT = 0.02  # calls outside the main function (eval predict, loss): tuned last


class Kernel:
    """One tuning task: a distinct kernel, the functions calling it and its latencies."""

    def __init__(self, name, names, workload_hash, calls, other_calls, symbolic=None):
        self.name, self.names, self.hash = name, names, workload_hash
        # {kernel name: hash of the symbolic kernel} for names tuned as a specialization
        # (tvmfront.tuning.symbolic); `hash` is then the specialization's
        self.symbolic = dict(symbolic or {})
        self.symbolic_us = None  # (default, with its record) of the symbolic kernel at the sizes
        self.calls, self.other_calls = calls, other_calls
        self.default_us = None  # measured here, default schedule
        self.tuned_us = None  # measured here, with the records (tvmfront tune's report)
        self.record_us = None  # the store's best record (MetaSchedule's measurement)
        self.trials = 0

    @property
    def weight(self):
        return self.calls + OTHER_CALLS_WEIGHT * self.other_calls

    @property
    def share_us(self):
        return self.weight * (self.default_us if self.default_us is not None else 1.0)

    def __repr__(self):
        return f"<kernel {self.name} x{self.calls}: default {self.default_us} us>"


# ---- kernels, calls and default latencies ---------------------------------------------------
def _main_function(module, lowered):
    """The function a call of the module runs: train_step, or an inference module's forward
    (predict_packed where its weights are packed once: transform_params runs once, not per
    call; tvmfront.prepack)."""
    if getattr(module, "kind", None) == "training":
        return "train_step"
    names = {gv.name_hint for gv in lowered.get_global_vars()}
    return PACKED_FORWARD if PACKED_FORWARD in names else "predict"


def _call_counts(lowered, main):
    """({kernel name: calls per call of `main`}, {kernel name: calls per call of each other
    Relax function, summed}). Calls through other Relax functions (train_step calls
    loss_adjoint) count as often as those are called."""
    op = relax_call_tir_op()
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items()
             if isinstance(f, relax.Function)}
    direct = {}
    for name, func in funcs.items():
        kernels, callees = {}, {}
        for block in getattr(func.body, "blocks", []):
            for binding in block.bindings:
                value = binding.value
                if not isinstance(value, relax.Call):
                    continue
                if value.op.same_as(op):
                    k = value.args[0].name_hint
                    kernels[k] = kernels.get(k, 0) + 1
                elif isinstance(value.op, tvm.ir.GlobalVar) and value.op.name_hint in funcs:
                    callees[value.op.name_hint] = callees.get(value.op.name_hint, 0) + 1
        direct[name] = (kernels, callees)
    memo = {}

    def total(name, stack=()):
        if name not in memo:
            kernels, callees = direct[name]
            out = dict(kernels)
            for callee, n in callees.items():
                if callee not in stack:
                    for k, m in total(callee, stack + (name,)).items():
                        out[k] = out.get(k, 0) + n * m
            memo[name] = out
        return memo[name]

    inside = total(main) if main in funcs else {}
    outside = {}
    for name in funcs:
        if name != main:
            for k, m in total(name).items():
                outside[k] = outside.get(k, 0) + m
    return inside, outside


def kernels_of(module, sizes=None):
    """The module's tuning tasks as Kernel rows (default latencies not measured yet).
    Symbolic kernels are tasks at their specialization to `sizes` (tuning.symbolic)."""
    lowered, _ = lowered_of(module)
    inside, outside = _call_counts(lowered, _main_function(module, lowered))
    tuning, symbolic = tuning_module(lowered, sizes)
    by_hash = {}
    for gvar, func in tuning.functions.items():
        by_hash.setdefault(str(structural_hash(normalize_prim_func(func))), []).append(
            gvar.name_hint)
    out = []
    for h, names in by_hash.items():
        out.append(Kernel(names[0], names, h, sum(inside.get(n, 0) for n in names),
                          sum(outside.get(n, 0) for n in names),
                          {n: symbolic[n] for n in names if n in symbolic}))
    return out


def lowered_of(module):
    """(the module's lowered IR, its target); TvmfrontError for a module without IR."""
    lowered, target = getattr(module, "_lowered", None), getattr(module, "_target", None)
    if lowered is None or target is None:
        raise TvmfrontError(
            "tvf.tune needs a module made by tvf.compile_training or tvf.compile_inference in "
            "this process (it tunes the module's IR); a bundle loaded with tvf.load has no IR "
            "to tune: compile the model, tune it, then export")
    return lowered, target

