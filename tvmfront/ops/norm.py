"""Normalisations, each with its explicit gradient (TVM 0.27 has no Relax gradient for any
of them, and the derived one takes fixed extents only); the derived ones are checked
against them. The batch (and any dimension statistics are not taken over per sample) may
be symbolic; batch_norm's statistics are over a symbolic N, 1 / count computed at run time.

Every gradient is the same formula over each normalised group (xhat = (x - mean) * rstd):
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma
    dgamma = sum of dy * xhat, dbeta = sum of dy over the positions sharing a gamma entry.
"""

from .._tvm import te, tirx
from ..errors import ShapeError
from ..op import op
from ._dims import dims, reciprocal, same, same_shape, show, size, static, static_shape


def _c(v, dtype):
    return tirx.const(v, dtype)


def _axes(prefix, extents):
    return [te.reduce_axis((0, d), f"{prefix}{j}") for j, d in enumerate(extents)]


# ---- layer_norm: statistics over the last k axes, per leading position ----------------------
def _ln_check(x, gamma, beta):
    k = len(gamma.shape)
    if not 1 <= k <= len(x.shape) or not same_shape(gamma.shape, x.shape[len(x.shape) - k:]) \
            or not same_shape(gamma.shape, beta.shape):
        raise ValueError(f"layer_norm: gamma/beta {show(gamma.shape)}/{show(beta.shape)} must "
                         f"both be the trailing shape of x {show(x.shape)}")
    norm_shape = static_shape(gamma.shape, "layer_norm", "normalized_shape")
    return k, norm_shape, tuple(x.shape[:len(x.shape) - k])


def _shifted_mean(shape, first, value, axes, inv, name):
    """first(i) + the mean of value(i, r) - first(i) over r: the mean about the row's first
    element, exact for a constant row (x - mean is then 0, so a norm gives beta; summed as
    it is, its rounding d came out as d / sqrt(d^2 + eps): 0.95 off for a row of 1000.1), and
    about as precise as the spread of the row, not its magnitude (rows of N(1000, 1):
    4.9e-4 off in float32, PyTorch 5.7e-5)."""
    # the first elements a stage of their own, as bn_moments's shift: read inside the sum,
    # x's one region spans both reads, and the lane rule left the sum scalar (2.7x)
    shift = te.compute(shape, first, name=f"{name}_shift")
    offset = te.compute(shape, lambda *i: te.sum((value(*i, *axes) - shift(*i)) * inv,
                                                 axis=axes), name=f"{name}_offset")
    return te.compute(shape, lambda *i: shift(*i) + offset(*i), name=name)


def _ln_stats(x, norm_shape, lead, tag):
    inv_n = reciprocal(size(norm_shape), x.dtype, "layer_norm")
    r1, r2 = _axes(f"k1{tag}_", norm_shape), _axes(f"k2{tag}_", norm_shape)
    k = len(norm_shape)
    mean = _shifted_mean(lead, lambda *i: x(*i, *[0] * k), lambda *a: x(*a), r1, inv_n,
                         "ln_mean")

    def centered_sq(i, r):
        v = x(*i, *r) - mean(*i)
        return v * v * inv_n

    var = te.compute(lead, lambda *i: te.sum(centered_sq(i, r2), axis=r2), name="ln_var")
    return mean, var


@op
def layer_norm(x, gamma, beta, eps=1e-5):
    """Normalise over the last k axes, k = gamma.ndim (PyTorch's normalized_shape):
    (x - mean) / sqrt(var + eps) * gamma + beta, gamma and beta of shape x.shape[-k:]."""
    k, norm_shape, lead = _ln_check(x, gamma, beta)
    mean, var = _ln_stats(x, norm_shape, lead, "")
    n = len(lead)
    return te.compute(x.shape, lambda *i: (x(*i) - mean(*i[:n])) * te.rsqrt(var(*i[:n]) + _c(
        eps, x.dtype)) * gamma(*i[n:]) + beta(*i[n:]), name="layer_norm")


