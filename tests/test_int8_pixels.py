"""Convolutions with few output channels or taps on the 8-bit dot product with the output
pixels as its lanes (ops.int8.qconv2d_pixels, schedule/int8.py's _int8_pixels), the input's
quantization and a following max-pool done in the kernel, and the max-pool fused into the
packed convolution's epilogue: the same integers as the widening kernels, quantize and
max_pool2d run one after the other."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.errors import TvmfrontError
from tvmfront.nn import int8 as nn_int8
from tvmfront.ops import int8 as q
from tvmfront.target import resolve_target

from op_specs import qconv2d_ref
from test_int8_schedule import AVX2, REQUANT, VNNI, VNNI_TARGET, count, operands

nn = tvf.nn


def max_pool(y, p):
    """numpy max-pool, kernel = stride = p, no padding, floor."""
    n, c, h, w = y.shape
    return y[:, :, :h // p * p, :w // p * p].reshape(n, c, h // p, p, w // p, p).max((3, 5))


def reference(x, w, b, m, pool=1, scale=None, zero_point=None, qmax=255, **kw):
    """quantize (when x is float), qconv2d, max_pool2d: the kernels the fused one replaces."""
    if scale is not None:
        x = q.quantize(x, scale, zero_point, qmax=qmax)
    return max_pool(qconv2d_ref(x, w, b, m, **kw), pool)


CASES = [  # (x, w, options): LeNet's first conv, widths not a multiple of 16, strided rows
    ((2, 1, 16, 16), (6, 1, 5, 5), {"padding": 2, "pool": 2}),
    ((1, 3, 9, 20), (5, 3, 3, 3), {"padding": (1, 2), "stride": (2, 1), "x_zero_point": 4}),
    ((2, 2, 7, 8), (4, 2, 3, 1), {"pool": 3}),
]


@pytest.mark.parametrize("x_shape,w_shape,kw", CASES)
@pytest.mark.parametrize("out", [REQUANT, {}], ids=["requantize", "dequantize"])
@pytest.mark.parametrize("float_input", [False, True])
def test_pixel_lanes_compute_the_reference_integers(x_shape, w_shape, kw, out, float_input):
    rng = np.random.default_rng(0)
    x, w, b, m = operands(rng, x_shape, w_shape, x_max=255)
    kw = dict(kw)
    pool = kw.pop("pool", 1)
    scales = ()
    if float_input:  # quantized in the kernel, its padding at the zero point
        scales = (np.float32(0.02), np.int32(100))
        x = rng.normal(0, 1, x_shape).astype(np.float32)
        kw["x_zero_point"] = 100
    got = q.qconv2d_pixels(x, q.pad_taps(w), b, m, *scales, kernel=w_shape[2:], pool=pool,
                           **kw, **out)
    want = reference(x, w, b, m, pool, *scales, **kw, **out)
    np.testing.assert_array_equal(got, want)


def test_pixel_lanes_refuse_strided_columns_and_a_float_input_without_scales():
    x, w, b, m = operands(np.random.default_rng(0), (1, 1, 8, 8), (4, 1, 3, 3))
    with pytest.raises(ValueError, match="stride 1 along the width"):
        q.qconv2d_pixels(x, q.pad_taps(w), b, m, kernel=(3, 3), stride=2)
    with pytest.raises(TypeError, match="x_scale"):
        q.qconv2d_pixels(x.astype(np.float32), q.pad_taps(w), b, m, kernel=(3, 3))


def _pixels_kernel(target, x, w, b, m, scales=(), **kw):
    from tvmfront import schedule
    from tvmfront._tvm import te, tvm

    operands_ = [(x, "x"), (q.pad_taps(w), "w"), (b, "b"), (m, "m")]
    operands_ += list(zip(scales, ("s", "z")))
    args = [te.placeholder(np.shape(a), str(np.asarray(a).dtype), n) for a, n in operands_]
    out = q.qconv2d_pixels.fn(*args, kernel=w.shape[2:], **kw)
    func = te.create_prim_func(args + [out]).with_attr("global_symbol", "k")
    report, fallbacks = {}, {}
    mod = schedule.default_cpu_schedule(tvm.IRModule({"k": func}), target, report=report,
                                        fallbacks=fallbacks)
    ex = tvm.compile(mod, target)

    def run():
        res = tvm.runtime.tensor(np.zeros([int(d) for d in out.shape], str(out.dtype)))
        ex["k"](*[tvm.runtime.tensor(np.asarray(a)) for a, _ in operands_], res)
        return res.numpy()

    return ex, report["k"], fallbacks, run


@pytest.mark.parametrize("isa", ["vnni", "avx2"])
@pytest.mark.parametrize("x_shape,w_shape,kw,float_input", [
    ((3, 1, 16, 16), (6, 1, 5, 5), {"padding": 2, "pool": 2}, True),   # LeNet's first conv
    ((2, 1, 12, 20), (16, 1, 3, 3), {"padding": 1}, False),            # a stem, 20 -> 32 px
])
def test_pixel_lanes_tensorize_and_stay_exact(isa, x_shape, w_shape, kw, float_input):
    """VNNI: vpdpbusd on 16 pixels (compiled for cascadelake; run where this CPU has VNNI);
    AVX2: vpmaddubsw + vpmaddwd on 8 (7-bit activations), run here."""
    vnni = isa == "vnni"
    target = resolve_target(VNNI_TARGET if vnni else "x86:avx2")
    x_max = 255 if vnni else 127
    rng = np.random.default_rng(2)
    x, w, b, m = operands(rng, x_shape, w_shape, x_max=x_max)
    scales = ()
    if float_input:
        x = rng.normal(0, 1, x_shape).astype(np.float32)
        scales = (np.array(0.02, np.float32), np.array(60, np.int32))
        kw = {**kw, "x_zero_point": 60, "x_qmax": x_max}
    else:
        kw = {**kw, "x_qmax": x_max}
    ex, rule, fallbacks, run = _pixels_kernel(target, x, w, b, m, scales, **kw, **REQUANT)
    intrin = "tvmfront_dot_16x4_vnni" if vnni else "tvmfront_dot_8x4_avx2"
    assert rule.startswith(f"tvmfront.int8: qpixels_acc={intrin}[pixels"), rule
    assert not fallbacks
    assert count(ex, "vpdpbusd" if vnni else "vpmaddubsw") > 0 and count(ex, "vpmulld") == 0
    if VNNI if vnni else AVX2:
        qmax = kw.pop("x_qmax")
        want = reference(x, w, b, m, kw.pop("pool", 1), *scales, qmax=qmax, **kw, **REQUANT)
        np.testing.assert_array_equal(run(), want)


@pytest.mark.parametrize("x_shape,w_shape,kw,pool", [
    ((2, 6, 8, 8), (16, 6, 5, 5), {}, 2),               # LeNet's second conv
    ((1, 3, 9, 9), (20, 3, 3, 3), {"padding": 1}, 3),   # 9 -> 3, 20 channels
])
@pytest.mark.parametrize("out", [REQUANT, {}], ids=["requantize", "dequantize"])
@pytest.mark.parametrize("flat", [False, True])
def test_packed_convolution_max_pools_in_its_epilogue(x_shape, w_shape, kw, pool, out, flat):
    x, w, b, m = operands(np.random.default_rng(3), x_shape, w_shape, x_max=255)
    got = q.qconv2d_packed(x, q.pack_weight(q.pad_taps(w)), b, m, kernel=w_shape[2:],
                           direct=True, pool=pool, flat=flat, **kw, **out)
    want = reference(x, w, b, m, pool, **kw, **out)
    np.testing.assert_array_equal(got, want.reshape(len(want), -1) if flat else want)


def lenet():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def test_quantized_lenet_equals_the_widening_kernels_with_fewer_kernels(tmp_path):
    """tvf.quantize on this CPU (VNNI or AVX2): the first conv on pixel lanes with its input's
    quantize and its max-pool inside, the second packed with its max-pool in the epilogue,
    writing the Flatten's layout: the same logits, bit for bit, as the same scales on the
    widening kernels (convert with nothing packed: quantize, qconv2d, max_pool2d, reshape
    each a kernel), in one kernel (ops.int8.qchain) instead of 8; the input scales of the layers that receive
    integers are no buffers (no call arguments), and the bundle reloads."""
    x = tvf.data.upsample(tvf.data.load_digits()[0][:96], 2)
    model = lenet()
    spec = ("batch", 1, 16, 16)
    fused = tvf.quantize(model, calibration=x[:64], inputs=spec)
    scales = fused.quantization["scales"]
    plain = tvf.compile_inference(nn_int8.convert(model, scales), spec)
    got = fused.predict(x)
    np.testing.assert_array_equal(got, plain.predict(x))
    np.testing.assert_array_equal(tvf.load(fused.export(tmp_path / "q")).predict(x), got)
    state = fused.state_dict()
    assert "0.input_scale" in state and "3.input_scale" not in state
    if not (VNNI or AVX2):
        return
    converted = nn_int8.convert(model, scales, pack=lambda entry: True)
    assert [type(m).__name__ for m in converted][:7] == [
        "QuantizedConv2d", "Identity", "Identity", "QuantizedConv2d", "Identity", "Identity",
        "Identity"]
    first, second = converted[0], converted[3]
    assert (first.pixels, first.pool, second.packed, second.pool, second.flat) == (
        True, 2, True, 2, True)
    assert converted[0].chain == (second, converted[7], converted[9])
    assert all(m.in_chain for m in converted[0].chain)
    names = {gv.name_hint for gv in fused._lowered.functions} - {"predict"}
    assert names == {"qchain"}, names
    assert not fused.build_info["fallback_kernels"]


def test_two_pixel_convolutions_in_one_chain_keep_their_int8_schedules():
    """A pooled pixel-lane conv feeding a padded pixel-lane conv in one qchain: the first
    one's pooled epilogue stays its own block before the second's padding. It had been
    inlined into that padding, so the epilogue read the accumulator at (i - 1) * 2, which
    reverse_compute_at could not place: the int8 rule failed on the whole kernel and it ran
    scalar (5x slower). Same integers as the widening kernels, every kernel scheduled."""
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(96, 10))
    x = tvf.data.load_digits()[0][:64]
    spec = ("batch", 1, 8, 8)
    fused = tvf.quantize(model, calibration=x, inputs=spec)
    plain = tvf.compile_inference(nn_int8.convert(model, fused.quantization["scales"]), spec)
    np.testing.assert_array_equal(fused.predict(x), plain.predict(x))
    assert fused.build_info["fallback_kernels"] == {}
    if VNNI or AVX2:
        converted = nn_int8.convert(model, fused.quantization["scales"], pack=lambda e: True)
        assert (converted[0].pixels, converted[0].pool, converted[3].pixels) == (True, 2, True)
        assert converted[0].chain[0] is converted[3]  # both convolutions in one kernel
        assert "qchain" in {gv.name_hint for gv in fused._lowered.functions}


def test_a_layer_computed_by_an_earlier_kernel_refuses_to_run_alone():
    """A chain member's work is in its head's kernel: compiled on its own (or with the head
    left out) it would pass its input through unchanged; it says so instead."""
    if not (VNNI or AVX2):
        pytest.skip("no packed int8 kernels on this CPU: no chains")
    x = tvf.data.upsample(tvf.data.load_digits()[0][:64], 2)
    model = lenet()
    scales = tvf.quantize(model, calibration=x, inputs=(64, 1, 16, 16)).quantization["scales"]
    converted = nn_int8.convert(model, scales, pack=lambda entry: True)
    member = converted[0].chain[-1]
    with pytest.raises(TvmfrontError, match="cannot run on its own"):
        tvf.compile_inference(member, tvf.TensorSpec((64, 32), "uint8"))
    tail = nn.Sequential(*list(converted)[1:])  # the head left out
    with pytest.raises(TvmfrontError, match="fused int8 kernel"):
        tvf.compile_inference(tail, tvf.TensorSpec((64, 6, 16, 16), "uint8"))
    whole = tvf.compile_inference(converted, (64, 1, 16, 16))  # and whole it still runs
    assert whole.predict(x).shape == (64, 10)


def test_a_chain_of_packed_dense_layers_is_one_kernel_with_the_same_integers():
    """qchain: 64 -> 120 -> 84 -> 10 (LeNet's head) as one kernel, each GEMM tensorized,
    equal to qdense_packed called three times."""
    from tvmfront import schedule
    from tvmfront._tvm import te, tvm

    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, (5, 64)).astype(np.uint8)
    operands_, steps, y = [], [], x
    for k, (i, o) in enumerate([(64, 120), (120, 84), (84, 10)]):
        _, w, b, m = operands(rng, (1, i), (o, i))
        options = {"x_max": 255, **(REQUANT if k < 2 else {})}
        y = q.qdense_packed(y, q.pack_weight(w), b, m, **options)
        operands_ += [q.pack_weight(w), b, m]
        steps.append(("dense", 3, tuple(sorted(options.items()))))
    got = q.qchain(x, *operands_, steps=tuple(steps))
    np.testing.assert_array_equal(got, y)
    args = [te.placeholder(a.shape, str(a.dtype)) for a in (x, *operands_)]
    func = te.create_prim_func([*args, q.qchain.fn(*args, steps=tuple(steps))])
    report, fallbacks = {}, {}
    schedule.default_cpu_schedule(tvm.IRModule({"k": func.with_attr("global_symbol", "k")}),
                                  resolve_target(VNNI_TARGET), report=report,
                                  fallbacks=fallbacks)
    assert report["k"].count("tvmfront_dot_16x4_vnni") == 3 and not fallbacks, report
    with pytest.raises(ValueError, match="do not take 2 operands"):
        q.qchain(x, *operands_[:2], steps=tuple(steps))
