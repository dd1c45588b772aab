"""Compiled modules: run a built training step or forward from Python, export, load.

This layer needs only numpy, safetensors and the TVM runtime: a bundle loads without the
model's Python class or the rest of tvmfront's frontend.
"""

import math
import os
import shutil
from collections import OrderedDict

import numpy as np

from .._tvm import (TVM_VERSION, cross_compiler_name, device_available, device_for,
                   export_library, host_arch, load_module, normalize_arch, target_arch,
                   to_device, to_numpy, virtual_machine)
from ..errors import BundleError, ShapeError, TargetError
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


def module_arch(manifest):
    """CPU architecture of a module's library (manifest 'target_arch'; older manifests: the
    target's mtriple, else this machine)."""
    arch = manifest.get("target_arch")
    return normalize_arch(arch) if arch else target_arch(manifest.get("target") or {})


def why_not_runnable_here(manifest):
    """None when this machine can run the module described by `manifest`, else the reason."""
    arch, host = module_arch(manifest), host_arch()
    kind = manifest.get("target_kind", "llvm")
    key = manifest.get("target_key", kind)
    if arch != host:
        return (f"this module is compiled for {arch} (target {key}) and this machine is {host}: "
                f"export it and load the bundle with tvmfront.load on an {arch} device "
                f"(its runtime needs only numpy, safetensors and the {arch} TVM wheel)")
    if not device_available(kind):
        where = ("a machine with an NVIDIA GPU, its driver and TVM's CUDA runtime"
                 if kind == "cuda" else f"a machine with a {kind} device")
        return (f"this module is compiled for {kind} (target {key}) and this machine has no "
                f"usable {kind} device: export it and load the bundle on {where}")
    return None


def _host_copy(array):
    """numpy copy of a TVM runtime tensor or an array-like."""
    return to_numpy(array) if hasattr(array, "numpy") else np.array(array)


class _Compiled:
    """What training and inference modules share: parameters, predict, export."""

    kind = None

    def __init__(self, library, manifest, params, library_bytes=None, executable=None):
        self.manifest = manifest
        self.device = device_for(manifest["target_kind"])
        # A module built for another machine (cross-compiled for aarch64, or CUDA without a
        # GPU here) still keeps its parameters and exports; running it raises TargetError.
        self.not_runnable_reason = why_not_runnable_here(manifest)
        self._vm_ = None if self.not_runnable_reason else virtual_machine(library, self.device)
        self._executable, self._library_bytes = executable, library_bytes
        self.param_names = [p["name"] for p in manifest["parameters"]]
        self._params = [self._to_device(params[n]) for n in self.param_names]

    @property
    def runnable(self):
        """Whether this machine can run the module (same CPU architecture, device present)."""
        return self.not_runnable_reason is None

    @property
    def _vm(self):
        if self._vm_ is None:
            raise TargetError(f"cannot run this {self.kind} module here: "
                              f"{self.not_runnable_reason}")
        return self._vm_

    def _to_device(self, array):
        # Not runnable here: tensors stay host numpy arrays (no device to put them on).
        array = np.asarray(array)
        return np.array(array) if self._vm_ is None else to_device(array, self.device)

    def _replace_library(self, library, library_bytes=None, executable=None):
        """Run a rebuild of the same program from now on (tvf.tune's tuned build); the
        parameters, optimizer state and step count stay."""
        if self.not_runnable_reason is None:
            self._vm_ = virtual_machine(library, self.device)
        self._executable, self._library_bytes = executable, library_bytes

    # ---- parameters ------------------------------------------------------------------------
    def state_dict(self):
        """{parameter name: numpy array}, a copy."""
        return OrderedDict((n, _host_copy(p)) for n, p in zip(self.param_names, self._params))

    def load_state_dict(self, state):
        specs = {p["name"]: p for p in self.manifest["parameters"]}
        if set(state) != set(specs):
            raise KeyError(f"load_state_dict: missing {sorted(set(specs) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(specs))}")
        for n in state:
            _check(f"parameter '{n}'", np.asarray(state[n]), specs[n])
        self._params = [self._to_device(state[n]) for n in self.param_names]

    # ---- forward ---------------------------------------------------------------------------
    def predict(self, x):
        """Forward on any number of samples: batched to the compiled batch size (the last
        batch zero-padded) and concatenated."""
        vm = self._vm
        spec = self.manifest["inputs"]
        _check("x", x, spec, batch_free=True)
        b = spec["shape"][0]
        outs = []
        for start in range(0, len(x), b):
            chunk = x[start:start + b]
            n = len(chunk)
            if n < b:
                chunk = np.concatenate([chunk, np.zeros((b - n, *chunk.shape[1:]), chunk.dtype)])
            outs.append(to_numpy(vm["predict"](to_device(chunk, self.device), *self._params))[:n])
        if not outs:
            return np.zeros((0, *self.manifest["outputs"]["shape"][1:]),
                            self.manifest["outputs"]["dtype"])
        return np.concatenate(outs)

    # ---- export ----------------------------------------------------------------------------
    def _library_writer(self):
        """A function writing the compiled library to a path: the loaded bundle's bytes as
        they were, or the executable linked for its CPU (with the cross compiler for a
        cross-compiled module, e.g. aarch64-linux-gnu-g++ for aarch64)."""
        if self._library_bytes is not None:
            data = self._library_bytes

            def write_bytes(path):
                with open(path, "wb") as f:
                    f.write(data)

            return write_bytes
        arch = module_arch(self.manifest)
        cxx = None if arch == host_arch() else cross_compiler_name(arch)
        if arch != host_arch():
            if cxx is None:
                raise TargetError(f"no cross compiler known for {arch}; set "
                                  f"TVMFRONT_CXX_{arch.upper()} to a C++ compiler for {arch}")
            if shutil.which(cxx) is None:
                raise TargetError(
                    f"exporting a module compiled for {arch} needs the cross compiler {cxx}, "
                    f"which is not on PATH (Debian/Ubuntu: apt-get install "
                    f"g++-{arch.replace('_', '-')}-linux-gnu; bash scripts/setup_arm.sh does it "
                    f"for aarch64), or set TVMFRONT_CXX_{arch.upper()}")
        return lambda path: export_library(self._executable, path, cxx)

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
        where = "" if self.runnable else ", not runnable on this machine"
        return (f"<tvmfront {self.kind} module: target "
                f"{self.manifest.get('target_key', self.manifest['target_kind'])}, "
                f"{len(self.param_names)} parameters{where}>")


