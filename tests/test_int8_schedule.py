"""The int8 GEMM rule (tvmfront/schedule/int8.py): the packed kernels (ops.int8.qdense_packed,
qconv2d_packed) against numpy's integers, tensorized with the CPU's 8-bit dot product where
the target has one (AVX2 vpmaddubsw + vpmaddwd, run here; AVX-512 VNNI vpdpbusd, compiled
only), and the fallback to the generic rules (logged, same integers) where it does not apply."""

import logging
import re

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import schedule
from tvmfront._tvm import llvm_has_features
from tvmfront.ops import int8 as q
from tvmfront.schedule import int8 as si
from tvmfront.target import resolve_target

from op_specs import qconv2d_ref, qdense_ref

AVX2 = llvm_has_features(resolve_target("x86"), "avx2")
needs_avx2 = pytest.mark.skipif(not AVX2, reason="runs AVX2 code: this CPU has no AVX2")
REQUANT = {"out_dtype": "uint8", "out_zero_point": 3, "out_qmin": 3, "out_qmax": 127}


def operands(rng, x_shape, w_shape, x_max=127):
    x = rng.integers(0, x_max + 1, x_shape).astype(np.uint8)
    w = rng.integers(-128, 128, w_shape).astype(np.int8)
    b = rng.integers(-3000, 3000, w_shape[0]).astype(np.int32)
    m = rng.uniform(1e-4, 1e-3, w_shape[0]).astype(np.float32)
    return x, w, b, m


def packed(w, direct=False):
    return q.pack_weight(q.pad_taps(w) if direct else w)


def schedule_kernel(kind, x, w, b, m, target, after=None, extra=(), **kw):
    """(scheduled IRModule, rule, fallbacks, out) of the packed op on these operands' shapes;
    after(out) -> the kernel's output: elementwise ops fused after it, as Relax fuses them,
    reading the placeholders `extra` too."""
    from tvmfront._tvm import te, tvm

    args = [te.placeholder(a.shape, str(a.dtype), n) for a, n in
            ((x, "x"), (packed(w, kw.get("direct")), "w"), (b, "b"), (m, "m"))]
    if kind == "dense":
        out = q.qdense_packed.fn(*args, **kw)
    else:
        out = q.qconv2d_packed.fn(*args, kernel=w.shape[2:], **kw)
    out = after(out) if after else out
    func = te.create_prim_func(args + list(extra) + [out]).with_attr("global_symbol", "k")
    report, fallbacks = {}, {}
    mod = schedule.default_cpu_schedule(tvm.IRModule({"k": func}), target, report=report,
                                        fallbacks=fallbacks)
    return mod, report["k"], fallbacks, out


def build(kind, x, w, b, m, target, **kw):
    """(compiled kernel, rule, fallbacks) of the packed op on these operands' shapes."""
    from tvmfront._tvm import tvm

    mod, rule, fallbacks, out = schedule_kernel(kind, x, w, b, m, target, **kw)
    return tvm.compile(mod, target), rule, fallbacks, out


def run(ex, out, x, w, b, m, direct=False):
    from tvmfront._tvm import tvm

    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    ex["k"](*[tvm.runtime.tensor(a) for a in (x, packed(w, direct), b, m)], res)
    return res.numpy()


def count(ex, instruction):
    return len(re.findall(rf"\b{instruction}\b", ex.mod.inspect_source("asm")))


# ---- the packed ops (eager) ------------------------------------------------------------------
def test_packing_round_trips_and_pads_with_zeros():
    w = np.random.default_rng(0).integers(-128, 128, (10, 3, 5, 5)).astype(np.int8)
    wp = q.pack_weight(w)
    assert wp.shape == (1, 19, 16, 4)  # 75 taps -> 76, 10 channels -> 16
    np.testing.assert_array_equal(q.unpack_weight(wp, w.shape), w)
    full = q.unpack_weight(wp, (16, 76))  # the padding: zero channels, a zero 76th tap
    assert not full[10:].any() and not full[:, 75].any()


