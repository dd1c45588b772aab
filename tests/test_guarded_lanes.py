"""A GEMM-family tile does not vectorize an axis that a guarded read's condition reads: TVM
scalarizes a vector loop whose if_then_else varies along the lanes. The derived d/dx of
LeNet's second convolution (b64 6->16 @8 5x5) reads w guarded by the kernel's bounds in the
output column; AVX2's tile had vectorized those 8 columns and ran scalar, 1338 us against the
explicit d/dx's 130 (one Ice Lake core, AVX2 code); along the batch, 200 us."""

import re

import pytest

from tvmfront import ops
from tvmfront._tvm import te, tvm
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("x_shape,w_shape,padding", [((64, 6, 8, 8), (16, 6, 5, 5), 0),
                                                     ((16, 8, 8, 8), (8, 8, 3, 3), 1)])
def test_derived_conv_dx_multiplies_on_vectors(schedule_for, x_shape, w_shape, padding):
    target = resolve_target(schedule_for)
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    dy = te.placeholder(ops.conv2d.te_forward(x, w, padding=padding).shape, "float32",
                        name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, derived=True, padding=padding)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, w, dx]), target)
    lib = tvm.compile(func, target=target)
    ir = "".join(m.inspect_source("ll") for m in [lib.mod, *lib.mod.imports])
    # multiplies as LLVM writes them: fmul, or fused into fmuladd / fma
    assert re.search(r"fmul <\d+ x float>|(fmuladd|fma)\.v\d+f32", ir), rule
    assert not re.search(r"= fmul float |(fmuladd|fma)\.f32", ir), rule
