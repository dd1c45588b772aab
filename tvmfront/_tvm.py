"""The one place tvmfront imports TVM from.

Every other module takes TVM names from here, so a rename in TVM (0.27 renamed
StructInfo to Type, moved TIR to ``tirx``/``s_tir``) costs one edit.
"""

# TVM_NUM_THREADS is deliberately left as the user set it. TVM's CPU thread pool takes half the
# logical CPUs on x86 (1 thread on this project's 2-CPU machines); setting it to 2 there did not
# help. LeNet digits train step, batch 64, median (2026-11-25, other jobs sharing the 2 CPUs):
# 1.25-1.30 ms with 1 thread, 1.24-1.35 ms with TVM_NUM_THREADS=2 (MLP: 0.76 vs 0.75-0.78 ms),
# the same with tuned records; one earlier run measured 3.6-4.0 ms with 2 threads against
# 1.26-1.33 ms with 1, as a parallel region waits for the core another process holds.

import importlib as _importlib
import importlib.util as _importlib_util
import sys as _sys

import numpy as np

# ---- lazy TVM: nothing below imports TVM until a name is used -------------------------------
# `import tvm` costs 2-5 s on the 2-core machines (tvm_ffi alone ~2 s, most of it ml_dtypes
# registering its numpy casts), and defining a model or loading a checkpoint needs none of it.
# So the module names here are proxies that import on first attribute access, the functions
# import when called, and registrations made before TVM is loaded are replayed once it is.

_pending = []  # (function name in tvm_ffi, args, kwargs) registered before TVM was loaded


def _tvm_loaded():
    """Import TVM (once) and replay the registrations made before."""
    if "tvm" not in _sys.modules or _pending or not _lowerings:
        import tvm_ffi

        _importlib.import_module("tvm")
        while _pending:
            name, args, kwargs = _pending.pop(0)
            getattr(tvm_ffi, name)(*args, **kwargs)
        if not _lowerings:
            _register_lowerings()
    return _sys.modules["tvm"]


_lowerings = []  # the intrinsic lowerings _register_lowerings added (once per process)


def _register_lowerings():
    """CPU lowerings TVM 0.27 lacks: te.fmod had none ("unknown intrinsic tirx.fmod" when
    its kernel was built). Floats become libm's fmod/fmodf, as C computes it (float16 and
    bfloat16 through fmodf: the remainder is exact, so it fits their own type); integers the
    truncated remainder, 0 for a 0 divisor as numpy's fmod (C's would trap)."""
    tvm = _sys.modules["tvm"]

    def lower_fmod(call):
        tirx = tvm.tirx
        dtype, (a, b) = str(call.ty), call.args
        if dtype == "float64":
            return tirx.call_pure_extern(dtype, "fmod", a, b)
        if dtype == "float32":
            return tirx.call_pure_extern(dtype, "fmodf", a, b)
        if dtype in ("float16", "bfloat16"):
            return tirx.Cast(dtype, tirx.call_pure_extern(
                "float32", "fmodf", tirx.Cast("float32", a), tirx.Cast("float32", b)))
        if dtype.startswith(("int", "uint")):
            zero, one = tirx.const(0, dtype), tirx.const(1, dtype)
            return tirx.Select(b == zero, zero, tirx.truncmod(a, tirx.Select(b == zero, one, b)))
        return call

    if tvm.ir.Op.get("tirx.fmod").get_attr("llvm.FLowerIntrinsic") is None:  # (a newer TVM's)
        tvm.ir.register_op_attr("tirx.fmod", "llvm.FLowerIntrinsic", lower_fmod, level=10)
    _lowerings.append("tirx.fmod")


class _LazyModule:
    """A module imported on first attribute access (`te.compute` imports tvm.te then)."""

    __slots__ = ("_name", "_module")

    def __init__(self, name):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_module", None)

    def _load(self):
        module = self._module
        if module is None:
            _tvm_loaded()
            module = _importlib.import_module(self._name)
            object.__setattr__(self, "_module", module)
        return module

    def __getattr__(self, attr):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self):
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (loaded)'}>"


