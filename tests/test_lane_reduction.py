"""Per-channel sums over NCHW (BatchNorm's statistics and gradients): the default schedule
accumulates vectors of partial sums along the contiguous H * W rows (schedule/reductions.py's
_lane_reduction), not one scalar per channel, and the values are numpy's."""

import re

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target

from _scheduled import run

SHAPE = (8, 4, 16, 16)  # 2048 elements per channel: enough vector steps for the rule


def _ref(x, gamma, beta, dy, eps=1e-5):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    g = gamma[None, :, None, None]
    y = xhat * g + beta[None, :, None, None]
    dbeta = dy.sum(axis=(0, 2, 3))
    dgamma = (dy * xhat).sum(axis=(0, 2, 3))
    count = x.size / x.shape[1]
    dx = g / np.sqrt(var + eps) * (dy - dbeta[None, :, None, None] / count
                                   - xhat * dgamma[None, :, None, None] / count)
    return y, dx, dgamma, dbeta


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("which", ["forward", "dx", "dgamma", "dbeta"])
def test_batch_norm_reductions_use_vector_partial_sums(which, name):
    target = resolve_target(name)
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    rng = np.random.default_rng(0)
    x = te.placeholder(SHAPE, name="x")
    gamma, beta = te.placeholder((SHAPE[1],), name="gamma"), te.placeholder((SHAPE[1],), name="b")
    dy = te.placeholder(SHAPE, name="dy")
    args = [(rng.standard_normal(SHAPE) * 3 + 1).astype("float32"),
            rng.standard_normal(SHAPE[1]).astype("float32"),
            rng.standard_normal(SHAPE[1]).astype("float32"),
            rng.standard_normal(SHAPE).astype("float32")]
    y, dx, dgamma, dbeta = _ref(*[a.astype("float64") for a in args])
    if which == "forward":
        out, inputs, want, args = ops.batch_norm.te_forward(x, gamma, beta), [x, gamma, beta], \
            y, args[:3]
    else:
        k = ["dx", "dgamma", "dbeta"].index(which)
        out = ops.batch_norm.te_grad(dy, x, gamma, beta, derived=False)[k]
        inputs, want, args = [dy, x, gamma, beta], [dx, dgamma, dbeta][k], [args[3], *args[:3]]
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    assert "scalar" not in rule and "tiled[lanes v" in rule, rule
    assert f"lanes v{4 * lanes}" in rule, rule  # four vector accumulators per channel
    got, = run(func, target, args, [tuple(int(d) for d in out.shape)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _row_reduction(shape, reducer, axis, name):
    """(scheduled func, rule, target) of a 2-D reduction over `axis` (0: columns, 1: rows)."""
    target = resolve_target("x86")
    x = te.placeholder(shape, name="x")
    r = te.reduce_axis((0, shape[axis]), "r")
    out = te.compute((shape[1 - axis],), lambda i: reducer(x[r, i] if axis == 0 else x[i, r],
                                                           axis=r), name=name)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([x, out]), target)
    return func, rule, target


def test_a_contiguous_output_axis_keeps_the_vector_tile():
    """A sum over rows whose output is contiguous (a column sum) is not a lane reduction."""
    _, rule, _ = _row_reduction((256, 64), te.sum, 0, "colsum")
    assert "lanes" not in rule and ("xv" in rule or "tiled[v" in rule), rule


def test_row_max_takes_lane_partial_maxima():
    """The lanes hold partial results of any reducer TVM can split: a max over long rows."""
    func, rule, target = _row_reduction((8, 4096), te.max, 1, "rowmax")
    assert "rowmax=tiled[lanes v" in rule, rule
    a = np.random.default_rng(1).standard_normal((8, 4096)).astype("float32")
    got, = run(func, target, [a], [(8,)])
    np.testing.assert_array_equal(got, a.max(axis=1))


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_a_sum_to_a_scalar_takes_vector_partial_sums(name):
    """A reduction with no output axis (gradient clipping's sum of squares of a [128, 512]
    gradient) accumulates lanes of partial sums too: it ran one scalar chain (72 -> 3.4 us on
    an AVX-512 core)."""
    target = resolve_target(name)
    g = te.placeholder((128, 512), name="g")
    r0, r1 = te.reduce_axis((0, 128), "r0"), te.reduce_axis((0, 512), "r1")
    out = te.compute((), lambda: te.sum(g[r0, r1] * g[r0, r1], axis=[r0, r1]), name="sumsq")
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([g, out]), target)
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    assert f"sumsq=tiled[lanes v{4 * lanes}]" in rule, rule
    a = np.random.default_rng(3).standard_normal((128, 512)).astype("float32")
    got, = run(func, target, [a], [()])
    np.testing.assert_allclose(got, (a.astype("float64") ** 2).sum(), rtol=1e-5)


