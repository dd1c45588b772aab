"""Max-pool gradient kernels compile to straight-line code: no load that depends on which
element of a window is the max (such a load is a branch per element, mispredicted on real
data wherever LLVM does not vectorize the loop itself)."""

import re

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, tvm
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target


def _grad_kernel_ir(shape, target="x86", **attrs):
    """(rule, LLVM IR) of max_pool2d's explicit gradient kernel with the default schedule."""
    target = resolve_target(target)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(ops.max_pool2d.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, **attrs)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), target)
    lib = tvm.compile(func, target=target)
    return rule, "".join(m.inspect_source("ll") for m in [lib.mod, *lib.mod.imports])


def _kernel_bodies(ir):
    """The IR of the functions that compute: the kernel and its parallel closures."""
    parts = re.split(r"\n(?=define )", ir)
    kernel = re.compile(r"define [^\n]*@(main_compute_|__tvm_parallel)")
    return "\n".join(p for p in parts if kernel.match(p))


@pytest.mark.parametrize("shape,attrs", [
    ((64, 6, 16, 16), dict(kernel=2)), ((64, 16, 4, 4), dict(kernel=2)),
    ((4, 8, 28, 28), dict(kernel=2)), ((4, 8, 28, 28), dict(kernel=3, stride=2, padding=1)),
    ((2, 4, 9, 9), dict(kernel=3, stride=3, padding=1))])
def test_max_pool_gradient_kernel_has_no_data_dependent_branch(shape, attrs):
    # LeNet's 6@16 k2 gradient ran in a parallel loop, where LLVM does not vectorize: the
    # select of dy became a branch around its load per element, 295 us against a 7 us
    # forward (42x); with dy loaded first and selected, 2.2x. The overlapping k3 s2 p1
    # windows' first-max pass read the padding through guarded loads and picked the
    # position by a chain of selects, both branches (3.5x the forward; 2.4x without).
    rule, ir = _grad_kernel_ir(shape, **attrs)
    body = _kernel_bodies(ir)
    assert body, "no kernel function found in the LLVM IR"
    # a masked load whose mask is a value computed at run time (LLVM's vectorized strided
    # reads of the lowest-padded copy mask with constants: not data-dependent)
    assert not re.search(r"masked\.load[^(]*\([^,]*, <\d+ x i1> %", body), rule
    assert not re.search(r"\bif_(then|else)", body), rule


@pytest.mark.parametrize("attrs", [dict(kernel=2), dict(kernel=3, stride=2, padding=1),
                                   dict(kernel=3, stride=1, padding=1),
                                   dict(kernel=3, stride=3, padding=1)])
def test_max_pool_gradient_over_padding_matches_the_derived_one(attrs):
    # The gradient reads the padding at clamped indices (a copy of a real element) and tells
    # the padding apart by index; the derived one reads keys padded with NaN, which none
    # equals: windows of ties, of -inf (the max is -inf: the first element inside x gets
    # dy, never the padding) and of the lowest float itself.
    rng = np.random.default_rng(5)
    x = rng.integers(0, 3, (2, 2, 7, 8)).astype(np.float32)
    x[0, 0, :3, :3] = -np.inf
    x[0, 1, :2, :] = np.finfo(np.float32).min
    x[1, 0, 4:, 5:] = np.inf
    x[1, 1] = 1.0
    y = ops.max_pool2d(x, **attrs)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    got = ops.max_pool2d.vjp(dy, x, derived=False, **attrs)[0]
    derived = ops.max_pool2d.vjp(dy, x, derived=True, **attrs)[0]
    np.testing.assert_array_equal(got, derived)


