"""ops.max, ops.max_pool2d and ops.clip keep NaN and -inf as numpy and PyTorch do.

TVM's max(a, b) is `a > b ? a : b` (a NaN survives only as the second operand) and te.max
starts from the lowest finite value: ops.max([1, nan, 3]) was 3, a max-pool window of -inf
gave -3.4e38 and clip(nan) its lower bound. The gradient goes to the first NaN, else the first
maximum (torch.max(x, dim)'s rule; a window holding both NaN and +inf: the first of them,
where PyTorch takes a NaN), counting only a pool window's elements inside the input.
"""

import math

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

nn = tvf.nn
NAN, INF = math.nan, math.inf


def _specials(shape, seed, block=4):
    """Integers (ties) with NaN, +inf and -inf sprinkled in (fewer NaN for larger windows,
    which would all hold one), and a block x[0, 0, :block, :block] all -inf."""
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, shape).astype("float32")
    u = rng.random(shape)
    nan = min(0.06, 1.0 / block ** 2)
    x[u < nan] = NAN
    x[(u >= 0.06) & (u < 0.16)] = -INF
    x[(u >= 0.16) & (u < 0.19)] = INF
    x[0, 0, :block, :block] = -INF
    return x


def _first_max(vals, axis=None):
    """np.argmax with NaN counted as +inf: the first NaN or +inf where there is one."""
    return np.argmax(np.where(np.isnan(vals), INF, vals), axis=axis)


def _pool_reference(x, dy, kernel, stride, padding):
    """(forward, gradient) of a max-pool in numpy: np.max and _first_max over each window's
    elements inside the input, in row-major scan order."""
    n, c, h, w = x.shape
    ho, wo = dy.shape[2:]
    y, dx = np.empty(dy.shape, x.dtype), np.zeros_like(x)
    for b, ch, oh, ow in np.ndindex(dy.shape):
        at = [(i, j) for i in range(oh * stride - padding, oh * stride - padding + kernel)
              for j in range(ow * stride - padding, ow * stride - padding + kernel)
              if 0 <= i < h and 0 <= j < w]
        vals = np.array([x[b, ch, i, j] for i, j in at])
        y[b, ch, oh, ow] = np.max(vals)
        dx[(b, ch, *at[int(_first_max(vals))])] += dy[b, ch, oh, ow]
    return y, dx


POOLS = [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0), (5, 5, 2), (3, 3, 1), (8, 8, 0)]


@pytest.mark.parametrize("kernel,stride,padding", POOLS)
def test_max_pool_keeps_nan_and_minus_inf(kernel, stride, padding):
    size = max(10, 2 * kernel)
    x = _specials((2, 3, size, size), kernel * 10 + stride, max(4, kernel))
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    out = np.asarray(ops.max_pool2d(x, **attrs))
    dy = np.arange(1, out.size + 1, dtype="float32").reshape(out.shape)
    want_y, want_dx = _pool_reference(x, dy, kernel, stride, padding)
    np.testing.assert_array_equal(out, want_y)  # NaN where NaN, -inf where -inf
    assert np.isnan(out).any() and np.isneginf(out).any()
    (dx,) = ops.max_pool2d.vjp(dy, x, **attrs)
    np.testing.assert_array_equal(dx, want_dx)


def test_derived_max_pool_gradient_follows_the_same_rule():
    # unpadded: the derived gradient's padding (-inf) is no element (see autodiff's scan)
    for kernel, stride in ((2, 2), (2, 1), (8, 8)):
        x = _specials((1, 2, 2 * kernel, 2 * kernel), kernel, kernel)
        attrs = dict(kernel=kernel, stride=stride)
        dy = np.ones(ops.max_pool2d(x, **attrs).shape, "float32")
        (dx,) = ops.max_pool2d.vjp(dy, x, derived=True, **attrs)
        np.testing.assert_array_equal(dx, _pool_reference(x, dy, kernel, stride, 0)[1])


