"""Post-training int8 quantization (tvf.quantize): the integer kernels against numpy integer
references (quantize, requantizing epilogues), the converted model against its float and
fake-quantized versions, the QAT path, export and reload, what stays float, bad calibration
data, and (slow) the digits MLP's and LeNet's accuracy float vs int8."""

import sys
import pathlib
import warnings

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.nn import int8 as nn_int8
from tvmfront.nn import quantization as qat
from tvmfront.ops import int8 as q
from tvmfront.ptq import calibrate

from op_specs import qconv2d_ref, qdense_ref

nn = tvf.nn
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def small_cnn():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 10))


def digits(n=None):
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    return x_train[:n], x_test[:n]


# ---- kernels ---------------------------------------------------------------------------------
def test_quantize_rounds_half_to_even_and_clamps_like_fake_quant():
    x = np.float32([0.125, 0.375, -0.125, 10.0, -10.0, 0.2])  # ties at scale 0.25: 0.5, 1.5
    got = q.quantize(x, np.float32(0.25), np.int32(3), qmin=0, qmax=40)
    np.testing.assert_array_equal(got, np.uint8([3, 5, 3, 40, 0, 4]))
    assert got.dtype == np.uint8
    fq = tvf.ops.fake_quant(x, np.float32(0.25), np.int32(3), qmin=0, qmax=40)
    np.testing.assert_array_equal((got.astype(np.float32) - 3) * 0.25, fq)
    s8 = q.quantize(x, np.float32(0.25), np.int32(0), qmin=-128, qmax=127, dtype="int8")
    np.testing.assert_array_equal(s8, np.int8([0, 2, 0, 40, -40, 1]))
    with pytest.raises(ValueError, match="qmin < qmax <= 255"):
        q.quantize(x, np.float32(1), np.int32(0), qmin=0, qmax=300)


@pytest.mark.parametrize("out_dtype,zp,lo,hi", [("uint8", 3, 3, 255), ("int8", -5, -128, 127)])
def test_requantizing_epilogue_matches_the_integer_reference(out_dtype, zp, lo, hi):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 2, 7, 6)).astype(np.uint8)
    w = rng.integers(-128, 128, (5, 2, 3, 3)).astype(np.int8)
    b = rng.integers(-4000, 4000, 5).astype(np.int32)
    m = rng.uniform(2e-4, 2e-3, 5).astype(np.float32)
    out = {"out_dtype": out_dtype, "out_zero_point": zp, "out_qmin": lo, "out_qmax": hi}
    got = q.qconv2d(x, w, b, m, stride=(1, 2), padding=(1, 0), x_zero_point=17, **out)
    want = qconv2d_ref(x, w, b, m, stride=(1, 2), padding=(1, 0), x_zero_point=17, **out)
    assert got.dtype == np.dtype(out_dtype)
    np.testing.assert_array_equal(got, want)
    assert (want == lo).any() and len(np.unique(want)) > 20  # the clamp and the range are used
    xd, wd = x.reshape(3, -1)[:, :40], rng.integers(-128, 128, (5, 40)).astype(np.int8)
    np.testing.assert_array_equal(q.qdense(xd, wd, b, m, **out), qdense_ref(xd, wd, b, m, **out))


def test_kernels_refuse_float_operands_and_bad_shapes():
    x, w = np.zeros((2, 4), np.uint8), np.zeros((3, 4), np.int8)
    b, m = np.zeros(3, np.int32), np.ones(3, np.float32)
    with pytest.raises(TypeError, match="x must be uint8 or int8"):
        q.qdense(x.astype(np.float32), w, b, m)
    with pytest.raises(TypeError, match="w must be int8"):
        q.qdense(x, w.astype(np.uint8), b, m)
    with pytest.raises(tvf.ShapeError, match="bias must have shape"):
        q.qdense(x, w, b[:2], m)
    with pytest.raises(ValueError, match="out_dtype"):
        q.qdense(x, w, b, m, out_dtype="int32")


