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


@pytest.mark.parametrize("lr, message", [
    (float("nan"), "learning rate must be a finite number >= 0, got nan"),
    (-1.0, "learning rate must be a finite number >= 0, got -1.0"),
    (float("inf"), "learning rate must be a finite number >= 0, got inf"),
    # finite as a Python float, inf in the step's float32 scalar: it had made every
    # parameter inf after one step
    (1e39, r"learning rate 1e\+39 does not fit the step's float32 scalars"),
    (np.float64(3.5e38), r"learning rate 3.5e\+38 does not fit the step's float32 scalars"),
    ("abc", "learning rate must be a number, got 'abc'"),
    ([1e-3], r"learning rate must be a number, got \[0.001\]"),
    (1e-3 + 1j, "learning rate must be a number"),
    (np.array([1e-3, 1e-3]), "learning rate must be a number"),
    (True, "learning rate must be a number, got True"),
])
def test_bad_learning_rates_are_refused_and_change_nothing(lr, message):
    module = _module()
    x, y = _batches(1)[0]
    module.step(x, y)  # the fast path's tensors exist before the bad call
    before = module.state_dict()
    with pytest.raises(ValueError, match=message):
        module.step(x, y, lr=lr)
    with pytest.raises(ValueError, match=message):
        module.lr = lr  # the default lr of later steps: checked when set
    assert module.step_count == 1 and module.lr == 1e-2
    for name, value in module.state_dict().items():
        np.testing.assert_array_equal(value, before[name])
    module.lr = np.float32(0.5)  # a number of any type that fits is taken, as a float
    assert type(module.lr) is float and module.lr == 0.5


def test_a_batch_whose_labels_are_all_ignored_leaves_the_parameters_finite():
    # PyTorch: the mean over no labels is NaN, the gradient 0. The gradient had been NaN too,
    # and one step on such a batch (padding tokens only) made every parameter NaN.
    module = _module(tvf.optim.SGD(0.1))
    x, _ = _batches(1)[0]
    ignored = np.full(4, -100, np.int64)
    before = module.state_dict()
    loss, grads = module.loss_and_grads(x, ignored)
    assert np.isnan(loss)
    assert all(not g.any() for g in grads.values())
    assert np.isnan(module.step(x, ignored))
    for name, value in module.state_dict().items():  # SGD: a zero gradient changes nothing
        np.testing.assert_array_equal(value, before[name])
    partly = ignored.copy()
    partly[1] = 2  # one label counts: the mean over it alone, as before
    _, grads = module.loss_and_grads(x, partly)
    assert all(np.isfinite(g).all() and g.any() for g in grads.values())


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
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        infer.predict(x, batch_size=0)
    assert module.step(*_batch(rng, 2)) > 0


def test_wrong_kinds_of_arguments_are_named():
    module = _module()
    state = module.state_dict()
    for bad in (list(state.values()), list(state.items())):
        with pytest.raises(TypeError, match="load_state_dict: expects a dict .* got list"):
            module.load_state_dict(bad)
    with pytest.raises(TypeError, match="load_optimizer_state: expects a dict .* got list"):
        module.load_optimizer_state(list(module.optimizer_state().values()))
    tvf.manual_seed(0)
    infer = tvf.compile_inference(nn.Linear(4, 2), inputs=("batch", 4), records=False)
    x = np.ones((3, 4), "float32")
    for batch_size in (None, "abc", 2.5, True, -1):
        with pytest.raises(ValueError, match="predict: batch_size must be a positive int, got"):
            infer.predict(x, batch_size=batch_size)
    assert infer.predict(x, batch_size=np.int64(2)).shape == (3, 2)
