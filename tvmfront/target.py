"""Named compilation targets: a short name or a raw TVM target dict -> a TVM Target.

The target is always an argument (never a global), so later targets slot in as new rows.
"""

import json
import os

from ._tvm import TVM_VERSION, Target, llvm_system_cpu
from .errors import TargetError


def _host_x86():
    # -mcpu set to the host CPU lets LLVM use every vector extension this machine has.
    return {"kind": "llvm", "mcpu": llvm_system_cpu(), "num-cores": os.cpu_count() or 1}


# name -> function returning a TVM target dict. One row per target family.
_NAMED_TARGETS = {
    "x86": _host_x86,
    "llvm": _host_x86,
}


def targets():
    """Names accepted wherever a target is asked for (besides raw TVM target dicts)."""
    return sorted(_NAMED_TARGETS)


def resolve_target(target):
    """'x86' | TVM target dict | tvm Target -> tvm Target. Unknown names raise TargetError."""
    if isinstance(target, Target):
        return target
    if isinstance(target, str):
        if target not in _NAMED_TARGETS:
            raise TargetError(f"unknown target {target!r}; valid names: {', '.join(targets())} "
                              "(or a TVM target dict such as {'kind': 'llvm', 'mcpu': 'znver3'})")
        return Target(_NAMED_TARGETS[target]())
    if isinstance(target, dict):
        try:
            return Target(target)
        except Exception as err:  # TVM raises ValueError/TVMError with its own wording
            raise TargetError(f"invalid TVM target dict {target!r}: {err}") from None
    raise TargetError(f"target must be a name ({', '.join(targets())}) or a TVM target dict, "
                      f"got {type(target).__name__}")


def target_key(target):
    """A filesystem-safe key naming what changes compiled code: kind, CPU / arch, TVM version."""
    t = resolve_target(target)
    kind = t.kind.name
    detail = str(t.attrs.get("mcpu", "") or t.attrs.get("arch", "") or "generic")
    return f"{kind}-{detail}-tvm{TVM_VERSION}".replace("/", "_")


def target_json(target):
    """The target as a plain JSON-serialisable dict (for manifests)."""
    return json.loads(str(resolve_target(target)))
