"""Default CPU schedules of kernels whose batch loop is symbolic (a tirx.Var extent).

Each kernel is written in TE over a symbolic leading dimension, scheduled by tvmfront's
default rules, compiled once and run at several sizes (1, a size that the tile factors do not
divide, and SYMBOLIC_EXTENT) against numpy. The schedule must be the one the same kernel gets
at a fixed size (register tiles and vectors on the static axes; the symbolic axis padded to
the tile, not predicated inside it), and no rule may fail on it.
"""

import re

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, tirx, to_device, tvm
from tvmfront.target import resolve_target

SIZES = (1, 7, 64)


def _matmul(n):
    """x [n, 48] @ w[40, 48].T: a Linear layer's forward."""
    x = te.placeholder((n, 48), "float32", name="x")
    w = te.placeholder((40, 48), "float32", name="w")
    k = te.reduce_axis((0, 48), "k")
    out = te.compute((n, 40), lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="dense")
    relu = te.compute((n, 40), lambda i, j: te.max(out[i, j], tirx.const(0.0, "float32")),
                      name="relu")
    return [x, w], relu, lambda a, b: np.maximum(a @ b.T, 0)


def _weight_grad(n):
    """dy [n, 24] and x [n, 32] -> dy.T @ x: a reduction over the symbolic batch."""
    dy = te.placeholder((n, 24), "float32", name="dy")
    x = te.placeholder((n, 32), "float32", name="x")
    b = te.reduce_axis((0, n), "b")
    out = te.compute((24, 32), lambda j, k: te.sum(dy[b, j] * x[b, k], axis=b), name="dw")
    return [dy, x], out, lambda a, c: a.T @ c


def _batch_mean(n):
    """Column means over the batch (BatchNorm's batch statistics, a loss mean)."""
    x = te.placeholder((n, 40), "float32", name="x")
    b = te.reduce_axis((0, n), "b")
    total = te.compute((40,), lambda c: te.sum(x[b, c], axis=b), name="total")
    out = te.compute((40,), lambda c: total[c] / tirx.Cast("float32", n), name="mean")
    return [x], out, lambda a: a.mean(0)


def _two_axis_sum(n):
    """Sum over a static and, innermost, the symbolic axis: a symbolic loop is never unrolled
    (at 64 it would be: TVM's build then fails, "Cannot unroll non-constant loop")."""
    x = te.placeholder((n, 2, 8), "float32", name="x")
    c, b = te.reduce_axis((0, 2), "c"), te.reduce_axis((0, n), "b")
    out = te.compute((8,), lambda j: te.sum(x[b, c, j], axis=[c, b]), name="total")
    return [x], out, lambda a: a.sum((0, 1))


def _conv(n, size=10):
    """3x3 convolution, 4 -> 16 channels: [n, 4, size, size] -> [n, 16, size - 2, size - 2]."""
    x = te.placeholder((n, 4, size, size), "float32", name="x")
    w = te.placeholder((16, 4, 3, 3), "float32", name="w")
    c, kh, kw = (te.reduce_axis((0, e), name) for e, name in ((4, "c"), (3, "kh"), (3, "kw")))
    out = te.compute((n, 16, size - 2, size - 2), lambda b, o, i, j: te.sum(
        x[b, c, i + kh, j + kw] * w[o, c, kh, kw], axis=[c, kh, kw]), name="conv")

    def want(a, f):
        win = np.lib.stride_tricks.sliding_window_view(a, (3, 3), axis=(2, 3))  # n,c,8,8,3,3
        return np.einsum("ncijhw,ochw->noij", win, f)

    return [x, w], out, want


def _strided_matmul(n):
    """x[:, ::2] @ w.T: the batch is the axis to tile, but a strided index (2c) is no einsum,
    so the batch cannot be padded (pad_einsum refuses): the tile keeps to the vectors."""
    x = te.placeholder((n, 64), "float32", name="x")
    w = te.placeholder((40, 32), "float32", name="w")
    c = te.reduce_axis((0, 32), "c")
    out = te.compute((n, 40), lambda i, j: te.sum(x[i, c * 2] * w[j, c], axis=c), name="dense")
    return [x, w], out, lambda a, b: a[:, ::2] @ b.T


