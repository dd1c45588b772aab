"""float16 and bfloat16 are computed in float32 and rounded once per op output (PyTorch's and
JAX's CPU rule), eager and compiled, forward and gradient.

Before, reductions accumulated in the half dtype: a sum of 4096 float16 ones was 2048
(bfloat16: 256), a float16 Linear(4096, 1) on ones gave 2048, a softmax over 4096 float16
zeros summed to 2, and a float16 LayerNorm's or BatchNorm's variance overflowed for |x| of a
few hundred (every output 0). bfloat16 pow_scalar failed inside TVM.
"""

import ml_dtypes
import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront._tvm import te

nn = tvf.nn
HALF = [pytest.param(np.float16, id="float16"), pytest.param(ml_dtypes.bfloat16, id="bfloat16")]


def _f32(a):
    return np.asarray(a).astype(np.float32)


@pytest.mark.parametrize("dtype", HALF)
def test_reductions_and_products_accumulate_in_float32(dtype):
    ones = np.ones(4096, dtype)
    assert ops.sum(ones).dtype == dtype and float(ops.sum(ones)) == 4096
    assert float(ops.mean(ones)) == 1
    np.testing.assert_array_equal(_f32(ops.matmul(np.ones((2, 4096), dtype),
                                                  np.ones((4096, 3), dtype))), 4096)
    np.testing.assert_array_equal(_f32(ops.dense(np.ones((2, 4096), dtype),
                                                 np.ones((3, 4096), dtype))), 4096)
    # 512 channels x 3 x 3 = 4608 products per output
    np.testing.assert_array_equal(_f32(ops.conv2d(np.ones((1, 512, 3, 3), dtype),
                                                  np.ones((2, 512, 3, 3), dtype))), 4608)
    p = _f32(ops.softmax(np.zeros((2, 4096), dtype)))
    np.testing.assert_allclose(p.sum(axis=1), 1, rtol=1e-2)  # summed to 2 (float16) before
    assert ops.softmax(np.zeros((2, 4096), dtype)).dtype == dtype


@pytest.mark.parametrize("dtype", HALF)
def test_norms_of_large_values_do_not_overflow(dtype):
    x = np.array([[300., -300., 250., -250.]], dtype)
    want = np.array([[1.0868, -1.0868, 0.9056, -0.9056]])  # float32 arithmetic (PyTorch's)
    one, zero = np.ones(4, dtype), np.zeros(4, dtype)
    tol = dict(rtol=1e-2 if dtype is np.float16 else 2e-2)
    np.testing.assert_allclose(_f32(ops.layer_norm(x, one, zero)), want, **tol)
    np.testing.assert_allclose(_f32(ops.group_norm(x.reshape(1, 4, 1, 1), one, zero,
                                                   groups=1)).ravel(), want.ravel(), **tol)
    xb = x.reshape(4, 1, 1, 1)
    np.testing.assert_allclose(_f32(ops.batch_norm(xb, one[:1], zero[:1])).ravel(),
                               want.ravel(), **tol)


@pytest.mark.parametrize("dtype", HALF)
def test_gradients_accumulate_in_float32(dtype):
    # dense's dw sums over the 4096 rows of the batch
    dx, dw = ops.dense.vjp(np.ones((4096, 3), dtype), np.ones((4096, 2), dtype),
                           np.ones((3, 2), dtype))
    assert dw.dtype == dtype and dx.dtype == dtype
    np.testing.assert_array_equal(_f32(dw), 4096)
    np.testing.assert_array_equal(_f32(dx), 3)


@tvf.op
def matvec(x, w):
    """x @ w, no explicit gradient: its derived dw sums over x's rows."""
    k = te.reduce_axis((0, x.shape[1]), "k")
    return te.compute((x.shape[0],), lambda i: te.sum(x[i, k] * w[k], axis=k), name="mv")


def test_derived_gradients_of_half_inputs_accumulate_in_float32():
    x, w = np.ones((4096, 2), np.float16), np.ones(2, np.float16)
    dx, dw = matvec.vjp(np.ones(4096, np.float16), x, w)
    assert dw.dtype == np.float16 and dx.dtype == np.float16
    np.testing.assert_array_equal(_f32(dw), 4096)
    np.testing.assert_array_equal(_f32(dx), 1)


@tvf.op
def doubled_in_float32(x):
    return te.compute(x.shape, lambda *i: x(*i).astype("float32") * 2, name="d32")


def test_an_output_keeps_the_dtype_its_forward_gives_it():
    out = doubled_in_float32(np.array([1.5, 3.0], np.float16))
    assert out.dtype == np.float32  # not rounded to the input's float16
    np.testing.assert_array_equal(out, [3.0, 6.0])


def test_bfloat16_ops_tvm_cannot_build_in_bfloat16_run_in_float32():
    x = np.array([[0.5, 1.5, 2.0]], ml_dtypes.bfloat16)
    out = ops.pow_scalar(x, exponent=2.0)  # failed inside TVM: "power only applies to float"
    assert out.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(_f32(out), [[0.25, 2.25, 4.0]])


