"""CPU features: which instruction-set extensions a module's code needs, which this CPU has.

Code compiled for a CPU with more features than this one (AVX-512 code on an AVX2 laptop)
dies with SIGILL at its first call, taking the process with it. A module records the features
its target implies (LLVM names: 'avx512f', 'avx2', 'fma', ...), and the runtime refuses, with
a TargetError naming the missing ones, to run code whose features this CPU lacks.

Only instruction-set extensions that LLVM emits in compiled kernels on its own are tracked
(vector and bit-manipulation ISAs). A CPU model also implies system extensions (rdpru, mwaitx,
aes, sha, ...) that a hypervisor may hide from a guest while keeping the model name: counting
those would refuse this machine's own builds and protect nothing, as kernels never use them.
"""

import functools
import json

from .._tvm import host_arch, llvm_cpu_features, llvm_host_cpu_features, target_arch

# LLVM feature name -> Linux /proc/cpuinfo flag, per CPU architecture.
_X86 = {
    "sse": "sse", "sse2": "sse2", "sse3": "pni", "ssse3": "ssse3", "sse4.1": "sse4_1",
    "sse4.2": "sse4_2", "popcnt": "popcnt", "lzcnt": "abm", "bmi": "bmi1", "bmi2": "bmi2",
    "movbe": "movbe", "cx16": "cx16", "f16c": "f16c", "fma": "fma", "avx": "avx",
    "avx2": "avx2", "avxvnni": "avx_vnni", "gfni": "gfni",
    "avx512f": "avx512f", "avx512cd": "avx512cd", "avx512bw": "avx512bw",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512ifma": "avx512ifma",
    "avx512vbmi": "avx512vbmi", "avx512vbmi2": "avx512_vbmi2", "avx512vnni": "avx512_vnni",
    "avx512bitalg": "avx512_bitalg", "avx512vpopcntdq": "avx512_vpopcntdq",
    "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}
_AARCH64 = {
    "neon": "asimd", "fp-armv8": "fp", "fullfp16": "asimdhp", "dotprod": "asimddp",
    "i8mm": "i8mm", "bf16": "bf16", "sve": "sve", "sve2": "sve2",
}
CPU_FLAGS = {"x86_64": _X86, "aarch64": _AARCH64}


def _llvm_target(target):
    """The LLVM target whose code runs on the CPU: the target itself, or a device target's
    host; None when there is none (a CUDA target without a host: TVM's default host)."""
    if not isinstance(target, dict):
        return None
    if target.get("kind") == "llvm":
        return target
    host = target.get("host")
    return host if isinstance(host, dict) and host.get("kind") == "llvm" else None


@functools.lru_cache(maxsize=64)
def _required(target_text):
    target = json.loads(target_text)
    table = CPU_FLAGS.get(target_arch(target), {})
    return tuple(sorted(f for f in llvm_cpu_features(target) if f in table))


def required_features(target):
    """Sorted LLVM names of the tracked CPU features code built for `target` (a TVM target
    dict) may use; () where LLVM cannot tell."""
    llvm = _llvm_target(target)
    return _required(json.dumps(llvm, sort_keys=True)) if llvm else ()


# the /proc/cpuinfo line listing the CPU's features, per architecture
_CPUINFO_KEY = {"x86_64": "flags", "aarch64": "Features"}


def _cpuinfo_flags(key):
    """The flags on the first `key` line of /proc/cpuinfo, or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return set(value.split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def host_features():
    """LLVM names of the tracked features this CPU has, or None when it cannot be told.

    The kernel's /proc/cpuinfo first (it lists only what the OS has enabled: AVX-512 turned off
    by the kernel is absent); elsewhere LLVM's own host detection. None, so nothing is refused,
    when both find nothing: every x86-64 has SSE2 and every aarch64 Linux NEON, so an empty set
    means the detection failed (an emulator showing its host's /proc/cpuinfo)."""
    arch = host_arch()
    table = CPU_FLAGS.get(arch, {})
    flags = _cpuinfo_flags(_CPUINFO_KEY.get(arch, "flags"))
    found = {name for name, flag in table.items() if flag in flags} if flags else set()
    if not found:
        found = {f for f in llvm_host_cpu_features() or () if f in table}
    return frozenset(found) or None


def missing_features(required):
    """The features of `required` this CPU lacks, sorted ([] when it cannot be told)."""
    have = host_features()
    if have is None:
        return []
    return sorted(set(required) - have)
