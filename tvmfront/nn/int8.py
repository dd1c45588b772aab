"""Int8 inference layers and the conversion of a float (or QAT) model to them.

``convert(model, scales)`` returns a copy of the model whose Linear and Conv2d layers (and
QATLinear / QATConv2d) are QuantizedLinear / QuantizedConv2d, built from one description per
layer, the one ``tvf.nn.quantization.qat_scales`` returns (calibration produces the same):
``weight_scale`` [out] (per-channel symmetric int8), ``input_scale`` / ``input_zero_point`` /
``input_qmin`` / ``input_qmax`` (per-tensor affine). So a QAT-trained model and a calibrated
one convert through the same code. What a quantized layer holds, all as buffers (exported,
loaded, never trained):

- ``weight``: int8, nearbyint(w * (1 / weight_scale)) clamped, as fake_quant rounds it;
- ``bias``: int32, round(b / (s_x * s_w)) - zx * sum_k weight (the input zero point folded in);
- ``multiplier``: float32 [out], s_x * s_w (dequantize) or s_x * s_w / s_next (requantize);
- ``input_scale`` / ``input_zero_point``: 0-d, the layer quantizes its float input with them
  (plain values, not buffers, where the previous layer hands it integers).

Inside a Sequential, a quantized layer followed by another (with only ReLU, MaxPool2d and
Flatten between) hands it uint8 directly: the epilogue requantizes to the next layer's input scale
and the ReLU becomes the clamp at the zero point, so the activation between the two never
exists in float. Elsewhere the layer dequantizes to float in its epilogue.

With `pack` (the target has an 8-bit dot product) there is less in between: a convolution
max-pools in its epilogue when a tiling MaxPool2d follows it (kernel = stride), and writes the
Flatten's layout when one follows; a pixel-lanes convolution quantizes its float input
itself; and a run of such layers handing each other integers is one kernel
(ops.int8.qchain). LeNet's forward is one kernel call instead of nine.
"""

import copy
import numbers

import numpy as np

from .._checks import is_whole
from ..errors import TvmfrontError
from ..ops import int8 as q
from ..ops.conv import _pair
from .fold import Identity
from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential
from .module import Module, Parameter

INT8_KINDS = (Linear, Conv2d)  # QATLinear / QATConv2d subclass them
_OPS = {"dense": q.qdense_packed, "conv": q.qconv2d_packed, "pixels": q.qconv2d_pixels}
MIN_PACKED_TAPS = 16  # a convolution's taps per output (C * kh * kw) worth packing


def float_weight(p):
    """A layer's weight or bias as an array: a Parameter's value, or a pruned layer's
    effective weight (weight_orig * weight_mask, an array); None stays None."""
    return None if p is None else np.asarray(p.data if isinstance(p, Parameter) else p)


def quantize_weight(w, scale, qmin=-128, qmax=127):
    """int8 weights per output channel (axis 0), rounded as fake_quant does (float32,
    multiplied by the reciprocal, half to even)."""
    w = np.asarray(w, np.float32)
    s = np.asarray(scale, np.float32).reshape((-1,) + (1,) * (w.ndim - 1))
    return np.clip(np.rint(w * (np.float32(1) / s)), qmin, qmax).astype(np.int8)