def test_packed_ops_compute_the_reference_integers():
    rng = np.random.default_rng(0)
    x, w, b, m = operands(rng, (2, 3, 36), (5, 36), x_max=255)
    np.testing.assert_array_equal(q.qdense_packed(x, q.pack_weight(w), b, m, **REQUANT),
                                  qdense_ref(x, w, b, m, **REQUANT))
    x, w, b, m = operands(rng, (2, 3, 6, 7), (4, 3, 3, 3), x_max=255)
    got = q.qconv2d_packed(x, q.pack_weight(w), b, m, kernel=(3, 3), stride=(1, 2),
                           padding=(1, 0), x_zero_point=9)
    want = qconv2d_ref(x, w, b, m, stride=(1, 2), padding=(1, 0), x_zero_point=9)
    np.testing.assert_array_equal(got, want)


def test_packed_ops_refuse_an_unpacked_weight_and_a_wrong_x_max():
    x, w, b, m = operands(np.random.default_rng(0), (2, 8), (4, 8))
    with pytest.raises(tvf.errors.ShapeError, match="packed"):
        q.qdense_packed(x, w, b, m)
    with pytest.raises(ValueError, match="x_max"):
        q.qdense_packed(x, q.pack_weight(w), b, m, x_max=300)


# ---- the schedule rule -----------------------------------------------------------------------
@needs_avx2
@pytest.mark.parametrize("kind,x_shape,w_shape,kw", [
    ("dense", (64, 256), (256, 256), {}),                   # 4-row tiles, parallel
    ("dense", (3, 36), (10, 36), {}),                       # 1-row tiles, 10 of 16 channels
    ("conv", (2, 3, 9, 8), (6, 3, 3, 3), {"stride": 2, "padding": 1, "x_zero_point": 5}),
    # direct: rows of x read in place; the last window's zero taps past x's right edge
    # (no padding: x is widened for them), stride 2, a 5x5 (taps 5 -> 8), a 1x1 (1 -> 4)
    ("conv", (2, 3, 9, 8), (6, 3, 3, 3), {"stride": 2, "padding": 1, "x_zero_point": 5,
                                          "direct": True}),
    ("conv", (2, 6, 8, 8), (16, 6, 5, 5), {"direct": True}),
    ("conv", (1, 5, 6, 7), (20, 5, 3, 2), {"stride": (2, 1), "padding": (0, 1),
                                           "x_zero_point": 7, "direct": True}),
    ("conv", (2, 8, 6, 6), (16, 8, 1, 1), {"stride": 2, "direct": True}),
])
def test_avx2_tensorizes_with_vpmaddubsw_and_stays_exact(kind, x_shape, w_shape, kw):
    x, w, b, m = operands(np.random.default_rng(1), x_shape, w_shape)
    ex, rule, fallbacks, out = build(kind, x, w, b, m, resolve_target("x86:avx2"),
                                     x_max=127, **REQUANT, **kw)
    assert rule.startswith("tvmfront.int8: qgemm_acc=tvmfront_dot_8x4_avx2"), rule
    assert not fallbacks
    assert count(ex, "vpmaddubsw") > 0 and count(ex, "vpmulld") == 0
    direct = kw.pop("direct", False)
    ref = qdense_ref if kind == "dense" else qconv2d_ref
    np.testing.assert_array_equal(run(ex, out, x, w, b, m, direct),
                                  ref(x, w, b, m, **REQUANT, **kw))



