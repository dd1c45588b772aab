"""The derived max-pool gradient, scheduled as a train step builds it, in float32: the whole dy
of a window goes to its first maximal element in scan order (the padding never receives any;
a window of -inf gives it to its first element), element for element as the explicit
gradient and a numpy model of the rule, with ties, -inf, the lowest float and windows of
nothing else.

Its form: windows that do not overlap (stride == kernel) find their first maximum inline, in
the gradient's own pass (no (position, value) tuple reduction, which the schedules run on
scalars); overlapping windows find it in one vectorized pass of their own, and no part of
the per-phase gather keeps a range guard in its loop (a guard on the vector columns made
two of max-pool k3 s2 p1's four phases scalar)."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target

LOWEST = np.finfo(np.float32).min


def _kernel(grad, x, dy, target):
    func = te.create_prim_func([dy, x, grad])
    scheduled, rule = cpu_schedule.schedule_prim_func(func, target)
    return tvm.compile(scheduled, target=target), rule, func


def _gradients(forward, shape, attrs, target):
    """{derived, explicit: (compiled kernel, rule, unscheduled PrimFunc)}, dy's shape."""
    x = te.placeholder(shape, "float32", name="x")
    out = forward.te_forward(x, **attrs)
    dy = te.placeholder([int(d) for d in out.shape], "float32", name="dy")
    kernels = {}
    for kind in ("derived", "explicit"):
        if kind == "explicit" and forward is not ops.max_pool2d:
            continue
        grad = forward.te_grad(dy, x, derived=kind == "derived", **attrs)[0]
        kernels[kind] = _kernel(grad, x, dy, target)
    return kernels, [int(d) for d in dy.shape]


def _run(lib, x, dy):
    out = tvm.runtime.empty(x.shape, "float32", tvm.cpu())
    lib(to_device(dy), to_device(x), out)
    return out.numpy()


def _rule(x, dy, kernel, stride, padding, is_max=True):
    """numpy: per window, the extreme of its elements and the padding, dy to the first
    element in scan order equal to it, unless that is a padding element or there is none.
    ops.max_pool2d's (is_max): the max of the elements inside x only (-inf for a window of
    -inf). te.min's (min_pool2d): from the highest value, the padding counting as that."""
    sign = 1 if is_max else -1
    worst = np.float32(-np.inf if is_max else LOWEST)
    dx = np.zeros_like(x)
    h, w = x.shape[2:]
    for b, ch, oh, ow in np.ndindex(dy.shape):
        points = [(oh * stride + rh - padding, ow * stride + rw - padding)
                  for rh in range(kernel) for rw in range(kernel)]
        if is_max:  # the padding is no element
            points = [(i, j) for i, j in points if 0 <= i < h and 0 <= j < w]
        vals = [sign * x[b, ch, i, j] if 0 <= i < h and 0 <= j < w else worst
                for i, j in points]
        top = max([worst] + vals)
        hit = next((e for e, v in enumerate(vals) if v == top), None)
        if hit is not None:
            i, j = points[hit]
            if 0 <= i < h and 0 <= j < w:
                dx[b, ch, i, j] += dy[b, ch, oh, ow]
    return dx


def _assert_close(got, want, name):
    # where windows overlap, an element's dys are summed in another order: float rounding
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=name)


def _inputs(shape, seed):
    rng = np.random.default_rng(seed)
    ties = rng.integers(0, 3, shape).astype("float32")
    specials = rng.choice(np.array([-np.inf, LOWEST, -1.0, 0.0, 2.0], "float32"), shape)
    all_inf = np.full(shape, -np.inf, "float32")
    all_inf[..., ::3, ::2] = LOWEST
    plain = rng.standard_normal(shape).astype("float32")
    return {"ties": ties, "specials": specials, "-inf and lowest": all_inf, "plain": plain}


