"""Register tiles of convolution kernels, read from the scheduled TIR: the loops around each
kernel's accumulating block (unrolled = the register tile, vectorized = its vectors).

The schedules are those of an AVX2 target (haswell, 12 accumulator registers of 8 lanes),
whatever this machine is, so the expected tiles are fixed."""

import math

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, tirx
from tvmfront.schedule import conv_forward, schedule_prim_func
from tvmfront.schedule.analysis import _children
from tvmfront.target import resolve_target

AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}


def _loops_around(func, block_name):
    """[(kind, extent)] of the loops enclosing the block named `block_name`, outermost first."""
    found = []

    def visit(node, loops):
        if isinstance(node, tirx.For):
            loops = loops + [(node.kind, int(node.extent))]
        elif type(node).__name__ in ("SBlock", "Block") and node.name_hint == block_name:
            found.append(loops)
        for child in _children(node):
            visit(child, loops)

    visit(func.body, [])
    assert len(found) == 1, f"{len(found)} blocks named {block_name}"
    return found[0]


def _tile(func, block_name):
    """(unrolled extents, vectorized extents) of the loops around a block, outermost first:
    the innermost reduction loop (unrolled when short) and then the register tile."""
    loops = _loops_around(func, block_name)
    unrolled = [e for kind, e in loops if kind == tirx.ForKind.UNROLLED]
    vector = [e for kind, e in loops if kind == tirx.ForKind.VECTORIZED]
    return unrolled, vector


def _interior_part(func, prefix):
    """The name of the block, among those loop_partition made of the block `prefix` (its name
    a prefix of theirs), with the most iterations around it: the part over the interior."""
    parts = [name for name in _block_names(func) if name.startswith(prefix) and
             not name.endswith(("_partition", "_common"))]
    return max(parts, key=lambda name: math.prod(e for _, e in _loops_around(func, name)))


def _conv_kernel(x_shape, w_shape, which, **attrs):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, **attrs)
    if which == "fwd":
        func = te.create_prim_func([x, w, y])
    else:
        dy = te.placeholder(y.shape, "float32", name="dy")
        grads = ops.conv2d.te_grad(dy, x, w, derived=False, **attrs)
        func = te.create_prim_func([dy, x, w, grads[0 if which == "dx" else 1]])
    scheduled, rule = schedule_prim_func(func, resolve_target(AVX2))
    return scheduled, rule


def test_few_channel_weight_gradient_tiles_taps_and_outputs():
    """The ResNet stem's d/dw (1 input channel): its lanes block (c, p, o, q, l) tiles the
    kernel columns q and the output channels o beside the 8 column lanes. The unit axis c
    used to take one of the tile's two places: a tile of 3 accumulators (latency-bound FMA
    chains; 0.55 ms -> 0.27 ms on one core with 4x3)."""
    func, rule = _conv_kernel((64, 1, 32, 32), (16, 1, 3, 3), "dw", padding=1)
    unrolled, vector = _tile(func, "conv2d_dw_lanes_update")
    assert vector == [8], rule
    # the unrolled column blocks (jo: 4), then the tile (o: 4, q: 3)
    assert unrolled == [4, 4, 3], (unrolled, rule)


def test_strided_conv_at_7x7_tiles_the_batch_beside_the_vectors():
    """A stride-2 conv to 7x7 outputs: the rows and columns (7, a prime) have no tile, so
    the images take the tile's place beside the 16 output channels (was: lone vectors,
    2 accumulators; forward 4.7 -> 2.2 ms and d/dx 8.1 -> 3.2 ms on one core). The d/dx
    runs its phases per image (conv_phases), each a tile of the 7 columns x a vector of 8
    of the 64 input channels (AVX2 code on one AVX-512 core: 2.0 -> 1.5 ms)."""
    func, rule = _conv_kernel((32, 64, 14, 14), (64, 64, 3, 3), "fwd", stride=2, padding=1)
    unrolled, vector = _tile(func, "conv2d_update")
    assert (unrolled, vector) == ([3, 4], [16]), rule  # kw, then 4 images
    func, rule = _conv_kernel((32, 64, 14, 14), (64, 64, 3, 3), "dx", stride=2, padding=1)
    assert rule.startswith("tvmfront.conv_phases: phases per image["), rule
    for phase in ("conv2d_dx10", "conv2d_dx11"):
        unrolled, vector = _tile(func, f"{phase}_update")
        assert vector == [8] and unrolled[-1] == 7, (phase, unrolled, rule)


