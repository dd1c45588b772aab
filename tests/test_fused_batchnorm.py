"""BatchNorm2d's train step: ReLU fuses into the normalisation (relu's gradient reads relu's
output, not its input, so the normalisation's output has relu as its only reader),
bn_moments' dx reads the forward's moments instead of taking a mean of x of its own, and
BatchNorm's dx (bn_apply's piece, bn_moments' piece, their sum) is one kernel
(pipeline.untuple_gradients), while convolution gradients stay unfused. A gradient that
reads its op's output (`@op.grad(uses_output=True)`) is checked on its own."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import te

from _lowering_stage import without_stage

nn, ops = tvf.nn, tvf.ops


class _ConvBnRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(ops.mean(ops.relu(self.bn(self.conv(x))), axis=(2, 3)))


def _compile(monkeypatch, untuple=True, **kwargs):
    without_stage(monkeypatch, "untuple_gradients", untuple)
    tvf.manual_seed(0)
    return tvf.compile_training(_ConvBnRelu(), nn.CrossEntropyLoss(), tvf.optim.Adam(0.01),
                                inputs=(4, 2, 6, 6), labels=(4,), records=False, **kwargs)


def _kernels(module, function="loss_adjoint"):
    """{name: PrimFunc} of the kernels `function` of the lowered step calls."""
    text = module._lowered[function].script(show_meta=False)
    called = {part.split(",")[0].removeprefix("cls.") for part in text.split("R.call_tir(")[1:]}
    return {name: module._lowered[name] for name in called}


def test_relu_fuses_into_the_normalisation_and_bn_moments_dx_takes_no_mean(monkeypatch):
    kernels = _kernels(_compile(monkeypatch))
    # the forward writes relu(bn(x)) only: bn's own output is never written out
    assert any(k.startswith("fused_bn_apply") and "relu" in k and "grad" not in k
               for k in kernels), sorted(kernels)
    assert "relu" not in kernels and "bn_apply" not in kernels, sorted(kernels)
    # bn_moments' dx: an elementwise map of x and the forward's moments, no reduction, in
    # one kernel with bn_apply's piece and their sum
    (dx,) = [k for k in kernels if "bn_moments_grad0" in k]
    assert "T.axis.reduce" not in kernels[dx].script(), kernels[dx].script()
    assert "bn_apply_grad0" in dx and "add" in dx, sorted(kernels)
    assert not [k for k in kernels if k.startswith("add")], sorted(kernels)
    # the mean's gradient and relu's fuse; the convolution's gradient alone
    assert "fused_mean_grad0_relu_grad0" in kernels, sorted(kernels)
    assert "conv2d_grad1" in kernels, sorted(kernels)


def test_without_the_stage_the_gradient_pieces_stay_apart(monkeypatch):
    kernels = _kernels(_compile(monkeypatch, untuple=False))
    assert [k for k in kernels if "bn_apply_grad0" in k and "bn_moments_grad0" not in k]
    assert [k for k in kernels if "add" in k and "grad" not in k], sorted(kernels)


def test_the_stage_changes_no_numbers(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 6, 6)).astype("float32")
    y = np.array([0, 1, 2, 1])
    apart, fused = (_compile(monkeypatch, untuple) for untuple in (False, True))
    for _ in range(4):
        np.testing.assert_allclose(fused.step(x, y), apart.step(x, y), rtol=1e-6)
    for name, value in fused.state_dict().items():
        np.testing.assert_allclose(value, apart.state_dict()[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_derived_gradients_train_the_same(monkeypatch):
    # derived gradients take bn_moments in two passes (autodiff takes one output per stage);
    # the explicit ones take it in one (a tuple reduction): the steps agree
    rng = np.random.default_rng(0)
    x = 2 + rng.standard_normal((4, 2, 6, 6)).astype("float32")
    y = np.array([0, 1, 2, 1])
    runs = []
    for derived in (False, True):
        module = _compile(monkeypatch, derived_gradients=derived)
        # no kernel falls back (dlight's GEMV asserted on the derived coefficient gradients:
        # a warning and a fallback entry, though tvmfront's rule then scheduled them)
        assert module.build_info["fallback_kernels"] == {}, derived
        runs.append(([module.step(x, y) for _ in range(4)], module.state_dict()))
    (explicit_losses, explicit), (derived_losses, derived) = runs
    np.testing.assert_allclose(derived_losses, explicit_losses, rtol=1e-5)
    for name, value in derived.items():  # weights, BatchNorm's running statistics, its count
        np.testing.assert_allclose(value, explicit[name], rtol=1e-4, atol=1e-5, err_msg=name)


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


@pytest.mark.parametrize("call, message", [
    (lambda norm, z: norm.bn_moments(z(2, 3, 4)), r"bn_moments expects x \[N, C, H, W\]"),
    (lambda norm, z: norm.bn_coefficients(z(2, 3), z(5), z(3)),
     r"bn_coefficients expects moments \[2, C\] and gamma, beta \[C\], got \[2, 3\], \[5\]"),
    (lambda norm, z: norm.bn_coefficients(z(3, 3), z(3), z(3)), r"got \[3, 3\]"),
    (lambda norm, z: norm.bn_apply(z(2, 3, 4, 4), z(4, 5)),
     r"bn_apply expects coef \[3 or more, C\] for x \[2, 3, 4, 4\], got \[4, 5\]"),
    (lambda norm, z: norm.bn_apply(z(2, 3, 4, 4), z(2, 3)), r"got \[2, 3\]"),
])
def test_the_three_ops_name_a_wrong_shape(call, message):
    from tvmfront.errors import ShapeError
    from tvmfront.ops import norm

    with pytest.raises(ShapeError, match=message):
        call(norm, lambda *shape: np.zeros(shape, "float32"))
