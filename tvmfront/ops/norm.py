"""Normalisations and GELU. Their gradients are derived from the TE forward (no .grad):
TVM 0.27 has no Relax gradient for any of them."""

import math

from .._tvm import te, tirx
from ..op import op


def _c(v, dtype):
    return tirx.const(v, dtype)


@op
def gelu(x):
    """x * Phi(x), the exact (erf) form."""
    half, inv_sqrt2 = _c(0.5, x.dtype), _c(1 / math.sqrt(2), x.dtype)
    return te.compute(x.shape, lambda *i: half * x(*i) * (_c(1, x.dtype) + te.erf(x(*i) * inv_sqrt2)),
                      name="gelu")


@op
def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalise over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta."""
    if len(gamma.shape) != 1 or int(gamma.shape[0]) != int(x.shape[-1]) or \
            tuple(gamma.shape) != tuple(beta.shape):
        raise ValueError(f"layer_norm: gamma/beta {list(gamma.shape)}/{list(beta.shape)} must be "
                         f"[{int(x.shape[-1])}] for x {list(x.shape)}")
    lead, d = tuple(x.shape[:-1]), int(x.shape[-1])
    inv_d = _c(1.0 / d, x.dtype)
    k1, k2 = te.reduce_axis((0, d), "k1"), te.reduce_axis((0, d), "k2")
    mean = te.compute(lead, lambda *i: te.sum(x(*i, k1) * inv_d, axis=k1), name="ln_mean")
    var = te.compute(lead, lambda *i: te.sum((x(*i, k2) - mean(*i)) * (x(*i, k2) - mean(*i))
                                             * inv_d, axis=k2), name="ln_var")
    return te.compute(x.shape, lambda *i: (x(*i) - mean(*i[:-1])) * te.rsqrt(var(*i[:-1]) + _c(
        eps, x.dtype)) * gamma[i[-1]] + beta[i[-1]], name="layer_norm")


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
