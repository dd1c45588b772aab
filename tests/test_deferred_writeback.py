"""conv_forward's write-back deferred into the next tile's reduction loop
(tvmfront/schedule/deferred_writeback.py): where the stores land in the scheduled TIR, and
that the values are the convolution's, bit for bit those of the write-back left in place."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, tirx, to_device, tvm
from tvmfront.build import compile_kernels
from tvmfront.schedule import conv_forward, deferred_writeback, schedule_prim_func
from tvmfront.target import resolve_target
from tvmfront.tir_walk import children

from test_conv_register_tiles import AVX512, _conv_reference


def _conv(x_shape, w_shape, stride=1, epilogue=False):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, stride=stride, padding=w_shape[2] // 2)
    if epilogue:  # an inference conv + batch norm + relu: absorbed into the write-back
        y = te.compute(y.shape, lambda *i: te.max(y(*i) * 0.5 + 0.25, 0.0), name="bn_relu")
    return te.create_prim_func([x, w, y])


def _block_paths(func, name, kinds=False):
    """[[loop variable names around each block named `name`, outermost first]] (with `kinds`,
    (name, loop kind) pairs) and every annotation key left on loops and blocks."""
    paths, keys = [], set()

    def visit(node, loops):
        kind = type(node).__name__
        if kind == "For":
            keys.update(node.annotations.keys())
            loops = loops + [(node.loop_var.name, int(node.kind)) if kinds else
                             node.loop_var.name]
        elif kind == "SBlock":
            keys.update(node.annotations.keys())
            if node.name_hint == name:
                paths.append(loops)
        for child in children(node):
            visit(child, loops)

    visit(func.body, [])
    return paths, keys


def test_a_tile_is_written_back_during_the_next_tiles_reduction():
    """b32 32->64 @28 on AVX-512: the write-back of a tile (7 columns x 32 channels into 32
    NCHW planes) runs inside the next tile's loop over the input channels, one channel an
    iteration, and the last tile's after the tile loops; no mark is left behind. (One
    Emerald Rapids core: 6116 -> 5808 us, the same loop order with every write-back after
    its own tile.)"""
    func, rule = schedule_prim_func(_conv((32, 32, 28, 28), (64, 32, 3, 3)),
                                    resolve_target(AVX512))
    assert "conv2d=conv[7xv32, parallel per image" in rule, rule
    paths, keys = _block_paths(func, "conv2d_global")
    assert len(paths) == 2, paths
    inside, after = sorted(paths, key=len, reverse=True)
    assert "c" in inside and "j_0" in inside, inside  # the next tile's reduction loop
    assert "c" not in after and "j_0" not in after, after  # the last tile, after the tiles
    assert not {k for k in keys if k.startswith("tvmfront.defer")}, keys


def test_the_deferred_writeback_moves_scalars_beside_the_fmas():
    """A channel's 7 columns are 32 floats apart in the channels-last cache: inside the
    reduction they are copied by unrolled scalar moves, not a vector LLVM would gather with
    shuffles on an FMA port (b32 32->64 @28 forward 1.03x on one Emerald Rapids core); the last
    tile's write-back, after the tiles, stays vectorized."""
    func, _ = schedule_prim_func(_conv((32, 32, 28, 28), (64, 32, 3, 3)), resolve_target(AVX512))
    paths = _block_paths(func, "conv2d_global", kinds=True)[0]
    inside, after = sorted(paths, key=len, reverse=True)
    assert tirx.ForKind.VECTORIZED not in [k for _, k in inside], inside
    assert inside[-1][1] == tirx.ForKind.UNROLLED, inside
    assert after[-1][1] == tirx.ForKind.VECTORIZED, after


