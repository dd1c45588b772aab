"""Compiled modules: run a built training step or forward from Python, export, load.

This layer needs only numpy, safetensors and the TVM runtime: a bundle loads without the
model's Python class or the rest of tvmfront's frontend.
"""

import functools
import shutil
import threading
from collections import OrderedDict

import numpy as np

from .._tvm import (TVM_VERSION, cross_compiler_name, device_available, device_for,
                   export_library, host_arch, normalize_arch, target_arch, to_device, to_numpy,
                   tuple_items, virtual_machine)
from ..errors import BundleError, ShapeError, TargetError
from . import bundle, cpu
from .bounds import CallBounds, array_sizes
from .held import HeldTensors, fits
from .manifest import LIBRARY, OPTIMIZER, PARAMS
from .scalars import largest, step_scalar

# The VM functions of an inference library whose dense weights are packed once
# (tvmfront.prepack, whose TRANSFORM and PACKED they are: the runtime imports no frontend
# module): transform_params(*params) -> the parameters predict_packed takes.
PARAM_TRANSFORM, PACKED_FORWARD = "transform_params", "predict_packed"


@functools.cache
def _numpy_dtype(name):
    """np.dtype(name), or None for a name numpy does not know (bfloat16 without ml_dtypes)."""
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _same_dtype(array, name):
    """Whether `array` has dtype `name`: a dtype comparison (str(dtype) costs ~2 us on
    numpy 2); byte-swapped arrays differ, as their str does."""
    want = _numpy_dtype(name)
    return array.dtype == want if want is not None else str(array.dtype) == name


def _check(name, array, spec, batch_free=False, sizes=None):
    """Raise ShapeError naming `name` unless `array` matches spec {'shape', 'dtype'}. A
    symbolic dimension (a name such as "batch") takes any size, the same for every tensor of
    one call: `sizes` ({name: (size, first tensor's name)}) records and checks them.
    batch_free: axis 0 may have any size (predict splits the samples into batches)."""
    if not isinstance(array, np.ndarray):
        raise ShapeError(f"{name}: expected a numpy array, got {type(array).__name__}")
    _refuse_masked(name, array)
    _match(name, list(array.shape), _same_dtype(array, spec["dtype"]), array.dtype, spec,
           {} if sizes is None else sizes, batch_free)


def _refuse_masked(name, array):
    """A masked array's mask would be dropped (its data read as they are, masked or not)."""
    if isinstance(array, np.ma.MaskedArray):
        raise TypeError(f"{name}: a masked array; its mask would be ignored. Pass "
                        f"array.filled(value) (or np.ma.getdata(array) for the data as they "
                        f"are)")


def _match(name, got, dtype_ok, got_dtype, spec, sizes, batch_free=False):
    """The check of _check on a shape `got` (a list of ints) and whether its dtype matches,
    for numpy arrays and device tensors alike."""
    shape, dtype = list(spec["shape"]), spec["dtype"]
    ok = len(got) == len(shape) and dtype_ok
    conflict = None
    for axis, (want, have) in enumerate(zip(shape, got) if ok else ()):
        if batch_free and axis == 0:
            continue
        if isinstance(want, str):
            seen = sizes.setdefault(want, (have, name))
            if seen[0] != have:
                conflict = (f"{name}: dimension '{want}' (axis {axis}) is {have}, but it is "
                            f"{seen[0]} in {seen[1]}: every '{want}' of one call is one size")
                break
        elif want != have:
            ok = False
    if conflict:
        raise ShapeError(conflict)
    if not ok:
        want = ["N"] + shape[1:] if batch_free else shape
        raise ShapeError(f"{name}: expected shape {tuple(want)} dtype {dtype}, "
                         f"got shape {tuple(got)} dtype {got_dtype}")


def _is_tensor(value):
    """Whether `value` is a TVM runtime tensor (what call_tensors returns)."""
    return hasattr(value, "device") and hasattr(value, "numpy") and \
        not isinstance(value, np.ndarray)


def _check_tensor(name, tensor, spec, device, sizes):
    """_check for a TVM runtime tensor: its shape and dtype, and that it lives on `device`."""
    if tensor.device != device:
        raise ShapeError(f"{name}: the tensor is on {tensor.device}, the module runs on "
                         f"{device}")
    _match(name, [int(d) for d in tensor.shape], str(tensor.dtype) == spec["dtype"],
           tensor.dtype, spec, sizes)


def _as_integer(name, array, spec, kind=""):
    """`array` cast to the spec's integer dtype when it is of another integer dtype and its
    values fit (numpy's default int64 token ids into an int32 input); else unchanged, for
    _check to report."""
    want = np.dtype(spec["dtype"])
    if not isinstance(array, np.ndarray) or want.kind not in "iu" or array.dtype == want:
        return array
    if array.dtype.kind not in "iu":
        raise ShapeError(f"{name}: expected integers (dtype {want}; any integer dtype whose "
                         f"values fit), got {array.dtype}")
    info = np.iinfo(want)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise ShapeError(f"{name}: {kind}values in [{array.min()}, {array.max()}] do not fit "
                         f"the compiled {kind}dtype {want}")
    return array.astype(want)


def _numpy_views(dtype):
    """Whether numpy can view a device tensor of `dtype` (np.from_dlpack), as the fast paths'
    held tensors need: not bfloat16 ("Unsupported dtype in DLTensor" on every call of a
    module compiled for bfloat16 inputs); the general path converts those."""
    return np.dtype(dtype).kind in "biuf"


def _labels_in_range(y, classes):
    """Whether every label of the integer array `y` lies in [0, classes): one comparison of
    the labels read as unsigned (a negative one reads huge), ~1 us where min and max take
    ~6 us. False sends the caller to its exact check (ignore_index, the message)."""
    if y.dtype.kind == "i":
        y = y.view(np.dtype(f"u{y.dtype.itemsize}"))
    return not (y >= classes).any()


def input_specs(manifest):
    """[(name, {shape, dtype})] of the forward's inputs (a manifest of one input records
    {shape, dtype} alone: it is called 'x')."""
    inputs = manifest["inputs"]
    if isinstance(inputs, dict):
        return [("x", inputs)]
    return [(s["name"], s) for s in inputs]