def test_max_pool_gradient_builds_under_a_cached_vectorized_schedule():
    # dy was first made an unconditional load by a Let; under other schedules (a tuner's:
    # the output cached per row of windows in a transposed local buffer, vectorized) TVM's
    # common-subexpression pass broke the Let ("cse_v used before definition").
    from tvmfront._tvm import s_tir

    x = te.placeholder((2, 3, 16, 16), "float32", name="x")
    dy = te.placeholder((2, 3, 8, 8), "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, kernel=2)[0]
    sch = s_tir.Schedule(te.create_prim_func([dy, x, dx]))
    block = sch.get_sblock("max_pool2d_grad")
    n, c, i, j = sch.get_loops(block)
    i0, i1 = sch.split(i, [None, 2])
    j0, j1 = sch.split(j, [None, 2])
    j0, lanes = sch.split(j0, [None, 8])
    sch.reorder(n, c, i0, j0, i1, j1, lanes)
    cache = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cache, j0)
    sch.transform_layout(block, ("write", 0),
                         lambda a, b, r, q: (a, b, r // 2, r % 2, q % 2, q // 2))
    sch.vectorize(lanes)
    sch.unroll(i1)
    sch.unroll(j1)
    copy = sch.get_loops(cache)
    sch.unroll(copy[-2])
    sch.vectorize(copy[-1])
    sch.parallel(n)
    lib = tvm.compile(sch.mod["main"], target=resolve_target("x86"))
    rng = np.random.default_rng(6)
    xv = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    dyv = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = tvm.runtime.empty((2, 3, 16, 16), "float32", tvm.cpu())
    lib["main"](tvm.runtime.tensor(dyv), tvm.runtime.tensor(xv), out)
    want = ops.max_pool2d.vjp(dyv.astype(np.float64), xv.astype(np.float64), kernel=2)[0]
    np.testing.assert_array_equal(out.numpy(), want.astype(np.float32))


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("shape", [(4, 8, 28, 28), (4, 6, 16, 16), (4, 16, 4, 4)])
def test_max_pool_gradient_reads_windows_from_a_deinterleaved_plane(schedule_for, shape):
    # The vectorized window columns read x[.., 2 * jo + e]: TVM builds such a vector from a
    # scalar load per lane (64@28 k2: 2.5x the forward). A per-plane local copy laid out
    # [row, column % 2, column // 2] gives contiguous vectors (1.6x). The TIR scheduled for
    # either class runs on this host and equals the unscheduled kernel exactly.
    target = resolve_target(schedule_for)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(ops.max_pool2d.te_forward(x, kernel=2).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, kernel=2)[0]
    naive = te.create_prim_func([dy, x, dx])
    func, rule = schedule_prim_func(naive, target)
    vectorized = re.search(r"unrolled, v\d+", rule)
    assert ("deinterleaved x" in rule) == bool(vectorized), rule
    if shape[2] == 28:
        assert "deinterleaved x" in rule, rule
    rng = np.random.default_rng(7)
    x_val = rng.integers(0, 4, shape).astype("float32")  # ties: the first max must win
    _assert_same_as_unscheduled(func, naive, x_val, [int(d) for d in dy.shape], rule)


@pytest.mark.parametrize("shape", [(64, 6, 16, 16), (4, 8, 28, 28), (2, 2, 6, 124)])
def test_max_pool_gradient_copies_window_rows_on_the_stack(shape):
    # The deinterleaved copy of a whole plane (1 KiB at 16x16, "local") was a
    # TVMBackendAllocWorkspace / FreeWorkspace pair per plane, 384 per call in LeNet's 6@16;
    # a block of window rows (below 1 KiB, "global") is a stack buffer LLVM keeps in
    # registers (LeNet's 6@16: 0.86x the time, 64@28 b32: 0.74x).
    rule, ir = _grad_kernel_ir(shape, kernel=2)
    assert "deinterleaved x" in rule, rule
    body = _kernel_bodies(ir)
    assert body, "no kernel function found in the LLVM IR"
    assert "TVMBackendAllocWorkspace" not in body, rule


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
def test_max_pool_gradient_copies_whole_planes_where_rows_are_wide(schedule_for):
    # Two rows of 132 columns (1056 bytes) would not be a stack buffer: the copy stays per
    # plane, still deinterleaved, and exact.
    shape = (2, 2, 4, 132)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(ops.max_pool2d.te_forward(x, kernel=2).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, kernel=2)[0]
    naive = te.create_prim_func([dy, x, dx])
    func, rule = schedule_prim_func(naive, resolve_target(schedule_for))
    assert "deinterleaved x" in rule, rule
    assert "(2, 2, 4, 2, 66)" in func.script(), rule  # one [row, phase, column] plane
    x_val = np.random.default_rng(8).integers(0, 4, shape).astype("float32")
    _assert_same_as_unscheduled(func, naive, x_val, [int(d) for d in dy.shape], rule)


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("shape", [(4, 8, 28, 28), (2, 3, 12, 10)])
def test_max_pool_first_max_pass_of_overlapping_windows_is_vectorized(schedule_for, shape):
    # k3 s2 p1: the first-max pass over x padded with the lowest value read each window
    # column at a stride of 2, scalar (2.2x the forward by itself); its columns are vectors
    # over a per-plane padded copy laid out [row, column % 2, column // 2] (the pass 2.8 ->
    # 0.5 ms at 64@28 b32). Exact values against the unscheduled kernel, ties included.
    func, rule, naive, dy_shape = _scheduled_gradient(
        shape, dict(kernel=3, stride=2, padding=1), schedule_for)
    assert re.search(r"max_pool2d_first=tiled\[window v\d+.*deinterleaved max_pool2d_pad", rule), \
        rule
    rng = np.random.default_rng(8)
    x_val = rng.integers(0, 4, shape).astype("float32")
    x_val[0, 0, :4, :4] = -np.inf  # a window of -inf and padding: the lowest value is the max
    _assert_same_as_unscheduled(func, naive, x_val, dy_shape, rule)


def _scheduled_gradient(shape, attrs, schedule_for):
    """(scheduled PrimFunc, rule, unscheduled PrimFunc, dy's shape) of max_pool2d's explicit
    gradient (dy, x) -> dx under the default schedule for `schedule_for`."""
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(ops.max_pool2d.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, **attrs)[0]
    naive = te.create_prim_func([dy, x, dx])
    func, rule = schedule_prim_func(naive, resolve_target(schedule_for))
    return func, rule, naive, [int(d) for d in dy.shape]


def _assert_same_as_unscheduled(func, naive, x_val, dy_shape, rule):
    """The scheduled gradient kernel (dy, x) -> dx, compiled for this host, equals the
    unscheduled one exactly."""
    dy_val = np.random.default_rng(9).standard_normal(dy_shape).astype("float32")
    outs = []
    for f in (func, naive):
        out = tvm.runtime.empty(x_val.shape, "float32", tvm.cpu())
        tvm.compile(f, target=resolve_target("x86"))(
            tvm.runtime.tensor(dy_val), tvm.runtime.tensor(x_val), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1], err_msg=rule)


def _ties_and_extremes(shape, seed, rows, cols, ones):
    """x of small integers (ties), with plane (0, 0)'s first rows x cols -inf, plane (0, 1)'s
    first rows the lowest float, and plane `ones` all 1."""
    x_val = np.random.default_rng(seed).integers(0, 3, shape).astype("float32")
    x_val[0, 0, :rows, :cols] = -np.inf
    x_val[0, 1, :rows, :] = np.finfo(np.float32).min
    x_val[ones] = 1.0
    return x_val


@pytest.mark.parametrize("shape,lanes", [((64, 6, 16, 16), 16), ((64, 16, 4, 4), 8)])
def test_lenet_max_pool_gradient_vectors_span_rows_of_windows(shape, lanes):
    # LeNet's pools have 8 and 2 windows a row: the vectors ran over one row of windows (v8
    # and v2 of AVX-512's 16 lanes), 3.3x and 3.5x the forward. A vector is now a block of
    # whole rows of windows (of 2 planes at 4x4, each window element read from two x vectors):
    # every compare of the window's max and of the first-max scan is on the block's vector.
    rule, ir = _grad_kernel_ir(shape, target="x86:avx512", kernel=2)  # LLVM IR, not run
    assert f"v{lanes} window blocks" in rule, rule
    compares = re.findall(r"= fcmp (\w+) <(\d+) x float>", _kernel_bodies(ir))
    assert compares, "no vector compare in the kernel"
    assert {int(width) for _, width in compares} == {lanes}, compares


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("shape,attrs", [((4, 6, 16, 16), dict(kernel=2)),
                                         ((4, 16, 4, 4), dict(kernel=2)),
                                         ((2, 3, 6, 6), dict(kernel=3)),
                                         ((2, 4, 9, 9), dict(kernel=3, stride=3, padding=1))])
def test_max_pool_gradient_by_window_blocks_equals_the_unscheduled_one(schedule_for, shape,
                                                                        attrs):
    # ties (the first max in scan order takes dy), windows of -inf (none does) and of the
    # lowest float (the first does), in blocks of windows that span rows (6@16 on AVX-512)
    # and planes (4x4), and under the other rules (3x3 windows, padded)
    func, rule, naive, dy_shape = _scheduled_gradient(shape, attrs, schedule_for)
    x_val = _ties_and_extremes(shape, 10, rows=2, cols=4, ones=(1, 0))
    _assert_same_as_unscheduled(func, naive, x_val, dy_shape, rule)


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d"])
def test_pooling_gradients_of_wide_windows_keep_their_split(name):
    # conv._split_divisors caps only divisors that simplifying a reshape's index reveals: a
    # window of 16 (written in the index as v // 16) is split 16 x 16 and unrolled as it was
    op = getattr(ops, name)
    x = te.placeholder((2, 4, 32, 32), "float32", name="x")
    dy = te.placeholder(op.te_forward(x, kernel=16, stride=16).shape, "float32", name="dy")
    dx = op.te_grad(dy, x, kernel=16, stride=16, derived=False)[0]
    _, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), resolve_target("x86"))
    assert "split 16x16, unrolled" in rule, rule


