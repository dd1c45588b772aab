"""Post-training static quantization: ``tvf.quantize(model, calibration=x, ...)``.

Calibration runs the float model in eval mode over the calibration samples, compiled once
with a symbolic batch and an extra method that returns the input of every Linear and Conv2d,
and takes each input's range: its min and max ("minmax", PyTorch's MinMaxObserver) or the
`percentile` and 100 - `percentile` percentiles ("percentile", clipping rare outliers). The
range gives the per-tensor affine uint8 scale and zero point with the same op QAT uses
(``ops.quant.affine_qparams``), the weights their per-channel symmetric scales
(``ops.quant.symmetric_scale``): the per-layer description ``qat_scales`` returns, which
``nn.int8.convert`` turns into int8 layers, compiled with ``compile_inference``.
"""

import contextlib
import copy
import warnings

import numpy as np

from . import nn
from .compile import compile_inference
from .graph import build_forward
from .nn import fold, int8
from .nn.quantization import qat_layers, qat_scales
from .ops import quant
from ._tvm import host_arch
from .errors import ShapeError
from .target import resolve_target
from .spec import TensorSpec

METHODS = ("minmax", "percentile")
CALIBRATION_BATCH = 256
PERCENTILE_SAMPLES = 1 << 20  # values per layer the percentile is taken over, at most


class _Tap(nn.Module):
    """Records (its name, the input of `layer`) in `seen` on its way through."""

    def __init__(self, name, layer, seen):
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_seen", seen)  # a plain list, not state

    def forward(self, x):
        self._seen.append((self._name, x))
        return self.layer(x)


class _Calibrator(nn.Module):
    """forward: the model's; calibrate: the input of each tapped layer in the order the
    forward calls them (their names in `names` once traced)."""

    def __init__(self, model, names):
        super().__init__()
        object.__setattr__(self, "seen", [])
        object.__setattr__(self, "names", None)
        for parent_name, parent in int8.named_modules(model):
            for n, child in list(parent._modules.items()):
                full = f"{parent_name}.{n}" if parent_name else n
                if full in names:
                    parent._modules[n] = tap = _Tap(full, child, self.seen)
                    object.__setattr__(parent, n, tap)
        self.model = model

    def forward(self, x):
        return self.model(x)

    def calibrate(self, x):
        self.seen.clear()
        self.model(x)
        names = [n for n, _ in self.seen]
        if len(set(names)) != len(names):
            shared = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"quantize: layer(s) {shared} run more than once in the forward "
                             "(shared weights): one input scale cannot be calibrated for them")
        object.__setattr__(self, "names", names)
        return tuple(v for _, v in self.seen)


class _Spy(nn.Module):
    """Records (its name, its input, its output) in `seen` on its way through `layer`."""

    def __init__(self, name, layer, seen):
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_seen", seen)

    def forward(self, x):
        y = self.layer(x)
        self._seen.append((self._name, x, y))
        return y


def _replace(model, names, make):
    """Replace each submodule of `model` named in `names` by make(name, module), in place
    (kept at its place in its parent's order, as Sequential needs)."""
    for parent_name, parent in int8.named_modules(model):
        for n, child in list(parent._modules.items()):
            full = f"{parent_name}.{n}" if parent_name else n
            if full in names:
                parent._modules[n] = new = make(full, child)
                object.__setattr__(parent, n, new)


def _uses(func):
    """{Relax var: how many bindings (and the function's result) read it}."""
    from ._tvm import relax

    count = {}

    def read(expr):
        for v in relax.analysis.free_vars(expr):
            count[v] = count.get(v, 0) + 1

    for block in func.body.blocks:
        for binding in block.bindings:
            read(binding.value)
    read(func.body.body)
    return count


