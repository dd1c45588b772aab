"""Weight tying: one Parameter used by several modules is one parameter of the compiled step,
with one gradient (the sum over its uses) and one optimizer state, as in PyTorch."""

import json

import numpy as np
import pytest

import tvmfront as tvf
from _torch import run_torch

nn = tvf.nn
ops = tvf.ops


class Tied(nn.Module):
    """`a` used twice and `b.weight` tied to `a.weight`: three uses of one weight."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = ops.tanh(self.a(x))
        h = ops.tanh(self.b(h))
        h = ops.tanh(self.a(h))
        return self.head(h)


NAMES = ["a.weight", "a.bias", "b.bias", "head.weight", "head.bias"]


def _batch():
    rng = np.random.default_rng(1)
    return rng.standard_normal((8, 4)).astype("float32"), rng.integers(0, 3, 8).astype("int64")


def test_named_parameters_lists_a_tied_parameter_once():
    model = Tied()
    assert [n for n, _ in model.named_parameters()] == NAMES
    every = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    # b.weight keeps its place when the tied Parameter replaces it, as in PyTorch
    assert every == ["a.weight", "a.bias", "b.weight", "b.bias", "head.weight", "head.bias"]
    assert list(model.state_dict()) == NAMES


def test_named_modules_lists_a_shared_module_once_under_its_first_name():
    model = Tied()
    model.c = model.a                      # the same Linear registered under a second name
    names = [n for n, _ in model.named_modules()]
    assert names == ["", "a", "b", "head"]
    assert [n for n, _ in model.named_modules(remove_duplicate=False)] == ["", "a", "b", "head", "c"]
    assert [n for n, _ in nn.Sequential(model).named_modules(prefix="net")] == [
        "net", "net.0", "net.0.a", "net.0.b", "net.0.head"]
    assert model.modules() == [m for _, m in model.named_modules()]


def test_load_state_dict_accepts_any_name_of_a_tied_parameter():
    model = Tied()
    state = model.state_dict()
    w = state.pop("a.weight") + 1
    model.load_state_dict(dict(state, **{"b.weight": w}))  # PyTorch-style alias only
    assert np.array_equal(model.a.weight.data, w) and model.b.weight is model.a.weight
    with pytest.raises(tvf.ShapeError, match="'b.weight' is tied to 'a.weight'"):
        model.load_state_dict(dict(state, **{"a.weight": w, "b.weight": w * 2}))


def test_a_compiled_module_loads_any_name_of_a_tied_parameter(tmp_path):
    """Its manifest lists the other names ('aliases'): a PyTorch-style state_dict, naming the
    weight twice or only as b.weight, had been a KeyError ('unexpected ['b.weight']')."""
    module = tvf.compile_inference(Tied(), inputs=(2, 4))
    assert module.manifest["aliases"] == {"b.weight": "a.weight"}
    state = module.state_dict()
    w = state.pop("a.weight") + 1
    module.load_state_dict(dict(state, **{"a.weight": w, "b.weight": w}))  # every name
    module.load_state_dict(dict(state, **{"b.weight": w}))  # the alias alone
    np.testing.assert_array_equal(module.state_dict()["a.weight"], w)
    with pytest.raises(tvf.ShapeError, match="'b.weight' is tied to 'a.weight'"):
        module.load_state_dict(dict(state, **{"a.weight": w, "b.weight": w * 2}))
    module.export(tmp_path / "tied")
    tvf.load(tmp_path / "tied").load_state_dict(dict(state, **{"b.weight": w}))


def test_one_parameter_one_gradient_one_state():
    tvf.manual_seed(0)
    model = Tied()
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                  inputs=(8, 4), labels=(8,))
    assert module.param_names == NAMES
    assert sorted(module.state_names) == sorted(f"0/{m}.{n}" for n in NAMES for m in ("mu", "nu"))
    x, y = _batch()
    loss, grads = module.loss_and_grads(x, y)
    # The gradient of the tied weight is the sum over its three uses: check it against
    # central differences of the compiled loss along a random direction.
    rng = np.random.default_rng(2)
    d = rng.standard_normal((4, 4)).astype("float32")
    state = module.state_dict()
    eps = 1e-2

    def loss_at(w):
        module.load_state_dict(dict(state, **{"a.weight": w}))
        return module.loss(x, y)

    w = state["a.weight"]
    numeric = (loss_at(w + eps * d) - loss_at(w - eps * d)) / (2 * eps)
    assert np.isclose(float((grads["a.weight"] * d).sum()), numeric, rtol=2e-3, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("opt", [{"name": "sgd", "lr": 0.1, "momentum": 0.9, "steps": 3},
                                 {"name": "adam", "lr": 0.05, "betas": [0.9, 0.999], "steps": 3}],
                         ids=["sgd-momentum", "adam"])
def test_tied_training_matches_pytorch(request, tmp_path, opt):
    tvf.manual_seed(3)
    model = Tied()
    x, y = _batch()
    init = model.state_dict()
    ref = run_torch(request, "PyTorch parity of weight tying", "_torch_tied.py", tmp_path, x=x,
                    y=y, opt=np.array(json.dumps(opt)), **{"p." + n: v for n, v in init.items()})
    assert list(ref["names"]) == NAMES  # PyTorch also lists the tied weight once

    optimizer = (tvf.optim.SGD(opt["lr"], momentum=opt["momentum"]) if opt["name"] == "sgd"
                 else tvf.optim.Adam(opt["lr"], betas=tuple(opt["betas"])))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), optimizer, inputs=x, labels=y)
    _, grads = module.loss_and_grads(x, y)
    losses = [module.step(x, y) for _ in range(opt["steps"])]
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-4)
    for n in NAMES:
        np.testing.assert_allclose(grads[n], ref["g." + n], rtol=1e-4, atol=1e-6, err_msg=n)
        np.testing.assert_allclose(module.state_dict()[n], ref["p." + n], rtol=1e-4, atol=1e-6,
                                   err_msg=n)
