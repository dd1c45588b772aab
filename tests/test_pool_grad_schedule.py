"""Max-pool gradient kernels compile to straight-line code: no load that depends on which
element of a window is the max (such a load is a branch per element, mispredicted on real
data wherever LLVM does not vectorize the loop itself)."""

import re

import pytest

from tvmfront import ops
from tvmfront._tvm import te, tvm
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target


def _grad_kernel_ir(shape, **attrs):
    """(rule, LLVM IR) of max_pool2d's explicit gradient kernel with the default schedule."""
    target = resolve_target("x86")
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(ops.max_pool2d.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, **attrs)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), target)
    lib = tvm.compile(func, target=target)
    return rule, "".join(m.inspect_source("ll") for m in [lib.mod, *lib.mod.imports])


def _kernel_bodies(ir):
    """The IR of the functions that compute: the kernel and its parallel closures."""
    parts = re.split(r"\n(?=define )", ir)
    return "\n".join(p for p in parts if re.match(r"define [^\n]*@(main_compute_|__tvm_parallel)", p))


@pytest.mark.parametrize("shape", [(64, 6, 16, 16), (64, 16, 4, 4), (4, 8, 28, 28)])
def test_max_pool_gradient_loads_dy_unconditionally(shape):
    # LeNet's 6@16 k2 gradient ran in a parallel loop, where LLVM does not vectorize: the
    # select of dy became a branch around its load per element, 295 us against a 7 us
    # forward (42x); with dy loaded first and selected, 2.4x.
    rule, ir = _grad_kernel_ir(shape, kernel=2)
    body = _kernel_bodies(ir)
    assert body, "no kernel function found in the LLVM IR"
    assert "masked.load" not in body and "if_then" not in body, rule
