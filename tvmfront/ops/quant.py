"""Fake quantization for quantization-aware training, and the small kernels that choose its
scales (PyTorch's observers).

``fake_quant`` is PyTorch's ``torch.fake_quantize_per_tensor_affine`` /
``fake_quantize_per_channel_affine``: q = clamp(nearbyint(x * (1 / scale)) + zero_point,
qmin, qmax), returned dequantized as (q - zero_point) * scale. Rounding is half to even
(``nearbyint``, as PyTorch's kernels; ``tirx.round`` would round ties away from zero). Its
gradient is the straight-through estimator: dy where nearbyint(x / scale) + zero_point lies in
[qmin, qmax] (before clamping), 0 outside. scale and zero_point are tensor inputs (buffers or
computed in the step), so a new scale never recompiles; they get no gradient.

The other ops feed buffers only (their inputs are detached, so they need no gradient):
``observe`` is MovingAverageMinMaxObserver's update, ``affine_qparams`` and
``symmetric_scale`` are ``calculate_qparams`` of PyTorch's per-tensor affine and per-channel
symmetric observers, in float32 arithmetic as PyTorch does it.
"""

import numpy as np

from .._checks import is_whole
from .._tvm import te, tirx
from ..autodiff import if_else_zero
from ..errors import ShapeError
from ..op import op
from ._dims import same, show

# PyTorch's observers clamp a scale to at least float32's machine epsilon.
SCALE_EPS = float(np.finfo(np.float32).eps)


def _c(value, dtype):
    return tirx.const(value, dtype)


def _check_range(name, qmin, qmax):
    if not (is_whole(qmin) and is_whole(qmax) and qmin < qmax):
        raise ValueError(f"{name}: qmin and qmax must be integers with qmin < qmax, got "
                         f"qmin={qmin!r}, qmax={qmax!r}")


def _channel_reader(x, scale, zero_point, axis):
    """(scale, zero_point) at element i of x, as x's dtype: per tensor (axis None; scale of
    shape () or (1,)) or per channel along `axis` (scale of shape (x.shape[axis],))."""
    if str(x.dtype) not in ("float32", "float64"):
        raise TypeError(f"fake_quant: x must be float32 or float64, got {x.dtype}")
    if tuple(show(scale.shape)) != tuple(show(zero_point.shape)):
        raise ShapeError(f"fake_quant: scale has shape {tuple(show(scale.shape))} but "
                         f"zero_point has {tuple(show(zero_point.shape))}")
    if axis is None:
        if len(scale.shape) > 1 or (len(scale.shape) == 1 and not same(scale.shape[0], 1)):
            raise ShapeError(f"fake_quant: per-tensor scale must have shape () or (1,), got "
                             f"{tuple(show(scale.shape))} (pass axis= for per-channel)")
        at = (lambda i: ()) if len(scale.shape) == 0 else (lambda i: (0,))
    else:
        ndim = len(x.shape)
        if not is_whole(axis, -ndim, ndim - 1):
            raise ValueError(f"fake_quant: axis {axis!r} out of range for a {ndim}-d input")
        axis = int(axis) % ndim
        if len(scale.shape) != 1 or not same(scale.shape[0], x.shape[axis]):
            raise ShapeError(f"fake_quant: per-channel scale along axis {axis} must have shape "
                             f"({show([x.shape[axis]])[0]},), got {tuple(show(scale.shape))}")
        at = lambda i: (i[axis],)  # noqa: E731
    dt = x.dtype
    return (lambda i: scale(*at(i)).astype(dt)), (lambda i: zero_point(*at(i)).astype(dt))


def _quantized(x, s, z, i):
    """nearbyint(x * (1 / scale)) + zero_point, unclamped (PyTorch multiplies by the
    reciprocal, computed in the scale's precision; so does this)."""
    return tirx.nearbyint(x(*i) * (_c(1, x.dtype) / s(i))) + z(i)