class InferenceModule(_Compiled):
    """Callable forward: ``module(x) -> np.ndarray`` at the compiled input shape."""

    kind = "inference"

    def __call__(self, x):
        vm = self._vm
        _check("x", x, self.manifest["inputs"])
        return to_numpy(vm["predict"](to_device(x, self.device), *self._params))


class TrainingModule(_Compiled):
    """A compiled train step with its parameters, optimizer state and step count.

    ``step(x, y)`` is one VM call: batch, learning rate, step number, parameters and
    optimizer state in; loss, new parameters and new state out.
    """

    kind = "training"

    def __init__(self, library, manifest, params, opt_state, library_bytes=None, executable=None):
        super().__init__(library, manifest, params, library_bytes, executable)
        self.state_names = [s["name"] for s in manifest["optimizer"]["state"]]
        self._state = [self._to_device(opt_state[n]) for n in self.state_names]
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
        vm = self._vm
        self._check_batch(x, y)
        lr = self.lr if lr is None else float(lr)
        if not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"learning rate must be finite and >= 0, got {lr}")
        out = vm["train_step"](to_device(x, self.device), to_device(y, self.device),
                               self._scalar_in(lr), self._scalar_in(self.step_count + 1),
                               *self._params, *self._state)
        p = len(self._params)
        self._params = [out[1 + i] for i in range(p)]
        self._state = [out[1 + p + i] for i in range(len(self._state))]
        self.step_count += 1
        return float(to_numpy(out[0]))

    def loss(self, x, y):
        """The loss on batch (x, y) at the current parameters (no update)."""
        vm = self._vm
        self._check_batch(x, y)
        return float(to_numpy(vm["loss"](to_device(x, self.device), to_device(y, self.device),
                                          *self._params)))

    def loss_and_grads(self, x, y):
        """(loss, {parameter name: gradient}) on batch (x, y), no update."""
        vm = self._vm
        self._check_batch(x, y)
        out = vm["loss_adjoint"](to_device(x, self.device), to_device(y, self.device),
                                 *self._params)
        grads = out[1]
        return float(to_numpy(out[0])), OrderedDict(
            (n, to_numpy(grads[i])) for i, n in enumerate(self.param_names))

    def optimizer_state(self):
        return OrderedDict((n, _host_copy(s)) for n, s in zip(self.state_names, self._state))

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
    reason = why_not_runnable_here(manifest)  # before dlopen: a foreign .so cannot load here
    if reason:
        raise TargetError(f"{path}: cannot load this bundle here: {reason}")
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