class _Quantized(Module):
    """What QuantizedLinear and QuantizedConv2d share: the buffers and the epilogue mode."""

    def _setup(self, layer, entry, pack):
        Module.__init__(self)
        w_scale = np.asarray(entry["weight_scale"], np.float64)
        s_x, zx = float(entry["input_scale"]), int(entry["input_zero_point"])
        self.input_qmin, self.input_qmax = int(entry["input_qmin"]), int(entry["input_qmax"])
        self.input_dtype = q.activation_dtype(self.input_qmin, self.input_qmax)
        wq = quantize_weight(float_weight(layer.weight), w_scale, entry.get("weight_qmin", -128),
                             entry.get("weight_qmax", 127))
        b = float_weight(layer.bias)
        out = wq.shape[0]
        bias = np.zeros(out) if b is None else np.rint(b.astype(np.float64) / (s_x * w_scale))
        bias = bias - zx * wq.reshape(out, -1).astype(np.int64).sum(1)
        if np.abs(bias).max(initial=0) >= 2 ** 31:
            raise ValueError("int8: a bias does not fit int32 at this layer's scales "
                             "(input or weight scale too small)")
        # packed: the layout of the CPU's 8-bit dot product (ops.int8.pack_weight); pixels:
        # that dot product along a convolution's output pixels (ops.int8.qconv2d_pixels)
        self.packed = bool(pack) and self._packable(wq)
        self.pixels = bool(pack) and not self.packed and self._pixel_lanes(layer)
        self.register_buffer("weight", q.pack_weight(self._taps(wq)) if self.packed else
                             q.pad_taps(wq) if self.pixels else wq)
        self.register_buffer("bias", bias.astype(np.int32))
        self.register_buffer("multiplier", (s_x * w_scale).astype(np.float32))
        self.register_buffer("input_scale", np.array(s_x, np.float32))
        self.register_buffer("input_zero_point", np.array(zx, np.int32))
        self.zero_point = zx  # also static: the padding of a convolution holds it
        self.quantize_input = True  # False: the previous layer hands over integers
        self.out = {}  # dequantize
        self.train(False)

    def requantize_to(self, nxt, relu):
        """Hand `nxt` (the next quantized layer) integers at its input scale; `relu`: a ReLU
        between them becomes the clamp's lower bound."""
        s_next, z_next = float(np.asarray(nxt.input_scale.data)), nxt.zero_point
        self.multiplier = (self.multiplier.data.astype(np.float64) / s_next).astype(np.float32)
        lo = max(nxt.input_qmin, z_next) if relu else nxt.input_qmin
        self.out = {"out_dtype": nxt.input_dtype, "out_zero_point": z_next,
                    "out_qmin": lo, "out_qmax": nxt.input_qmax}
        nxt.quantize_input = False
        nxt._unregister_input_scales()

    def _unregister_input_scales(self):
        """input_scale and input_zero_point kept as plain values, not buffers: a layer that
        receives integers never reads them, and every buffer is an argument of each call
        (LeNet int8 at batch 1: 25 arguments for 5 kernels, the calls' overhead more than
        their kernels' time)."""
        for name in ("input_scale", "input_zero_point"):
            value = self._buffers.pop(name)
            object.__setattr__(self, name, value)

    def _packable(self, wq):
        return True

    def _pixel_lanes(self, layer):
        return False

    def _taps(self, wq):
        """The weight as packed (a direct convolution pads its rows of taps)."""
        return wq

    def _int8_options(self):
        """The keywords of the packed ops: the input's largest value, and the epilogue."""
        return {"x_max": self.input_qmax, **self.out} if self.packed else self.out

    chain = ()  # (_fuse_runs) the layers after it that its kernel computes too
    in_chain = False  # computed by an earlier layer's kernel: passes its input through

    def forward(self, x):
        if self.in_chain:
            # Its work is in the head's kernel: only the head's output may pass. Run on its own
            # (a sub-module of the converted model compiled alone, layers called out of order)
            # it would return its input unchanged: a silent wrong answer.
            if x is not self.__dict__.pop("_chain_output", None):
                raise TvmfrontError(
                    f"this quantized layer ({self.extra_repr()}) is computed by an earlier "
                    f"layer's fused int8 kernel (ops.int8.qchain) and cannot run on its own: "
                    f"run the converted model whole, or convert with the layers you want to run "
                    f"alone outside it")
            return x
        step = self._step()
        if step is None:  # the widening kernel
            return self._forward_one(x)
        if not self.chain:
            kind, operands, options = step
            return _OPS[kind](self._chain_input(x), *operands, **options)
        steps, operands = [], []
        for m in (self, *self.chain):
            kind, tensors, options = m._step()
            steps.append((kind, len(tensors), tuple(sorted(options.items()))))
            operands += tensors
        out = q.qchain(self._chain_input(x), *operands, steps=tuple(steps))
        for m in self.chain:  # the members pass exactly this through (see in_chain)
            m.__dict__["_chain_output"] = out
        return out

    def _step(self):
        """(kind, tensor operands, options) of its packed op (see ops.int8.qchain), or None
        for the widening kernel."""
        return None

    def _chain_input(self, x):
        """What its packed op takes: the input quantized unless the op does it."""
        return self._input(x)

    def _input(self, x):
        if not self.quantize_input:
            return x
        return q.quantize(x, self.input_scale, self.input_zero_point, qmin=self.input_qmin,
                          qmax=self.input_qmax, dtype=self.input_dtype)

    def extra_repr(self):
        mode = (f"requantize to {self.out['out_dtype']}" if self.out else "dequantize")
        layout = " packed" if self.packed else " pixel lanes" if self.pixels else ""
        return f"{tuple(self.weight.shape)} int8{layout}, input {self.input_dtype}, {mode}"


