"""2-D max and average pooling (NCHW), gradients written as gathers over windows."""

from .. import extremum
from .._tvm import te, tirx
from ..autodiff import MATERIALIZED, first_extremum, if_else_zero, least_found
from ..op import op
from ._dims import show, static
from .conv import _out_size, _padded, _pair


def _hw(x, name):
    return (static(x.shape[2], name, "the input height"),
            static(x.shape[3], name, "the input width"))


def _geometry(x, kernel, stride, padding, name="pooling"):
    if len(x.shape) != 4:
        raise ValueError(f"pooling expects x [N, C, H, W], got {show(x.shape)}")
    (kh, kw) = _pair(kernel, "kernel", name, low=1)
    (sh, sw) = _pair(stride if stride is not None else kernel, "stride", name, low=1)
    (ph, pw) = _pair(padding, "padding", name, low=0)
    if ph * 2 > kh or pw * 2 > kw:
        raise ValueError(f"pooling padding {padding} must be at most half the kernel {kernel}")
    h, w = _hw(x, name)
    ho = _out_size(h, kh, sh, ph)
    wo = _out_size(w, kw, sw, pw)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"pooling kernel {kernel} larger than padded input {[h, w]}")
    return kh, kw, sh, sw, ph, pw, ho, wo


def _covering(i, p, s, k):
    """[(o, offset, valid)] for the windows o of one axis that may cover input index i:
    o = (i + p) // s - t for t < ceil(k / s), at `offset` = i + p - o * s in the window,
    `valid` when offset < k (a window past the output's edge reads zeros: _window_gather).
    Only these windows are visited: no loop over all k taps with a divisibility test each."""
    base, rest = (i + p) // s, (i + p) % s
    out = []
    for t in range(-(-k // s)):
        offset = rest + t * s
        out.append((base - t, offset, offset < k))
    return out


def _window_gather(x, reads, kernel, stride, padding, term, name):
    """dx[i] = sum over the output windows that cover input i of term(values, n, c, oh, ow,
    dh, dw): `values` the elements of the window-shaped tensors `reads` (dy, max-pool's
    first-max positions) at window (oh, ow), (dh, dw) the position of i in it. An unrolled
    sum (a spatial kernel, not a reduction), ceil(k / s) windows per axis.

    `reads` come from copies extended with zeros by the windows that hang off their edges
    (_window_extended), read at indices in bounds for every i. They had been read at
    clamped indices under the select, which TVM's simplifier made plain, taking the select's
    condition as known inside its value; but a select reads its value anyway: the gradient
    read past the end of dy (k3 s2 p1 at 28x28: row 14 of 14), a fault with dy at the end of
    a mapping. The select now tests the position in the window only."""
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding)
    h, w = _hw(x, "pooling")
    zero = tirx.const(0, x.dtype)
    # window indices (i + p) // s - t for t < ceil(k / s), over every input i
    low_h, low_w = -(-kh // sh) - 1, -(-kw // sw) - 1
    high_h = max(0, (h - 1 + ph) // sh - (ho - 1))
    high_w = max(0, (w - 1 + pw) // sw - (wo - 1))
    extended = [_window_extended(t, low_h, high_h, low_w, high_w) for t in reads]

    def body(n, c, i, j):
        total = None
        for oh, dh, ok_h in _covering(i, ph, sh, kh):
            for ow, dw, ok_w in _covering(j, pw, sw, kw):
                # A select, not if_then_else: a guarded load made TVM scalarize the whole
                # vectorized column loop (max-pool k3 s2 p1's gradient: 6.9x its forward, 3.5x
                # as a select). Windows outside dy read its extension's zeros.
                values = [t[n, c, oh + low_h, ow + low_w] for t in extended]
                value = tirx.Select(te.all(ok_h, ok_w), term(values, n, c, oh, ow, dh, dw),
                                    zero)
                total = value if total is None else total + value
        return total

    return te.compute(x.shape, body, name=name)


def _window_extended(t, low_h, high_h, low_w, high_w):
    """t [N, C, H, W] extended with zeros by (low, high) rows and columns, as a stage the
    schedules keep (autodiff.MATERIALIZED: inlined into the gather, its guarded reads would
    scalarize it) and split into a fill and a vectorized copy; t itself where nothing hangs
    off (a k2 pool of even sizes)."""
    if not (low_h or high_h or low_w or high_w):
        return t
    n_, c_, h, w = t.shape
    zero = tirx.const(0, t.dtype)
    return te.compute((n_, c_, h + low_h + high_h, w + low_w + high_w),
                      lambda n, c, r, q: te.if_then_else(
                          te.all(r >= low_h, r < h + low_h, q >= low_w, q < w + low_w),
                          t[n, c, r - low_h, q - low_w], zero),
                      name=f"{t.op.name}_extended", attrs={MATERIALIZED: 1})


def _max_window(x, kernel, stride, padding):
    """(output shape, window reduce axes, value(n, c, i, j, rh, rw)): the window's element,
    -inf where the window hangs over the padding."""
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding, "max_pool2d")

    # Plain reads, which the window rule vectorizes: of x itself where every window is
    # inside it (a guard, even one always true, left the loop scalar: the NaN-propagating
    # max's select per element then cost 3.5x te.max's at k2 b32 64@28), else of a copy of x
    # padded with the lowest value, which no max takes (a window holds an element of x), and
    # which the window rule makes per plane, deinterleaved (schedule/reductions.
    # _window_reduction). Guarded reads of x left the padded forward scalar: k3 s2 p1 at b32
    # 64@28 ran 2.3x its backward's first-max pass over the same windows.
    xp = _padded(x, ph, pw, "max_pool2d_padded", fill=extremum.lowest(x.dtype))

    def value(n, c, i, j, rh, rw):
        return xp[n, c, i * sh + rh, j * sw + rw]

    return (x.shape[0], x.shape[1], ho, wo), (kh, kw), value


# A non-overlapping window of at most this many elements has its first max found inline, in
# the gather (4x4 at b32 64@32: 1.4 ms against 1.7-1.8 for the two passes).
INLINE_TAPS = 16


def _first_max(x, n, c, oh, ow, kernel, stride):
    """The position (rh * kw + rw) of unpadded window (oh, ow)'s first maximal element in scan
    order: _first_key_max over x's ordering keys, computed as read."""
    return _first_key_max(lambda i, j: extremum.ordering_key(x[n, c, i, j], True), oh, ow,
                          kernel, stride)


def _first_key_max(key, oh, ow, kernel, stride):
    """The position (rh * kw + rw) of window (oh, ow)'s first maximal key (`key(i, j)`: the
    ordering key at row i, column j) in scan order: the first NaN-or-+inf where the window
    holds a NaN (_keys_max: NaN keys as +inf), the first element where all are -inf. Without
    NaN that is PyTorch's rule; with NaN PyTorch picks a NaN (torch.max(x, dim) the first,
    F.max_pool2d the last), so a window [+inf, NaN] differs: ours gives its dy to the +inf.
    Straight-line code, no reduction loop."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride if stride is not None else kernel)
    keys = [key(oh * sh + e // kw, ow * sw + e % kw) for e in range(kh * kw)]
    top = _keys_max(keys)
    return least_found([k == top for k in keys])


def _keys_max(keys):
    """The max of a window's ordering keys (extremum.ordering_key: NaN as +inf, so that the
    first key equal to it is the first NaN in a window holding one) from -inf (a window of
    -inf finds its first element). A NaN among `keys` (_padded_keys's padding) is never
    taken: max(k, top) is `k > top ? k : top`."""
    top = extremum.lowest(extremum.dtype_of(keys[0]))
    for k in keys:
        top = te.max(k, top)
    return top


def _padded_keys(x, kernel, stride, padding):
    """x's ordering keys (extremum.ordering_key) padded by the pooling's padding with NaN,
    which no key equals and no max over keys takes: a padding position is never a window's
    first max."""
    _, _, _, _, ph, pw, _, _ = _geometry(x, kernel, stride, padding, "max_pool2d")
    h, w = _hw(x, "max_pool2d")
    nan = tirx.const(float("nan"), x.dtype)
    return te.compute((x.shape[0], x.shape[1], h + 2 * ph, w + 2 * pw), lambda n, c, i, j: (
        te.if_then_else(te.all(i >= ph, i < h + ph, j >= pw, j < w + pw),
                        extremum.ordering_key(x[n, c, i - ph, j - pw], True), nan)),
        name="max_pool2d_pad")


def _max_reduction(x, kernel, stride, padding):
    """The forward's stage: the max over each window (-inf over the padding), NaN where the
    window holds one (PyTorch's; TVM's te.max drops it)."""
    shape, (kh, kw), value = _max_window(x, kernel, stride, padding)
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    nan_max = extremum.max_reducer()
    return te.compute(shape, lambda n, c, i, j: nan_max(value(n, c, i, j, rh, rw), axis=[rh, rw]),
                      name="max_pool2d")


@op
def max_pool2d(x, kernel=2, stride=None, padding=0):
    return _max_reduction(x, kernel, stride, padding)


@max_pool2d.grad
def _(dy, x, kernel=2, stride=None, padding=0):
    # The whole dy of a window goes to its FIRST maximal element in scan order (PyTorch's
    # rule for numbers; NaN: _first_key_max), the element autodiff.first_extremum picks for the
    # derived gradient, found by an unrolled scan of the window (_first_key_max), where
    # first_extremum's (position, value) tuple reducer has no fast schedule.
    shape, (kh, kw), _ = _max_window(x, kernel, stride, padding)
    _, _, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding)
    # A padded window goes the overlapping windows' way: its inline scan's clamped reads and
    # index tests grew an expression TVM's simplifier did not finish (k5 s5 p2:
    # te.create_prim_func over 300 s), took 2-25 s to build from 9 taps on, and ran slower than
    # the two passes (b32 64@32 k4 s4 p2: 13.5 against 2.8 ms; 3x5 p(1, 2) at 30: 9.1 against
    # 2.9; k3 s3 p1: 27.6 against 10.8)
    if kh <= sh and kw <= sw and kh * kw <= INLINE_TAPS and not (ph or pw):
        # Windows do not overlap: each input is in one window at most, whose first max is
        # found inline (its elements read from cache), in one pass: the same expression for
        # every element of a window and for every window (the vectorized column loop
        # computes it on whole vectors).
        def term(values, n, c, oh, ow, dh, dw):
            # x read at windows clamped into the output (a window past its edge, over
            # inputs no window covers, reads zeros of dy: any position will do)
            first = _first_max(x, n, c, te.max(te.min(oh, ho - 1), 0),
                               te.max(te.min(ow, wo - 1), 0), kernel, stride)
            return if_else_zero(first == dh * kw + dw, values[0], x.dtype)

        return [_window_gather(x, [dy], kernel, stride, padding, term, "max_pool2d_grad")]
    if kh <= sh and kw <= sw and not (ph or pw):
        # Wide windows that do not overlap (k8, k16): autodiff's (position, value) reduction
        # of the forward finds each window's first max, then the gather. Scanned inline, the
        # scan per element grew with the window: k8 at b32 64@32 took 85 s to compile and ran
        # 29 ms (3.2 ms with this, compiled in 1.1 s); k16 took 100 s to schedule
        first = first_extremum(_max_reduction(x, kernel, stride, padding),
                               name="max_pool2d_first")
    else:
        # Overlapping windows: each window's first max position in one pass over the windows
        # (the forward's reads), then the gather over the covering windows. The pass is a
        # one-step reduction so that it stays a kernel of its own: the schedule inlines
        # spatial producers into their consumers, which would scan each window again for each
        # of the up to 4 inputs of the gather's 2x2 block that it covers. It reads x's keys
        # padded with NaN (_padded_keys: a copy per image, in cache, that the schedule places
        # in the pass's image loop): affine reads and no test of the padding per element (k3 s2
        # p1 at 64@28: the pass 2.8 -> 1.6 ms on one core against reads of x clamped into it
        # and index tests).
        xp = _padded_keys(x, kernel, stride, padding)
        one = te.reduce_axis((0, 1), "one")
        first = te.compute(shape, lambda n, c, i, j: te.min(_first_key_max(
            lambda r, q: xp[n, c, r, q], i, j, kernel, stride), axis=one),
            name="max_pool2d_first")

    def term(values, n, c, oh, ow, dh, dw):
        dy_value, position = values
        return if_else_zero(tirx.Cast(first.dtype, dh * kw + dw) == position, dy_value,
                            x.dtype)

    return [_window_gather(x, [dy, first], kernel, stride, padding, term, "max_pool2d_grad")]


@op
def avg_pool2d(x, kernel=2, stride=None, padding=0):
    """Average over each window; padded zeros count in the divisor (PyTorch's default)."""
    kh, kw, sh, sw, ph, pw, ho, wo = _geometry(x, kernel, stride, padding, "avg_pool2d")
    rh = te.reduce_axis((0, kh), "rh")
    rw = te.reduce_axis((0, kw), "rw")
    scale = tirx.const(1.0 / (kh * kw), x.dtype)
    # Plain reads, which the window rule vectorizes (as max_pool2d's): of x itself, or of a
    # copy padded with zeros (a guard per read, even one always true, left the loop scalar)
    src = _padded(x, ph, pw, "avg_pool2d_padded")

    def body(n, c, i, j):
        return te.sum(src[n, c, i * sh + rh, j * sw + rw] * scale, axis=[rh, rw])

    return te.compute((x.shape[0], x.shape[1], ho, wo), body, name="avg_pool2d")


@avg_pool2d.grad
def _(dy, x, kernel=2, stride=None, padding=0):
    kh, kw = _pair(kernel)
    scale = tirx.const(1.0 / (kh * kw), x.dtype)
    return [_window_gather(x, [dy], kernel, stride, padding,
                           lambda values, *_: values[0] * scale, "avg_pool2d_grad")]