class _LazyClass:
    """A TVM class imported on first use: call it, isinstance() against it, read its
    attributes (`Target(...)`, `isinstance(t, Target)`)."""

    __slots__ = ("_module", "_attr", "_class")

    def __init__(self, module, attr):
        self._module, self._attr, self._class = module, attr, None

    def _load(self):
        if self._class is None:
            self._class = getattr(self._module, self._attr)
        return self._class

    def __call__(self, *args, **kwargs):
        return self._load()(*args, **kwargs)

    def __instancecheck__(self, obj):
        return isinstance(obj, self._load())

    def __subclasscheck__(self, cls):
        return issubclass(cls, self._load())

    def __getattr__(self, attr):
        return getattr(self._load(), attr)


def _tvm_version():
    """tvm.__version__ without importing tvm: the _version.py its build wrote, read alone."""
    spec = _importlib_util.find_spec("tvm")
    folder = spec.submodule_search_locations[0] if spec and spec.submodule_search_locations \
        else None
    try:
        version_spec = _importlib_util.spec_from_file_location(
            "_tvmfront_tvm_version", f"{folder}/_version.py")
        module = _importlib_util.module_from_spec(version_spec)
        version_spec.loader.exec_module(module)
        return str(module.version)
    except Exception:  # a source tree without _version.py: ask tvm itself
        return str(_tvm_loaded().__version__)


def lazy(module, attr=None):
    """TVM module `module` (or its class `attr`), imported on first use: for names a module
    keeps at its top level (`Call = lazy("tvm.ir.expr", "Call")`)."""
    return _LazyModule(module) if attr is None else _LazyClass(_LazyModule(module), attr)


tvm = _LazyModule("tvm")
te = _LazyModule("tvm.te")
relax = _LazyModule("tvm.relax")
tirx = _LazyModule("tvm.tirx")
Target = _LazyClass(_LazyModule("tvm.target"), "Target")

# Loop nests written statement by statement (te.extern bodies: a scatter, which no TE compute
# expresses): `with tir_builder.serial(0, n) as i: ...` inside `with IRBuilder() as b:`.
tir_builder = _LazyModule("tvm.script.ir_builder.tirx")
IRBuilder = _LazyClass(_LazyModule("tvm.script.ir_builder"), "IRBuilder")

__all__ = [
    "tvm", "te", "relax", "tirx", "lazy", "tir_builder", "IRBuilder", "PyExprMutator",
    "mutator", "load_module",
    "TVM_VERSION", "register_error", "register_global_func", "to_device", "to_numpy", "Target",
    "tuple_items",
    "structural_equal",
    "device_for", "virtual_machine", "call_tir_with_grad_op", "llvm_system_cpu",
    "llvm_has_features", "llvm_cpu_features", "llvm_host_cpu_features", "llvm_valid_cpu",
]

TVM_VERSION = _tvm_version()

# Defining a Python subclass of a TVM class needs the real class: these import TVM when
# imported (`from ._tvm import PyExprMutator`), so only modules that compile take them.
_LAZY_NAMES = {"PyExprMutator": ("tvm.relax.expr_functor", "PyExprMutator"),
               "mutator": ("tvm.relax.expr_functor", "mutator"),
               "derived_object": ("tvm.ir.utils", "derived_object")}


def __getattr__(name):
    if name not in _LAZY_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _tvm_loaded()
    module, attr = _LAZY_NAMES[name]
    return getattr(_importlib.import_module(module), attr)


def load_module(path):
    """tvm.runtime.load_module(path)."""
    return _tvm_loaded().runtime.load_module(path)


def register_global_func(name, f, override=False):
    """tvm_ffi.register_global_func(name, f, override), deferred until TVM is loaded."""
    if "tvm" in _sys.modules and not _pending:
        import tvm_ffi

        return tvm_ffi.register_global_func(name, f, override=override)
    _pending.append(("register_global_func", (name, f), {"override": override}))
    return f


