"""Named compilation targets: a short name or a raw TVM target dict -> a TVM Target.

The target is always an argument (never a global), so later targets slot in as new rows.

    x86            this machine's CPU (-mcpu detected) when it is an x86-64, else generic x86-64
    x86:avx2       any x86-64 CPU with AVX2 and FMA (LLVM's x86-64-v3: Haswell, Zen and later):
                   a bundle built for it on an AVX-512 server runs on every AVX2 machine;
                   likewise x86:avx512 (x86-64-v4) and x86:sse (baseline x86-64, SSE2)
    arm, aarch64   64-bit ARM Linux with NEON, cross-compiled here with aarch64-linux-gnu-g++
    aarch64:dotprod  the same with the ARMv8.2 8-bit dot product (sdot: Cortex-A55/A76 and
                   later, Neoverse N1 / Graviton2 and later, Apple M1): int8 kernels use it
    cuda           an NVIDIA GPU: this machine's GPU arch, else sm_80; "cuda:sm_90" (or
                   "cuda:90") picks the arch
    a dict         any TVM target, e.g. {"kind": "llvm", "mcpu": "znver3"} or
                   {"kind": "cuda", "arch": "sm_90"}

`target_key(target)` names what changes compiled code (CPU architecture / GPU arch, CPU
feature class or features, TVM version): `x86_64-avx512-tvm0.27.0.post1`,
`aarch64-neon-tvm0.27.0.post1`, `cuda-sm_90-tvm0.27.0.post1`. Tuning records are kept per key
so that one target's schedules never reach another's build.
"""

import json
import os
import re

from ._tvm import (TVM_VERSION, Target, cuda_device_arch, host_arch, llvm_has_features,
                   llvm_system_cpu, llvm_valid_cpu, target_arch)
from .errors import TargetError

DEFAULT_CUDA_ARCH = "sm_80"


def _x86():
    if host_arch() == "x86_64":
        # -mcpu set to the host CPU lets LLVM use every vector extension this machine has.
        return {"kind": "llvm", "mcpu": llvm_system_cpu(), "num-cores": os.cpu_count() or 1}
    return {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}  # from another machine: generic x86-64


# portable x86-64 feature classes -> the LLVM CPU that stands for the whole class
_X86_LEVELS = {"x86:sse": "x86-64", "x86:avx2": "x86-64-v3", "x86:avx512": "x86-64-v4"}


def _x86_level(name):
    # mtriple too, so the class builds the same code from any machine (an ARM laptop too).
    return lambda: {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": _X86_LEVELS[name],
                    "num-cores": os.cpu_count() or 1}


