"""TrainingModule.step's fast path (x and y of exactly the compiled shapes and dtypes are
copied into reused device tensors, lr and the step number refilled in place) gives the
general path's answers bit for bit, leaves every error to it, and is given up for a graph
that returns one of those reused tensors as a new parameter or state."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.optim import GradientTransformation, Optimizer, chain, scale_by_learning_rate

nn = tvf.nn


def _module(optimizer=None):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(),
                                optimizer or tvf.optim.Adam(lr=1e-2), inputs=(4, 1, 2, 4),
                                labels=(4,), records=False)


def _batches(n):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((4, 1, 2, 4)).astype("float32"),
             rng.integers(0, 3, 4).astype("int64")) for _ in range(n)]


def test_fast_steps_match_the_general_path_bit_for_bit():
    fast, general = _module(), _module()
    assert fast._step_plan is not None
    general._step_plan = None  # the general path only
    for i, (x, y) in enumerate(_batches(4)):
        lr = [None, 3e-2, np.float32(5e-3), 1e-2][i]
        assert fast.step(x, y, lr=lr) == general.step(x, y, lr=lr)
    for (n, a), b in zip(fast.state_dict().items(), general.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    for (n, a), b in zip(fast.optimizer_state().items(), general.optimizer_state().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert fast.step_count == general.step_count == 4


def test_each_fast_step_sees_its_own_batch():
    # the reused input tensors are refilled: a step after another must train on its own batch
    # (the loss of a batch is the same whether another batch ran before it through the same
    # tensors or not)
    module = _module()
    (x0, y0), (x1, y1) = _batches(2)
    before = module.loss(x1, y1)
    module.step(x0, y0, lr=0.0)
    assert module.step(x1, y1, lr=0.0) == pytest.approx(before, rel=1e-6)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x[:3], y), r"x: expected shape \(4, 1, 2, 4\)"),
    (lambda x, y: (x.astype("float64"), y), r"x: expected shape .* dtype float32"),
    (lambda x, y: (x, y[:3]), r"y: expected shape \(4,\)"),
    (lambda x, y: (x, np.array([0, 1, 2, 3])), r"y: labels must lie in \[0, 3\)"),
    (lambda x, y: (x, np.array([0, -1, 2, 1])), r"y: labels must lie in \[0, 3\)"),
    (lambda x, y: (x, y.astype("float32")), r"y: labels must be integers"),
])
def test_bad_batches_still_raise_after_fast_steps(bad, message):
    module = _module()
    x, y = _batches(1)[0]
    module.step(x, y)  # the fast path's tensors exist before the bad call
    with pytest.raises(tvf.ShapeError, match=message):
        module.step(*bad(x, y))
    assert module.step_count == 1


@pytest.mark.parametrize("lr", [float("nan"), -1.0, float("inf")])
def test_bad_learning_rates_still_raise_after_fast_steps(lr):
    module = _module()
    x, y = _batches(1)[0]
    module.step(x, y)
    with pytest.raises(ValueError, match="learning rate must be finite and >= 0"):
        module.step(x, y, lr=lr)


def _last_lr():
    """An optimizer whose state "last_lr" is the learning rate itself (the train step returns
    its lr input as that new state) and "sum" adds up the previous steps' learning rates."""
    def init(params):
        return {"last_lr": ((), "float32", 0.0), "sum": ((), "float32", 0.0)}

    def update(grads, state, params, hyper):
        new = {"last_lr": hyper["lr"], "sum": state["sum"] + state["last_lr"]}
        return {n: g * 0.0 for n, g in grads.items()}, new

    return GradientTransformation(init, update)


def test_a_step_returning_its_lr_input_keeps_each_value():
    # refilling the lr tensor in place would overwrite last_lr (the same tensor) before the
    # next step reads it: "sum" would add each step's own lr instead of the one before
    module = _module(Optimizer("LastLr", chain(_last_lr(), scale_by_learning_rate()), lr=0.5))
    x, y = _batches(1)[0]
    for lr in (0.25, 0.125, 0.75, 1.5):
        module.step(x, y, lr=lr)
    state = module.optimizer_state()
    assert float(state["0/last_lr"]) == 1.5
    assert float(state["0/sum"]) == 0.25 + 0.125 + 0.75
    assert module._step_plan is None  # given up after the first step


