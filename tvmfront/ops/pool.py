"""2-D max and average pooling (NCHW), gradients written as gathers over windows."""

from .._tvm import te, tirx
from ..autodiff import first_extremum
from ..op import op
from ._dims import show, static
from .conv import _out_size, _pair


def _hw(x, name):
    return (static(x.shape[2], name, "the input height"),
            static(x.shape[3], name, "the input width"))


def _geometry(x, kernel, stride, padding, name="pooling"):
    if len(x.shape) != 4:
        raise ValueError(f"pooling expects x [N, C, H, W], got {show(x.shape)}")
    (kh, kw) = _pair(kernel)
    (sh, sw) = _pair(stride if stride is not None else kernel)
    (ph, pw) = _pair(padding)
    if ph * 2 > kh or pw * 2 > kw:
        raise ValueError(f"pooling padding {padding} must be at most half the kernel {kernel}")
    h, w = _hw(x, name)
    ho = _out_size(h, kh, sh, ph)
    wo = _out_size(w, kw, sw, pw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"pooling kernel {kernel} larger than padded input {[h, w]}")
    return kh, kw, sh, sw, ph, pw, ho, wo


def _window_gather(x, dy, kernel, stride, padding, term, name):
    """dx[i] = sum over the output windows that cover input i of term(n, c, i, j, oh, ow)."""
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding)
    zero = tirx.const(0, x.dtype)
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")

    def body(n, c, i, j):
        r, q = i + ph - rh, j + pw - rw  # window offset rh of output row r // sh covers row i
        ok = te.all(r >= 0, q >= 0, r % sh == 0, q % sw == 0, r // sh < ho, q // sw < wo)
        return te.sum(te.if_then_else(ok, term(n, c, i, j, r // sh, q // sw), zero),
                      axis=[rh, rw])

    return te.compute(x.shape, body, name=name)


@op
def max_pool2d(x, kernel=2, stride=None, padding=0):
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding, "max_pool2d")
    h, w = _hw(x, "max_pool2d")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    lowest = te.min_value(x.dtype)

    def body(n, c, i, j):
        r, q = i * sh + rh - ph, j * sw + rw - pw
        inside = te.all(r >= 0, r < h, q >= 0, q < w)
        return te.max(te.if_then_else(inside, x[n, c, r, q], lowest), axis=[rh, rw])

    return te.compute((x.shape[0], x.shape[1], ho, wo), body, name="max_pool2d")


@max_pool2d.grad
def _(dy, x, kernel=2, stride=None, padding=0):
    # The whole dy of a window goes to its FIRST maximal element in scan order (PyTorch's
    # rule), the same element the derived gradient picks: autodiff.first_extremum.
    kh, kw, sh, sw, ph, pw, _, _ = _geometry(x, kernel, stride, padding)
    first = first_extremum(max_pool2d.te_forward(x, kernel=kernel, stride=stride,
                                                 padding=padding))
    zero = tirx.const(0, x.dtype)

    def term(n, c, i, j, oh, ow):
        # i sits at row i + ph - oh * sh of window (oh, ow); positions are row-major
        position = (i + ph - oh * sh) * kw + (j + pw - ow * sw)
        return te.if_then_else(tirx.Cast(first.dtype, position) == first[n, c, oh, ow],
                               dy[n, c, oh, ow], zero)

    return [_window_gather(x, dy, kernel, stride, padding, term, "max_pool2d_grad")]


@op
def avg_pool2d(x, kernel=2, stride=None, padding=0):
    """Average over each window; padded zeros count in the divisor (PyTorch's default)."""
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding, "avg_pool2d")
    h, w = _hw(x, "avg_pool2d")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    zero = tirx.const(0, x.dtype)
    scale = tirx.const(1.0 / (kh * kw), x.dtype)

    def body(n, c, i, j):
        r, q = i * sh + rh - ph, j * sw + rw - pw
        inside = te.all(r >= 0, r < h, q >= 0, q < w)
        return te.sum(te.if_then_else(inside, x[n, c, r, q], zero) * scale, axis=[rh, rw])

    return te.compute((x.shape[0], x.shape[1], ho, wo), body, name="avg_pool2d")


@avg_pool2d.grad
def _(dy, x, kernel=2, stride=None, padding=0):
    kh, kw = _pair(kernel)
    scale = tirx.const(1.0 / (kh * kw), x.dtype)
    return [_window_gather(x, dy, kernel, stride, padding,
                           lambda n, c, i, j, oh, ow: dy[n, c, oh, ow] * scale, "avg_pool2d_grad")]