VNNI_TARGET = {"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}
VNNI = llvm_has_features(resolve_target("x86"), "avx512vnni", "avx512bw")
TILES = [  # (x, w, options, rows x lanes of its tile on VNNI, on AVX2)
    ((2, 16, 32, 32), (16, 16, 3, 3), {"padding": 1}, "16x16", "4x16"),  # along Wo
    ((2, 32, 8, 8), (32, 32, 3, 3), {"padding": 1}, "16x16", "4x16"),    # 2 rows of 8
    ((2, 6, 8, 8), (16, 6, 5, 5), {}, "16x16", "4x16"),                  # 4x4 out
    ((2, 16, 16, 16), (32, 16, 1, 1), {"stride": 2}, "16x16", "4x16"),   # 1x1 stride 2
    # Wo 7, 98 rows: 1 row (4 rows over (N, Ho, Wo) fused, where they divide, bound the
    # box loosely: the tile stays in memory)
    ((2, 8, 7, 7), (16, 8, 3, 3), {"padding": 1}, "1x16", "1x16"),
]


def _stores_in_dot_loop(asm, instruction):
    """(vector stores between the first and the last dot-product instruction, dot-product
    instructions): a tile left in memory is written back at every step (a few stores are
    spills of AVX2's 16 registers)."""
    lines = asm.splitlines()
    hits = [k for k, ln in enumerate(lines) if re.search(rf"\b{instruction}\b", ln)]
    body = lines[hits[0]:hits[-1]]
    return sum(bool(re.search(r"\bvmov\w+\s+%[xyz]mm\d+, .*\(", ln)) for ln in body), len(hits)


@pytest.mark.parametrize("x_shape,w_shape,kw,vnni_tile,avx2_tile", TILES)
@pytest.mark.parametrize("isa", ["vnni", "avx2"])
def test_conv_tiles_keep_their_accumulators_in_registers(isa, x_shape, w_shape, kw, vnni_tile,
                                                         avx2_tile):
    """The convolution's rows are (N, Ho, Wo): a tile along Wo (or over whole image rows)
    is a box of the NCHW output, so the epilogue reads it at constant offsets and LLVM keeps
    it in registers: no store per dot-product step (one flat row axis left it in
    memory, a store and reload per step: ResNet int8 0.8x float32). VNNI: up to 16 rows (32
    zmm); AVX2: 4. Exact where this CPU runs the code."""
    vnni = isa == "vnni"
    target = resolve_target(VNNI_TARGET if vnni else "x86:avx2")
    x_max = 255 if vnni else 127
    x, w, b, m = operands(np.random.default_rng(7), x_shape, w_shape, x_max=x_max)
    kw = {"direct": True, **kw}
    ex, rule, fallbacks, out = build("conv", x, w, b, m, target, x_max=x_max, **REQUANT, **kw)
    tile = vnni_tile if vnni else avx2_tile
    assert f"[{tile}x4, epilogue in tile" in rule and not fallbacks, rule
    instruction = "vpdpbusd" if vnni else "vpmaddubsw"
    stores, dots = _stores_in_dot_loop(ex.mod.inspect_source("asm"), instruction)
    assert stores < dots // 4, (stores, dots)
    if (VNNI if vnni else AVX2):
        direct = kw.pop("direct")
        np.testing.assert_array_equal(run(ex, out, x, w, b, m, direct),
                                      qconv2d_ref(x, w, b, m, **REQUANT, **kw))



@pytest.mark.parametrize("x_shape,w_shape,kw", [
    ((1, 1, 3, 3), (32, 1, 1, 1), {}),  # the smallest that failed: 120 of 288 wrong
    ((2, 3, 8, 8), (32, 3, 3, 3), {"padding": 1}),
    ((2, 1, 21, 21), (64, 1, 1, 1), {"padding": 2, **REQUANT}),
])
@pytest.mark.parametrize("isa", ["vnni", "avx2"])
def test_a_flat_output_is_written_from_its_own_tile(isa, x_shape, w_shape, kw):
    """flat=True (a Flatten after the conv) writes [N, C * H * W], no box of a tile's
    (n, i, j, channel) ranges: computed at the tile, the epilogue ran over the interval from
    the tile's first flat element to its last and read other tiles' accumulators, never
    computed there (VNNI: 120 of 288 outputs wrong for the first case). It now stays a
    loop nest of its own wherever it would not cover exactly the tile. Exact where this CPU
    runs the code."""
    vnni = isa == "vnni"
    target = resolve_target(VNNI_TARGET if vnni else "x86:avx2")
    x_max = 255 if vnni else 127
    x, w, b, m = operands(np.random.default_rng(9), x_shape, w_shape, x_max=x_max)
    mod, rule, fallbacks, out = schedule_kernel("conv", x, w, b, m, target, x_max=x_max,
                                                flat=True, x_zero_point=5, **kw)
    assert not fallbacks and "epilogue in tile" not in rule, rule
    # the windows' loop under the tile is unrolled, not the tile loop above it: the last case
    # unrolled 5000 tiles on AVX2 (LLVM took 150 s to build the kernel)
    unrolled = [int(n) for n in re.findall(r"in T\.unroll\((\d+)\)", mod.script())]
    assert max(unrolled) <= 1024, unrolled
    from tvmfront._tvm import tvm
    ex = tvm.compile(mod, target)
    if VNNI if vnni else AVX2:
        want = qconv2d_ref(x, w, b, m, x_zero_point=5, **kw)
        np.testing.assert_array_equal(run(ex, out, x, w, b, m), want.reshape(len(want), -1))

def test_vnni_epilogue_reads_the_tile_by_channels_and_chunks_the_parallel_tiles():
    """A requantizing convolution on VNNI: the epilogue runs along the channels (the tile's
    own layout, one register of 16 channels per row), not along the pixels (a column of
    the tile per vector: in the ResNet's kernels 16 vpgatherdd per tile); the parallel loop
    runs chunks of tiles (64 here), not single tiles, so the 1 KiB accumulator's workspace
    is taken once per chunk. Exact where this CPU has VNNI."""
    target = resolve_target(VNNI_TARGET)
    x, w, b, m = operands(np.random.default_rng(8), (2, 16, 32, 32), (16, 16, 3, 3), 255)
    kw = {"x_max": 255, "padding": 1, "direct": True, **REQUANT}
    mod, rule, fallbacks, _ = schedule_kernel("conv", x, w, b, m, target, **kw)
    assert "[16x16x4, epilogue in tile by channels, parallel]" in rule and not fallbacks, rule
    parallel = re.findall(r"in T.parallel\((\d+)\)", mod.script())
    assert parallel == [str(si.PARALLEL_CHUNKS)], parallel  # (n, Ho) fused: 2 x 32
    ex, _, _, out = build("conv", x, w, b, m, target, **kw)
    if VNNI:
        kw.pop("direct"), kw.pop("x_max")
        np.testing.assert_array_equal(run(ex, out, x, w, b, m, True),
                                      qconv2d_ref(x, w, b, m, **kw))


def _blocks(mod):
    """The names of the scheduled kernel's blocks."""
    from tvmfront.schedule.analysis import _walk_stmts

    names = []
    _walk_stmts(mod["k"].body, lambda n: names.append(n.name_hint) if hasattr(
        n, "name_hint") and hasattr(n, "iter_vars") else None)
    return names


@needs_avx2
def test_direct_convolution_gathers_nothing():
    """direct=True: no windows stage, and the dot product's activation operand is 4 bytes of
    the (padded) input read in place."""
    x, w, b, m = operands(np.random.default_rng(5), (2, 16, 8, 8), (16, 16, 3, 3))
    for direct in (False, True):
        mod, rule, _, _ = schedule_kernel("conv", x, w, b, m, resolve_target("x86:avx2"),
                                          x_max=127, padding=1, direct=direct, **REQUANT)
        text = mod.script()
        assert ("qconv2d_windows" in _blocks(mod)) is not direct, rule
        assert ("A = T.match_buffer(qconv2d_pad[" in text) is direct


@needs_avx2
def test_elementwise_ops_fused_after_the_gemm_run_in_its_tile():
    """Relax fuses the dequantized output's residual add and ReLU (and a next layer's
    quantize) into the convolution's kernel: the rule inlines them into one block computed
    in the tile, so no float tensor is written between them; same numbers."""
    from tvmfront._tvm import te, tirx, tvm

    rng = np.random.default_rng(6)
    x, w, b, m = operands(rng, (2, 16, 8, 8), (16, 16, 3, 3))
    r = rng.normal(0, 1, (2, 16, 8, 8)).astype(np.float32)
    rp = te.placeholder(r.shape, "float32", "r")

    def after(out):
        add = te.compute(out.shape, lambda *i: out(*i) + rp(*i), name="T_add")
        return te.compute(out.shape, lambda *i: te.max(add(*i), tirx.const(0, "float32")),
                          name="T_relu")

    kw = {"x_max": 127, "padding": 1, "direct": True}
    mod, rule, fallbacks, out = schedule_kernel("conv", x, w, b, m, resolve_target("x86:avx2"),
                                                after=after, extra=[rp], **kw)
    func = mod["k"]
    assert "epilogue in tile" in rule and not fallbacks
    assert "by channels" not in rule, rule  # the residual's 16 strided loads cost more
    blocks = _blocks(mod)
    assert "T_relu" in blocks and "T_add" not in blocks and "qconv2d" not in blocks, blocks
    ex = tvm.compile(mod, resolve_target("x86:avx2"))
    res = tvm.runtime.tensor(np.zeros(r.shape, np.float32))
    order = [p.name for p in func.params]
    vals = {"x": x, "w": packed(w, True), "b": b, "m": m, "r": r}
    ex["k"](*[tvm.runtime.tensor(vals[n]) for n in order[:-1]], res)
    want = np.maximum(qconv2d_ref(x, w, b, m, padding=1) + r, 0)
    np.testing.assert_allclose(res.numpy(), want, rtol=1e-6, atol=1e-5)


@needs_avx2
def test_8_bit_activations_on_avx2_fall_back_to_the_widening_kernel(caplog):
    """x_max 255 would saturate vpmaddubsw's int16 pair sums: the rule steps aside (logged)
    and the generic rules compute the same integers on the packed weight."""
    x, w, b, m = operands(np.random.default_rng(2), (8, 64), (16, 64), x_max=255)
    with caplog.at_level(logging.INFO, logger="tvmfront.schedule"):
        ex, rule, _, out = build("dense", x, w, b, m, resolve_target("x86:avx2"), x_max=255)
    assert not rule.startswith("tvmfront.int8"), rule
    assert "saturates" in caplog.text
    assert count(ex, "vpmaddubsw") == 0
    np.testing.assert_array_equal(run(ex, out, x, w, b, m), qdense_ref(x, w, b, m))


@pytest.mark.falls_back
def test_a_failing_tensorization_falls_back_and_is_recorded(monkeypatch):
    def broken(*args):
        raise RuntimeError("tensorize refused")

    monkeypatch.setattr(si, "_tile", broken)
    x, w, b, m = operands(np.random.default_rng(3), (4, 32), (16, 32))
    ex, rule, fallbacks, out = build("dense", x, w, b, m, resolve_target("x86:avx2"), x_max=127)
    assert not rule.startswith("tvmfront.int8")
    assert "tensorize refused" in " ".join(fallbacks["k"])
    if AVX2:
        np.testing.assert_array_equal(run(ex, out, x, w, b, m), qdense_ref(x, w, b, m))


@pytest.mark.parametrize("mcpu,instruction", [("cascadelake", "vpdpbusd"),
                                               ("skylake-avx512", "vpmaddubsw")])
def test_avx512_targets_compile_their_dot_product(mcpu, instruction):
    """Compile only: cascadelake has VNNI (vpdpbusd, 8-bit activations), skylake-avx512 not
    (the AVX2 pair, 7-bit activations)."""
    from tvmfront._tvm import Target

    target = Target({"kind": "llvm", "mcpu": mcpu, "num-cores": 2})
    x, w, b, m = operands(np.random.default_rng(4), (16, 64), (32, 64), x_max=255)
    x_max = 255 if instruction == "vpdpbusd" else 127
    ex, rule, fallbacks, _ = build("dense", x, w, b, m, target, x_max=x_max)
    assert rule.startswith("tvmfront.int8"), rule
    assert not fallbacks and count(ex, instruction) > 0


def test_no_dot_product_on_baseline_x86():
    with pytest.raises(schedule.NotApplicable, match="no 8-bit dot-product"):
        si.dot_intrinsic(resolve_target("x86:sse"), 127)


# ---- tvf.quantize's choices per target -------------------------------------------------------
@pytest.mark.parametrize("target,qmax,packed", [
    ("x86:avx2", 127, True),                                   # vpmaddubsw: 7-bit activations
    ({"kind": "llvm", "mcpu": "cascadelake", "num-cores": 2}, 255, True),   # VNNI
    ("x86:sse", 255, False),                                   # no 8-bit dot product
])
def test_quantize_picks_the_activation_range_and_layout_for_its_target(target, qmax, packed):
    """Calibration runs on this CPU whatever the target (a cascadelake module would not run
    on an AVX2 machine); the module is built for the target."""
    tvf.manual_seed(0)
    model = tvf.nn.Sequential(tvf.nn.Flatten(), tvf.nn.Linear(64, 32), tvf.nn.ReLU(),
                              tvf.nn.Linear(32, 10))
    x = tvf.data.load_digits()[0][:64]
    module = tvf.quantize(model, calibration=x, inputs=("batch", 1, 8, 8), target=target)
    scales = module.quantization["scales"]
    assert {s["input_qmax"] for s in scales.values()} == {qmax}
    assert module.state_dict()["1.weight"].ndim == (4 if packed else 2)
    assert not module.build_info["fallback_kernels"]
