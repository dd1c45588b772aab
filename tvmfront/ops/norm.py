"""Normalisations. Their gradients are derived from the TE forward (no .grad):
TVM 0.27 has no Relax gradient for any of them."""

import math

from .._tvm import te, tirx
from ..op import op


def _c(v, dtype):
    return tirx.const(v, dtype)


@op
def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalise over the last k axes, k = gamma.ndim (PyTorch's normalized_shape):
    (x - mean) / sqrt(var + eps) * gamma + beta, gamma and beta of shape x.shape[-k:]."""
    k = len(gamma.shape)
    norm_shape = tuple(int(d) for d in x.shape[len(x.shape) - k:])
    if not 1 <= k <= len(x.shape) or tuple(int(d) for d in gamma.shape) != norm_shape or \
            tuple(gamma.shape) != tuple(beta.shape):
        raise ValueError(f"layer_norm: gamma/beta {list(gamma.shape)}/{list(beta.shape)} must "
                         f"both be the trailing shape of x {list(x.shape)}")
    lead = tuple(x.shape[:len(x.shape) - k])
    inv_n = _c(1.0 / math.prod(norm_shape), x.dtype)
    r1 = [te.reduce_axis((0, d), f"k1_{j}") for j, d in enumerate(norm_shape)]
    r2 = [te.reduce_axis((0, d), f"k2_{j}") for j, d in enumerate(norm_shape)]
    mean = te.compute(lead, lambda *i: te.sum(x(*i, *r1) * inv_n, axis=r1), name="ln_mean")

    def centered_sq(i, r):
        v = x(*i, *r) - mean(*i)
        return v * v * inv_n

    var = te.compute(lead, lambda *i: te.sum(centered_sq(i, r2), axis=r2), name="ln_var")
    n = len(lead)
    return te.compute(x.shape, lambda *i: (x(*i) - mean(*i[:n])) * te.rsqrt(var(*i[:n]) + _c(
        eps, x.dtype)) * gamma(*i[n:]) + beta(*i[n:]), name="layer_norm")


@op
def group_norm(x, gamma, beta, groups=1, eps=1e-5):
    """NCHW group normalisation: statistics over (channels of a group, H, W) per sample."""
    n, c, h, w = (int(d) for d in x.shape)
    if c % groups:
        raise ValueError(f"group_norm: {c} channels do not split into {groups} groups")
    if tuple(int(d) for d in gamma.shape) != (c,) or tuple(int(d) for d in beta.shape) != (c,):
        raise ValueError(f"group_norm: gamma/beta must be [{c}]")
    cg = c // groups
    inv = _c(1.0 / (cg * h * w), x.dtype)
    axes1 = [te.reduce_axis((0, cg), "cg"), te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")]
    axes2 = [te.reduce_axis((0, cg), "cg2"), te.reduce_axis((0, h), "rh2"),
             te.reduce_axis((0, w), "rw2")]
    mean = te.compute((n, groups), lambda b, g: te.sum(
        x[b, g * cg + axes1[0], axes1[1], axes1[2]] * inv, axis=axes1), name="gn_mean")

    def centered_sq(b, g, k, i, j):
        v = x[b, g * cg + k, i, j] - mean[b, g]
        return v * v * inv

    var = te.compute((n, groups), lambda b, g: te.sum(centered_sq(b, g, *axes2), axis=axes2),
                     name="gn_var")
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - mean[b, ch // cg]) * te.rsqrt(
        var[b, ch // cg] + _c(eps, x.dtype)) * gamma[ch] + beta[ch], name="group_norm")


@op
def batch_norm(x, gamma, beta, eps=1e-5):
    """NCHW batch normalisation with the batch's own statistics (training mode)."""
    n, c, h, w = (int(d) for d in x.shape)
    if tuple(int(d) for d in gamma.shape) != (c,) or tuple(int(d) for d in beta.shape) != (c,):
        raise ValueError(f"batch_norm: gamma/beta must be [{c}]")
    inv = _c(1.0 / (n * h * w), x.dtype)
    a1 = [te.reduce_axis((0, n), "b"), te.reduce_axis((0, h), "rh"), te.reduce_axis((0, w), "rw")]
    a2 = [te.reduce_axis((0, n), "b2"), te.reduce_axis((0, h), "rh2"), te.reduce_axis((0, w), "rw2")]
    mean = te.compute((c,), lambda ch: te.sum(x[a1[0], ch, a1[1], a1[2]] * inv, axis=a1),
                      name="bn_mean")

    def centered_sq(ch, b, i, j):
        v = x[b, ch, i, j] - mean[ch]
        return v * v * inv

    var = te.compute((c,), lambda ch: te.sum(centered_sq(ch, *a2), axis=a2), name="bn_var")
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - mean[ch]) * te.rsqrt(
        var[ch] + _c(eps, x.dtype)) * gamma[ch] + beta[ch], name="batch_norm")