def test_compiled_float16_linear_and_training_step_accumulate_in_float32():
    model = nn.Linear(4096, 1, bias=False, dtype="float16")
    model.load_state_dict({"weight": np.ones((1, 4096), np.float16)})
    x = np.ones((2, 4096), np.float16)
    infer = tvf.compile_inference(model, inputs=tvf.TensorSpec((2, 4096), "float16"))
    np.testing.assert_array_equal(_f32(infer(x)), 4096)  # 2048 before
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=0.0),
                                inputs=tvf.TensorSpec((2, 4096), "float16"),
                                labels=tvf.TensorSpec((2, 1), "float16"))
    assert step.step(x, np.full((2, 1), 4096, np.float16)) == 0  # 2048 ** 2 before


def test_a_float16_model_trains_like_its_float32_copy():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 64)) * 200).astype(np.float32)  # |x| of hundreds
    y = rng.standard_normal((16, 4)).astype(np.float32)

    def model(dtype):
        tvf.manual_seed(0)
        return nn.Sequential(nn.LayerNorm(64, dtype=dtype), nn.Linear(64, 32, dtype=dtype),
                             nn.ReLU(), nn.Linear(32, 4, dtype=dtype))

    losses = {}
    for dtype in ("float32", "float16"):
        step = tvf.compile_training(model(dtype), nn.MSELoss(), tvf.optim.SGD(lr=0.05),
                                    inputs=x.astype(dtype), labels=y.astype(dtype))
        losses[dtype] = [float(step.step(x.astype(dtype), y.astype(dtype))) for _ in range(5)]
    assert all(np.isfinite(losses["float16"]))  # the LayerNorm's variance overflowed before
    np.testing.assert_allclose(losses["float16"], losses["float32"], rtol=2e-2)


def test_a_float16_models_lr_and_step_are_float32_scalars():
    # gradient 1000 at lr 1e-7: float16 scalars had rounded the lr to 1.19e-7 (a subnormal),
    # the weight moving 19% too far; PyTorch computes a float16 update in float32
    model = nn.Linear(1, 1, bias=False, dtype="float16")
    model.load_state_dict({"weight": np.zeros((1, 1), np.float16)})
    spec = tvf.TensorSpec((1, 1), "float16")
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=1e-7), inputs=spec,
                                labels=spec)
    assert step.manifest["scalar_dtype"] == "float32"
    step.step(np.ones((1, 1), np.float16), np.full((1, 1), -500, np.float16))
    assert abs(float(step.state_dict()["weight"][0, 0]) + 1e-4) < 1e-7


def test_module_to_casts_float_state_in_place_as_pytorch():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(64, 3))
    model.eval()
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    want = tvf.compile_inference(model, inputs=x)(x)
    state = model.state_dict()
    assert model.half() is model
    dtypes = {k: str(v.dtype) for k, v in model.state_dict().items()}
    assert dtypes.pop("1.num_batches_tracked") == "int64"  # integer buffers keep theirs
    assert set(dtypes.values()) == {"float16"}
    got = tvf.compile_inference(model, inputs=x.astype(np.float16))(x.astype(np.float16))
    assert got.dtype == np.float16
    np.testing.assert_allclose(_f32(got), want, rtol=1e-2, atol=1e-2)
    model.float()
    for k, v in model.state_dict().items():  # float32 again, the values rounded once
        assert v.dtype == state[k].dtype
        np.testing.assert_array_equal(v, state[k].astype(np.float16).astype(state[k].dtype)
                                      if v.dtype.kind == "f" else state[k])
    assert model.double().state_dict()["4.weight"].dtype == np.float64
    with pytest.raises(TypeError, match="Sequential.to: dtype must be one of float16"):
        model.to("int32")


def test_module_to_keeps_a_tied_parameter_one():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    model = nn.Sequential(a, b).to("float16")
    assert a.weight is b.weight and a.weight.dtype == "float16"


# ---- found by a float16/bfloat16 sweep against PyTorch ---------------------------------------
def _large_gradient_model():
    tvf.manual_seed(0)
    model = nn.Linear(4, 2, dtype="float16")
    x, y = np.full((8, 4), 10.0, np.float16), np.full((8, 2), 100.0, np.float16)
    return model, x, y  # gradients of about 1100: their squares pass float16's 65504


@pytest.mark.parametrize("optimizer, moved", [
    (lambda: tvf.optim.Adam(lr=0.01), 0.03),  # PyTorch: +0.0300 after 3 steps
    (lambda: tvf.optim.RMSprop(lr=0.01), 0.2256),  # PyTorch: +0.2256 (its square_avg 33792)
])
def test_second_moments_of_large_float16_gradients_stay_finite(optimizer, moved):
    # nu + (1 - b2) * g * g op by op made g * g inf: nu inf, every later update 0
    model, x, y = _large_gradient_model()
    w0 = model.state_dict()["weight"].astype(np.float64)
    step = tvf.compile_training(model, nn.MSELoss(), optimizer(), inputs=x, labels=y)
    for _ in range(3):
        step.step(x, y)
    change = step.state_dict()["weight"].astype(np.float64) - w0
    np.testing.assert_allclose(change, moved, rtol=5e-3)