@pytest.mark.parametrize("which", ["fwd", "dx"])
def test_3x3_conv_tiles_keep_their_shape(which):
    """Where every axis divides the tile (32->64 at 28x28), the tiles are as they were."""
    func, rule = _conv_kernel((32, 32, 28, 28), (64, 32, 3, 3), which, padding=1)
    assert "tiled[4xv16" in rule, rule


@pytest.mark.parametrize("shapes, which, attrs, block", [
    (((64, 32, 16, 16), (64, 32, 3, 3)), "dx", {"stride": 2, "padding": 1}, "conv2d_dx00_update"),
    (((64, 32, 16, 16), (64, 32, 1, 1)), "dx", {"stride": 2}, "conv2d_dx00_update"),
    (((64, 64, 8, 8), (64, 64, 3, 3)), "fwd", {"padding": 1}, "conv2d_update"),
    (((64, 64, 8, 8), (64, 64, 3, 3)), "dx", {"padding": 1}, "conv2d_dx_update")])
def test_eight_column_convs_tile_channels_and_rows(shapes, which, attrs, block):
    """Convolutions over 8 columns (one vector: ResNet's 64->64 at 8x8, the phases of a
    stride-2 d/dx at 16x16) tile 4 channels x 2 rows, not 8 channels: per 8 FMAs 4 weight
    broadcasts and 2 row vectors, not 8 broadcasts and 1 vector (one core: 64->64 @8 forward
    and d/dx 4.0 -> 3.1 ms, the 3x3 stride-2 d/dx 3.0 -> 1.9 ms, the 1x1 one 0.43 -> 0.25)."""
    func, rule = _conv_kernel(*shapes, which, **attrs)
    unrolled, vector = _tile(func, block)
    assert vector == [8] and unrolled[-2:] == [4, 2], (unrolled, rule)


def test_window_vectors_keep_the_channel_tile():
    """LeNet's first conv (1 -> 6 channels, 16 columns): 6 channels x 2-register vectors, not
    3 channels x 2 rows: the rows' vectors load one operand less per 12 FMAs but straddle
    cache lines (61 vs 74 us)."""
    func, rule = _conv_kernel((64, 1, 16, 16), (6, 1, 5, 5), "fwd", padding=2)
    unrolled, vector = _tile(func, "conv2d_update")
    assert vector == [16] and unrolled[-1] == 6, (unrolled, rule)


def _block_names(func):
    """The names of every block of `func`."""
    names = []

    def visit(node):
        if type(node).__name__ in ("SBlock", "Block"):
            names.append(node.name_hint)
        for child in _children(node):
            visit(child)

    visit(func.body)
    return names


def _border_parts(func, pad):
    """Names of the border and interior parts of the padding `pad`'s columns
    (schedule/pad_borders.py); none where it is a constant fill and a copy."""
    return [n for n in _block_names(func) if n.startswith(pad + "_") and
            not n.endswith(("_partition", "_common", "_pad_const"))]


def _padding_blocks(func, pad):
    """Names of the blocks writing the padding `pad`: the border and interior parts of its
    columns, else its constant fill and its copy."""
    return _border_parts(func, pad) or [f"{pad}_pad_const", pad]


def _check_padded_in_parallel(func, pad, rule, lanes=1):
    """Every block writing the padding `pad` runs inside a parallel loop, and the largest
    (its fill or its interior copy) in vectors of at least `lanes`."""
    vectors = []
    for block in _padding_blocks(func, pad):
        parallel, vector = _placed_under_parallel(func, block)
        assert parallel, (block, rule)
        vectors.append(vector[-1] if vector else 0)
    assert max(vectors) >= lanes, (vectors, rule)


def _placed_under_parallel(func, block_name):
    """The loops around a block: (whether a parallel loop encloses it, its vectorized
    extents)."""
    loops = _loops_around(func, block_name)
    return (any(kind == tirx.ForKind.PARALLEL for kind, _ in loops),
            [e for kind, e in loops if kind == tirx.ForKind.VECTORIZED])


