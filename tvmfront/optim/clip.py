"""Global-norm gradient clipping, inside the compiled step, with the max norm a runtime input."""

from .. import ops
from .._tvm import te
from ..op import op
from .transform import GradientTransformation

_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_ divides by total_norm + 1e-6


@op
def sum_of_squares(x):
    """sum(x * x) over every element: a 0-d tensor."""
    if not x.shape:
        return te.compute((), lambda: x() * x(), name="sum_of_squares")
    axes = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(x.shape)]
    return te.compute((), lambda: te.sum(x(*axes) * x(*axes), axis=axes), name="sum_of_squares")


@sum_of_squares.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy() * x(*i) * 2, name="sum_of_squares_grad")]


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