def register_error(cls):
    """tvm_ffi.register_error(cls) (a Python error raised in a packed func keeps its type),
    deferred until TVM is loaded."""
    if "tvm" in _sys.modules and not _pending:
        import tvm_ffi

        return tvm_ffi.register_error(cls)
    _pending.append(("register_error", (cls,), {}))
    return cls


def structural_map(obj, *rewrites, order="post"):
    """tvm_ffi.structural_map: rebuild `obj` with each (type, fn) rewrite applied."""
    import tvm_ffi

    return tvm_ffi.structural_map(obj, *rewrites, order=order)


def schedule_trace_types():
    """(Instruction, Trace) of s_tir schedules: a tuning record's trace, rewritten."""
    from tvm.s_tir.schedule import Instruction, Trace

    return Instruction, Trace


def structural_equal(a, b, *args, **kwargs):
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b, *args, **kwargs)


def structural_hash(node, *args, **kwargs):
    import tvm_ffi

    return tvm_ffi.structural_hash(node, *args, **kwargs)


def llvm_system_cpu():
    """LLVM's name for the host CPU (e.g. 'znver3'), used as -mcpu."""
    from tvm.target import codegen

    return codegen.llvm_get_system_cpu()


def llvm_valid_cpu(cpu, triple=None):
    """Whether LLVM knows the CPU `cpu` for `triple` (default: this machine's); True where
    LLVM cannot tell."""
    from tvm.target import codegen

    try:
        return bool(codegen.llvm_is_valid_cpu(cpu, triple or codegen.llvm_get_system_triple()))
    except Exception:  # an LLVM without this backend or the query
        return True


def llvm_has_features(target, *features):
    """Whether the CPU of the LLVM target `target` (its mtriple, mcpu and mattr) has every one
    of `features` (LLVM names: 'avx512f', 'avx2', 'fma', 'neon'); False where LLVM cannot tell."""
    from tvm.target import codegen

    try:
        return all(bool(codegen.target_has_features(f, target)) for f in features)
    except Exception:  # an LLVM without this backend or the query
        return False


def llvm_cpu_features(target):
    """LLVM names of every feature the CPU of LLVM target `target` (a Target or its dict) has,
    from its mtriple, mcpu and mattr; empty where LLVM cannot tell."""
    from tvm.target import codegen

    try:
        return {str(f) for f in codegen.llvm_get_cpu_features(Target(target))}
    except Exception:  # an LLVM without this backend, or a target it cannot parse
        return set()


def llvm_host_cpu_features():
    """LLVM names of the features LLVM detects on this CPU, or None where it cannot."""
    try:
        found = tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")()
        return {str(k) for k, v in dict(found).items() if v}
    except Exception:  # a TVM built without LLVM
        return None


def device_for(kind):
    """Runtime device for a target kind name ('llvm' -> host CPU, 'cuda' -> GPU 0)."""
    return tvm.cuda(0) if kind == "cuda" else tvm.cpu()


def virtual_machine(lib, device):
    return relax.VirtualMachine(lib, device)


_alloc = []  # [TVM's tensor allocator], found on first use
_alloc_args = {}  # (shape, numpy dtype) -> (tvm_ffi.Shape, tvm_ffi.dtype), made once each


def to_device(array, device=None):
    """numpy array -> TVM runtime tensor on `device` (host CPU by default).

    On the CPU the tensor is allocated empty and filled through a DLPack view, with the
    allocator's shape and dtype objects made once per (shape, dtype): tvm.runtime.empty makes
    them every call, and str(numpy dtype) alone costs a few microseconds on numpy 2. A
    batch-1 forward takes ~20 us, so this is per-call cost that shows."""
    device = device or _cpu()
    array = np.asarray(array)
    if device.dlpack_device_type() != 1 or array.dtype.kind not in "fiu":
        return tvm.runtime.tensor(array, device)
    key = (array.shape, array.dtype)
    args = _alloc_args.get(key)
    if args is None:
        import tvm_ffi

        if not _alloc:
            _alloc.append(_tvm_loaded().get_global_func("runtime.TVMTensorAllocWithScope"))
        if len(_alloc_args) > 4096:  # shapes from a long run of varying batch sizes
            _alloc_args.clear()
        args = _alloc_args[key] = (tvm_ffi.Shape(array.shape), tvm_ffi.dtype(str(array.dtype)))
    out = _alloc[0](args[0], args[1], device, None)
    np.from_dlpack(out)[...] = array
    return out


