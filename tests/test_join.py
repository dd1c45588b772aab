"""split, and slicing / concat / stack on symbolic tensors inside compiled models: forward
values against numpy, and the compiled train step's gradients against finite differences."""

import numpy as np
import pytest

import tvmfront as tvf
from _fd import check_directional_grads

nn, ops = tvf.nn, tvf.ops


@pytest.mark.parametrize("size,axis,expected", [
    (2, 0, [(2, 6), (2, 6), (1, 6)]),     # torch.split: the last chunk is smaller
    (6, 1, [(5, 6)]),
    ([1, 0, 4], 0, [(1, 6), (0, 6), (4, 6)]),
    ([4, 2], -1, [(5, 4), (5, 2)]),
])
def test_split_sizes_and_values(size, axis, expected):
    x = np.arange(30.0).reshape(5, 6)
    parts = ops.split(x, size, axis=axis)
    assert [p.shape for p in parts] == expected
    np.testing.assert_array_equal(np.concatenate(parts, axis=axis), x)


def test_split_errors():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match=r"split: sizes \[1, 2\] do not sum to axis 0's length 4"):
        ops.split(x, [1, 2])
    with pytest.raises(ValueError, match="split: size 0 must be positive"):
        ops.split(x, 0)
    with pytest.raises(ValueError, match="split: axis 2 out of range"):
        ops.split(x, 1, axis=2)


def test_concat_and_stack_errors_name_the_tensor():
    with pytest.raises(ValueError, match=r"concat: tensor 1 is \[2, 2\] float64, tensor 0 is "
                                         r"\[3, 2\].*except along axis 1"):
        ops.concat([np.ones((3, 2)), np.ones((2, 2))], axis=1)
    with pytest.raises(ValueError, match="stack: tensor 1"):
        ops.stack([np.ones(2), np.ones(3)])
    with pytest.raises(ValueError, match="concat: needs at least one tensor"):
        ops.concat([])
    with pytest.raises(ValueError, match="step cannot be zero"):
        ops.strided_slice(np.ones(3), slices=((None, None, 0),))


class Cutter(nn.Module):
    """Every slicing form on a symbolic [B, 6, 4] tensor, joined back up, then a head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.head = nn.Linear(13, 3)

    def forward(self, x):                                   # x: [B, 6, 4]
        b = x.shape[0]
        h = self.proj(x.reshape(b * 6, 4)).reshape(b, 6, 4)
        rev = h[:, ::-2, 1:]                                # [B, 3, 3] negative step
        last = h[:, -1]                                     # [B, 4]    int drops an axis
        mid = h[..., 2, -3:]                                # [B, 3]    Ellipsis + negative start
        lo, hi = ops.split(h, [2, 4], axis=1)               # [B, 2, 4], [B, 4, 4]
        pair = ops.stack([lo[:, 0, :3], hi[:, 3, 1:]], axis=1)   # [B, 2, 3]
        z = ops.concat([rev.reshape(b, 9)[:, ::3], last, mid, ops.max(pair, axis=1)
                        + ops.sum(hi, axis=(1, 2), keepdims=True)[:, 0]], axis=1)
        return self.head(ops.tanh(z))                       # z: [B, 3 + 4 + 3 + 3]


def _reference(x, p):
    b = x.shape[0]
    h = (x.reshape(b * 6, 4) @ p["proj.weight"].T + p["proj.bias"]).reshape(b, 6, 4)
    rev, last, mid = h[:, ::-2, 1:], h[:, -1], h[..., 2, -3:]
    lo, hi = h[:, :2], h[:, 2:]
    pair = np.stack([lo[:, 0, :3], hi[:, 3, 1:]], axis=1)
    z = np.concatenate([rev.reshape(b, 9)[:, ::3], last, mid,
                        pair.max(1) + hi.sum((1, 2), keepdims=True)[:, 0]], axis=1)
    return np.tanh(z) @ p["head.weight"].T + p["head.bias"]


def test_slices_in_a_model_match_numpy_compiled_and_eager():
    tvf.manual_seed(0)
    model = Cutter()
    x = np.random.default_rng(0).standard_normal((2, 6, 4)).astype("float32")
    p = model.state_dict()
    infer = tvf.compile_inference(model, inputs=x)
    np.testing.assert_allclose(infer(x), _reference(x, p), rtol=1e-5, atol=1e-6)


def test_slices_train_gradients_match_finite_differences():
    # split is slices, so it trains; every parameter's compiled gradient against central
    # differences of the compiled loss along a random direction.
    tvf.manual_seed(1)
    model = Cutter()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 4)).astype("float32")
    y = rng.integers(0, 3, 3)
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=x, labels=y)
    check_directional_grads(module, x, y, ["proj.weight", "proj.bias"], rng)
    losses = [float(module.step(x, y)) for _ in range(10)]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("key,error,match", [
    ((0, 0, 0), IndexError, r"too many indices \(3\)"),
    ((slice(None), 6), IndexError, "index 6 is out of range for axis 1 of size 6"),
    ((Ellipsis, Ellipsis), IndexError, "single ellipsis"),
    ((np.array([0, 1]),), TypeError, r"ops\.take"),
])
def test_bad_symbolic_index_is_a_clear_error(key, error, match):
    class M(nn.Module):
        def forward(self, x):
            return x[key]

    with pytest.raises(error, match=match):
        tvf.compile_inference(M(), inputs=(2, 6))


@tvf.op
def halves(x):
    """A two-output op: the two halves of the last axis."""
    n = x.shape[-1] // 2
    return [tvf.te.compute((*x.shape[:-1], n), lambda *i: x(*i)),
            tvf.te.compute((*x.shape[:-1], n), lambda *i: x(*i[:-1], i[-1] + n))]


class Halves(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        a, b = halves(self.lin(x))
        return a * b


def test_multi_output_ops_run_eagerly_in_inference_and_in_a_train_step():
    # several outputs work eagerly, in compiled inference and (since the twenty-fourth
    # session) in a train step: tests/test_multi_output_training.py checks its gradients
    x = np.random.default_rng(0).standard_normal((3, 4)).astype("float32")
    a, b = halves(x)
    np.testing.assert_array_equal(np.concatenate([a, b], 1), x)
    tvf.manual_seed(0)
    model = Halves()
    h = x @ model.lin.weight.data.T + model.lin.bias.data
    infer = tvf.compile_inference(model, inputs=x)
    np.testing.assert_allclose(infer(x), h[:, :2] * h[:, 2:], rtol=1e-5, atol=1e-6)
    train = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=x,
                                 labels=(3, 2))
    y = np.zeros((3, 2), "float32")
    assert train.step(x, y) == pytest.approx(np.mean((h[:, :2] * h[:, 2:]) ** 2), rel=1e-5)
    assert train.loss(x, y) < np.mean((h[:, :2] * h[:, 2:]) ** 2)


@pytest.mark.parametrize("n, step", [(8, -2), (16, -2), (100, -2), (101, -3), (100, 3)])
def test_strided_slice_gradient_eagerly_at_every_step(n, step):
    """The eager kernel (unscheduled, plain LLVM) put x[::-2]'s gradient one position off at
    even lengths: TVM 0.27 lowered floordiv(7 - v, 2) one low inside the select."""
    dy = np.arange(1.0, len(range(0, n)[::step]) + 1)
    (dx,) = tvf.ops.strided_slice.vjp(dy, np.zeros(n), slices=((None, None, step),))
    want = np.zeros(n)
    want[::step] = dy
    np.testing.assert_array_equal(dx, want)