def _named_arrays(caller, what, value, specs, label):
    """The arrays of `value` in the order of `specs` [(name, spec)]: one array for one spec;
    a tuple/list (in order) or a dict {name: array} for several. `label(name)` names a
    tensor in errors."""
    names = [n for n, _ in specs]
    if isinstance(value, dict):
        if set(value) != set(names):
            raise ShapeError(f"{caller}: {what} by name must be exactly {names}, got "
                             f"{sorted(value)}")
        arrays = [value[n] for n in names]
    elif len(specs) == 1:
        if isinstance(value, (tuple, list)) and len(value) == 1:
            value = value[0]
        arrays = [value]
    elif isinstance(value, (tuple, list)):
        if len(value) != len(specs):
            raise ShapeError(f"{caller}: this module takes {len(specs)} {what} {names}, got "
                             f"{len(value)}")
        arrays = list(value)
    else:
        raise ShapeError(f"{caller}: this module takes {len(specs)} {what} {names}: pass a "
                         f"tuple of arrays in that order or a dict by name, got "
                         f"{type(value).__name__}")
    return [_as_integer(label(name), a, spec) for (name, spec), a in zip(specs, arrays)]


def _checked_arrays(caller, what, value, specs, label, sizes, batch_free=False):
    """_named_arrays, each array then checked against its spec (_check) with the call's
    symbolic sizes `sizes`. batch_free: a bool, or one per spec."""
    arrays = _named_arrays(caller, what, value, specs, label)
    free = batch_free if isinstance(batch_free, list) else [batch_free] * len(specs)
    for (name, spec), a, f in zip(specs, arrays, free):
        _check(label(name), a, spec, batch_free=f, sizes=sizes)
    return arrays


def module_arch(manifest):
    """CPU architecture of a module's library (manifest 'target_arch'; older manifests: the
    target's mtriple, else this machine)."""
    arch = manifest.get("target_arch")
    return normalize_arch(arch) if arch else target_arch(manifest.get("target") or {})


def cpu_features(manifest):
    """The CPU features (LLVM names) the module's code needs: those its manifest lists and
    those its target implies (a manifest from before features were recorded lists none)."""
    return sorted(set(manifest.get("cpu_features", ())) |
                  set(cpu.required_features(manifest.get("target"))))


def why_not_runnable_here(manifest):
    """None when this machine can run the module described by `manifest`, else the reason:
    another CPU architecture, CPU features this CPU lacks (code that would die of SIGILL at
    its first call), or no device of the target's kind."""
    arch, host = module_arch(manifest), host_arch()
    kind = manifest.get("target_kind", "llvm")
    key = manifest.get("target_key", kind)
    if arch != host:
        return (f"this module is compiled for {arch} (target {key}) and this machine is {host}: "
                f"export it and load the bundle with tvmfront.load on an {arch} device "
                f"(its runtime needs only numpy, safetensors and the {arch} TVM wheel)")
    missing = cpu.missing_features(cpu_features(manifest))
    if missing:
        hint = ("target='x86' (this CPU) or a class this CPU has, e.g. target='x86:avx2'"
                if arch == "x86_64" else "a target this CPU supports")
        return (f"this module's code needs CPU features {', '.join(missing)}, which this CPU "
                f"lacks (target {key}): its first call would die of an illegal instruction; "
                f"rebuild it for {hint}")
    if not device_available(kind):
        where = ("a machine with an NVIDIA GPU, its driver and TVM's CUDA runtime"
                 if kind == "cuda" else f"a machine with a {kind} device")
        return (f"this module is compiled for {kind} (target {key}) and this machine has no "
                f"usable {kind} device: export it and load the bundle on {where}")
    return None


def _host_view(value):
    """A numpy array as it is; a TVM tensor's values: a view of a CPU one (0.3 us), else a
    copy."""
    if type(value) is np.ndarray:
        return value
    if value.device.dlpack_device_type() == 1:
        return np.from_dlpack(value)
    return to_numpy(value)


def _dlpack_view(value):
    """A host tensor that is no numpy array (a TVM or torch CPU tensor) as a numpy view of it
    (np.asarray made a TVM tensor a 0-d object array); anything else as it is."""
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return value
    try:
        return np.from_dlpack(value)
    except (BufferError, RuntimeError, TypeError, ValueError):  # on a GPU: named by _check
        return value


def _host_copy(array):
    """numpy copy of a TVM runtime tensor or an array-like."""
    return to_numpy(array) if hasattr(array, "numpy") else np.array(array)