@pytest.mark.parametrize("which, pad", [("dx", "conv2d_dy_pad"), ("fwd", "conv2d_pad")])
def test_padding_runs_per_image_inside_the_parallel_loop(which, pad):
    """A conv whose tiles run in parallel over the images pads each image inside that loop,
    in cache and on every core, vectorized there (74 KiB an image: copied with its borders
    apart, pad_borders.py; smaller ones as a constant fill and a copy) (the
    stem's d/dx padded all of dy first, 16 channels x 34 x 34 per image: 0.51 -> 0.37 ms on
    one core; 16->16 @32 forward 3.2 -> 3.0 ms)."""
    func, rule = _conv_kernel((64, 16, 32, 32), (16, 16, 3, 3), which, padding=1)
    assert "padded per image" in rule, rule
    _check_padded_in_parallel(func, pad, rule, lanes=8)


def test_padding_stays_whole_where_the_parallel_loop_is_not_the_images():
    """At batch 2 the parallel loop fuses the images with channel tiles: each iteration
    would pad its image again, so the padding stays one pass before the tiles."""
    _, rule = _conv_kernel((2, 16, 32, 32), (64, 16, 3, 3), "fwd", padding=1)
    assert "parallel" in rule.split("conv2d=")[1].split("]")[0], rule
    assert "padded per image" not in rule, rule


@pytest.mark.parametrize("h, k, padding", [(8, 5, 0), (6, 5, 1), (4, 3, 0)])
def test_small_output_dx_sums_over_dy_not_over_taps(h, k, padding):
    """A stride-1 conv with fewer outputs than taps per axis (LeNet's second conv: 4x4
    outputs of 5x5 taps) sums d/dx over the dy positions (16 per channel), not over the
    taps of a dy padded by k - 1 (25, most of them zeros), and reads the weight under its
    bounds, copying neither (a zero-padded weight's zeros were multiplied: one AVX-512 core,
    batch 64, 127 -> 63 us). Values as the derived gradient's."""
    n, c, o = 2, 3, 4
    x = te.placeholder((n, c, h, h), "float32", name="x")
    w = te.placeholder((o, c, k, k), "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=padding)
    ho = int(y.shape[2])
    assert ho < k
    dy = te.placeholder(y.shape, "float32", name="dy")
    dx = ops.conv2d.te_grad(dy, x, w, padding=padding, derived=False)[0]
    assert [int(a.dom.extent) for a in dx.op.reduce_axis] == [o, ho, ho]
    assert sorted(t.op.name for t in dx.op.input_tensors) == ["dy", "w"]
    rng = np.random.default_rng(5)
    xv, wv = rng.standard_normal((n, c, h, h)), rng.standard_normal((o, c, k, k))
    dyv = rng.standard_normal((n, o, ho, ho))
    got = ops.conv2d.vjp(dyv, xv, wv, padding=padding, derived=False)
    want = ops.conv2d.vjp(dyv, xv, wv, padding=padding, derived=True)
    for g, ref in zip(got, want):
        np.testing.assert_allclose(g, ref, rtol=1e-10, atol=1e-10)


AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 2}