def test_a_large_padded_window_gradient_compiles_and_is_exact():
    """k5 s5 p2: the inline scan of a non-overlapping padded window grew an expression TVM's
    simplifier did not finish (te.create_prim_func ran over 300 s; compile_training of a
    model with nn.MaxPool2d(5, padding=2) hung). Run in a subprocess with a limit."""
    import subprocess
    import sys
    code = (
        "import numpy as np, tvmfront as tvf\n"
        "x = np.random.default_rng(0).permutation(144).reshape(1, 1, 12, 12).astype('float64')\n"
        "assert tvf.gradcheck(tvf.ops.max_pool2d, [x], kernel=5, padding=2)\n"
        "print('ok')\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


@pytest.mark.parametrize("k", [8, 16])
def test_a_wide_window_gradient_goes_to_each_windows_first_max(k):
    """Past 16 taps a non-overlapping window's first max comes from a reduction of its own:
    scanned inline per element, k8 at b32 64@32 took 85 s to compile and ran 29 ms (the
    suite's k16 case 167 s to schedule)."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, (2, 3, 2 * k, 2 * k)).astype("float64")  # ties: the first takes dy
    dy = rng.standard_normal((2, 3, 2, 2))
    want = np.zeros_like(x)
    for n, c, i, j in np.ndindex(dy.shape):
        window = x[n, c, i * k:(i + 1) * k, j * k:(j + 1) * k]
        r, q = np.unravel_index(np.argmax(window), window.shape)  # numpy's first max
        want[n, c, i * k + r, j * k + q] = dy[n, c, i, j]
    for derived in (False, True):
        np.testing.assert_array_equal(ops.max_pool2d.vjp(dy, x, kernel=k, derived=derived)[0],
                                      want)


def _pool_reference(kind, x, kernel, stride, padding):
    """numpy's max-pool (NaN where a window holds one, the padding -inf) or avg-pool (the
    padding zeros, counted in the divisor)."""
    fill = -np.inf if kind == "max" else 0.0
    padded = np.pad(x, [(0, 0), (0, 0), (padding, padding), (padding, padding)],
                    constant_values=fill)
    ho = (x.shape[2] + 2 * padding - kernel) // stride + 1
    wo = (x.shape[3] + 2 * padding - kernel) // stride + 1
    windows = np.stack([padded[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
                        for a in range(kernel) for b in range(kernel)])
    if kind == "avg":
        return windows.mean(0, dtype=np.float64)
    return np.where(np.isnan(windows).any(0), np.nan, np.nanmax(windows, 0))


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("shape,attrs,vectors", [
    ((4, 8, 28, 28), dict(kernel=3, stride=2, padding=1), True),
    ((2, 4, 16, 16), dict(kernel=2, padding=1), True),
    ((2, 4, 9, 9), dict(kernel=3, stride=3, padding=1), False)])  # 3 columns: no vector
def test_padded_pool_forward_reads_vectors_of_windows(kind, schedule_for, shape, attrs, vectors):
    # A padded forward read x through guarded loads, which left its loop scalar: ResNet's
    # max-pool k3 s2 p1 at b32 64@28 took 3.2 ms on one AVX-512 core, 2.3x its own
    # gradient's first-max pass over the same windows; avg-pool 1.6 ms. Each reads a copy of
    # x padded with -inf (max) or zeros (avg) now, made per plane and deinterleaved (0.66
    # and 0.51 ms). The scheduled kernel equals numpy's pooling of the padded x, with ties,
    # NaN and +-inf beside the padding (max-pool: NaN where a window holds one, PyTorch's).
    target = resolve_target(schedule_for)
    op = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    x = te.placeholder(shape, "float32", name="x")
    y = op.te_forward(x, **attrs)
    func, rule = schedule_prim_func(te.create_prim_func([x, y]), target)
    if vectors:
        assert "tiled[window v" in rule and f"deinterleaved {kind}_pool2d_padded" in rule, rule
    rng = np.random.default_rng(8)
    x_val = rng.integers(-2, 3, shape).astype("float32")
    if kind == "max":
        x_val[0, 0, :3, :3] = -np.inf
        x_val[0, 1, 0, 0] = np.nan
        x_val[1, 0, -2:, -2:] = np.inf
    out = tvm.runtime.empty([int(d) for d in y.shape], "float32", tvm.cpu())
    tvm.compile(func, target=resolve_target("x86"))(tvm.runtime.tensor(x_val), out)
    want = _pool_reference(kind, x_val, attrs["kernel"], attrs.get("stride", attrs["kernel"]),
                           attrs["padding"])
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6, err_msg=rule)


@pytest.mark.parametrize("schedule_for,lanes", [("x86:avx2", 8), ("x86:avx512", 16)])
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_padded_pool_gradient_vectorizes_rows_of_whole_vectors(schedule_for, lanes, kind):
    # A gather whose rows of windows fill whole vectors (16 windows a row at 32x32, k3 s2
    # p1: a CIFAR-sized stem pool) was left to LLVM to vectorize, which it did not: it reads
    # dy[(j + 1) // 2 - 1], one window on at column 0, a shift the rule only looked for at
    # the other remainders. Max-pool's gradient at b32 16@32 took 1461 us against a 172 us
    # forward on one AVX-512 core; 343 us with the columns vectorized by the rule.
    target = resolve_target(schedule_for)
    op = ops.max_pool2d if kind == "max" else ops.avg_pool2d
    attrs = dict(kernel=3, stride=2, padding=1)
    shape = (2, 3, 32, 32)
    x = te.placeholder(shape, "float32", name="x")
    dy = te.placeholder(op.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = op.te_grad(dy, x, derived=False, **attrs)[0]
    naive = te.create_prim_func([dy, x, dx])
    func, rule = schedule_prim_func(naive, target)
    assert re.search(r"_grad=spatial\[split 2x2, unrolled, v(8|16)\b", rule), rule
    x_val = np.random.default_rng(10).integers(0, 4, shape).astype("float32")  # ties
    if kind == "max":  # selects of dy: exactly the unscheduled kernel's
        _assert_same_as_unscheduled(func, naive, x_val, [int(d) for d in dy.shape], rule)
        return
    dy_shape = [int(d) for d in dy.shape]
    dy_val = np.random.default_rng(9).standard_normal(dy_shape).astype("float32")
    got = ops.avg_pool2d.vjp(dy_val, x_val, **attrs)[0]
    out = tvm.runtime.empty(shape, "float32", tvm.cpu())
    tvm.compile(func, target=resolve_target("x86"))(tvm.runtime.tensor(dy_val),
                                                    tvm.runtime.tensor(x_val), out)
    want = ops.avg_pool2d.vjp(dy_val.astype(np.float64), x_val.astype(np.float64), **attrs)[0]
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-7, err_msg=rule)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
@pytest.mark.parametrize("shape,attrs", [
    ((2, 3, 10, 10), dict(kernel=4, stride=4, padding=2)),
    ((2, 3, 9, 11), dict(kernel=(3, 5), stride=(3, 5), padding=(1, 2))),
    ((2, 3, 7, 7), dict(kernel=2, stride=2, padding=1))])
def test_padded_windows_that_do_not_overlap_take_the_first_max_pass(schedule_for, shape, attrs):
    # Found inline in the gather, the first max of a padded window read x at clamped indices
    # and tested the index per element: at b32 64@32 k4 s4 p2 it built in 9.3 s and ran
    # 13.5 ms, 3x5 p(1, 2) at 30 in 24.5 s and 9.1 ms; with the windows' first-max pass over
    # NaN-padded keys, 0.9 s and 2.8 / 2.9 ms. Exact on ties, -inf and the lowest float.
    func, rule, naive, dy_shape = _scheduled_gradient(shape, attrs, schedule_for)
    assert "max_pool2d_first=" in rule, rule
    x_val = _ties_and_extremes(shape, 11, rows=3, cols=5, ones=(1, 2))
    _assert_same_as_unscheduled(func, naive, x_val, dy_shape, rule)
