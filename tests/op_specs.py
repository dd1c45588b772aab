"""One table of op specs drives the op tests (forward vs numpy, gradient vs finite differences).

Each row (`OpSpec`) names an op, a numpy reference written independently of tvmfront, a
function making the inputs from a numpy Generator, and the attributes to call the op with.
`tests/test_ops.py` runs every row: forward in float32 and float64 against the reference and,
for rows with ``grad=True``, ``tvf.gradcheck`` in float64.

Inputs are float64 (the forward test casts them to float32 itself); integer inputs (class
labels, token ids) and boolean inputs (conditions) keep their dtype. Shapes are tiny:
gradcheck runs the op twice per input element, so each row stays under ~200 input elements.
A row with ``derived=False`` is an op whose gradient only exists explicitly (take, embedding:
data-dependent reads); test_ops.py checks that the derived path refuses it by name.

``batch`` says which input axes tests/test_symbolic_ops.py makes the symbolic size "batch"
when it compiles the row with Relax's symbolic shapes: ((input, axis), ...); None takes the
default (`batch_axes`: axis 0 of the first input, and of every other input of the same size
there); () leaves the row out (a size-1 axis that broadcasts, a reshape to
a fixed shape, a 0-d input).
"""

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from tvmfront import ops
from tvmfront.ops import batch_stats, int8, mask, norm  # noqa: F401  (ops.int8)

import _philox


@dataclass
class OpSpec:
    op: object  # a tvmfront Op
    ref: Callable  # numpy reference: ref(*inputs, **attrs) -> array
    inputs: Callable  # rng -> list of numpy arrays
    attrs: dict = field(default_factory=dict)
    grad: bool = True  # run gradcheck on this row
    derived: bool = True  # the derived gradient exists (False: data-dependent reads, e.g. take)
    id: str = ""
    batch: tuple = None  # symbolic-batch axes ((input, axis), ...); None: batch_axes' default

    def __post_init__(self):
        if not self.id:
            parts = [self.op.name] + [f"{k}={v}" for k, v in self.attrs.items()]
            self.id = "-".join(parts).replace(" ", "")


def batch_axes(spec, xs):
    """{input index: (axes,)} of the symbolic batch for `spec`'s inputs `xs` (see above)."""
    if spec.batch is not None:
        out = {}
        for i, a in spec.batch:
            out.setdefault(i, []).append(a)
        return {i: tuple(a) for i, a in out.items()}
    if not xs or xs[0].ndim == 0:
        return {}
    return {i: (0,) for i, x in enumerate(xs) if x.ndim and x.shape[0] == xs[0].shape[0]}


# ---- input makers --------------------------------------------------------------------------
def randn(*shape):
    return lambda rng: rng.standard_normal(shape)


def positive(*shape, lo=0.5, hi=2.0):
    return lambda rng: rng.uniform(lo, hi, size=shape)


def away_from_zero(*shape, lo=0.5, hi=2.0):
    """Values in ±[lo, hi]: safe for division and for relu's kink at 0. Both signs occur
    (when there are two or more elements), in shuffled positions; a single element is positive."""
    def make(rng):
        n = math.prod(shape)
        signs = rng.permutation(np.where(np.arange(n) % 2 == 0, 1.0, -1.0)).reshape(shape)
        return rng.uniform(lo, hi, size=shape) * signs
    return make


def distinct(*shape, spacing=0.1):
    """A shuffled arithmetic progression: no ties (max pooling's finite differences need that)."""
    n = math.prod(shape)
    return lambda rng: (rng.permutation(n).astype(np.float64) - n / 2).reshape(shape) * spacing


def avoiding(points, *shape, scale=1.5, gap=0.05):
    """Normal values, none within `gap` of the given points (kinks: clip's bounds)."""
    def make(rng):
        x = rng.standard_normal(shape) * scale
        for _ in range(len(points) + 1):
            near = np.any([np.abs(x - p) < gap for p in points], axis=0)
            x = np.where(near, x + 2 * gap, x)
        return x
    return make


def labels(batch, classes, dtype):
    return lambda rng: rng.integers(0, classes, size=batch).astype(dtype)


def concat(*makers):
    """Inputs from several makers, in order: concat(randn(3), positive(3))(rng) -> [a, b]."""
    return lambda rng: [m(rng) for m in makers]


# ---- numpy references ----------------------------------------------------------------------
def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _windows(xp, kh, kw, sh, sw):
    """Yield (i, j, window) over a padded NCHW array."""
    ho = (xp.shape[2] - kh) // sh + 1
    wo = (xp.shape[3] - kw) // sw + 1
    for i in range(ho):
        for j in range(wo):
            yield i, j, xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]


def _out_hw(xp, kh, kw, sh, sw):
    return (xp.shape[2] - kh) // sh + 1, (xp.shape[3] - kw) // sw + 1


def conv2d_ref(x, w, stride=1, padding=0):
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    kh, kw = w.shape[2:]
    out = np.zeros((x.shape[0], w.shape[0]) + _out_hw(xp, kh, kw, sh, sw), dtype=x.dtype)
    for i, j, win in _windows(xp, kh, kw, sh, sw):
        out[:, :, i, j] = np.einsum("nchw,ochw->no", win, w)
    return out


def _pool_ref(x, kernel, stride, padding, pad_value, reduce):
    kh, kw = _pair(kernel)
    sh, sw = _pair(kernel if stride is None else stride)
    ph, pw = _pair(padding)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=pad_value)
    out = np.zeros(x.shape[:2] + _out_hw(xp, kh, kw, sh, sw), dtype=x.dtype)
    for i, j, win in _windows(xp, kh, kw, sh, sw):
        out[:, :, i, j] = reduce(win)
    return out


def max_pool2d_ref(x, kernel=2, stride=None, padding=0):
    return _pool_ref(x, kernel, stride, padding, -np.inf, lambda w: w.max(axis=(2, 3)))


def avg_pool2d_ref(x, kernel=2, stride=None, padding=0):
    # Padded zeros count in the divisor (PyTorch's count_include_pad=True).
    return _pool_ref(x, kernel, stride, padding, 0.0, lambda w: w.mean(axis=(2, 3)))


def bias_add_ref(x, b, axis=1):
    shape = [1] * x.ndim
    shape[axis] = b.shape[0]
    return x + b.reshape(shape)


