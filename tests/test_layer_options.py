"""Layer options with PyTorch's meaning: LayerNorm over several trailing dims, GELU's tanh form."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def test_layer_norm_over_the_last_two_dims():
    layer = nn.LayerNorm((4, 5), eps=1e-5)
    assert layer.weight.shape == (4, 5) and layer.bias.shape == (4, 5)
    rng = np.random.default_rng(0)
    w, b = (rng.standard_normal((4, 5)).astype("float32") for _ in range(2))
    layer.load_state_dict({"weight": w, "bias": b})
    x = rng.standard_normal((2, 3, 4, 5)).astype("float32")
    infer = tvf.compile_inference(layer, inputs=x)
    mu = x.mean(axis=(2, 3), keepdims=True)
    var = x.var(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(infer(x), (x - mu) / np.sqrt(var + 1e-5) * w + b,
                               rtol=1e-4, atol=1e-5)
    assert nn.LayerNorm(7).normalized_shape == (7,)


def test_gelu_layer_takes_the_tanh_form():
    x = np.linspace(-4, 4, 17).astype("float32").reshape(1, 17)
    tanh_form = tvf.compile_inference(nn.GELU(approximate="tanh"), inputs=x)(x)
    want = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(tanh_form, want, rtol=1e-5, atol=1e-6)
    exact = tvf.compile_inference(nn.GELU(), inputs=x)(x)
    assert not np.allclose(exact, tanh_form, rtol=0, atol=1e-6)  # the two forms differ
    with pytest.raises(ValueError, match="approximate"):
        nn.GELU(approximate="fast")


def test_bias_false_drops_the_norms_biases_as_pytorch():
    """TransformerEncoderLayer(bias=False) had kept trainable norm biases: a PyTorch
    state_dict did not load and the biases trained away from PyTorch's model."""
    layer = tvf.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, bias=False)
    assert [n for n, _ in layer.named_parameters()] == [  # PyTorch 2.13's names
        "self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight",
        "linear2.weight", "norm1.weight", "norm2.weight"]
    norm = tvf.nn.LayerNorm(4, bias=False, dtype="float64")
    norm.weight.data[:] = [1.0, 2.0, 3.0, 4.0]
    x = np.random.default_rng(0).standard_normal((3, 4))
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(norm(x), want * norm.weight.data, rtol=1e-10)


# ---- PyTorch's argument order (a layer-constructor sweep against torch) ----------------------
@pytest.mark.parametrize("make, error, match", [
    # Conv2d's sixth argument had been bias: PyTorch's dilation=2 built an undilated conv
    (lambda: nn.Conv2d(4, 3, 3, 1, 2, 2), ValueError, "Conv2d: dilation=2 is not supported"),
    (lambda: nn.Conv2d(4, 3, 3, groups=2), ValueError, "Conv2d: groups=2 is not supported"),
    # MultiheadAttention's fifth had been batch_first (PyTorch's add_bias_kv)
    (lambda: nn.MultiheadAttention(8, 2, 0.0, True, True), ValueError,
     "add_bias_kv=True is not supported"),
    (lambda: nn.MultiheadAttention(8, 2, kdim=4), ValueError, "kdim=4 is not supported"),
    (lambda: nn.Embedding(6, 3, None, 1.0), ValueError, "max_norm=1.0 is not supported"),
    (lambda: nn.CrossEntropyLoss(np.ones(3)), ValueError, "CrossEntropyLoss: weight="),
    (lambda: nn.MSELoss(reduction="sum"), ValueError, "reduction='sum' is not supported"),
    # device and dtype are keyword-only: a device where dtype was had been "dtype must be ..."
    (lambda: nn.Linear(5, 4, True, "cpu"), TypeError, "positional arguments"),
])
def test_pytorch_arguments_tvmfront_lacks_are_refused_by_name(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_pytorch_positional_calls_mean_what_they_mean_in_pytorch():
    assert nn.Conv2d(4, 3, 3, 1, 0, 1, 1, False).bias is None  # bias is the eighth
    assert nn.Conv2d(4, 3, 3, dilation=(1, 1), groups=1, padding_mode="zeros").bias is not None
    assert nn.MultiheadAttention(8, 2, 0.0, True, False, False, 8, 8).batch_first
    assert nn.CrossEntropyLoss(None, None, 3).ignore_index == 3
    assert not list(nn.LayerNorm(5, 1e-5, False).state_dict())  # elementwise_affine=False
    assert not list(nn.GroupNorm(2, 4, 1e-5, False).state_dict())  # affine=False
    x = np.array([[-1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(nn.ReLU(inplace=True)(x), [[0, 2]])
    assert nn.Dropout(0.2, True).p == 0.2


def test_norms_without_affine_parameters_normalise_and_train():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6, 3, 2)).astype(np.float32)
    groups = x.reshape(4, 2, -1)
    want = ((groups - groups.mean(-1, keepdims=True))
            / np.sqrt(groups.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(nn.GroupNorm(2, 6, affine=False)(x), want, rtol=1e-4, atol=1e-5)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(nn.LayerNorm(2, elementwise_affine=False)(x), want, rtol=1e-4,
                               atol=1e-5)
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8, elementwise_affine=False),
                          nn.Linear(8, 2))
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=(4, 8),
                                labels=(4, 2))
    assert sorted(step.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    data = rng.standard_normal((4, 8)).astype(np.float32), np.ones((4, 2), np.float32)
    losses = [float(step.step(*data)) for _ in range(5)]
    assert losses[-1] < losses[0]


def test_flatten_merges_start_dim_to_end_dim_as_pytorch():
    x = np.arange(120, dtype=np.float32).reshape(2, 3, 4, 5)
    for args, shape in [((), (2, 60)), ((0, 1), (6, 4, 5)), ((2,), (2, 3, 20)),
                        ((1, 2), (2, 12, 5)), ((0, -1), (120,))]:
        np.testing.assert_array_equal(nn.Flatten(*args)(x), x.reshape(shape))
    with pytest.raises(ValueError, match=r"Flatten\(1, -1\): dimension out of range"):
        nn.Flatten()(np.ones(5, np.float32))  # (5, 1) before; PyTorch raises too
