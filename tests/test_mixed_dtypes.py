"""Data of another float dtype than the parameters: the step keeps every parameter, optimizer
state and buffer in its own dtype (PyTorch's rule: a leaf's gradient has its dtype).

float64 labels for a float32 model (numpy's default, `y = x @ w`) had made every parameter
float64 after one step; the next step failed in TVM's VM, and an export after it wrote a
bundle that load refused.
"""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def _dtypes(module):
    return {k: str(v.dtype) for k, v in module.state_dict().items()}


def test_float64_labels_train_a_float32_model_in_float32(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype("float32")
    y = x @ rng.standard_normal((4, 1))  # float64
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1))
    w0, b0 = (model.state_dict()[k].astype(np.float64) for k in ("0.weight", "0.bias"))
    module = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.05), inputs=x, labels=y)
    loss = module.step(x, y)
    assert _dtypes(module) == {"0.weight": "float32", "0.bias": "float32"}
    # the loss in float64 (the labels'), the gradient cast to float32 before the update
    err = x.astype(np.float64) @ w0.T + b0 - y
    assert loss == pytest.approx(np.mean(err ** 2), rel=1e-6)
    dw = (2 / err.size * err.T @ x).astype(np.float32)
    db = (2 / err.size * err.sum(0)).astype(np.float32)
    state = module.state_dict()
    np.testing.assert_allclose(state["0.weight"], w0.astype(np.float32) - 0.05 * dw, rtol=1e-6)
    np.testing.assert_allclose(state["0.bias"], b0.astype(np.float32) - 0.05 * db, rtol=1e-6)
    module.step(x, y)  # failed in TVM's VM: its parameters had become float64
    tvf.Trainer(module, progress=False).fit(x, y, epochs=1, batch_size=8)
    module.export(tmp_path / "bundle")
    assert _dtypes(tvf.load(tmp_path / "bundle")) == _dtypes(module)


@pytest.mark.parametrize("optimizer", [tvf.optim.SGD(0.1, momentum=0.9), tvf.optim.Adam(0.1)])
def test_float64_inputs_and_mixed_layers_keep_each_dtype(optimizer):
    x = np.random.default_rng(1).standard_normal((4, 4))  # float64
    y = np.array([0, 1, 2, 0])
    for model in (nn.Sequential(nn.Linear(4, 3)),
                  nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3, dtype="float64"))):
        module = tvf.compile_training(model, nn.CrossEntropyLoss(), optimizer,
                                      inputs=x, labels=y)
        before = _dtypes(module)
        first = module.step(x, y)
        assert _dtypes(module) == before
        assert module.step(x, y) < first


def test_an_op_given_mixed_float_dtypes_names_them():
    # BatchNorm's float32 parameters met a float64 input's moments in one select: a raw TVM
    # "Check failed: ... mismatched types" from the compile
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with pytest.raises(TypeError, match=r"op 'bn_coefficients': its inputs mix float dtypes "
                                        r"\(float64, float32, float32\)"):
        tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                             inputs=tvf.TensorSpec((4, 4), "float64"), labels=(4,))


def test_float64_labels_through_relu_and_batchnorm_at_any_batch_size():
    # the MSE gradient for the float32 prediction came out float64 and failed in the ReLU's
    # gradient (TVM: "Reinterpret requires size match"): an input's gradient takes its dtype
    rng = np.random.default_rng(2)
    x = rng.standard_normal((24, 4)).astype("float32")
    y = x @ rng.standard_normal((4, 1))  # float64
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    module = tvf.compile_training(model, nn.MSELoss(), tvf.optim.Adam(0.01),
                                  inputs=tvf.TensorSpec(("batch", 4), "float32"),
                                  labels=tvf.TensorSpec(("batch", 1), "float64"),
                                  accumulate=True)
    before = _dtypes(module)
    first = module.step(x[:8], y[:8])
    module.step(x[:5], y[:5])
    module.accumulate(x[:4], y[:4])
    module.accumulate(x[4:8], y[4:8])
    module.apply()
    assert _dtypes(module) == before
    tvf.Trainer(module, progress=False).fit(x, y, epochs=3, batch_size=8)
    assert module.loss(x[:8], y[:8]) < first


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_vjp_casts_an_output_gradient_to_the_outputs_dtype(pool):
    # a float64 dy for a float32 pool's output had built a mixed-dtype gradient kernel: TVM's
    # raw InternalError/TypeError. PyTorch's autograd casts it to the output's dtype.
    op = getattr(tvf.ops, pool)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 5, 5)).astype("float32")
    dy = rng.standard_normal((1, 2, 3, 3))  # float64
    (dx,) = op.vjp(dy, x, kernel=3, stride=2, padding=1)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, op.vjp(dy.astype("float32"), x, kernel=3, stride=2,
                                             padding=1)[0])
    assert op.vjp(np.ones((1, 2, 3, 3), "int64"), x, kernel=3, stride=2,
                  padding=1)[0].dtype == np.float32


def test_vjp_refuses_an_output_gradient_that_is_no_number():
    with pytest.raises(TypeError, match=r"op 'relu': dy is <U1, the output it is the gradient "
                                        r"of is float32"):
        tvf.ops.relu.vjp(np.array(["a", "b"]), np.ones(2, "float32"))
