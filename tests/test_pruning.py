"""Magnitude pruning (tvf.nn.pruning): masks as buffers applied in the compiled forward, pruned
weights exactly zero through SGD-momentum and AdamW, requested sparsity achieved, masks changed
without a recompile, the polynomial schedule, export of the folded model."""

import os
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.nn import pruning

nn = tvf.nn


def mlp():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _forward(state, x):
    """The MLP in numpy, from a pruned state: weight = weight_orig * weight_mask."""
    w1 = state["1.weight_orig"] * state["1.weight_mask"]
    w2 = state["3.weight_orig"] * state["3.weight_mask"]
    h = np.maximum(x.reshape(len(x), -1) @ w1.T + state["1.bias"], 0)
    return h @ w2.T + state["3.bias"]


def test_prune_reparametrizes_as_pytorch_and_reaches_the_amount_exactly():
    model = pruning.prune(mlp(), amount=0.5, scope="layer")
    layer = model[1]
    assert type(layer).__name__ == "PrunedLinear" and isinstance(layer, nn.Linear)
    assert [n for n, _ in model.named_parameters()] == ["1.bias", "1.weight_orig", "3.bias",
                                                        "3.weight_orig"]
    assert [n for n, _ in model.named_buffers()] == ["1.weight_mask", "3.weight_mask"]
    s = pruning.sparsity(model)
    assert s["1"] == 0.5 and s["3"] == 0.5 and s["global"] == 0.5
    # the smallest magnitudes went: every kept |w| >= every pruned |w|, per layer
    for m in (model[1], model[3]):
        w, mask = np.abs(m.weight_orig.data), m.weight_mask.data
        assert w[mask == 1].min() >= w[mask == 0].max()
        np.testing.assert_array_equal(m.weight, m.weight_orig.data * mask)
    with pytest.raises(AttributeError, match="weight_orig"):
        model[1].weight = np.zeros((32, 64), np.float32)


def test_global_scope_uses_one_threshold_and_masks_only_grow():
    model = pruning.prune(mlp(), amount=0.3)
    before = {n: b.data.copy() for n, b in model.named_buffers()}
    achieved = pruning.update_masks(model, 0.8)
    total = 64 * 32 + 32 * 10
    assert achieved == round(0.8 * total) / total
    kept = np.concatenate([np.abs(m.weight)[m.weight_mask.data == 1] for m in (model[1], model[3])])
    cut = np.concatenate([np.abs(m.weight_orig.data)[m.weight_mask.data == 0]
                          for m in (model[1], model[3])])
    assert kept.min() >= cut.max()
    assert pruning.sparsity(model)["1"] != pruning.sparsity(model)["3"]  # not per layer
    for n, b in model.named_buffers():
        assert np.all(b.data[before[n] == 0] == 0), f"{n}: a pruned entry came back"


