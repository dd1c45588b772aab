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
