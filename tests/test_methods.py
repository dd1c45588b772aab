"""compile_inference(..., methods=): other methods of a model in the same module."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops
from tvmfront.errors import ShapeError


class Cell(nn.Module):
    """forward: the readout; step: one recurrent update returning (readout, new state)."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 3)
        self.out = nn.Linear(3, 2)

    def forward(self, x):
        return self.out(ops.relu(self.inp(x)))

    def step(self, x, h):
        h = ops.relu(self.inp(x) + h)
        return self.out(h), h

    def double(self, x):
        return (self.forward(x) * 2.0,)

    def _hidden(self, x):
        return x


@pytest.fixture(scope="module")
def module():
    tvf.manual_seed(0)
    model = Cell()
    return model, tvf.compile_inference(
        model, ("n", 4), methods={"step": {"x": ("b", 4), "h": ("b", 3)}, "double": (5, 4)})


def _numpy_step(model, x, h):
    p = {k: v.data for k, v in model.named_parameters()}
    h = np.maximum(x @ p["inp.weight"].T + p["inp.bias"] + h, 0)
    return h @ p["out.weight"].T + p["out.bias"], h


def test_a_method_returning_a_tuple_runs_on_the_shared_parameters(module):
    model, inf = module
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(3, 4)).astype("float32"), rng.normal(size=(3, 3)).astype("float32")
    y, h2 = inf.step(x, h)
    want_y, want_h = _numpy_step(model, x, h)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h2, want_h, rtol=1e-5, atol=1e-6)
    (d,) = inf.double(np.ones((5, 4), "float32"))  # a 1-tuple stays a tuple
    np.testing.assert_allclose(d, 2 * inf(np.ones((5, 4), "float32")), rtol=1e-6)
    assert inf.call("step", {"x": x, "h": h})[1].shape == (3, 3)


def test_methods_see_new_parameters_and_survive_export(module, tmp_path):
    model, inf = module
    state = {k: v * 0.5 for k, v in inf.state_dict().items()}
    inf.load_state_dict(state)
    loaded = tvf.load(inf.export(tmp_path / "cell"))
    x, h = np.ones((2, 4), "float32"), np.zeros((2, 3), "float32")
    for name, p in model.named_parameters():
        p.data[...] = state[name]
    want_y, _ = _numpy_step(model, x, h)
    np.testing.assert_allclose(loaded.step(x, h)[0], want_y, rtol=1e-5, atol=1e-6)
    assert loaded.manifest["methods"]["step"]["inputs"][1] == {
        "name": "h", "shape": ["b", 3], "dtype": "float32"}


def test_bad_calls_name_the_problem(module):
    _, inf = module
    with pytest.raises(AttributeError, match="no compiled method 'decode'.*'double', 'step'"):
        inf.call("decode", np.ones((1, 4), "float32"))
    with pytest.raises(AttributeError, match="no attribute 'decode'"):
        inf.decode  # noqa: B018
    with pytest.raises(ShapeError, match="step: input 'h': dimension 'b' .* is 1, but it is 2"):
        inf.step(np.ones((2, 4), "float32"), np.ones((1, 3), "float32"))
    with pytest.raises(ShapeError, match="takes 2 inputs"):
        inf.step(np.ones((2, 4), "float32"))


@pytest.mark.parametrize("name", ["forward", "_hidden", "nope", "inp"])
def test_only_public_methods_compile(name):
    with pytest.raises(TypeError, match=f"{name!r} is not a public method"):
        tvf.compile_inference(Cell(), (2, 4), methods={name: (2, 4)})