@op
def fake_quant(x, scale, zero_point, qmin=-128, qmax=127, axis=None):
    """Quantize x to integers in [qmin, qmax] and back: (clamp(nearbyint(x / scale) + zp,
    qmin, qmax) - zp) * scale. Per tensor (scale, zero_point of shape () or (1,)) or per
    channel along `axis` (shape (x.shape[axis],)); zero_point may be integer or float.

    >>> fake_quant(np.float32([0.26, -3.0]), np.float32(0.1), np.int32(0), qmin=-8, qmax=7)
    array([ 0.3, -0.8], dtype=float32)
    """
    _check_range("fake_quant", qmin, qmax)
    s, z = _channel_reader(x, scale, zero_point, axis)
    lo, hi = _c(qmin, x.dtype), _c(qmax, x.dtype)

    def body(*i):
        q = te.min(te.max(_quantized(x, s, z, i), lo), hi)
        return (q - z(i)) * s(i)

    return te.compute(x.shape, body, name="fake_quant")


@fake_quant.grad
def _(dy, x, scale, zero_point, qmin=-128, qmax=127, axis=None):
    # x: the straight-through estimator (the rounding passes dy unchanged, the clamp stops
    # it). scale and a float zero_point: PyTorch's learnable fake quantization (LSQ,
    # torch._fake_quantize_learnable_per_*_affine with grad_factor 1), summed per channel;
    # only computed where they are trained (a Parameter), never for buffers.
    s, z = _channel_reader(x, scale, zero_point, axis)
    lo, hi = _c(qmin, x.dtype), _c(qmax, x.dtype)

    def inside(q):
        return te.all(q >= lo, q <= hi)

    # branch-free (autodiff.if_else_zero): a guarded load is a branch per element where the
    # kernel is not vectorized, mispredicted on real data (see ops.relu's gradient)
    def dx(*i):
        return if_else_zero(inside(_quantized(x, s, z, i)), dy(*i), x.dtype)

    def dscale(i):
        # in range: (fake_quant(x) - x) / scale; clamped: (qmin or qmax) - zero_point
        q = _quantized(x, s, z, i)
        fq = (te.min(te.max(q, lo), hi) - z(i)) * s(i)
        return dy(*i) * te.if_then_else(q < lo, lo - z(i), te.if_then_else(
            q > hi, hi - z(i), (fq - x(*i)) * (_c(1, x.dtype) / s(i))))

    def dzero_point(i):
        return if_else_zero(tirx.Not(inside(_quantized(x, s, z, i))), -dy(*i) * s(i), x.dtype)

    grads = [te.compute(x.shape, dx, name="fake_quant_grad"),
             _summed(x, scale, dscale, axis, "fake_quant_grad_scale"), None]
    if str(zero_point.dtype).startswith("float"):
        grads[2] = _summed(x, zero_point, dzero_point, axis, "fake_quant_grad_zero_point")
    return grads


def _summed(x, like, term, axis, name):
    """sum of term(i) over x's positions i, into like's shape: all of x (per tensor) or all
    but `axis` (per channel)."""
    ndim = len(x.shape)
    keep = None if axis is None else int(axis) % ndim
    r = {a: te.reduce_axis((0, x.shape[a]), f"r{a}") for a in range(ndim) if a != keep}

    def body(*j):
        i = [j[0] if a == keep else r[a] for a in range(ndim)]
        v = term(i).astype(like.dtype)
        return te.sum(v, axis=list(r.values())) if r else v

    return te.compute(like.shape, body, name=name)


# ---- observers: the scale and zero point from what was seen ---------------------------------
def _extreme(x, which, name):
    """min or max of all of x, as a 0-d tensor."""
    axes = [te.reduce_axis((0, d), f"r{k}") for k, d in enumerate(x.shape)]
    reduce = te.min if which == "min" else te.max
    if not axes:
        return te.compute((), lambda: x(), name=name)
    return te.compute((), lambda: reduce(x(*axes), axis=axes), name=name)