# ---- conversion ------------------------------------------------------------------------------
def test_int8_cnn_follows_the_float_model_and_chains_integers(tmp_path):
    model = small_cnn()
    x, x_test = digits(256)
    module = tvf.quantize(model, calibration=x, inputs=("batch", 1, 8, 8))
    report = module.quantization
    assert report["int8"] == ["0", "3", "6", "8"] and report["float"] == []
    want = tvf.compile_inference(model, ("batch", 1, 8, 8)).predict(x_test)
    got = module.predict(x_test)
    # measured: max |diff| ~3% of the logits' range; argmax agrees on ~all samples
    assert np.abs(got - want).max() < 0.06 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.97
    # every int8 layer hands integers to the next (ReLU as the clamp, pooling and flattening
    # on uint8); only the last one dequantizes
    converted = nn_int8.convert(model, report["scales"])
    kinds = [(type(m).__name__, m.out.get("out_dtype"), m.quantize_input) for m in converted
             if isinstance(m, nn_int8._Quantized)]
    assert kinds == [("QuantizedConv2d", "uint8", True), ("QuantizedConv2d", "uint8", False),
                     ("QuantizedLinear", "uint8", False), ("QuantizedLinear", None, False)]
    assert [type(m).__name__ for m in converted] == [
        "QuantizedConv2d", "Identity", "MaxPool2d", "QuantizedConv2d", "Identity", "Flatten",
        "QuantizedLinear", "Identity", "QuantizedLinear"]
    # a bundle: int8 weights in the file, same predictions after tvf.load
    loaded = tvf.load(module.export(tmp_path / "int8"))
    np.testing.assert_array_equal(loaded.predict(x_test), got)
    assert loaded.state_dict()["0.weight"].dtype == np.int8
    assert loaded.state_dict()["0.bias"].dtype == np.int32


def test_percentile_calibration_narrows_the_range_of_outliers():
    model = small_cnn()
    x, _ = digits(256)
    x = x.copy()
    x[0, 0, 0, 0] = 200.0  # one outlier: min/max spends the whole uint8 range on it
    minmax = calibrate(model, x, method="minmax")
    pct = calibrate(model, x, method="percentile", percentile=99.9)
    assert minmax["0"]["input_scale"] == pytest.approx(200 / 255, rel=1e-6)
    assert pct["0"]["input_scale"] < minmax["0"]["input_scale"] / 10
    np.testing.assert_array_equal(pct["0"]["weight_scale"], minmax["0"]["weight_scale"])


def test_a_qat_model_converts_to_the_integers_it_was_trained_with():
    """Scales from qat_scales: the int8 module computes what the fake-quantized eval model
    computes, up to float summation order and the int32 rounding of the bias."""
    model = qat.prepare_qat(small_cnn())
    x, x_test = digits(256)
    for _, layer in qat.qat_layers(model):  # ranges as if observed in training
        layer.input_fake_quant.min_val = np.float32(0.0)
        layer.input_fake_quant.max_val = np.float32(3.0)
    module = tvf.quantize(model, inputs=("batch", 1, 8, 8))
    want = tvf.compile_inference(model, ("batch", 1, 8, 8)).predict(x_test)
    got = module.predict(x_test)
    # The same integers (the outputs differ by the last layer's bias rounding, ~3e-5 of the
    # largest) except where an intermediate value lies within the int32 bias's
    # rounding (<= 0.5 * s_x * s_w) of a requantization boundary: one step apart there, and a
    # sample's outputs all move with it. Measured: 5.9% of outputs off by more than 1e-4 of the
    # largest, at most 1.9% of it; argmax equal on all 256 samples.
    diff = np.abs(got - want) / np.abs(want).max()
    assert (diff > 1e-4).mean() < 0.15 and diff.max() < 0.05
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.98
    with pytest.raises(ValueError, match="pass calibration=None"):
        tvf.quantize(model, calibration=x, inputs=("batch", 1, 8, 8))


def test_layers_without_an_int8_kernel_stay_float_and_are_named(tmp_path):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.LayerNorm(16), nn.ReLU(),
                          nn.Linear(16, 10, bias=False))
    x, x_test = digits(128)
    with pytest.warns(UserWarning, match=r"no int8 kernel for '2' \(LayerNorm\).*stay float"):
        module = tvf.quantize(model, calibration=x)
    assert module.quantization["int8"] == ["1", "4"]
    assert module.quantization["float"] == [("2", "LayerNorm")]
    converted = nn_int8.convert(model, module.quantization["scales"])
    assert type(converted[2]).__name__ == "LayerNorm"  # between the two: float
    assert not converted[1].out and converted[4].quantize_input  # dequantize, quantize again
    assert np.isfinite(module.predict(x_test)).all()
    # the exported bundle says it too: its manifest, read back by tvf.load
    loaded = tvf.load(module.export(tmp_path / "q"))
    assert loaded.manifest["quantization"] == {"int8": ["1", "4"], "float": [["2", "LayerNorm"]]}
    np.testing.assert_array_equal(loaded.predict(x_test), module.predict(x_test))


