"""Quantization-aware training (tvf.nn.quantization): prepare_qat's model, a compiled QAT step
against PyTorch's fake quantizers (losses, observers, parameters, eval outputs), qat_scales,
and the accuracy a QAT-trained model keeps."""

import json

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.nn import quantization as qat
from _torch import run_torch

nn = tvf.nn


def small_cnn():
    """conv -> relu -> pool -> linear on 8x8 digits (tests/_torch_quant.py's Net)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64, 10))


def test_prepare_qat_replaces_linear_and_conv_keeping_names_and_order():
    tvf.manual_seed(0)
    model = small_cnn()
    prepared = qat.prepare_qat(model)
    assert [type(m).__name__ for m in prepared] == ["QATConv2d", "ReLU", "MaxPool2d", "Flatten",
                                                    "QATLinear"]
    assert isinstance(prepared[0], nn.Conv2d) and isinstance(prepared[4], nn.Linear)
    assert [type(m).__name__ for m in model][0] == "Conv2d"  # a copy: the float model stays
    assert [n for n, _ in prepared.named_parameters()] == ["0.weight", "0.bias", "4.weight",
                                                           "4.bias"]
    assert [n for n, _ in prepared.named_buffers()] == [
        "0.input_fake_quant.min_val", "0.input_fake_quant.max_val",
        "4.input_fake_quant.min_val", "4.input_fake_quant.max_val"]
    np.testing.assert_array_equal(prepared[0].weight.data, model[0].weight.data)
    assert prepared[0].input_fake_quant.min_val.data == np.inf
    with pytest.raises(ValueError, match="no Linear or Conv2d"):
        qat.prepare_qat(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="qmin < qmax"):
        qat.prepare_qat(model, activation_range=(255, 0))
    with pytest.raises(ValueError, match="has not observed"):
        qat.qat_scales(prepared)


def _digits(n_batches, batch):
    x, y, _, _ = tvf.data.load_digits()
    xs = [x[i * batch:(i + 1) * batch] for i in range(n_batches + 1)]
    ys = [y[i * batch:(i + 1) * batch] for i in range(n_batches)]
    return xs[:-1], ys, xs[-1]


@pytest.mark.slow
def test_qat_step_matches_pytorch_fake_quantizers(request, tmp_path):
    """Three SGD-momentum steps of a compiled QAT step and of PyTorch's FakeQuantize (moving
    average min/max, quint8) + per-channel symmetric qint8 weights: the same losses, observed
    ranges, parameters and eval outputs (observers disabled), in float32."""
    tvf.manual_seed(0)
    model = qat.prepare_qat(small_cnn())
    xs, ys, x_eval = _digits(3, 16)
    init = {n: p.data.copy() for n, p in model.named_parameters()}
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1, momentum=0.9),
                                  inputs=(16, 1, 8, 8), labels=(16,))
    losses = [module.step(x, y) for x, y in zip(xs, ys)]
    arrays = {f"x{k}": x for k, x in enumerate(xs)}
    arrays.update({f"y{k}": y for k, y in enumerate(ys)})
    arrays.update({"p." + n: v for n, v in init.items()})
    theirs = run_torch(request, "QAT step parity with PyTorch", "_torch_quant.py", tmp_path,
                       "qat", x_eval=x_eval, opt=json.dumps({"lr": 0.1, "momentum": 0.9}),
                       **arrays)
    np.testing.assert_allclose(losses, theirs["losses"], rtol=1e-5)
    state = module.state_dict()
    for name in ("0.input_fake_quant", "4.input_fake_quant"):
        for b in ("min_val", "max_val"):
            np.testing.assert_allclose(state[f"{name}.{b}"], theirs[f"b.{name}.{b}"], rtol=1e-5,
                                       err_msg=f"{name}.{b}")
    for name in init:
        # (a gradient leaking into the weights through their scales, which PyTorch's observers
        # detach, once moved them by 1e-2 here)
        np.testing.assert_allclose(state[name], theirs["p." + name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)
    np.testing.assert_allclose(module.predict(x_eval), theirs["eval"], rtol=1e-4, atol=1e-4)
    # the bundle keeps the observed ranges (buffers): the reloaded module predicts the same
    loaded = tvf.load(module.export(tmp_path / "bundle"))
    np.testing.assert_array_equal(loaded.predict(x_eval), module.predict(x_eval))
    _check_scales(qat.qat_scales(model, state), state)


def _check_scales(scales, state):
    assert sorted(scales) == ["0", "4"] and scales["0"]["kind"] == "conv2d"
    for name, s in scales.items():
        w = state[f"{name}.weight"]
        amax = np.abs(w.reshape(len(w), -1)).max(1)
        np.testing.assert_allclose(s["weight_scale"], amax / np.float32(127.5), rtol=1e-7)
        lo = min(float(state[f"{name}.input_fake_quant.min_val"]), 0.0)
        hi = max(float(state[f"{name}.input_fake_quant.max_val"]), 0.0)
        assert s["input_scale"] == pytest.approx((hi - lo) / 255, rel=1e-6)
        assert s["input_zero_point"] == round(-lo / s["input_scale"])
        assert (s["input_qmin"], s["input_qmax"], s["weight_qmin"], s["weight_qmax"]) == \
            (0, 255, -128, 127)


@pytest.mark.slow
def test_qat_mlp_reaches_its_float_accuracy():
    """The digits MLP trained 8 epochs with and without fake quantization: QAT within 2 points
    of float (measured: see the README section)."""
    def make():
        tvf.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))

    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    accuracy = {}
    for kind in ("float", "qat"):
        model = make() if kind == "float" else qat.prepare_qat(make())
        module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(3e-3),
                                      inputs=("batch", 1, 8, 8), labels=("batch",))
        trainer = tvf.Trainer(module, seed=0, progress=False)
        trainer.fit(x_train, y_train, epochs=8, batch_size=64)
        accuracy[kind] = trainer.evaluate(x_test, y_test)["accuracy"]
    assert accuracy["float"] > 0.9
    assert accuracy["qat"] > accuracy["float"] - 0.02, accuracy