@op
def observe(x, min_val, max_val, averaging_constant=0.01, which="min"):
    """The new min_val (which="min") or max_val ("max") of PyTorch's
    MovingAverageMinMaxObserver after seeing x: the min (max) of x on the first call (both
    still at their initial +inf / -inf), else old + c * (min(x) - old). 0-d in, 0-d out."""
    if which not in ("min", "max"):
        raise ValueError(f"observe: which must be 'min' or 'max', got {which!r}")
    if min_val.shape or max_val.shape:
        raise ShapeError("observe: min_val and max_val must be 0-d")
    dt = min_val.dtype
    cur = _extreme(x, which, f"observed_{which}")
    old = min_val if which == "min" else max_val
    c = _c(averaging_constant, dt)

    def body():
        fresh = te.all(min_val() == _c(np.inf, dt), max_val() == _c(-np.inf, dt))
        seen = cur().astype(dt)
        return te.if_then_else(fresh, seen, old() + c * (seen - old()))

    return te.compute((), body, name=f"observe_{which}")


@op
def affine_qparams(min_val, max_val, qmin=0, qmax=255, which="scale"):
    """PyTorch's affine calculate_qparams, elementwise (0-d per tensor, [C] per channel):
    scale = (max(max_val, 0) - min(min_val, 0)) / (qmax - qmin), at least float32's eps;
    zero_point = qmin - round(min(min_val, 0) / scale), clamped to [qmin, qmax] (a float
    holding an integer). Where nothing was seen (min_val > max_val) scale 1 and zero_point 0,
    as PyTorch. which: "scale" or "zero_point"."""
    _check_range("affine_qparams", qmin, qmax)
    if which not in ("scale", "zero_point"):
        raise ValueError(f"affine_qparams: which must be 'scale' or 'zero_point', got {which!r}")
    if tuple(show(min_val.shape)) != tuple(show(max_val.shape)):
        raise ShapeError(f"affine_qparams: min_val {tuple(show(min_val.shape))} and max_val "
                         f"{tuple(show(max_val.shape))} differ")
    dt = min_val.dtype
    zero = _c(0, dt)

    def body(*i):
        lo, hi = te.min(min_val(*i), zero), te.max(max_val(*i), zero)
        scale = te.max((hi - lo) / _c(float(qmax - qmin), dt), _c(SCALE_EPS, dt))
        if which == "scale":
            value, unseen = scale, _c(1, dt)
        else:
            zp = _c(qmin, dt) - tirx.nearbyint(lo / scale)
            value, unseen = te.min(te.max(zp, _c(qmin, dt)), _c(qmax, dt)), zero
        return te.if_then_else(min_val(*i) <= max_val(*i), value, unseen)

    return te.compute(min_val.shape, body, name=f"affine_{which}")


@op
def symmetric_scale(w, qmin=-128, qmax=127, axis=0):
    """Per-channel symmetric scales along `axis` (PyTorch's per_channel_symmetric
    calculate_qparams): max |w| over the other axes / ((qmax - qmin) / 2), at least float32's
    eps. The zero points are 0."""
    _check_range("symmetric_scale", qmin, qmax)
    ndim = len(w.shape)
    if not is_whole(axis, -ndim, ndim - 1):
        raise ValueError(f"symmetric_scale: axis {axis!r} out of range for a {ndim}-d input")
    axis = int(axis) % ndim
    dt = w.dtype
    rest = [te.reduce_axis((0, d), f"r{k}") for k, d in enumerate(w.shape) if k != axis]

    def amax(ch):
        idx = list(rest)
        idx.insert(axis, ch)
        return te.max(te.abs(w(*idx)), axis=rest) if rest else te.abs(w(*idx))

    absmax = te.compute((w.shape[axis],), amax, name="absmax")
    half = _c((qmax - qmin) / 2, dt)
    return te.compute((w.shape[axis],), lambda ch: te.max(
        te.max(absmax[ch], _c(0, dt)) / half, _c(SCALE_EPS, dt)), name="symmetric_scale")
