"""2-D convolution, NCHW input and OIHW weights, with stride and zero padding. The batch N
may be symbolic; channels, height, width and the kernel are fixed sizes."""

from .._checks import is_whole
from .._tvm import te, tirx
from ..op import op
from ._dims import dim, dims, show, static_shape


def _pair(v, what="size", name="conv2d", low=None):
    """`v` (an int or a pair of ints) as a pair of ints; a TypeError naming `name` and `what`
    for anything else (a float stride, padding='same', a triple), a ValueError for a value
    below `low` (a kernel or stride of 0, a negative padding)."""
    if is_whole(v):
        pair = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(is_whole(x) for x in v):
        pair = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{name}: {what} must be an int or a pair of ints, got {v!r}")
    if low is not None and min(pair) < low:
        raise ValueError(f"{name}: {what} must be at least {low}, got {v!r}")
    return pair


def _out_size(size, k, s, p):
    return (size + 2 * p - k) // s + 1


def _padded(x, ph, pw, name, fill=0):
    """NCHW x padded by (ph, pw) rows and columns on each side with `fill` (a number or a
    TE constant); x itself unpadded."""
    if ph == 0 and pw == 0:
        return x
    n, c, h, w = dims(x.shape)
    value = tirx.const(fill, x.dtype) if isinstance(fill, (int, float)) else fill
    return te.compute((n, c, h + 2 * ph, w + 2 * pw), lambda a, b, i, j: te.if_then_else(
        te.all(i >= ph, i < h + ph, j >= pw, j < w + pw), x[a, b, i - ph, j - pw], value),
        name=name)


def _check(x, w, stride, padding):
    if len(x.shape) != 4 or len(w.shape) != 4:
        raise ValueError(f"conv2d expects x [N, C, H, W] and w [O, C, KH, KW], got "
                         f"{show(x.shape)} and {show(w.shape)}")
    _, c, h, wd = static_shape((1, *x.shape[1:]), "conv2d", "x's channels, height and width")
    _, c_w, kh, kw = static_shape(w.shape, "conv2d", "the weight's shape")
    if c != c_w:
        raise ValueError(f"conv2d expects x [N, C, H, W] and w [O, C, KH, KW], got "
                         f"{show(x.shape)} and {show(w.shape)}")
    (sh, sw), (ph, pw) = _pair(stride, "stride", low=1), _pair(padding, "padding", low=0)
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


def _phases(size, k, s, p):
    """The stride-s transposed convolution along one axis, split by input phase q = i % s:
    [(q, first tap, taps, dy offset, rows)]. Input rows i = s * a + q (a < rows) are reached
    by taps kh = first + s * t (t < taps) from dy row a + offset - t: every other tap of a
    dilated dy would multiply a zero."""
    out = []
    for q in range(s):
        first = (q + p) % s
        out.append((q, first, len(range(first, k, s)), (q + p - first) // s,
                    len(range(q, size, s))))
    return out