_cpu_device = []


def _cpu():
    if not _cpu_device:
        _cpu_device.append(tvm.cpu())
    return _cpu_device[0]


def tuple_items(value):
    """The items of a tuple a VM function returns (a tvm_ffi Array) as a Python list, through
    its ArrayGetItem directly: indexing goes through Python helpers (~2 us an item)."""
    import tvm_ffi

    get = _array_get.get("get")
    if get is None:
        get = _array_get["get"] = tvm_ffi.get_global_func("ffi.ArrayGetItem")
    return [get(value, i) for i in range(len(value))]


_array_get = {}


def to_numpy(tensor):
    """TVM runtime tensor -> numpy array (a copy): through DLPack on the CPU (~0.4 us against
    ~6 us for .numpy())."""
    if tensor.device.dlpack_device_type() == 1 and "bfloat" not in str(tensor.dtype):
        return np.from_dlpack(tensor).copy()
    return tensor.numpy()


def is_prim_expr(x):
    """Whether `x` is a TIR scalar expression (a symbolic dimension such as tirx.Var('n')).
    0.27 shares one Var class between TIR and Relax: the type tells them apart."""
    return isinstance(x, tvm.ir.expr.Expr) and isinstance(getattr(x, "ty", None),
                                                          tvm.ir.PrimType)


def call_tir_with_grad_op():
    return tvm.ir.Op.get("relax.call_tir_with_grad")


# ---- default CPU schedules (tvmfront.schedule) ----------------------------------------------
s_tir = _LazyModule("tvm.s_tir")  # schedulable TIR: s_tir.Schedule, s_tir.dlight
arith = _LazyModule("tvm.sym")  # detect_linear_equation
dlight = _LazyModule("tvm.s_tir.dlight")

__all__ += ["s_tir", "arith", "dlight", "cpu_vector_bits"]


def cpu_vector_bits(target):
    """SIMD register width in bits for an LLVM CPU target (AVX-512: 512, AVX/AVX2: 256, else 128).

    TVM 0.27's llvm_get_vector_width answers 512 for every x86 CPU, so x86 is asked by feature.
    """
    from tvm.target import codegen

    try:
        if codegen.target_has_features("avx512f", target):
            return 512
        if codegen.target_has_features("avx", target):
            return 256
        if codegen.target_has_features("sse2", target):
            return 128
        return max(128, int(codegen.llvm_get_vector_width(target)))
    except Exception:  # non-LLVM targets or an LLVM without the query
        return 128


# ---- targets across machines: which CPU a build is for, cross compilers, devices ------------
# (tvmfront.target names targets; the runtime decides from these whether a module runs here
# and how to export it. Kept here so the runtime layer needs nothing from the frontend.)
import json as _json  # noqa: E402
import os as _os  # noqa: E402
import platform as _platform  # noqa: E402

__all__ += ["normalize_arch", "host_arch", "target_arch", "device_available",
            "cuda_device_arch", "cross_compiler_name", "cross_compiler", "export_library"]

_ARCH_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}
# CPU architecture -> the GNU cross C++ compiler that links TVM libraries for it (Debian names)
CROSS_CXX = {"aarch64": "aarch64-linux-gnu-g++", "x86_64": "x86_64-linux-gnu-g++"}


def normalize_arch(name):
    """'arm64' -> 'aarch64', 'AMD64' -> 'x86_64': one spelling per CPU architecture."""
    name = str(name).lower()
    return _ARCH_ALIASES.get(name, name)


def host_arch():
    """This machine's CPU architecture ('x86_64', 'aarch64', ...)."""
    return normalize_arch(_platform.machine())