@pytest.mark.parametrize("axis", [1, 0, None])
def test_max_keeps_nan_and_minus_inf(axis):
    x = np.array([[1, NAN, 3, NAN, 0], [-INF] * 5, [2, 2, -INF, INF, 1], [4, 0, 4, 1, NAN]],
                 "float32")
    got = np.asarray(ops.max(x, axis=axis))
    np.testing.assert_array_equal(got, np.max(x, axis=axis))
    dy = np.arange(1, got.size + 1, dtype="float32").reshape(got.shape)
    (dx,) = ops.max.vjp(dy, x, axis=axis)
    want = np.zeros_like(x)
    if axis is None:
        want.flat[_first_max(x)] = dy
    elif axis == 1:
        want[np.arange(4), _first_max(x, 1)] = dy
    else:
        want[_first_max(x, 0), np.arange(5)] = dy
    np.testing.assert_array_equal(dx, want)
    # The derived gradient follows the forward's plain te.max (extremum.max_class makes the
    # NaN and -inf outputs): the same where the max is an element's (+inf too), none where
    # it is NaN or -inf
    (derived,) = ops.max.vjp(dy, x, axis=axis, derived=True)
    top = np.max(x, axis=axis, keepdims=True)
    held = (top > -INF) & np.ones_like(x, bool)  # False for NaN and -inf
    np.testing.assert_array_equal(derived[held], want[held])
    assert not derived[~held].any() and (~held).any()


def test_clip_keeps_nan():
    x = np.array([NAN, -INF, INF, -1.0, 0.5, 3.0], "float32")
    np.testing.assert_array_equal(ops.clip(x, lo=0.0, hi=1.0), np.clip(x, 0.0, 1.0))
    (dx,) = ops.clip.vjp(np.ones(6, "float32"), x, lo=0.0, hi=1.0)
    np.testing.assert_array_equal(dx, [0, 0, 0, 0, 1, 0])  # torch.clamp's: 0 at NaN


def test_user_te_max_keeps_tvms_meaning():
    """A user's own te.max is TVM's (NaN dropped, from the lowest finite value), and its
    derived gradient agrees with that forward."""
    te = tvf.te

    @tvf.op
    def row_max(x):
        k = te.reduce_axis((0, x.shape[1]), "k")
        return te.compute((x.shape[0],), lambda i: te.max(x[i, k], axis=k), name="row_max")

    x = np.array([[1, NAN, 3], [-INF, -INF, -INF]], "float32")
    got = np.asarray(row_max(x))
    assert got[0] == 3 and got[1] == np.finfo("float32").min
    (dx,) = row_max.vjp(np.ones(2, "float32"), x)
    np.testing.assert_array_equal(dx, [[0, 0, 1], [0, 0, 0]])


class LogPool(nn.Module):
    """NaN and -inf made inside a compiled module (its inputs are checked to be finite)."""

    def forward(self, x):
        y = ops.log(x)  # log(0) = -inf, log(-1) = NaN
        return ops.concat(ops.reshape(ops.max_pool2d(y, kernel=2), shape=(1, 4)),
                          ops.reshape(ops.max(y, axis=(2, 3)), shape=(1, 1)),
                          ops.reshape(ops.clip(y, lo=-1.0, hi=1.0), shape=(1, 16)), axis=1)


def test_compiled_module_keeps_nan_and_minus_inf():
    x = np.array([[1, 2, 0, 0], [3, -1, 0, 0], [5, 6, 7, 8], [1, 1, 2, 9]],
                 "float32").reshape(1, 1, 4, 4)
    module = tvf.compile_inference(LogPool(), inputs=x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(x)
    pooled = y.reshape(2, 2, 2, 2).transpose(0, 2, 1, 3).reshape(4, 4).max(axis=1)
    want = np.concatenate([pooled, [np.max(y)], np.clip(y, -1, 1).ravel()])
    np.testing.assert_array_equal(np.asarray(module(x)).ravel(), want)
