"""Integer kernels for int8 inference: quantize, and dense / conv2d on 8-bit integers with
int32 accumulation and the requantization fused in as an epilogue of the same kernel.

Conventions (PyTorch's x86 quantized backend, gemmlowp's arithmetic):

- activations are per-tensor affine 8-bit integers, uint8 in [0, 255] by default:
  real = (q - zero_point) * scale;
- weights are per output channel symmetric int8 (zero point 0): real = q * w_scale[o];
- the product x @ w^T of real values is then
  (sum_k q_x * q_w  -  zx * sum_k q_w[o, k]) * (s_x * s_w[o]) + b[o],
  so the kernel accumulates sum_k q_x * q_w in int32 (each 8-bit value widened to int32 before
  the multiply: exact, and the shape LLVM turns into vpmaddwd / vpdpbusd), adds an int32
  ``bias`` that the converter precomputes as round(b / (s_x * s_w)) - zx * sum_k q_w, and the
  epilogue multiplies by one float ``multiplier`` per output channel:
  - ``out_dtype=None`` (dequantize): y = float(acc + bias) * multiplier, multiplier =
    s_x * s_w;
  - ``out_dtype="uint8"`` / ``"int8"`` (requantize to the next layer's input):
    y = clamp(nearbyint(float(acc + bias) * multiplier) + out_zero_point, out_qmin, out_qmax),
    multiplier = s_x * s_w / s_out. A ReLU between the two layers is the clamp's lower bound
    (out_qmin = out_zero_point): real 0 is exactly the zero point.

The rounding is nearbyint (half to even), as ``quantize`` and ``fake_quant``, so a model
trained with fake quantization sees at inference the integers it was trained with. These ops
have no gradient (integer inputs).
"""

import numpy as np

from .._tvm import te, tirx
from ..errors import ShapeError
from ..op import op
from ._dims import dims, same, show
from .conv import _check as _conv_check

_ACTIVATION = ("uint8", "int8")


def _c(value, dtype):
    return tirx.const(value, dtype)


def _range(dtype):
    return (0, 255) if dtype == "uint8" else (-128, 127)


@op
def quantize(x, scale, zero_point, qmin=0, qmax=255, dtype="uint8"):
    """clamp(nearbyint(x * (1 / scale)) + zero_point, qmin, qmax) as `dtype` (uint8 or
    int8): the integers fake_quant rounds to. scale: 0-d float; zero_point: 0-d int32."""
    if dtype not in _ACTIVATION:
        raise ValueError(f"quantize: dtype must be 'uint8' or 'int8', got {dtype!r}")
    lo, hi = _range(dtype)
    if not (isinstance(qmin, int) and isinstance(qmax, int) and lo <= qmin < qmax <= hi):
        raise ValueError(f"quantize: need integers {lo} <= qmin < qmax <= {hi} for {dtype}, "
                         f"got qmin={qmin!r}, qmax={qmax!r}")
    if str(x.dtype) not in ("float32", "float64"):
        raise TypeError(f"quantize: x must be float32 or float64, got {x.dtype}")
    if scale.shape or zero_point.shape:
        raise ShapeError(f"quantize: scale and zero_point must be 0-d, got "
                         f"{tuple(show(scale.shape))} and {tuple(show(zero_point.shape))}")
    return te.compute(x.shape, lambda *i: _quantized(x, scale, zero_point, qmin, qmax, dtype, i),
                      name="quantize")


