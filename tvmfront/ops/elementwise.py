"""Pointwise ops: unary math, broadcasting binary arithmetic, and scalar variants.

Every op has its TE gradient right below it.
"""

import math

from .. import extremum
from .._tvm import te, tirx
from ..autodiff import if_else_zero, zero_where
from ..op import op
from . import fastmath
from ._broadcast import broadcast_shape, index_into, reduce_to
from ._dims import integral_scalar, is_float, require_float


def _c(value, dtype):
    return tirx.const(value, dtype)


def _unary(x, f, name):
    return te.compute(x.shape, lambda *i: f(x(*i)), name=name)


# ---- unary ----------------------------------------------------------------------------------
@op
def relu(x):
    # max(0, x), zero first: at a tie the derived gradient goes to the first operand, so
    # relu'(0) = 0 as in PyTorch and the explicit gradient below (and NaN propagates, as
    # torch.relu's does; max(x, 0) lowers to a select that turns NaN into 0).
    return _unary(x, lambda v: te.max(_c(0, x.dtype), v), "relu")


@relu.grad(uses_output=True)
def _(dy, out, x):
    # dy where out > 0, exactly where x > 0 (relu'(0) = 0), and where out is NaN (PyTorch's
    # where(out <= 0, 0, dy); if_else_zero(out > 0) had given 0 there). Reading the output,
    # not x, leaves x to relu alone, so the kernel making x (a BatchNorm, a residual add)
    # fuses with relu: x is never written out in the forward nor read again in the backward.
    # A bit mask, not if_then_else: a guarded load is a branch per element wherever the
    # kernel is not vectorized, which the ReLU's real mask mispredicts (an AVX2 ResNet
    # step's stride-2 shortcut gradient: 0.3 ms alone on random positive data, 1.9 ms in
    # the step).
    return [te.compute(x.shape, lambda *i: zero_where(out(*i) <= _c(0, out.dtype), dy(*i),
                                                       dy.dtype), name="relu_grad")]


@op
def sigmoid(x):
    require_float("sigmoid", x)
    return _unary(x, fastmath.sigmoid, "sigmoid")


@sigmoid.grad
def _(dy, x):
    def body(*i):
        s = fastmath.sigmoid(x(*i))
        return dy(*i) * s * (_c(1, x.dtype) - s)
    return [te.compute(x.shape, body, name="sigmoid_grad")]


@op
def tanh(x):
    require_float("tanh", x)
    return _unary(x, fastmath.tanh, "tanh")


@tanh.grad
def _(dy, x):
    def body(*i):
        t = fastmath.tanh(x(*i))
        return dy(*i) * (_c(1, x.dtype) - t * t)
    return [te.compute(x.shape, body, name="tanh_grad")]


@op
def exp(x):
    require_float("exp", x)
    return _unary(x, fastmath.exp, "exp")


@exp.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy(*i) * fastmath.exp(x(*i)), name="exp_grad")]


@op
def log(x):
    require_float("log", x)
    return _unary(x, te.log, "log")


@log.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy(*i) / x(*i), name="log_grad")]


@op
def sqrt(x):
    require_float("sqrt", x)
    return _unary(x, te.sqrt, "sqrt")


@sqrt.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: dy(*i) / (_c(2, x.dtype) * te.sqrt(x(*i))),
                       name="sqrt_grad")]


@op
def neg(x):
    return _unary(x, lambda v: -v, "neg")


@neg.grad
def _(dy, x):
    return [te.compute(x.shape, lambda *i: -dy(*i), name="neg_grad")]


# ---- binary, numpy broadcasting ---------------------------------------------------------------
def _binary(a, b, f, name):
    shape = broadcast_shape(a.shape, b.shape)
    return te.compute(shape, lambda *i: f(a(*index_into(a.shape, i)), b(*index_into(b.shape, i))),
                      name=name)


def _at(t, idx):
    return t(*index_into(t.shape, idx))


@op
def add(a, b):
    return _binary(a, b, lambda u, v: u + v, "add")


