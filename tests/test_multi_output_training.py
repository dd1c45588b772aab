"""Ops with several outputs inside a compiled train step: derived and explicit gradients (one
output gradient per output, zeros for an output the loss does not read), and an explicit
gradient reading the forward's outputs. Each step's gradients are checked against central
finite differences of the compiled loss (float64) and against their closed form."""

import numpy as np
import pytest

import tvmfront as tvf
from _fd import finite_difference_grads

nn = tvf.nn
te = tvf.te
F64 = "float64"


@tvf.op
def halves(x):
    """The two halves of the last axis: two outputs, gradient derived."""
    n = int(x.shape[1]) // 2
    return (te.compute((x.shape[0], n), lambda i, j: x[i, j], name="first"),
            te.compute((x.shape[0], n), lambda i, j: x[i, j + n], name="second"))


@tvf.op
def row_moments(x, scale=1.0):
    """(scale * row means, row means of squares), with an explicit gradient."""
    k1 = te.reduce_axis((0, x.shape[1]), "k1")
    k2 = te.reduce_axis((0, x.shape[1]), "k2")
    n = float(int(x.shape[1]))
    return (te.compute((x.shape[0],), lambda i: te.sum(x[i, k1] * (scale / n), axis=k1),
                       name="row_mean"),
            te.compute((x.shape[0],), lambda i: te.sum(x[i, k2] * x[i, k2] / n, axis=k2),
                       name="row_square"))


@row_moments.grad
def _(dys, x, scale=1.0):
    d_mean, d_square = dys
    n = float(int(x.shape[1]))
    return [te.compute(x.shape, lambda i, j: d_mean[i] * (scale / n)
                       + d_square[i] * 2.0 * x[i, j] / n, name="row_moments_dx")]


@tvf.op
def tanh_pair(x):
    """(tanh x, tanh x squared), its gradient reading both outputs instead of x."""
    t = te.compute(x.shape, lambda *i: te.tanh(x(*i)), name="t")
    return t, te.compute(x.shape, lambda *i: te.tanh(x(*i)) * te.tanh(x(*i)), name="t2")


@tanh_pair.grad(uses_output=True)
def _(dys, outs, x):
    (d_t, d_t2), (t, t2) = dys, outs
    return [te.compute(x.shape, lambda *i: (d_t(*i) + d_t2(*i) * 2.0 * t(*i)) * (1.0 - t2(*i)),
                       name="tanh_pair_dx")]


class Halves(nn.Module):
    def __init__(self, both=True):
        super().__init__()
        self.lin, self.both = nn.Linear(5, 6, dtype=F64), both

    def forward(self, x):
        a, b = halves(self.lin(x))
        return a * b if self.both else a


class Moments(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 6, dtype=F64)

    def forward(self, x):
        mean, square = row_moments(self.lin(x), scale=2.0)
        return mean * square


class TanhPair(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 3, dtype=F64)

    def forward(self, x):
        t, t2 = tanh_pair(self.lin(x))
        return t + t2 * t


def _closed_form(case, w, b, x, y):
    """(loss, dL/dw, dL/db) of MSE(model(x), y) by hand."""
    h = x @ w.T + b
    if case in ("halves", "halves_first"):
        a, c = h[:, :3], h[:, 3:]
        out = a * c if case == "halves" else a
        g = 2 * (out - y) / out.size
        dh = np.concatenate([g * c, g * a], 1) if case == "halves" else \
            np.concatenate([g, np.zeros_like(g)], 1)
    elif case == "moments":
        mean, square = 2.0 * h.mean(1), (h * h).mean(1)
        out = mean * square
        g = 2 * (out - y) / out.size
        dh = (g * square)[:, None] * 2.0 / 6 + (g * mean)[:, None] * 2 * h / 6
    else:
        t = np.tanh(h)
        out = t + t ** 3
        g = 2 * (out - y) / out.size
        dh = g * (1 + 3 * t ** 2) * (1 - t ** 2)
    return np.mean((out - y) ** 2), dh.T @ x, dh.sum(0)


CASES = {"halves": (lambda: Halves(), (8, 3)), "halves_first": (lambda: Halves(False), (8, 3)),
         "moments": (Moments, (8,)), "tanh_pair": (TanhPair, (8, 3))}


@pytest.mark.parametrize("derived", [False, True], ids=["explicit", "derived"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_train_step_differentiates_ops_with_several_outputs(case, derived):
    build, y_shape = CASES[case]
    tvf.manual_seed(3)
    model = build()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal(y_shape)
    tm = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1),
                              inputs=tvf.TensorSpec((8, 5), F64),
                              labels=tvf.TensorSpec(y_shape, F64), derived_gradients=derived)
    w, b = (model.state_dict()[k] for k in ("lin.weight", "lin.bias"))
    loss, grads = tm.loss_and_grads(x, y)
    want_loss, want_w, want_b = _closed_form(case, w, b, x, y)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert np.abs(want_w).max() > 1e-3  # not vacuous
    np.testing.assert_allclose(grads["lin.weight"], want_w, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads["lin.bias"], want_b, rtol=1e-10, atol=1e-13)
    fd = finite_difference_grads(tm, x, y)
    for name in tm.param_names:
        np.testing.assert_allclose(grads[name], fd[name], rtol=1e-6, atol=1e-8, err_msg=name)
    tm.step(x, y)  # the SGD step applies them
    np.testing.assert_allclose(tm.state_dict()["lin.weight"], w - 0.1 * want_w, rtol=1e-12)


@tvf.op
def max_and_index(x):
    """(row max, its index): a float output and an int64 one, which gets no gradient."""
    k = te.reduce_axis((0, x.shape[1]), "k")
    k2 = te.reduce_axis((0, x.shape[1]), "k2")
    mx = te.compute((x.shape[0],), lambda i: te.max(x[i, k], axis=k), name="mx")
    index = te.compute((x.shape[0],), lambda i: te.sum(te.if_then_else(
        x[i, k2] == mx[i], k2, 0).astype("int64"), axis=k2), name="index")
    return mx, index


class RowMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 6, dtype=F64)

    def forward(self, x):
        value, _ = max_and_index(self.lin(x))
        return value


def test_an_integer_output_takes_no_gradient():
    tvf.manual_seed(4)
    model = RowMax()
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((8, 5)), rng.standard_normal(8)
    tm = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1),
                              inputs=tvf.TensorSpec((8, 5), F64), labels=tvf.TensorSpec((8,), F64))
    w, b = (model.state_dict()[k] for k in ("lin.weight", "lin.bias"))
    h = x @ w.T + b
    dh = np.zeros_like(h)
    dh[np.arange(8), h.argmax(1)] = 2 * (h.max(1) - y) / 8
    _, grads = tm.loss_and_grads(x, y)
    np.testing.assert_allclose(grads["lin.weight"], dh.T @ x, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(grads["lin.bias"], dh.sum(0), rtol=1e-10, atol=1e-13)
