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
    dt = x.dtype

    def body(*i):
        q = tirx.nearbyint(x(*i) * (_c(1, dt) / scale().astype(dt))) + zero_point().astype(dt)
        return te.min(te.max(q, _c(qmin, dt)), _c(qmax, dt)).astype(dtype)

    return te.compute(x.shape, body, name="quantize")


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