@add.grad
def _(dy, a, b):
    return [reduce_to(a.shape, dy.shape, lambda i: dy(*i)),
            reduce_to(b.shape, dy.shape, lambda i: dy(*i))]


@op
def sub(a, b):
    return _binary(a, b, lambda u, v: u - v, "sub")


@sub.grad
def _(dy, a, b):
    return [reduce_to(a.shape, dy.shape, lambda i: dy(*i)),
            reduce_to(b.shape, dy.shape, lambda i: -dy(*i))]


@op
def mul(a, b):
    return _binary(a, b, lambda u, v: u * v, "mul")


@mul.grad
def _(dy, a, b):
    return [reduce_to(a.shape, dy.shape, lambda i: dy(*i) * _at(b, i)),
            reduce_to(b.shape, dy.shape, lambda i: dy(*i) * _at(a, i))]


@op
def div(a, b):
    if not (is_float(a) or is_float(b)):
        # TVM refuses an integer "/" ("supports multiple types of integer divisions")
        raise TypeError(f"div: true division of integers ({a.dtype} / {b.dtype}); cast one "
                        "to a float dtype")
    return _binary(a, b, lambda u, v: u / v, "div")


@div.grad
def _(dy, a, b):
    # d/db = -dy * (a / b) / b, PyTorch's order: b * b under- or overflowed (a = b = 1e-20:
    # -inf, not -1e20; a = 0, b = 1e-30: 0 / 0 = NaN)
    return [reduce_to(a.shape, dy.shape, lambda i: dy(*i) / _at(b, i)),
            reduce_to(b.shape, dy.shape,
                      lambda i: -dy(*i) * (_at(a, i) / _at(b, i) / _at(b, i)))]


# ---- with a Python scalar attribute -----------------------------------------------------------
@op
def addcmul(x, a, b, value=1.0):
    """x + value * a * b, numpy-broadcast (torch.addcmul): one op, so a float16 moment
    update is rounded once, as PyTorch's addcmul_ rounds it (Adam's nu + (1 - b2) * g * g
    computed op by op overflowed at |g| > 256, g * g alone past 65504, and the parameter
    froze)."""
    integral_scalar("addcmul", x, value)
    shape = broadcast_shape(broadcast_shape(x.shape, a.shape), b.shape)
    c = _c(value, x.dtype)
    return te.compute(shape, lambda *i: _at(x, i) + c * _at(a, i) * _at(b, i), name="addcmul")


@addcmul.grad
def _(dy, x, a, b, value=1.0):
    c = _c(value, dy.dtype)
    return [reduce_to(x.shape, dy.shape, lambda i: dy(*i)),
            reduce_to(a.shape, dy.shape, lambda i: c * dy(*i) * _at(b, i)),
            reduce_to(b.shape, dy.shape, lambda i: c * dy(*i) * _at(a, i))]


@op
def add_scalar(x, value=0.0):
    integral_scalar("add_scalar", x, value)
    return _unary(x, lambda v: v + _c(value, x.dtype), "add_scalar")


@add_scalar.grad
def _(dy, x, value=0.0):
    return [te.compute(x.shape, lambda *i: dy(*i), name="add_scalar_grad")]


@op
def mul_scalar(x, value=1.0):
    integral_scalar("mul_scalar", x, value)
    if value == 0 and is_float(x):
        # TVM's simplifier folds v * 0 to 0: NaN and inf times 0 are NaN (numpy, PyTorch)
        inf, nan = _c(math.inf, x.dtype), _c(math.nan, x.dtype)
        return _unary(x, lambda v: tirx.Select(te.abs(v) < inf, _c(0.0, x.dtype), nan),
                      "mul_scalar")
    return _unary(x, lambda v: v * _c(value, x.dtype), "mul_scalar")


@mul_scalar.grad
def _(dy, x, value=1.0):
    return [te.compute(x.shape, lambda *i: dy(*i) * _c(value, x.dtype), name="mul_scalar_grad")]


