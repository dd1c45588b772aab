"""2-D convolution, NCHW input and OIHW weights, with stride and zero padding. The batch N
may be symbolic; channels, height, width and the kernel are fixed sizes."""

from .._tvm import te, tirx
from ..op import op
from ._dims import dims, show, static_shape


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(x) for x in v)


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _padded(x, ph, pw, name):
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = dims(x.shape)
    zero = tirx.const(0, x.dtype)
    return te.compute((n, c, h + 2 * ph, w + 2 * pw), lambda a, b, i, j: te.if_then_else(
        te.all(i >= ph, i < h + ph, j >= pw, j < w + pw), x[a, b, i - ph, j - pw], zero), name=name)


def _check(x, w, stride, padding):
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise ValueError(f"conv2d expects x [N, C, H, W] and w [O, C, KH, KW], got "
                         f"{show(x.shape)} and {show(w.shape)}")
    _, c, h, wd = static_shape((1, *x.shape[1:]), "conv2d", "x's channels, height and width")
    _, c_w, kh, kw = static_shape(w.shape, "conv2d", "the weight's shape")
    if c != c_w:
        raise ValueError(f"conv2d expects x [N, C, H, W] and w [O, C, KH, KW], got "
                         f"{show(x.shape)} and {show(w.shape)}")
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    ho = _out_size(h, kh, sh, ph)
    wo = _out_size(wd, kw, sw, pw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"conv2d: kernel {list(w.shape[2:])} larger than padded input "
                         f"{list(x.shape[2:])} (padding {padding})")
    return sh, sw, ph, pw, ho, wo


@op
def conv2d(x, w, stride=1, padding=0):
    """out[n, o, h, w] = sum_{c, kh, kw} x[n, c, h*s + kh - p, w*s + kw - p] * w[o, c, kh, kw]"""
    sh, sw, ph, pw, ho, wo = _check(x, w, stride, padding)
    xp = _padded(x, ph, pw, "conv2d_pad")
    c = te.reduce_axis((0, w.shape[1]), "c")
    kh = te.reduce_axis((0, w.shape[2]), "kh")
    kw = te.reduce_axis((0, w.shape[3]), "kw")
    return te.compute(
        (x.shape[0], w.shape[0], ho, wo),
        lambda n, o, i, j: te.sum(xp[n, c, i * sh + kh, j * sw + kw] * w[o, c, kh, kw],
                                  axis=[c, kh, kw]), name="conv2d")


@conv2d.grad
def _(dy, x, w, stride=1, padding=0):
    sh, sw, ph, pw, ho, wo = _check(x, w, stride, padding)
    n_, c_, h, wd = dims(x.shape)
    o_, _, k_h, k_w = dims(w.shape)
    zero = tirx.const(0, dy.dtype)

    # dx is a transposed convolution, written as a gather: dy is dilated by the stride and
    # padded by (k - 1 - p), then correlated with the flipped kernel. No scatter, no atomics.
    def dilated(a, o, i, j):
        r, q = i - (k_h - 1 - ph), j - (k_w - 1 - pw)
        ok = te.all(r >= 0, q >= 0, r % sh == 0, q % sw == 0, r // sh < ho, q // sw < wo)
        return te.if_then_else(ok, dy[a, o, r // sh, q // sw], zero)

    dyp = te.compute((n_, o_, h + k_h - 1, wd + k_w - 1), dilated, name="conv2d_dy_dilated")
    o = te.reduce_axis((0, o_), "o")
    rh = te.reduce_axis((0, k_h), "rh")
    rw = te.reduce_axis((0, k_w), "rw")
    dx = te.compute(x.shape, lambda a, c, i, j: te.sum(
        dyp[a, o, i + (k_h - 1) - rh, j + (k_w - 1) - rw] * w[o, c, rh, rw], axis=[o, rh, rw]),
        name="conv2d_dx")

    xp = _padded(x, ph, pw, "conv2d_dw_pad")
    b = te.reduce_axis((0, n_), "b")
    i = te.reduce_axis((0, ho), "i")
    j = te.reduce_axis((0, wo), "j")
    dw = te.compute(w.shape, lambda o2, c, p, q: te.sum(
        dy[b, o2, i, j] * xp[b, c, i * sh + p, j * sw + q], axis=[b, i, j]), name="conv2d_dw")
    return [dx, dw]