def _check_operands(name, x, w, bias, multiplier, out_dtype, out_qmin, out_qmax):
    if str(x.dtype) not in _ACTIVATION:
        raise TypeError(f"{name}: x must be uint8 or int8 (quantize it first), got {x.dtype}")
    if str(w.dtype) != "int8":
        raise TypeError(f"{name}: w must be int8, got {w.dtype}")
    if str(bias.dtype) != "int32":
        raise TypeError(f"{name}: bias must be int32, got {bias.dtype}")
    if str(multiplier.dtype) not in ("float32", "float64"):
        raise TypeError(f"{name}: multiplier must be float32 or float64, got {multiplier.dtype}")
    for what, t in (("bias", bias), ("multiplier", multiplier)):
        if len(t.shape) != 1 or not same(t.shape[0], w.shape[0]):
            raise ShapeError(f"{name}: {what} must have shape ({show([w.shape[0]])[0]},) (one "
                             f"per output channel), got {tuple(show(t.shape))}")
    if out_dtype in _ACTIVATION:
        lo, hi = _range(out_dtype)
        if not (isinstance(out_qmin, int) and isinstance(out_qmax, int)
                and lo <= out_qmin < out_qmax <= hi):
            raise ValueError(f"{name}: need integers {lo} <= out_qmin < out_qmax <= {hi} for "
                             f"out_dtype {out_dtype}, got {out_qmin!r}, {out_qmax!r}")
    elif out_dtype is not None:
        raise ValueError(f"{name}: out_dtype must be None (dequantize to the multiplier's "
                         f"dtype) or uint8/int8 (requantize), got {out_dtype!r}")


def _epilogue(acc, bias, multiplier, channel, out_dtype, out_zero_point, out_qmin, out_qmax):
    """The accumulator at one position -> the output element (see the module docstring)."""
    dt = multiplier.dtype
    real = (acc + bias[channel]).astype(dt) * multiplier[channel]
    if out_dtype is None:
        return real
    q = tirx.nearbyint(real) + _c(out_zero_point, dt)
    return te.min(te.max(q, _c(out_qmin, dt)), _c(out_qmax, dt)).astype(out_dtype)


def _widened(v):
    return v.astype("int32")


@op
def qdense(x, w, bias, multiplier, out_dtype=None, out_zero_point=0, out_qmin=0,
           out_qmax=255):
    """x [..., in] (uint8/int8) @ w [out, in] (int8)^T, accumulated in int32, + bias [out]
    (int32), then dequantized (out_dtype None) or requantized (uint8/int8) with
    multiplier [out] in the same kernel (see the module docstring)."""
    _check_operands("qdense", x, w, bias, multiplier, out_dtype, out_qmin, out_qmax)
    if len(x.shape) < 1 or len(w.shape) != 2 or not same(x.shape[-1], w.shape[1]):
        raise ShapeError(f"qdense expects x [..., in] and w [out, in], got {show(x.shape)} and "
                         f"{show(w.shape)}")
    k = te.reduce_axis((0, x.shape[-1]), "k")
    shape = (*x.shape[:-1], w.shape[0])
    # acc: [..., out] int32, exact (|acc| <= in * 255 * 128)
    acc = te.compute(shape, lambda *i: te.sum(_widened(x(*i[:-1], k)) * _widened(w[i[-1], k]),
                                              axis=k), name="qdense_acc")
    return te.compute(shape, lambda *i: _epilogue(
        acc(*i), bias, multiplier, i[-1], out_dtype, out_zero_point, out_qmin, out_qmax),
        name="qdense")


@op
def qconv2d(x, w, bias, multiplier, stride=1, padding=0, x_zero_point=0, out_dtype=None,
            out_zero_point=0, out_qmin=0, out_qmax=255):
    """conv2d of x [N, C, H, W] (uint8/int8) with w [O, C, kh, kw] (int8), accumulated in
    int32, + bias [O] (int32), dequantized or requantized with multiplier [O] in the same
    kernel. Padding holds x_zero_point (the integer of real 0)."""
    _check_operands("qconv2d", x, w, bias, multiplier, out_dtype, out_qmin, out_qmax)
    sh, sw, ph, pw, ho, wo = _conv_check(x, w, stride, padding)
    n_, c_, h, wd = dims(x.shape)
    o_, _, k_h, k_w = dims(w.shape)
    if ph or pw:
        fill = _c(x_zero_point, x.dtype)

        def pad(a, c, i, j):
            inside = te.all(i >= ph, i < h + ph, j >= pw, j < wd + pw)
            return te.if_then_else(inside, x[a, c, i - ph, j - pw], fill)

        xp = te.compute((n_, c_, h + 2 * ph, wd + 2 * pw), pad, name="qconv2d_pad")
    else:
        xp = x
    c = te.reduce_axis((0, c_), "c")
    rh = te.reduce_axis((0, k_h), "kh")
    rw = te.reduce_axis((0, k_w), "kw")
    shape = (n_, o_, ho, wo)
    acc = te.compute(shape, lambda a, o, i, j: te.sum(
        _widened(xp[a, c, i * sh + rh, j * sw + rw]) * _widened(w[o, c, rh, rw]),
        axis=[c, rh, rw]), name="qconv2d_acc")
    return te.compute(shape, lambda a, o, i, j: _epilogue(
        acc[a, o, i, j], bias, multiplier, o, out_dtype, out_zero_point, out_qmin, out_qmax),
        name="qconv2d")


