"""Compiled modules: run a built training step or forward from Python, export, load.

This layer needs only numpy, safetensors and the TVM runtime: a bundle loads without the
model's Python class or the rest of tvmfront's frontend.
"""

import math
import os
from collections import OrderedDict

import numpy as np

from .._tvm import TVM_VERSION, device_for, load_module, to_device, virtual_machine
from ..errors import BundleError, ShapeError
from . import bundle

LIBRARY = "module.so"
PARAMS = "params.safetensors"
OPTIMIZER = "optimizer.safetensors"


def _check(name, array, spec, batch_free=False):
    """Raise ShapeError naming `name` unless `array` matches spec {'shape', 'dtype'}."""
    if not isinstance(array, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy array, got {type(array).__name__}")
    shape, dtype = list(spec["shape"]), spec["dtype"]
    got = list(array.shape)
    ok = (got[1:] == shape[1:] and len(got) == len(shape)) if batch_free else got == shape
    if not ok or str(array.dtype) != dtype:
        want = ["N"] + shape[1:] if batch_free else shape
        raise ShapeError(f"{name}: expected shape {tuple(want)} dtype {dtype}, "
                         f"got shape {tuple(got)} dtype {array.dtype}")


class _Compiled:
    """What training and inference modules share: parameters, predict, export."""

    kind = None

    def __init__(self, library, manifest, params, library_bytes=None, executable=None):
        self.manifest = manifest
        self.device = device_for(manifest["target_kind"])
        self._vm = virtual_machine(library, self.device)
        self._executable, self._library_bytes = executable, library_bytes
        self.param_names = [p["name"] for p in manifest["parameters"]]
        self._params = [to_device(np.asarray(params[n]), self.device) for n in self.param_names]

    # ---- parameters ------------------------------------------------------------------------
    def state_dict(self):
        """{parameter name: numpy array}, a copy."""
        return OrderedDict((n, p.numpy()) for n, p in zip(self.param_names, self._params))

    def load_state_dict(self, state):
        specs = {p["name"]: p for p in self.manifest["parameters"]}
        if set(state) != set(specs):
            raise KeyError(f"load_state_dict: missing {sorted(set(specs) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(specs))}")
        for n in state:
            _check(f"parameter '{n}'", np.asarray(state[n]), specs[n])
        self._params = [to_device(np.asarray(state[n]), self.device) for n in self.param_names]

    # ---- forward ---------------------------------------------------------------------------
    def predict(self, x):
        """Forward on any number of samples: batched to the compiled batch size (the last
        batch zero-padded) and concatenated."""
        spec = self.manifest["inputs"]
        _check("x", x, spec, batch_free=True)
        b = spec["shape"][0]
        outs = []
        for start in range(0, len(x), b):
            chunk = x[start:start + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(self._vm["predict"](to_device(chunk, self.device), *self._params)
                        .numpy()[:n])
        if not outs:
            return np.zeros((0, *self.manifest["outputs"]["shape"][1:]),
                            self.manifest["outputs"]["dtype"])
        return np.concatenate(outs)

    # ---- export ----------------------------------------------------------------------------
    def _library_writer(self):
        if self._library_bytes is not None:
            data = self._library_bytes
            return lambda path: open(path, "wb").write(data)
        return lambda path: self._executable.export_library(path)

    def _extra_files(self):
        return {}

    def _manifest_now(self):
        return dict(self.manifest)

    def export(self, path):
        """Write the bundle directory at `path` (atomically); returns the path."""
        files = {LIBRARY: self._library_writer(),
                 PARAMS: bundle.tensors_to_bytes(self.state_dict()), **self._extra_files()}
        return bundle.write_bundle(path, self._manifest_now(), files)

    def __repr__(self):
        return (f"<tvmfront {self.kind} module: target {self.manifest['target_kind']}, "
                f"{len(self.param_names)} parameters>")


class InferenceModule(_Compiled):
    """Callable forward: ``module(x) -> np.ndarray`` at the compiled input shape."""

    kind = "inference"

    def __call__(self, x):
        _check("x", x, self.manifest["inputs"])
        return self._vm["predict"](to_device(x, self.device), *self._params).numpy()


class TrainingModule(_Compiled):
    """A compiled train step with its parameters, optimizer state and step count.

    ``step(x, y)`` is one VM call: batch, learning rate, step number, parameters and
    optimizer state in; loss, new parameters and new state out.
    """

    kind = "training"

    def __init__(self, library, manifest, params, opt_state, library_bytes=None, executable=None):
        super().__init__(library, manifest, params, library_bytes, executable)
        self.state_names = [s["name"] for s in manifest["optimizer"]["state"]]
        self._state = [to_device(np.asarray(opt_state[n]), self.device) for n in self.state_names]
        self.step_count = int(manifest["step"])
        self.lr = float(manifest["optimizer"]["lr"])
        self._scalar = manifest["scalar_dtype"]

    @property
    def batch_size(self):
        return self.manifest["inputs"]["shape"][0]

    def _check_batch(self, x, y):
        _check("x", x, self.manifest["inputs"])
        _check("y", y, self.manifest["labels"])
        classes = self.manifest.get("num_classes")
        if classes is not None and y.size and (y.min() < 0 or y.max() >= classes):
            raise ShapeError(f"y: labels must lie in [0, {classes}), got values in "
                             f"[{y.min()}, {y.max()}]")

    def _scalar_in(self, value):
        return to_device(np.asarray(value, dtype=self._scalar), self.device)

    def step(self, x, y, lr=None):
        """One optimizer step on batch (x, y); returns the loss before the update."""
        self._check_batch(x, y)
        lr = self.lr if lr is None else float(lr)
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be finite and >= 0, got {lr}")
        out = self._vm["train_step"](to_device(x, self.device), to_device(y, self.device),
                                     self._scalar_in(lr), self._scalar_in(self.step_count + 1),
                                     *self._params, *self._state)
        p = len(self._params)
        self._params = [out[1 + i] for i in range(p)]
        self._state = [out[1 + p + i] for i in range(len(self._state))]
        self.step_count += 1
        return float(out[0].numpy())

    def loss(self, x, y):
        """The loss on batch (x, y) at the current parameters (no update)."""
        self._check_batch(x, y)
        return float(self._vm["loss"](to_device(x, self.device), to_device(y, self.device),
                                      *self._params).numpy())

    def loss_and_grads(self, x, y):
        """(loss, {parameter name: gradient}) on batch (x, y), no update."""
        self._check_batch(x, y)
        out = self._vm["loss_adjoint"](to_device(x, self.device), to_device(y, self.device),
                                       *self._params)
        grads = out[1]
        return float(out[0].numpy()), OrderedDict(
            (n, grads[i].numpy()) for i, n in enumerate(self.param_names))

    def optimizer_state(self):
        return OrderedDict((n, s.numpy()) for n, s in zip(self.state_names, self._state))

    def _extra_files(self):
        return {OPTIMIZER: bundle.tensors_to_bytes(self.optimizer_state())}

    def _manifest_now(self):
        manifest = dict(self.manifest, step=self.step_count)
        manifest["optimizer"] = dict(manifest["optimizer"], lr=self.lr)
        return manifest


def load(path):
    """Load an exported bundle: a TrainingModule or an InferenceModule."""
    path = os.fspath(path)
    manifest = bundle.read_bundle(path)
    if manifest.get("tvm_version") != TVM_VERSION:
        raise BundleError(f"{path}: built with TVM {manifest.get('tvm_version')}, this is TVM "
                          f"{TVM_VERSION}; rebuild the bundle")
    kind = manifest.get("kind")
    if kind not in ("training", "inference"):
        raise BundleError(f"{path}: unknown module kind {kind!r}")
    if not os.path.exists(os.path.join(path, LIBRARY)):
        raise BundleError(f"{path}: missing file {LIBRARY}")
    lib_path = os.path.join(path, LIBRARY)
    with open(lib_path, "rb") as f:
        library_bytes = f.read()
    library = load_module(lib_path)
    params = bundle.read_tensors(path, PARAMS, [(p["name"], p["shape"], p["dtype"])
                                                for p in manifest["parameters"]])
    if kind == "inference":
        return InferenceModule(library, manifest, params, library_bytes=library_bytes)
    state = bundle.read_tensors(path, OPTIMIZER, [(s["name"], s["shape"], s["dtype"])
                                                  for s in manifest["optimizer"]["state"]])
    return TrainingModule(library, manifest, params, state, library_bytes=library_bytes)
