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


def build(kind, x, w, b, m, target, **kw):
    """(compiled kernel, rule, fallbacks) of the packed op on these operands' shapes."""
    from tvmfront._tvm import te, tvm

    args = [te.placeholder(a.shape, str(a.dtype), n) for a, n in
            ((x, "x"), (q.pack_weight(w), "w"), (b, "b"), (m, "m"))]
    if kind == "dense":
        out = q.qdense_packed.fn(*args, **kw)
    else:
        out = q.qconv2d_packed.fn(*args, kernel=w.shape[2:], **kw)
    func = te.create_prim_func(args + [out]).with_attr("global_symbol", "k")
    report, fallbacks = {}, {}
    mod = schedule.default_cpu_schedule(tvm.IRModule({"k": func}), target, report=report,
                                        fallbacks=fallbacks)
    return tvm.compile(mod, target), report["k"], fallbacks, out


def run(ex, out, x, w, b, m):
    from tvmfront._tvm import tvm

    res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
    ex["k"](*[tvm.runtime.tensor(a) for a in (x, q.pack_weight(w), b, m)], res)
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
])
def test_avx2_tensorizes_with_vpmaddubsw_and_stays_exact(kind, x_shape, w_shape, kw):
    x, w, b, m = operands(np.random.default_rng(1), x_shape, w_shape)
    ex, rule, fallbacks, out = build(kind, x, w, b, m, resolve_target("x86:avx2"),
                                     x_max=127, **REQUANT, **kw)
    assert rule.startswith("tvmfront.int8: qgemm_acc=tvmfront_dot_8x4_avx2"), rule
    assert not fallbacks
    assert count(ex, "vpmaddubsw") > 0 and count(ex, "vpmulld") == 0
    ref = qdense_ref if kind == "dense" else qconv2d_ref
    np.testing.assert_array_equal(run(ex, out, x, w, b, m), ref(x, w, b, m, **REQUANT, **kw))


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