@tvf.op
def min_pool2d(x, kernel=2, stride=2, padding=0):
    """A min over windows, padded with the highest value: a Min combiner's derived gradient."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * padding - kernel) // stride + 1, (w + 2 * padding - kernel) // stride + 1
    rh, rw = te.reduce_axis((0, kernel), "rh"), te.reduce_axis((0, kernel), "rw")

    def body(b, ch, i, j):
        r, q = i * stride + rh - padding, j * stride + rw - padding
        inside = te.all(r >= 0, r < h, q >= 0, q < w)
        return te.min(te.if_then_else(inside, x[b, ch, r, q], te.max_value(x.dtype)),
                      axis=[rh, rw])

    return te.compute((n, c, ho, wo), body, name="min_pool2d")


# (kernel, stride, padding, input size): non-overlapping (inline first), with and without
# padding and a ragged edge; overlapping (a position pass and the gather over covering
# windows), with stride 1 too; windows of more than 16 elements (the tuple reduction's
# positions): 5x5 with 3x3 covering windows (the gather), 7x7 with 4x4 (more than 9: the
# per-phase parts, the positions zero-extended with dy)
GEOMETRIES = [(2, 2, 0, 8), (2, 2, 1, 7), (3, 3, 0, 8), (3, 3, 1, 9), (3, 2, 1, 8),
              (3, 2, 1, 9), (3, 2, 0, 8), (3, 1, 1, 6), (2, 1, 0, 5), (5, 2, 2, 8),
              (7, 2, 3, 8)]


@pytest.mark.parametrize("kernel, stride, padding, size", GEOMETRIES)
def test_derived_max_pool_gradient_follows_the_first_max_rule(kernel, stride, padding, size):
    target = resolve_target("x86")
    shape = (2, 3, size, size)
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    kernels, dy_shape = _gradients(ops.max_pool2d, shape, attrs, target)
    for name, x in _inputs(shape, kernel * 10 + size).items():
        dy = np.random.default_rng(size).standard_normal(dy_shape).astype("float32")
        want = _rule(x, dy, kernel, stride, padding)
        derived = _run(kernels["derived"][0], x, dy)
        _assert_close(derived, want, name)
        _assert_close(_run(kernels["explicit"][0], x, dy), derived, name)


@pytest.mark.parametrize("kernel, stride, padding, size", [(2, 2, 0, 8), (3, 2, 1, 8),
                                                           (2, 2, 1, 7)])
def test_derived_min_pool_gradient_follows_the_first_min_rule(kernel, stride, padding, size):
    target = resolve_target("x86")
    shape = (2, 3, size, size)
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    kernels, dy_shape = _gradients(min_pool2d, shape, attrs, target)
    for name, x in _inputs(shape, size).items():
        x = -x  # +inf and the highest value where the max inputs had -inf and the lowest
        dy = np.random.default_rng(size).standard_normal(dy_shape).astype("float32")
        want = _rule(x, dy, kernel, stride, padding, is_max=False)
        _assert_close(_run(kernels["derived"][0], x, dy), want, name)


def _blocks(func):
    """{name: block} of the unscheduled kernel's stages."""
    sch = tvm.s_tir.Schedule(func)
    return {sch.get(b).name_hint: sch.get(b)
            for b in sch.get_child_blocks(sch.get_sblock("root"))}


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_non_overlapping_windows_find_their_first_max_in_the_gradient_pass(name):
    # before: a (position, value) tuple reduction on scalars, then the gather: 17x the
    # forward at b32 64@28 k2 on one AVX-512 core (1.1x now)
    kernels, _ = _gradients(ops.max_pool2d, (2, 8, 12, 12), dict(kernel=2), resolve_target(name))
    _, rule, func = kernels["derived"]
    assert "first" not in rule and "deinterleaved x]" in rule, rule
    assert list(_blocks(func)) == ["max_pool2d_dx0"]


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
def test_overlapping_windows_find_their_first_max_in_a_vector_pass_and_gather_unguarded(name):
    # before: the tuple reduction on scalars, then four per-phase parts (two of them scalar
    # for a guard on the columns) and their interleave: 12x the forward at b32 64@28 k3 s2
    # p1 on one AVX-512 core (1.4x now)
    kernels, _ = _gradients(ops.max_pool2d, (2, 8, 12, 12), dict(kernel=3, stride=2, padding=1),
                            resolve_target(name))
    _, rule, func = kernels["derived"]
    assert "max_pool2d_first=tiled[window" in rule, rule  # not the scalar tuple reduction
    # the padded window's elements come from a copy of x's keys padded with NaN: no guarded
    # read, and no select of a clamped one (TVM drops the clamps under a select)
    assert "deinterleaved x_key_pad" in rule, rule
    # one vector pass (the forward reads x padded with -inf: the gather is that copy's
    # adjoint, read back at x's elements)
    assert "max_pool2d_padded_dx0=spatial[split 2x2, unrolled, v6" in rule, rule
    blocks = _blocks(func)
    assert len(blocks["max_pool2d_first"].writes) == 1  # positions only
    assert not [n for n in blocks if "_p0" in n or "_p1" in n]  # no per-phase parts
    # the gather reads dy and the positions from zero-padded copies: a select of in-bounds
    # reads per covering window, no guarded load
    gather = str(blocks["max_pool2d_dmax_pool2d_padded0"].body)
    assert "if_then_else" not in gather and "dy_pad" in gather and "first_pad" in gather


@tvf.op
def max_where(x):
    """A row max skipping column 1 by a reduction's where= condition, which TVM 0.27's
    lowering drops: the op is refused with a clear error."""
    k = te.reduce_axis((0, x.shape[1]), "k")
    return te.compute((x.shape[0],), lambda i: te.max(x[i, k], axis=k, where=k != 1), name="mw")