def foldable_pairs(model, spec):
    """[(conv name, BatchNorm name)]: each BatchNorm2d (running statistics) whose input is a
    Conv2d's output that nothing else reads, found by tracing the forward (eval mode) with
    the layers spied on. Where a convolution's output also feeds something else (a residual
    branch), folding would change that reader, so the pair is not folded."""
    seen = []
    spied = copy.deepcopy(model)
    wanted = {n for n, m in int8.named_modules(spied)
              if isinstance(m, nn.Conv2d) or fold.foldable(m)}
    _replace(spied, wanted, lambda name, m: _Spy(name, m, seen))
    mod, _ = build_forward(spied, spec)
    uses = _uses(mod["predict"])
    convs = {}  # id of a convolution's output Tensor -> (conv name, Tensor)
    pairs = []
    kinds = dict(int8.named_modules(spied))
    calls = [name for name, _, _ in seen]
    placed = _placements(model)
    for name, x, y in seen:
        if isinstance(kinds[name].layer, nn.Conv2d):
            convs[id(y)] = (name, y)
        elif id(x) in convs and convs[id(x)][1] is x:
            conv = convs[id(x)][0]
            # the BatchNorm is the only reader; a layer called twice (shared) is not folded,
            # nor one placed at two names (nn.Sequential(conv, bn1, relu, conv, bn2)): only
            # its first name is spied on, so its second call went unseen, and folding bn1
            # into it changed what bn2 reads
            if uses.get(x.expr, 0) == 1 and calls.count(conv) == calls.count(name) == 1 and \
                    placed[conv] == placed[name] == 1:
                pairs.append((conv, name))
    return pairs


def _placements(model):
    """{name (int8.named_modules's): how many places in the module tree hold that module}."""
    count = {}

    def walk(module):
        for child in module._modules.values():
            if child is not None:
                count[id(child)] = count.get(id(child), 0) + 1
                if count[id(child)] == 1:
                    walk(child)

    walk(model)
    return {n: count.get(id(m), 1) for n, m in int8.named_modules(model)}


def fold_batchnorms(model, spec):
    """Fold every foldable BatchNorm into its convolution (in place): [(conv, bn) names]."""
    pairs = foldable_pairs(model, spec)
    modules = dict(int8.named_modules(model))
    for conv, bn in pairs:
        fold.fold_batchnorm(modules[conv], modules[bn])
    _replace(model, {bn for _, bn in pairs}, lambda name, m: fold.Identity())
    return pairs


def _spec(inputs, calibration):
    """The input spec (given, or a symbolic batch of the calibration samples' shape); a
    calibration array that does not match it is a ValueError."""
    if not isinstance(calibration, np.ndarray) or calibration.ndim < 1 or not len(calibration):
        raise ValueError(f"quantize: calibration must be a non-empty numpy array [N, ...] of "
                         f"input samples, got {type(calibration).__name__}"
                         f"{getattr(calibration, 'shape', '')}")
    if calibration.dtype.kind not in "fiu":
        raise ValueError(f"quantize: calibration must be float samples (or integer ones for a "
                         f"model taking token ids), got {calibration.dtype}")
    if inputs is None and calibration.dtype.kind == "f" and \
            calibration.dtype not in (np.float32, np.float64):  # the module's input dtype
        raise TypeError(f"quantize: calibration samples are {calibration.dtype}, and without "
                        f"inputs= they give the module's input dtype: pass them as float32 "
                        f"(calibration.astype('float32')), or give inputs=")
    bad = ~np.isfinite(calibration) if calibration.dtype.kind == "f" else np.zeros(1, bool)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"quantize: calibration holds {int(bad.sum())} NaN/inf value(s) (first "
                         f"at index {where}: {calibration[where]}); calibrate on finite data")
    if inputs is None:
        return TensorSpec(("batch", *calibration.shape[1:]), str(calibration.dtype))
    spec = TensorSpec.of(inputs, what="inputs")
    want = tuple(spec.shape)
    if len(want) != calibration.ndim or any(
            isinstance(d, (int, np.integer)) and calibration.shape[k] != d
            for k, d in enumerate(want) if k > 0):
        raise ValueError(f"quantize: calibration samples have shape {calibration.shape} but the "
                         f"model's input is {want} (the first axis is the batch)")
    return spec


@contextlib.contextmanager
def _takes(calibration):
    """The model's own shape check while tracing it, named as quantize's."""
    try:
        yield
    except (ValueError, ShapeError) as err:
        raise ValueError(f"quantize: the model does not take calibration samples of shape "
                         f"{calibration.shape}: {err}") from err


