"""Whole models compiled once over a symbolic batch (and sequence length), stepped at several
sizes, equal to steps compiled for each size: a LeNet-style CNN with BatchNorm (batch
statistics and running statistics over the symbolic batch), and an Embedding + causal
TransformerEncoderLayer (dropout > 0) + LM head over token ids Spec(("batch", "seq"), "int64").

One symbolic module takes every step in turn; before each, a module compiled for that size
gets the symbolic one's parameters, buffers and step counter, takes the same step, and both
must give the same loss, parameters and buffers (rtol 1e-5). Plain SGD keeps no optimizer
state, so the state_dict is the whole state; with dropout, the same (seed, step) must draw the
same masks at every size, or the losses would differ.
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops

LR = 0.05


def _same_state(got, want, what):
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                   err_msg=f"{what}: {name}")


def _step_both(symbolic, compile_fixed, batches):
    """Step `symbolic` through `batches`; each step is replayed on a fixed-size module."""
    losses = []
    for x, y in batches:
        fixed = compile_fixed(x, y)
        fixed.load_state_dict(symbolic.state_dict())
        fixed.step_count = symbolic.step_count  # the dropout counter: the same masks
        want = fixed.step(x, y, lr=LR)
        got = symbolic.step(x, y, lr=LR)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=f"loss at {x.shape}")
        _same_state(symbolic.state_dict(), fixed.state_dict(), f"after a step at {x.shape}")
        np.testing.assert_allclose(symbolic.predict(x), fixed.predict(x), rtol=1e-5, atol=1e-6,
                                   err_msg=f"predict at {x.shape}")
        losses.append(got)
    return losses


# ---- LeNet-style: conv, BatchNorm, pooling, flatten, linear ---------------------------------
def _lenet():
    tvf.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 3 * 3, 5))


def _images(n, seed):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 8, 8)).astype("float32"), rng.integers(0, 5, n)


@pytest.mark.slow
def test_lenet_with_batchnorm_any_batch_size():
    model = _lenet()
    symbolic = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(LR),
                                    inputs=("batch", 1, 8, 8), labels=("batch",))
    assert symbolic.manifest["outputs"]["shape"] == ["batch", 5]

    def fixed(x, y):
        return tvf.compile_training(_lenet(), nn.CrossEntropyLoss(), tvf.optim.SGD(LR),
                                    inputs=x.shape, labels=y.shape)

    losses = _step_both(symbolic, fixed, [_images(n, seed) for seed, n in enumerate((3, 7))])
    assert all(np.isfinite(losses))
    # the running statistics moved: they are updated over each step's own batch
    assert not np.allclose(symbolic.state_dict()["1.running_mean"], 0)
    assert int(symbolic.state_dict()["1.num_batches_tracked"]) == 2


# ---- Embedding + causal TransformerEncoderLayer (dropout) + LM head ---------------------------
VOCAB, EMBED = 11, 16


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, EMBED)
        self.layer = nn.TransformerEncoderLayer(EMBED, 2, dim_feedforward=32, dropout=0.1,
                                                norm_first=True)
        self.head = nn.Linear(EMBED, VOCAB)

    def forward(self, tokens):  # [B, T] int64 -> [B, T, V]
        return self.head(self.layer(self.embed(tokens), is_causal=True))


def _lm():
    tvf.manual_seed(5)
    return TinyLM()


def _tokens(b, t, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, VOCAB, (b, t)), rng.integers(0, VOCAB, (b, t))


@pytest.mark.slow
def test_transformer_lm_any_batch_and_sequence_length():
    symbolic = tvf.compile_training(_lm(), nn.CrossEntropyLoss(), tvf.optim.SGD(LR),
                                    inputs=tvf.Spec(("batch", "seq"), "int64"),
                                    labels=("batch", "seq"))
    assert symbolic.manifest["outputs"]["shape"] == ["batch", "seq", VOCAB]

    def fixed(x, y):
        return tvf.compile_training(_lm(), nn.CrossEntropyLoss(), tvf.optim.SGD(LR),
                                    inputs=tvf.Spec(x.shape, "int64"), labels=y.shape)

    sizes = [(2, 5), (3, 7)]  # each fixed-size compile costs ~1 min on 2 shared cores
    losses = _step_both(symbolic, fixed, [_tokens(b, t, seed) for seed, (b, t) in enumerate(sizes)])
    assert all(np.isfinite(losses))


def test_causal_attention_over_a_symbolic_length_matches_the_constant_mask():
    """is_causal on a symbolic T masks with causal_fill; on a fixed T the values are the same
    as adding causal_mask(T) (0 kept, -inf masked)."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5, 5)).astype("float32")
    filled = ops.causal_fill(scores)
    np.testing.assert_array_equal(filled, scores + ops.causal_mask(5))


@pytest.mark.slow
def test_attention_layers_infer_any_batch_and_length():
    """compile_inference over ("batch", "seq", E): SelfAttention and MultiheadAttention
    (causal) give what the layers give eagerly at each size."""
    tvf.manual_seed(1)

    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.sa = nn.SelfAttention(8, heads=2)
            self.mha = nn.MultiheadAttention(8, 2)

        def forward(self, x):
            return self.mha(self.sa(x), x, x, is_causal=True)[0]

    model = Both()
    module = tvf.compile_inference(model, ("batch", "seq", 8))
    rng = np.random.default_rng(0)
    for b, t in [(1, 3), (3, 6)]:
        x = rng.normal(size=(b, t, 8)).astype("float32")
        np.testing.assert_allclose(module(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_batchnorm_over_a_symbolic_batch_of_one():
    """A fixed batch of one refuses to train BatchNorm when traced (PyTorch's error); a
    symbolic batch cannot be checked then: one sample trains, its output is beta and the
    running variance takes a variance of 0 (never NaN)."""
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(LR), inputs=(1, 3),
                             labels=(1, 4))
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(LR), inputs=("n", 3),
                                labels=("n", 4))
    loss = step.step(np.ones((1, 3), "float32"), np.zeros((1, 4), "float32"))
    assert loss == 0.0  # the normalised output is beta = 0
    state = step.state_dict()
    np.testing.assert_allclose(state["1.running_var"], np.full(4, 0.9, "float32"))
    assert np.isfinite(step.step(np.ones((2, 3), "float32"), np.zeros((2, 4), "float32")))


@pytest.mark.slow
def test_padding_mask_from_token_ids_of_any_length():
    """key_padding_mask = padding_mask(tokens, pad_id) on symbolic [batch, seq] token ids:
    the compiled module equals the eager model, padded keys ignored, at each size."""
    tvf.manual_seed(2)

    class Padded(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, 8)
            self.mha = nn.MultiheadAttention(8, 2)

        def forward(self, tokens):
            x = self.embed(tokens)
            return self.mha(x, x, x, key_padding_mask=ops.padding_mask(tokens, pad_id=0))[0]

    model = Padded()
    module = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"))
    rng = np.random.default_rng(0)
    for b, t in [(2, 4), (3, 7)]:
        tokens = rng.integers(0, VOCAB, (b, t))
        tokens[:, 0] = 1  # every row attends somewhere
        tokens[:, -1] = 0  # and has a padded key
        out = module(tokens)
        np.testing.assert_allclose(out, model(tokens), rtol=1e-5, atol=1e-6)
        # the padded last key is ignored: the other queries see what they see without it
        np.testing.assert_allclose(module(tokens[:, :-1]), out[:, :-1], rtol=1e-5, atol=1e-6)
