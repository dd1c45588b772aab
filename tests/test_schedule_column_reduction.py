"""Sums over leading axes into the last one ([rows, C] -> [C]: a bias's gradient, a layer
norm's dgamma and dbeta) with work for several cores split the rows across the cores, each
streaming whole rows into vector partial sums (reductions._column_reduction); small or
symbolic ones keep the rules they had."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, tirx, to_device, tvm
from tvmfront.target import resolve_target

TARGET = resolve_target("x86")


def _run(inputs, out, arrays):
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), TARGET)
    lib = tvm.compile(func, target=TARGET)
    result = tvm.runtime.empty(tuple(int(d) for d in out.shape), "float32", tvm.cpu())
    lib(*[to_device(a) for a in arrays], result)
    return rule, result.numpy()


@pytest.mark.parametrize("rows,cols", [(1024, 512), (1024, 384), (16 * 64, 128)])
def test_bias_gradient_splits_its_rows_across_the_cores(rows, cols):
    dy = te.placeholder((rows, cols), name="dy")
    x, b = te.placeholder((rows, cols), name="x"), te.placeholder((cols,), name="b")
    grad = ops.bias_add.te_grad(dy, x, b, axis=-1)[1]
    g = np.random.default_rng(0).standard_normal((rows, cols)).astype("float32")
    rule, got = _run([dy], grad, [g])
    if TARGET.attrs.get("num-cores", 1) > 1:
        assert "tiled[columns, rows over" in rule, rule
    np.testing.assert_allclose(got, g.astype("float64").sum(0), rtol=1e-4, atol=1e-3)


def test_a_weighted_column_sum_over_two_leading_axes():
    # dgamma's shape: sum over (batch, time) of dy * a per-row factor
    dy = te.placeholder((16, 64, 128), name="dy")
    s = te.placeholder((16, 64), name="s")
    b, t = te.reduce_axis((0, 16), "b"), te.reduce_axis((0, 64), "t")
    out = te.compute((128,), lambda c: te.sum(dy[b, t, c] * s[b, t], axis=[b, t]), name="dg")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((16, 64, 128)).astype("float32"),
              rng.standard_normal((16, 64)).astype("float32")]
    rule, got = _run([dy, s], out, arrays)
    if TARGET.attrs.get("num-cores", 1) > 1:
        assert "dg=tiled[columns" in rule, rule
    want = np.einsum("btc,bt->c", arrays[0].astype("float64"), arrays[1])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_small_and_symbolic_column_sums_keep_their_rules():
    dy = te.placeholder((64, 256), name="dy")  # an MLP's bias at batch 64: one core's work
    x, b = te.placeholder((64, 256), name="x"), te.placeholder((256,), name="b")
    _, rule = cpu_schedule.schedule_prim_func(
        te.create_prim_func([dy, ops.bias_add.te_grad(dy, x, b, axis=-1)[1]]), TARGET)
    assert "columns" not in rule, rule
    n = tirx.Var("n", "int64")
    dy = te.placeholder((n, 512), name="dy")
    x, b = te.placeholder((n, 512), name="x"), te.placeholder((512,), name="b")
    _, rule = cpu_schedule.schedule_prim_func(
        te.create_prim_func([dy, ops.bias_add.te_grad(dy, x, b, axis=-1)[1]]), TARGET)
    assert "columns" not in rule, rule
