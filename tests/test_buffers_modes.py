"""Buffers (register_buffer, BatchNorm's running statistics) and train/eval modes: the
compiled step runs training mode and carries the buffers in and out; predict and
compile_inference run eval mode, so a prediction never depends on its batch."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.nn.layers import BatchNorm1d

nn = tvf.nn


def _bn_model(seed=0):
    tvf.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def _data(n=8, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(1.0, 2.0, (n, 1, 4, 4)).astype("float32")
    return x, rng.integers(0, 3, n)


def test_register_buffer_names_modes_and_eager_assignment():
    model = nn.Sequential(nn.Linear(2, 3), BatchNorm1d(3))
    assert [n for n, _ in model.named_buffers()] == [
        "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert list(model.state_dict())[-3:] == [n for n, _ in model.named_buffers()]
    assert model.state_dict()["1.num_batches_tracked"].dtype == np.int64
    assert model.eval() is model and not model.training and not model[1].training
    model.train()
    assert model[1].training
    with pytest.raises(tvf.ShapeError, match="buffer 'running_mean' has shape"):
        model[1].running_mean = np.zeros(4, "float32")
    model[1].running_mean = np.full(3, 2.0, "float32")
    assert model.state_dict()["1.running_mean"].tolist() == [2.0, 2.0, 2.0]
    state = model.state_dict()
    del state["1.running_var"]
    with pytest.raises(KeyError, match=r"missing buffers \['1.running_var'\]"):
        model.load_state_dict(state)


def test_eager_batchnorm_running_statistics_follow_pytorch_formula():
    bn = BatchNorm1d(2, momentum=0.3)
    x = np.random.default_rng(0).normal(size=(5, 2, 3)).astype("float32")
    bn(x)
    flat = x.transpose(1, 0, 2).reshape(2, -1)
    np.testing.assert_allclose(bn.running_mean.data, 0.3 * flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.data, 0.7 + 0.3 * flat.var(1, ddof=1), rtol=1e-5)
    assert int(bn.num_batches_tracked.data) == 1
    bn.eval()
    y = bn(x[:1])  # eval: running statistics, one sample alone
    want = (x[:1] - bn.running_mean.data[:, None]) / np.sqrt(bn.running_var.data[:, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


def test_cumulative_momentum_and_no_running_stats():
    bn = BatchNorm1d(2, momentum=None)
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, 2)).astype("float32") for _ in range(3)]
    for x in xs:
        bn(x)
    np.testing.assert_allclose(bn.running_mean.data, np.mean([x.mean(0) for x in xs], 0),
                               rtol=1e-5, atol=1e-6)
    free = BatchNorm1d(2, track_running_stats=False).eval()
    assert free.named_buffers() == [] and free.running_mean is None
    x = xs[0]
    np.testing.assert_allclose(free(x), (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), rtol=1e-4,
                               atol=1e-5)  # batch statistics even in eval, as in PyTorch


def test_step_updates_buffers_and_predict_is_per_sample(tmp_path):
    model = _bn_model().eval()  # compiled steps train in training mode whatever the mode
    x, y = _data()
    m = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(lr=0.05),
                             inputs=(8, 1, 4, 4), labels=(8,))
    assert not model.training and not model[1].training  # the model's own mode is restored
    before = m.state_dict()
    assert before["1.running_mean"].tolist() == [0, 0, 0]
    m.step(x, y)
    after = m.state_dict()
    assert int(after["1.num_batches_tracked"]) == 1
    assert np.abs(after["1.running_mean"]).max() > 0.01
    assert m.manifest["buffers"][0]["name"] == "1.running_mean"
    # eval mode: one sample alone, in a full batch, and in a padded last batch agree
    xs = np.concatenate([x, x[:3]])
    full = m.predict(xs)  # 11 samples: the second batch is padded
    alone = np.concatenate([m.predict(xs[i:i + 1]) for i in range(len(xs))])
    np.testing.assert_allclose(full, alone, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(full[8:], full[:3], rtol=1e-5, atol=1e-6)
    infer = tvf.compile_inference(model.train(), inputs=(1, 1, 4, 4))  # eval mode regardless
    infer.load_state_dict(m.state_dict())
    np.testing.assert_allclose(infer(xs[:1]), alone[:1], rtol=1e-5, atol=1e-6)
    infer_loaded = tvf.load(infer.export(tmp_path / "i"))  # an inference bundle: eval mode too
    np.testing.assert_allclose(infer_loaded.predict(xs), full, rtol=1e-5, atol=1e-6)
    # exported, reloaded, resumed: buffers included
    m.export(tmp_path / "b")
    loaded = tvf.load(tmp_path / "b")
    np.testing.assert_array_equal(loaded.state_dict()["1.running_var"], after["1.running_var"])
    m.step(x, y)
    loaded.step(x, y)
    for name, value in m.state_dict().items():
        np.testing.assert_allclose(loaded.state_dict()[name], value, rtol=1e-6, err_msg=name)
    assert int(loaded.state_dict()["1.num_batches_tracked"]) == 2
    state = loaded.state_dict()
    del state["1.running_mean"]
    with pytest.raises(KeyError, match=r"missing buffers \['1.running_mean'\]"):
        loaded.load_state_dict(state)
    state = m.state_dict()
    state["1.running_var"] = state["1.running_var"].astype("float64")
    with pytest.raises(tvf.ShapeError, match="buffer '1.running_var'"):
        m.load_state_dict(state)