def _elementwise(n):
    x = te.placeholder((n, 3, 20), "float32", name="x")
    y = te.placeholder((20,), "float32", name="y")
    out = te.compute((n, 3, 20), lambda b, i, j: x[b, i, j] * 2 + y[j], name="axpy")
    return [x, y], out, lambda a, c: a * 2 + c


def _softmax(n):
    x = te.placeholder((n, 4, 12, 12), "float32", name="x")

    def want(a):
        e = np.exp(a - a.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    return [x], ops.softmax.te_forward(x, axis=-1), want


KERNELS = {"matmul": (_matmul, "dense=tiled["), "weight_grad": (_weight_grad, "dw=tiled["),
           "batch_mean": (_batch_mean, "total=tiled["), "conv": (_conv, "conv=tiled["),
           "strided_matmul": (_strided_matmul, "dense=tiled[v"),
           "two_axis_sum": (_two_axis_sum, "total=tiled[v"),
           "elementwise": (_elementwise, "axpy=spatial[v"),
           "softmax": (_softmax, "softmax=spatial[v")}


def _schedule(build, n):
    target = resolve_target("x86")
    inputs, out, want = build(n)
    failures = {}
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target,
                                                 failures=failures)
    assert failures == {}, failures
    return func, rule, inputs, out, want, target


def _tiles(rule):
    """{block: its schedule's kind and tile, e.g. 'tiled[8xv8'}; a symbolic kernel's pad
    copies left out."""
    return {block: kind for block, kind in re.findall(r"(\w+)=(\w+\[[^,\]]*)", rule)
            if not block.endswith("_pad")}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_symbolic_kernel_is_scheduled_as_the_fixed_one_and_exact(name):
    build, expect = KERNELS[name]
    n = tirx.Var("n", "int64")
    func, rule, inputs, out, want, target = _schedule(build, n)
    assert expect in rule, rule
    assert "scalar" not in rule.split(expect)[1].split("]")[0], rule
    if name != "strided_matmul":  # the tiles of the fixed size (whose batch tile needs no pad)
        _, fixed_rule, *_ = _schedule(build, cpu_schedule.SYMBOLIC_EXTENT)
        assert _tiles(rule) == _tiles(fixed_rule), (rule, fixed_rule)
    lib = tvm.compile(func, target=target)
    rng = np.random.default_rng(0)
    for size in SIZES:
        shapes = [tuple(size if isinstance(d, tirx.Var) else int(d) for d in t.shape)
                  for t in inputs + [out]]
        args = [rng.standard_normal(s).astype("float32") for s in shapes[:-1]]
        result = tvm.runtime.empty(shapes[-1], "float32", tvm.cpu())
        lib(*[to_device(a) for a in args], result)
        np.testing.assert_allclose(result.numpy(), want(*args), rtol=1e-5, atol=1e-5,
                                   err_msg=f"{name} at n={size}")


def test_a_symbolic_register_tile_is_padded_not_predicated():
    """Split by its tile factor, a symbolic axis predicates every point of the register tile
    (the accumulators leave registers, the tile buffer is not compacted: a Linear layer's
    kernel ran ~4x slower). The tile is computed over a padded copy instead: the update
    block carries no predicate."""
    func, rule, *_ = _schedule(_matmul, tirx.Var("n", "int64"))
    assert "+dense_pad" in rule, rule  # the padded output's copy-out, with the epilogue
    predicates = {}

    def visit(node):
        if type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            predicates[node.block.name_hint] = node.predicate

    cpu_schedule._walk_stmts(func.body, visit)
    assert "dense_update" in predicates, sorted(predicates)
    for block in ("dense_update", "dense_init"):
        assert isinstance(predicates[block], tirx.IntImm) and predicates[block].value, \
            (block, predicates[block])


