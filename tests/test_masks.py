"""causal_mask and padding_mask: values, PyTorch's conventions, errors, and a padding mask
computed from a compiled model's token input with where()."""

import numpy as np
import pytest

import tvmfront as tvf

nn, ops = tvf.nn, tvf.ops


def test_causal_mask_additive_and_boolean():
    m = ops.causal_mask(4)
    assert m.shape == (4, 4) and m.dtype == np.float32
    # torch.nn.Transformer.generate_square_subsequent_mask(4): 0 on/below, -inf above
    assert np.array_equal(np.isneginf(m), np.triu(np.ones((4, 4), bool), 1))
    assert not m[np.tril_indices(4)].any()
    b = ops.causal_mask(4, additive=False)
    assert b.dtype == bool and np.array_equal(b, np.isneginf(m))  # True = masked out
    assert ops.causal_mask(1, dtype="float64").dtype == np.float64


def test_causal_mask_rows_softmax_to_the_past_only():
    scores = np.random.default_rng(0).standard_normal((2, 5, 5))
    p = ops.softmax(scores + ops.causal_mask(5, dtype="float64"), axis=-1)
    assert np.all(np.isfinite(p)) and np.allclose(p.sum(-1), 1)
    assert not p[:, np.triu(np.ones((5, 5), bool), 1)].any()


def test_causal_mask_bad_size():
    with pytest.raises(ValueError, match="causal_mask: size must be >= 1, got 0"):
        ops.causal_mask(0)


def test_padding_mask_from_tokens_and_lengths():
    tokens = np.array([[5, 2, 0, 0], [0, 3, 1, 0]], dtype=np.int32)
    np.testing.assert_array_equal(ops.padding_mask(tokens, pad_id=0), tokens == 0)
    lengths = np.array([2, 4, 0], dtype=np.int64)
    np.testing.assert_array_equal(ops.padding_mask(lengths=lengths, max_len=4),
                                  [[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("kwargs,match", [
    ({}, "give tokens= .* or lengths="),
    ({"tokens": np.ones((2, 2), np.int64)}, "pad_id is required"),
    ({"lengths": np.ones(2, np.int64)}, "max_len is required"),
    ({"tokens": np.ones((2, 2), np.int64), "lengths": np.ones(2, np.int64)}, "give tokens="),
])
def test_padding_mask_argument_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        ops.padding_mask(**kwargs)


def test_padding_mask_of_float_tokens_is_an_error():
    with pytest.raises(TypeError, match="padding_mask: expects integer tokens"):
        ops.padding_mask(np.ones((2, 2)), pad_id=0)


class MaskedMean(nn.Module):
    """Mean of token embeddings over the non-padded positions, mask made from the input."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(9, 3)

    def forward(self, tokens):                               # [B, T] int64
        keep = ops.where(ops.padding_mask(tokens, pad_id=0), np.float32(0), np.float32(1))
        h = self.emb(tokens) * keep.reshape(*keep.shape, 1)  # [B, T, 3]
        return ops.sum(h, axis=1) / ops.sum(keep, axis=1, keepdims=True)


def test_padding_mask_in_a_compiled_model():
    tvf.manual_seed(0)
    model = MaskedMean()
    tokens = np.array([[4, 1, 0, 0], [2, 0, 0, 0], [3, 8, 7, 6]], dtype=np.int64)
    infer = tvf.compile_inference(model, inputs=tokens)
    w = model.emb.weight.data
    expected = np.stack([w[t[t != 0]].mean(0) for t in tokens])
    np.testing.assert_allclose(infer(tokens), expected, rtol=1e-5, atol=1e-6)


def test_a_query_with_every_key_masked_attends_to_nothing():
    """As PyTorch's scaled_dot_product_attention (nn.MultiheadAttention with need_weights=False,
    TransformerEncoderLayer): zero weights, so the output is the out-projection's bias, and the
    sample's gradients stay finite. NaN had spread through the whole padded sample."""
    row = np.array([[0.5, -1.0, 2.0], [-np.inf, -np.inf, -np.inf]])
    got = tvf.ops.masked_softmax(row)
    np.testing.assert_allclose(got[0], np.exp(row[0]) / np.exp(row[0]).sum(), rtol=1e-12)
    np.testing.assert_array_equal(got[1], np.zeros(3))
    assert np.isnan(tvf.ops.softmax(row)[1]).all()  # softmax itself stays torch.softmax's
    tvf.manual_seed(0)
    mha = tvf.nn.MultiheadAttention(4, 2, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    pad = np.array([[False, False, True], [True, True, True]])  # sample 1: all padding
    out, _ = mha(x, x, x, key_padding_mask=pad)
    np.testing.assert_allclose(out[1], np.broadcast_to(mha.out_proj.bias.data, (3, 4)))
    assert np.isfinite(out[0]).all()

    class Model(tvf.nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x, pad):
            return self.mha(x, x, x, key_padding_mask=pad)[0]

    step = tvf.compile_training(Model(), tvf.nn.MSELoss(), tvf.optim.SGD(0.1),
                                inputs=(tvf.TensorSpec((2, 3, 4), "float64"),
                                        tvf.TensorSpec((2, 3), "bool")),
                                labels=tvf.TensorSpec((2, 3, 4), "float64"))
    loss, grads = step.loss_and_grads((x, pad), np.zeros((2, 3, 4)))
    assert np.isfinite(loss) and all(np.isfinite(g).all() for g in grads.values())