def _layer_norm_case(shape, which, seed):
    """(TE output, TE inputs, numpy inputs, float64 reference) of layer norm over the last
    axis of `shape`: its forward, its dx or its dgamma."""
    n = shape[-1]
    rng = np.random.default_rng(seed)
    x, dy = te.placeholder(shape, name="x"), te.placeholder(shape, name="dy")
    gamma, beta = te.placeholder((n,), name="gamma"), te.placeholder((n,), name="beta")
    a = (rng.standard_normal(shape) * 2 + 0.5).astype("float32")
    g, b = rng.standard_normal(n).astype("float32"), rng.standard_normal(n).astype("float32")
    d = rng.standard_normal(shape).astype("float32")
    xd, gd, dd = a.astype("float64"), g.astype("float64"), d.astype("float64")
    rstd = 1 / np.sqrt(xd.var(-1, keepdims=True) + 1e-5)
    xhat = (xd - xd.mean(-1, keepdims=True)) * rstd
    if which == "forward":
        return ops.layer_norm.te_forward(x, gamma, beta), [x, gamma, beta], [a, g, b], \
            xhat * gd + b
    k = ["dx", "dgamma"].index(which)
    out = ops.layer_norm.te_grad(dy, x, gamma, beta, derived=False)[k]
    gg = dd * gd
    dx = rstd * (gg - gg.mean(-1, keepdims=True) - xhat * (gg * xhat).mean(-1, keepdims=True))
    return out, [dy, x, gamma, beta], [d, a, g, b], [dx, (dd * xhat).sum(axis=(0, 1))][k]


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("which", ["forward", "dx", "dgamma"])
def test_short_layer_norm_rows_take_one_vector_accumulator(which, name):
    """Layer norm over rows of 128 (the char Transformer's [B, T, 128]): its per-row sums are
    lane reductions, one vector of partial sums per row on AVX-512 (8 steps), two on AVX2,
    not the scalar tile's strided reads; the values are numpy's."""
    target = resolve_target(name)
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    out, inputs, args, want = _layer_norm_case((4, 64, 128), which, 2)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    # 16 lanes of partial sums: one AVX-512 vector (8 steps) or two AVX2 ones (8 steps each)
    # (", parallel" follows where the rows are work enough for two cores: AVX2's 8 lanes)
    assert lanes in (8, 16) and "ln_var=tiled[lanes v16" in rule, rule
    assert "ln_mean_offset=tiled[lanes v16" in rule, rule
    assert "scalar" not in rule, rule
    got, = run(func, target, args, [tuple(int(s) for s in out.shape)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_attention_softmax_gradient_rows_of_64_are_lane_reductions(name):
    """softmax's gradient over attention rows of 64: its max, sum and dot are lane
    reductions (4 steps of 16 lanes, 8 of 8), and the gradient is s * (dy - sum(dy * s))."""
    target = resolve_target(name)
    shape = (2, 4, 64, 64)
    rng = np.random.default_rng(3)
    x, dy = te.placeholder(shape, name="x"), te.placeholder(shape, name="dy")
    out = ops.softmax.te_grad(dy, x, axis=-1, derived=False)[0]
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([dy, x, out]), target)
    for block in ("sm_max", "sm_sum", "dot"):
        assert f"{block}=tiled[lanes v" in rule, rule
    a = (rng.standard_normal(shape) * 4).astype("float32")
    d = rng.standard_normal(shape).astype("float32")
    s = np.exp(a - a.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    want = s * (d - (d * s).sum(-1, keepdims=True))
    got, = run(func, target, [d, a], [shape])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("op", ["softmax", "softmax_grad"])
def test_attention_sized_softmax_is_computed_row_by_row(op, name):
    """At attention's [16, 4, 64, 64] (1 MiB per tensor, past L2) softmax and its gradient
    are computed row by row (reductions.ROW_FUSION_MIN_BYTES): every stage inside the output's
    row loop, no whole-tensor pass, and the rows split between the cores (the loop was marked
    parallel after the stages moved in, which TVM refused: the kernel fell back to whole
    passes on one core); the values stay numpy's."""
    target = resolve_target({**resolve_target(name).export(), "num-cores": 2})
    shape = (16, 4, 64, 64)
    rng = np.random.default_rng(4)
    x, dy = te.placeholder(shape, name="x"), te.placeholder(shape, name="dy")
    a = (rng.standard_normal(shape) * 4).astype("float32")
    d = rng.standard_normal(shape).astype("float32")
    s = np.exp(a.astype("float64") - a.max(-1, keepdims=True))
    s /= s.sum(-1, keepdims=True)
    if op == "softmax":
        out, inputs, args, want = ops.softmax.te_forward(x, axis=-1), [x], [a], s
    else:
        out = ops.softmax.te_grad(dy, x, axis=-1, derived=False)[0]
        inputs, args, want = [dy, x], [d, a], s * (d - (d * s).sum(-1, keepdims=True))
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    assert re.search(r"sm_max=tiled\[fused rows of 64, lanes v\d+, parallel\]", rule), rule
    assert "sm_sum=" not in rule and "spatial" not in rule, rule  # all inside the row loop
    got, = run(func, target, args, [shape])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("which", ["forward", "dx"])
@pytest.mark.parametrize("cores", [1, 2])
def test_transformer_sized_layer_norm_rows_are_fused_on_several_cores(cores, which):
    """The char Transformer's layer norm, [16, 64, 128] (512 KiB): on two cores computed row by
    row in one parallel loop (reductions.PARALLEL_ROW_FUSION_MIN_BYTES: its four whole passes
    each fork and join, 31 against 20 us at 2 threads), on one core in whole passes (there
    they were faster); the values are numpy's either way."""
    target = resolve_target({**resolve_target("x86").export(), "num-cores": cores})
    shape = (16, 64, 128)
    out, inputs, args, want = _layer_norm_case(shape, which, 5)
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func(inputs + [out]), target)
    fused = re.search(r"ln_mean_offset=tiled\[fused rows of 128, lanes v\d+, parallel\]", rule)
    assert bool(fused) == (cores == 2), rule
    got, = run(func, target, args, [shape])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_two_sums_in_one_pass_are_one_lane_reduction(name):
    # bn_apply's gradient (BatchNorm2d's split ops) sums dy and dy * (x - mean) in one tuple
    # reduction (one block, two outputs), which gets the vector partial sums of a one-output
    # sum: one pass over the activations.
    from tvmfront.ops import norm
    target = resolve_target(name)
    lanes = cpu_schedule.CpuParams(target).lanes("float32")
    rng = np.random.default_rng(0)
    x, dy = te.placeholder(SHAPE, name="x"), te.placeholder(SHAPE, name="dy")
    coef = te.placeholder((3, SHAPE[1]), name="coef")
    args = [rng.standard_normal(SHAPE).astype("float32"),
            (rng.standard_normal(SHAPE) * 3 + 1).astype("float32"),
            rng.standard_normal((3, SHAPE[1])).astype("float32")]
    dy64, x64, c64 = (a.astype("float64") for a in args)
    out = norm.bn_apply.te_grad(dy, x, coef, derived=False)[1]
    sum_dy = dy64.sum((0, 2, 3))
    sum_dyx = (dy64 * (x64 - c64[0][None, :, None, None])).sum((0, 2, 3))
    want = np.stack([-c64[1] * sum_dy, sum_dyx, sum_dy])
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([dy, x, coef, out]), target)
    assert f"bn_grad_sums=tiled[lanes v{4 * lanes}" in rule and "scalar" not in rule, rule
    got, = run(func, target, args, [tuple(int(d) for d in out.shape)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def _symbolic_batch_sum(which, target):
    """(scheduled func, rule) of a sum over a symbolic batch: a per-channel sum over (N, H, W)
    of NCHW (a conv bias's gradient) or layer norm's row sums over [N, T, 128]."""
    n = te.var("batch", dtype="int64")
    if which == "bias_add_grad":
        dy = te.placeholder((n, 6, 16, 16), name="dy")
        r = [te.reduce_axis((0, n), "rn"), te.reduce_axis((0, 16), "rh"),
             te.reduce_axis((0, 16), "rw")]
        out = te.compute((6,), lambda c: te.sum(dy[r[0], c, r[1], r[2]], axis=r), name="db")
        return cpu_schedule.schedule_prim_func(te.create_prim_func([dy, out]), target)
    x, gamma, beta = (te.placeholder((n, 16, 128), name="x"),
                      te.placeholder((128,), name="gamma"), te.placeholder((128,), name="beta"))
    out = ops.layer_norm.te_forward(x, gamma, beta)
    return cpu_schedule.schedule_prim_func(te.create_prim_func([x, gamma, beta, out]), target)


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("which", ["bias_add_grad", "layer_norm"])
def test_sums_over_a_symbolic_batch_are_lane_reductions(which, name):
    # A module compiled for any batch size (inputs=("batch", ...)) has its batch as an outer
    # reduction axis (a conv bias's gradient) or an output axis (layer norm's rows): the
    # lanes split the static contiguous run all the same (LeNet's bias gradient over
    # [batch, 6, 16, 16] took the scalar tile: 42 us against 5 us at a fixed batch of 64).
    target = resolve_target(name)
    func, rule = _symbolic_batch_sum(which, target)
    assert "tiled[lanes v" in rule and "scalar" not in rule, rule
    lib = tvm.compile(func, target=target)
    rng = np.random.default_rng(5)
    for batch in (1, 3, 8):
        if which == "bias_add_grad":
            d = rng.standard_normal((batch, 6, 16, 16)).astype("float32")
            args, want = [d], d.astype("float64").sum(axis=(0, 2, 3))
        else:
            a = (rng.standard_normal((batch, 16, 128)) * 2 + 0.5).astype("float32")
            g, b = (rng.standard_normal(128).astype("float32") for _ in range(2))
            ad = a.astype("float64")
            want = (ad - ad.mean(-1, keepdims=True)) / np.sqrt(ad.var(-1, keepdims=True)
                                                                + 1e-5) * g + b
            args = [a, g, b]
        out = tvm.runtime.empty(want.shape, "float32", tvm.cpu())
        lib(*[to_device(v) for v in args], out)
        np.testing.assert_allclose(out.numpy(), want, rtol=1e-4, atol=1e-4)
