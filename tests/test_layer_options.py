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