class QuantizedLinear(_Quantized):
    """Linear as int8 (see the module docstring)."""

    def __init__(self, layer, entry, pack=False):
        self._setup(layer, entry, pack)

    def _packable(self, wq):
        return wq.shape[1] % q.GROUP == 0  # the input is read in groups of 4 as it is

    def _step(self):
        if not self.packed:
            return None
        return "dense", [self.weight, self.bias, self.multiplier], self._int8_options()

    def _forward_one(self, x):
        return q.qdense(self._input(x), self.weight, self.bias, self.multiplier, **self.out)


def _direct(kernel):
    """Whether a packed convolution reads x's rows in place (ops.int8.qconv2d_packed) rather
    than gathering its windows byte by byte: measured faster at every kernel size, even where
    the zero taps padding each row to 4 outnumber the real ones (batch 64, one thread: 3x3
    16->16 at 32x32 3.8 vs 9.1 ms, 5x5 6->16 0.065 vs 0.074, 1x1 16->32 stride 2 1.14 vs
    1.26); kept as a choice for the targets where it would not be."""
    return True


class QuantizedConv2d(_Quantized):
    """Conv2d as int8 (see the module docstring)."""

    def __init__(self, layer, entry, pack=False):
        self._setup(layer, entry, pack)
        self.kernel = tuple(int(d) for d in np.shape(float_weight(layer.weight))[2:])
        self.direct = self.packed and _direct(self.kernel)
        self.stride, self.padding = layer.stride, layer.padding
        self.pool = 1  # a max-pool after it done in its epilogue (_chain), on the accumulator
        self.flat = False  # packed: writes Flatten's [N, C * H * W] (_chain)

    def _packable(self, wq):
        # Fewer than 16 output channels leave most of the dot product's lanes idle: with
        # the windows gathered per tile on top, slower than the widening kernel (LeNet's
        # 6-channel conv at batch 64: ~2x slower; its 16-channel conv: ~1.2x faster; with
        # VNNI's 16-row register tiles, direct, still 2.3x slower). Fewer than 16 taps per
        # output (a one-channel 3x3 stem: 3 dot-product steps) leave the tile's epilogue,
        # which turns it from channels to NCHW pixels, costing more than the steps: ResNet's
        # stem at batch 64 on VNNI 1.5x float32's time packed, 0.9x widening.
        return wq.shape[0] >= q.LANES and wq[0].size >= MIN_PACKED_TAPS

    def _pixel_lanes(self, layer):
        # The rest (few output channels or taps) on the dot product with the output pixels
        # as its lanes instead (ops.int8.qconv2d_pixels: stride 1 along the width). LeNet's
        # 1 -> 6 5x5 conv at batch 64, VNNI, one thread, each alone on a loaded 2-core
        # machine: ~95 us widening (and 5 us of quantize and max-pool kernels) -> ~50 us,
        # the quantize and max-pool inside.
        return _pair(layer.stride)[1] == 1

    def _taps(self, wq):
        return q.pad_taps(wq) if _direct(wq.shape[2:]) else wq

    def _step(self):
        common = {"stride": self.stride, "padding": self.padding,
                  "x_zero_point": self.zero_point, "kernel": self.kernel, "pool": self.pool}
        operands = [self.weight, self.bias, self.multiplier]
        if self.pixels:  # the input quantized in the kernel
            if self.quantize_input:
                operands += [self.input_scale, self.input_zero_point]
            return "pixels", operands, {"x_qmin": self.input_qmin, "x_qmax": self.input_qmax,
                                        **common, **self.out}
        if self.packed:
            return "conv", operands, {"direct": self.direct, "flat": self.flat, **common,
                                      **self._int8_options()}
        return None

    def _chain_input(self, x):
        return x if self.pixels else self._input(x)

    def _forward_one(self, x):
        return q.qconv2d(self._input(x), self.weight, self.bias, self.multiplier,
                         stride=self.stride, padding=self.padding,
                         x_zero_point=self.zero_point, **self.out)


