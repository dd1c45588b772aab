"""Kernel inputs no kernel reads, dropped from the kernels and their calls before fusion.

A derived gradient kernel takes every input of its op, read or not: the d/dx of ``x + b`` is
the incoming gradient alone, yet its call still passes ``x``. Such a call keeps ``x``, the
output of a GEMM say, alive until the backward and, worse, gives it a second consumer, so
FuseOps cannot fuse the GEMM with its bias add or activation: the step writes and reads the
intermediate once more (a memory pass per layer, and on a 2-core machine memory passes cost
more than the kernels alone suggest: bench/kernel_breakdown.py's "in step" column). Here
every such input goes, from the PrimFunc and from every call_tir that calls it.
"""

from ._tvm import PyExprMutator, mutator, prim_func_type, relax, relax_call_tir_op, tirx, tvm


def drop_unread_inputs(mod):
    """`mod` with every kernel input that the kernel's body never reads removed (the kernel's
    parameter and the argument at each of its call sites). A kernel called other than by
    call_tir, or whose call sites disagree on the number of inputs, is left as it is."""
    sites = _call_sites(mod)
    plans = {}
    for gvar, func in mod.functions.items():
        inputs = sites.get(gvar.name_hint)
        if not isinstance(func, prim_func_type()) or inputs is None:
            continue
        unread = _unread(func, inputs)
        if unread:
            slim = _without_params(func, unread)
            if slim is not None:
                plans[gvar.name_hint] = (unread, slim)
    if not plans:
        return mod
    # A kernel's GlobalVar carries its signature's type: the slim kernels get new ones, made
    # by the builder (which types them) in a module without the old ones.
    rest = tvm.IRModule({g: f for g, f in mod.functions.items() if g.name_hint not in plans},
                        mod.attrs, mod.global_infos)
    rewriter = _DropArgs(rest, {})
    for name, (unread, slim) in plans.items():
        rewriter.unread[name] = (rewriter.builder_.add_func(slim, name), unread)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def _call_sites(mod):
    """{kernel name: number of inputs} for the kernels that only call_tir calls (each call
    passing its inputs as a tuple, every call the same number); other kernels are absent."""
    inputs, refused, seen, calls = {}, set(), {}, {}

    def visit(expr):
        if isinstance(expr, relax.GlobalVar):
            seen[expr.name_hint] = seen.get(expr.name_hint, 0) + 1
        if not (isinstance(expr, relax.Call) and expr.op.same_as(relax_call_tir_op())
                and isinstance(expr.args[0], relax.GlobalVar)):
            return
        name = expr.args[0].name_hint
        args = expr.args[1]
        count = len(args.fields) if isinstance(args, relax.Tuple) else None
        if count is None or inputs.setdefault(name, count) != count:
            refused.add(name)
        calls[name] = calls.get(name, 0) + 1

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    # a kernel also referenced elsewhere (another call form, a tuple of functions) keeps its
    # parameters: only call_tir sites are rewritten
    return {name: n for name, n in inputs.items()
            if name not in refused and seen.get(name) == calls.get(name)}


def _unread(func, inputs):
    """Indices of the first `inputs` parameters the body never mentions."""
    used = tirx.analysis.undefined_vars(func.body, [])
    return [i for i, param in enumerate(func.params[:inputs])
            if not any(param.same_as(u) for u in used)]


def _without_params(func, drop):
    """`func` without the parameters at `drop`, or None when a dropped input's shape was the
    only one to define a symbolic size (a batch `n`) that the others' shapes lack."""
    kept = [p for i, p in enumerate(func.params) if i not in drop]
    dropped = [p for i, p in enumerate(func.params) if i in drop]
    used = tirx.analysis.undefined_vars(func.body, list(func.params))
    defined = _shape_vars(kept)
    for var in _shape_vars(dropped):
        if any(var.same_as(u) for u in used) and not any(var.same_as(k) for k in defined):
            return None
    return tirx.PrimFunc(kept, func.body, func.ret_type, func.attrs)


def _shape_vars(params):
    """The symbolic sizes in the shapes of buffer parameters `params`."""
    found = []
    for param in params:
        for dim in getattr(param, "shape", ()) or ():
            if not isinstance(dim, int) and not hasattr(dim, "value"):
                found.extend(tirx.analysis.undefined_vars(dim, []))
    return found


@mutator
class _DropArgs(PyExprMutator):
    """call_tir(kernel, (a, b, c)) -> call_tir(kernel', (a, c)) where kernel' is kernel
    without b."""

    def __init__(self, mod, unread):
        super().__init__(mod)
        self.unread = unread

    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (call.op.same_as(relax_call_tir_op()) and isinstance(call.args[0], relax.GlobalVar)):
            return call
        plan = self.unread.get(call.args[0].name_hint)
        if plan is None:
            return call
        kernel, drop = plan
        kept = relax.Tuple([a for i, a in enumerate(call.args[1].fields) if i not in drop])
        return relax.Call(call.op, [kernel, kept, *call.args[2:]], call.attrs, call.ty_args)