def target_arch(target):
    """The CPU architecture the host-side code of `target` (a Target or its dict) runs on:
    an LLVM target's mtriple, a device target's host, else this machine."""
    if isinstance(target, Target):
        target = _json.loads(str(target))
    if not isinstance(target, dict):
        return host_arch()
    if target.get("kind") != "llvm" and isinstance(target.get("host"), dict):
        return target_arch(target["host"])
    triple = target.get("mtriple") if target.get("kind") == "llvm" else None
    return normalize_arch(str(triple).split("-")[0]) if triple else host_arch()


def device_available(kind):
    """Whether this process can run code for target kind `kind` (a CUDA target needs a GPU and
    TVM's CUDA runtime, which loads only where the NVIDIA driver is installed)."""
    if kind == "cuda":
        try:
            return bool(tvm.cuda(0).exist)
        except Exception:  # no CUDA device API registered at all
            return False
    return True


def cuda_device_arch():
    """'sm_XY' of this machine's first GPU, or None without one."""
    if not device_available("cuda"):
        return None
    try:
        return "sm_" + str(tvm.cuda(0).compute_version).replace(".", "")
    except Exception:  # a driver that does not report it
        return None


def cross_compiler_name(arch):
    """The C++ compiler that links a library for `arch` on this machine, or None if unknown.
    TVMFRONT_CXX_<ARCH> (e.g. TVMFRONT_CXX_AARCH64) overrides the default."""
    arch = normalize_arch(arch)
    return _os.environ.get(f"TVMFRONT_CXX_{arch.upper()}") or CROSS_CXX.get(arch)


def cross_compiler(cxx):
    """A TVM fcompile that links with `cxx` (tvm.support.cc.cross_compiler)."""
    from tvm.support import cc

    return cc.cross_compiler(cxx)


def export_library(executable, path, cxx=None):
    """executable.export_library(path), linked with the compiler `cxx` when given."""
    if cxx is None:
        return executable.export_library(path)
    return executable.export_library(path, fcompile=cross_compiler(cxx))


# ---- MetaSchedule tuning, tuning records, the compile cache (tune, records, cache) ----------
_meta_schedule = _LazyModule("tvm.s_tir.meta_schedule")

__all__ += ["derived_object", "meta_schedule", "structural_hash", "normalize_prim_func",
            "ms_local_builder", "prim_func_type", "relax_call_tir_op"]

_INTRIN = "tvm.s_tir.tensor_intrin"


def _cpu_tensor_intrinsics(arch):
    """Register only the CPU tensor intrinsics. MetaSchedule's TuneContext imports
    tvm.s_tir.tensor_intrin, which registers every backend's (~25 s here, 23 s of it CUDA's);
    fp32 CPU schedules use at most the x86 / ARM ones. The package is entered into sys.modules
    unexecuted, so its submodules (``.cuda`` too) still import on demand."""
    if _INTRIN not in _sys.modules:
        import importlib.util

        spec = importlib.util.find_spec(_INTRIN)
        _sys.modules[_INTRIN] = importlib.util.module_from_spec(spec)
    _importlib.import_module(f"{_INTRIN}.{'arm_cpu' if arch == 'aarch64' else 'x86'}")


def meta_schedule(target=None):
    """tvm.s_tir.meta_schedule, with the tensor intrinsics `target` needs registered."""
    if target is not None and target.kind.name != "llvm":
        _importlib.import_module(f"{_INTRIN}.cuda")  # GPU schedules tensorize with these
    else:
        _cpu_tensor_intrinsics(target_arch(target) if target is not None else host_arch())
    return _meta_schedule._load()


def normalize_prim_func(func):
    """A PrimFunc as the IRModule MetaSchedule keys its workloads by."""
    return tvm.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")(func)


def prim_func_type():
    return tirx.PrimFunc


def relax_call_tir_op():
    return tvm.ir.Op.get("relax.call_tir")


def ms_local_builder(timeout_sec=120.0, max_workers=None):
    """MetaSchedule's LocalBuilder without its two pitfalls (shared notes): its workers import
    tvm.s_tir.tensor_intrin (~21-40 s) and die at the 30 s default timeout, so every
    candidate fails and tuning measures nothing. f_build skips that import (fp32 CPU kernels
    need no tensor intrinsics); it is a closure, so cloudpickle ships it by value and the
    workers need nothing but TVM."""

    def f_build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    return _meta_schedule.builder.LocalBuilder(f_build=f_build, timeout_sec=timeout_sec,
                                               max_workers=max_workers)


