"""An int index on a symbolic axis (x[:, -2] over a sequence of any length) needs that many
positions: a compiled predict, train step or loss called with fewer raises ShapeError naming
the dimension, instead of its kernel reading outside the input buffer (before, predict
returned numbers from whatever memory lay before the buffer, and step trained on them).
The need is recorded when the model is traced and kept in the manifest ("min_sizes", per
function: predict's from the eval-mode forward, step's from the training forward and the
loss), so an exported bundle refuses the same calls."""

import json
import os

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops

SPEC = tvf.Spec(("batch", "seq", 4), "float32")
TOO_SHORT = "dimension 'seq' is 1 in x, but {} indexes 2 position\\(s\\) into it"


class SecondToLast(nn.Module):
    """A Linear of the second-to-last position: needs seq >= 2."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x[:, -2])


def _numpy_forward(module, x):
    state = module.state_dict()
    return x[:, -2] @ state["fc.weight"].T + state["fc.bias"]


def _x(seq, batch=2):
    return np.random.default_rng(seq).standard_normal((batch, seq, 4)).astype("float32")


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    tvf.manual_seed(0)
    infer = tvf.compile_inference(SecondToLast(), SPEC)
    train = tvf.compile_training(SecondToLast(), nn.MSELoss(), tvf.optim.SGD(0.1), inputs=SPEC,
                                 labels=tvf.Spec(("batch", 3), "float32"))
    root = tmp_path_factory.mktemp("bounds")
    return infer, train, infer.export(str(root / "infer")), train.export(str(root / "train"))


def test_the_manifest_records_what_each_function_needs(modules):
    infer, train, _, _ = modules
    assert infer.manifest["min_sizes"] == {"predict": {"seq": 2}}
    assert train.manifest["min_sizes"] == {"predict": {"seq": 2}, "step": {"seq": 2}}
    plain = tvf.compile_inference(nn.Linear(4, 3), tvf.Spec(("batch", 4), "float32"))
    assert "min_sizes" not in plain.manifest


def test_predict_on_too_few_positions_is_refused_on_every_path(modules):
    infer, train, infer_path, train_path = modules
    loaded = tvf.load(infer_path)
    short = _x(1)
    for m in (infer, train, loaded):
        for call in (m.predict,  # one compiled batch: the fast path
                     lambda x: m.predict([x]),  # the general path
                     lambda x: m.predict(np.concatenate([x] * 3), batch_size=4)):  # chunked
            for _ in range(2):  # the fast path keeps tensors per shape: refused again
                with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("predict")):
                    call(short)
    with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("predict")):
        infer(short)  # InferenceModule.__call__


def test_step_and_loss_on_too_few_positions_are_refused_and_change_nothing(modules):
    _, train, _, train_path = modules
    for m in (train, tvf.load(train_path)):
        before, steps = m.state_dict(), m.step_count
        y = np.zeros((2, 3), "float32")
        for call in (lambda x: m.step(x, y),  # the fast path
                     lambda x: m.step([x], y),  # the general path
                     lambda x: m.loss(x, y),
                     lambda x: m.loss_and_grads(x, y)):
            for _ in range(2):
                with pytest.raises(tvf.ShapeError, match=TOO_SHORT.format("step")):
                    call(_x(1))
        assert m.step_count == steps
        for name, value in m.state_dict().items():
            np.testing.assert_array_equal(value, before[name])


def test_enough_positions_give_the_numpy_values(modules):
    infer, train, infer_path, _ = modules
    for seq in (2, 5):
        x = _x(seq)
        for m in (infer, tvf.load(infer_path)):
            np.testing.assert_allclose(m.predict(x), _numpy_forward(m, x), rtol=1e-5, atol=1e-6)
    x, y = _x(3), np.ones((2, 3), "float32")
    want = np.mean((_numpy_forward(train, x) - y) ** 2)
    np.testing.assert_allclose(train.step(x, y, lr=0.0), want, rtol=1e-5)


class LastPositionLoss(nn.Module):
    """An MSE of the output's last position: only the loss indexes the sequence."""

    def forward(self, out, y):
        d = out[:, -1] - y
        return ops.mean(d * d)


def test_an_index_in_the_loss_binds_the_step_only():
    tvf.manual_seed(0)
    model = nn.Linear(4, 3)
    train = tvf.compile_training(model, LastPositionLoss(), tvf.optim.SGD(0.1), inputs=SPEC,
                                 labels=tvf.Spec(("batch", 3), "float32"))
    assert train.manifest["min_sizes"] == {"step": {"seq": 1}}
    empty = np.zeros((2, 0, 4), "float32")
    assert train.predict(empty).shape == (2, 0, 3)  # predict indexes nothing: allowed
    x, y = _x(3), np.ones((2, 3), "float32")
    state = train.state_dict()
    out = x[:, -1] @ state["weight"].T + state["bias"]
    np.testing.assert_allclose(train.step(x, y, lr=0.0), np.mean((out - y) ** 2), rtol=1e-5)


@pytest.mark.parametrize("bad", [{"predict": {"seq": 0}}, {"predict": {"seq": "2"}},
                                 {"predict": {"seq": 1.5}}, {"forward": {"seq": 2}},
                                 {"predict": [2]}, {"seq": 2}, [["predict", 2]]])
def test_a_tampered_min_sizes_is_refused_on_load(modules, tmp_path, bad):
    _, _, infer_path, _ = modules
    path = tmp_path / "b"
    path.mkdir()
    for name in os.listdir(infer_path):
        (path / name).write_bytes(open(os.path.join(infer_path, name), "rb").read())
    manifest = json.load(open(path / "manifest.json"))
    json.dump(dict(manifest, min_sizes=bad), open(path / "manifest.json", "w"))
    with pytest.raises(tvf.BundleError, match="min_sizes"):
        tvf.load(str(path))
