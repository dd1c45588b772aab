"""A GEMM fused with a pointwise epilogue that reads an operand as large as its output (the
Transformer's d/dx of ff2 with gelu_grad, which reads the forward's pre-activation; a conv's
d/dx with relu_grad) runs the epilogue as a pass of its own after the register tiles, reading
that operand contiguously once: absorbed into each tile's write-back it read 8 rows of 128
bytes 2 KiB apart per tile, which no prefetcher follows (in a train step, 3.25 ms against
1.25 + 0.60 ms for the two kernels apart; see schedule/spatial._streamed_operands).
An epilogue reading only a vector broadcast along the output (a bias) still joins the
write-back. Both still compute numpy's result.
"""

import math

import numpy as np

from tvmfront import ops
from tvmfront._tvm import s_tir, te

from _scheduled import run, schedule

M, N, K = 256, 64, 128  # dx [M, K] = dy [M, N] @ w [N, K]


def _loops(sch, name):
    return {sch.get(lp).loop_var.name for lp in sch.get_loops(sch.get_sblock(name))}


def _gelu_grad(dy, x):
    erf = np.vectorize(math.erf)
    return dy * (0.5 * (1 + erf(x / math.sqrt(2))) + x / math.sqrt(2 * math.pi)
                 * np.exp(-0.5 * x * x))


def test_gelu_grad_after_a_gemm_runs_after_the_tiles():
    dy, w = te.placeholder((M, N), name="dy"), te.placeholder((N, K), name="w")
    x = te.placeholder((M, K), name="x")
    dx = ops.dense.te_grad(dy, te.placeholder((M, K), name="unused"), w)[0]
    out = ops.gelu.te_grad(dx, x)[0]
    func, rule, target = schedule([dy, w, x], out)
    assert "+gelu_grad" not in rule and "gelu_grad=spatial[" in rule, rule
    # The epilogue reads x under none of the reduction's loops: once per element, in order.
    sch = s_tir.Schedule(func)
    update = next(b for b in ("dense_dx_update", "dense_dx") if _has_block(sch, b))
    assert not _loops(sch, "gelu_grad") & _loops(sch, update)
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in ((M, N), (N, K), (M, K))]
    np.testing.assert_allclose(run(func, target, args, [(M, K)])[0],
                               _gelu_grad(args[0] @ args[1], args[2]), rtol=1e-4, atol=1e-4)


def test_a_bias_and_relu_still_join_the_write_back():
    x, w = te.placeholder((M, N), name="x"), te.placeholder((K, N), name="w")
    b = te.placeholder((K,), name="b")
    y = ops.dense.te_forward(x, w)
    out = te.compute((M, K), lambda i, j: te.max(y[i, j] + b[j], 0.0), name="bias_relu")
    func, rule, target = schedule([x, w, b], out)
    assert "+bias_relu" in rule, rule
    rng = np.random.default_rng(0)
    args = [rng.standard_normal(s).astype("float32") for s in ((M, N), (K, N), (K,))]
    np.testing.assert_allclose(run(func, target, args, [(M, K)])[0],
                               np.maximum(args[0] @ args[1].T + args[2], 0), rtol=1e-4,
                               atol=1e-4)


def _has_block(sch, name):
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - no such block
        return False
    return True


def test_a_convolution_keeps_its_residual_epilogue_in_the_write_back():
    """After a convolution (a window read) the epilogue stays in the write-back even when it
    reads an operand of the output's size: apart, its conv + residual add + ReLU ran slower."""
    x, w = te.placeholder((4, 16, 16, 16), name="x"), te.placeholder((16, 16, 3, 3), name="w")
    r = te.placeholder((4, 16, 16, 16), name="r")
    y = ops.conv2d.te_forward(x, w, padding=1)
    out = te.compute(y.shape, lambda *i: te.max(y(*i) + r(*i), 0.0), name="add_relu")
    func, rule, target = schedule([x, w, r], out)
    assert "+add_relu" in rule, rule