# ---- packed weights: the layout the integer dot-product instructions read -------------------
# A weight [O, K] is stored as [ceil(O / LANES), ceil(K / GROUP), LANES, GROUP] int8, zero-padded:
# one dot-product step reads 4 consecutive activation bytes (broadcast) and LANES x 4 weight
# bytes in one contiguous load, and adds 4-byte dot products into LANES int32 accumulators
# (vpdpbusd on AVX-512 VNNI: 16 lanes; vpmaddubsw + vpmaddwd on AVX2: two steps of 8). The
# default schedule tensorizes the reduction of these kernels (schedule/int8.py); any other
# schedule computes the same integers.
LANES = 16
GROUP = 4
GEMM_ATTR = "tvmfront.int8_gemm"  # block annotation: the largest activation value (x_max)
GEMM_STEPS = "tvmfront.int8_steps"  # direct convolution: dot-product steps per (kh, row)
WINDOWS = "qconv2d_windows"  # the gathered rows' stage: the schedule gathers them per tile


def pack_weight(w):
    """numpy int8 [O, ...] -> the packed layout [ceil(O/16), ceil(K/4), 16, 4], K the product
    of the other axes (a convolution's C * kh * kw, in that order), zeros in the padding."""
    w = np.asarray(w, np.int8).reshape(len(w), -1)
    o, k = w.shape
    op, kp = -(-o // LANES) * LANES, -(-k // GROUP) * GROUP
    full = np.zeros((op, kp), np.int8)
    full[:o, :k] = w
    return np.ascontiguousarray(full.reshape(op // LANES, LANES, kp // GROUP, GROUP)
                                .transpose(0, 2, 1, 3))


def unpack_weight(wp, shape):
    """pack_weight's inverse: the packed array -> int8 of `shape` ([O, ...])."""
    wp = np.asarray(wp)
    o, k = shape[0], int(np.prod(shape[1:]))
    full = wp.transpose(0, 2, 1, 3).reshape(wp.shape[0] * LANES, wp.shape[1] * GROUP)
    return np.ascontiguousarray(full[:o, :k]).reshape(shape)


def _packed_gemm(rows, a, wp, x_max, steps=None):
    """acc [*rows, O padded] int32 = a(*row, k) (uint8/int8 in a buffer) . unpacked wp.
    `rows`: the row axes, one for dense (the flattened leading axes), (N, Ho, Wo) for a
    convolution: kept apart so that the schedule's tile of rows along Wo maps to an (n, i,
    j..j+3) box of the NCHW output, whose epilogue then reads the tile at constant offsets
    (one flat row axis made it a box TVM could not bound: the tile stayed in memory, a store
    and reload per dot-product step). `steps`: (kh, steps per row of taps) of a direct
    convolution, annotated so that the schedule splits the reduction along them (x's offsets
    then need no division)."""
    attrs = {GEMM_ATTR: x_max, **({GEMM_STEPS: list(steps)} if steps else {})}
    k = te.reduce_axis((0, wp.shape[1] * GROUP), "k")
    return te.compute(
        (*rows, wp.shape[0] * LANES),
        lambda *i: te.sum(_widened(a(*i[:-1], k)) * _widened(
            wp[i[-1] // LANES, k // GROUP, i[-1] % LANES, k % GROUP]), axis=k),
        name="qgemm_acc", attrs=attrs)


def _check_packed(name, wp, bias, x_max, x):
    if len(wp.shape) != 4 or not same(wp.shape[2], LANES) or not same(wp.shape[3], GROUP):
        raise ShapeError(f"{name}: w must be packed [O/{LANES}, K/{GROUP}, {LANES}, {GROUP}] "
                         f"(ops.int8.pack_weight), got {tuple(show(wp.shape))}")
    o = dims(bias.shape)[0]
    if not isinstance(o, int) or not 0 < o <= dims(wp.shape)[0] * LANES:
        raise ShapeError(f"{name}: {show(bias.shape)} output channels do not fit the packed "
                         f"weight {tuple(show(wp.shape))}")
    lo, hi = _range(str(x.dtype))
    if not (isinstance(x_max, int) and lo < x_max <= hi):
        raise ValueError(f"{name}: x_max must be the largest value x holds, an integer in "
                         f"({lo}, {hi}] for {x.dtype}, got {x_max!r}")
    return o


@op
def qdense_packed(x, w, bias, multiplier, x_max=255, out_dtype=None, out_zero_point=0,
                  out_qmin=0, out_qmax=255):
    """qdense with w packed by pack_weight (x [..., K] with K = w.shape[1] * 4); `x_max`: the
    largest value x can hold (its quantizer's qmax), which decides whether AVX2's saturating
    vpmaddubsw is exact on it (x_max <= 127)."""
    o = _check_packed("qdense_packed", w, bias, x_max, x)
    _check_operands("qdense_packed", x, te.placeholder((o, 1), "int8"), bias, multiplier,
                    out_dtype, out_qmin, out_qmax)
    if len(x.shape) < 1 or not same(x.shape[-1], w.shape[1] * GROUP):
        raise ShapeError(f"qdense_packed expects x [..., {show([w.shape[1] * GROUP])[0]}], got "
                         f"{show(x.shape)}")
    lead = x.shape[:-1]
    rows = 1
    for d in lead:
        rows = rows * d

    def row(m):  # flat row -> x's leading indices (row-major)
        idx = []
        for d in reversed(lead[1:]):
            idx.append(m % d)
            m = m // d
        return [m, *reversed(idx)] if lead else []

    def flat(i):
        m = 0
        for d, v in zip(lead, i):
            m = m * d + v
        return m

    acc = _packed_gemm((rows,), lambda m, k: x(*row(m), k), w, x_max)
    return te.compute((*lead, o), lambda *i: _epilogue(
        acc[flat(i[:-1]), i[-1]], bias, multiplier, i[-1], out_dtype, out_zero_point, out_qmin,
        out_qmax), name="qdense")


def pad_taps(w):
    """w [O, C, kh, kw] -> [O, C, kh, kw rounded up to 4], zeros in the new taps: the layout
    of qconv2d_packed(direct=True), whose groups of 4 taps lie along a window's row."""
    w = np.asarray(w)
    return np.pad(w, [(0, 0)] * 3 + [(0, -w.shape[3] % GROUP)])


@op
def qconv2d_packed(x, w, bias, multiplier, kernel, stride=1, padding=0, x_zero_point=0,
                   x_max=255, direct=False, pool=1, flat=False, out_dtype=None,
                   out_zero_point=0, out_qmin=0, out_qmax=255):
    """qconv2d with w [O, C, kh, kw] packed by pack_weight (`kernel` = (kh, kw)), multiplied
    as qdense_packed on rows (N, Ho, Wo) x K, the epilogue writing NCHW. Padding holds
    x_zero_point. Two ways to form the rows:

    - direct=False: the windows gathered into rows [N, Ho, Wo, C * kh * kw] (w packed as
      it is), byte by byte: the dot product's 4 taps come from 4 places of x;
    - direct=True: w packed as pack_weight(pad_taps(w)), taps [C, kh, kw rounded up to 4]:
      each group of 4 taps is 4 consecutive bytes of one row of x, which the dot product reads
      in place, so nothing is gathered (x is padded on the right for the last window's extra
      taps, which meet zero weights). Costs the zero taps' multiplies (3x3: 4/3)."""
    o = _check_packed("qconv2d_packed", w, bias, x_max, x)
    _check_operands("qconv2d_packed", x, te.placeholder((o, 1), "int8"), bias, multiplier,
                    out_dtype, out_qmin, out_qmax)
    k_h, k_w = kernel
    n_, c_, h, wd = dims(x.shape)
    sh, sw, ph, pw, ho, wo = _conv_check(x, te.placeholder((o, c_, k_h, k_w), "int8"), stride,
                                         padding)
    row = -(-k_w // GROUP) * GROUP if direct else k_w  # taps per window row, as packed
    taps = c_ * k_h * row
    if not same(w.shape[1] * GROUP, -(-taps // GROUP) * GROUP):
        raise ShapeError(f"qconv2d_packed: w holds {show([w.shape[1] * GROUP])[0]} taps per "
                         f"channel, x with kernel {kernel} needs {taps}"
                         f"{' (direct: kw padded to a multiple of 4)' if direct else ''}")
    extra = max(0, (wo - 1) * sw + row - (wd + 2 * pw)) if direct else 0
    if ph or pw or extra:  # padded once; the windows then read it without a branch
        fill = _c(x_zero_point, x.dtype)
        xp = te.compute((n_, c_, h + 2 * ph, wd + 2 * pw + extra), lambda a, c, i, j:
                        te.if_then_else(te.all(i >= ph, i < h + ph, j >= pw, j < wd + pw),
                                        x[a, c, i - ph, j - pw], fill), name="qconv2d_pad")
    else:
        xp = x

    def window(a, i, j, r):
        # taps past C * kh * kw (the packing's last group) meet zero weights: any in-bounds
        # value does, so the channel is clamped instead of tested
        c, t = r // (k_h * row), r % (k_h * row)
        c = c if direct else te.min(c, c_ - 1)  # direct: every tap is a real one's place
        return xp[a, c, i * sh + t // row, j * sw + t % row]

    rows = (n_, ho, wo)
    if direct:  # the GEMM reads x's rows in place
        acc = _packed_gemm(rows, window, w, x_max, steps=(k_h, row // GROUP))
    else:
        cols = te.compute((*rows, w.shape[1] * GROUP), window, name=WINDOWS)
        acc = _packed_gemm(rows, lambda a, i, j, k: cols[a, i, j, k], w, x_max)
    _check_pool("qconv2d_packed", pool, ho, wo)
    value = _pooled(lambda a, c, i, j: acc[a, i, j, c], pool)
    return _nchw_output((n_, o, ho // pool, wo // pool), flat, lambda a, c, i, j: _epilogue(
        value(a, c, i, j), bias, multiplier, c, out_dtype, out_zero_point, out_qmin, out_qmax))


def _nchw_output(shape, flat, element):
    """The output [N, C, H, W], or with `flat` [N, C * H * W] (Flatten's layout, NCHW order:
    a Flatten after the layer costs no kernel of its own); element(a, c, i, j)."""
    if not flat:
        return te.compute(shape, element, name="qconv2d")
    _, c_, h, w = shape
    return te.compute((shape[0], c_ * h * w), lambda a, f: element(
        a, f // (h * w), f // w % h, f % w), name="qconv2d")


# ---- few input channels: output pixels as the dot product's lanes ---------------------------
# A convolution with few taps per output or few output channels (a stem on a 1-channel image:
# LeNet's 1 -> 6 5x5) leaves most of the packed kernels' 16 channel lanes idle. Here the lanes
# are 16 output pixels along a row (NCHW's contiguous axis: the epilogue stores them as they
# are) and the 4 bytes of a step are 4 taps along a window's row, the weights' 4 bytes
# broadcast: one step = 4 taps x 16 pixels of one channel. The operand is a row's "quads"
# (quads[.., j, t] = x[.., j + t], 4 bytes per pixel), built once per image, so that the 16
# pixels' 4 taps at any kernel offset are 64 contiguous bytes.
PIXELS_ATTR = "tvmfront.int8_pixels"  # block annotation: the largest activation value (x_max)
PIXELS_POOL = "tvmfront.int8_pool"  # and the max-pool done in the epilogue (1: none)
QUADS = "qconv2d_quads"
QUANTIZED = "qconv2d_quantize"


def _quantized(x, scale, zero_point, qmin, qmax, dtype, i):
    """quantize's value at x[i]: clamp(nearbyint(x * (1 / scale)) + zero_point, qmin, qmax)."""
    dt = x.dtype
    q = tirx.nearbyint(x(*i) * (_c(1, dt) / scale().astype(dt))) + zero_point().astype(dt)
    return te.min(te.max(q, _c(qmin, dt)), _c(qmax, dt)).astype(dtype)


def _check_pool(name, pool, ho, wo):
    if not (isinstance(pool, int) and 1 <= pool <= min(ho, wo)):
        raise ValueError(f"{name}: pool must be an integer in [1, {min(ho, wo)}], got {pool!r}")


def _pooled(acc, pool):
    """value(a, o, i, j): max of acc over the pool x pool window of output (i, j) (stride
    pool, no padding): the max-pool done on the accumulator, before the epilogue. Exact: the
    epilogue (float(acc + bias) * multiplier with multiplier > 0, rounding, clamping) never
    decreases as acc grows, so max(epilogue(acc)) = epilogue(max(acc))."""
    if pool == 1:
        return lambda a, o, i, j: acc(a, o, i, j)

    def value(a, o, i, j):
        terms = [acc(a, o, i * pool + u, j * pool + v) for u in range(pool) for v in range(pool)]
        out = terms[0]
        for t in terms[1:]:
            out = te.max(out, t)
        return out

    return value


@op
def qconv2d_pixels(x, w, bias, multiplier, x_scale=None, x_offset=None, kernel=(1, 1),
                   stride=1, padding=0, x_zero_point=0, x_qmin=0, x_qmax=255, pool=1,
                   out_dtype=None, out_zero_point=0, out_qmin=0, out_qmax=255):
    """qconv2d with w [O, C, kh, kw] as pad_taps(w) ([O, C, kh, kw rounded up to 4]) and
    `kernel` = (kh, kw), the output pixels as the dot product's lanes (see above); stride 1
    along the width. x: uint8/int8, or float with x_scale, x_offset (0-d float, 0-d int32:
    the input's quantization, as ``quantize`` with qmin, qmax = x_qmin, x_qmax and dtype uint8
    where x_qmin >= 0, done in this kernel). Padding holds x_zero_point. `pool` > 1: the
    output max-pooled over pool x pool windows (stride pool, no padding, floor), on the
    accumulator (exact: see _pooled)."""
    k_h, k_w = kernel
    o = dims(w.shape)[0]
    _check_operands("qconv2d_pixels", te.placeholder((1,), "uint8") if str(x.dtype).startswith(
        "float") else x, te.placeholder((o, 1), "int8"), bias, multiplier, out_dtype, out_qmin,
        out_qmax)
    n_, c_, h, wd = dims(x.shape)
    sh, sw, ph, pw, ho, wo = _conv_check(x, te.placeholder((o, c_, k_h, k_w), "int8"), stride,
                                         padding)
    row = -(-k_w // GROUP) * GROUP
    if sw != 1:
        raise ValueError(f"qconv2d_pixels: stride 1 along the width only, got {stride}")
    if tuple(dims(w.shape)) != (o, c_, k_h, row):
        raise ShapeError(f"qconv2d_pixels: w must be pad_taps of [O, {c_}, {k_h}, {k_w}]: "
                         f"[O, {c_}, {k_h}, {row}], got {tuple(show(w.shape))}")
    _check_pool("qconv2d_pixels", pool, ho, wo)
    if str(x.dtype).startswith("float"):
        if x_scale is None or x_offset is None:
            raise TypeError("qconv2d_pixels: a float x needs x_scale and x_offset (its "
                            "quantization)")
        dtype = activation_dtype(x_qmin, x_qmax)
        # a stage of its own, not in the padding's: over x's contiguous pixels, which LLVM
        # vectorizes (TVM leaves nearbyint's loop scalar; in the padded rows' short loops LLVM
        # vectorized across rows, with gathers)
        x = te.compute(x.shape, lambda *i: _quantized(x, x_scale, x_offset, x_qmin, x_qmax,
                                                       dtype, i), name=QUANTIZED)
    else:
        dtype = str(x.dtype)
        x_qmax = min(x_qmax, _range(dtype)[1])
    fill = _c(x_zero_point, dtype)
    # the accumulator: whole vectors of pixels per row (past wo: columns nobody reads), the
    # rows the pooling reads
    wide, high = -(-wo // LANES) * LANES, ho // pool * pool
    extra = wide - wo + row - k_w  # those columns' and the last window's zero taps' inputs
    xq = te.compute((n_, c_, h + 2 * ph, wd + 2 * pw + extra), lambda a, c, i, j:
                    te.if_then_else(te.all(i >= ph, i < h + ph, j >= pw, j < wd + pw),
                                    x[a, c, i - ph, j - pw], fill), name="qconv2d_pad")
    quads = te.compute((n_, c_, h + 2 * ph, wide + row - GROUP, GROUP),
                       lambda a, c, i, j, t: xq[a, c, i, j + t], name=QUADS)
    rc = te.reduce_axis((0, c_), "c")
    rh = te.reduce_axis((0, k_h), "kh")
    rg = te.reduce_axis((0, row // GROUP), "g")
    rt = te.reduce_axis((0, GROUP), "t")
    acc = te.compute((n_, o, high, wide), lambda a, oc, i, j: te.sum(
        _widened(quads[a, rc, i * sh + rh, j + rg * GROUP, rt])
        * _widened(w[oc, rc, rh, rg * GROUP + rt]), axis=[rc, rh, rg, rt]),
        name="qpixels_acc", attrs={PIXELS_ATTR: x_qmax, PIXELS_POOL: pool})
    value = _pooled(lambda a, c, i, j: acc[a, c, i, j], pool)
    return te.compute((n_, o, ho // pool, wo // pool), lambda a, c, i, j: _epilogue(
        value(a, c, i, j), bias, multiplier, c, out_dtype, out_zero_point, out_qmin, out_qmax),
        name="qconv2d")


def activation_dtype(qmin, qmax):
    """The 8-bit type holding integers in [qmin, qmax]: uint8 where it can, else int8."""
    if 0 <= qmin < qmax <= 255:
        return "uint8"
    if -128 <= qmin < qmax <= 127:
        return "int8"
    raise ValueError(f"int8: activation range [{qmin}, {qmax}] fits neither uint8 nor int8")


@op
def qchain(x, *operands, steps=()):
    """Several packed int8 layers in one kernel, each on the previous one's output: steps =
    ((kind, number of operands, options as (name, value) pairs), ...), kind "dense"
    (qdense_packed), "conv" (qconv2d_packed) or "pixels" (qconv2d_pixels), operands the
    layers' tensor inputs after x, in order. LeNet int8 is then one call: at batch 1 a
    kernel call cost more than its kernels' work (VM call 6.3 us, kernels 1.4 us)."""
    kinds = {"dense": qdense_packed, "conv": qconv2d_packed, "pixels": qconv2d_pixels}
    if not steps or sum(n for _, n, _ in steps) != len(operands) or \
            any(kind not in kinds for kind, _, _ in steps):
        raise ValueError(f"qchain: steps {[(k, n) for k, n, _ in steps]} (kinds from "
                         f"{sorted(kinds)}) do not take {len(operands)} operands")
    start = 0
    for kind, n, options in steps:
        x = kinds[kind].fn(x, *operands[start:start + n], **dict(options))
        start += n
    return x