@pytest.mark.parametrize("x_shape, w_shape, stride, epilogue", [
    # 2 images, run in parallel with the channel panels and rows: the row's tiles only
    ((2, 32, 28, 28), (32, 32, 3, 3), 1, False),
    # one image a parallel iteration: the image's tiles in order, 16 channels (a vector of
    # AVX2's 2 x 8 lanes) written back over 3 input channels, 6 a step, the last step 4
    ((16, 3, 12, 12), (16, 3, 3, 3), 1, False),
    ((16, 16, 24, 24), (32, 16, 3, 3), 2, True),  # strided, BN + ReLU in the write-back
])
def test_deferred_writeback_computes_the_convolution(monkeypatch, x_shape, w_shape, stride,
                                                     epilogue):
    """With conv_forward's rule forced onto AVX2 code (so that any x86 host runs it), every
    output element is written: numpy's convolution, and the same bits as the write-back left
    after its own tile."""
    monkeypatch.setattr(conv_forward, "CONV_MIN_VECTOR_BITS", 256)
    func = _conv(x_shape, w_shape, stride, epilogue)
    target = resolve_target("x86:avx2")
    rng = np.random.default_rng(0)
    xv = rng.standard_normal(x_shape).astype("float32")
    wv = rng.standard_normal(w_shape).astype("float32")
    want = _conv_reference(xv.astype("float64"), wv.astype("float64"), w_shape[2] // 2, stride)
    if epilogue:
        want = np.maximum(want * 0.5 + 0.25, 0.0)
    outs = []
    for defer in (True, False):
        monkeypatch.setattr(conv_forward, "DEFER_WRITEBACK", defer)
        scheduled, rule = schedule_prim_func(func, target)
        assert "=conv[" in rule, rule
        paths = _block_paths(scheduled, "conv2d_global")[0]
        inside = [path for path in paths if "c" in path]  # in the next tile's reduction
        assert len(paths) - len(inside) == 1 and bool(inside) == defer, paths
        out = to_device(np.full(want.shape, np.nan, "float32"))
        compile_kernels(scheduled, target)["main"](to_device(xv), to_device(wv), out)
        outs.append(out.numpy())
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(outs[0], outs[1])


_TWO_WRITEBACKS = """
@T.prim_func(s_tir=True)
def main(a: T.Buffer((4, 8), "float32"), b: T.Buffer((4, 8), "float32")):
    for t in T.serial(4, annotations={"tvmfront.defer_writeback_tiles": 1}):
        for c in T.serial(8, annotations={"tvmfront.defer_writeback_into": 1}):
            with T.sblock("update"):
                vt, vc = T.axis.remap("SS", [t, c])
                a[vt, vc] = a[vt, vc] + T.float32(1)
        for k in range(8):
            with T.sblock("wb0"):
                vt, vk = T.axis.remap("SS", [t, k])
                T.sblock_attr({"tvmfront.defer_writeback": 1})
                b[vt, vk] = a[vt, vk]
        for k in range(8):
            with T.sblock("wb1"):
                vt, vk = T.axis.remap("SS", [t, k])
                T.sblock_attr({"tvmfront.defer_writeback": 1})
                b[vt, vk] = b[vt, vk] + a[vt, vk]
"""


def test_a_tile_loop_of_another_shape_keeps_its_writeback():
    """Marks on tile loops that do not hold one reduction loop before one write-back (here
    two write-backs) are removed and the statements left where they are."""
    assert {deferred_writeback.DEFER, deferred_writeback.DEFER_INTO,
            deferred_writeback.DEFER_TILES} <= set(_TWO_WRITEBACKS.split('"'))
    out = deferred_writeback.defer_writebacks(tvm.script.from_source(_TWO_WRITEBACKS))
    for name in ("wb0", "wb1"):
        paths, keys = _block_paths(out, name)
        assert paths == [["t", "k"]], (name, paths)
        assert not {k for k in keys if k.startswith("tvmfront.defer")}, keys


_LIKELY_PREDICATE = """
@T.prim_func(s_tir=True)
def main(a: T.Buffer((4, 8), "float32"), b: T.Buffer((4, 6), "float32")):
    for t in T.serial(4, annotations={"tvmfront.defer_writeback_tiles": 1}):
        for c in T.serial(8, annotations={"tvmfront.defer_writeback_into": 1}):
            with T.sblock("update"):
                vt, vc = T.axis.remap("SS", [t, c])
                a[vt, vc] = a[vt, vc] + T.float32(1)
        for k in range(8):
            with T.sblock("wb"):
                vt, vk = T.axis.remap("SS", [t, k])
                T.where(T.likely(k < 6))
                T.sblock_attr({"tvmfront.defer_writeback": 1})
                b[vt, vk] = a[vt, vk]
"""


def test_a_write_back_under_a_likely_predicate_is_deferred():
    """A write-back whose predicate is a call (T.likely, as predicates.py marks partial
    tiles) is rebuilt with its loop variables substituted inside the call: deferred into the
    next tile's reduction loop and after the tiles, no mark left."""
    out = deferred_writeback.defer_writebacks(tvm.script.from_source(_LIKELY_PREDICATE))
    paths, keys = _block_paths(out, "wb")
    assert sorted(paths) == [["k"], ["t", "c"]], paths
    assert not {k for k in keys if k.startswith("tvmfront.defer")}, keys
    assert "T.likely" in out.script(), out.script()