def softmax_ref(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy_ref(logits, labels):
    m = logits.max(axis=1)
    lse = np.log(np.exp(logits - m[:, None]).sum(axis=1)) + m
    picked = logits[np.arange(logits.shape[0]), labels]
    return np.asarray(np.mean(lse - picked), dtype=logits.dtype)


def mse_loss_ref(pred, target):
    return np.asarray(np.mean((pred - target) ** 2), dtype=pred.dtype)


def sigmoid_ref(x):
    return 1 / (1 + np.exp(-x))


def _cast_like(f):
    """Wrap a reference so its result has the dtype of its first input (scalar attributes
    are Python floats; the op computes in the input's dtype)."""
    def ref(x, **attrs):
        return np.asarray(f(x, **attrs)).astype(x.dtype)
    return ref


# ---- the table -----------------------------------------------------------------------------
OP_SPECS = []


def spec(*args, **kwargs):
    OP_SPECS.append(OpSpec(*args, **kwargs))


# Unary pointwise ops, on a plain 2-D shape, with size-1 dims, and 0-d.
_UNARY = [
    (ops.relu, lambda x: np.maximum(x, 0), away_from_zero),
    (ops.sigmoid, sigmoid_ref, randn),
    (ops.tanh, np.tanh, randn),
    (ops.exp, np.exp, randn),
    (ops.log, np.log, positive),
    (ops.sqrt, np.sqrt, positive),
    (ops.neg, np.negative, randn),
]
for _op, _ref, _make in _UNARY:
    spec(_op, _ref, concat(_make(3, 4)), id=f"{_op.name}-3x4")
    spec(_op, _ref, concat(_make(1, 3, 1)), id=f"{_op.name}-1x3x1")
    spec(_op, _ref, concat(_make()), id=f"{_op.name}-scalar")

# Broadcasting binary ops: equal shapes, trailing-axis broadcast, size-1 dims on both sides,
# rank mismatch, and 0-d operands on either side.
_BINARY = [
    (ops.add, np.add), (ops.sub, np.subtract), (ops.mul, np.multiply), (ops.div, np.divide),
]
_BCAST = [
    ((3, 4), (3, 4)),
    ((4, 5), (5,)),
    ((4, 1), (3, 1, 5)),
    ((3, 1, 5), (4, 1)),
    ((1, 4), (3, 1)),
    ((), (3, 4)),
    ((2, 3), ()),
    ((), ()),
]
for _op, _ref in _BINARY:
    for _sa, _sb in _BCAST:
        # Divisors kept away from 0 so finite differences stay well conditioned.
        _mb = away_from_zero(*_sb) if _op is ops.div else randn(*_sb)
        spec(_op, _ref, concat(randn(*_sa), _mb),
             batch=() if (_sa, _sb) == ((1, 4), (3, 1)) else None,  # B broadcast against 3
             id=f"{_op.name}-{'x'.join(map(str, _sa)) or 'scalar'}"
                f"-{'x'.join(map(str, _sb)) or 'scalar'}")

# x + value * a * b, broadcasting the three
def addcmul_ref(x, a, b, value=1.0):
    return (x + value * a * b).astype(x.dtype)


spec(ops.addcmul, addcmul_ref, concat(randn(3, 4), randn(3, 4), randn(3, 4)),
     attrs={"value": -0.25}, id="addcmul-3x4")
spec(ops.addcmul, addcmul_ref, concat(randn(4, 1), randn(3, 1, 5), randn(5)), batch=(),
     id="addcmul-broadcast")

# Ops with a Python scalar attribute.
spec(ops.add_scalar, _cast_like(lambda x, value=0.0: x + value), concat(randn(3, 4)),
     id="add_scalar-default")
spec(ops.add_scalar, _cast_like(lambda x, value=0.0: x + value), concat(randn(3, 4)),
     attrs={"value": 2.5})
spec(ops.add_scalar, _cast_like(lambda x, value=0.0: x + value), concat(randn(2, 1, 3)),
     attrs={"value": -1})
spec(ops.mul_scalar, _cast_like(lambda x, value=1.0: x * value), concat(randn(3, 4)),
     attrs={"value": -3.0})
spec(ops.mul_scalar, _cast_like(lambda x, value=1.0: x * value), concat(randn(3, 4)),
     attrs={"value": 0.0})
spec(ops.mul_scalar, _cast_like(lambda x, value=1.0: x * value), concat(randn()),
     id="mul_scalar-default-scalar")
spec(ops.rsub_scalar, _cast_like(lambda x, value=0.0: value - x), concat(randn(3, 4)),
     attrs={"value": 1.5})
spec(ops.rsub_scalar, _cast_like(lambda x, value=0.0: value - x), concat(randn(1, 5)),
     id="rsub_scalar-default")
spec(ops.rdiv_scalar, _cast_like(lambda x, value=1.0: value / x), concat(away_from_zero(3, 4)),
     attrs={"value": 2.0})
spec(ops.rdiv_scalar, _cast_like(lambda x, value=1.0: value / x), concat(away_from_zero(4)),
     id="rdiv_scalar-default")
for _e in (2.0, 3.0, 0.5, -1.5):
    spec(ops.pow_scalar, _cast_like(lambda x, exponent=2.0: x ** exponent),
         concat(positive(3, 4)), attrs={"exponent": _e})
spec(ops.pow_scalar, _cast_like(lambda x, exponent=2.0: x ** exponent), concat(positive(5)),
     id="pow_scalar-default")
for _b in (2.0, 0.5, math.e):
    spec(ops.rpow_scalar, _cast_like(lambda x, base=2.0: np.power(base, x)),
         concat(randn(3, 4)), attrs={"base": _b}, id=f"rpow_scalar-base={_b:.4g}")
spec(ops.rpow_scalar, _cast_like(lambda x, base=2.0: np.power(base, x)), concat(randn()),
     id="rpow_scalar-default-scalar")
for _b in (0.9, 0.999, 2.0):
    spec(ops.one_minus_pow, _cast_like(lambda x, base=0.5: 1.0 - np.power(base, x)),
         concat(randn(3, 4)), attrs={"base": _b}, id=f"one_minus_pow-base={_b:.4g}")

# clip: inputs on both sides of each bound (and between), none at a bound.
def clip_ref(x, lo=0.0, hi=1.0):
    return np.minimum(np.maximum(x, np.asarray(lo, x.dtype)), np.asarray(hi, x.dtype))


spec(ops.clip, clip_ref, concat(avoiding((0.0, 1.0), 3, 4)), id="clip-default")
spec(ops.clip, clip_ref, concat(avoiding((-0.5, 0.5), 4, 5)), attrs={"lo": -0.5, "hi": 0.5})
spec(ops.clip, clip_ref, concat(avoiding((-1.0, 2.0), 1, 3, 1)), attrs={"lo": -1, "hi": 2})
spec(ops.clip, clip_ref, lambda rng: [np.array(-0.7)], attrs={"lo": -0.5, "hi": 0.5},
     id="clip-scalar-below")

# Matrix products.
spec(ops.matmul, np.matmul, concat(randn(3, 4), randn(4, 5)), id="matmul-3x4-4x5")
spec(ops.matmul, np.matmul, concat(randn(1, 3), randn(3, 1)), id="matmul-1x3-3x1")
spec(ops.matmul, np.matmul, concat(randn(4, 1), randn(1, 2)), id="matmul-4x1-1x2")
spec(ops.dense, lambda x, w: x @ w.T, concat(randn(2, 4), randn(3, 4)), id="dense-2x4-3x4")
spec(ops.dense, lambda x, w: x @ w.T, concat(randn(1, 5), randn(1, 5)), batch=((0, 0),),
     id="dense-1x5-1x5")

# bias_add: axis 1 of 2-D and 4-D (the default), other axes, size-1 dims.
spec(ops.bias_add, bias_add_ref, concat(randn(3, 4), randn(4)), id="bias_add-2d-default")
spec(ops.bias_add, bias_add_ref, concat(randn(3, 4), randn(4)), attrs={"axis": 1},
     id="bias_add-2d-axis1")
spec(ops.bias_add, bias_add_ref, concat(randn(2, 3, 2, 2), randn(3)), attrs={"axis": 1},
     id="bias_add-4d-axis1")
spec(ops.bias_add, bias_add_ref, concat(randn(3, 4), randn(3)), attrs={"axis": 0},
     batch=((0, 0), (1, 0)), id="bias_add-2d-axis0")
spec(ops.bias_add, bias_add_ref, concat(randn(2, 3, 2, 4), randn(4)), attrs={"axis": 3},
     id="bias_add-4d-axis3")
spec(ops.bias_add, bias_add_ref, concat(randn(1, 3, 1, 2), randn(3)), attrs={"axis": 1},
     id="bias_add-1x3x1x2-axis1")
spec(ops.bias_add, bias_add_ref, concat(randn(3, 4), randn(4)), attrs={"axis": -1},
     id="bias_add-2d-axis-1")

# Reshape (and flatten, which is reshape to (N, -1)).
spec(ops.reshape, np.reshape, concat(randn(2, 3, 4)), attrs={"shape": (4, -1)})
spec(ops.reshape, np.reshape, concat(randn(2, 3, 4)), attrs={"shape": (-1,)})
spec(ops.reshape, np.reshape, concat(randn(2, 3, 4)), attrs={"shape": (3, 2, 2, 2)}, batch=())
spec(ops.reshape, np.reshape, concat(randn(1, 6)), attrs={"shape": (3, -1, 1)})
spec(ops.reshape, np.reshape, concat(randn()), attrs={"shape": (1, 1)}, id="reshape-scalar-1x1")
spec(ops.reshape, np.reshape, concat(randn(1)), attrs={"shape": ()}, batch=(),
     id="reshape-1-scalar")
spec(ops.reshape, lambda x, shape: x.reshape(x.shape[0], -1), concat(randn(2, 3, 2, 2)),
     attrs={"shape": (2, -1)}, batch=(), id="flatten-via-reshape")

# Losses and softmax.
spec(ops.softmax, softmax_ref, concat(randn(3, 5)), id="softmax-3x5")
spec(ops.softmax, softmax_ref, concat(randn(1, 4)), id="softmax-1x4")
spec(ops.softmax, softmax_ref, concat(randn(2, 1)), id="softmax-2x1")
spec(ops.masked_softmax, softmax_ref, concat(randn(3, 5)), id="masked_softmax-3x5")
spec(ops.masked_softmax, softmax_ref, concat(randn(2, 1)), id="masked_softmax-2x1")
spec(ops.softmax, softmax_ref, lambda rng: [rng.standard_normal((2, 4)) * 30],
     id="softmax-large-logits")
spec(ops.cross_entropy, cross_entropy_ref, concat(randn(4, 5), labels(4, 5, np.int64)),
     id="cross_entropy-int64")
spec(ops.cross_entropy, cross_entropy_ref, concat(randn(4, 5), labels(4, 5, np.int32)),
     id="cross_entropy-int32")
spec(ops.cross_entropy, cross_entropy_ref, concat(randn(1, 3), labels(1, 3, np.int64)),
     id="cross_entropy-batch1")
spec(ops.cross_entropy, cross_entropy_ref,
     lambda rng: [rng.standard_normal((3, 4)) * 20, np.array([3, 0, 3], dtype=np.int64)],
     id="cross_entropy-large-logits")
spec(ops.mse_loss, mse_loss_ref, concat(randn(3, 4), randn(3, 4)), id="mse_loss-3x4")
spec(ops.mse_loss, mse_loss_ref, concat(randn(1, 5), randn(1, 5)), id="mse_loss-1x5")
spec(ops.mse_loss, mse_loss_ref, concat(randn(2, 1, 3, 1), randn(2, 1, 3, 1)),
     id="mse_loss-2x1x3x1")
spec(ops.mse_loss, mse_loss_ref, concat(randn(), randn()), id="mse_loss-scalar")

# conv2d: stride 1/2/3, padding 0/1/2, non-square inputs and kernels, (H + 2p - k) % s != 0,
# tuple stride/padding, 1x1 kernels, size-1 dims.
_CONV = [
    # x shape, w shape, stride, padding
    ((1, 2, 5, 6), (3, 2, 2, 3), 1, 0),
    ((1, 2, 6, 5), (2, 2, 3, 2), 2, 1),     # (6+2-3) % 2 = 1, (5+2-2) % 2 = 1
    ((1, 1, 7, 6), (2, 1, 2, 3), 3, 2),     # (6+4-3) % 3 = 1; padding 2 > kernel-1 in H
    ((2, 2, 5, 5), (2, 2, 3, 3), 3, 1),     # (5+2-3) % 3 = 1, batch 2
    ((1, 2, 4, 5), (2, 2, 3, 3), 1, 1),     # "same" convolution
    ((1, 2, 5, 4), (2, 2, 2, 2), 2, 2),
    ((1, 2, 4, 7), (1, 2, 3, 2), (1, 2), (2, 0)),
    ((2, 3, 5, 5), (4, 3, 1, 1), 2, 0),     # 1x1 kernel
    ((1, 1, 1, 4), (2, 1, 1, 2), 1, 0),     # size-1 dims
    ((1, 2, 3, 3), (1, 2, 3, 3), 1, 0),     # kernel covers the input: 1x1 output
]
for _xs, _ws, _s, _p in _CONV:
    spec(ops.conv2d, conv2d_ref, concat(randn(*_xs), randn(*_ws)),
         attrs={"stride": _s, "padding": _p}, batch=((0, 0),),
         id=f"conv2d-x{'x'.join(map(str, _xs))}-w{'x'.join(map(str, _ws))}"
            f"-s{_s}-p{_p}".replace(" ", ""))

# Pooling: kernel 2/3 (and 2x3), stride default/1/2, padding 0/1. Max pooling inputs have
# distinct values so finite differences never cross a tie.
_POOL = [
    # x shape, attrs
    ((1, 2, 4, 4), {}),                                          # kernel 2, stride = kernel
    ((1, 2, 5, 6), {"kernel": 2}),                               # (5-2) % 2 = 1: last row dropped
    ((1, 2, 5, 6), {"kernel": 3}),                               # default stride 3
    ((1, 2, 5, 6), {"kernel": 2, "stride": 1}),
    ((1, 2, 5, 6), {"kernel": 3, "stride": 1}),
    ((1, 2, 5, 6), {"kernel": 3, "stride": 2}),
    ((1, 2, 5, 6), {"kernel": 2, "stride": 2, "padding": 1}),
    ((1, 2, 5, 6), {"kernel": 3, "stride": 2, "padding": 1}),
    ((1, 2, 5, 6), {"kernel": 3, "stride": 1, "padding": 1}),
    ((1, 2, 6, 5), {"kernel": 2, "padding": 1}),                 # default stride with padding
    ((2, 1, 5, 7), {"kernel": (2, 3), "stride": (1, 2), "padding": (1, 1)}),
    ((1, 1, 1, 4), {"kernel": 1}),                               # size-1 dims, identity-like
]
for _xs, _a in _POOL:
    _tag = "x".join(map(str, _xs)) + "".join(f"-{k}{v}" for k, v in _a.items()).replace(" ", "")
    spec(ops.max_pool2d, max_pool2d_ref, concat(distinct(*_xs)), attrs=_a,
         id=f"max_pool2d-{_tag}")
    spec(ops.avg_pool2d, avg_pool2d_ref, concat(randn(*_xs)), attrs=_a,
         id=f"avg_pool2d-{_tag}")
# Max pooling over ties: forward only (the gradient at a tie is not differentiable).
spec(ops.max_pool2d, max_pool2d_ref, lambda rng: [np.ones((1, 1, 4, 4))],
     attrs={"kernel": 2, "stride": 1}, grad=False, id="max_pool2d-ties-forward-only")
spec(ops.max_pool2d, max_pool2d_ref, lambda rng: [-np.full((1, 1, 3, 3), 1e30)],
     attrs={"kernel": 2, "padding": 1}, grad=False, id="max_pool2d-very-negative-padded")

# Ops whose gradient is derived from the forward (no explicit .grad): normalisations, GELU,
# attention pieces.
_ERF = np.vectorize(math.erf)


@_cast_like
def gelu_ref(x, approximate="none"):
    return 0.5 * x * (1 + _ERF(x / math.sqrt(2)))


def layer_norm_ref(x, gamma, beta, eps=1e-5):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def group_norm_ref(x, gamma, beta, groups=1, eps=1e-5):
    n = x.shape[0]
    g = x.reshape(n, groups, -1)
    normed = ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps))
    return normed.reshape(x.shape) * gamma[None, :, None, None] + beta[None, :, None, None]