def _serialized(method):
    """`method` run holding its module's lock. A module's Relax VM, the input tensors its fast
    paths refill, and its parameter and state lists are one state: calls on one module from
    several Python threads had raced on it (a TVM InternalError 'reg < frame->register_file
    .size()', a segfault). One call at a time, as a torch module's forward is safe to call
    from threads; modules of their own run in parallel."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)
    return run


class _Compiled:
    """What training and inference modules share: parameters, predict, export."""

    kind = None
    # How this module was built, set by compile_* and tvf.tune (None for a loaded bundle):
    # {"key", "cache": "miss"/"hit"/"off", "tuned_kernels", "fallback_kernels", ...}
    build_info = None

    def __init__(self, library, manifest, params, library_bytes=None, executable=None):
        # the manifest as the bundle will record it: with the CPU features the code needs
        manifest = dict(manifest, cpu_features=cpu_features(manifest))
        self.manifest = manifest
        self.device = device_for(manifest["target_kind"])
        # A module built for another machine (cross-compiled for aarch64, or CUDA without a
        # GPU here) still keeps its parameters and exports; running it raises TargetError.
        self.not_runnable_reason = why_not_runnable_here(manifest)
        self._vm_ = None if self.not_runnable_reason else virtual_machine(library, self.device)
        self._lock = threading.RLock()  # _serialized: one call at a time (RLock: they nest)
        self._functions = {}  # VM function name -> its PackedFunc (a lookup costs ~3 us)
        self._tensor_plans = {}  # method -> (its spec, per input: label, spec, shape, dtype)
        self._executable, self._library_bytes = executable, library_bytes
        self.param_names = [p["name"] for p in manifest["parameters"]]
        self._params = [self._to_device(params[n]) for n in self.param_names]
        # buffers (BatchNorm's running statistics) travel with the parameters: same file,
        # same state_dict, and the train step returns their new values
        self.buffer_names = [b["name"] for b in manifest.get("buffers", ())]
        self._buffers = [self._to_device(params[n]) for n in self.buffer_names]
        self._inputs = input_specs(manifest)
        # what predict's and the step's calls must satisfy (runtime/bounds.py), or None
        self._predict_bounds = CallBounds.of("predict", manifest, "predict")
        self._step_bounds = CallBounds.of("step", manifest, "step")
        self._method_bounds = {}  # method -> its CallBounds or None, looked up once
        self._fast = self._fast_input_spec()
        self._held_inputs = HeldTensors()  # the fast path's input tensors, per input shape
        # (the parameter list they were made from, predict_packed, the transformed parameters);
        # False: the library has no predict_packed; None: not looked up yet
        self._packed = None

    def _fast_input_spec(self):
        """(shape, dtype) of the one input when the module runs on this CPU: a call with a
        numpy array of that dtype and a shape the spec allows (a symbolic dimension any
        positive size) needs no other check (_fast_input), so it skips the general ones.
        None otherwise."""
        if self._vm_ is None or len(self._inputs) != 1 or self.device.dlpack_device_type() != 1:
            return None
        spec = self._inputs[0][1]
        if not _numpy_views(spec["dtype"]):
            return None
        return tuple(spec["shape"]), np.dtype(spec["dtype"])

    def _fast_input(self, x):
        """The device tensor holding `x` when `x` is a numpy array of the compiled dtype and a
        shape the compiled one allows (any strides), else None (the general path then checks
        and converts, and raises its errors). The tensor is this thread's, made once per
        shape and refilled in place: ~0.5 us against ~5-15 us for a new one. Safe because
        every caller copies the outputs to numpy before the next call could refill it."""
        fast = self._fast
        if fast is None or type(x) is not np.ndarray or x.dtype != fast[1]:
            return None
        bounds = self._predict_bounds
        if bounds is not None and not bounds.ids_fit(self._inputs[0][0], x):
            return None
        held = self._held_inputs.get(x.shape)
        if held is None:
            sizes = {}
            if not fits(x.shape, fast[0], sizes) or \
                    bounds is not None and not bounds.sizes_fit(sizes):
                return None
            return self._held_inputs.make(x.shape, [x], self.device)[0][0]
        held[1][0][...] = x
        return held[0][0]

    def _one_batch(self, x, batch_size):
        """Whether predict(x, batch_size) runs `x` as one compiled batch: always at a fixed
        batch (the fast path takes only exactly it); at any batch size, when x has at most
        batch_size samples or the samples may not be split (predict then never splits)."""
        first = self._inputs[0][1]["shape"][0] if self._inputs[0][1]["shape"] else None
        if isinstance(first, int) or type(x) is not np.ndarray or not x.ndim:
            return True
        return (type(batch_size) is int and x.shape[0] <= batch_size) or \
            self._unsplittable() is not None

    def _unsplittable(self):
        """Why predict may not split samples into batches (or pad a fixed batch's last),
        or None: compile's own finding ("predict_one_batch": an output whose first axis does
        not follow the batch, a BatchNorm normalising with the batch's statistics), else, for
        bundles from before it, an output whose first axis is not the batch's size."""
        why = self.manifest.get("predict_one_batch")
        first = self._inputs[0][1]["shape"][0] if self._inputs[0][1]["shape"] else None
        out_shape = self.manifest["outputs"]["shape"]
        if why is None and (not out_shape or out_shape[0] != first):
            why = (f"its output has shape {tuple(out_shape)} for a batch of {first}: its "
                   f"first axis is not the batch")
        return why

    def _function(self, name):
        """The VM's function `name` (looked up once)."""
        fn = self._functions.get(name)
        if fn is None:
            fn = self._functions[name] = self._vm[name]
        return fn

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

    @_serialized
    def _replace_library(self, library, library_bytes=None, executable=None):
        """Run a rebuild of the same program from now on (tvf.tune's tuned build); the
        parameters, optimizer state and step count stay."""
        if self.not_runnable_reason is None:
            self._vm_ = virtual_machine(library, self.device)
            self._functions = {}
            self._packed = None
        self._executable, self._library_bytes = executable, library_bytes

    # ---- parameters ------------------------------------------------------------------------
    @_serialized
    def state_dict(self):
        """{name: numpy array}, a copy: every parameter, then every buffer."""
        return OrderedDict((n, _host_copy(p)) for n, p in
                           zip(self.param_names + self.buffer_names, self._params + self._buffers))

    @_serialized
    def load_state_dict(self, state):
        """Replace every parameter and buffer ({name: array}, shapes and dtypes as compiled)."""
        if not hasattr(state, "keys"):
            raise TypeError(f"load_state_dict: expects a dict {{name: array}} (as state_dict() "
                            f"returns), got {type(state).__name__}")
        state = self._unaliased(state)
        params = self.manifest["parameters"]
        buffers = self.manifest.get("buffers", [])
        missing = [b["name"] for b in buffers if b["name"] not in state]
        if missing:
            raise KeyError(f"load_state_dict: missing buffers {missing} (running statistics "
                           f"and other non-trainable state are part of the state_dict)")
        tensors = self._checked_tensors("load_state_dict", "parameter", state, params + buffers)
        self._params, self._buffers = tensors[:len(params)], tensors[len(params):]

    def _unaliased(self, state):
        """`state` with a tied weight's other names (a PyTorch state_dict lists every one)
        under its first, the one the module keeps; given under several, they must agree."""
        aliases = self.manifest.get("aliases", {})
        if not any(name in state for name in aliases):
            return state
        state = dict(state)
        for name, first in aliases.items():
            if name not in state:
                continue
            value = state.pop(name)
            if first not in state:
                state[first] = value
            elif not np.array_equal(np.asarray(_dlpack_view(value)),
                                    np.asarray(_dlpack_view(state[first]))):
                raise ShapeError(f"load_state_dict: '{name}' is tied to '{first}' but the "
                                 f"two entries hold different values")
        return state

    def _checked_tensors(self, caller, what, state, specs):
        """Device copies of `state` in the order of `specs` ([{name, shape, dtype}]), after
        checking it has exactly those names, shapes and dtypes."""
        names = [s["name"] for s in specs]
        if set(state) != set(names):
            raise KeyError(f"{caller}: missing {sorted(set(names) - set(state))}, "
                           f"unexpected {sorted(set(state) - set(names))}")
        buffers = set(self.buffer_names)
        # TVM tensors (another module's state_dict on the device) as their values: np.asarray
        # made them 0-d object arrays, 'got shape () dtype object'
        state = {n: _dlpack_view(v) for n, v in state.items()}
        for spec in specs:
            kind = "buffer" if spec["name"] in buffers else what
            _refuse_masked(f"{kind} '{spec['name']}'", state[spec["name"]])
            _check(f"{kind} '{spec['name']}'", np.asarray(state[spec["name"]]), spec)
        return [self._to_device(state[n]) for n in names]

    def _input_label(self, name):
        return "x" if len(self._inputs) == 1 else f"input '{name}'"

    @staticmethod
    def _labelled(specs, arrays, label):
        """{name: (its label in errors, array)} for CallBounds.check_ids."""
        return {name: (label(name), a) for (name, _), a in zip(specs, arrays)}

    def _bounds_of(self, method, spec):
        """The CallBounds of compiled method `method` (its spec), or None; looked up once."""
        if method not in self._method_bounds:
            self._method_bounds[method] = CallBounds.of(method, spec)
        return self._method_bounds[method]

    def _inputs_in(self, caller, x, batch_free=False, sizes=None):
        """The input arrays as the compiled function takes them, checked, one per input.
        sizes: the symbolic dimensions' sizes seen so far in this call (see _check)."""
        if batch_free:
            batch_free = self._batched_inputs()
        arrays = _checked_arrays(caller, "inputs", x, self._inputs, self._input_label,
                                 {} if sizes is None else sizes, batch_free)
        counts = {n: len(a) for (n, _), a, f in zip(self._inputs, arrays, batch_free or ()) if f}
        if len(set(counts.values())) > 1:
            raise ShapeError(f"{caller}: the inputs hold different numbers of samples: {counts}")
        return arrays

    def _batched_inputs(self):
        """Per input, whether its first axis holds the samples predict splits: those whose
        first dimension is the first input's, at any batch size and at a fixed one alike. A
        mask [T, T] beside tokens [batch, T] is passed whole to every batch (split, it had
        failed in TVM's match_cast); at a fixed batch of 3, a matrix [4, 4] beside x [3, 4]
        too (every input was split there: 4 samples crashed in match_cast, 3 and 7 were
        refused). An input whose first dimension happens to equal the batch's is split."""
        first = [spec["shape"][0] if spec["shape"] else None for _, spec in self._inputs]
        return [f == first[0] for f in first]

    def _forward(self):
        """(the forward's VM function, its parameters): predict_packed on the parameters that
        transform_params made from the current ones (made once per parameter set: weights
        packed for the kernels, tvmfront.prepack) where the library has them, else predict
        on the parameters as they are (a training step's predict, a module built before)."""
        packed = self._packed
        if packed is False:
            return self._function("predict"), self._params
        if packed is not None and packed[0] is self._params:
            return packed[1], packed[2]
        try:
            transform = self._function(PARAM_TRANSFORM)
            forward = self._function(PACKED_FORWARD)
        except Exception:  # noqa: BLE001 - TVM's lookup error: a library without them
            self._packed = False  # looked up once: a failed lookup costs microseconds
            return self._function("predict"), self._params
        params = self._params
        self._packed = (params, forward, [*tuple_items(transform(*params))])
        return forward, self._packed[2]

    def _run_predict(self, arrays):
        bounds = self._predict_bounds
        if bounds is not None:  # per compiled batch: predict's last one may be smaller
            bounds.check(array_sizes(self._inputs, arrays, self._input_label),
                         self._labelled(self._inputs, arrays, self._input_label))
        forward, params = self._forward()
        return to_numpy(forward(*[to_device(a, self.device) for a in arrays], *params,
                                *self._buffers))

    def _predict_fast(self, x):
        """The forward on `x` through the fast path, or None when `x` needs the general one."""
        tensor = self._fast_input(x)
        if tensor is None:
            return None
        forward, params = self._forward()
        return to_numpy(forward(tensor, *params, *self._buffers))

    # ---- forward ---------------------------------------------------------------------------
    @property
    def batch_size(self):
        """The compiled batch size; None when the module takes any batch size (compiled with
        a symbolic first dimension, e.g. inputs=("batch", 8))."""
        b = self._inputs[0][1]["shape"][0] if self._inputs[0][1]["shape"] else None
        return b if isinstance(b, int) else None

    @_serialized
    def predict(self, x, batch_size=256):
        """Forward in eval mode on any number of samples. A module compiled for any batch size
        runs them `batch_size` at a time, the last batch as it is (never padded); one compiled
        for a fixed batch runs batches of that size, the last padded with copies of its last
        sample (their outputs dropped). Eval mode normalises each sample on its own
        (BatchNorm's running statistics), so a sample's prediction does not depend on the
        others in its batch. x: an array, or for a model of several
        inputs a tuple of arrays in forward's order (or a dict by argument name), all with
        the same number of samples. Splitting and padding are right only when the output's
        first axis follows the batch and samples are independent; otherwise (an output [4, B]
        or [B*T, V], a BatchNorm with track_running_stats=False, which normalises with the
        batch's statistics in eval mode too) predict runs the samples as one batch: exactly
        the compiled batch, or all of them at any batch size."""
        if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
                batch_size, (int, np.integer)) or batch_size <= 0:
            # checked at a fixed batch too, which does not use it: predict(x, 0) or
            # predict(x, mask) passed silently there
            raise ValueError(f"predict: batch_size must be a positive int, got "
                             f"{batch_size!r:.80}")
        # One compiled batch: the forward itself
        out = self._predict_fast(x) if self._one_batch(x, batch_size) else None
        if out is not None:
            return out
        self._vm  # not runnable here: TargetError before anything else
        arrays = self._inputs_in("predict", x, batch_free=True)
        first = self._inputs[0][1]["shape"][0]
        fixed = isinstance(first, int)
        b = first if fixed else int(batch_size)
        n_samples = len(arrays[0])
        out_shape = self.manifest["outputs"]["shape"]
        why = self._unsplittable()
        if why is not None:
            if not fixed or n_samples == b:
                return self._run_predict(arrays)
            raise ShapeError(
                f"predict: this model's samples cannot be split into batches or padded: {why}; "
                f"pass exactly {b} samples (got {n_samples}), or compile it for any batch "
                f"size (inputs=('batch', ...)), which predict runs as one batch")
        outs = []
        batched = self._batched_inputs()
        for start in range(0, n_samples, b):
            chunks = [a[start:start + b] if f else a for a, f in zip(arrays, batched)]
            n = len(chunks[0])
            if n < b and fixed:
                # padded with copies of the last sample, not zeros: zeros can lie outside the
                # model's domain (log(x * x) at 0 raised debug_nans' NonFiniteOpError on rows
                # nobody passed); their outputs are dropped either way
                chunks = [np.concatenate([c, np.repeat(c[-1:], b - n, axis=0)]) if f else c
                          for c, f in zip(chunks, batched)]
            outs.append(self._run_predict(chunks)[:n])
        if not outs:
            rest = [d if isinstance(d, int) else 0 for d in out_shape[1:]]
            return np.zeros((0, *rest), self.manifest["outputs"]["dtype"])
        return np.concatenate(outs)

    # ---- other methods (compile_inference(..., methods=)) ----------------------------------
    @_serialized
    def call(self, method, *inputs):
        """Run the compiled model method `method` (eval mode) on numpy arrays, one per
        argument in order (or one dict by name); returns its output array, or a tuple of
        arrays for a method that returns a tuple. ``module.decode(...)`` is the same as
        ``module.call("decode", ...)``."""
        spec = self._method_spec(method)
        specs = [(s["name"], s) for s in spec["inputs"]]
        value = inputs[0] if len(inputs) == 1 and (len(specs) == 1 or
                                                    isinstance(inputs[0], dict)) else inputs
        label = (lambda n: f"{method}: input '{n}'")
        sizes = {}
        arrays = _checked_arrays(method, "inputs", value, specs, label, sizes)
        bounds = self._bounds_of(method, spec)
        if bounds is not None:
            bounds.check(sizes, self._labelled(specs, arrays, lambda n: f"input '{n}'"))
        out = self._function(f"method_{method}")(*[to_device(a, self.device) for a in arrays],
                                                   *self._params, *self._buffers)
        outs = spec["outputs"]
        if not isinstance(outs, list):
            return to_numpy(out)
        return (to_numpy(out),) if len(outs) == 1 else tuple(to_numpy(o) for o in out)

    @_serialized
    def call_tensors(self, method, *inputs):
        """``call`` that keeps its outputs on the device: returns TVM runtime tensors (a tuple
        for a method that returns a tuple), and takes numpy arrays or such tensors, in order.
        A loop that feeds a method's outputs back into it (a decode step's key/value caches)
        skips two host copies of them per step; ``to_numpy`` reads a tensor. A tensor is
        checked by shape, dtype and device; an array as in ``call``."""
        plan = self._tensor_plans.get(method)
        if plan is None:
            spec = self._method_spec(method)
            plan = self._tensor_plans[method] = (spec, [
                (f"{method}: input '{s['name']}'", s, tuple(s["shape"]), s["dtype"])
                for s in spec["inputs"]])
        spec, inputs_plan = plan
        if len(inputs) != len(inputs_plan):
            raise ShapeError(f"{method}: this method takes {len(inputs_plan)} inputs "
                             f"{[s['name'] for _, s, _, _ in inputs_plan]}, got {len(inputs)}")
        sizes, args, host = {}, [], []
        for (label, s, shape, dtype), value in zip(inputs_plan, inputs):
            if type(value) is not np.ndarray and _is_tensor(value):
                # one tuple and one string comparison for a tensor of static shape (a decode
                # step passes two caches a step); the full check otherwise, or to say why not
                if value.shape != shape or value.dtype != dtype or value.device != self.device:
                    _check_tensor(label, value, s, self.device, sizes)
                args.append(value)
                host.append(value)
            else:
                array = _as_integer(label, value, s)
                _check(label, array, s, sizes=sizes)
                args.append(to_device(array, self.device))
                host.append(array)
        bounds = self._bounds_of(method, spec)
        if bounds is not None:  # ids held in a tensor are read back (token and pos: bytes)
            bounds.check(sizes, {s["name"]: (f"input '{s['name']}'", _host_view(v))
                                 for (_, s, _, _), v in zip(inputs_plan, host)
                                 if s["name"] in bounds.id_ranges})
        out = self._function(f"method_{method}")(*args, *self._params, *self._buffers)
        outs = spec["outputs"]
        if not isinstance(outs, list):
            return out
        return (out,) if len(outs) == 1 else tuple(tuple_items(out))

    def _method_spec(self, method):
        methods = self.manifest.get("methods", {})
        if method not in methods:
            raise AttributeError(f"this module has no compiled method {method!r}; it has "
                                 f"{sorted(methods) or 'none'} (compile_inference(..., "
                                 f"methods={{name: input specs}}))")
        return methods[method]

    def __getattr__(self, name):
        # only for names not found otherwise: the compiled methods, by name
        methods = self.__dict__.get("manifest", {}).get("methods", {})
        if name in methods:
            return lambda *inputs: self.call(name, *inputs)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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

    @_serialized
    def export(self, path, sign_key=None):
        """Write the bundle directory at `path` (atomically); returns the path.

        sign_key: an Ed25519 private key (a cryptography key, its 32-byte seed, PEM bytes or a
        PEM file path; tvmfront.runtime.signing.generate_key makes one) to sign the bundle
        with; tvf.load(path, trusted_keys=[its public key]) then checks the signature."""
        files = {LIBRARY: self._library_writer(),
                 PARAMS: bundle.tensors_to_bytes(self.state_dict()), **self._extra_files()}
        return bundle.write_bundle(path, self._manifest_now(), files, sign_key=sign_key)

    def __repr__(self):
        where = "" if self.runnable else ", not runnable on this machine"
        return (f"<tvmfront {self.kind} module: target "
                f"{self.manifest.get('target_key', self.manifest['target_kind'])}, "
                f"{len(self.param_names)} parameters{where}>")


