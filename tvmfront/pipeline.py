"""The lowering pipeline as data: an ordered list of named stages, IRModule -> IRModule.

Training: forward + loss (traced) -> gradient -> append_optimizer -> lower_grad_calls ->
legalize -> fuse -> schedule (build layer) -> build. `run` writes the IR after each stage
to a directory when asked (argument or TVMFRONT_DUMP_IR).
"""

import os

from . import config
from .debug import insert_finite_checks
from .merge_elementwise import merge_elementwise
from .tir_walk import statements
from .unread_inputs import drop_unread_inputs
from ._tvm import (PyExprMutator, call_tir_with_grad_op, mutator, prim_func_type, relax,
                   relax_call_tir_op, tirx, tvm)


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


@mutator
class _Untuple(PyExprMutator):
    """`t = (g0, g1); a = t[0]` -> uses of `a` read `g0`, except where g0 is computed by one
    of the `kept` kernels or `a` is read by one: that read goes through a tuple of its own,
    `a = (g0,)[0]`, so FuseOps still leaves both kernels unfused."""

    kept = frozenset()  # names of the kernels that stay unfused
    feeding = frozenset()  # variables the kept kernels read

    def visit_var_binding_(self, binding):
        value = binding.value
        bound = self._bound(value.tuple_value) if isinstance(value, relax.TupleGetItem) else None
        if not isinstance(bound, relax.Tuple):
            return super().visit_var_binding_(binding)
        field = bound.fields[value.index]
        if self._kernel(field) in self.kept or binding.var in self.feeding:
            alone = self.builder_.emit(relax.Tuple([field]))
            self.builder_.emit_normalized(relax.VarBinding(binding.var,
                                                           relax.TupleGetItem(alone, 0)))
        elif isinstance(field, relax.Var) and (isinstance(binding.var, relax.DataflowVar)
                                               or not isinstance(field, relax.DataflowVar)):
            self.set_var_remap(binding.var, field)  # a dataflow var must not leave its block
        else:  # a constant (the zeros of an input with no gradient), or a block's output
            super().visit_var_binding_(binding)

    def _bound(self, expr):
        return self.lookup_binding(expr) if isinstance(expr, relax.Var) else None

    def _kernel(self, expr):
        call = self._bound(expr)
        if (isinstance(call, relax.Call) and call.op.same_as(relax_call_tir_op())
                and isinstance(call.args[0], relax.GlobalVar)):
            return call.args[0].name_hint
        return None


def untuple_gradients(mod):
    """Relax's Gradient binds an op's input gradients into a tuple and reads them back out
    of it: the tuple is a second consumer of every gradient kernel, so FuseOps fused none
    with its consumer (BatchNorm's two dx pieces with their sum, an activation's gradient
    with a mean's, a dense d/dx with gelu_grad). Reads of a tuple field become the field
    itself, then the unread tuples go. Kernels that read a window (convolutions, max-pool's
    gradient) and the gradients they read keep a tuple: a conv d/dx fused with the relu_grad
    after it (each register tile's write-back reading relu's output) made the ResNet step
    1.5% slower than apart; max-pool's gradient fused with relu_grad, or with Flatten's
    gradient before it, lost its window schedule (LeNet's: 19 -> 514 us, and 8 -> 19 us)."""
    rewriter = _Untuple(mod)
    rewriter.kept = frozenset(gv.name_hint for gv, f in mod.functions.items()
                              if isinstance(f, prim_func_type()) and _reads_a_window(f))
    rewriter.feeding = frozenset(_arguments_of(mod, rewriter.kept))
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get())


def _arguments_of(mod, kernels):
    """The variables that calls of the named kernels read."""
    found = []

    def visit(expr):
        if (isinstance(expr, relax.Call) and expr.op.same_as(relax_call_tir_op())
                and isinstance(expr.args[0], relax.GlobalVar)
                and expr.args[0].name_hint in kernels):
            found.extend(a for a in expr.args[1].fields if isinstance(a, relax.Var))

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


