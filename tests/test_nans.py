"""Non-finite values are named, never silent: Trainer.fit stops at the step whose loss is not
finite; under tvf.debug_nans() the compiled step names the first op that produced NaN/Inf."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn
ops = tvf.ops


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 4)).astype("float32"), rng.integers(0, 3, n)


def test_fit_stops_when_the_loss_is_not_finite():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(1e30),
                                  inputs=(8, 4), labels=(8,))
    trainer = tvf.Trainer(module, progress=False)
    x, y = _data()
    with pytest.raises(tvf.NonFiniteLossError, match=r"loss became (nan|inf) at epoch 1, step \d"
                       ) as info:
        trainer.fit(x, y, epochs=3)
    assert info.value.epoch == 1 and 1 < info.value.step <= 4
    assert module.step_count == info.value.step  # it stopped at once
    assert isinstance(info.value, tvf.TvmfrontError)
    assert "parameter(s) are no longer finite" in str(info.value)
    assert "lower the learning rate" in str(info.value)


def test_a_nan_loss_over_finite_parameters_is_told_apart():
    """A batch whose labels are all ignore_index has a NaN loss (a mean over no sample, as in
    PyTorch) and leaves the parameters as they were: advice to lower the learning rate was
    wrong there."""
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(8, 4), labels=(8,))
    x, _ = _data(8)
    with pytest.raises(tvf.NonFiniteLossError, match="the parameters are all still finite, so "
                                                     "the batch itself gave it"):
        tvf.Trainer(module, progress=False).fit(x, np.full(8, -100), epochs=1)


class LogModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(ops.log(x))


def _positive(n=8):
    return np.random.default_rng(1).uniform(0.5, 2.0, (n, 4)).astype("float32"), np.arange(n) % 3


def test_debug_nans_names_the_op():
    tvf.manual_seed(0)
    with tvf.debug_nans():
        module = tvf.compile_training(LogModel(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                      inputs=(8, 4), labels=(8,))
    x, y = _positive()
    assert np.isfinite(module.step(x, y))
    x[3, 1] = -1.0  # log of a negative number
    params = module.state_dict()
    with pytest.raises(tvf.NonFiniteOpError, match=r"op 'log' \(kernel log in \w+\) produced "
                                                   r"NaN: 1 of 32 values") as info:
        module.step(x, y)
    assert info.value.op == "log"
    assert all(np.array_equal(params[n], v) for n, v in module.state_dict().items())
    with pytest.raises(tvf.NonFiniteOpError, match="op 'log'"):
        module.predict(x)


def test_debug_builds_do_not_share_the_cache_with_normal_builds(monkeypatch):
    x, y = _positive()
    x[0, 0] = -1.0
    tvf.manual_seed(0)
    normal = tvf.compile_training(LogModel(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(8, 4), labels=(8,))
    assert not np.isfinite(normal.loss(x, y))  # without the checks the NaN passes silently
    monkeypatch.setenv("TVMFRONT_DEBUG_NANS", "1")
    tvf.manual_seed(0)
    debug = tvf.compile_training(LogModel(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                 inputs=(8, 4), labels=(8,))
    assert debug.build_info["key"] != normal.build_info["key"]
    with pytest.raises(tvf.NonFiniteOpError, match="op 'log'"):
        debug.loss(x, y)
    with tvf.debug_nans(False):  # the context manager overrides the environment
        again = tvf.compile_training(LogModel(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                     inputs=(8, 4), labels=(8,))
    assert again.build_info["key"] == normal.build_info["key"]


def test_debug_nans_names_a_gradient_op():
    """The forward is finite, Inf appears first in the backward: sqrt's gradient at 0 is
    dy / (2 sqrt(0))."""

    class SqrtModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(np.array([1, 0, 1, 1], "float32"))
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return self.lin(ops.sqrt(x * self.scale))

    tvf.manual_seed(0)
    module = tvf.compile_training(SqrtModel(), nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(8, 4), labels=(8,), debug_nans=True)
    x, y = _positive()
    assert np.isfinite(module.loss(x, y))
    match = r"op 'sqrt' \(its gradient for input 0, kernel sqrt_grad0 in \w+\) produced Inf"
    with pytest.raises(tvf.NonFiniteOpError, match=match) as info:
        module.step(x, y)
    assert info.value.op == "sqrt"


def test_kernel_names_map_to_ops():
    from tvmfront.debug import describe

    kernels = {"log", "log1", "log12", "dense_grad1", "dense_grad11", "split2", "sqrt_grad0"}
    assert describe("log12", kernels) == ("log", "kernel log12")  # Relax's numbering
    assert describe("split2", kernels) == ("split2", "kernel split2")  # the op's own name
    assert describe("dense_grad11", kernels) == ("dense", "its gradient for input 1, kernel "
                                                          "dense_grad11")
    assert describe("sqrt_grad0", kernels)[0] == "sqrt"


def test_debug_nans_checks_every_output_of_a_multi_output_op():
    te = tvf.te

    @tvf.op
    def twice_and_log(x):
        return [te.compute(x.shape, lambda *i: x(*i) * 2.0, name="twice"),
                te.compute(x.shape, lambda *i: te.log(x(*i)), name="log")]

    class TwoOut(nn.Module):
        def forward(self, x):
            a, b = twice_and_log(x)
            return a + b

    module = tvf.compile_inference(TwoOut(), inputs=(2, 4), debug_nans=True)
    assert np.isfinite(module(np.ones((2, 4), "float32"))).all()
    x = np.ones((2, 4), "float32")
    x[0, 3] = -1.0  # the second output, log, is NaN there
    with pytest.raises(tvf.NonFiniteOpError, match=r"op 'twice_and_log' .* produced NaN: 1 of 8"):
        module(x)
