"""Reshape kernels become views after fusion (the `reshape_views` lowering stage, Relax's
RewriteDataflowReshape): Flatten's reshape, and the copies derived gradients leave (an add's
d/dx feeding a GEMM, which FuseOps cannot fuse). Fewer kernels, the same numbers."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import prim_func_type, relax, relax_call_tir_op

from _lowering_stage import assert_same_steps, without_stage

nn = tvf.nn


class _Residual(nn.Module):
    """Flatten, then x + relu(Linear(x)) into a Linear: the add's d/dx and the bias adds' d/dx
    are copies that feed GEMMs."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        x = nn.Flatten()(x)
        return self.out(x + tvf.ops.relu(self.inner(x)))


def _compile(monkeypatch, with_stage, batch=6):
    without_stage(monkeypatch, "reshape_views", with_stage)
    tvf.manual_seed(0)
    return tvf.compile_training(_Residual(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(batch, 2, 4), labels=(batch,))


def _reshape_kernels_called(module):
    """Names of the kernels call_tir calls whose body is only a reshape (or copy)."""
    lowered = module._lowered
    kernels = {gv.name_hint: f for gv, f in lowered.functions.items()
               if isinstance(f, prim_func_type())}
    called = set()

    def visit(expr):
        if isinstance(expr, relax.Call) and expr.op.same_as(relax_call_tir_op()):
            called.add(expr.args[0].name_hint)

    for func in lowered.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return {n for n in called if n in kernels and relax.analysis.has_reshape_pattern(kernels[n])}


def test_no_reshape_or_copy_kernel_is_called(monkeypatch):
    assert _reshape_kernels_called(_compile(monkeypatch, False))  # what the stage removes
    assert not _reshape_kernels_called(_compile(monkeypatch, True))


@pytest.mark.parametrize("batch", [6, "n"])
def test_the_steps_numbers_do_not_change(monkeypatch, batch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5 if batch == "n" else 6, 2, 4)).astype("float32")
    y = np.arange(len(x)) % 4
    assert_same_steps(lambda with_stage: _compile(monkeypatch, with_stage, batch), x, y,
                      state_rtol=1e-6)