def batch_norm_ref(x, gamma, beta, eps=1e-5):
    mean, var = x.mean((0, 2, 3), keepdims=True), x.var((0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma[None, :, None, None] + beta[None, :, None, None]


def softmax_last_ref(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


spec(ops.gelu, gelu_ref, concat(randn(3, 4)), id="gelu-3x4")
spec(ops.gelu, gelu_ref, concat(randn(1, 7)), id="gelu-1x7")
spec(ops.layer_norm, layer_norm_ref, concat(randn(3, 5), randn(5), randn(5)), id="layer_norm-3x5")
spec(ops.layer_norm, layer_norm_ref, concat(randn(2, 1, 7), randn(7), randn(7)),
     attrs={"eps": 1e-3}, id="layer_norm-2x1x7-eps")
spec(ops.group_norm, group_norm_ref, concat(randn(2, 4, 3, 3), randn(4), randn(4)),
     attrs={"groups": 2}, id="group_norm-g2")
spec(ops.group_norm, group_norm_ref, concat(randn(1, 3, 2, 5), randn(3), randn(3)),
     attrs={"groups": 3}, id="group_norm-instance")
spec(ops.batch_norm, batch_norm_ref, concat(randn(3, 2, 3, 2), randn(2), randn(2)),
     id="batch_norm-3x2x3x2")
spec(ops.batch_norm, batch_norm_ref, concat(randn(4, 3, 1, 1), randn(3), randn(3)),
     id="batch_norm-1x1-spatial")
spec(ops.batch_matmul, np.matmul, concat(randn(2, 3, 4), randn(2, 4, 5)), id="batch_matmul-2x3x4")
spec(ops.batch_matmul, lambda a, b, transpose_b: np.matmul(a, np.swapaxes(b, -1, -2)),
     concat(randn(2, 3, 4), randn(2, 5, 4)), attrs={"transpose_b": True},
     id="batch_matmul-transpose-b")
spec(ops.batch_matmul, lambda a, b, transpose_b: np.matmul(a, np.swapaxes(b, -1, -2)),
     concat(randn(2, 2, 3, 2), randn(2, 2, 1, 2)), attrs={"transpose_b": True},
     id="batch_matmul-transpose-b-4d")
spec(ops.batch_matmul, np.matmul, concat(randn(2, 2, 1, 3), randn(2, 2, 3, 2)),
     id="batch_matmul-4d")
spec(ops.transpose, lambda x, axes=None: np.transpose(x, axes), concat(randn(2, 3, 4)),
     attrs={"axes": (1, 2, 0)}, id="transpose-120")
spec(ops.transpose, lambda x, axes=None: np.transpose(x, axes), concat(randn(3, 5)),
     id="transpose-default")
spec(ops.softmax_last, softmax_last_ref, concat(randn(2, 3, 4)), id="softmax_last-3d")
spec(ops.softmax_last, softmax_last_ref, concat(randn(5)), id="softmax_last-1d")
spec(ops.slice_first, lambda x, index=0: x[index:index + 1], concat(randn(3, 2, 2)),
     attrs={"index": 2}, id="slice_first-2")


# ---- indexing, joining, reductions, masks, activations (issue 10) ---------------------------
def ids(shape, n, dtype=np.int64, repeat=True):
    """Integer ids in [0, n); with repeat=True at least one id occurs twice (the scatter-add
    gradient must sum over repeated ids)."""
    def make(rng):
        out = rng.integers(0, n, size=shape).astype(dtype)
        if repeat and out.size > 1:
            out.flat[-1] = out.flat[0]
        return out
    return make


def fixed(array):
    return lambda rng: np.array(array)


def take_ref(x, indices, axis=0):
    return np.take(x, indices, axis=axis)


def embedding_ref(weight, ids, padding_idx=None):
    return weight[ids]


def one_hot_ref(indices, depth, dtype="float32"):
    return (indices[..., None] == np.arange(depth)).astype(dtype)


spec(ops.take, take_ref, concat(randn(5, 3), fixed(np.array([[0, 4], [4, 1]], np.int32))),
     derived=False, batch=((1, 0),), id="take-axis0-int32-2d-ids-repeated")
spec(ops.take, take_ref, concat(randn(2, 4), fixed(np.array([3, 0, 3, 3, 1], np.int64))),
     attrs={"axis": 1}, derived=False, id="take-axis1-int64-repeated")
spec(ops.take, take_ref, concat(randn(2, 3, 4), ids((2,), 4)), attrs={"axis": -1},
     derived=False, id="take-axis-1-3d")
spec(ops.take, take_ref, concat(randn(4, 3), fixed(np.array(2, np.int64))), derived=False,
     id="take-0d-index")
# One row: the clamped id is the constant 0, so even the derived path can do this one.
spec(ops.take, take_ref, concat(randn(1, 3), ids((3,), 1)), id="take-one-row")
spec(ops.embedding, embedding_ref, concat(randn(6, 4), ids((2, 3), 6)), derived=False,
     batch=((1, 0),), id="embedding-int64")
spec(ops.embedding, embedding_ref, concat(randn(6, 4), ids((5,), 6, np.int32)), derived=False,
     batch=((1, 0),), id="embedding-int32")
# padding_idx present among the ids: its row gets no gradient (not the true derivative),
# so gradcheck is off here; test_index.py checks that gradient against PyTorch and by hand.
spec(ops.embedding, embedding_ref, concat(randn(6, 4), fixed(np.array([[1, 0, 0], [5, 0, 2]]))),
     attrs={"padding_idx": 0}, grad=False, derived=False, batch=((1, 0),),
     id="embedding-padding_idx-forward")
# padding_idx absent from the ids: the gradient is exact and gradcheck applies.
spec(ops.embedding, embedding_ref, concat(randn(6, 4), fixed(np.array([1, 2, 2, 5]))),
     attrs={"padding_idx": -3}, derived=False, batch=((1, 0),),
     id="embedding-padding_idx-absent")
spec(ops.one_hot, one_hot_ref, concat(fixed(np.array([3, 0, 4, 0]))), attrs={"depth": 5},
     grad=False, id="one_hot-int64")
spec(ops.one_hot, one_hot_ref, concat(fixed(np.array([[1, 2], [0, 1]], np.int32))),
     attrs={"depth": 3, "dtype": "float64"}, grad=False, id="one_hot-int32-2d-float64")


def concat_ref(*xs, axis=0):
    return np.concatenate(xs, axis=axis)


def stack_ref(*xs, axis=0):
    return np.stack(xs, axis=axis)


def strided_slice_ref(x, slices=()):
    return x[tuple(slice(*s) for s in slices)]


spec(ops.concat, concat_ref, concat(randn(2, 3), randn(2, 1), randn(2, 2)), attrs={"axis": 1},
     id="concat-3-axis1")
spec(ops.concat, concat_ref, concat(randn(1, 3), randn(2, 3)), id="concat-axis0-default")
spec(ops.concat, concat_ref, concat(randn(2, 2, 2), randn(2, 2, 1)), attrs={"axis": -1},
     id="concat-axis-1")
spec(ops.concat, concat_ref, concat(randn(3)), id="concat-one")
spec(ops.stack, stack_ref, concat(randn(2, 3), randn(2, 3)), id="stack-axis0")
spec(ops.stack, stack_ref, concat(randn(2, 3), randn(2, 3), randn(2, 3)), attrs={"axis": -1},
     id="stack-3-axis-1")
spec(ops.stack, stack_ref, concat(randn(), randn()), id="stack-scalars")
for _sl in [((1, 4, 2),), ((None, None, -1), (1, None, 2)), ((4, None, -2), (-3, -1, None)),
            ((None, None, 3), (5, 0, -3)), ((-1, None, None),), ((2, 2, None),)]:
    spec(ops.strided_slice, strided_slice_ref, concat(randn(5, 6)), attrs={"slices": _sl},
         id="strided_slice-" + "_".join(":".join("" if v is None else str(v) for v in s)
                                        for s in _sl))
spec(ops.strided_slice, strided_slice_ref, concat(randn(2, 3, 4)),
     attrs={"slices": ((None, None, None), (None, None, None), (None, None, 2))},
     id="strided_slice-3d-last-step2")


def _reduce_ref(f):
    def ref(x, axis=None, keepdims=False):
        return np.asarray(f(x, axis=axis, keepdims=keepdims))
    return ref


for _name, _op, _f, _make in [("sum", ops.sum, np.sum, randn), ("mean", ops.mean, np.mean, randn),
                               ("max", ops.max, np.max, distinct)]:
    for _ax, _kd in [(None, False), (None, True), (1, False), (1, True), ((0, 2), False),
                     (-1, True), ((-3, -2), True), ((), False)]:
        spec(_op, _reduce_ref(_f), concat(_make(2, 3, 4)), attrs={"axis": _ax, "keepdims": _kd},
             id=f"{_name}-axis{_ax}-keepdims{_kd}".replace(" ", ""))
    spec(_op, _reduce_ref(_f), concat(_make(5)), id=f"{_name}-1d-default")


def where_ref(cond, a, b):
    return np.where(cond, a, b)


def causal_fill_ref(x, value=-np.inf):
    t, s = x.shape[-2:]
    return np.where(np.triu(np.ones((t, s), bool), k=1), value, x)


spec(ops.causal_fill, causal_fill_ref, concat(randn(2, 3, 4, 4)), id="causal_fill-square")
spec(ops.causal_fill, causal_fill_ref, concat(randn(2, 3, 5)), attrs={"value": -1e4},
     id="causal_fill-3x5-finite")
# query and key lengths both the symbolic size: a causal mask of any length
spec(ops.causal_fill, causal_fill_ref, concat(randn(2, 4, 4)), batch=((0, 1), (0, 2)),
     id="causal_fill-symbolic-length")


def cache_write_ref(cache, new, pos):
    out = cache.copy()
    rows = np.arange(int(pos), min(int(pos) + new.shape[-2], cache.shape[-2]))
    out[..., rows, :] = new[..., rows - int(pos), :]
    return out


def cache_pad_ref(new, length=1):
    out = np.zeros((*new.shape[:-2], length, new.shape[-1]), new.dtype)
    t = min(length, new.shape[-2])
    out[..., :t, :] = new[..., :t, :]
    return out


def cache_mask_ref(scores, pos, value=-np.inf):
    s, tmax = scores.shape[-2:]
    later = np.arange(tmax)[None, :] > np.arange(s)[:, None] + int(pos)
    return np.where(later, value, scores)


def positions_ref(ids, start):
    return np.arange(ids.shape[-1], dtype=np.int64) + int(start)


def _pos(p):
    return fixed(np.array(p, np.int64))


# The KV cache of generation: [B, H, Tmax, D] written at a runtime position (a 0-d input).
# Several rows are read from `new` through pos: only the explicit gradient exists; one row
# (a decode step) is read at a constant index, so the derived one exists too.
spec(ops.cache_write, cache_write_ref, concat(randn(2, 5, 3), randn(2, 2, 3), _pos(2)),
     derived=False, id="cache_write-middle")
spec(ops.cache_write, cache_write_ref, concat(randn(2, 5, 3), randn(2, 1, 3), _pos(4)),
     id="cache_write-last-row")
spec(ops.cache_write, cache_write_ref, concat(randn(1, 2, 4, 2), randn(1, 2, 3, 2), _pos(3)),
     derived=False, batch=(), id="cache_write-past-the-end-dropped")
spec(ops.cache_pad, cache_pad_ref, concat(randn(2, 3, 2)), attrs={"length": 5},
     id="cache_pad")
spec(ops.cache_mask, cache_mask_ref, concat(randn(2, 1, 5), _pos(2)), id="cache_mask-one-query")
spec(ops.cache_mask, cache_mask_ref, concat(randn(2, 3, 5), _pos(1)), attrs={"value": -1e4},
     id="cache_mask-three-queries-finite")
spec(ops.positions, positions_ref, concat(ids((2, 3), 7), _pos(4)), grad=False,
     id="positions")


spec(ops.where, where_ref, lambda rng: [rng.random((3, 4)) > 0.5, rng.standard_normal((3, 4)),
                                        rng.standard_normal((3, 4))], id="where-bool-same-shape")
spec(ops.where, where_ref, lambda rng: [rng.random((3, 1)) > 0.5, rng.standard_normal((3, 4)),
                                        rng.standard_normal((4,))], id="where-broadcast")
spec(ops.where, where_ref, lambda rng: [rng.integers(0, 3, (2, 3)).astype(np.int32),
                                        rng.standard_normal(()), rng.standard_normal((2, 3))],
     id="where-int-cond-scalar-a")
spec(mask._padding_mask, lambda t, pad_id=None, max_len=None: t == pad_id,
     concat(fixed(np.array([[3, 1, 0, 0], [2, 0, 5, 0]]))), attrs={"pad_id": 0}, grad=False,
     id="padding_mask-tokens")
spec(mask._padding_mask, lambda n, pad_id=None, max_len=None: np.arange(max_len) >= n[:, None],
     concat(fixed(np.array([2, 4, 0], np.int32))), attrs={"max_len": 4}, grad=False,
     id="padding_mask-lengths")


def softmax_axis_ref(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax_ref(x, axis=-1):
    m = x.max(axis=axis, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=axis, keepdims=True))


for _ax in (0, 1, -1):
    spec(ops.softmax, softmax_axis_ref, concat(randn(2, 3, 4)), attrs={"axis": _ax},
         id=f"softmax-3d-axis{_ax}")
    spec(ops.log_softmax, log_softmax_ref, concat(randn(2, 3, 4)), attrs={"axis": _ax},
         id=f"log_softmax-3d-axis{_ax}")
spec(ops.log_softmax, log_softmax_ref, concat(randn(3, 5)), id="log_softmax-3x5")
spec(ops.log_softmax, log_softmax_ref, concat(randn(4)), id="log_softmax-1d")
spec(ops.log_softmax, log_softmax_ref, lambda rng: [rng.standard_normal((2, 4)) * 300],
     id="log_softmax-large-logits")
spec(ops.softmax, softmax_axis_ref, lambda rng: [rng.standard_normal((4, 2)) * 300],
     attrs={"axis": 0}, id="softmax-large-logits-axis0")


@_cast_like
def gelu_tanh_ref(x, approximate="tanh"):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


spec(ops.gelu, gelu_tanh_ref, concat(randn(3, 4)), attrs={"approximate": "tanh"},
     id="gelu-tanh-3x4")
spec(ops.gelu, gelu_ref, concat(randn(2, 3)), attrs={"approximate": "none"}, id="gelu-none")
spec(ops.silu, _cast_like(lambda x: x / (1 + np.exp(-x))), concat(randn(3, 4)), id="silu-3x4")
spec(ops.silu, _cast_like(lambda x: x / (1 + np.exp(-x))), concat(randn()), id="silu-scalar")


def layer_norm_k_ref(x, gamma, beta, eps=1e-5):
    axes = tuple(range(x.ndim - gamma.ndim, x.ndim))
    mean, var = x.mean(axes, keepdims=True), x.var(axes, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


spec(ops.layer_norm, layer_norm_k_ref, concat(randn(2, 3, 4), randn(3, 4), randn(3, 4)),
     id="layer_norm-last2")
spec(ops.layer_norm, layer_norm_k_ref, concat(randn(2, 2, 3), randn(2, 2, 3), randn(2, 2, 3)),
     batch=(), id="layer_norm-all3")


# ---- randomness: Philox-4x32-10 bits and dropout, against the numpy Philox in _philox.py -----
def _rng_inputs(*x_shape, key=(0x1234, 0xABCD), counter=7, counter_dtype="int64"):
    """[x (if a shape is given), key uint32 [lo, hi], counter 0-d]: integer inputs keep their
    dtype, so only x is differentiated."""
    def make(rng):
        xs = [rng.standard_normal(x_shape[0])] if x_shape else []
        return xs + [np.array(key, np.uint32), np.array(counter, counter_dtype)]
    return make


spec(ops.random_bits, _philox.bits, _rng_inputs(), attrs={"shape": (3, 5), "stream": 2},
     grad=False, batch=(), id="random_bits-3x5")
spec(ops.random_bits, _philox.bits, _rng_inputs(counter=2 ** 40 + 3, counter_dtype="uint64"),
     attrs={"shape": (7,)}, grad=False, batch=(), id="random_bits-counter-hi-word")
spec(ops.uniform, lambda k, c, shape, dtype: (_philox.bits(k, c, shape) >> 8).astype(dtype)
     * np.float32(2.0 ** -24), _rng_inputs(), attrs={"shape": (2, 6), "dtype": "float32"},
     grad=False, batch=(), id="uniform-float32")
spec(ops.uniform, lambda k, c, shape, dtype: _philox.bits(k, c, shape) * 2.0 ** -32,
     _rng_inputs(), attrs={"shape": (5,), "dtype": "float64"}, grad=False, batch=(),
     id="uniform-float64")
spec(ops.dropout, _philox.dropout, _rng_inputs((4, 5)), attrs={"p": 0.3}, id="dropout-p0.3")
# A float counter (a compiled step's `step`) is a float input: not differentiable, no gradcheck.
spec(ops.dropout, _philox.dropout, _rng_inputs((2, 3, 5), counter=12.0, counter_dtype="float64"),
     attrs={"p": 0.5, "stream": 3}, grad=False, batch=((0, 0),),
     id="dropout-float-counter-stream3")
spec(ops.dropout, _philox.dropout, _rng_inputs((), counter=1), attrs={"p": 0.9},
     id="dropout-scalar")
spec(ops.dropout, _philox.dropout, _rng_inputs((3, 4)), attrs={"p": 0.0}, id="dropout-p0")
spec(ops.dropout, _philox.dropout, _rng_inputs((3, 4)), attrs={"p": 1.0}, id="dropout-p1")


# ---- fake quantization and its observers (issue 14), against numpy in the input's dtype ------
# The STE gradient of fake_quant is a step function's: no finite differences (grad=False);
# tests/test_fake_quant.py checks it against its definition and PyTorch.
def fake_quant_ref(x, scale, zero_point, qmin=-128, qmax=127, axis=None):
    dt = x.dtype.type
    view = [1] * x.ndim
    if axis is not None:
        view[axis] = -1
    s = np.asarray(scale).astype(dt).reshape(view if axis is not None else ())
    z = np.asarray(zero_point).astype(dt).reshape(view if axis is not None else ())
    q = np.rint(x * (dt(1) / s)) + z  # np.rint rounds half to even, as nearbyint
    return ((np.clip(q, qmin, qmax) - z) * s).astype(x.dtype)


def observe_ref(x, min_val, max_val, averaging_constant=0.01, which="min"):
    seen = (x.min() if which == "min" else x.max()).astype(min_val.dtype)
    old = min_val if which == "min" else max_val
    if min_val == np.inf and max_val == -np.inf:
        return np.asarray(seen)
    return np.asarray(old + min_val.dtype.type(averaging_constant) * (seen - old))


def affine_qparams_ref(min_val, max_val, qmin=0, qmax=255, which="scale"):
    dt = min_val.dtype.type
    lo, hi = np.minimum(min_val, dt(0)), np.maximum(max_val, dt(0))
    scale = np.maximum((hi - lo) / dt(qmax - qmin), dt(np.finfo(np.float32).eps))
    zp = np.clip(dt(qmin) - np.rint(lo / scale), qmin, qmax)
    seen = min_val <= max_val
    out = np.where(seen, scale, dt(1)) if which == "scale" else np.where(seen, zp, dt(0))
    return np.asarray(out, min_val.dtype)


def symmetric_scale_ref(w, qmin=-128, qmax=127, axis=0):
    dt = w.dtype.type
    amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
    return np.maximum(amax / dt((qmax - qmin) / 2), dt(np.finfo(np.float32).eps)).astype(w.dtype)


def _on_grid(*shape, step=0.25, lo=-12, hi=12):
    """Exact ties: (k + 1/2) * step for integers k, half of them, the rest normal draws."""
    def make(rng):
        ties = (rng.integers(lo, hi, size=shape) + 0.5) * step
        return np.where(rng.random(shape) < 0.5, ties, rng.standard_normal(shape) * 2)
    return make


spec(ops.fake_quant, fake_quant_ref, concat(_on_grid(4, 6), fixed(0.25), fixed(np.int32(1))),
     attrs={"qmin": -8, "qmax": 7}, grad=False, id="fake_quant-tensor-ties-clamped")
spec(ops.fake_quant, fake_quant_ref, concat(randn(3, 5), fixed([0.02]), fixed([128.0])),
     attrs={"qmin": 0, "qmax": 255}, grad=False, id="fake_quant-tensor-uint8-float-zp")
spec(ops.fake_quant, fake_quant_ref, concat(randn(4, 3), positive(4, lo=0.005, hi=0.05),
                                            fixed(np.zeros(4, np.int32))),
     attrs={"axis": 0}, grad=False, id="fake_quant-channel-axis0-int8")
spec(ops.fake_quant, fake_quant_ref, concat(_on_grid(2, 3, 2, 2, step=0.5), fixed([0.5, 0.25, 1.0]),
                                            fixed(np.array([0, -3, 4], np.int32))),
     attrs={"axis": 1, "qmin": -4, "qmax": 3}, grad=False, id="fake_quant-channel-axis1-nchw")
spec(ops.fake_quant, fake_quant_ref, concat(randn(2, 5), fixed([0.1] * 5), fixed([2] * 5)),
     attrs={"axis": -1, "qmin": -8, "qmax": 7}, grad=False, id="fake_quant-channel-axis-1")
spec(ops.quant.observe, observe_ref, concat(randn(4, 3), fixed(np.inf), fixed(-np.inf)),
     grad=False, id="observe-first-min")
spec(ops.quant.observe, observe_ref, concat(randn(4, 3), fixed(-0.5), fixed(0.7)),
     attrs={"which": "max", "averaging_constant": 0.1}, grad=False, id="observe-average-max")
spec(ops.quant.affine_qparams, affine_qparams_ref, concat(fixed(-0.3), fixed(2.2)),
     grad=False, id="affine_qparams-scale")
spec(ops.quant.affine_qparams, affine_qparams_ref, concat(fixed(-0.3), fixed(2.2)),
     attrs={"which": "zero_point"}, grad=False, id="affine_qparams-zero_point")
spec(ops.quant.affine_qparams, affine_qparams_ref,
     concat(fixed([-0.3, 0.5, np.inf, -1.0]), fixed([2.2, 1.0, -np.inf, -0.5])),
     attrs={"which": "zero_point", "qmin": -128, "qmax": 127}, grad=False,
     id="affine_qparams-per-channel-int8")
spec(ops.quant.symmetric_scale, symmetric_scale_ref, concat(randn(3, 2, 2, 2)), grad=False,
     id="symmetric_scale-conv-weight")
spec(ops.quant.symmetric_scale, symmetric_scale_ref, concat(randn(4, 5)), attrs={"axis": 1},
     grad=False, id="symmetric_scale-axis1")


# ---- int8 inference kernels (issue 14), against numpy in int64 --------------------------------
# Integer inputs (no gradient). The epilogue's multiplier is the row's float input: these rows
# dequantize (float output); requantization and quantize (integer outputs) are checked in
# tests/test_quantize.py.
def _int8_epilogue(acc, bias, multiplier, out_dtype=None, out_zero_point=0, out_qmin=0,
                   out_qmax=255):
    real = (acc + bias).astype(multiplier.dtype) * multiplier
    if out_dtype is None:
        return real
    return np.clip(np.rint(real) + out_zero_point, out_qmin, out_qmax).astype(out_dtype)


def qdense_ref(x, w, bias, multiplier, **out):
    acc = np.einsum("...k,ok->...o", x.astype(np.int64), w.astype(np.int64))
    return _int8_epilogue(acc, bias, multiplier, **out)


def qconv2d_ref(x, w, bias, multiplier, stride=1, padding=0, x_zero_point=0, **out):
    (ph, pw) = _pair(padding)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)),
                constant_values=x_zero_point)
    acc = conv2d_ref(xp, w.astype(np.int64), stride=stride)
    view = (-1, 1, 1)
    return _int8_epilogue(acc, bias.reshape(view), multiplier.reshape(view), **out)


def ints(dtype, *shape, lo=None, hi=None):
    info = np.iinfo(dtype)
    lo, hi = info.min if lo is None else lo, info.max if hi is None else hi
    return lambda rng: rng.integers(lo, hi + 1, size=shape).astype(dtype)


spec(ops.int8.qdense, qdense_ref, concat(ints("uint8", 3, 37), ints("int8", 5, 37),
                                         ints("int32", 5, lo=-3000, hi=3000),
                                         positive(5, lo=1e-4, hi=1e-3)),
     grad=False, id="qdense-u8-dequantize")
spec(ops.int8.qdense, qdense_ref, concat(ints("int8", 2, 3, 16), ints("int8", 4, 16),
                                         ints("int32", 4, lo=-100, hi=100),
                                         positive(4, lo=1e-3, hi=1e-2)),
     grad=False, id="qdense-s8-3d-dequantize")
spec(ops.int8.qconv2d, qconv2d_ref, concat(ints("uint8", 2, 3, 6, 7), ints("int8", 4, 3, 3, 3),
                                           ints("int32", 4, lo=-3000, hi=3000),
                                           positive(4, lo=1e-4, hi=1e-3)),
     attrs={"stride": 2, "padding": 1, "x_zero_point": 9}, grad=False,
     id="qconv2d-u8-s2-p1-zp9-dequantize")


# BatchNorm2d's training step split (nn.BatchNorm2d): the moments, the per-channel
# coefficients, the normalisation; and the running statistics read from the moments.
def _per_channel(v):
    return v[None, :, None, None]


def bn_moments_ref(x, one_pass=False):
    return np.stack([x.mean((0, 2, 3)), x.var((0, 2, 3))])


def moments_of(c):
    """A valid bn_moments result for c channels: a mean and a positive variance."""
    return lambda rng: np.stack([rng.standard_normal(c), rng.uniform(0.5, 2.0, size=c)])


def bn_coefficients_ref(moments, gamma, beta, eps=1e-5):
    rstd = 1 / np.sqrt(moments[1] + eps)
    return np.stack([moments[0], gamma * rstd, beta, rstd])


def bn_apply_ref(x, coef):
    return (x - _per_channel(coef[0])) * _per_channel(coef[1]) + _per_channel(coef[2])


def running_var_ref(x, moments, running, factor):
    count = x.size // x.shape[1]
    return (1 - factor) * running + factor * moments[1] * count / (count - 1)


spec(norm.bn_moments, bn_moments_ref, concat(randn(4, 3, 2, 3)), id="bn_moments-4x3x2x3")
spec(norm.bn_moments, bn_moments_ref, concat(randn(5, 2, 1, 1)), id="bn_moments-1x1-spatial")
spec(norm.bn_moments, bn_moments_ref, concat(lambda rng: 5 + 3 * rng.standard_normal((4, 3, 2, 3))),
     attrs={"one_pass": True}, derived=False, id="bn_moments-one-pass")  # a tuple reduction
spec(norm.bn_coefficients, bn_coefficients_ref, concat(moments_of(3), randn(3), randn(3)),
     batch=((0, 1), (1, 0), (2, 0)), id="bn_coefficients-3")  # any channel count
spec(norm.bn_coefficients, bn_coefficients_ref, concat(moments_of(4), randn(4), randn(4)),
     attrs={"eps": 1e-3}, batch=(), id="bn_coefficients-4-eps")
spec(norm.bn_apply, bn_apply_ref, concat(randn(4, 3, 2, 3), randn(3, 3)), batch=((0, 0),),
     id="bn_apply-4x3x2x3")
spec(norm.bn_apply, bn_apply_ref, concat(randn(4, 3, 2, 3), randn(4, 3)), batch=((0, 0),),
     id="bn_apply-4-rows")  # bn_coefficients' [4, C]: the rstd row has no gradient
spec(batch_stats.running_mean_update, lambda m, r, f: (1 - f) * r + f * m[0],
     concat(moments_of(3), randn(3), fixed(np.array(0.1))), grad=False,
     batch=((0, 1), (1, 0)), id="running_mean_update")
spec(batch_stats.running_var_update, running_var_ref,
     concat(randn(4, 3, 2, 2), moments_of(3), positive(3), fixed(np.array(0.1))),
     grad=False, batch=((0, 0),), id="running_var_update")
