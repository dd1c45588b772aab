"""The explicit conv2d and pooling gradients: the work their kernels do (the slow forms
they replaced did 4x the multiply-adds at stride 2, or ran serially), and their values against
NumPy references and the derived gradients at geometries the op table does not cover."""

import math
import re

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront._tvm import te
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target

from _scheduled import run, schedule
from op_specs import _pair, conv2d_ref, max_pool2d_ref


def _reductions(t, seen=None):
    """Every reduction stage under TE tensor t: [(output elements, reduction extent)]."""
    seen = set() if seen is None else seen
    if t.op in seen or not isinstance(t.op, te.ComputeOp):
        return []
    seen.add(t.op)
    out = []
    if t.op.reduce_axis:
        out.append((math.prod(int(d) for d in t.shape),
                    math.prod(int(a.dom.extent) for a in t.op.reduce_axis)))
    for parent in t.op.input_tensors:
        out += _reductions(parent, seen)
    return out


@pytest.mark.parametrize("k,stride,padding", [(3, 2, 1), (3, 1, 1), (1, 2, 0), (2, 3, 1),
                                              (5, 2, 2)])
def test_conv2d_dx_multiplies_only_real_taps(k, stride, padding):
    # Each input element takes at most ceil(k/s)^2 taps per output channel: at stride 2 the
    # old gather over a dilated dy did k*k per element, 3/4 of them zeros.
    n, c, o, h = 2, 3, 4, 11
    x = te.placeholder((n, c, h, h), "float32", name="x")
    w = te.placeholder((o, c, k, k), "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=False)[0]
    work = sum(elements * extent for elements, extent in _reductions(dx))
    taps = math.ceil(k / stride) ** 2
    assert work <= n * c * h * h * o * taps, (work, n * c * h * h * o * taps)
    if stride > 1:
        assert work < n * c * h * h * o * k * k


def _conv_grads_ref(x, w, dy, stride, padding):
    """dx, dw by finite contraction: the adjoint of conv2d_ref, one (kh, kw) tap at a time;
    stride and padding an int or (rows, columns). float64 (x, w and dy cast)."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    x, w, dy = (np.asarray(a, "float64") for a in (x, w, dy))
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    ho, wo = dy.shape[2:]
    for p in range(w.shape[2]):
        for q in range(w.shape[3]):
            rows = slice(p, p + sh * (ho - 1) + 1, sh)
            cols = slice(q, q + sw * (wo - 1) + 1, sw)
            dw[:, :, p, q] = np.einsum("noij,ncij->oc", dy, xp[:, :, rows, cols])
            dxp[:, :, rows, cols] += np.einsum("noij,oc->ncij", dy, w[:, :, p, q])
    h, wd = x.shape[2:]
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw


@pytest.mark.parametrize("xs,ws,stride,padding", [
    ((2, 3, 9, 8), (4, 3, 1, 1), 2, 1),    # 1x1 with padding: border outputs see only zeros
    ((1, 2, 10, 7), (3, 2, 1, 1), 3, 0),   # 1x1, stride 3: two of three phases get no tap
    ((2, 2, 8, 9), (2, 2, 3, 3), 2, 0),    # no padding: an uneven last phase
    ((1, 2, 7, 7), (2, 2, 4, 4), 2, 2),    # even kernel, padding = k / 2
    ((1, 1, 6, 6), (2, 1, 2, 2), 4, 0),    # stride above the kernel: untouched inputs
])
def test_conv2d_grads_match_reference_and_derived(xs, ws, stride, padding):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    y = ops.conv2d(x, w, stride=stride, padding=padding)
    np.testing.assert_allclose(y, conv2d_ref(x, w, stride, padding), rtol=1e-10, atol=1e-10)
    dy = rng.standard_normal(y.shape)
    want = _conv_grads_ref(x, w, dy, stride, padding)
    explicit = ops.conv2d.vjp(dy, x, w, stride=stride, padding=padding, derived=False)
    derived = ops.conv2d.vjp(dy, x, w, stride=stride, padding=padding, derived=True)
    for got, ref, other in zip(explicit, want, derived):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(other, ref, rtol=1e-10, atol=1e-10)
    assert tvf.gradcheck(ops.conv2d, [x[:1, :, :6, :6], w], stride=stride, padding=padding)


@pytest.mark.parametrize("kernel,stride,padding", [(2, 2, 0), (3, 2, 1)])
def test_max_pool_gradient_kernel_is_parallel_and_has_no_tuple_reduction(kernel, stride,
                                                                         padding):
    # The first-max position came from a (position, value) tuple reducer that no tvmfront
    # rule tiles: dlight's Reduction rule took the whole kernel (62x the forward).
    x = te.placeholder((32, 16, 28, 28), "float32", name="x")  # large enough for threads
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    dy = te.placeholder(ops.max_pool2d.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, **attrs)[0]
    _, rule = schedule_prim_func(te.create_prim_func([dy, x, dx]), resolve_target("x86"))
    assert rule.startswith("tvmfront") and "parallel" in rule, rule
    if kernel <= stride:  # windows do not overlap: one pass, no reduction at all
        assert _reductions(dx) == []
    # the window columns are vectorized under the unrolled 2x2 split (it was all scalar: 6x
    # the forward, now 2.5x): 14 columns, v7 with 8 lanes (AVX2), v14 with 16 (AVX-512)
    assert re.search(r"split 2x2, unrolled, v(7|14),", rule), rule


def test_conv2d_dx_of_1x1_stride_2_is_written_row_by_row():
    """The dilated copy of a 1x1 stride-2 conv's d/dx (the ResNet shortcut's) runs each row's
    remainders outside its column loop: rows of zeros and rows interleaving the source with
    zeros, vectorized by LLVM (1286 -> 280 us at 64x16x32x32 on one core); values exact."""
    from tvmfront._tvm import to_device, tvm

    xs, ws = (4, 16, 32, 32), (32, 16, 1, 1)
    x, w = te.placeholder(xs, name="x"), te.placeholder(ws, name="w")
    dy = te.placeholder(ops.conv2d.te_forward(x, w, stride=2).shape, name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=2, derived=False)[0]
    target = resolve_target("x86")
    func, rule = schedule_prim_func(te.create_prim_func([dy, w, dx]), target)
    assert "conv2d_dx=spatial[split 2x2, unrolled, rows" in rule, rule
    rng = np.random.default_rng(0)
    a_dy = rng.standard_normal([int(d) for d in dy.shape]).astype("float32")
    a_w = rng.standard_normal(ws).astype("float32")
    got = tvm.runtime.empty(xs, "float32", tvm.cpu())
    tvm.compile(func, target=target)(to_device(a_dy), to_device(a_w), got)
    want, _ = _conv_grads_ref(np.zeros(xs), a_w.astype("float64"), a_dy.astype("float64"), 2, 0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attrs", [dict(kernel=2), dict(kernel=3, stride=3, padding=1),
                                   dict(kernel=(2, 3), stride=(2, 3))])
def test_max_pool_gradient_first_max_on_ties_and_infinities(attrs):
    # Non-overlapping windows (the inline first-max scan): all-equal windows, -inf, +inf.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 2, 6, 9)).astype(np.float64)
    x[0, 0, 0, :2] = -np.inf  # part of a window (all -inf pools to the lowest float)
    x[1, 1, 3:, 3:6] = np.inf
    x[0, 1] = 1.0
    y = ops.max_pool2d(x, **attrs)
    np.testing.assert_array_equal(y, max_pool2d_ref(x, **attrs))
    dy = rng.standard_normal(y.shape)
    got = ops.max_pool2d.vjp(dy, x, derived=False, **attrs)[0]
    derived = ops.max_pool2d.vjp(dy, x, derived=True, **attrs)[0]
    np.testing.assert_array_equal(got, derived)
    np.testing.assert_allclose(got.sum(), dy.sum())  # each window's dy goes to one element


@pytest.mark.parametrize("attrs", [dict(kernel=2), dict(kernel=3, stride=2, padding=1)])
def test_max_pool_gradient_of_an_infinite_dy_is_zero_off_the_max(attrs):
    # The gradient picked dy with 0/1 factors: inf * 0 gave NaN at every other element.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 6, 6))
    y = ops.max_pool2d(x, **attrs)
    dy = np.ones(y.shape)
    dy[0, 1, 1, 1] = np.inf
    got = ops.max_pool2d.vjp(dy, x, derived=False, **attrs)[0]
    assert not np.isnan(got).any()
    finite = ops.max_pool2d.vjp(np.where(np.isinf(dy), 7.0, dy), x, derived=False, **attrs)[0]
    np.testing.assert_array_equal(np.isinf(got), finite >= 7.0)  # the other dys sum to < 7


def test_conv2d_dw_sums_the_batch_in_chunks_with_the_same_value():
    # Large batches x spatial sizes sum dw per chunk of images, then over the chunks (the
    # chunk stays in cache across the register tiles); values as the reference.
    n, h = 8, 48  # 4 images x 48 x 48 outputs reach DW_CHUNK_REDUCTION: two chunks
    x = te.placeholder((n, 8, h, h), "float32", name="x")
    w = te.placeholder((3, 8, 3, 3), "float32", name="w")
    dy = te.placeholder((n, 3, h, h), "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, padding=1, derived=False)[1]
    assert sorted(_reductions(dw)) == [(3 * 8 * 9, 2), (2 * 3 * 8 * 9, 4 * h * h)]
    rng = np.random.default_rng(3)
    xv, wv = rng.standard_normal((n, 8, h, h)), rng.standard_normal((3, 8, 3, 3))
    dyv = rng.standard_normal((n, 3, h, h))
    got = ops.conv2d.vjp(dyv, xv, wv, padding=1, derived=False)
    for g, ref in zip(got, _conv_grads_ref(xv, wv, dyv, 1, 1)):
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)


def _stages(t, seen=None):
    """Names of the compute stages under TE tensor t."""
    seen = set() if seen is None else seen
    if t.op in seen or not isinstance(t.op, te.ComputeOp):
        return set()
    seen.add(t.op)
    return {t.op.name}.union(*(_stages(p, seen) for p in t.op.input_tensors))


@pytest.mark.parametrize("channels,stride,padding", [(32, 2, 0), (32, 3, 1), (8, 2, 0)])
def test_conv2d_dw_of_strided_1x1_reads_its_pixels_copied_out(channels, stride, padding):
    # From DW_SUBSAMPLE_CHANNELS input channels on, a strided 1x1 d/dw reads the pixels its
    # windows touch from a copy (vectors of input channels instead of panels of dy: ResNet's
    # 1x1 32->64 @16 s2 at batch 64, 266 -> 191 us on one AVX-512 core); fewer channels read
    # x in place. Values as the reference either way.
    from tvmfront.ops.conv import DW_SUBSAMPLE_CHANNELS

    xs, ws = (4, channels, 16, 15), (64, channels, 1, 1)
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=False)[1]
    assert ("conv2d_dw_pixels" in _stages(dw)) == (channels >= DW_SUBSAMPLE_CHANNELS)
    rng = np.random.default_rng(5)
    xv, wv = rng.standard_normal(xs), rng.standard_normal(ws)
    dyv = rng.standard_normal([int(d) for d in y.shape])
    _, want = _conv_grads_ref(xv, wv, dyv, stride, padding)
    got = ops.conv2d.vjp(dyv, xv, wv, stride=stride, padding=padding, derived=False)[1]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # and scheduled by the default rules, in float32
    func, _, target = schedule([dy, x], dw)
    got, = run(func, target, [dyv.astype("float32"), xv.astype("float32")], [ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", ["x86", {"kind": "llvm", "mcpu": "haswell"}])
def test_conv2d_dw_of_same_size_conv_copies_dy_transposed_by_tiles(target):
    # A stride-1 conv with outputs of its input's size (and at most DW_PADDED_DY_CHANNELS
    # output channels, or a multiple of them) reads x in place and dy from one zero-padded,
    # transposed copy ([n, rows, columns, o]: vectors of o), copied by tiles (vectors along
    # dy's columns in, along o out); values as the reference.
    from tvmfront.ops.conv import DW_PADDED_DY_CHANNELS

    o = DW_PADDED_DY_CHANNELS
    xs, ws, dys = (2, 16, 12, 12), (o, 16, 3, 3), (2, o, 12, 12)
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    dy = te.placeholder(dys, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, padding=1, derived=False)[1]
    assert "conv2d_dw_dy_t" in _stages(dw) and "conv2d_dw_pad" not in _stages(dw)
    wide = te.placeholder((o + 1, 16, 3, 3), "float32", name="wide")  # no multiple of o
    dy_wide = te.placeholder((2, o + 1, 12, 12), "float32", name="dy_wide")
    assert "conv2d_dw_dy_t" not in _stages(
        ops.conv2d.te_grad(dy_wide, x, wide, padding=1, derived=False)[1])
    func, rule, target = schedule([dy, x], dw, target)
    # by the whole copy's rule, or per image by the weight gradient's (conv_weight_grad)
    assert re.search(r"conv2d_dw_dy_t=padding\[fill [^;]*; copy spatial\[transposed", rule) or \
        re.search(r"dy_t per image, transposed \d+x\d+", rule), rule
    rng = np.random.default_rng(6)
    xv, wv, dyv = (rng.standard_normal(s) for s in (xs, ws, dys))
    _, want = _conv_grads_ref(xv, wv, dyv, 1, 1)
    got, = run(func, target, [dyv.astype("float32"), xv.astype("float32")], [ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("xs, o", [((8, 64, 8, 8), 64), ((4, 32, 16, 16), 32),
                                   ((4, 32, 12, 12), 64)])
def test_conv2d_dx_of_stride_1_takes_the_forward_rule(xs, o):
    # A stride-1 d/dx is a forward conv of the padded dy with the flipped kernel: written
    # with the taps reversed (dy read at i + t, as a forward reads x at i + kh), it gets
    # conv_forward's per-image tiles on AVX-512, as the forward does (64->64 @8 at batch 64,
    # one core: 1967 -> 1770 us, the forward 1778), also where its weight's output channels
    # are its second dimension (w[o, c]: d/dx's channels are c).
    n, c, h, _ = xs
    ws, dys = (o, c, 3, 3), (n, o, h, h)
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    dy = te.placeholder(dys, "float32", name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, padding=1, derived=False)[0]
    func, rule = schedule_prim_func(te.create_prim_func([dy, w, dx]),
                                    resolve_target("x86:avx512"))
    assert "conv2d_dx=conv[" in rule, rule
    rng = np.random.default_rng(8)
    xv, wv, dyv = (rng.standard_normal(s) for s in (xs, ws, dys))
    want, _ = _conv_grads_ref(xv, wv, dyv, 1, 1)
    got = ops.conv2d.vjp(dyv, xv, wv, padding=1, derived=False)[0]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def _enclosing_extents(func, names):
    """Extents of the loops enclosing every block whose name starts with one in `names`,
    outermost first (the loops the blocks share)."""
    from tvmfront._tvm import tirx
    from tvmfront.schedule.analysis import _children

    paths = []

    def visit(node, loops):
        if isinstance(node, tirx.For):
            loops = loops + [node]
        elif type(node).__name__ in ("SBlock", "Block") and node.name_hint.startswith(names):
            paths.append(loops)
        for child in _children(node):
            visit(child, loops)

    visit(func.body, [])
    shared = []
    for loops in zip(*paths):
        if not all(lp.same_as(loops[0]) for lp in loops):
            break
        shared.append(int(loops[0].extent))
    return shared


@pytest.mark.parametrize("xs, o, target, tile", [
    ((64, 32, 16, 16), 32, "x86", None),  # ResNet's 32->32 @16: two chunks of 32 images
    ((8, 64, 8, 8), 64, "x86", None),  # no chunks: panels of output channels in parallel
    ((4, 16, 12, 12), 32, {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}, "4x3xv8")])
def test_conv2d_dw_of_same_size_conv_sums_image_by_image(xs, o, target, tile):
    # A same-size stride-1 d/dw (dy_t from _same_size_product) runs the image loop outside
    # its register tiles: each image's dy_t is padded and transposed inside that loop, just
    # before the tiles read it from cache, and every tile sweeps one image at a time (the
    # GEMM family's rule swept the whole chunk per tile after one copy of all of dy: ResNet's
    # 32->32 @16 d/dw at batch 64 1.24x its forward, b32 32->64 @28 1.58x). AVX2 keeps one
    # register per vector (4 channels x 3 taps x v8: two registers spilled the tile).
    n, c, h, _ = xs
    ws, dys = (o, c, 3, 3), (n, o, h, h)
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    dy = te.placeholder(dys, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, padding=1, derived=False)[1]
    chunks = [e for size, e in _reductions(dw) if size == o * c * 9]
    images = n // chunks[0] if len(_reductions(dw)) == 2 else n
    func, rule, target = schedule([dy, x], dw, target)
    assert re.search(r"conv2d_dw(_part)?=conv_dw\[", rule), rule
    if tile is not None:
        assert f"conv_dw[{tile}," in rule, rule
    update = "conv2d_dw_part_update" if images < n else "conv2d_dw_update"
    # the innermost loop around both dy's transposed copy and the tiles (their parts over
    # dy's border and interior): the images (of a chunk)
    assert _enclosing_extents(func, ("dy_global", update))[-1] == images, func.script()
    rng = np.random.default_rng(7)
    xv, wv, dyv = (rng.standard_normal(s) for s in (xs, ws, dys))
    _, want = _conv_grads_ref(xv, wv, dyv, 1, 1)
    got, = run(func, target, [dyv.astype("float32"), xv.astype("float32")], [ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("stride", [1, (2, 1)])
def test_conv2d_dw_of_few_channels_sums_column_lanes_with_the_same_value(stride):
    # Fewer than 8 input channels: dw sums each of 8 column lanes, then the lanes (vectors
    # along the columns, no transposed copy of dy); values as the reference.
    x = te.placeholder((2, 1, 10, 16), "float32", name="x")
    w = te.placeholder((3, 1, 3, 3), "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=1)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=1, derived=False)[1]
    ho = int(y.shape[2])
    assert sorted(_reductions(dw)) == [(3 * 9, 8), (3 * 9 * 8, 2 * ho * 2)]
    rng = np.random.default_rng(4)
    xv, wv = rng.standard_normal((2, 1, 10, 16)), rng.standard_normal((3, 1, 3, 3))
    if stride == 1:
        dyv = rng.standard_normal((2, 3, ho, 16))
        got = ops.conv2d.vjp(dyv, xv, wv, padding=1, derived=False)
        for g, ref in zip(got, _conv_grads_ref(xv, wv, dyv, 1, 1)):
            np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)
    else:  # _conv_grads_ref takes one stride: check against autodiff's derived gradient
        dyv = rng.standard_normal((2, 3, ho, 16))
        got = ops.conv2d.vjp(dyv, xv, wv, stride=stride, padding=1, derived=False)
        want = ops.conv2d.vjp(dyv, xv, wv, stride=stride, padding=1, derived=True)
        for g, ref in zip(got, want):
            np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)
    assert tvf.gradcheck(ops.conv2d, [xv[:1, :, :6], wv], stride=stride, padding=1)


def test_max_pool_gradient_of_overlapping_windows_has_no_guarded_load():
    # The covering windows were summed with if_then_else: a guarded load in the vectorized
    # column loop made TVM scalarize it (6.9x the forward; 3.5x with selects).
    x = te.placeholder((2, 3, 12, 12), "float32", name="x")
    attrs = dict(kernel=3, stride=2, padding=1)
    dy = te.placeholder(ops.max_pool2d.te_forward(x, **attrs).shape, "float32", name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=False, **attrs)[0]
    assert "if_then_else" not in str(dx.op.body[0])


@pytest.mark.parametrize("batch", ["n", 2])
def test_conv2d_dx_of_stride_2_on_odd_sizes_writes_its_zeros(batch):
    """At an odd size (5x5, 1x1 stride 2) the dilated d/dx covers more elements than the
    sub-convolution it copies; it was inlined into that convolution's write-back as an
    epilogue, and the zeros between the values were never written (garbage in d/dx, with a
    fixed and with a symbolic batch)."""
    from tvmfront._tvm import tirx, to_device, tvm

    n = tirx.Var("n", "int64") if batch == "n" else batch
    x, w = te.placeholder((n, 3, 5, 5), name="x"), te.placeholder((4, 3, 1, 1), name="w")
    dy = te.placeholder(ops.conv2d.te_forward(x, w, stride=2).shape, name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=2, derived=False)[0]
    target = resolve_target("x86")
    func, rule = schedule_prim_func(te.create_prim_func([dy, w, dx]), target)
    rng = np.random.default_rng(0)
    a_dy = rng.standard_normal((2, 4, 3, 3)).astype("float32")
    a_w = rng.standard_normal((4, 3, 1, 1)).astype("float32")
    got = tvm.runtime.empty((2, 3, 5, 5), "float32", tvm.cpu())
    got.copyfrom(np.full((2, 3, 5, 5), np.nan, "float32"))  # what the kernel leaves unwritten
    tvm.compile(func, target=target)(to_device(a_dy), to_device(a_w), got)
    want, _ = _conv_grads_ref(np.zeros((2, 3, 5, 5)), a_w.astype("float64"),
                              a_dy.astype("float64"), 2, 0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5, err_msg=rule)


@pytest.mark.parametrize("schedule_for", ["x86:avx2", "x86:avx512"])
def test_derived_stride_2_dx_parallel_loop_keeps_divided_axes_out(schedule_for):
    """LeNet-like derived d/dx of a 3x3 stride-2 conv on a 4x4 input (indices (i + 1) // 2,
    (i + 1) % 2): scheduled for AVX-512 its tile's parallel loop fused the divided column
    axis and TVM lowered that to wrong values (off by 32; the derived-gradient LeNet trained
    to NaN). The TIR scheduled for either class is compiled for this host and compared with
    the unscheduled kernel."""
    from tvmfront._tvm import to_device, tvm

    x, w = te.placeholder((64, 6, 4, 4), name="x"), te.placeholder((8, 6, 3, 3), name="w")
    dy = te.placeholder(ops.conv2d.te_forward(x, w, stride=2, padding=1).shape, name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, stride=2, padding=1, derived=True)[0]
    naive = te.create_prim_func([dy, w, dx])
    func, rule = schedule_prim_func(naive, resolve_target(schedule_for))
    rng = np.random.default_rng(0)
    args = [rng.standard_normal((64, 8, 2, 2)).astype("float32"),
            rng.standard_normal((8, 6, 3, 3)).astype("float32")]
    outs = []
    for f in (func, naive):
        got = tvm.runtime.empty((64, 6, 4, 4), "float32", tvm.cpu())
        tvm.compile(f, target=resolve_target("x86"))(*[to_device(a) for a in args], got)
        outs.append(got.numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5, err_msg=rule)


def _stage(t, name, seen=None):
    """The compute stage called `name` under TE tensor t, or None."""
    seen = set() if seen is None else seen
    if t.op in seen or not isinstance(t.op, te.ComputeOp):
        return None
    seen.add(t.op)
    if t.op.name == name:
        return t
    return next((s for p in t.op.input_tensors if (s := _stage(p, name, seen)) is not None),
                None)


@pytest.mark.parametrize("xs,ws,stride,padding,per_image", [
    ((64, 16, 32, 32), (32, 16, 3, 3), 2, 1, True),  # ResNet's 16->32 @32 s2 at batch 64
    ((8, 8, 95, 95), (3, 8, 5, 5), 2, 2, False)])  # odd sizes: windows end off the last row
def test_conv2d_dw_of_strided_padded_conv_pads_x_per_chunk_of_images(xs, ws, stride, padding,
                                                                      per_image):
    # A strided, padded d/dw summed in chunks pads x per chunk of DW_STRIDED_CHUNK_IMAGES
    # images (x_pad[chunk, image, c, rows, columns]), which the schedule pads inside the
    # parallel loop over the chunks (where that loop runs over the chunks alone, as in
    # ResNet's), just before the tiles read it, not in a pass over all of x first; values
    # as the reference.
    from tvmfront.ops.conv import DW_STRIDED_CHUNK_IMAGES

    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=False)[1]
    pad = _stage(dw, "conv2d_dw_pad")
    assert [int(d) for d in pad.shape[:2]] == [xs[0] // DW_STRIDED_CHUNK_IMAGES,
                                               DW_STRIDED_CHUNK_IMAGES], pad.shape
    func, rule, target = schedule([dy, x], dw)
    # (the GEMM family's tiles, or on AVX-512 conv_weight_grad's strided rule, per image)
    per_chunk = (r"conv2d_dw_part=(tiled\[[^]]*padded per image|"
                 r"conv_dw\[[^]]*x (padded|in place) and dy_t)")
    assert bool(re.search(per_chunk, rule)) == per_image, rule
    rng = np.random.default_rng(7)
    xv, wv = rng.standard_normal(xs), rng.standard_normal(ws)
    dyv = rng.standard_normal([int(d) for d in y.shape])
    _, want = _conv_grads_ref(xv, wv, dyv, stride, padding)
    if per_image:  # the op in float64 too (the other shape's float64 kernel builds slowly)
        got = ops.conv2d.vjp(dyv, xv, wv, stride=stride, padding=padding, derived=False)[1]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    got, = run(func, target, [dyv.astype("float32"), xv.astype("float32")], [ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3)


def _chunked_dw(xs, ws, stride, padding):
    """(dw's TE tensor, its reductions, and a check of its values) for conv2d's explicit
    d/dw: the check compares with the reference in float64 (the op, on small batches) and,
    scheduled by the default rules, in float32, and returns the schedule's rule."""
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=False)[1]

    def check():
        rng = np.random.default_rng(8)
        xv, wv = rng.standard_normal(xs), rng.standard_normal(ws)
        dyv = rng.standard_normal([int(d) for d in y.shape])
        _, want = _conv_grads_ref(xv, wv, dyv, stride, padding)
        if xs[0] <= 8:
            got = ops.conv2d.vjp(dyv, xv, wv, stride=stride, padding=padding, derived=False)[1]
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
        func, rule, target = schedule([dy, x], dw)
        got, = run(func, target, [dyv.astype("float32"), xv.astype("float32")], [ws])
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
        return rule
    return dw, sorted(_reductions(dw)), check


