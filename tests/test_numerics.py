"""Float32 results as precise as their inputs allow, against float64 references (cases from
a sweep of special values against PyTorch, which got each of them right):

- a norm of a constant row is beta: its mean is taken about the row's first element (summed
  as it was, the mean's rounding d came out as d / sqrt(d^2 + eps): 0.95 off at 1000.1);
- cross-entropy from the gaps to each row's max (log(se) + max - picked had rounded the loss
  to ulp(max): 0.3125 for 0.31326, 0 for log 4, -2.7e22 compiled with label smoothing);
- x * 0.0 is NaN at NaN and inf (TVM folds v * 0 to 0), and div's d/db = -dy (a / b) / b
  (b * b under- and overflowed);
- float64 tanh near 0 by its series (TVM's cancelled);
- relu's gradient passes dy where its output is NaN (PyTorch's where(out <= 0, 0, dy); it
  gave 0);
- an eager kernel's long float sum in two levels (tvmfront/long_sums.py): 2^20 copies of 0.1
  summed one at a time were 1% off.
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

nn = tvf.nn


@pytest.mark.parametrize("c", [7.7, 1000.1])
def test_norms_of_a_constant_row_give_beta(c):
    beta = np.linspace(-1, 1, 768).astype(np.float32)
    x = np.full((3, 768), c, np.float32)
    np.testing.assert_array_equal(ops.layer_norm(x, np.ones(768, np.float32), beta),
                                  np.broadcast_to(beta, x.shape))
    np.testing.assert_array_equal(tvf.compile_inference(nn.LayerNorm(768), inputs=x)(x), 0)
    x4 = np.full((4, 4, 8, 8), c, np.float32)
    b4 = np.arange(4, dtype=np.float32)
    want = np.broadcast_to(b4[None, :, None, None], x4.shape)
    np.testing.assert_array_equal(ops.group_norm(x4, np.ones(4, np.float32), b4, groups=2), want)
    np.testing.assert_array_equal(ops.batch_norm(x4, np.ones(4, np.float32), b4), want)
    np.testing.assert_array_equal(tvf.compile_inference(nn.GroupNorm(2, 4), inputs=x4)(x4), 0)


def test_layer_norm_of_rows_far_from_zero():
    x = (np.random.default_rng(0).standard_normal((4, 768)) + 1000).astype(np.float32)
    x64 = x.astype(np.float64)
    want = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    got = ops.layer_norm(x, np.ones(768, np.float32), np.zeros(768, np.float32))
    assert np.abs(got - want).max() < 1e-4  # 4.9e-4 before; PyTorch 5.7e-5


class Shift(nn.Module):
    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(np.zeros((1, 4), np.float32))

    def forward(self, x):
        return x + self.p


CE_ROWS = [[1e6, 1e6 - 1, 0, 0], [-1e30] * 4, [1e4, 1e4 - 2, 0, 0], [3e38, 3e38, 0, 0],
           [3.0, -1.0, 0.5, 2.0]]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_of_large_logits(smoothing):
    module = tvf.compile_training(Shift(), nn.CrossEntropyLoss(label_smoothing=smoothing),
                                  tvf.optim.SGD(0.1), inputs=(1, 4), labels=(1,))
    for row in CE_ROWS:
        x, y = np.array([row], np.float32), np.array([0])
        x64 = x.astype(np.float64)
        gaps = x64.max() - x64  # float64 log-softmax, from the gaps as well
        lsm = -gaps - np.log(np.exp(-gaps).sum())
        want = -((1 - smoothing) * lsm[0, 0] + smoothing * lsm.mean())
        if smoothing and gaps.sum() > np.finfo(np.float32).max:
            want = np.inf  # the smoothing's gaps of 3e38 sum past float32 (PyTorch: inf too)
        for got in (float(ops.cross_entropy(x, y, label_smoothing=smoothing)),
                    module.loss(x, y)):
            assert got == pytest.approx(want, rel=1e-6), (row, smoothing)


def test_times_zero_keeps_nan_and_inf():
    x = np.array([[np.nan, np.inf, -np.inf, 2.0]], np.float32)
    with np.errstate(invalid="ignore"):
        want = x * np.float32(0)
    np.testing.assert_array_equal(ops.mul_scalar(x, value=0.0), want)

    class Zero(nn.Module):
        def forward(self, t):
            return ops.log(t) * 0.0  # NaN and -inf made inside (inputs are checked finite)

    t = np.array([[-1.0, 0.0, 1.0, 2.0]], np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = np.log(t) * np.float32(0)
    np.testing.assert_array_equal(tvf.compile_inference(Zero(), inputs=t.shape)(t), want)


def test_div_gradient_of_tiny_and_huge_divisors():
    a = np.array([0.0, 1e-20, 1e-25, 3e19, -0.0], np.float32)
    b = np.array([1e-20, 1e-20, 1e-25, 3e19, 1e-30], np.float32)
    want = (-(a.astype(np.float64) / b / b)).astype(np.float32)
    for derived in (False, True):
        _, db = ops.div.vjp(np.ones(5, np.float32), a, b, derived=derived)
        np.testing.assert_allclose(db, want, rtol=1e-6)
        assert np.isfinite(db).all()


def test_float64_tanh_near_zero():
    # TVM's float64 tanh cancels there: 2.2e-5 relative at 1e-12, 0 below ~1e-17
    x = np.array([1e-300, 1e-30, -1e-17, 1e-12, -1e-8, 1e-4, 0.0099, 0.01, 0.1, -3.0])
    np.testing.assert_allclose(ops.tanh(x), np.tanh(x), rtol=1e-14, atol=0)
    assert ops.tanh(np.array([0.0, -0.0]))[0] == 0


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_relu_gradient_passes_dy_at_nan_as_pytorch(dtype):
    x = np.array([-1.0, 0.0, 2.0, np.nan, -np.nan, np.inf, -np.inf], dtype)
    dy = np.arange(1, 8, dtype=dtype)
    (dx,) = ops.relu.vjp(dy, x)
    assert dx.dtype == dtype
    np.testing.assert_array_equal(dx, [0, 0, 3, 4, 5, 6, 0])


@pytest.mark.parametrize("call, want", [
    (lambda x: ops.sum(x), 0.1 * 2 ** 20),
    (lambda x: ops.mean(x.reshape(1024, 1024)), 0.1),  # two reduction axes, fused
    (lambda x: ops.sum(x.reshape(2, 524288), axis=1), 0.1 * 2 ** 19),
    (lambda x: ops.sum(x[:1000003]), 0.1 * 1000003),  # a ragged last partial
    (lambda x: ops.mse_loss(x.reshape(1024, 1024), np.zeros((1024, 1024), np.float32)), 0.01),
    (lambda x: ops.sum.vjp(np.float32(1), x[:8]), None),  # short: untouched, still right
], ids=["sum", "mean-2d", "rows", "ragged", "mse", "short"])
def test_eager_long_float32_sums_are_accurate(call, want):
    x = np.full(2 ** 20, 0.1, np.float32)
    got = call(x)
    if want is None:
        np.testing.assert_array_equal(got[0], 1)
        return
    # one accumulator: 9.9e-3 off (sum), 1.4e-2 (mse); numpy's pairwise sum 2e-7
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=5e-5)