def _grad_x(dy, w, x_shape, sh, sw, ph, pw, ho, wo):
    """dx of conv2d: one stride-1 convolution of dy per input phase (i % sh, j % sw) with the
    flipped, transposed kernel taps of that phase, interleaved into dx. Each phase has the
    forward's shape class (spatial n, c, rows, cols; reduction o, taps), so it gets the
    forward's schedule, and it visits only real taps (a dilated dy would be 3/4 zeros at
    stride 2, with divisibility tests in the inner loop)."""
    n_, c_, h, wd = dims(x_shape)
    o_, _, k_h, k_w = dims(w.shape)
    if sh == sw == 1 and ho < k_h and wo < k_w:
        return _grad_x_over_dy(dy, w, x_shape, ph, pw, ho, wo)
    rows, cols = _phases(h, k_h, sh, ph), _phases(wd, k_w, sw, pw)
    # one zero-padded dy serves every phase: dy row a + offset - t for a < rows, t < taps
    low_h = max(0, *(taps - 1 - off for _, _, taps, off, _ in rows))
    low_w = max(0, *(taps - 1 - off for _, _, taps, off, _ in cols))
    size_h = max(ho, *(n + off for _, _, _, off, n in rows)) + low_h
    size_w = max(wo, *(n + off for _, _, _, off, n in cols)) + low_w
    zero = tirx.const(0, dy.dtype)
    dyp = dy
    if (size_h, size_w) != (ho, wo):
        dyp = te.compute((n_, o_, size_h, size_w), lambda a, b, i, j: te.if_then_else(
            te.all(i >= low_h, i < ho + low_h, j >= low_w, j < wo + low_w),
            dy[a, b, i - low_h, j - low_w], zero), name="conv2d_dy_pad")

    def phase(first_h, taps_h, off_h, n_h, first_w, taps_w, off_w, n_w, name):
        o = te.reduce_axis((0, o_), "o")
        t = te.reduce_axis((0, taps_h), "t")
        u = te.reduce_axis((0, taps_w), "u")
        if sh == sw == 1:
            # The taps in reverse (t -> taps - 1 - t): dy read as a forward conv reads its
            # image (rising with the window, x[i + kh]), the weight flipped instead, so
            # schedule/conv_forward's per-image tiles take it (64->64 @8 at batch 64, one
            # AVX-512 core, CPU time: 1967 -> 1770 us, its forward 1778; 32->32 @16 1963 ->
            # 1913). The strided phases keep their order: their rule is conv_phases'.
            return te.compute((n_, c_, n_h, n_w), lambda a, c, i, j: te.sum(
                dyp[a, o, i + off_h + low_h - (taps_h - 1) + t,
                    j + off_w + low_w - (taps_w - 1) + u]
                * w[o, c, first_h + taps_h - 1 - t, first_w + taps_w - 1 - u],
                axis=[o, t, u]), name=name)
        return te.compute((n_, c_, n_h, n_w), lambda a, c, i, j: te.sum(
            dyp[a, o, i + off_h - t + low_h, j + off_w - u + low_w]
            * w[o, c, first_h + sh * t, first_w + sw * u], axis=[o, t, u]), name=name)

    parts = {}
    for qh, fh, th, dh, nh in rows:
        for qw, fw, tw, dw, nw in cols:
            if th and tw and nh and nw:  # else no window reaches these inputs: zero gradient
                parts[qh, qw] = phase(fh, th, dh, nh, fw, tw, dw, nw, f"conv2d_dx{qh}{qw}"
                                      if sh * sw > 1 else "conv2d_dx")
    if sh == sw == 1 and (0, 0) in parts:
        return parts[0, 0]

    def interleave(a, c, i, j):
        value = zero
        for (qh, qw), part in parts.items():
            value = te.if_then_else(te.all(i % sh == qh, j % sw == qw),
                                    part[a, c, i // sh, j // sw], value)
        return value

    return te.compute(x_shape, interleave, name="conv2d_dx")


def _grad_x_over_dy(dy, w, x_shape, ph, pw, ho, wo):
    """dx of a stride-1 conv whose output is smaller than its kernel (LeNet's second conv:
    4x4 outputs, 5x5 taps): dx[i] = sum_a dy[a] * w[i + p - a] where 0 <= i + p - a < k,
    summed over the ho dy rows rather than the k taps of a dy padded by k - 1 on each side:
    fewer products (16 per output channel, not 25, in LeNet's) and no padded copy of dy. The
    weight is read under its bounds, not from a zero-padded copy: the guard does not depend
    on the batch, along which the rule vectorizes, so the schedules skip the terms it rules
    out (padded_terms.py) where the copy's zeros were multiplied (LeNet's at batch 64, one
    AVX-512 core: 127 -> 63 us; padding 1: 295 -> 129; over a symbolic batch the window is
    copied out as the padded weight was, schedule/window_reindex.py: 159 us either way)."""
    n_, c_, h, wd = dims(x_shape)
    o_, _, k_h, k_w = dims(w.shape)
    zero = tirx.const(0, w.dtype)
    o = te.reduce_axis((0, o_), "o")
    a = te.reduce_axis((0, ho), "a")
    b = te.reduce_axis((0, wo), "b")
    return te.compute(x_shape, lambda n, c, i, j: te.sum(te.if_then_else(
        te.all(i + ph - a >= 0, i + ph - a < k_h, j + pw - b >= 0, j + pw - b < k_w),
        w[o, c, i + ph - a, j + pw - b] * dy[n, o, a, b], zero), axis=[o, a, b]),
        name="conv2d_dx")


@conv2d.grad
def _(dy, x, w, stride=1, padding=0):
    sh, sw, ph, pw, ho, wo = _check(x, w, stride, padding)
    dx = _grad_x(dy, w, x.shape, sh, sw, ph, pw, ho, wo)

    return [dx, _grad_w(dy, x, w, sh, sw, ph, pw, ho, wo)]


# Output columns summed as separate lanes by a weight gradient with few input channels.
DW_LANES = 8
# A weight gradient's reduction per batch chunk: enough to amortize a pass of the register
# tiles, small enough that a chunk of dy and x stays in a core's L2 cache (see _batch_chunk).
DW_CHUNK_REDUCTION = 8192


# A strided 1x1 weight gradient reads x through a copy of the pixels its windows touch from
# this many input channels (see _strided_pixels).
DW_SUBSAMPLE_CHANNELS = 32


# A stride-1 weight gradient with outputs of its input's size reads dy from a padded,
# transposed copy up to this many output channels, or a multiple of it (see
# _same_size_product).
DW_PADDED_DY_CHANNELS = 16


def _dy_in_vectors(channels):
    """Whether dw reads dy in vectors of its output channels (_same_size_product): up to
    DW_PADDED_DY_CHANNELS, or a multiple of them, which whole AVX2 and AVX-512 vectors tile
    (schedule/conv_weight_grad.py's rule)."""
    return channels <= DW_PADDED_DY_CHANNELS or channels % DW_PADDED_DY_CHANNELS == 0


def _strided_pixels(x, sh, sw, ho, wo):
    """x[n, c, i * sh, j * sw]: the pixels a strided 1x1 conv reads, copied out. Read in
    place, a row skips every other pixel, and the reduction rule vectorizes dw's output
    channels, for which it copies dy (twice this copy's pixels) into panels; from the copy
    it vectorizes the input channels instead (ResNet's 1x1 32->64 @16 s2 d/dw at batch 64,
    one core, CPU time: AVX-512 270 -> 187 us, its forward 195; AVX2 code 270 -> 243). Not
    under DW_SUBSAMPLE_CHANNELS: 16 channels are one AVX-512 vector, tiled 16 x v16 (the
    16->32 @32 s2 one: 259 -> 423 us; AVX2 code 303 -> 262)."""
    n, c, _, _ = dims(x.shape)
    return te.compute((n, c, ho, wo), lambda a, b, i, j: x[a, b, i * sh, j * sw],
                      name="conv2d_dw_pixels")


def _grad_w_1x1(dy, xp, w, sh, sw, ho, wo):
    """dw of a 1x1 conv, a GEMM over (o, c): computed 2-D, the reduction rule tiles c beside
    the vector of o (in 4-D it picks the unit kernel axes and tiles nothing). Strided, it
    reads x in place, summed per chunk of DW_STRIDED_CHUNK_IMAGES images and then over the
    chunks: at once, each tile of c streamed the whole of dy (packed) and its channels of x
    from L3, reading half of x's lines for a quarter of its pixels (ResNet's 1x1 s2 16->32
    @32 d/dw at batch 64, one core, CPU time: 455 -> 401 us in chunks of 4); from
    DW_SUBSAMPLE_CHANNELS input channels on, from a copy of the pixels it reads instead."""
    i = te.reduce_axis((0, ho), "i")
    j = te.reduce_axis((0, wo), "j")
    n = dim(xp.shape[0])
    src, s_h, s_w = xp, sh, sw
    chunk, chunks = n, 1
    if (sh, sw) != (1, 1) and int(w.shape[1]) >= DW_SUBSAMPLE_CHANNELS:
        src, s_h, s_w = _strided_pixels(xp, sh, sw, ho, wo), 1, 1
    elif (sh, sw) != (1, 1) and _image_chunks(n, DW_STRIDED_CHUNK_IMAGES) > 1:
        chunk, chunks = DW_STRIDED_CHUNK_IMAGES, n // DW_STRIDED_CHUNK_IMAGES
    b = te.reduce_axis((0, chunk), "b")
    if chunks == 1:
        flat = te.compute(w.shape[:2], lambda o2, c: te.sum(
            dy[b, o2, i, j] * src[b, c, i * s_h, j * s_w], axis=[b, i, j]), name="conv2d_dw")
    else:
        part = te.compute((chunks, *w.shape[:2]), lambda g, o2, c: te.sum(
            dy[g * chunk + b, o2, i, j] * src[g * chunk + b, c, i * s_h, j * s_w],
            axis=[b, i, j]), name="conv2d_dw_part")
        g = te.reduce_axis((0, chunks), "g")
        flat = te.compute(w.shape[:2], lambda o2, c: te.sum(part[g, o2, c], axis=[g]),
                          name="conv2d_dw")
    return te.compute(w.shape, lambda o2, c, p, q: flat[o2, c], name="conv2d_dw_1x1")


def _image_chunks(n, chunk):
    """How many chunks of `chunk` images a batch of n splits into: 1 (the batch in one sum)
    for a symbolic batch, a batch of at most one chunk, or one `chunk` does not divide."""
    return n // chunk if isinstance(n, int) and n % chunk == 0 and n > chunk else 1


def _batch_chunk(n, ho, wo):
    """Images per partial sum of a 3x3-style weight gradient, or None for one sum over the
    whole batch. The register tiles of dw sweep the whole reduction (batch x rows x columns)
    once per tile of (o, c): over a large batch each sweep streams dy and x from L3. Partial
    sums over chunks of the batch keep one chunk in L2 across the tiles (ResNet's 32->32 @16
    at batch 64: dw 1.2-1.7x its forward summed at once, 1.1x in chunks of 32)."""
    if not isinstance(n, int):
        return None  # a symbolic batch: no static chunks
    for b in range(1, n):
        if n % b == 0 and b * ho * wo >= DW_CHUNK_REDUCTION:
            return b
    return None


def _grad_w(dy, x, w, sh, sw, ph, pw, ho, wo):
    """dw[o, c, p, q] = sum_{n, i, j} dy[n, o, i, j] * x_pad[n, c, i * sh + p, j * sw + q]."""
    xp = _padded(x, ph, pw, "conv2d_dw_pad")
    i = te.reduce_axis((0, ho), "i")
    j = te.reduce_axis((0, wo), "j")
    if tuple(int(d) for d in w.shape[2:]) == (1, 1):
        return _grad_w_1x1(dy, xp, w, sh, sw, ho, wo)
    channels = int(w.shape[1])
    if channels < DW_LANES and sw == 1 and wo % DW_LANES == 0:
        return _grad_w_by_columns(dy, xp, w, sh, ho, wo)
    n = dim(x.shape[0])
    if (sh, sw) != (1, 1) and (ph, pw) != (0, 0) and _batch_chunk(n, ho, wo) is not None and \
            _image_chunks(n, DW_STRIDED_CHUNK_IMAGES) > 1:
        return _grad_w_padded_per_chunk(dy, x, w, sh, sw, ph, pw, ho, wo)
    if (sh, sw) == (1, 1) and (ho, wo) == tuple(int(d) for d in x.shape[2:]) and \
            _dy_in_vectors(int(w.shape[0])):
        product = _same_size_product(dy, x, ph, pw)
    else:
        def product(n, o2, c, p, q, a, e):
            return dy[n, o2, a, e] * xp[n, c, a * sh + p, e * sw + q]
    chunk = _batch_chunk(n, ho, wo)
    if chunk is None:
        b = te.reduce_axis((0, x.shape[0]), "b")
        return te.compute(w.shape, lambda o2, c, p, q: te.sum(
            product(b, o2, c, p, q, i, j), axis=[b, i, j]), name="conv2d_dw")
    # The same products, summed per chunk of the batch, then over the chunks (exact up to
    # the order of the float sums).
    b = te.reduce_axis((0, chunk), "b")
    part = te.compute((dim(x.shape[0]) // chunk, *w.shape), lambda g, o2, c, p, q: te.sum(
        product(g * chunk + b, o2, c, p, q, i, j), axis=[b, i, j]), name="conv2d_dw_part")
    g = te.reduce_axis((0, part.shape[0]), "g")
    return te.compute(w.shape, lambda o2, c, p, q: te.sum(part[g, o2, c, p, q], axis=[g]),
                      name="conv2d_dw")


# Strided weight gradients sum per chunk of this many images: a strided, padded one pads x
# per chunk (see _grad_w_padded_per_chunk); a strided 1x1 one reading x in place keeps a
# chunk of dy and x in cache across its tiles (see _grad_w_1x1).
DW_STRIDED_CHUNK_IMAGES = 4


def _grad_w_padded_per_chunk(dy, x, w, sh, sw, ph, pw, ho, wo):
    """dw of a strided, padded conv summed per chunk of DW_STRIDED_CHUNK_IMAGES images, each
    read from its own zero-padded copy: x_pad[g, b, c, r, s] is image g * chunk + b padded.
    Indexed by the chunk g, the reduction rule pads each chunk inside its parallel loop
    (gemm._pad_per_iteration), just before the register tiles read it from cache, instead
    of one pass writing a padded copy of all of x first. A stride-s product has 1 / s^2 of a
    stride-1 one's terms per element of x, so that pass weighs 4x more at stride 2: ResNet's
    3x3 s2 16->32 @32 d/dw at batch 64, one core, CPU time: the padded copy alone took 474
    of 1767 us. Small chunks keep one chunk's padded x (4 images: 296 KiB) in L2."""
    n_, c_, h, wd = dims(x.shape)
    chunk = DW_STRIDED_CHUNK_IMAGES
    zero = tirx.const(0, x.dtype)
    xp = te.compute((n_ // chunk, chunk, c_, h + 2 * ph, wd + 2 * pw),
                    lambda g, b, c, r, s: te.if_then_else(
                        te.all(r >= ph, r < h + ph, s >= pw, s < wd + pw),
                        x[g * chunk + b, c, r - ph, s - pw], zero), name="conv2d_dw_pad")
    b = te.reduce_axis((0, chunk), "b")
    i = te.reduce_axis((0, ho), "i")
    j = te.reduce_axis((0, wo), "j")
    part = te.compute((n_ // chunk, *w.shape), lambda g, o, c, p, q: te.sum(
        dy[g * chunk + b, o, i, j] * xp[g, b, c, i * sh + p, j * sw + q], axis=[b, i, j]),
        name="conv2d_dw_part")
    g = te.reduce_axis((0, part.shape[0]), "g")
    return te.compute(w.shape, lambda o, c, p, q: te.sum(part[g, o, c, p, q], axis=[g]),
                      name="conv2d_dw")


def _same_size_product(dy, x, ph, pw):
    """dw's product at x's pixel (a, e) for a stride-1 conv whose output has x's size (a 3x3
    with padding 1): dy_t[n, a + 2ph - p, e + 2pw - q, o] * x[n, c, a, e], where dy_t is dy
    zero-padded by (ph, pw) and transposed to [n, rows, columns, o]. The reduction reads
    vectors of o from dy_t and x in place; the one copy, dy_t, replaces two: a zero-padded
    x and the transposed dy the reduction rule copies for the vectors of o. ResNet's d/dw at
    batch 64, one core, CPU time: 16->16 @32 3.35 -> 3.09 ms on AVX-512 (its reduction
    alone about 2.6 ms, its forward 2.87), 3.94 -> 3.86 ms in AVX2 code. Up to
    DW_PADDED_DY_CHANNELS, or a multiple of them (_dy_in_vectors): schedule/
    conv_weight_grad.py's rule then sums image by image, each image's dy_t made just before
    the tiles read it (ResNet's 32->32 @16 d/dw at batch 64 and b32 32->64 @28 on one
    AVX-512 core, CPU time: 2.40 -> 2.06 and 9.73 -> 7.18 ms before its copy by 8 x 8
    tiles; AVX2 code 3.85 -> 2.87 ms @16). Other widths keep a padded x: in the GEMM
    family's rule the vectors of o in AVX2 code split dy_t's rows into several vectors, and
    it copies dy_t again, into panels of them (32->32 @16: 3.55 -> 7.03 ms)."""
    n_, o_, ho, wo = dims(dy.shape)
    zero = tirx.const(0, dy.dtype)
    dy_t = te.compute((n_, ho + 2 * ph, wo + 2 * pw, o_), lambda n, r, s, o: te.if_then_else(
        te.all(r >= ph, r < ho + ph, s >= pw, s < wo + pw), dy[n, o, r - ph, s - pw], zero),
        name="conv2d_dw_dy_t")

    def product(n, o2, c, p, q, a, e):
        return dy_t[n, a + 2 * ph - p, e + 2 * pw - q, o2] * x[n, c, a, e]
    return product


# A column-lane weight gradient sums per chunk of this many images (see _grad_w_by_columns).
DW_COLUMN_CHUNK_IMAGES = 4


def _grad_w_by_columns(dy, xp, w, sh, ho, wo):
    """dw for few input channels (a stem on 1-channel images): summed per lane l of the
    output columns j = DW_LANES * jo + l, then over the lanes. Its only wide output axis is
    o, along which dy is strided: vectors of o need a transposed copy of all of dy (most of
    the time: the stem at batch 64 took 1.3 ms, 0.7 ms by columns). Vectors of l read dy and
    x contiguously; the tile rule tiles o and q beside them ((c, p, o, q, l): the last axes
    tile first).

    Summed per chunk of DW_COLUMN_CHUNK_IMAGES images g (a spatial axis, outermost), then
    over the chunks: summed at once, each tile of (p, o) swept the whole batch, streaming
    all of dy from L3 once per tile of o and tap row (the stem's dy is 4 MiB, 6 sweeps of
    half of it); per chunk, the chunk's dy stays in L2 across its tiles (the stem at batch
    64, one core, CPU time: 491 -> 299 us)."""
    o_, c_, k_h, k_w = (int(d) for d in w.shape)
    n = dim(dy.shape[0])
    chunks = _image_chunks(n, DW_COLUMN_CHUNK_IMAGES)
    chunk = DW_COLUMN_CHUNK_IMAGES if chunks > 1 else n  # one chunk: a symbolic or small batch
    b = te.reduce_axis((0, chunk), "b")
    i = te.reduce_axis((0, ho), "i")
    jo = te.reduce_axis((0, wo // DW_LANES), "jo")
    part = te.compute((chunks, c_, k_h, o_, k_w, DW_LANES), lambda g, c, p, o2, q, l: te.sum(
        dy[g * chunk + b, o2, i, jo * DW_LANES + l]
        * xp[g * chunk + b, c, i * sh + p, jo * DW_LANES + l + q],
        axis=[b, i, jo]), name="conv2d_dw_lanes")
    g = te.reduce_axis((0, part.shape[0]), "g")
    r = te.reduce_axis((0, DW_LANES), "l")
    return te.compute(w.shape, lambda o2, c, p, q: te.sum(part[g, c, p, o2, q, r],
                                                          axis=[g, r]), name="conv2d_dw")