@pytest.mark.parametrize("n,h", [(8, 10), (64, 32)])
def test_conv2d_dw_of_few_channels_sums_column_lanes_per_chunk_of_images(n, h):
    # The column lanes are summed per chunk of DW_COLUMN_CHUNK_IMAGES images, then over the
    # chunks and lanes (a chunk's dy stays in cache across the tiles of o and tap rows);
    # values as the reference, at batch 8 and at ResNet's stem shape (1 -> 16 @32, batch 64).
    from tvmfront.ops.conv import DW_COLUMN_CHUNK_IMAGES, DW_LANES

    chunk = DW_COLUMN_CHUNK_IMAGES
    _, reductions, check = _chunked_dw((n, 1, h, 32), (16, 1, 3, 3), 1, 1)
    assert reductions == [(16 * 9, n // chunk * DW_LANES),
                          (n // chunk * 16 * 9 * DW_LANES, chunk * h * 32 // DW_LANES)]
    assert "conv2d_dw_lanes=tiled[" in check()


@pytest.mark.parametrize("n,h", [(8, 10), (64, 32)])
def test_conv2d_dw_of_strided_1x1_in_place_sums_per_chunk_of_images(n, h):
    # Under DW_SUBSAMPLE_CHANNELS input channels a strided 1x1 d/dw reads x in place, summed
    # per chunk of DW_STRIDED_CHUNK_IMAGES images, then over the chunks; values as the
    # reference, at batch 8 and at ResNet's 1x1 s2 16->32 @32 shape (batch 64).
    from tvmfront.ops.conv import DW_STRIDED_CHUNK_IMAGES

    chunk, ho = DW_STRIDED_CHUNK_IMAGES, (h + 1) // 2
    _, reductions, check = _chunked_dw((n, 16, h, h), (32, 16, 1, 1), 2, 0)
    assert reductions == [(32 * 16, n // chunk), (n // chunk * 32 * 16, chunk * ho * ho)]
    assert "conv2d_dw_part=tiled[" in check()


def _padded_conv_grad(xs, ws, which, seed, stride=2, derived=False):
    """(TE dy, x, w, the gradient `which` (0: dx, 1: dw; explicit or autodiff's), numpy dy,
    x, w, numpy's gradient) of a conv with padding 1 (3x3 kernels in these tests)."""
    x, w = te.placeholder(xs, "float32", name="x"), te.placeholder(ws, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=1)
    dy = te.placeholder(y.shape, "float32", name="dy")
    grad = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=1, derived=derived)[which]
    rng = np.random.default_rng(seed)
    xv, wv = rng.standard_normal(xs), rng.standard_normal(ws)
    dyv = rng.standard_normal([int(d) for d in y.shape])
    want = _conv_grads_ref(xv, wv, dyv, stride, 1)[which]
    return dy, x, w, grad, dyv.astype("float32"), xv.astype("float32"), wv.astype("float32"), want


@pytest.mark.parametrize("derived", [False, True])
@pytest.mark.parametrize("target", ["x86", "x86:avx2"])
@pytest.mark.parametrize("xs,ws", [((64, 16, 32, 32), (32, 16, 3, 3)),  # ResNet's 16->32 @32
                                   ((64, 32, 16, 16), (64, 32, 3, 3)),  # and 32->64 @16
                                   ((32, 64, 14, 14), (64, 64, 3, 3))])  # bench's 64->64 s2
def test_conv2d_dx_of_stride_2_computes_its_phases_per_image(xs, ws, target, derived):
    # A 3x3 stride-2 d/dx (one convolution of the padded dy per input phase, interleaved into
    # dx) runs one image per parallel iteration: that image's padded dy and phases are
    # computed inside it, just before the interleave reads them from cache, not each phase
    # over the whole batch with a quarter of dx written to memory and read back; values as
    # the reference. 64 input channels over 7 columns: tiles of 7 columns x a panel of them.
    # Autodiff's phases too, whose one-tap axes are gone (2, 1 or no tap loops).
    dy, _, w, dx, dyv, _, wv, want = _padded_conv_grad(xs, ws, 0, seed=3, derived=derived)
    func, rule, target = schedule([dy, w], dx, target)
    assert rule.startswith("tvmfront.conv_phases: phases per image[conv2d_"), rule
    got, = run(func, target, [dyv, wv], [xs])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-3, err_msg=rule)


@pytest.mark.parametrize("schedule_for", ["x86:avx512", "x86:avx2"])
@pytest.mark.parametrize("xs,ws", [((64, 32, 16, 16), (64, 32, 3, 3)),  # ResNet's 32->64 @16
                                   ((32, 64, 14, 14), (64, 64, 3, 3)),  # bench's 64->64 s2
                                   ((64, 16, 32, 32), (32, 16, 3, 3))])  # in chunks of images
def test_conv2d_dw_of_stride_2_pads_x_per_image(xs, ws, schedule_for):
    # A 3x3 stride-2 d/dw, summed over the whole batch (7 x 7 and 8 x 8 outputs: no chunks)
    # or per chunk of images (16 x 16), pads x (at 16 x 16 reads it in place, its padding's
    # terms skipped: padded_terms.py) and transposes dy image by image, in cache,
    # each core over its own input channels (or chunks), not in one pass over all of x before
    # tiles that sweep the whole batch, its rows of columns unrolled. AVX2 code keeps the GEMM
    # family's tiles (faster there). The TIR scheduled for either class runs on this host and
    # computes the reference.
    dy, x, _, dw, dyv, xv, _, want = _padded_conv_grad(xs, ws, 1, seed=4)
    func, rule, _ = schedule([dy, x], dw, schedule_for)
    per_image = bool(re.search(r"conv2d_dw(_part)?=conv_dw\[[^]]*x (padded|in place) and dy_t "
                               r"per image", rule))
    # x read in place where a row of output columns takes more than one step (16 x 16)
    assert not per_image or ("x in place" in rule) == (xs[-1] // 2 > 8), rule
    assert per_image == (schedule_for == "x86:avx512"), rule
    # each row of output columns (7 or 8) unrolled whole, 16 by halves
    assert not per_image or f"{min(xs[-1] // 2, 8)} columns unrolled" in rule, rule
    got, = run(func, resolve_target("x86"), [dyv, xv], [ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-3, err_msg=rule)


@pytest.mark.parametrize("which", [0, 1])
@pytest.mark.parametrize("xs,ws", [((32, 32, 28, 28), (64, 32, 3, 3)),  # bench's 32->64 @28
                                   ((64, 32, 16, 16), (32, 32, 3, 3))])  # ResNet's 32->32
def test_derived_stride_1_grads_take_the_per_image_rules_on_avx512(xs, ws, which):
    # Autodiff's gradients of a padded stride-1 conv, scheduled for AVX-512: its d/dx (taps
    # running backwards through dy) on conv_forward's per-image tiles; its d/dw, summed over
    # x's pixels (autodiff's _interior_sum: x read in place, dy zero-extended), takes the
    # explicit gradient's rule (_conv_weight_grad): dy's copy laid out o last and made image
    # by image, not x padded per image (_padded_weight_grad, ~8% slower on b32 32->64 @28);
    # with one panel of output channels (32->32) summed per chunk of images, one a core
    # (rfactor), not by groups of input channels each copying dy (0.90x the time). The TIR
    # runs on this host and computes the reference.
    dy, x, w, grad, dyv, xv, wv, want = _padded_conv_grad(xs, ws, which, seed=8, stride=1,
                                                           derived=True)
    func, rule, _ = schedule([dy, x, w], grad, "x86:avx512")
    split = "chunks x panels" if ws[0] == 32 else "panels"
    expected = r"=conv\[7xv32|=conv\[8xv32" if which == 0 else \
        rf"=conv_dw\[[^]]*, parallel {split}, dy_t per image, transposed \d+x\d+, " \
        r"padding skipped\]"
    assert re.search(expected, rule), rule
    got, = run(func, resolve_target("x86"), [dyv, xv, wv], [xs if which == 0 else ws])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=5e-2, err_msg=rule)