def _reads_a_window(func):
    """Whether a block of a kernel reads a window: an index mixing an output and a reduction
    variable (a convolution's h + kh), or a region of several elements placed by an output
    variable (max-pool's gradient reads a 2 x 2 window of its input; not BatchNorm's
    coefficients, all four rows of a channel's column)."""
    for node in statements(func.body):
        iter_vars = getattr(node, "iter_vars", None) or []
        reduce = {iv.var.name for iv in iter_vars
                  if int(iv.iter_type) == int(tirx.IterVar.CommReduce)}
        spatial = {iv.var.name for iv in iter_vars} - reduce
        for r in (r for region in (node.reads if iter_vars else []) for r in region.region):
            names = {v.name for v in tirx.analysis.undefined_vars(r.min)}
            several = not (isinstance(r.extent, tirx.IntImm) and r.extent.value == 1)
            if names & spatial and (names & reduce or several):
                return True
    return False


def outputs_early(mod):
    """Each binding of a block's output (a parameter's gradient: a bias's or LayerNorm's
    weight's column sums, a weight's d/dw) right after the last binding it reads. Gradient
    binds them in that place, but once the gradient tuples are gone (untuple_gradients) their
    one reader is the function's return, and FuseOps emits them all at the end: reading inputs
    computed long before, from memory (the Transformer's bias and LayerNorm gradients took
    1.0 ms more per step so)."""
    mod = mod.clone()
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            blocks = [_outputs_early(b) if isinstance(b, relax.DataflowBlock) else b
                      for b in func.body.blocks]
            mod[gvar] = relax.Function(func.params, relax.SeqExpr(blocks, func.body.body),
                                       func.ret_ty, func.is_pure, func.attrs)
    return mod


def _outputs_early(block):
    order = []
    for binding in block.bindings:
        if isinstance(binding.var, relax.DataflowVar) or isinstance(binding, relax.MatchCast):
            order.append(binding)
            continue
        # after what it reads, and after every match_cast (it may define a shape it uses)
        reads = set(relax.analysis.free_vars(binding.value))
        order.insert(max((i + 1 for i, b in enumerate(order)
                          if b.var in reads or isinstance(b, relax.MatchCast)), default=0),
                     binding)
    return relax.DataflowBlock(order)


# Generic lowering after the graph-level stages; identical for training and inference.
LOWERING = [
    ("lower_grad_calls", lower_grad_calls),
    ("legalize", _tvm_pass(relax.transform.LegalizeOps())),
    ("annotate_patterns", _tvm_pass(relax.transform.AnnotateTIROpPattern())),
    ("unfused_multi_output", keep_multi_output_kernels_unfused),
    ("drop_unread_inputs", drop_unread_inputs),
    ("fold_constants", _tvm_pass(relax.transform.FoldConstant())),
    ("untuple_gradients", untuple_gradients),
    ("fuse_ops", _tvm_pass(relax.transform.FuseOps())),
    ("fuse_tir", _tvm_pass(relax.transform.FuseTIR())),
    ("merge_elementwise", merge_elementwise),  # FuseTIR again, on the groups it makes
    ("outputs_early", outputs_early),
    # Reshape kernels become views: Flatten's, and the copies a derived gradient leaves (a bias
    # add's or an add's d/dx once drop_unread_inputs removed what it ignores: FuseOps cannot
    # fuse a copy into the GEMM that reads it). TVM's build pipeline does this only for
    # kernels it recognizes as reshapes, which a scheduled (vectorized) copy no longer is.
    ("reshape_views", _tvm_pass(relax.transform.RewriteDataflowReshape())),
    ("dead_code", _tvm_pass(relax.transform.DeadCodeElimination())),  # keeps public functions
]

# Under tvf.debug_nans(): no fusion (one op per kernel, so a failing check names one op), and
# every kernel's output checked for NaN/Inf as it is computed (tvmfront/debug.py).
DEBUG_NANS_LOWERING = [stage for stage in LOWERING if stage[0] not in ("fuse_ops", "fuse_tir",
                                                                  "merge_elementwise")]
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