@layer_norm.grad
def _(dy, x, gamma, beta, eps=1e-5):
    k, norm_shape, lead = _ln_check(x, gamma, beta)
    mean, var = _ln_stats(x, norm_shape, lead, "g")
    n, d = len(lead), x.dtype
    inv_n = reciprocal(size(norm_shape), d, "layer_norm")
    rstd = te.compute(lead, lambda *i: te.rsqrt(var(*i) + _c(eps, d)), name="ln_rstd")

    def xhat(*i):
        return (x(*i) - mean(*i[:n])) * rstd(*i[:n])

    r1, r2 = _axes("s1_", norm_shape), _axes("s2_", norm_shape)
    g_mean = te.compute(lead, lambda *i: te.sum(dy(*i, *r1) * gamma(*r1) * inv_n, axis=r1),
                        name="ln_g_mean")
    gx_mean = te.compute(lead, lambda *i: te.sum(dy(*i, *r2) * gamma(*r2) * xhat(*i, *r2)
                                                 * inv_n, axis=r2), name="ln_gx_mean")
    dx = te.compute(x.shape, lambda *i: rstd(*i[:n]) * (
        dy(*i) * gamma(*i[n:]) - g_mean(*i[:n]) - xhat(*i) * gx_mean(*i[:n])), name="ln_dx")
    ra, rb = _axes("l1_", lead), _axes("l2_", lead)
    dgamma = te.compute(gamma.shape, lambda *j: te.sum(dy(*ra, *j) * xhat(*ra, *j), axis=ra)
                        if ra else dy(*j) * xhat(*j), name="ln_dgamma")
    dbeta = te.compute(beta.shape, lambda *j: te.sum(dy(*rb, *j), axis=rb) if rb else dy(*j),
                       name="ln_dbeta")
    return [dx, dgamma, dbeta]


# ---- group_norm: statistics over (channels of a group, H, W), per sample ----------------------
def _gn_check(x, gamma, beta, groups):
    if len(x.shape) != 4:
        raise ValueError(f"group_norm expects x [N, C, H, W], got {show(x.shape)}")
    c = static(x.shape[1], "group_norm", "the channel count")
    if c % groups:
        raise ValueError(f"group_norm: {c} channels do not split into {groups} groups")
    if not same_shape(gamma.shape, (c,)) or not same_shape(beta.shape, (c,)):
        raise ValueError(f"group_norm: gamma/beta must be [{c}]")
    n, _, h, w = dims(x.shape)
    return n, c // groups, h, w


def _gn_stats(x, groups, cg, h, w, tag):
    n = x.shape[0]
    inv = reciprocal(size((cg, h, w)), x.dtype, "group_norm")
    a1, a2 = _axes(f"a{tag}_", (cg, h, w)), _axes(f"b{tag}_", (cg, h, w))
    mean = _shifted_mean((n, groups), lambda b, g: x[b, g * cg, 0, 0],
                         lambda b, g, k, i, j: x[b, g * cg + k, i, j], a1, inv, "gn_mean")

    def centered_sq(b, g, k, i, j):
        v = x[b, g * cg + k, i, j] - mean[b, g]
        return v * v * inv

    var = te.compute((n, groups), lambda b, g: te.sum(centered_sq(b, g, *a2), axis=a2),
                     name="gn_var")
    return mean, var, inv


