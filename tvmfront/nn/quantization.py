"""Quantization-aware training: fake quantization inserted into Linear and Conv2d.

``prepare_qat(model)`` returns a copy of the model whose Linear and Conv2d layers quantize
their weights and their input activations in the forward with ``ops.fake_quant`` (the
straight-through estimator carries the gradient), so training learns weights that survive
int8. What is chosen, and how it relates to PyTorch's default QAT qconfig:

- **weights**: per-channel (output channel, axis 0) symmetric int8 in [-128, 127], zero point
  0, scale = max |w| of the channel / 127.5 (at least float32's eps), computed from the
  current weights at every forward: PyTorch's ``per_channel_symmetric`` qparams. (PyTorch's
  default QAT weight observer also averages the weight min/max over steps with constant 0.01;
  taking the current weights instead means the scale a converter reads from the final weights
  is the one the model was trained with.)
- **activations**: the input of each layer, per tensor, affine (a zero point), in
  ``activation_range`` = [0, 255] (uint8, as PyTorch's quint8) by default. The range is kept
  as buffers ``input_fake_quant.min_val`` / ``max_val`` (initially +inf / -inf), updated in
  training mode as PyTorch's MovingAverageMinMaxObserver does (the first batch's min/max, then
  old + 0.01 * (batch's - old)), before the batch is fake-quantized with the scale they give;
  in eval mode (predict, inference, export) they are frozen: PyTorch keeps observing in eval
  mode unless ``disable_observer`` is applied, this is PyTorch with it applied.
  PyTorch's x86 qconfig narrows activations to [0, 127] (``reduce_range``) against
  ``vpmaddubsw`` saturation on CPUs without VNNI; pass ``activation_range=(0, 127)`` for that.

``qat_scales(model)`` returns what an int8 converter needs: per layer the weight scales and
the input scale and zero point (see its docstring).

    >>> model = tvf.nn.quantization.prepare_qat(make_model())
    >>> module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(1e-3), ...)
    >>> tvf.Trainer(module).fit(x, y, epochs=5)
    >>> scales = tvf.nn.quantization.qat_scales(model, module.state_dict())
    >>> scales["0"]["weight_scale"], scales["0"]["input_scale"]
"""

import copy

import numpy as np

from .. import ops
from ..ops import quant
from ..tensor import Tensor, resolve
from .layers import Conv2d, Linear
from .module import Module, Parameter


def _detached(x):
    """x with no gradient path (observers and scales must not pass gradient back, as
    PyTorch's observers see x.detach()). A Parameter is resolved first: inside a trace it
    stands for a Tensor that requires a gradient."""
    x = resolve(x)
    return Tensor(x.expr) if isinstance(x, Tensor) else x


class ActivationFakeQuant(Module):
    """Per-tensor affine fake quantization whose range is observed (moving-average min/max in
    training mode, frozen in eval mode). Buffers: min_val, max_val (0-d, the input's dtype)."""

    def __init__(self, qmin=0, qmax=255, averaging_constant=0.01, dtype="float32"):
        super().__init__()
        quant._check_range("ActivationFakeQuant", qmin, qmax)
        if not 0 < averaging_constant <= 1:
            raise ValueError(f"ActivationFakeQuant: averaging_constant must be in (0, 1], got "
                             f"{averaging_constant!r}")
        self.qmin, self.qmax, self.averaging_constant = int(qmin), int(qmax), averaging_constant
        self.register_buffer("min_val", np.array(np.inf, dtype))
        self.register_buffer("max_val", np.array(-np.inf, dtype))

    def forward(self, x):
        if self.training:
            seen, c = _detached(x), self.averaging_constant
            lo = quant.observe(seen, self.min_val, self.max_val, averaging_constant=c, which="min")
            hi = quant.observe(seen, self.min_val, self.max_val, averaging_constant=c, which="max")
            self.min_val, self.max_val = lo, hi
        scale, zero_point = self.qparams()
        return ops.fake_quant(x, scale, zero_point, qmin=self.qmin, qmax=self.qmax)

    def qparams(self):
        """(scale, zero_point) from the observed range, 0-d (traced or numpy)."""
        r = {"qmin": self.qmin, "qmax": self.qmax}
        return (quant.affine_qparams(self.min_val, self.max_val, which="scale", **r),
                quant.affine_qparams(self.min_val, self.max_val, which="zero_point", **r))

    def extra_repr(self):
        return f"qmin={self.qmin}, qmax={self.qmax}, averaging_constant={self.averaging_constant}"


class WeightFakeQuant(Module):
    """Per-output-channel symmetric fake quantization of a weight [out, ...], scales from the
    weight itself (no state)."""

    def __init__(self, qmin=-128, qmax=127):
        super().__init__()
        quant._check_range("WeightFakeQuant", qmin, qmax)
        self.qmin, self.qmax = int(qmin), int(qmax)

    def scale(self, w):
        return quant.symmetric_scale(_detached(w), qmin=self.qmin, qmax=self.qmax, axis=0)

    def forward(self, w):
        zero = np.zeros(w.shape[0], "int32")
        return ops.fake_quant(w, self.scale(w), zero, qmin=self.qmin, qmax=self.qmax, axis=0)

    def extra_repr(self):
        return f"qmin={self.qmin}, qmax={self.qmax}, per channel, symmetric"