def test_a_pruned_model_keeps_its_zeros_in_int8():
    from tvmfront.nn import pruning

    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    pruning.prune(model, amount=0.8)
    x, _ = digits(128)
    weight = tvf.quantize(model, calibration=x).state_dict()["1.weight"]
    assert weight.dtype == np.int8
    if weight.ndim == 4:  # packed for this CPU's 8-bit dot product
        weight = q.unpack_weight(weight, (32, 64))
    assert (weight[model[1].weight_mask.data == 0] == 0).all()  # masked: exactly 0
    assert (weight == 0).mean() >= 0.8


def test_bad_calibration_data_is_a_clear_error():
    model = small_cnn()
    x, _ = digits(64)
    spec = ("batch", 1, 8, 8)
    with pytest.raises(ValueError, match=r"calibration samples have shape \(64, 1, 4, 16\)"):
        tvf.quantize(model, calibration=x.reshape(64, 1, 4, 16), inputs=spec)
    with pytest.raises(ValueError, match=r"calibration samples have shape \(64, 64\)"):
        tvf.quantize(model, calibration=x.reshape(64, 64), inputs=spec)
    with pytest.raises(ValueError, match=r"does not take calibration samples of shape "
                       r"\(256, 1, 4, 4\).*expected input \[\.\.\., 96\]"):
        tvf.quantize(model, calibration=x.reshape(256, 1, 4, 4))  # no inputs=: the model says
    bad = x.copy()
    bad[3, 0, 2, 1] = np.nan
    with pytest.raises(ValueError, match=r"1 NaN/inf value\(s\) \(first at index \(3, 0, 2, 1\)"):
        tvf.quantize(model, calibration=bad, inputs=spec)
    bad[3, 0, 2, 1] = np.inf
    with pytest.raises(ValueError, match="NaN/inf"):
        tvf.quantize(model, calibration=bad)
    with pytest.raises(ValueError, match="non-empty numpy array"):
        tvf.quantize(model, calibration=x[:0], inputs=spec)
    with pytest.raises(ValueError, match="method must be one of"):
        tvf.quantize(model, calibration=x, method="entropy")
    with pytest.raises(ValueError, match="give calibration samples"):
        tvf.quantize(model)
    with pytest.raises(TypeError, match="percentile must be a number in"):
        tvf.quantize(model, calibration=x, method="percentile", percentile="99")
    # without inputs=, the samples' dtype is the module's: named before anything is traced
    with pytest.raises(TypeError, match="calibration samples are float16.*astype"):
        tvf.quantize(model, calibration=x.astype(np.float16))
    with pytest.raises(TypeError, match="module takes what the calibration samples are, int64"):
        tvf.quantize(model, calibration=np.rint(x).astype(np.int64))


# ---- accuracy (slow: trains) -----------------------------------------------------------------
def _train(model, x, y, epochs, lr):
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(lr),
                                  inputs=("batch", *x.shape[1:]), labels=("batch",))
    tvf.Trainer(module, seed=0, progress=False).fit(x, y, epochs=epochs, batch_size=64)
    model.load_state_dict(module.state_dict())
    return model


def _accuracy(module, x, y):
    return float((module.predict(x).argmax(1) == y).mean())


@pytest.mark.slow
@pytest.mark.parametrize("example,epochs,lr,up", [("mlp_digits", 8, 1e-3, 1),
                                                  ("lenet_digits", 8, 3e-3, 2)])