def _ranges(model, names, spec, calibration, method, percentile, target):
    """{layer: (lo, hi)} of each named layer's input over the calibration data."""
    tapped = _Calibrator(copy.deepcopy(model), set(names))
    batch = spec.shape[0]
    size = batch if isinstance(batch, (int, np.integer)) else CALIBRATION_BATCH
    run_spec = TensorSpec(("batch", *spec.shape[1:]), spec.dtype)
    with _takes(calibration):
        module = compile_inference(tapped, run_spec, target=target,
                                   methods={"calibrate": run_spec})
    order = tapped.names  # the forward's call order, as traced
    missing = sorted(set(names) - set(order))
    if missing:
        raise ValueError(f"quantize: layer(s) {missing} are not called by the forward: no input "
                         "to calibrate them on")
    seen = {n: [] for n in order}
    x = calibration.astype(spec.dtype, copy=False)
    for start in range(0, len(x), size):
        outs = module.calibrate(x[start:start + size])
        outs = outs if isinstance(outs, tuple) else (outs,)
        for n, v in zip(order, outs):
            v = np.asarray(v)
            seen[n].append(np.array([v.min(), v.max()]) if method == "minmax" else v.ravel())
    out = {}
    for n, parts in seen.items():
        v = np.concatenate(parts)
        if method == "minmax":
            out[n] = (v.min(), v.max())
        else:
            if v.size > PERCENTILE_SAMPLES:  # a fixed subsample: same data, same scales
                v = v[np.random.default_rng(0).choice(v.size, PERCENTILE_SAMPLES, replace=False)]
            out[n] = tuple(np.percentile(v, [100 - percentile, percentile]))
    return out


def host_target():
    """The target calibration runs on: this machine's CPU, whatever the module is built for."""
    return "arm" if host_arch() in ("aarch64", "arm64") else "x86"


def calibrate(model, calibration, method="minmax", percentile=99.99, inputs=None, target=None,
              activation_range=(0, 255)):
    """{layer name: description} (the format of ``qat_scales``) for every Linear / Conv2d of
    the float model, from its inputs over the calibration samples (run on `target`, this
    machine's CPU when None)."""
    target = host_target() if target is None else target
    if method not in METHODS:
        raise ValueError(f"quantize: method must be one of {METHODS}, got {method!r}")
    if method == "percentile" and (isinstance(percentile, (bool, np.bool_)) or not isinstance(
            percentile, (int, float, np.integer, np.floating))):
        raise TypeError(f"quantize: percentile must be a number in (50, 100], got "
                        f"{percentile!r}")
    if method == "percentile" and not 50 < percentile <= 100:
        raise ValueError(f"quantize: percentile must be in (50, 100], got {percentile!r}")
    spec = _spec(inputs, calibration)
    layers = int8.int8_layers(model)
    if not layers:
        raise ValueError("quantize: the model has no Linear or Conv2d layer to quantize")
    ranges = _ranges(model, [n for n, _ in layers], spec, calibration, method, percentile, target)
    qmin, qmax = activation_range
    out = {}
    for name, layer in layers:
        lo, hi = (np.array(v, np.float32) for v in ranges[name])
        r = {"qmin": qmin, "qmax": qmax}
        w = np.asarray(int8.float_weight(layer.weight), np.float32)
        out[name] = {
            "kind": "conv2d" if isinstance(layer, nn.Conv2d) else "linear",
            "weight_scale": np.asarray(quant.symmetric_scale(w, axis=0), np.float32),
            "weight_qmin": -128, "weight_qmax": 127,
            "input_scale": float(quant.affine_qparams(lo, hi, which="scale", **r)),
            "input_zero_point": int(quant.affine_qparams(lo, hi, which="zero_point", **r)),
            "input_qmin": qmin, "input_qmax": qmax,
        }
    return out


def _dot_product(target):
    """(pack, reduce_range) for `target`: pack(entry) says whether a layer's kernel can use
    the target's 8-bit dot product (schedule/int8.py), reduce_range whether activations must
    be 7-bit for it (AVX2's vpmaddubsw saturates on 8-bit ones; VNNI does not)."""
    # here, not at the top: the schedule package loads TVM, and `import tvmfront` must not
    from .schedule import NotApplicable
    from .schedule.int8 import dot_intrinsic

    t = resolve_target(target)

    def pack(entry):
        try:
            dot_intrinsic(t, int(entry["input_qmax"]))
        except NotApplicable:
            return False
        return True

    try:
        dot_intrinsic(t, 255)
        reduce = False
    except NotApplicable:
        reduce = pack({"input_qmax": 127})
    return pack, reduce