def named_modules(model):
    """[(dotted name, module)], the model itself as "", depth first (Module.named_modules);
    the submodules of a Linear / Conv2d (a QAT layer's fake quantizers) are part of it and
    left out."""
    out, inside = [], set()
    for name, m in model.named_modules():
        if id(m) in inside:
            continue
        out.append((name, m))
        if isinstance(m, INT8_KINDS):
            inside.update(id(c) for c in m.modules()[1:])
    return out


def int8_layers(model):
    """[(dotted name, layer)] of the layers that have an int8 kernel, depth first."""
    return [(n, m) for n, m in named_modules(model) if isinstance(m, INT8_KINDS)]


def float_layers(model):
    """[(dotted name, class name)] of the layers with parameters or buffers of their own that
    have no int8 kernel, so stay float, depth first."""
    return [(n, type(m).__name__) for n, m in named_modules(model)
            if not isinstance(m, INT8_KINDS) and (m._parameters or m._buffers)]


def convert(model, scales, pack=None):
    """A copy of `model` (eval mode) with every Linear / Conv2d named in `scales` replaced by
    its int8 version; `scales`: {dotted name: description} as qat_scales returns. `pack`:
    called with a description, True where the layer's weight should be packed for the
    target's 8-bit dot product (ops.int8.pack_weight); None packs none."""
    model = copy.deepcopy(model)
    done = set()
    for parent_name, parent in named_modules(model):
        for name, child in list(parent._modules.items()):
            full = f"{parent_name}.{name}" if parent_name else name
            if isinstance(child, INT8_KINDS) and full in scales:
                _check_entry(full, scales[full], float_weight(child.weight).shape[0])
                cls = QuantizedConv2d if isinstance(child, Conv2d) else QuantizedLinear
                new = cls(child, scales[full], pack=bool(pack and pack(scales[full])))
                parent._modules[name] = new  # in place in the dict (Sequential's order)
                object.__setattr__(parent, name, new)
                done.add(full)
    missing = sorted(set(scales) - done)
    if missing:
        raise ValueError(f"int8.convert: no Linear or Conv2d named {missing} in the model")
    for seq in [m for _, m in named_modules(model) if isinstance(m, Sequential)]:
        _chain(seq)
    model.eval()
    return model


_NEEDED = ("weight_scale", "input_scale", "input_zero_point", "input_qmin", "input_qmax")


def _check_entry(name, entry, out_channels):
    """The description of layer `name` as qat_scales writes it, or an error naming what is
    wrong: a negative or NaN scale, or a zero point outside its range, had converted into a
    model giving wrong outputs, and a missing key was a bare KeyError."""
    where = f"int8.convert: scales[{name!r}]"
    if not isinstance(entry, dict):
        raise TypeError(f"{where} must be a dict as qat_scales returns, got {type(entry).__name__}")
    missing = [k for k in _NEEDED if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing} (qat_scales gives {list(_NEEDED)})")
    for lo, hi, bounds in (("input_qmin", "input_qmax", (-128, 255)),
                           ("weight_qmin", "weight_qmax", (-128, 127))):
        a, b = entry.get(lo, -128), entry.get(hi, 127)
        if not (is_whole(a, *bounds) and is_whole(b, *bounds) and a < b):
            raise ValueError(f"{where}: {lo}, {hi} must be ints with {bounds[0]} <= {lo} < {hi} "
                             f"<= {bounds[1]}, got {a!r}, {b!r}")
    s_x = entry["input_scale"]
    if isinstance(s_x, bool) or not isinstance(s_x, (numbers.Real, np.ndarray)) or \
            np.size(s_x) != 1 or not (np.isfinite(s_x) and s_x > 0):
        raise ValueError(f"{where}: input_scale must be a finite number > 0, got {s_x!r}")
    zx = entry["input_zero_point"]
    if not is_whole(zx, entry["input_qmin"], entry["input_qmax"]):
        raise ValueError(f"{where}: input_zero_point must be an int in [input_qmin, input_qmax] "
                         f"= [{entry['input_qmin']}, {entry['input_qmax']}], got {zx!r}")
    try:
        w = np.asarray(entry["weight_scale"], np.float64)
    except (TypeError, ValueError):  # strings, None, ragged lists
        w = np.asarray(np.nan)
    if w.shape not in ((), (1,), (out_channels,)) or \
            not (np.isfinite(w).all() and (w > 0).all()):
        raise ValueError(f"{where}: weight_scale must be finite numbers > 0, one per output "
                         f"channel ({out_channels}) or one in all, got {entry['weight_scale']!r:.80}")


