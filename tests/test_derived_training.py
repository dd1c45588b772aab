"""A model trained on derived gradients alone matches the one trained on explicit gradients."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def _lenet():
    tvf.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 10))


def _train(derived, data, dump):
    x_train, y_train, x_test, y_test = data
    module = tvf.compile_training(_lenet(), nn.CrossEntropyLoss(), tvf.optim.Adam(3e-3),
                                  inputs=(64, 1, 8, 8), labels=(64,),
                                  derived_gradients=derived, dump_ir=str(dump))
    trainer = tvf.Trainer(module, seed=0, progress=False)
    history = trainer.fit(x_train, y_train, epochs=10)
    return history, trainer.evaluate(x_test, y_test)["accuracy"]


@pytest.mark.slow
def test_derived_gradients_train_like_explicit_ones(tmp_path):
    data = tvf.data.load_digits()
    explicit, acc_explicit = _train(False, data, tmp_path / "explicit")
    derived, acc_derived = _train(True, data, tmp_path / "derived")
    # the derived run really used autodiff's kernels (named <op>_d<tensor>: the padding's
    # adjoint conv2d_pad_d..., the stride-2 d/dx's phases), the other did not
    lowered = "01_gradient.py"
    assert "conv2d_pad_d" in (tmp_path / "derived" / lowered).read_text()
    assert "conv2d_pad_d" not in (tmp_path / "explicit" / lowered).read_text()
    assert acc_explicit > 0.9
    assert abs(acc_derived - acc_explicit) <= 0.01
    np.testing.assert_allclose([h["loss"] for h in derived], [h["loss"] for h in explicit],
                               rtol=1e-3)