def test_clipping_a_float16_gradient_norm_past_256_still_steps():
    # its sum of squares in float16 was inf: the clip coefficient 0, no step at all
    model, x, y = _large_gradient_model()
    w0 = model.state_dict()
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=0.1, max_norm=1.0),
                                inputs=x, labels=y)
    step.step(x, y)
    moved = [step.state_dict()[k].astype(np.float64) - w0[k] for k in w0]
    norm = np.sqrt(sum(float((m ** 2).sum()) for m in moved)) / 0.1
    assert norm == pytest.approx(1.0, rel=1e-2)  # PyTorch's clip_grad_norm_: 0.998


def test_float16_with_bfloat16_promotes_to_float32_as_pytorch():
    a = np.array([1.0, 2.0, 3.0], np.float16)
    b = np.array([1e5, 3e38, 1e-3], ml_dtypes.bfloat16)
    out = ops.add(a, b)  # float16 before: [inf, inf, 3.002]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a.astype(np.float32) + b.astype(np.float32), rtol=1e-6)


@tvf.op
def to_bfloat16(x):
    return te.compute(x.shape, lambda *i: x(*i).astype("bfloat16"), name="to_bf16")


@tvf.op
def to_float32(x):
    return te.compute(x.shape, lambda *i: x(*i).astype("float32"), name="to_f32")


class _Bfloat16Inside(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return to_float32(ops.tanh(to_bfloat16(self.lin(x))))


def test_gradients_flow_through_a_bfloat16_activation_in_a_compiled_step():
    # numpy calls bfloat16 kind 'V': its input was taken for one without a gradient, and
    # every parameter before it got 0
    tvf.manual_seed(0)
    model = _Bfloat16Inside()
    x, y = np.ones((2, 4), np.float32), np.zeros((2, 3), np.float32)
    w, b = model.lin.weight.data.astype(np.float64), model.lin.bias.data.astype(np.float64)
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=0.1), inputs=x, labels=y)
    _, grads = step.loss_and_grads(x, y)
    t = np.tanh(x @ w.T + b)
    want = (2 * t / t.size * (1 - t ** 2)).sum(0)  # float64, no bfloat16 rounding
    np.testing.assert_allclose(grads["lin.bias"], want, rtol=1e-2)


def test_modules_take_bfloat16_inputs():
    # "Unsupported dtype in DLTensor" at every call (numpy cannot view bfloat16 tensors)
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(ml_dtypes.bfloat16)
    want = np.maximum(x.astype(np.float32) @ model[0].weight.data.T + model[0].bias.data, 0)
    np.testing.assert_allclose(tvf.compile_inference(model, inputs=x)(x), want, rtol=1e-5)
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=x,
                                labels=np.zeros((2, 3), np.float32))
    losses = [float(step.step(x, np.zeros((2, 3), np.float32))) for _ in range(3)]
    assert losses[0] == pytest.approx(float((want ** 2).mean()), rel=1e-5)
    assert losses[2] < losses[0]


def test_gradcheck_and_evaluate_of_half_dtypes():
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(ml_dtypes.bfloat16)
    assert tvf.gradcheck(ops.tanh, [x])  # "has no floating-point input" before
    tvf.manual_seed(0)
    model = nn.Linear(4, 1, dtype="float16")
    x16, y16 = np.ones((8, 4), np.float16), np.zeros((8, 1), np.float16)
    y16[0] = 300.0
    module = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=0.0), inputs=x16,
                                  labels=y16)
    pred = module.predict(x16).astype(np.float64)
    # its squares in float16 numpy were inf; the compiled loss is finite
    assert tvf.Trainer(module, progress=False).evaluate(x16, y16)["loss"] == \
        pytest.approx(float(np.mean((pred - y16.astype(np.float64)) ** 2)), rel=1e-9)


def test_float16_embedding_gradient_compiles_with_its_rule_and_matches_float32():
    # the scatter's float32 result cast to float16: an extern block declaring no output had
    # made the CPU rule fail (IndexError in its analysis), and the kernel fall back
    ids = np.array([[1, 3, 3, 0], [2, 2, 9, 1]], np.int64)
    labels = np.array([[0, 1, 2, 1], [2, 0, 1, 1]], np.int64)
    grads = {}
    for dtype in ("float32", "float16"):
        tvf.manual_seed(0)
        model = nn.Sequential(nn.Embedding(10, 8, dtype=dtype), nn.Linear(8, 3, dtype=dtype))
        step = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                    inputs=ids, labels=labels)
        assert step.build_info["fallback_kernels"] == {}, step.build_info["fallback_kernels"]
        grads[dtype] = step.loss_and_grads(ids, labels)[1]["0.weight"]
    np.testing.assert_allclose(_f32(grads["float16"]), grads["float32"], rtol=2e-2, atol=2e-3)
