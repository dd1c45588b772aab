"""Bound checking of eager kernels: an out-of-bounds read raises instead of returning garbage.

Switched on by ``TVMFRONT_BOUND_CHECKS=1`` or ``with tvmfront.op.bound_checks():`` (the test
session turns it on for every eager op and gradient kernel). It costs one extra
pass over every stage, so it is for tests and debugging, not for training.

TVM 0.27's own instrumentation (PassContext config ``tirx.instrument_bound_checkers``) does
nothing for kernels made by ``te.create_prim_func``: it only checks buffers announced by
``buffer_bound`` attributes, which nothing emits any more, and it skips every store that
contains an ``if_then_else``, i.e. every guarded read of a derived gradient. Measured
2026-12-03: a kernel reading ``x[i + 2]`` past a [4] buffer ran silently with it on, with
and without hand-made ``buffer_bound`` attributes. So the check is built in TE, as extra
outputs of the kernel: for every read in every stage, the number of points of the stage's
domain (spatial and reduce loops) where the read is reached (inside its ``if_then_else``
guards) with an index outside its tensor's shape. A nonzero count raises OutOfBoundsError.
"""

from ._tvm import lazy, te, tirx, tvm
from .autodiff import show, substitute
from .errors import OutOfBoundsError

P = lazy("tvm.ir.prim.expr")  # imported on first use



def _and(a, b):
    return b if a is None else P.And(a, b)


def _reads(expr, cond, out):
    """[(condition, load)] for every tensor load in expr; condition (None: always) is when the
    load is evaluated: if_then_else evaluates one branch, Select and And/Or evaluate all."""
    if isinstance(expr, tvm.ir.expr.Call):
        name = expr.op.name
        if name == "te.tensor_load":
            for i in expr.args[1:]:
                _reads(i, cond, out)
            out.append((cond, expr))
        elif name.endswith("if_then_else"):
            c, t, f = expr.args
            _reads(c, cond, out)
            _reads(t, _and(cond, c), out)
            _reads(f, _and(cond, P.Not(c)), out)
        else:
            for a in expr.args:
                _reads(a, cond, out)
        return out
    for child in ("a", "b", "value", "condition", "true_value", "false_value"):
        if hasattr(expr, child):
            _reads(getattr(expr, child), cond, out)
    return out


def _outside(load):
    tensor, idx = load.args[0], list(load.args[1:])
    inside = None
    for i, d in zip(idx, tensor.shape):
        inside = _and(inside, P.And(i >= 0, i < d))
    return P.Not(inside) if inside is not None else tirx.const(False, "bool")


def _provably_inside(analyzer, load):
    try:
        outside = analyzer.simplify(_outside(load))
    except TypeError:  # indices holding loads the simplifier cannot hash
        return False
    return isinstance(outside, P.IntImm) and outside.value == 0


def _stages(outputs):
    seen, order = set(), []

    def visit(t):
        if t.op in seen or not isinstance(t.op, te.ComputeOp):
            return
        seen.add(t.op)
        for parent in t.op.input_tensors:
            visit(parent)
        order.append(t.op)

    for o in outputs:
        visit(o)
    return order


def read_checks(outputs):
    """[(count tensor of shape [1], description)] for every read of every stage computing
    `outputs`: the count is the number of out-of-bounds evaluations of that read."""
    checks = []
    for op in _stages(outputs):
        for body in op.body:
            loops = list(op.axis)
            cond, source = None, body
            if isinstance(body, tirx.Reduce):
                loops += list(body.axis)
                source = body.source[body.value_index]
                if not (isinstance(body.condition, P.IntImm) and body.condition.value == 1):
                    cond = body.condition
            analyzer = tvm.sym.Analyzer()
            for iv in loops:
                analyzer.bind(iv.var, iv.dom)
            for where, load in _reads(source, cond, []):
                if _provably_inside(analyzer, load):
                    continue  # most reads: no runtime check needed
                checks.append((_count(op.name, loops, where, load), _describe(op, load)))
    return checks


def _count(name, loops, where, load):
    one, zero = tirx.const(1, "int64"), tirx.const(0, "int64")

    def body(_):
        axes = [te.reduce_axis(iv.dom, iv.var.name) for iv in loops]
        vmap = {iv.var: ax.var for iv, ax in zip(loops, axes)}
        bad = tvm.tirx.if_then_else(substitute(_outside(load), vmap), one, zero)
        if where is not None:  # lazily: the guard is what keeps the read in bounds
            bad = tvm.tirx.if_then_else(substitute(where, vmap), bad, zero)
        return te.sum(bad, axis=axes) if axes else bad

    return te.compute((1,), body, name=f"{name}_oob")


def _describe(op, load):
    tensor = load.args[0]
    shape = [int(d) for d in tensor.shape]
    return f"stage '{op.name}' reads {show(load)} outside {tensor.op.name}'s shape {shape}"


def raise_if_out_of_bounds(kernel_name, descriptions, counts):
    bad = [f"{d} ({int(c)} times)" for d, c in zip(descriptions, counts) if int(c)]
    if bad:
        raise OutOfBoundsError(f"kernel '{kernel_name}' read outside a buffer: " + "; ".join(bad))