@pytest.mark.parametrize("batch", [64, "symbolic"])
def test_attention_softmax_is_parallel_and_vectorized(batch):
    """Softmax over attention scores [B, H, T, T]: exp vectorized (ops/fastmath.py's, not
    libm's scalar calls) and in parallel like the GEMMs around it. Over a symbolic batch exp is
    a stage of its own (its ~40 operations an element make it parallel; the sums and the
    division stay on one core); at batch 64 (256 KiB, rows of 4 SSE vectors, 4 cores) every
    stage runs row by row in one parallel loop (reductions.PARALLEL_ROW_FUSION_MIN_BYTES)."""
    n = tirx.Var("n", "int64") if batch == "symbolic" else batch
    x = te.placeholder((n, 4, 16, 16), "float32", name="x")
    target = resolve_target({"kind": "llvm", "num-cores": 4})
    func, rule = cpu_schedule.schedule_prim_func(
        te.create_prim_func([x, ops.softmax.te_forward(x, axis=-1)]), target)
    if batch == "symbolic":
        assert "sm_exp=spatial[v" in rule, rule
        assert "parallel" in rule.split("sm_exp=")[1].split("]")[0], rule
        assert "softmax=spatial[v" in rule, rule
    else:
        assert rule == "tvmfront: sm_max=tiled[fused rows of 16, lanes v4, parallel]", rule
    assert {"parallel", "vectorized"} <= cpu_schedule.loop_kinds(func)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_a_window_over_the_weight_is_copied_out_so_the_batch_vectorizes(name):
    # LeNet's second convolution's d/dx sweeps dy [n, 16, 4, 4] over the weight (w[o, c, i -
    # a, j - b] under its bounds; it had been a zero-padded copy, w_pad[o, c, i + 3 - a, j + 3
    # - b]): no einsum, so a symbolic batch could not be padded to whole vectors and the rule
    # vectorized the 8 output columns (half an AVX-512 vector: 267 us against 124 us at a
    # fixed 64). The window read, which does not depend on the batch, is copied out
    # (window_reindex) and the batch vectorizes: 150 us. In AVX2 code the 8 columns are a
    # whole vector, but a vector of them would read the weight under a guard on the columns
    # (the GEMM rule's penalty): the batch vectorizes there too (2-core AVX-512 EPYC, AVX2
    # code at batch 64, the padded copy's columns against this: 342 -> 181 us).
    target = resolve_target(name)
    n = tirx.Var("n", "int64")
    dy = te.placeholder((n, 16, 4, 4), "float32", name="dy")
    x = te.placeholder((n, 6, 8, 8), "float32", name="x")
    w = te.placeholder((16, 6, 5, 5), "float32", name="w")
    dx = ops.conv2d.te_grad(dy, x, w, derived=False)[0]
    failures = {}
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([dy, w, dx]), target,
                                                 failures=failures)
    assert "window copied" in rule, rule
    # the batch's vectors: whole AVX-512 ones (16 lanes; the columns are 8)
    assert re.search(r"conv2d_dx=tiled\[[0-9x]*v(16|32|48|64)[,\]]", rule), rule
    lib = tvm.compile(func, target=target)
    rng = np.random.default_rng(1)
    wv = rng.standard_normal((16, 6, 5, 5)).astype("float32")
    for size in (1, 5, 33, 64):
        d = rng.standard_normal((size, 16, 4, 4)).astype("float32")
        want = np.zeros((size, 6, 8, 8))
        for a in range(4):  # dx = the full correlation of dy with w
            for b in range(4):
                want[:, :, a:a + 5, b:b + 5] += np.einsum("no,ocij->ncij", d[:, :, a, b], wv)
        out = tvm.runtime.empty((size, 6, 8, 8), "float32", tvm.cpu())
        lib(to_device(d), to_device(wv), out)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4,
                                   err_msg=f"batch {size}")
