"""The lowering pipeline as data: an ordered list of named stages, IRModule -> IRModule.

Training: forward + loss (traced) -> gradient -> append_optimizer -> lower_grad_calls ->
legalize -> fuse -> schedule (build layer) -> build. `run` writes the IR after each stage
to a directory when asked (argument or TVMFRONT_DUMP_IR).
"""

import os

from . import config
from .debug import insert_finite_checks
from .unread_inputs import drop_unread_inputs
from ._tvm import (PyExprMutator, call_tir_with_grad_op, mutator, relax, relax_call_tir_op,
                   tvm)


@mutator
class _LowerGradCalls(PyExprMutator):
    """call_tir_with_grad -> call_tir. TVM 0.27 has no pass for this (and the VM cannot run
    call_tir_with_grad); once Gradient has run, the gradient link is no longer needed."""

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if call.op.same_as(call_tir_with_grad_op()):
            out = call.ty_args[0]  # one TensorType, or a TupleType for an op with several outputs
            out = list(out.fields) if isinstance(out, relax.TupleType) else out
            return relax.call_tir(call.args[0], call.args[1], out)
        return call


def lower_grad_calls(mod):
    rewriter = _LowerGradCalls(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


_OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves such a kernel alone


def keep_multi_output_kernels_unfused(mod):
    """Mark every kernel that a call_tir with several outputs calls as opaque. FuseOps would
    otherwise fuse it with its producer, and TVM 0.27's FuseTIR then emits a read of the
    producer's intermediate buffer before its definition ("used before its definition")."""
    multi = set()

    def visit(expr):
        if (isinstance(expr, relax.Call) and expr.op.same_as(relax_call_tir_op())
                and isinstance(expr.ty_args[0], relax.TupleType)):
            multi.add(expr.args[0].name_hint)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    for gvar in [g for g in mod.get_global_vars() if g.name_hint in multi]:
        mod[gvar] = mod[gvar].with_attr("op_pattern", _OPAQUE)
    return mod


def _tvm_pass(p):
    return lambda mod: p(mod)


# Generic lowering after the graph-level stages; identical for training and inference.
LOWERING = [
    ("lower_grad_calls", lower_grad_calls),
    ("legalize", _tvm_pass(relax.transform.LegalizeOps())),
    ("annotate_patterns", _tvm_pass(relax.transform.AnnotateTIROpPattern())),
    ("unfused_multi_output", keep_multi_output_kernels_unfused),
    ("drop_unread_inputs", drop_unread_inputs),
    ("fold_constants", _tvm_pass(relax.transform.FoldConstant())),
    ("fuse_ops", _tvm_pass(relax.transform.FuseOps())),
    ("fuse_tir", _tvm_pass(relax.transform.FuseTIR())),
    ("dead_code", _tvm_pass(relax.transform.DeadCodeElimination())),  # keeps public functions
]

# Under tvf.debug_nans(): no fusion (one op per kernel, so a failing check names one op), and
# every kernel's output checked for NaN/Inf as it is computed (tvmfront/debug.py).
DEBUG_NANS_LOWERING = [stage for stage in LOWERING if stage[0] not in ("fuse_ops", "fuse_tir")]
DEBUG_NANS_LOWERING.insert(len(DEBUG_NANS_LOWERING) - 1, ("check_finite", insert_finite_checks))


def lowering(debug_nans=False, graph_stages=()):
    """The lowering stages: LOWERING, or DEBUG_NANS_LOWERING when checking for NaN/Inf, with
    `graph_stages` (name, fn) run right after lower_grad_calls, before legalize (an inference
    module's prepack_weights: it rewrites the call_tir kernels the graph emitted)."""
    stages = DEBUG_NANS_LOWERING if debug_nans else LOWERING
    return stages[:1] + list(graph_stages) + stages[1:] if graph_stages else stages


def run(mod, stages, dump_dir=None):
    """Apply (name, fn) stages in order; dump `NN_name.py` after each when dump_dir is set."""
    dump_dir = dump_dir or config.dump_ir_dir()
    if dump_dir:
        os.makedirs(dump_dir, exist_ok=True)
        _dump(dump_dir, 0, "input", mod)
    for i, (name, fn) in enumerate(stages, 1):
        mod = fn(mod)
        if dump_dir:
            _dump(dump_dir, i, name, mod)
    return mod


def _dump(directory, index, name, mod):
    with open(os.path.join(directory, f"{index:02d}_{name}.py"), "w") as f:
        f.write(mod.script(show_meta=False) if isinstance(mod, tvm.IRModule) else str(mod))