class InferenceModule(_Compiled):
    """Callable forward: ``module(x) -> np.ndarray`` at the compiled input shape."""

    kind = "inference"

    @_serialized
    def __call__(self, x):
        """The forward (eval mode) at the compiled shape; x as for predict."""
        out = self._predict_fast(x)
        if out is not None:
            return out
        self._vm
        return self._run_predict(self._inputs_in("module", x))


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
        self._grad_sum, self._micro = None, 0  # gradient accumulation (accumulate, apply)
        self._scalar = manifest["scalar_dtype"]
        self.lr = manifest["optimizer"]["lr"]
        # The step's runtime scalars in train_step's order: lr, step, then the optimizer's own
        # (e.g. max_norm), whose defaults its hyperparameters hold under their names.
        hyper = manifest["optimizer"]["hyperparameters"]
        self.scalar_inputs = list(hyper.get("scalar_inputs", ("lr", "step")))
        self.scalar_defaults = {n: hyper.get(n) for n in self.scalar_inputs[2:]}
        self._scalar_tensors = {}  # value -> its device tensor: lr is the same every step
        self._step_plan = self._fast_step_plan()
        self._held_steps = HeldTensors()  # the fast path's step tensors, per (x, y) shapes

    @property
    def lr(self):
        """The learning rate step() uses when given none (a float; set it to change it)."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = step_scalar("learning rate", value, self._scalar)

    def _fast_step_plan(self):
        """What step()'s fast path needs, when it applies: one input on this CPU (_fast), no
        loss extras, every runtime scalar after lr and step with a usable default. Else None
        (the general path only). Symbolic dimensions and dropout's inputs are fine."""
        spec = self.manifest["labels"]
        if self._fast is None or self.manifest.get("extras") or \
                not _numpy_views(spec["dtype"]) or self.scalar_inputs[:2] != ["lr", "step"] or \
                not all(v is not None and float(v) >= 0 for v in self.scalar_defaults.values()):
            return None
        rest = [to_device(np.asarray(float(self.scalar_defaults[n]), dtype=self._scalar),
                          self.device) for n in self.scalar_inputs[2:]]
        return {"y": (tuple(spec["shape"]), np.dtype(spec["dtype"])),
                "classes": self.manifest.get("num_classes"), "rest": rest,
                "scalar": np.dtype(self._scalar), "checked": False,
                "lr_max": largest(self._scalar),
                "dropout": self.manifest.get("seed") is not None, "key": (None, None)}

    def _fast_step_args(self, x, y, lr):
        """(the train step's data and scalar arguments [x, y, (dropout key, counter,) lr,
        step, *other scalars], numpy views of the refilled ones) when x and y are numpy
        arrays of the compiled dtypes and shapes the compiled ones allow, the labels lie in
        range and lr is a valid number: copied into this thread's device tensors, made once
        per pair of shapes and refilled in place (the general path makes 4-6 new tensors a
        step, ~5 us each). None otherwise: the general path then converts, checks and
        raises its errors."""
        plan = self._step_plan
        fast = self._fast
        if plan is None or type(x) is not np.ndarray or type(y) is not np.ndarray or \
                x.dtype != fast[1] or y.dtype != plan["y"][1]:
            return None
        shapes = (x.shape, y.shape)
        held = self._held_steps.get(shapes)
        bounds = self._step_bounds
        if bounds is not None and not (bounds.ids_fit(self._inputs[0][0], x)
                                       and bounds.ids_fit("y", y)):
            return None
        if held is None:
            sizes = {}
            if not (fits(x.shape, fast[0], sizes) and fits(y.shape, plan["y"][0], sizes)) or \
                    bounds is not None and not bounds.sizes_fit(sizes):
                return None
        classes = plan["classes"]
        if classes is not None and y.size and not _labels_in_range(y, classes):
            return None
        lr = self._lr if lr is None else lr
        if type(lr) is not float or not 0 <= lr <= plan["lr_max"]:  # NaN and inf fail too
            return None  # the general path converts a number of another type, or raises
        if held is None:  # the tensors' first values are refilled below like every step's
            scalar = np.zeros((), plan["scalar"])
            dropout = [np.zeros(2, "uint32"), np.zeros((), "int64")] if plan["dropout"] else []
            held = self._held_steps.make(shapes, [x, y, *dropout, scalar, scalar],
                                         self.device)
        views = held[1]
        views[0][...] = x
        views[1][...] = y
        if plan["dropout"]:
            views[2][...] = self._dropout_key()
            views[3][()] = self.step_count + 1
        views[-2][()] = lr
        views[-1][()] = self.step_count + 1
        return held[0] + plan["rest"], views

    def _dropout_key(self):
        """The dropout key of the manifest's seed (_rng's), made once per seed."""
        seed, key = self._step_plan["key"]
        if seed != self.manifest["seed"]:
            key = self._rng()[0]
            self._step_plan["key"] = (self.manifest["seed"], key)
        return key

    def _fast_step_outputs_alias(self, outputs, views):
        """Whether a train step output shares memory with a tensor the fast path refills in
        place (`views`: a graph that returns an input, or a view of one, as a new parameter or
        state): checked on the first fast step; such a module then takes the general path
        only."""
        spans = [(v.ctypes.data, v.ctypes.data + max(1, v.nbytes)) for v in views]
        for out in outputs:
            if out.device.dlpack_device_type() != 1:
                continue
            view = np.from_dlpack(out)
            lo, hi = view.ctypes.data, view.ctypes.data + max(1, view.nbytes)
            if any(lo < end and start < hi for start, end in spans):
                return True
        return False

    def _check_batch(self, x, y, extras=None, micro=None):
        """The step's data arrays (inputs, labels, loss extras) as the compiled functions take
        them: integers of another dtype cast to the compiled one once their values fit."""
        sizes = {}  # symbolic dimensions: one size across inputs, labels and extras
        arrays = self._inputs_in("step", x, sizes=sizes)
        spec = self.manifest["labels"]
        if isinstance(y, np.ndarray) and np.dtype(spec["dtype"]).kind in "iu" \
                and y.dtype.kind not in "iu":
            raise ShapeError(f"y: labels must be integers (class indices; any integer "
                             f"dtype), got {y.dtype}")
        y = _as_integer("y", y, spec, kind="label ")
        _check("y", y, spec, sizes=sizes)
        empty = [name for name, (size, _) in sizes.items() if size == 0]
        if empty:  # a loss averaged over no samples: no number, and no update to make
            raise ShapeError(f"dimension '{empty[0]}' is 0: a loss and its gradients need at "
                             f"least one sample")
        classes = self.manifest.get("num_classes")
        if classes is not None and y.size and not _labels_in_range(y, classes):
            ignore = self.manifest.get("ignore_index")
            counted = y[y != ignore] if ignore is not None else y
            if counted.size and (counted.min() < 0 or counted.max() >= classes):
                also = f" or ignore_index {ignore}" if ignore is not None else ""
                raise ShapeError(f"y: labels must lie in [0, {classes}){also}, got values in "
                                 f"[{counted.min()}, {counted.max()}]")
        extra_specs = [(e["name"], e) for e in self.manifest.get("extras", ())]
        if extra_specs:
            if extras is None:
                raise ShapeError(f"step: this module's loss takes extra inputs "
                                 f"{[n for n, _ in extra_specs]}: pass extras=")
            extra_arrays = _checked_arrays("step", "extras", extras, extra_specs,
                                           lambda n: f"extra '{n}'", sizes)
        elif extras is not None:
            raise ShapeError("step: this module's loss takes no extra inputs, got extras=")
        else:
            extra_arrays = []
        bounds = self._step_bounds
        if bounds is not None:
            bounds.check(sizes, {**self._labelled(self._inputs, arrays, self._input_label),
                                 "y": ("y", y),
                                 **self._labelled(extra_specs, extra_arrays,
                                                  lambda n: f"extra '{n}'")})
        return [to_device(a, self.device)
                for a in [*arrays, y, *extra_arrays, *self._rng(micro)]]

    def _rng(self, micro=None):
        """Dropout's inputs, for a model that draws random numbers: the key (the manifest's
        seed as 2 x uint32) and the counter (the number of the step about to be taken), so
        masks are new every step and the same for the same (seed, step), also after export,
        reload or a checkpoint."""
        seed = self.manifest.get("seed")
        if seed is None:
            return []
        hi = (seed >> 32) & 0xFFFFFFFF
        if micro is not None:  # micro-batch m of a step: another Philox key, its own masks
            hi ^= (0x9E3779B9 * (micro + 1)) & 0xFFFFFFFF
        key = np.array([seed & 0xFFFFFFFF, hi], dtype="uint32")
        return [key, np.array(self.step_count + 1, dtype="int64")]

    def _scalar_in(self, value):
        """The device tensor of runtime scalar `value`, made once per value (never refilled
        in place: a step may return an input tensor as one of its outputs)."""
        tensor = self._scalar_tensors.get(value)
        if tensor is None:
            if len(self._scalar_tensors) >= 64:  # the step number: a new value every step
                self._scalar_tensors.clear()
            tensor = to_device(np.asarray(value, dtype=self._scalar), self.device)
            self._scalar_tensors[value] = tensor
        return tensor

    def _scalars(self, caller, lr, scalars):
        """The step's runtime scalars in `scalar_inputs` order, checked (device tensors)."""
        unknown = sorted(set(scalars) - set(self.scalar_defaults))
        if unknown:
            raise TypeError(f"{caller}: unknown keyword(s) {unknown}; this step's runtime "
                            f"scalars are {self.scalar_inputs}")
        lr = self._lr if lr is None else step_scalar("learning rate", lr, self._scalar)
        values = {"lr": lr, "step": self.step_count + 1}
        for name, default in self.scalar_defaults.items():
            value = scalars.get(name)
            value = default if value is None else value  # None: the default, as lr=None is
            if value is None:
                call = "step(x, y, " if caller == "step" else f"{caller}("
                raise ValueError(f"{caller}: the optimizer gives {name} no default; pass "
                                 f"{call}{name}=...)")
            values[name] = step_scalar(f"{caller}: {name}", value, self._scalar, finite=False)
        return [self._scalar_in(values[n]) for n in self.scalar_inputs]

    @_serialized
    def step(self, x, y, lr=None, extras=None, **scalars):
        """One optimizer step on batch (x, y); returns the loss before the update.

        x: an array, or for a forward of several tensors a tuple of arrays in its argument
        order (or a dict by name): module.step((tokens, mask), y). extras: the loss's extra
        inputs (one array, a tuple, or a dict), when compiled with extras=. The optimizer's
        other runtime scalars (``scalar_inputs`` after lr and step, e.g. ``max_norm=1.0``) are
        keywords, each defaulting to the optimizer's value. The step runs the model in
        training mode and updates its buffers (BatchNorm's running statistics)."""
        fast = None
        if extras is None and not scalars and self._grad_sum is None and self._vm_ is not None:
            fast = self._fast_step_args(x, y, lr)
        if fast is not None:
            args = fast[0]
        else:
            self._vm
            if self._grad_sum is not None:
                raise RuntimeError("step: accumulated gradients are waiting; call apply() first")
            hyper = self._scalars("step", lr, scalars)
            args = self._check_batch(x, y, extras) + hyper
        out = tuple_items(self._function("train_step")(*args, *self._params, *self._buffers,
                                                       *self._state))
        p, b, s = len(self._params), len(self._buffers), len(self._state)
        self._params, self._buffers = out[1:1 + p], out[1 + p:1 + p + b]
        self._state = out[1 + p + b:1 + p + b + s]
        self.step_count += 1
        if fast is not None and not self._step_plan["checked"]:
            if self._fast_step_outputs_alias(out, fast[1]):
                self._step_plan = None
                self._held_steps.forget()  # the outputs own those tensors now: never refilled
            else:
                self._step_plan["checked"] = True
        if fast is not None:  # on the CPU: the loss's value through DLPack, ~3 us less
            try:
                return float(np.from_dlpack(out[0]))
            except (BufferError, TypeError, ValueError):  # a dtype numpy lacks (bfloat16)
                pass
        return float(to_numpy(out[0]))

    # ---- gradient accumulation -------------------------------------------------------------
    @_serialized
    def accumulate(self, x, y, extras=None):
        """Gradients of one micro-batch, added to those accumulated since the last apply();
        returns its loss. The forward runs in training mode and updates the buffers, as each
        forward does in PyTorch; micro-batch m of a step draws its dropout masks with its own
        key (the seed mixed with m + 1). Needs compile_training(..., accumulate=True)."""
        self._vm
        self._needs_update_alone("accumulate")
        loss, grads = self.compute_gradients(x, y, extras, stream=self._micro)
        self._grad_sum = grads if self._grad_sum is None else [
            a + g for a, g in zip(self._grad_sum, grads)]
        self._micro += 1
        return loss

    def _needs_update_alone(self, caller):
        if not self.manifest.get("accumulate"):
            raise RuntimeError(f"{caller}: this module was compiled without accumulate=True "
                               "(compile_training(..., accumulate=True))")

    def _apply_grads(self, grads, hyper):
        """One optimizer step with `grads` (device tensors in gradient_specs' order)."""
        out = self._function("apply_grads")(*grads, *hyper, *self._params, *self._state)
        p = len(self._params)
        self._params = [out[i] for i in range(p)]
        self._state = [out[p + i] for i in range(len(self._state))]
        self.step_count += 1

    @_serialized
    def apply(self, lr=None, **scalars):
        """One optimizer step with the mean of the gradients accumulated since the last apply
        (for micro-batches of equal size: the step on their concatenation); the runtime
        scalars as in step()."""
        vm = self._vm
        if self._grad_sum is None:
            raise RuntimeError("apply: no gradients accumulated; call accumulate(x, y) first")
        hyper = self._scalars("apply", lr, scalars)
        mean = [to_device((g / self._micro).astype(g.dtype), self.device) for g in self._grad_sum]
        self._apply_grads(mean, hyper)
        self._grad_sum, self._micro = None, 0

    @_serialized
    def loss(self, x, y, extras=None):
        """The loss on batch (x, y) at the current parameters (training mode; no update, the
        buffers stay as they are)."""
        vm = self._vm
        out = vm["loss"](*self._check_batch(x, y, extras), *self._params, *self._buffers)
        return float(to_numpy(out[0] if self._buffers else out))

    @_serialized
    def loss_and_grads(self, x, y, extras=None):
        """(loss, {parameter name: gradient}) on batch (x, y), no update. Frozen parameters
        (requires_grad=False) have no gradient and are not in the dict."""
        vm = self._vm
        out = vm["loss_adjoint"](*self._check_batch(x, y, extras), *self._params,
                                 *self._buffers)
        loss = out[0][0] if self._buffers else out[0]  # (loss, *buffers') or the loss
        return float(to_numpy(loss)), OrderedDict(
            (spec["name"], to_numpy(g)) for spec, g in zip(self.gradient_specs(), out[1]))

    # ---- data parallelism (tvmfront.distributed): gradients and update as separate calls ----
    def gradient_specs(self):
        """[{name, shape, dtype}] of the gradients compute_gradients returns, in its order:
        the trainable parameters (those with requires_grad=False have none)."""
        frozen = set(self.manifest.get("frozen", ()))
        return [p for p in self.manifest["parameters"] if p["name"] not in frozen]

    @_serialized
    def compute_gradients(self, x, y, extras=None, stream=None):
        """(loss, [gradient arrays in gradient_specs' order]) of batch (x, y), no optimizer
        step. The forward runs in training mode and updates the buffers, as accumulate()
        does. stream: a data-parallel rank; it draws dropout masks from its own key, the one
        micro-batch `stream` of accumulate() draws from, so that ranks mask differently."""
        self._vm
        out = self._function("loss_adjoint")(*self._check_batch(x, y, extras, micro=stream),
                                             *self._params, *self._buffers)
        if self._buffers:
            self._buffers = [out[0][1 + i] for i in range(len(self._buffers))]
        loss = out[0][0] if self._buffers else out[0]
        return float(to_numpy(loss)), [to_numpy(g) for g in out[1]]

    @_serialized
    def buffer_arrays(self):
        """The buffers (BatchNorm's running statistics), numpy copies in buffer_names' order."""
        return [_host_copy(b) for b in self._buffers]

    @_serialized
    def set_buffer_arrays(self, arrays):
        """Replace the buffers with `arrays` (buffer_names' order, shapes and dtypes as
        compiled): the mean of the ranks' running statistics after a data-parallel step."""
        specs = self.manifest.get("buffers", [])
        if len(arrays) != len(specs):
            raise ShapeError(f"set_buffer_arrays: this module has {len(specs)} buffers, got "
                             f"{len(arrays)}")
        self._buffers = self._checked_tensors("set_buffer_arrays", "buffer",
                                              dict(zip(self.buffer_names, arrays)), specs)

    @_serialized
    def apply_gradients(self, grads, lr=None, **scalars):
        """One optimizer step with `grads` (numpy arrays in gradient_specs' order, e.g. the
        mean of every rank's); the runtime scalars as in step(). Needs
        compile_training(..., accumulate=True), which compiles the update alone."""
        self._vm
        self._needs_update_alone("apply_gradients")
        if self._grad_sum is not None:
            raise RuntimeError("apply_gradients: accumulated gradients are waiting; call "
                               "apply() first")
        specs = self.gradient_specs()
        if len(grads) != len(specs):
            raise ShapeError(f"apply_gradients: this module has {len(specs)} trainable "
                             f"parameters, got {len(grads)} gradients")
        for spec, g in zip(specs, grads):
            _check(f"gradient of '{spec['name']}'", g, spec)
        hyper = self._scalars("apply_gradients", lr, scalars)
        self._apply_grads([to_device(g, self.device) for g in grads], hyper)

    @_serialized
    def load_optimizer_state(self, state):
        """Replace the optimizer state ({state name: array}, every name, shapes and dtypes as
        optimizer_state() gives them)."""
        if not hasattr(state, "keys"):
            raise TypeError(f"load_optimizer_state: expects a dict {{name: array}} (as "
                            f"optimizer_state() returns), got {type(state).__name__}")
        self._state = self._checked_tensors("load_optimizer_state", "optimizer state", state,
                                            self.manifest["optimizer"]["state"])

    @_serialized
    def optimizer_state(self):
        return OrderedDict((n, _host_copy(s)) for n, s in zip(self.state_names, self._state))

    def _extra_files(self):
        return {OPTIMIZER: bundle.tensors_to_bytes(self.optimizer_state())}

    def _manifest_now(self):
        manifest = dict(self.manifest, step=self.step_count)
        manifest["optimizer"] = dict(manifest["optimizer"], lr=self.lr)
        return manifest


