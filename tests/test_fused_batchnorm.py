"""BatchNorm2d's train step fuses: ReLU into the normalisation (relu's gradient reads relu's
output, not its input), and the two pieces of BatchNorm's dx (bn_apply's, bn_moments')
into one kernel with their sum (pipeline.untuple_gradients; bn_moments' gradient reads the
forward's moments, not a mean of its own). Checked on the kernels of the step and on its
numbers, with and without the stage."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import pipeline
from tvmfront._tvm import te

nn, ops = tvf.nn, tvf.ops


class _ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(ops.mean(ops.relu(self.bn(self.conv(x))), axis=(2, 3)))


def _compile(monkeypatch, untuple=True):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    stages = [s for s in pipeline.LOWERING if untuple or s[0] != "untuple_gradients"]
    monkeypatch.setattr(pipeline, "LOWERING", stages)
    tvf.manual_seed(0)
    return tvf.compile_training(_ConvBnRelu(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(4, 2, 6, 6), labels=(4,), records=False)


def _called(module, function="loss_adjoint"):
    """Names of the kernels `function` of the lowered step calls, in order."""
    text = module._lowered[function].script(show_meta=False)
    return [part.split(",")[0].removeprefix("cls.") for part in text.split("R.call_tir(")[1:]]


def test_relu_fuses_into_the_normalisation_and_bn_dx_is_one_kernel(monkeypatch):
    called = _called(_compile(monkeypatch))
    # the forward writes relu(bn(x)) only: bn's own output is never written out
    assert any(k.startswith("fused_bn_apply") and "relu" in k and "grad" not in k
               for k in called), called
    assert "relu" not in called and "bn_apply" not in called, called
    # dx = bn_apply's piece + bn_moments' piece, summed, in one kernel; no mean of x of its own
    dx = [k for k in called if "bn_moments_grad0" in k]
    assert len(dx) == 1 and "bn_apply_grad0" in dx[0] and "add" in dx[0], called
    assert not [k for k in called if k.startswith("add")], called


def test_without_the_stage_the_gradient_pieces_stay_apart(monkeypatch):
    called = _called(_compile(monkeypatch, untuple=False))
    pieces = [k for k in called if "bn_apply_grad0" in k or "bn_moments_grad0" in k]
    assert len(pieces) == 2 and [k for k in called if "add" in k and "grad" not in k], called


def _trained(monkeypatch, untuple, x, y, steps=4):
    module = _compile(monkeypatch, untuple)
    losses = [module.step(x, y) for _ in range(steps)]
    return losses, module.state_dict()


def test_the_steps_numbers_do_not_change_with_the_stage(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 6, 6)).astype("float32")
    y = np.array([0, 1, 2, 1])
    apart_losses, apart = _trained(monkeypatch, False, x, y)
    fused_losses, fused = _trained(monkeypatch, True, x, y)
    np.testing.assert_allclose(fused_losses, apart_losses, rtol=1e-6)
    assert fused.keys() == apart.keys()
    for name, value in fused.items():  # weights, BatchNorm's running statistics, its count
        np.testing.assert_allclose(value, apart[name], rtol=1e-5, atol=1e-6, err_msg=name)


@tvf.op
def _cube(x):
    return te.compute(x.shape, lambda *i: x(*i) * x(*i) * x(*i), name="cube")


@_cube.grad(uses_output=True)
def _(dy, out, x):  # 3 x^2 = 3 out / x where x != 0; written with out to read the output
    return [te.compute(x.shape, lambda *i: dy(*i) * 3 * out(*i) / x(*i), name="cube_grad")]


@pytest.mark.parametrize("derived", [False, True])
def test_a_gradient_reading_the_output_matches_the_derived_one(derived):
    rng = np.random.default_rng(1)
    x = rng.uniform(0.5, 2.0, (3, 5)).astype("float32")
    dy = rng.standard_normal((3, 5)).astype("float32")
    (dx,) = _cube.vjp(dy, x, derived=derived)  # eagerly: the output recomputed in the kernel
    np.testing.assert_allclose(dx, 3 * x * x * dy, rtol=1e-5)


def test_a_gradient_reading_the_output_reads_the_steps_own_output(monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE", "0")
    tvf.manual_seed(0)
    lin = nn.Linear(4, 3)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return _cube(self.lin(x))

    module = tvf.compile_training(Model(), nn.MSELoss(), tvf.optim.SGD(0.01), inputs=(5, 4),
                                  labels=(5, 3), records=False)
    text = module._lowered["loss_adjoint"].script(show_meta=False)
    cube = [ln for ln in text.splitlines() if "R.call_tir(" in ln and "cube" in ln]
    # the forward's cube(lin(x)) is an input of the gradient kernel, not computed again there
    forward = next(ln for ln in cube if "grad" not in ln).split("=")[0].strip()
    assert any("grad" in ln and forward in ln.split("(", 2)[2] for ln in cube), cube
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 4)).astype("float32")
    y = rng.standard_normal((5, 3)).astype("float32")
    w, b = np.array(lin.weight.data), np.array(lin.bias.data)
    module.step(x, y)
    h = x @ w.T + b
    dh = 2 * (h ** 3 - y) / y.size * 3 * h * h
    np.testing.assert_allclose(module.state_dict()["lin.weight"], w - 0.01 * dh.T @ x,
                               rtol=1e-4, atol=1e-6)
