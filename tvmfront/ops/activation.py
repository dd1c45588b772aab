"""Smooth activations: GELU (exact and tanh-approximated, as PyTorch's `approximate=`) and
SiLU, each with its explicit gradient (which also serves symbolic shapes); the derived ones
are checked against them."""

import math

from .._tvm import te, tirx
from ..op import op
from . import fastmath
from ._dims import require_float


def _c(v, dtype):
    return tirx.const(v, dtype)




@op
def gelu(x, approximate="none"):
    """x * Phi(x): the exact erf form (approximate="none"), or PyTorch's tanh form
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) (approximate="tanh")."""
    require_float("gelu", x)
    d = x.dtype
    if approximate == "none":
        # float32 Phi in vector arithmetic, accurate in the tail x -> -inf where 1/2 (1 + erf)
        # cancels (fastmath); float64 by libm's erf
        return te.compute(x.shape, lambda *i: x(*i) * fastmath.normal_cdf(x(*i)), name="gelu")
    if approximate == "tanh":
        half, one = _c(0.5, d), _c(1, d)
        k, c = _c(math.sqrt(2 / math.pi), d), _c(0.044715, d)

        def body(*i):
            v = x(*i)
            return half * v * (one + fastmath.tanh(k * (v + c * v * v * v)))

        return te.compute(x.shape, body, name="gelu_tanh")
    raise ValueError(f"gelu: approximate={approximate!r}; use 'none' or 'tanh'")


@op
def silu(x):
    """x * sigmoid(x) (also called swish)."""
    require_float("silu", x)
    return te.compute(x.shape, lambda *i: x(*i) * fastmath.sigmoid(x(*i)), name="silu")


@gelu.grad
def _(dy, x, approximate="none"):
    require_float("gelu", x)
    d = x.dtype
    if approximate == "none":  # Phi(x) + x phi(x), sharing one exp in float32
        def body(*i):
            cdf, pdf = fastmath.normal_cdf_and_pdf(x(*i))
            return dy(*i) * (cdf + x(*i) * pdf)
    else:  # 0.5 (1 + t) + 0.5 x (1 - t^2) k (1 + 3 c x^2), t = tanh(k (x + c x^3))
        half, one = _c(0.5, d), _c(1, d)
        k, c, three = _c(math.sqrt(2 / math.pi), d), _c(0.044715, d), _c(3, d)

        def body(*i):
            v = x(*i)
            t = fastmath.tanh(k * (v + c * v * v * v))
            return dy(*i) * (half * (one + t)
                             + half * v * (one - t * t) * k * (one + three * c * v * v))
    return [te.compute(x.shape, body, name="gelu_grad")]


@silu.grad
def _(dy, x):  # s + x s (1 - s)
    require_float("silu", x)
    one = _c(1, x.dtype)

    def body(*i):
        s = fastmath.sigmoid(x(*i))
        return dy(*i) * (s + x(*i) * s * (one - s))
    return [te.compute(x.shape, body, name="silu_grad")]
