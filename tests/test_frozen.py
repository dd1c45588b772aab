"""requires_grad=False freezes a Parameter: no gradient, no optimizer state, bit-identical."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def _model():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_frozen_parameters_stay_bit_identical(tmp_path):
    model = _model()
    model[0].weight.requires_grad = False
    model[2].bias.requires_grad = False
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(0.05),
                                  inputs=(6, 4), labels=(6,))
    frozen = ["0.weight", "2.bias"]
    assert module.manifest["frozen"] == frozen
    assert not any(n.endswith(tuple("." + f for f in frozen)) for n in module.state_names)
    assert sorted(module.state_names) == sorted(f"0/{m}.{n}" for n in ("0.bias", "2.weight")
                                                for m in ("mu", "nu"))
    before = module.state_dict()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 4)).astype("float32"), np.arange(6) % 3
    losses = [module.step(x, y) for _ in range(5)]
    after = module.state_dict()
    for n in frozen:
        assert np.array_equal(before[n], after[n]) and before[n].dtype == after[n].dtype, n
    for n in ("0.bias", "2.weight"):
        assert not np.array_equal(before[n], after[n]), n
    assert losses[-1] < losses[0]
    # Gradients are named by the trainable parameters alone, each with its own shape.
    _, grads = module.loss_and_grads(x, y)
    assert list(grads) == ["0.bias", "2.weight"]
    assert all(grads[n].shape == after[n].shape for n in grads)
    path = module.export(str(tmp_path / "frozen"))  # the manifest's "frozen" list loads back
    assert tvf.load(path).manifest["frozen"] == frozen


def test_freezing_everything_is_an_error():
    model = _model()
    for p in model.parameters():
        p.requires_grad = False
    with pytest.raises(ValueError, match="every parameter has requires_grad=False"):
        tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                             inputs=(6, 4), labels=(6,))


def test_parameter_repr_and_default():
    p = nn.Parameter(np.zeros(3, "float32"))
    assert p.requires_grad
    assert "requires_grad=False" in repr(nn.Parameter(np.zeros(3), requires_grad=False))


def _gradient_kernels(model):
    from tvmfront import graph

    mod, sig = graph.build_training(model, nn.CrossEntropyLoss(), (6, 4), (6,))
    return sorted(gv.name_hint for gv in graph.gradient(mod, sig).functions
                  if "_grad" in gv.name_hint)


def test_frozen_parameters_get_no_gradient_kernel():
    trained = _gradient_kernels(_model())
    model = _model()
    model[0].weight.requires_grad = False
    model[0].bias.requires_grad = False
    frozen = _gradient_kernels(model)
    # Layer 0 is frozen and x needs no gradient: nothing flows back past layer 2's input.
    assert "tanh_grad0" in trained and "dense_grad1" in trained, trained
    assert not any(k.startswith("tanh_grad") for k in frozen), frozen
    assert len(frozen) < len(trained) - 2