def quantize(model, calibration=None, method="minmax", percentile=99.99, inputs=None,
             target="x86", records=None, reduce_range=None, fold_bn=True):
    """An int8 inference module of `model`: Linear and Conv2d as int8 kernels (per-channel
    symmetric int8 weights, per-tensor uint8 activations, int32 accumulation, requantization
    in the kernel's epilogue), everything else float. Scales from `calibration` (float
    samples [N, ...]; method "minmax" or "percentile"), or, for a model prepared with
    ``prepare_qat`` and trained, from what it learned (calibration None).

    `reduce_range`: quantize activations to [0, 127] instead of [0, 255]; None: where the
    target's 8-bit dot product needs it (AVX2 without VNNI, as PyTorch's x86 backend does).
    Layers whose input range the target's dot product takes get their weights packed for it
    (schedule/int8.py tensorizes them); the others keep the widening kernels.

    `fold_bn`: fold each BatchNorm2d into the convolution whose output it alone reads
    (eval-mode statistics, nn/fold.py) first, so the pair runs as one int8 convolution.

    Returns the module, compiled as ``compile_inference`` (predict, export, tvf.load, tuning);
    ``module.quantization`` reports {"int8": [layer names], "float": [(name, kind)],
    "folded": [(conv, BatchNorm) names]}, and a layer with parameters but no int8 kernel is
    named in a warning.

        >>> module = tvf.quantize(model, calibration=x_train[:512], inputs=("batch", 1, 8, 8))
        >>> module.predict(x_test), module.quantization
    """
    model = copy.deepcopy(model).eval()
    pack, reduce = _dot_product(target)
    if reduce_range is not None:
        if not isinstance(reduce_range, (bool, np.bool_)):  # bool("no") is True
            raise TypeError(f"quantize: reduce_range must be True, False or None, got "
                            f"{reduce_range!r}")
        reduce = bool(reduce_range)
    if qat_layers(model):
        if calibration is not None:
            raise ValueError("quantize: the model was prepared for QAT: its scales come from "
                             "training; pass calibration=None")
        spec = inputs
        folded = fold_batchnorms(model, spec) if fold_bn and spec is not None else []
        scales = qat_scales(model)
    else:
        if calibration is None:
            raise ValueError("quantize: give calibration samples (or a model trained with "
                             "prepare_qat)")
        spec = _spec(inputs, calibration)
        with _takes(calibration):
            folded = fold_batchnorms(model, spec) if fold_bn else []
        # calibrated here: a module built for another CPU (VNNI, ARM) may not run on this one
        scales = calibrate(model, calibration, method, percentile, spec,
                           activation_range=(0, 127) if reduce else (0, 255))
    if spec is None:
        raise ValueError("quantize: give inputs= (the input spec) for a QAT model")
    stays = int8.float_layers(model)
    if stays:
        warnings.warn("quantize: no int8 kernel for " + ", ".join(
            f"'{n}' ({k})" for n, k in stays) + "; these layers stay float", stacklevel=2)
    converted = int8.convert(model, scales, pack=pack)
    try:
        module = compile_inference(converted, spec, target=target, records=records)
    except TypeError as err:
        if inputs is not None or calibration is None or calibration.dtype.kind == "f":
            raise
        raise TypeError(f"quantize: without inputs=, the module takes what the calibration "
                        f"samples are, {calibration.dtype}, and an int8 layer of the model "
                        f"reads that input ({err}); pass float32 samples, or give inputs= "
                        f"(integer samples are for a model that takes token ids)") from err
    module.quantization = {"int8": sorted(scales), "float": stays, "scales": scales,
                           "folded": folded}
    # in the exported bundle too: what a deployed int8 module still runs in float
    # (what was folded is not: the manifest's schema, runtime/manifest.py, takes these two)
    module.manifest["quantization"] = {"int8": sorted(scales),
                                       "float": [[n, k] for n, k in stays]}
    return module