def _aarch64(*features):
    return {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon", *features]}


def _cuda(arch=None):
    # "cuda" alone: this machine's GPU where there is one (kernels for its own arch), else
    # DEFAULT_CUDA_ARCH (building here for a GPU elsewhere: name it, "cuda:sm_90").
    return {"kind": "cuda", "arch": arch or cuda_device_arch() or DEFAULT_CUDA_ARCH}


# name -> function returning a TVM target dict. One row per target family.
_NAMED_TARGETS = {
    "x86": _x86,
    "llvm": _x86,
    **{name: _x86_level(name) for name in _X86_LEVELS},
    "arm": _aarch64,
    "aarch64": _aarch64,
    "arm:dotprod": lambda: _aarch64("+dotprod"),
    "aarch64:dotprod": lambda: _aarch64("+dotprod"),
    "cuda": _cuda,
}
# names that take an option after a colon: "cuda:sm_90"
_CUDA_ARCH = re.compile(r"cuda:(?:sm_)?(\d+[a-z]?)")


def targets():
    """Names accepted wherever a target is asked for (besides raw TVM target dicts)."""
    return sorted(_NAMED_TARGETS)


def _valid_names():
    return f"{', '.join(targets())}, cuda:sm_XX (e.g. cuda:sm_90)"


def _named(name):
    match = _CUDA_ARCH.fullmatch(name)
    if match:
        return _cuda(f"sm_{match.group(1)}")
    if name not in _NAMED_TARGETS:
        raise TargetError(f"unknown target {name!r}; valid names: {_valid_names()} "
                          "(or a TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver3'})")
    return _NAMED_TARGETS[name]()


def resolve_target(target):
    """Name | TVM target dict | tvm Target -> tvm Target. Unknown names raise TargetError."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        return Target(_named(target))
    if isinstance(target, dict):
        cpu = target.get("mcpu")
        if target.get("kind") == "llvm" and cpu and not llvm_valid_cpu(str(cpu),
                                                                    target.get("mtriple")):
            # LLVM logs an error and builds for 'generic'; the bundle's manifest then named
            # a CPU its code was never built for
            raise TargetError(f"unknown mcpu {cpu!r} for {target.get('mtriple') or 'this host'}"
                              f" (LLVM would build for 'generic' instead); e.g. 'znver3', "
                              f"'skylake-avx512', 'cortex-a72'")
        try:
            return Target(target)
        except Exception as err:  # TVM raises ValueError/TVMError with its own wording
            raise TargetError(f"invalid TVM target dict {target!r}: {err}") from None
    raise TargetError(f"target must be a name ({_valid_names()}) or a TVM target dict, "
                      f"got {type(target).__name__}")


def _feature(f):
    f = str(f)
    return f[1:] if f.startswith("+") else "no" + f[1:] if f.startswith("-") else f


# x86-64 feature classes, widest first: (key part, LLVM features every CPU of the class has).
# They follow what the schedules depend on: vector width (cpu_vector_bits: 512 / 256 / 128
# bits) and, for AVX2, fused multiply-add.
X86_CLASSES = (("avx512", ("avx512f",)), ("avx2", ("avx2", "fma")), ("avx", ("avx",)),
               ("sse", ("sse2",)))


def x86_class(target):
    """The feature class of an x86-64 LLVM target ('avx512', 'avx2', 'avx', 'sse'), from what
    LLVM knows of its -mcpu and -mattr; 'generic' when LLVM cannot tell."""
    t = resolve_target(target)
    for name, features in X86_CLASSES:
        if llvm_has_features(t, *features):
            return name
    return "generic"


def target_key(target):
    """A filesystem-safe key naming what changes compiled code: the CPU architecture and CPU
    feature class (x86-64) or model and features (other LLVM targets), or the GPU arch (CUDA),
    and the TVM version."""
    t = resolve_target(target)
    kind = t.kind.name
    attrs = t.attrs
    if kind == "llvm" and target_arch(t) == "x86_64":
        # The feature class, not the CPU model: a record is a schedule (tile sizes, loop order,
        # vector length), replayed and compiled for the building machine's own -mcpu, so what
        # decides whether it fits another CPU is the vector width and instruction set, not
        # the model name. LLVM names CPUs of one class differently (this machine's Xeon is
        # 'rocketlake', others 'icelake-server', 'sapphirerapids', AMD's 'znver4'): keyed by
        # model, records shipped from one AVX-512 machine would be missed on the next.
        parts = ["x86_64", x86_class(t)]
    elif kind == "llvm":
        parts = [target_arch(t)]
        if attrs.get("mcpu"):
            parts.append(str(attrs["mcpu"]))
        features = sorted(_feature(f) for f in (attrs.get("mattr") or []))
        if features:
            parts.append("+".join(features))
        if len(parts) == 1:
            parts.append("generic")
    else:
        parts = [kind, str(attrs.get("arch") or attrs.get("mcpu") or "generic")]
    parts.append(f"tvm{TVM_VERSION}")
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def target_json(target):
    """The target as a plain JSON-serialisable dict (for manifests)."""
    return json.loads(str(resolve_target(target)))


def target_architecture(target):
    """The CPU architecture the compiled library's host code is for ('x86_64', 'aarch64')."""
    return target_arch(resolve_target(target))