def load(path, trusted_keys=None):
    """Load an exported bundle: a TrainingModule or an InferenceModule.

    A bundle holds native code, and loading it runs that code: load only bundles from sources
    you trust. The manifest's hashes detect corrupt files; to detect tampering, export with
    sign_key and pass the signers' public keys as trusted_keys: a bundle whose signature is
    missing, bad or by another key is then refused (BundleError)."""
    read = bundle.read_bundle(path, trusted_keys)
    path, manifest = read.path, read.manifest
    if manifest["tvm_version"] != TVM_VERSION:
        raise BundleError(f"{path}: built with TVM {manifest['tvm_version']}, this is TVM "
                          f"{TVM_VERSION}; rebuild the bundle")
    reason = why_not_runnable_here(manifest)  # before dlopen: a foreign .so cannot load here
    if reason:
        raise TargetError(f"{path}: cannot load this bundle here: {reason}")
    tensors = manifest["parameters"] + manifest.get("buffers", [])  # one file holds both
    params = bundle.read_tensors(read, PARAMS, [(p["name"], p["shape"], p["dtype"])
                                                for p in tensors])
    state = None
    if manifest["kind"] == "training":
        state = bundle.read_tensors(read, OPTIMIZER, [(s["name"], s["shape"], s["dtype"])
                                                      for s in manifest["optimizer"]["state"]])
    library = bundle.load_library(read, LIBRARY)
    library_bytes = read.files[LIBRARY]
    if state is None:
        return InferenceModule(library, manifest, params, library_bytes=library_bytes)
    return TrainingModule(library, manifest, params, state, library_bytes=library_bytes)