def _symbolic_module(dropout=0.0):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout),
                          nn.Linear(16, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(lr=1e-2),
                                inputs=("batch", 1, 2, 4), labels=("batch",), records=False)


def _batch(rng, n):
    return (rng.standard_normal((n, 1, 2, 4)).astype("float32"),
            rng.integers(0, 3, n).astype("int64"))


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fast_steps_at_any_batch_size_and_with_dropout_match_the_general_path(dropout):
    # a module compiled for any batch size keeps a set of tensors per batch size met (the
    # batch, an epoch's last partial one); dropout's key and counter are refilled each step
    fast, general = _symbolic_module(dropout), _symbolic_module(dropout)
    assert fast._step_plan is not None and fast._step_plan["dropout"] == (dropout > 0)
    general._step_plan = None
    rng = np.random.default_rng(1)
    for n in (4, 4, 3, 5, 4, 3):
        x, y = _batch(rng, n)
        assert fast.step(x, y) == general.step(x, y)
    for (n, a), b in zip(fast.state_dict().items(), general.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    assert len(fast._held_steps._local.sets) == 3  # one set per pair of shapes met


def test_a_new_seed_changes_the_fast_steps_dropout_masks():
    # the trainer sets manifest["seed"] when it resumes: the fast path's key follows it
    a, b = _symbolic_module(0.5), _symbolic_module(0.5)
    x, y = _batch(np.random.default_rng(2), 4)
    b.manifest["seed"] = a.manifest["seed"] + 1
    assert a.step(x, y, lr=0.0) != b.step(x, y, lr=0.0)
    b.manifest["seed"] = a.manifest["seed"]
    b.step_count = a.step_count
    assert a.step(x, y, lr=0.0) == b.step(x, y, lr=0.0)


@pytest.mark.parametrize("bad, message", [
    (lambda x, y: (x, y[:3]), r"dimension 'batch' .* is 3, but it is 4 in x"),
    (lambda x, y: (x[:, :, :1], y), r"x: expected shape \('batch', 1, 2, 4\)"),
    # a mean over no samples read memory never written (a loss of 7e31, and an update)
    (lambda x, y: (x[:0], y[:0]), r"dimension 'batch' is 0: a loss and its gradients need"),
])
def test_bad_batches_at_any_batch_size_still_raise_after_fast_steps(bad, message):
    module = _symbolic_module()
    x, y = _batch(np.random.default_rng(3), 4)
    module.step(x, y)
    before = module.state_dict()
    with pytest.raises(tvf.ShapeError, match=message):
        module.step(*bad(x, y))
    assert module.step_count == 1
    for (n, a), b in zip(module.state_dict().items(), before.values()):
        np.testing.assert_array_equal(a, b, err_msg=n)
    if "is 0" in message:
        with pytest.raises(tvf.ShapeError, match=message):
            module.loss(*bad(x, y))


def test_predict_at_any_batch_size_takes_any_number_of_samples():
    module = _symbolic_module()
    infer = tvf.compile_inference(nn.Sequential(nn.Flatten(), nn.Linear(8, 3)),
                                  inputs=("batch", 1, 2, 4), records=False)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 1, 2, 4)).astype("float32")
    want = np.concatenate([infer.predict(x[:3], batch_size=3), infer.predict(x[3:6]),
                           infer.predict(x[6:])])
    for batch_size in (2, 3, 7, 256):
        np.testing.assert_allclose(infer.predict(x, batch_size=batch_size), want, rtol=1e-6)
    np.testing.assert_allclose(infer(x), want, rtol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        infer.predict(x, batch_size=0)
    assert module.step(*_batch(rng, 2)) > 0