def _conv_reference(x, w, padding, stride=1):
    """NCHW convolution in numpy (float64)."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (xp.shape[2] - k) // stride + 1
    wo = (xp.shape[3] - k) // stride + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for a in range(k):
        for b in range(k):
            window = xp[:, :, a:a + stride * ho:stride, b:b + stride * wo:stride]
            out += np.einsum("ncij,oc->noij", window, w[:, :, a, b])
    return out


@pytest.mark.parametrize("shapes, tile, rows", [
    (((32, 32, 28, 28), (64, 32, 3, 3)), "7xv32", 4),  # padded image 113 KiB
    (((16, 64, 14, 14), (64, 64, 3, 3)), "7xv32", 2),  # 64 KiB, 14 rows: per 2
    (((64, 32, 16, 16), (32, 32, 3, 3)), "8xv32", None),  # ResNet's 32->32 @16, 41 KiB
    (((64, 64, 8, 8), (64, 64, 3, 3)), "8xv32", None),  # ResNet's 64->64 @8, 25 KiB
    (((16, 128, 28, 28), (128, 128, 3, 3)), "7xv32", None),  # 4 rows' 92 KiB over L1
])
@pytest.mark.parametrize("skip", [True, False])
def test_avx512_conv_forward_runs_images_in_parallel_and_pads_each(monkeypatch, shapes, tile,
                                                                   rows, skip):
    """On AVX-512 a stride-1 conv forward runs one image per parallel iteration and tiles
    columns x v32 (the GEMM rule padded the whole batch serially before its tiles); AVX2
    keeps the GEMM family's tiles. Its zero padding is inlined and its terms skipped
    (padded_terms.py). Where it is not (a padding read by another block too; here forced),
    the padding is copied inside the image's iteration: a padded image over L1
    (CONV_PAD_IMAGE_BYTES) per block of output rows, just before every output-channel
    panel's tiles read it (0.97x the time on one core), a smaller one per image. Values as
    numpy's (run where the host has AVX-512)."""
    if not skip:
        monkeypatch.setattr(conv_forward, "inline_padding", lambda sch, block: [])
    x = te.placeholder(shapes[0], "float32", name="x")
    w = te.placeholder(shapes[1], "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=1)
    func = te.create_prim_func([x, w, y])
    scheduled, rule = schedule_prim_func(func, resolve_target(AVX512))
    padded = "padding skipped" if skip else \
        "padded per " + ("image" if rows is None else f"{rows} row(s)")
    assert f"conv2d=conv[{tile}, parallel per image, packed w, {padded}]" in rule, rule
    if skip:
        _check_padding_skipped(func, scheduled, rule)
    else:
        _check_padding_in_parallel_and_avx2_tiles(func, scheduled, rule)
    if rows is not None and not skip:  # the copy's loops: images, row blocks, rows + 2
        copied = [e for _, e in _loops_around(scheduled, "conv2d_pad")]
        assert copied[1] == shapes[0][2] // rows and rows + 2 in copied[2:], (copied, rule)
    run = _run_on_avx512_host(scheduled, shapes[0], shapes[1], y.shape)
    if run is not None:
        xv, wv, got = run
        np.testing.assert_allclose(got, _conv_reference(xv, wv, 1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("x_shape, w_shape, tile, rows", [
    ((64, 32, 16, 16), (64, 32, 3, 3), "8xv32", 2),  # ResNet's 32->64 @8
    ((64, 16, 32, 32), (32, 16, 3, 3), "8xv32", 2),  # ResNet's 16->32 @16
    ((32, 64, 14, 14), (64, 64, 3, 3), "7xv32", 1),  # 7 output rows: per row
])
@pytest.mark.parametrize("epilogue, skip", [(False, True), (True, True), (True, False)])
def test_avx512_stride2_conv_forward_takes_the_per_image_tiles(monkeypatch, x_shape, w_shape,
                                                               tile, rows, epilogue, skip):
    """A stride-2 3x3 conv forward gets conv_forward's rule on AVX-512 like a stride-1 one
    (the GEMM family's tile fused channel panels with the images and padded the whole batch
    serially first: 32->64 @8 161 -> ~290 GFLOP/s on two threads), its zero padding's terms
    skipped (or, where the padding is not inlined, here forced, copied per block of output
    rows inside the image loop), a pointwise epilogue (an inference conv + batch norm +
    relu) in its write-back. Values as numpy's where the host has AVX-512."""
    if not skip:
        monkeypatch.setattr(conv_forward, "inline_padding", lambda sch, block: [])
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=2, padding=1)
    out = y
    if epilogue:
        out = te.compute(y.shape, lambda *i: te.max(y(*i) * 0.5 + 0.25, 0.0), name="bn_relu")
    func = te.create_prim_func([x, w, out])
    scheduled, rule = schedule_prim_func(func, resolve_target(AVX512))
    padded = "padding skipped" if skip else f"padded per {rows} row(s)"
    assert f"conv2d=conv[{tile}, parallel per image, packed w, {padded}" in rule, rule
    assert ("+bn_relu]" in rule) == epilogue, rule
    if skip:
        _check_padding_skipped(func, scheduled, rule)
    else:
        _check_padding_in_parallel_and_avx2_tiles(func, scheduled, rule)
    run = _run_on_avx512_host(scheduled, x_shape, w_shape, out.shape)
    if run is not None:
        xv, wv, got = run
        want = _conv_reference(xv, wv, 1, stride=2)
        if epilogue:
            want = np.maximum(want * 0.5 + 0.25, 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _check_padding_in_parallel_and_avx2_tiles(func, scheduled, rule):
    """The AVX-512 schedule `scheduled` of the conv `func` pads inside its parallel loop,
    vectorized; AVX2 keeps the GEMM family's tiles."""
    _check_padded_in_parallel(scheduled, "conv2d_pad", rule)
    _, avx2_rule = schedule_prim_func(func, resolve_target(AVX2))
    assert "conv2d=tiled[" in avx2_rule, avx2_rule


def _check_padding_skipped(func, scheduled, rule):
    """The AVX-512 schedule `scheduled` of the conv `func` has no padding block left, its
    update reads x itself under a likely predicate (padded_terms.py); AVX2 keeps the GEMM
    family's tiles."""
    realizes = _realizes(scheduled)
    assert not [name for name in realizes if name.startswith("conv2d_pad")], (realizes, rule)
    update = realizes["conv2d_update"]
    assert "likely" in str(update.predicate), (update.predicate, rule)
    assert {r.source.name for r in update.block.reads} >= {"x"}, update.block.reads
    _, avx2_rule = schedule_prim_func(func, resolve_target(AVX2))
    assert "conv2d=tiled[" in avx2_rule, avx2_rule


def _realizes(func):
    """{block name: its SBlockRealize} of a scheduled function."""
    found = {}

    def visit(node):
        if type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            found[node.block.name_hint] = node
        for child in _children(node):
            visit(child)

    visit(func.body)
    return found


def _run_on_avx512_host(scheduled, x_shape, w_shape, out_shape, seed=3):
    """(x, w, output) of a scheduled conv kernel run on random inputs, its output first all
    NaN (so every element must be written); None where the host has no AVX-512."""
    from tvmfront._tvm import llvm_host_cpu_features, to_device, tvm
    if "avx512f" not in (llvm_host_cpu_features() or set()):
        return None
    lib = tvm.compile(tvm.IRModule({"main": scheduled}), target=resolve_target("x86"))
    rng = np.random.default_rng(seed)
    xv = rng.standard_normal(x_shape).astype("float32")
    wv = rng.standard_normal(w_shape).astype("float32")
    out = to_device(np.full([int(d) for d in out_shape], np.nan, "float32"))
    lib["main"](to_device(xv), to_device(wv), out)
    return xv, wv, out.numpy()


@pytest.mark.parametrize("schedule_for, steps", [("x86:avx512", 4), ("x86:avx2", 1)])
def test_same_size_weight_gradient_unrolls_steps_along_the_columns(schedule_for, steps):
    """The b32 32->64 @28 d/dw (conv_weight_grad: 28 columns per row of its reduction)
    unrolls 4 steps along the columns around its 4 x 3 tile on AVX-512, where the steps share
    their loads of dy_t (one core: 6.23 -> 5.71 ms); AVX2 code keeps one step (it spilled).
    Run on this host, the AVX-512 schedule computes numpy's d/dw."""
    from tvmfront._tvm import to_device, tvm
    x = te.placeholder((32, 32, 28, 28), "float32", name="x")
    w = te.placeholder((64, 32, 3, 3), "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=1)
    dy = te.placeholder(y.shape, "float32", name="dy")
    dw = ops.conv2d.te_grad(dy, x, w, derived=False, padding=1)[1]
    func, rule = schedule_prim_func(te.create_prim_func([dy, x, dw]), resolve_target(schedule_for))
    assert "conv2d_dw_part=conv_dw[4x3xv" in rule, rule
    unrolled, _ = _tile(func, _interior_part(func, "conv2d_dw_part_update"))
    assert unrolled == [steps, 4, 3], (unrolled, rule)
    if steps == 1:
        return
    rng = np.random.default_rng(6)
    xv = rng.standard_normal((32, 32, 28, 28)).astype("float32")
    dyv = rng.standard_normal((32, 64, 28, 28)).astype("float32")
    got = tvm.runtime.empty((64, 32, 3, 3), "float32", tvm.cpu())
    tvm.compile(func, target=resolve_target("x86"))(to_device(dyv), to_device(xv), got)
    xp = np.pad(xv.astype("float64"), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.stack([np.stack([np.einsum("nohw,nchw->oc", dyv, xp[:, :, p:p + 28, q:q + 28])
                               for q in range(3)], -1) for p in range(3)], -2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=5e-2)