class _QAT:
    """What QATLinear and QATConv2d share: built from a float layer, keeping its Parameter
    objects (same names, same state_dict keys) and adding the two fake quantizers."""

    def _take(self, layer, names, config):
        Module.__init__(self)
        for n in names:
            setattr(self, n, getattr(layer, n))
        self.weight, self.bias = layer.weight, layer.bias
        self.input_fake_quant = ActivationFakeQuant(*config["activation_range"],
                                                    config["averaging_constant"],
                                                    dtype=layer.weight.dtype)
        self.weight_fake_quant = WeightFakeQuant(*config["weight_range"])
        self.train(layer.training)

    def _quantized(self, x):
        return self.input_fake_quant(x), self.weight_fake_quant(self.weight)


class QATLinear(_QAT, Linear):
    """Linear with fake-quantized input and weight (see the module docstring)."""

    def __init__(self, linear, config):
        self._take(linear, ("in_features", "out_features"), config)

    def forward(self, x):
        x, w = self._quantized(x)
        y = ops.dense(x, w)
        return ops.bias_add(y, self.bias, axis=-1) if self.bias is not None else y


class QATConv2d(_QAT, Conv2d):
    """Conv2d with fake-quantized input and weight (see the module docstring)."""

    def __init__(self, conv, config):
        self._take(conv, ("in_channels", "out_channels", "kernel_size", "stride", "padding"),
                   config)

    def forward(self, x):
        x, w = self._quantized(x)
        y = ops.conv2d(x, w, stride=self.stride, padding=self.padding)
        return ops.bias_add(y, self.bias, axis=1) if self.bias is not None else y


_QAT_CLASS = {Linear: QATLinear, Conv2d: QATConv2d}


def prepare_qat(model, activation_range=(0, 255), weight_range=(-128, 127),
                averaging_constant=0.01, inplace=False):
    """The model with every Linear and Conv2d replaced by its fake-quantizing QAT version
    (QATLinear, QATConv2d: same parameters and names, plus the buffers
    ``<layer>.input_fake_quant.min_val`` / ``max_val``). A copy unless inplace=True, as
    torch.ao.quantization.prepare_qat. Compile and train it like any model."""
    for name, r in (("activation_range", activation_range), ("weight_range", weight_range)):
        if not isinstance(r, (tuple, list)) or len(r) != 2:
            raise ValueError(f"prepare_qat: {name} must be (qmin, qmax), got {r!r}")
        quant._check_range(f"prepare_qat: {name}", *r)
        # as torch.ao's FakeQuantize: the range holds 0 and fits the 8 bits int8 conversion
        # (tvf.quantize) gives it; (-2**40, 2**40) trained, then converted wrong
        qmin, qmax = r
        if not qmin <= 0 <= qmax or qmin < -128 or qmax > 255 or qmax - qmin > 255:
            raise ValueError(f"prepare_qat: {name} must hold 0 and fit 8 bits (int8 "
                             f"[-128, 127] or uint8 [0, 255]), got {tuple(r)}")
    config = {"activation_range": tuple(activation_range), "weight_range": tuple(weight_range),
              "averaging_constant": averaging_constant}
    model = model if inplace else copy.deepcopy(model)
    if type(model) in _QAT_CLASS:
        raise ValueError("prepare_qat: give the model that holds the layer (the layer itself "
                         "cannot be replaced in place)")
    replaced = 0
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if "weight_orig" in child._parameters:
                raise ValueError(f"prepare_qat: layer '{name}' is pruned; call prepare_qat "
                                 f"before tvf.nn.pruning.prune (or pruning.remove first)")
            cls = _QAT_CLASS.get(type(child))
            if cls is not None:
                # in place in the dict: setattr would move it last (Sequential's order)
                parent._modules[name] = new = cls(child, config)
                object.__setattr__(parent, name, new)
                replaced += 1
    if not replaced:
        already = "" if not qat_layers(model) else " (it is prepared already: its layers are QAT ones)"
        raise ValueError(f"prepare_qat: the model has no Linear or Conv2d layer to quantize{already}")
    return model


def qat_layers(model):
    """[(dotted name, QATLinear or QATConv2d)] in the model, depth first, each once."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _QAT)]


def _value(weight):
    # a Parameter, or (a pruned layer's) effective weight as an array
    return weight.data if isinstance(weight, Parameter) else np.asarray(weight)


def qat_scales(model, state=None):
    """{layer name: scales} of a prepared (and trained) model, what an int8 converter needs:

    - ``weight_scale`` float32 [out]: per output channel, symmetric (zero point 0), of the
      current weights; ``weight_qmin`` / ``weight_qmax`` their integer range;
    - ``input_scale`` (float), ``input_zero_point`` (int), ``input_qmin`` / ``input_qmax``:
      the layer input's per-tensor affine quantization, from the observed range;
    - ``kind``: "linear" or "conv2d".

    state: the trained values (``module.state_dict()`` of the compiled step), loaded into the
    model first; None: the model's own. A layer whose input was never observed (no training
    step yet) is a ValueError naming it."""
    if state is not None:
        model.load_state_dict(state)
    layers = qat_layers(model)
    if not layers:
        raise ValueError("qat_scales: the model has no QAT layer (call prepare_qat first)")
    out = {}
    for name, layer in layers:
        fq, wq = layer.input_fake_quant, layer.weight_fake_quant
        if not fq.min_val.data <= fq.max_val.data:
            raise ValueError(f"qat_scales: layer '{name}' has not observed any input yet "
                             "(train, or run the model in training mode, first)")
        scale, zero_point = (np.asarray(v) for v in fq.qparams())
        out[name] = {
            "kind": "linear" if isinstance(layer, Linear) else "conv2d",
            "weight_scale": np.asarray(wq.scale(_value(layer.weight)), np.float32),
            "weight_qmin": wq.qmin, "weight_qmax": wq.qmax,
            "input_scale": float(scale), "input_zero_point": int(zero_point),
            "input_qmin": fq.qmin, "input_qmax": fq.qmax,
        }
    return out
