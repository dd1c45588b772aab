"""Run op-spec rows through one compiled Relax module with symbolic dimensions.

Each case becomes two Relax functions over inputs whose chosen axes are the symbolic size
"batch": `f_k(*xs) -> op(*xs)` and, for rows with a gradient, `g_k(*xs) -> sum(out * out) / 2`
differentiated by Relax's Gradient w.r.t. the float inputs (so its gradient is the op's vjp at
dy = out). All cases share one build: a compile costs seconds, a case only its kernels.
"""

import numpy as np

import tvmfront as tvf
from tvmfront import ops, pipeline
from tvmfront._tvm import relax, tirx, to_device, to_numpy, tvm, virtual_machine
from tvmfront.build import build_lowered
from tvmfront.errors import ShapeError
from tvmfront.ops._dims import dims, infer_shape, show
from tvmfront.ops.shape import _reshape_te
from tvmfront.target import resolve_target
from tvmfront.tensor import Tensor, Trace, new_var, tracing


def symbolic_shape(shape, axes, name="batch"):
    """`shape` with each axis in `axes` replaced by the symbolic name."""
    return tuple(name if a in axes else d for a, d in enumerate(shape))


class Case:
    """One op call: the op, its attributes, the example inputs and, per input, the axes that
    are the symbolic batch ({input index: [axes]})."""

    def __init__(self, key, op, attrs, xs, batch, grad):
        self.key, self.op, self.attrs, self.xs = key, op, dict(attrs), xs
        self.batch, self.grad = batch, grad

    def specs(self):
        return [(symbolic_shape(x.shape, self.batch.get(i, ())), str(x.dtype))
                for i, x in enumerate(self.xs)]

    def differentiable(self):
        return [x.dtype.kind == "f" for x in self.xs]


def _call(op, tensors, attrs):
    # the op's plain signature (dropout's own Python signature reorders its arguments)
    return tvf.Op.__call__(op, *tensors, **attrs) if isinstance(op, tvf.Op) else op(*tensors)


def trace(fn, specs):
    """The shapes (as error messages show them) of what fn returns on Tensors of `specs`
    [(shape with names, dtype)], traced into a throwaway Relax function."""
    bb = relax.BlockBuilder()
    dims = {}
    xs = [new_var(f"x{i}", shape, dtype, dims) for i, (shape, dtype) in enumerate(specs)]
    with bb.function("f", xs):
        with bb.dataflow():
            with tracing(Trace(bb)):
                out = fn(*[Tensor(v) for v in xs])
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            result = bb.emit_output(outs[-1].expr)
        bb.emit_func_output(result)
    return [show(o.shape) for o in outs]


def _emit(bb, name, case, with_grad):
    dims = {}
    xs = [new_var(f"x{i}", shape, dtype, dims) for i, (shape, dtype) in enumerate(case.specs())]
    wants = case.differentiable() if with_grad else [False] * len(xs)
    with bb.function(name, xs):
        with bb.dataflow():
            with tracing(Trace(bb)):
                tensors = [Tensor(v, requires_grad=g) for v, g in zip(xs, wants)]
                out = _call(case.op, tensors, case.attrs)
                if with_grad:  # 1/2 sum(out^2): its gradient is the op's vjp at dy = out
                    out = _bare(out, case, tensors)
                    out = ops.mul_scalar(ops.sum(ops.mul(out, out)), value=0.5)
            result = bb.emit_output(out.expr)
        bb.emit_func_output(result)
    return [v for v, g in zip(xs, wants) if g]


@tvf.op
def _view_as_batch(out, like, axis=0):
    """out viewed as [like.shape[axis], -1]. `like` (an input, unused but for its shape) puts
    the bare batch among the kernel's buffers: a kernel whose buffers hold it only inside
    expressions (batch * 3) takes it as an extra scalar argument, and Relax's Gradient
    (TVM 0.27) fails on those ("key is not in Map")."""
    shape = infer_shape(out.shape, (like.shape[axis], -1), "view_as_batch")
    return _reshape_te(out, shape, "view_as_batch")


@_view_as_batch.grad
def _(dy, out, like, axis=0):
    return [_reshape_te(dy, out.shape, "view_as_batch_grad"), None]


def _bare(out, case, tensors):
    """out as [batch, -1] when its shape holds a symbolic expression (a reshape is linear:
    the loss and the op's gradient stay the same)."""
    if all(isinstance(d, (int, tirx.Var)) for d in dims(out.shape)):
        return out
    i, axes = next(iter(case.batch.items()))
    return _view_as_batch(out, tensors[i], axis=axes[0])


def differentiable_here(case):
    """None, or why the gradient of this case cannot be taken on a symbolic batch (the op's
    output has no whole multiple of the batch to view it as [batch, -1]: Relax's Gradient
    cannot take the extra scalar arguments its consumers would need)."""
    bb = relax.BlockBuilder()
    try:
        _emit(bb, "probe", case, True)
    except ShapeError as err:
        return str(err)
    return None


def build(cases):
    """A VirtualMachine holding f_<key> for every case and g_<key>_adjoint for cases with
    a gradient."""
    bb = relax.BlockBuilder()
    wrt = {}
    for case in cases:
        _emit(bb, f"f_{case.key}", case, False)
        if case.grad:
            wrt[case.key] = _emit(bb, f"g_{case.key}", case, True)
    mod = bb.get()
    for key, params in wrt.items():
        mod = relax.transform.Gradient(f"g_{key}", require_grads=params)(mod)
    lowered = pipeline.run(mod, pipeline.LOWERING)
    built = build_lowered(lowered, resolve_target("x86"), records=False)
    return virtual_machine(built.library, tvm.cpu())


def forward(vm, case, xs):
    return to_numpy(vm[f"f_{case.key}"](*[to_device(x) for x in xs]))


def gradients(vm, case, xs):
    """The float inputs' gradients of 1/2 sum(op(xs)^2), one array per float input."""
    _, grads = vm[f"g_{case.key}_adjoint"](*[to_device(x) for x in xs])
    return [to_numpy(g) for g in grads]


def eager_gradients(case, xs):
    out = case.op.eager(*xs, **case.attrs)
    grads = case.op.vjp(out, *xs, **case.attrs)
    return [g for g, x in zip(grads, xs) if x.dtype.kind == "f"]


def resized(xs, batch, n, rng):
    """The inputs with their batch axes resampled to size n: rows drawn from the example
    (integer and bool inputs as they are, floats rescaled by a factor in [0.8, 1.25], which
    keeps each maker's domain: positive, away from zero, distinct)."""
    sizes = {x.shape[a] for i, x in enumerate(xs) for a in batch.get(i, ())}
    assert len(sizes) == 1, f"the batch axes disagree: {sizes}"
    rows = rng.integers(0, sizes.pop(), n)
    out = []
    for i, x in enumerate(xs):
        for a in batch.get(i, ()):
            x = np.take(x, rows, axis=a)
        if x.dtype.kind == "f" and i in batch:
            x = x * rng.uniform(0.8, 1.25, size=x.shape)
        out.append(np.require(x, requirements="C"))  # (ascontiguousarray makes 0-d 1-d)
    return out