@pytest.mark.slow
@pytest.mark.parametrize("make_optimizer", [
    lambda: tvf.optim.SGD(0.1, momentum=0.9, weight_decay=1e-2),
    lambda: tvf.optim.AdamW(1e-2, weight_decay=0.1),
], ids=["sgd-momentum", "adamw"])
def test_pruned_weights_stay_zero_through_the_optimizer(make_optimizer):
    """Momentum and weight decay move weight_orig at pruned entries (as in PyTorch), never the
    weight the forward uses: it stays exactly 0, and the step's gradient there is 0."""
    model = mlp()
    x, y, _, _ = tvf.data.load_digits()
    # train unpruned first, so momentum and Adam's moments are nonzero at every entry
    module = tvf.compile_training(pruning.prune(model, amount=0.0), nn.CrossEntropyLoss(),
                                  make_optimizer(), inputs=(32, 1, 8, 8), labels=(32,))
    for i in range(3):
        module.step(x[32 * i:32 * i + 32], y[32 * i:32 * i + 32])
    pruning.update_masks(module, 0.7)
    mask = {n: module.state_dict()[n] for n in ("1.weight_mask", "3.weight_mask")}
    _, grads = module.loss_and_grads(x[:32], y[:32])
    for i in range(3, 13):
        module.step(x[32 * i:32 * i + 32], y[32 * i:32 * i + 32])
    state = module.state_dict()
    for name in ("1", "3"):
        pruned = mask[f"{name}.weight_mask"] == 0
        np.testing.assert_array_equal(state[f"{name}.weight_mask"], mask[f"{name}.weight_mask"])
        assert np.all(grads[f"{name}.weight_orig"][pruned] == 0)
        assert np.any(state[f"{name}.weight_orig"][pruned] != 0)  # orig moved or kept
        assert np.all((state[f"{name}.weight_orig"] * state[f"{name}.weight_mask"])[pruned] == 0)
    # the compiled forward uses the masked weights
    np.testing.assert_allclose(module.predict(x[:50]), _forward(state, x[:50]), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.slow
def test_mask_change_needs_no_recompile_and_export_keeps_zeros(tmp_path):
    model = pruning.prune(mlp(), amount=0.5)
    x, y, _, _ = tvf.data.load_digits()
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(1e-2),
                                  inputs=(32, 1, 8, 8), labels=(32,))
    vm = module._vm_
    module.step(x[:32], y[:32])
    for amount in (0.8, 0.9):
        assert pruning.update_masks(module, amount) == pytest.approx(amount, abs=1e-3)
        assert module._vm_ is vm  # the same compiled program: masks are runtime inputs
        np.testing.assert_allclose(module.predict(x[:40]), _forward(module.state_dict(), x[:40]),
                                   rtol=1e-4, atol=1e-5)
        module.step(x[32:64], y[32:64])
    # export: fold the masks into the weights (prune.remove), compile inference, reload
    model.load_state_dict(module.state_dict())
    expected = _forward(module.state_dict(), x[:40])
    pruning.remove(model)
    assert [n for n, _ in model.named_parameters()] == ["1.bias", "1.weight", "3.bias", "3.weight"]
    assert not model.named_buffers() and type(model[1]) is nn.Linear
    zeros = sum(int(np.sum(model[i].weight.data == 0)) for i in (1, 3))
    assert zeros == round(0.9 * (64 * 32 + 32 * 10))
    tvf.compile_inference(model, inputs=("batch", 1, 8, 8)).export(tmp_path / "bundle")
    loaded = tvf.load(tmp_path / "bundle")
    state = loaded.state_dict()
    assert sum(int(np.sum(state[f"{i}.weight"] == 0)) for i in (1, 3)) == zeros
    np.testing.assert_allclose(loaded.predict(x[:40]), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no pruned layer"):
        pruning.remove(model)
    with pytest.raises(ValueError, match="nothing is pruned"):
        pruning.update_masks(loaded, 0.5)


def test_polynomial_schedule_values():
    s = pruning.PolynomialSparsity(0.8, initial=0.2, begin_step=10, end_step=110, frequency=25)
    assert s(0) == 0.2 and s(10) == 0.2 and s(34) == 0.2  # held until the next update
    assert s(35) == pytest.approx(0.8 + (0.2 - 0.8) * 0.75 ** 3)
    assert s(60) == pytest.approx(0.8 + (0.2 - 0.8) * 0.5 ** 3)
    assert s(110) == 0.8 and s(10 ** 6) == 0.8
    values = [s(t) for t in range(0, 200)]
    assert values == sorted(values)  # never decreases
    assert pruning.PolynomialSparsity(0.8, end_step=100)(50) == pytest.approx(0.7)


def _tied():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    return model


@pytest.mark.parametrize("call, match", [
    (lambda: pruning.prune(mlp(), amount=1.5), r"fraction in \[0, 1\]"),
    (lambda: pruning.prune(mlp(), amount=0.5, scope="row"), "'global' or 'layer'"),
    (lambda: pruning.prune(nn.Sequential(nn.ReLU())), "no layer of type"),
    (lambda: pruning.PolynomialSparsity(0.9, begin_step=5, end_step=5), "begin_step < end_step"),
    (lambda: pruning.PolynomialSparsity(0.9, frequency=0), "frequency"),
    (lambda: tvf.nn.quantization.prepare_qat(pruning.prune(mlp())), "prune"),
    (lambda: pruning.prune(_tied()), "tied weights"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_prune_after_prepare_qat_masks_the_quantized_weight():
    model = pruning.prune(tvf.nn.quantization.prepare_qat(mlp()), amount=0.5, scope="layer")
    assert type(model[1]).__name__ == "PrunedQATLinear"
    x = tvf.data.load_digits()[0][:4]
    model.train()
    out = model(x)  # eager: observes, masks, fake-quantizes
    assert out.shape == (4, 10) and np.isfinite(out).all()


@pytest.mark.slow
def test_lenet_keeps_its_accuracy_at_50_80_90_percent_sparsity():
    """One compiled step serves the float run (masks all ones) and every sparsity: train LeNet
    8 epochs, then from those weights prune gradually to 50 / 80 / 90 % over 4 epochs
    (masks between epochs) and fine-tune 2 more. Measured on the digits (seed 0): see the
    README's pruning section; the bounds leave room for machine-to-machine rounding."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples"))
    from lenet_digits import make_model

    tvf.manual_seed(0)
    model = pruning.prune(make_model(), amount=0.0)
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    x_train, x_test = tvf.data.upsample(x_train, 2), tvf.data.upsample(x_test, 2)
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(3e-3),
                                  inputs=("batch", 1, 16, 16), labels=("batch",))
    trainer = tvf.Trainer(module, seed=0, progress=False)
    trainer.fit(x_train, y_train, epochs=8, batch_size=64)
    trained = module.state_dict()
    accuracy = {0.0: trainer.evaluate(x_test, y_test)["accuracy"]}
    steps = -(-len(x_train) // 64)
    for target in (0.5, 0.8, 0.9):
        module.load_state_dict(trained)
        start = module.step_count
        schedule = pruning.PolynomialSparsity(target, begin_step=start,
                                              end_step=start + 3 * steps)
        history = pruning.fit(tvf.Trainer(module, seed=1, progress=False, lr_schedule=lambda e:
                                          1e-3), x_train, y_train, schedule, epochs=6,
                              batch_size=64)
        assert history[-1]["sparsity"] == pytest.approx(target, abs=1e-3)
        state = module.state_dict()
        masked = [state[n] for n in state if n.endswith("weight_mask")]
        assert sum(int(np.sum(m == 0)) for m in masked) == round(target * sum(m.size
                                                                              for m in masked))
        accuracy[target] = float(np.mean(module.predict(x_test).argmax(1) == y_test))
    print("LeNet accuracy by sparsity:", accuracy)
    assert accuracy[0.0] > 0.94
    assert accuracy[0.5] > accuracy[0.0] - 0.02 and accuracy[0.8] > accuracy[0.0] - 0.04
    assert accuracy[0.9] > 0.85, accuracy


def test_fit_updates_the_masks_every_k_steps():
    """pruning.fit(every=k) recomputes the masks after every k-th step (Trainer.fit's on_step),
    not only between epochs: the schedule is asked at each multiple of k."""
    model = pruning.prune(mlp(), amount=0.0)
    x, y, _, _ = tvf.data.load_digits()
    x, y = x[:160], y[:160]  # 5 steps of 32 an epoch
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.05),
                                  inputs=(32, 1, 8, 8), labels=(32,))
    asked = []

    def schedule(step):
        asked.append(step)
        return min(0.1 * step, 0.9)

    trainer = tvf.Trainer(module, seed=0, progress=False)
    history = pruning.fit(trainer, x, y, schedule, epochs=2, every=2)
    assert asked == [0, 2, 4, 5, 6, 8, 10]  # epoch starts (0, 5) and every second step
    assert history[0]["sparsity"] == pytest.approx(0.4, abs=1e-3)
    assert history[1]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert pruning.sparsity(module)["global"] == pytest.approx(0.9, abs=1e-3)
    with pytest.raises(ValueError, match="every must be a positive"):
        pruning.fit(trainer, x, y, schedule, every=0)