def test_int8_accuracy_on_digits(example, epochs, lr, up):
    """Float vs int8 (min/max calibration on 512 training samples) test accuracy; measured
    drops: see the README section "Post-training int8 quantization"."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        make_model = __import__(example).make_model
    finally:
        sys.path.remove(str(EXAMPLES))
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    if up > 1:
        x_train, x_test = tvf.data.upsample(x_train, up), tvf.data.upsample(x_test, up)
    tvf.manual_seed(0)
    model = _train(make_model(), x_train, y_train, epochs, lr)
    spec = ("batch", *x_train.shape[1:])
    acc_float = _accuracy(tvf.compile_inference(model, spec), x_test, y_test)
    acc_int8 = _accuracy(tvf.quantize(model, calibration=x_train[:512], inputs=spec),
                         x_test, y_test)
    assert acc_float > 0.93
    assert acc_int8 > acc_float - 0.01, (acc_float, acc_int8)


@pytest.mark.slow  # compiles 8 kernels: ~10-20 s on 2 shared cores
def test_kernels_use_integer_multiply_add_instructions():
    """The default schedules' int8 dense and conv: the widening kernels multiply-add 16-bit
    pairs into int32 (vpmaddwd on AVX2, vpdpwssd with VNNI), not 32-bit multiplies, the
    epilogue fused; the packed ones are tensorized with the 8-bit dot product (vpmaddubsw
    here, vpdpbusd on cascadelake) (bench/int8.py --asm)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_int8", EXAMPLES.parent / "bench" /
                                                  "int8.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    found = bench.instructions()
    for target, kernels in found.items():
        for kernel, counts in kernels.items():
            assert counts["vpmulld"] == 0, (target, kernel, counts)
            if kernel.endswith("packed"):
                assert counts["schedule"].startswith("tvmfront.int8"), (target, kernel, counts)
                assert counts["vpmaddubsw"] + counts["vpdpbusd"] > 0, (target, kernel, counts)
                continue
            assert "+q" in counts["schedule"], (target, kernel, counts)  # epilogue fused
            assert counts["vpmaddwd"] + counts["vpdpwssd"] + counts["vpdpbusd"] > 0, \
                (target, kernel, counts)
    vnni = found["cascadelake (VNNI, compile only)"]
    assert all(c["vpdpbusd"] > 0 for k, c in vnni.items() if k.endswith("packed")), vnni
    assert all(c["vpdpwssd"] + c["vpdpbusd"] > 0 for c in vnni.values()), vnni


class _Reversed(nn.Module):
    """Layers registered in one order and called in the other."""

    def __init__(self):
        super().__init__()
        tvf.manual_seed(0)
        self.head = nn.Linear(32, 10)
        self.body = nn.Linear(64, 32)

    def forward(self, x):
        return self.head(tvf.ops.relu(self.body(tvf.ops.flatten(x))) * 100.0)


def test_calibration_follows_the_forward_not_the_registration_order():
    """head's input (scaled by 100) gets the wide range, body's the digits' [0, 16]."""
    x, _ = digits(128)
    scales = calibrate(_Reversed(), x)
    assert scales["body"]["input_scale"] == pytest.approx(x.max() / 255, rel=1e-6)
    assert scales["head"]["input_scale"] > 20 * scales["body"]["input_scale"]


def test_a_layer_called_twice_is_a_clear_error():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 64)

        def forward(self, x):
            return self.fc(self.fc(tvf.ops.flatten(x)))

    x, _ = digits(64)
    with pytest.raises(ValueError, match=r"\['fc'\] run more than once"):
        calibrate(Shared(), x)


def test_the_manifest_checks_the_quantization_report():
    from tvmfront.runtime.manifest import FIELDS

    check = FIELDS["quantization"][0]
    assert check({"int8": ["0", "3"], "float": [["2", "LayerNorm"]]})
    for bad in ({"int8": ["0"]}, {"int8": [0], "float": []},
                {"int8": [], "float": [["2"]]}, {"int8": [], "float": [], "x": 1}, []):
        assert not check(bad), bad


class _Tokens(nn.Module):
    """Token ids -> embedding -> Linear: a model whose input is integers."""

    def __init__(self):
        super().__init__()
        tvf.manual_seed(0)
        self.emb = nn.Embedding(12, 8)
        self.fc = nn.Linear(8, 5)

    def forward(self, ids):
        return self.fc(self.emb(ids))


def test_a_model_taking_token_ids_calibrates_on_integers():
    """The char Transformer's case: integer calibration samples, the Embedding kept float and
    named, the Linear int8 on a 3-d input (rows flattened into the GEMM)."""
    model = _Tokens()
    ids = np.random.default_rng(0).integers(0, 12, (32, 6)).astype(np.int64)
    spec = tvf.TensorSpec(("batch", 6), "int64")
    with pytest.warns(UserWarning, match=r"'emb' \(Embedding\)"):
        module = tvf.quantize(model, calibration=ids, inputs=spec)
    assert module.quantization["int8"] == ["fc"]
    assert module.quantization["float"] == [("emb", "Embedding")]
    want = tvf.compile_inference(model, spec).predict(ids)
    got = module.predict(ids)
    assert got.shape == (32, 6, 5)
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    with pytest.raises(ValueError, match="float samples"):
        tvf.quantize(model, calibration=ids.astype(bool), inputs=spec)