@tvf.op
def max_skipping(x):
    """The same max with the condition in the value, as the error tells."""
    k = te.reduce_axis((0, x.shape[1]), "k")
    return te.compute((x.shape[0],), lambda i: te.max(
        te.if_then_else(k != 1, x[i, k], te.min_value(x.dtype)), axis=k), name="ms")


@tvf.op
def max_of_sum(a, b):
    """max over k of a[i, k] + b[k]: b's elements are read by every row (windows overlap)."""
    k = te.reduce_axis((0, a.shape[1]), "k")
    return te.compute((a.shape[0],), lambda i: te.max(a[i, k] + b[k], axis=k), name="ms")


def _first_argmax(v, allowed):
    return max(allowed, key=lambda k: (v[k], -k))


@pytest.mark.parametrize("n", [5, 40])  # a scanned window, and a tuple reduction's
def test_a_max_reduction_with_a_condition_is_refused_and_its_rewrite_skips_the_excluded(n):
    # the where= condition vanished in TVM's lowering: the forward was the max over every
    # column (9 here), and the tuple reduction's gradient followed it
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (6, n)).astype("float64")
    x[:, 1] = 9.0  # the largest, but excluded
    dy = rng.standard_normal(6)
    with pytest.raises(ValueError, match=r"op 'max_where': the reduction 'mw' has a where="):
        max_where(x)
    with pytest.raises(ValueError, match="where="):
        max_where.vjp(dy, x, derived=True)
    allowed = [k for k in range(n) if k != 1]
    np.testing.assert_array_equal(max_skipping(x), x[:, allowed].max(axis=1))
    (dx,) = max_skipping.vjp(dy, x, derived=True)
    want = np.zeros_like(x)
    for i in range(6):
        want[i, _first_argmax(x[i], allowed)] = dy[i]
    np.testing.assert_array_equal(dx, want)


def test_a_small_max_reduction_over_a_shared_operand_routes_each_dy_once():
    rng = np.random.default_rng(2)
    a = rng.integers(0, 3, (6, 5)).astype("float64")
    b = rng.integers(0, 2, 5).astype("float64")
    dy = rng.standard_normal(6)
    da, db = max_of_sum.vjp(dy, a, b, derived=True)
    want_a, want_b = np.zeros_like(a), np.zeros_like(b)
    for i in range(6):
        k = _first_argmax(a[i] + b, range(5))
        want_a[i, k] += dy[i]
        want_b[k] += dy[i]
    np.testing.assert_array_equal(da, want_a)
    np.testing.assert_allclose(db, want_b, rtol=1e-12)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (2, 2, 0)])
def test_infinite_dy_reaches_the_first_max_unchanged(kernel, stride, padding):
    # dy goes through zero-padded copies (a sum of one term, not a max's identity, which
    # would make -inf the lowest finite value) and masks of its bits
    target = resolve_target("x86")
    shape = (1, 2, 8, 8)
    kernels, dy_shape = _gradients(ops.max_pool2d, shape,
                                   dict(kernel=kernel, stride=stride, padding=padding), target)
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    dy = np.random.default_rng(4).standard_normal(dy_shape).astype("float32")
    dy.flat[::5] = -np.inf
    dy.flat[1::7] = np.inf
    with np.errstate(invalid="ignore"):  # inf - inf where two windows pick one element: NaN
        want = _rule(x, dy, kernel, stride, padding)
    _assert_close(_run(kernels["derived"][0], x, dy), want, "infinite dy")


@pytest.mark.parametrize("attrs", [dict(kernel=5, stride=1, padding=2),
                                   dict(kernel=(5, 4), stride=2, padding=2),
                                   dict(kernel=5, stride=4, padding=(1, 0))])
def test_large_padded_windows_of_minus_inf_give_dy_to_x_not_the_padding(attrs):
    # Windows of more than 16 elements find their first max by the (position, value) tuple
    # reduction, which took the padding (-inf, and earlier in the window) as the first max
    # of a window of -inf: the derived gradient dropped dy (PyTorch's goes to the first
    # element of x). A sweep against PyTorch found it (kernels 5x5, 5x4 with padding).
    x = np.full((1, 2, 6, 6), -np.inf, np.float32)
    x[0, 1, 3:, 3:] = np.arange(9, dtype=np.float32).reshape(3, 3)  # and real values
    y = ops.max_pool2d(x, **attrs)
    dy = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    explicit = ops.max_pool2d.vjp(dy, x, derived=False, **attrs)[0]
    derived = ops.max_pool2d.vjp(dy, x, derived=True, **attrs)[0]
    np.testing.assert_array_equal(derived, explicit)
    np.testing.assert_allclose(derived.sum(), dy.sum(), rtol=1e-5)  # every window's dy lands
