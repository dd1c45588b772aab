"""The one place tvmfront imports TVM from.

Every other module takes TVM names from here, so a rename in TVM (0.27 renamed
StructInfo to Type, moved TIR to ``tirx``/``s_tir``) costs one edit.
"""

import tvm
import tvm_ffi
from tvm import relax, te, tirx
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.runtime import load_module

__all__ = [
    "tvm", "te", "relax", "tirx", "PyExprMutator", "mutator", "load_module",
    "TVM_VERSION", "register_global_func", "to_device", "Target", "structural_equal",
    "device_for", "virtual_machine", "call_tir_with_grad_op", "llvm_system_cpu",
]

TVM_VERSION = tvm.__version__
register_global_func = tvm_ffi.register_global_func
structural_equal = tvm_ffi.structural_equal
Target = tvm.target.Target


def llvm_system_cpu():
    """LLVM's name for the host CPU (e.g. 'znver3'), used as -mcpu."""
    from tvm.target import codegen

    return codegen.llvm_get_system_cpu()


def device_for(kind):
    """Runtime device for a target kind name ('llvm' -> host CPU, 'cuda' -> GPU 0)."""
    return tvm.cuda(0) if kind == "cuda" else tvm.cpu()


def virtual_machine(lib, device):
    return relax.VirtualMachine(lib, device)


def to_device(array, device=None):
    """numpy array -> TVM runtime tensor on `device` (host CPU by default)."""
    return tvm.runtime.tensor(array, device or tvm.cpu())


def call_tir_with_grad_op():
    return tvm.ir.Op.get("relax.call_tir_with_grad")


# ---- default CPU schedules (tvmfront.schedule) ----------------------------------------------
from tvm import s_tir  # noqa: E402  (schedulable TIR: s_tir.Schedule, s_tir.dlight)
from tvm import sym as arith  # noqa: E402  (detect_linear_equation)
from tvm.s_tir import dlight  # noqa: E402

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