# ---- remote measurement over TVM RPC (tvmfront.rpc: tune on a board or a fleet) -------------
_rpc = _LazyModule("tvm.rpc")

__all__ += ["rpc_connect", "rpc_connect_tracker", "ms_remote_builder", "ms_rpc_runner",
            "remote_device"]


def rpc_connect(host, port, timeout=0, key=""):
    """An RPC session with the server at host:port (no tracker); the server ends it after
    `timeout` seconds (0: never)."""
    return _rpc.connect(host, int(port), key=key, session_timeout=timeout)


def rpc_connect_tracker(host, port):
    """A tracker session: .summary(), .request(key, priority, session_timeout, max_retry)."""
    return _rpc.connect_tracker(host, int(port))


def remote_device(session, kind):
    """The device of target kind `kind` ('llvm', 'cuda') in an RPC session."""
    return session.device("cuda" if kind == "cuda" else "cpu", 0)


def ms_remote_builder(cxx=None, timeout_sec=120.0, max_workers=None):
    """ms_local_builder for candidates measured over RPC: the same f_build (no tensor
    intrinsics import in the workers), and an f_export that links a shared library here, with
    the cross compiler `cxx` when given, so the device needs no compiler (MetaSchedule's
    default exports a .tar that the RPC server links with its own g++)."""

    def f_build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        return tvm_build(mod, target=target)

    def f_export(mod):
        import os
        import tempfile

        path = os.path.join(tempfile.mkdtemp(prefix="tvmfront-cand-"), "tvm_tmp_mod.so")
        if cxx:
            from tvm.support import cc

            mod.export_library(path, fcompile=cc.cross_compiler(cxx))
        else:
            mod.export_library(path)
        return path

    return _meta_schedule.builder.LocalBuilder(f_build=f_build, f_export=f_export,
                                               timeout_sec=timeout_sec, max_workers=max_workers)


def ms_rpc_runner(host, port, key=None, timeout_sec=60, max_workers=1, wait_sec=None):
    """MetaSchedule's RPCRunner measuring on the servers a tracker at host:port holds under
    `key` (max_workers sessions at once), or, with key None, on the one server at host:port
    (RPCConfig knows only trackers). Sessions are opened by f_create_session, which gives up
    after wait_sec (default 3 x timeout_sec + 60) without a server (all busy, or gone
    mid-run): that candidate then fails and the search goes on, where TVM's own would wait
    forever."""
    ms = _meta_schedule
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port),
                                 tracker_key=key if key is not None else "(direct)",
                                 session_timeout_sec=int(timeout_sec))
    wait = float(wait_sec if wait_sec is not None else 3 * timeout_sec + 60)
    direct = key is None

    def f_create_session(rpc_config):
        import threading

        from tvm import rpc

        host, port = rpc_config.tracker_host, int(rpc_config.tracker_port)
        timeout = rpc_config.session_timeout_sec
        box = {}

        def connect():
            try:
                if direct:
                    box["session"] = rpc.connect(host, port, session_timeout=timeout)
                else:
                    box["session"] = rpc.connect_tracker(host, port).request(
                        rpc_config.tracker_key, priority=rpc_config.session_priority,
                        session_timeout=timeout, max_retry=2)
            except Exception as err:  # re-raised in the worker, below
                box["error"] = err

        thread = threading.Thread(target=connect, daemon=True)
        thread.start()
        thread.join(wait)
        if "error" in box:
            raise box["error"]
        if "session" not in box:
            where = (f"the RPC server at {host}:{port}" if direct else
                     f"the tracker at {host}:{port} (key {rpc_config.tracker_key!r})")
            raise TimeoutError(f"no RPC session from {where} within {wait:g} s")
        return box["session"]

    return ms.runner.RPCRunner(rpc_config=config, f_create_session=f_create_session,
                               max_workers=max_workers)
