"""NaN/Inf debugging: a compiled step that checks every kernel's output and names the first
op that produced a non-finite value.

Under ``tvf.debug_nans()`` (or ``compile_*(..., debug_nans=True)``, or
``TVMFRONT_DEBUG_NANS=1`` at compile time) the lowering skips fusion, so each kernel is one
op, and after every kernel call inserts ``call_packed("tvmfront.check_finite", out, kernel,
function)``. That function, registered here from Python, raises NonFiniteOpError naming the op
and the kernel (``log``; ``sqrt_grad0``, sqrt's gradient for its input 0). The VM runs
bindings in order, so the first check to fail is the first op that went wrong. The checks
change the lowered IR, so debug builds never share a compile-cache entry with normal ones.
"""

import contextlib
import contextvars
import re

import numpy as np

from ._tvm import (PyExprMutator, mutator, register_error, register_global_func, relax,
                   relax_call_tir_op, to_numpy, tvm)
from . import config
from .errors import NonFiniteOpError

CHECK = "tvmfront.check_finite"
_setting = contextvars.ContextVar("tvmfront_debug_nans", default=None)


@contextlib.contextmanager
def debug_nans(enabled=True):
    """Within this block, compile_training / compile_inference build steps that check every
    kernel's output for NaN/Inf and raise NonFiniteOpError naming the first op that made one.
    Slower (no fusion, one check per kernel): for finding a NaN, not for training.

    >>> with tvf.debug_nans():
    ...     module = tvf.compile_training(model, loss, opt, inputs=..., labels=...)
    >>> module.step(x, y)   # NonFiniteOpError: op 'log' (kernel log in loss_adjoint) produced NaN
    """
    token = _setting.set(bool(enabled))
    try:
        yield
    finally:
        _setting.reset(token)


def enabled(explicit=None):
    """The setting in force: the argument, else the innermost debug_nans(), else
    TVMFRONT_DEBUG_NANS=1."""
    if explicit is not None:
        return bool(explicit)
    if _setting.get() is not None:
        return _setting.get()
    return config.debug_nans()


def describe(kernel, kernels):
    """(op name, which kernel of it) from a kernel's name. Relax numbers a repeated name
    ('log', 'log1', 'log2'), so a name that is another kernel's name plus digits is that
    kernel again; an op's gradient kernels are named '<op>_grad<input index>'."""
    base = kernel
    for cut in range(len(kernel) - 1, 0, -1):
        if not kernel[cut:].isdigit():
            break
        if kernel[:cut] in kernels:
            base = kernel[:cut]
    grad = re.fullmatch(r"(.+)_grad(\d+)", base)
    if grad:
        return grad.group(1), f"its gradient for input {grad.group(2)}, kernel {kernel}"
    return base, f"kernel {kernel}"


def _check_finite(tensor, op, where):
    a = to_numpy(tensor) if hasattr(tensor, "device") else np.asarray(tensor)
    bad = ~np.isfinite(a)
    if bad.any():
        nans = int(np.isnan(a).sum())
        what = "NaN" if nans else "Inf"
        raise NonFiniteOpError(
            f"op '{op}' ({where}) produced {what}: {int(bad.sum())} of "
            f"{a.size} values are not finite ({nans} NaN); it is the first kernel of this call "
            f"whose output is not finite")


register_global_func(CHECK, _check_finite, override=True)
register_error(NonFiniteOpError)  # so the error leaves the VM as itself, not a RuntimeError


@mutator
class _InsertChecks(PyExprMutator):
    """After each call_tir binding with a float output, call CHECK on that output."""

    function = ""  # the Relax function being rewritten
    kernels = frozenset()  # names of the module's kernels

    def visit_var_binding_(self, binding):
        super().visit_var_binding_(binding)
        value = binding.value
        if not (isinstance(value, relax.Call) and value.op.same_as(relax_call_tir_op())):
            return
        op, part = describe(value.args[0].name_hint, self.kernels)
        where = f"{part} in {self.function}"
        var = binding.var  # this mutator changes no expression, so bindings keep their vars
        fields = var.ty.fields if isinstance(var.ty, relax.TupleType) else [var.ty]
        for i, ty in enumerate(fields):
            out = relax.TupleGetItem(var, i) if isinstance(var.ty, relax.TupleType) else var
            if str(getattr(ty, "dtype", "")).startswith(("float", "bfloat")):
                self.builder_.emit(relax.Call(
                    relax.ExternFunc(CHECK), [out, tvm.ir.StringImm(op), tvm.ir.StringImm(where)],
                    ty_args=[relax.TupleType([])]))


def insert_finite_checks(mod):
    """The debug stage: every Relax function checks each kernel output as it is computed."""
    mod = relax.transform.ToNonDataflow()(mod)  # checks are impure: no dataflow blocks
    rewriter = _InsertChecks(mod)
    rewriter.kernels = frozenset(gv.name_hint for gv, f in mod.functions.items()
                                 if not isinstance(f, relax.Function))
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.function = gvar.name_hint
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return relax.transform.RemovePurityChecking()(rewriter.builder_.get())