@op
def rsub_scalar(x, value=0.0):
    """value - x"""
    integral_scalar("rsub_scalar", x, value)
    return _unary(x, lambda v: _c(value, x.dtype) - v, "rsub_scalar")


@rsub_scalar.grad
def _(dy, x, value=0.0):
    return [te.compute(x.shape, lambda *i: -dy(*i), name="rsub_scalar_grad")]


@op
def rdiv_scalar(x, value=1.0):
    """value / x"""
    require_float("rdiv_scalar", x)
    return _unary(x, lambda v: _c(value, x.dtype) / v, "rdiv_scalar")


@rdiv_scalar.grad
def _(dy, x, value=1.0):
    return [te.compute(x.shape, lambda *i: -dy(*i) * _c(value, x.dtype) / (x(*i) * x(*i)),
                       name="rdiv_scalar_grad")]


@op
def pow_scalar(x, exponent=2.0):
    """x ** exponent"""
    require_float("pow_scalar", x)
    return _unary(x, lambda v: te.power(v, _c(exponent, x.dtype)), "pow_scalar")


@pow_scalar.grad
def _(dy, x, exponent=2.0):
    return [te.compute(x.shape, lambda *i: dy(*i) * _c(exponent, x.dtype)
                       * te.power(x(*i), _c(exponent - 1, x.dtype)), name="pow_scalar_grad")]


@op
def rpow_scalar(x, base=2.0):
    """base ** x."""
    require_float("rpow_scalar", x)
    if base <= 0:
        raise ValueError(f"rpow_scalar: base must be positive, got {base}")
    # libm's exp, not fastmath's: a user forming 1 - base ** x with it would see fastmath's
    # 1.2e-7 relative error grow by the cancellation (one_minus_pow is the exact form)
    return _unary(x, lambda v: te.exp(v * _c(math.log(base), x.dtype)), "rpow_scalar")


@rpow_scalar.grad
def _(dy, x, base=2.0):
    ln = _c(math.log(base), x.dtype)
    return [te.compute(x.shape, lambda *i: dy(*i) * ln * te.exp(x(*i) * ln), name="rpow_grad")]


@op
def one_minus_pow(x, base=0.5):
    """1 - base ** x, computed in float64 whatever x's dtype: Adam's bias correction
    1 - 0.999 ** t cancels ~3 decimal digits, so float32's exp error (1e-7 relative) became
    3e-5 of the result at t = 1; float64 leaves it exact to float32 rounding (PyTorch forms
    it on the host in double)."""
    if base <= 0:
        raise ValueError(f"one_minus_pow: base must be positive, got {base}")
    ln = _c(math.log(base), "float64")

    def body(v):
        wide = v.astype("float64")
        return (_c(1, "float64") - te.exp(wide * ln)).astype(x.dtype)
    return _unary(x, body, "one_minus_pow")


@one_minus_pow.grad
def _(dy, x, base=0.5):
    ln = _c(math.log(base), "float64")

    def body(*i):
        power = te.exp(x(*i).astype("float64") * ln)
        return dy(*i) * (-(ln * power)).astype(x.dtype)
    return [te.compute(x.shape, body, name="one_minus_pow_grad")]


@op
def clip(x, lo=0.0, hi=1.0):
    """min(max(x, lo), hi), NaN where x is NaN (as numpy and PyTorch's clamp)."""
    integral_scalar("clip", x, lo, "lo")
    integral_scalar("clip", x, hi, "hi")
    return _unary(x, lambda v: extremum.minimum(extremum.maximum(v, _c(lo, x.dtype)),
                                                _c(hi, x.dtype)), "clip")


@clip.grad
def _(dy, x, lo=0.0, hi=1.0):
    return [te.compute(x.shape, lambda *i: if_else_zero(  # branch-free, as relu_grad
        te.all(x(*i) >= _c(lo, x.dtype), x(*i) <= _c(hi, x.dtype)), dy(*i), x.dtype),
        name="clip_grad")]