@op
def group_norm(x, gamma, beta, groups=1, eps=1e-5):
    """NCHW group normalisation: statistics over (channels of a group, H, W) per sample."""
    _, cg, h, w = _gn_check(x, gamma, beta, groups)
    mean, var, _ = _gn_stats(x, groups, cg, h, w, "")
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - mean[b, ch // cg]) * te.rsqrt(
        var[b, ch // cg] + _c(eps, x.dtype)) * gamma[ch] + beta[ch], name="group_norm")


@group_norm.grad
def _(dy, x, gamma, beta, groups=1, eps=1e-5):
    n, cg, h, w = _gn_check(x, gamma, beta, groups)
    mean, var, inv = _gn_stats(x, groups, cg, h, w, "g")
    d = x.dtype
    rstd = te.compute((x.shape[0], groups), lambda b, g: te.rsqrt(var[b, g] + _c(eps, d)),
                      name="gn_rstd")

    def xhat(b, ch, i, j):
        return (x[b, ch, i, j] - mean[b, ch // cg]) * rstd[b, ch // cg]

    def gsum(name, term):
        a = _axes(f"{name}_", (cg, h, w))
        return te.compute((x.shape[0], groups), lambda b, g: te.sum(
            term(b, g * cg + a[0], a[1], a[2]) * inv, axis=a), name=name)

    g_mean = gsum("gn_g_mean", lambda b, ch, i, j: dy[b, ch, i, j] * gamma[ch])
    gx_mean = gsum("gn_gx_mean", lambda b, ch, i, j: dy[b, ch, i, j] * gamma[ch]
                   * xhat(b, ch, i, j))
    dx = te.compute(x.shape, lambda b, ch, i, j: rstd[b, ch // cg] * (
        dy[b, ch, i, j] * gamma[ch] - g_mean[b, ch // cg] - xhat(b, ch, i, j)
        * gx_mean[b, ch // cg]), name="gn_dx")
    return [dx, *_affine_grads(dy, x, xhat, "gn")]


def _affine_grads(dy, x, xhat, tag):
    """dgamma[c] = sum over (N, H, W) of dy * xhat, dbeta[c] = sum of dy (NCHW)."""
    n, c, h, w = dims(x.shape)
    a, b = _axes(f"{tag}_ga", (n, h, w)), _axes(f"{tag}_gb", (n, h, w))
    dgamma = te.compute((c,), lambda ch: te.sum(dy[a[0], ch, a[1], a[2]]
                                                * xhat(a[0], ch, a[1], a[2]), axis=a),
                        name=f"{tag}_dgamma")
    dbeta = te.compute((c,), lambda ch: te.sum(dy[b[0], ch, b[1], b[2]], axis=b),
                       name=f"{tag}_dbeta")
    return dgamma, dbeta


# ---- batch_norm: statistics over (N, H, W), per channel ----------------------------------------
def _nchw(x, name):
    if len(x.shape) != 4:
        raise ShapeError(f"{name} expects x [N, C, H, W], got {show(x.shape)}")


def _bn_check(x, gamma, beta):
    _nchw(x, "batch_norm")
    c = static(x.shape[1], "batch_norm", "the channel count")
    if not same_shape(gamma.shape, (c,)) or not same_shape(beta.shape, (c,)):
        raise ValueError(f"batch_norm: gamma/beta must be [{c}]")
    return c


def _count_inv(x):
    """1 / (N * H * W) of NCHW x (a TE expression when N is symbolic)."""
    n, _, h, w = dims(x.shape)
    return reciprocal(size((n, h, w)), x.dtype, "batch_norm")


def batch_moments(x, tag=""):
    """(mean, biased variance, 1 / count) per channel of NCHW x, count = N * H * W (a TE
    expression when N is symbolic)."""
    n, c, h, w = dims(x.shape)
    inv = _count_inv(x)
    a1, a2 = _axes(f"b1{tag}_", (n, h, w)), _axes(f"b2{tag}_", (n, h, w))
    mean = _shifted_mean((c,), lambda ch: x[0, ch, 0, 0],
                         lambda ch, b, i, j: x[b, ch, i, j], a1, inv, f"bn_mean{tag}")

    def centered_sq(ch, b, i, j):
        v = x[b, ch, i, j] - mean[ch]
        return v * v * inv

    var = te.compute((c,), lambda ch: te.sum(centered_sq(ch, *a2), axis=a2), name=f"bn_var{tag}")
    return mean, var, inv


@op
def batch_norm(x, gamma, beta, eps=1e-5):
    """NCHW batch normalisation with the batch's own statistics (training mode)."""
    _bn_check(x, gamma, beta)
    mean, var, _ = batch_moments(x)
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - mean[ch]) * te.rsqrt(
        var[ch] + _c(eps, x.dtype)) * gamma[ch] + beta[ch], name="batch_norm")


@batch_norm.grad
def _(dy, x, gamma, beta, eps=1e-5):
    c = _bn_check(x, gamma, beta)
    mean, var, inv = batch_moments(x, "g")
    rstd = te.compute((c,), lambda ch: te.rsqrt(var[ch] + _c(eps, x.dtype)), name="bn_rstd")

    def xhat(b, ch, i, j):
        return (x[b, ch, i, j] - mean[ch]) * rstd[ch]

    dgamma, dbeta = _affine_grads(dy, x, xhat, "bn")
    # mean(g) = gamma * dbeta / count, mean(g * xhat) = gamma * dgamma / count
    dx = te.compute(x.shape, lambda b, ch, i, j: rstd[ch] * gamma[ch] * (
        dy[b, ch, i, j] - dbeta[ch] * inv - xhat(b, ch, i, j) * dgamma[ch] * inv), name="bn_dx")
    return [dx, dgamma, dbeta]


# ---- BatchNorm2d's training step as three ops: moments, coefficients, normalisation -----------
# batch_norm above recomputes the statistics in every kernel that needs them: its forward
# and each of its three gradient kernels (one per input), and the running statistics read x
# again: about 18 passes over the activation per layer and step. Split, the statistics are
# two passes (bn_moments, which the running statistics read too), the per-channel
# coefficients [C]-sized kernels, and the normalisation an elementwise map whose gradient
# is one pass of two per-channel sums and an elementwise dy * scale; bn_moments' own dx, an
# elementwise map of x and the forward's moments, is added to it. A ReLU after the
# normalisation fuses with it (relu's gradient reads relu's output). The two dx pieces and
# their sum are one kernel (pipeline.untuple_gradients: Relax's Gradient binds an op's input
# gradients into a tuple, a second consumer that kept FuseOps from fusing them).
def _pair_sums(x, first, second, name):
    """Two per-channel sums over (N, H, W) of NCHW x, of first(b, ch, i, j) and
    second(b, ch, i, j), in one pass (a tuple reduction: one loop nest, both accumulators)."""
    n, c, h, w = dims(x.shape)
    pair_sum = te.comm_reducer(lambda u, v: (u[0] + v[0], u[1] + v[1]),
                               lambda t0, t1: (tirx.const(0, t0), tirx.const(0, t1)),
                               name="pair_sum")
    a = _axes(f"{name}_", (n, h, w))
    return te.compute((c,), lambda ch: pair_sum((first(a[0], ch, a[1], a[2]),
                                                 second(a[0], ch, a[1], a[2])), axis=a), name=name)


@op
def bn_moments(x, one_pass=False):
    """[2, C]: the mean and the biased variance over (N, H, W) per channel of NCHW x.
    Two passes by default, the variance about the mean. one_pass=True: one pass, a tuple
    reduction of the sums of x - s and (x - s)^2 about a sample s = x[0, c, 0, 0] of the
    channel (near its mean, so m2 - m1^2 keeps its precision; about 0 it would not); autodiff
    takes one output per stage, so a derived gradient needs the two-pass form (BatchNorm2d
    asks for one pass unless gradients are derived)."""
    _nchw(x, "bn_moments")
    if not one_pass:
        mean, var, _ = batch_moments(x, "m")
        return te.compute((2, x.shape[1]), lambda k, ch: tirx.Select(k == 0, mean[ch], var[ch]),
                          name="bn_moments")
    inv = _count_inv(x)
    # a stage of its own: read inside the sums, x's one region would span both reads
    shift = te.compute((x.shape[1],), lambda ch: x[0, ch, 0, 0], name="bn_shift")

    def centered(b, ch, i, j):
        return x[b, ch, i, j] - shift[ch]

    s1, s2 = _pair_sums(x, centered, lambda *i: centered(*i) * centered(*i), "bn_sums")

    def moment(k, ch):
        m1 = s1[ch] * inv
        # rounding can take a constant channel's m2 - m1^2 just below 0
        var = tirx.max(s2[ch] * inv - m1 * m1, _c(0, x.dtype))
        return tirx.Select(k == 0, shift[ch] + m1, var)

    return te.compute((2, x.shape[1]), moment, name="bn_moments")


@bn_moments.grad(uses_output=True)
def _(dm, moments, x, one_pass=False):
    # d mean / dx = 1 / count, d var / dx = 2 (x - mean) / count: elementwise, the mean read
    # from the forward's moments, so it fuses with bn_apply's dx into one pass
    inv = _count_inv(x)
    return te.compute(x.shape, lambda b, ch, i, j: (dm[0, ch] + _c(2, x.dtype) * (
        x[b, ch, i, j] - moments[0, ch]) * dm[1, ch]) * inv, name="bn_moments_dx")


def _bn_rstd(moments, ch, eps):
    return te.rsqrt(moments[1, ch] + _c(eps, moments.dtype))


@op
def bn_coefficients(moments, gamma, beta, eps=1e-5):
    """[4, C] from bn_moments' [2, C]: the batch mean, the scale gamma * rstd, beta (bn_apply's
    per-channel coefficients) and rstd = 1 / sqrt(var + eps), which the gradient reads."""
    channels = moments.shape[1:]
    if len(moments.shape) != 2 or not same(moments.shape[0], 2) \
            or not same_shape(gamma.shape, channels) or not same_shape(beta.shape, channels):
        raise ShapeError(f"bn_coefficients expects moments [2, C] and gamma, beta [C], got "
                         f"{show(moments.shape)}, {show(gamma.shape)}, {show(beta.shape)}")

    def coef(k, ch):
        rstd = _bn_rstd(moments, ch, eps)
        return tirx.Select(k == 0, moments[0, ch], tirx.Select(
            k == 1, gamma[ch] * rstd, tirx.Select(k == 2, beta[ch], rstd)))

    return te.compute((4, moments.shape[1]), coef, name="bn_coefficients")


@bn_coefficients.grad(uses_output=True)
def _(dc, coef, moments, gamma, beta, eps=1e-5):
    # rstd read from the forward's coefficients: the dmoments row is inlined into the
    # elementwise dx kernel it feeds (FuseOps), a square root per element otherwise
    c, d = moments.shape[1], moments.dtype

    def dvar(ch):  # d rstd / d var = -rstd^3 / 2; rstd feeds the scale and row 3
        r = coef[3, ch]
        return (dc[1, ch] * gamma[ch] + dc[3, ch]) * _c(-0.5, d) * r * r * r

    dmoments = te.compute((2, c), lambda k, ch: tirx.Select(k == 0, dc[0, ch], dvar(ch)),
                          name="dmoments")
    dgamma = te.compute((c,), lambda ch: dc[1, ch] * coef[3, ch], name="dgamma")
    dbeta = te.compute((c,), lambda ch: dc[2, ch], name="dbeta")
    return [dmoments, dgamma, dbeta]


@op
def bn_apply(x, coef):
    """(x - coef[0]) * coef[1] + coef[2] per channel of NCHW x (bn_coefficients' rows; rows
    after the third are not read)."""
    _nchw(x, "bn_apply")
    rows = dims(coef.shape)[0] if len(coef.shape) == 2 else None
    if not (isinstance(rows, int) and rows >= 3 and same(coef.shape[1], x.shape[1])):
        raise ShapeError(f"bn_apply expects coef [3 or more, C] for x {show(x.shape)}, got "
                         f"{show(coef.shape)}")
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - coef[0, ch]) * coef[1, ch]
                      + coef[2, ch], name="bn_apply")


@bn_apply.grad
def _(dy, x, coef):
    n, c, h, w = dims(x.shape)
    dx = te.compute(x.shape, lambda b, ch, i, j: dy[b, ch, i, j] * coef[1, ch],
                    name="bn_apply_dx")

    def dy_centered(b, ch, i, j):
        return dy[b, ch, i, j] * (x[b, ch, i, j] - coef[0, ch])

    sum_dy, sum_dyx = _pair_sums(x, lambda b, ch, i, j: dy[b, ch, i, j], dy_centered,
                                 "bn_grad_sums")
    zero = _c(0, x.dtype)  # rows past beta's (bn_coefficients' rstd) do not enter y
    dcoef = te.compute(coef.shape, lambda k, ch: tirx.Select(
        k == 0, -coef[1, ch] * sum_dy[ch], tirx.Select(
            k == 1, sum_dyx[ch], tirx.Select(k == 2, sum_dy[ch], zero))), name="bn_dcoef")
    return [dx, dcoef]