def _pool_into(seq):
    """Within a Sequential: a packed or pixel-lanes convolution followed by a MaxPool2d (a ReLU between
    them or not) whose windows tile the image (kernel = stride, no padding) max-pools in its
    epilogue, the MaxPool2d replaced by an Identity. Exact either way round: max-pooling
    commutes with the ReLU and with the (monotone) epilogue (ops.int8._pooled)."""
    items = list(seq._modules.items())
    for k, (_, layer) in enumerate(items):
        if not (isinstance(layer, QuantizedConv2d) and (layer.pixels or layer.packed)
                and layer.pool == 1):
            continue
        after = [(n, m) for n, m in items[k + 1:k + 3]]
        if after and isinstance(after[0][1], ReLU):
            after = after[1:]
        if after and _tiling_max_pool(after[0][1]):
            layer.pool = _pair(after[0][1].kernel_size)[0]
            seq._modules[after[0][0]] = ident = Identity()
            object.__setattr__(seq, after[0][0], ident)


def _tiling_max_pool(m):
    if not isinstance(m, MaxPool2d):
        return False
    (kh, kw), stride = _pair(m.kernel_size), _pair(m.stride or m.kernel_size)
    return kh == kw and stride == (kh, kw) and _pair(m.padding) == (0, 0)


def _flattens_after(layer, between):
    """Whether packed convolution `layer` can write the flattened output itself: one Flatten
    among `between` (what lies before the next quantized layer) and no MaxPool2d (a pooling
    after the convolution needs its NCHW output)."""
    kinds = [type(m) for _, m in between]
    return (isinstance(layer, QuantizedConv2d) and layer.packed and kinds.count(Flatten) == 1
            and MaxPool2d not in kinds)


def _chain(seq):
    """Within a Sequential: a quantized layer whose next quantized layer follows after only
    ReLU / MaxPool2d / Flatten requantizes into it (the ReLU folded into the clamp, the pooling
    and flattening done on the integers)."""
    _pool_into(seq)
    _requantize_chain(seq)
    _fuse_runs(list(seq._modules.items()))


def _fuse_runs(items):
    """Runs of packed (or pixel-lanes) layers that hand each other integers, with only
    Identity modules between them, computed by the first one's kernel (ops.int8.qchain),
    the others passing their input through: one kernel call instead of one per layer."""
    run = []
    for _, m in [*items, (None, None)]:
        if isinstance(m, Identity):
            continue
        fusable = isinstance(m, _Quantized) and m._step() is not None
        if fusable and run and run[-1].out and not m.quantize_input:
            run.append(m)
            continue
        if len(run) > 1:
            run[0].chain = tuple(run[1:])
            for member in run[1:]:
                member.in_chain = True
        run = [m] if fusable else []


def _requantize_chain(seq):
    """_chain's requantization (see there)."""
    items = list(seq._modules.items())
    for k, (_, layer) in enumerate(items):
        if not isinstance(layer, _Quantized):
            continue
        relu, between = False, []
        for j in range(k + 1, len(items)):
            name, m = items[j]
            if isinstance(m, ReLU) and not relu:
                relu, between = True, between + [name]
            elif isinstance(m, (Flatten, MaxPool2d, Identity)):  # Identity: a folded BN
                continue  # max commutes with the (monotone) requantization: exact on uint8
            elif isinstance(m, _Quantized):
                layer.requantize_to(m, relu)
                if _flattens_after(layer, items[k + 1:j]):  # the epilogue writes it flat
                    layer.flat = True
                    between += [n for n, f in items[k + 1:j] if isinstance(f, Flatten)]
                for n in between:
                    seq._modules[n] = ident = Identity()
                    object.__setattr__(seq, n, ident)
                break
            else:
                break
