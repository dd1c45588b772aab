"""Global-norm gradient clipping, inside the compiled step, with the max norm a runtime input."""

from .. import ops
from .._tvm import te
from ..op import op
from .transform import GradientTransformation

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by total_norm + 1e-6


@op
def sum_of_squares(x):
    """sum(x * x) over every element: a 0-d tensor, float32 for float16 and bfloat16 (their
    largest square is 65504 = 256^2 in float16: a gradient norm past 256 became inf and
    clipping scaled every gradient to 0, skipping the step), float64 for float64."""
    acc = "float64" if str(x.dtype) == "float64" else "float32"

    def square(*i):
        v = x(*i).astype(acc)
        return v * v

    if not x.shape:
        return te.compute((), lambda: square(), name="sum_of_squares")
    axes = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(x.shape)]
    return te.compute((), lambda: te.sum(square(*axes), axis=axes), name="sum_of_squares")


@sum_of_squares.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy().astype(x.dtype) * x(*i) * 2,
                       name="sum_of_squares_grad")]


def global_norm(grads):
    """sqrt of the sum of squares of every gradient: one 0-d tensor."""
    total = None
    for g in grads.values():
        s = sum_of_squares(g)
        total = s if total is None else total + s
    return ops.sqrt(total)


def clip_by_global_norm(max_norm=1.0):
    """Scale every gradient by min(1, max_norm / (global norm + 1e-6)), as
    torch.nn.utils.clip_grad_norm_. The max norm is the runtime scalar ``max_norm`` (this
    value is its default): ``module.step(x, y, max_norm=0.5)`` changes it without a rebuild."""
    if max_norm is not None and not max_norm >= 0:
        raise ValueError(f"clip_by_global_norm: max_norm must be >= 0, got {max_norm}")

    def update(grads, state, params, hyper):
        coef = ops.clip(hyper["max_norm"] / (global_norm(grads) + _EPS), lo=0.0, hi=1.0)
        return {n: g * coef for n, g in grads.items()}, state

    return GradientTransformation(lambda params: {}, update,
                                  (("max_norm", None if max_norm is None else float(max_norm)),))
