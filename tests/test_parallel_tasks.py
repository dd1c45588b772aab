"""A spatial kernel's parallel loop runs a few hundred tasks, not one per vector: the body of a
parallel loop is each task's own code, and tvmfront.denormals puts the denormal mode's check
(a read of MXCSR) there. relu over b32 64@28 had one parallel iteration per vector of 14
(114688): 810 us on one AVX-512 EPYC core, 165 us in 256 tasks."""

import numpy as np
import pytest

from tvmfront import ops, tir_walk
from tvmfront._tvm import te, tirx, tvm
from tvmfront.build import compile_kernels
from tvmfront.schedule import params, schedule_prim_func
from tvmfront.target import resolve_target


def _parallel_extents(func):
    return [int(s.extent) for s in tir_walk.statements(func.body)
            if type(s).__name__ == "For" and s.kind == tirx.ForKind.PARALLEL]


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("which", ["relu", "relu_grad"])
def test_an_elementwise_kernel_runs_in_tasks(name, which):
    target = resolve_target(name)
    shape = (32, 64, 28, 28)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(shape, "float32", name="dy")
    tensors = [x, ops.relu.te_forward(x)] if which == "relu" else \
        [dy, x, ops.relu.te_grad(dy, x)[0]]
    func, rule = schedule_prim_func(te.create_prim_func(tensors), target)
    assert "parallel" in rule, rule
    assert _parallel_extents(func) == [params.PARALLEL_TASKS], (_parallel_extents(func), rule)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(shape).astype("float32") for _ in tensors[:-1]]
    out = tvm.runtime.empty(shape, "float32", tvm.cpu())
    compile_kernels(func, target)["main"](*[tvm.runtime.tensor(a) for a in args], out)
    want = np.maximum(args[0], 0) if which == "relu" else np.where(args[1] > 0, args[0], 0)
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("shape, extent", [((7, 1031), 1031), ((2, 64, 8, 64), 1024)])
def test_a_prime_or_short_parallel_loop_stays_one_loop(shape, extent):
    """A prime extent over PARALLEL_TASKS_MAX has no divisor to split by (7 x 1031: 1031
    iterations), and a loop of at most PARALLEL_TASKS_MAX iterations is not split (1024
    vectors of 64): each stays the one parallel loop it was."""
    x = te.placeholder(shape, "float32", name="x")
    func, rule = schedule_prim_func(te.create_prim_func([x, ops.relu.te_forward(x)]),
                                    resolve_target("x86"))
    assert _parallel_extents(func) == [extent], (_parallel_extents(func), rule)


def test_softmax_rows_run_in_tasks():
    """The same for a kernel computed row by row (attention's softmax: 4096 rows of 64, each
    a parallel iteration: 185-222 -> 170-178 us in 256 tasks, one core)."""
    x = te.placeholder((16, 4, 64, 64), "float32", name="x")
    func, rule = schedule_prim_func(te.create_prim_func([x, ops.softmax.te_forward(x, axis=-1)]),
                                    resolve_target("x86"))
    assert "fused rows of 64" in rule, rule
    assert _parallel_extents(func) == [params.PARALLEL_TASKS], (_parallel_extents(func), rule)


def test_a_kernel_with_an_if_then_else_is_not_split_into_gathers():
    """TVM runs a vector loop holding an if_then_else as scalars (autodiff's relu gradient,
    x <= 0 ? 0 : 1, had one); under a task's serial loop LLVM then vectorized across that
    loop's iterations, 14 elements apart, by gathers and scatters: 916 -> 3960 us. Such a
    loop stays as it was. (autodiff's relu gradient is a select now: an if_then_else written
    out here.)"""
    shape = (32, 64, 28, 28)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(shape, "float32", name="dy")
    dx = te.compute(shape, lambda *i: te.if_then_else(
        x(*i) <= tirx.const(0, "float32"), tirx.const(0, "float32"),
        tirx.const(1, "float32")) * dy(*i), name="relu_dx")
    target = resolve_target("x86")
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), target)
    llvm_ir = compile_kernels(func, target).mod.inspect_source("ll")
    assert "masked.gather" not in llvm_ir and "masked.scatter" not in llvm_ir, rule


def test_a_derived_relu_gradient_is_a_select_and_runs_in_tasks():
    """autodiff's derivative of relu's max, x <= 0 ? 0 : 1, reads nothing: a select, not an
    if_then_else, so that its kernel vectorizes and runs in tasks (869 -> 327 us, one core)."""
    shape = (32, 64, 28, 28)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(shape, "float32", name="dy")
    dx = ops.relu.te_grad(dy, x, derived=True)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), resolve_target("x86"))
    assert _parallel_extents(func) == [params.PARALLEL_TASKS], (_parallel_extents(func), rule)
