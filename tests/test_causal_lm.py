"""nn.CausalLM (GPT-style decoder): its layout, and that it trains at any batch size and
sequence length (symbolic ("batch", "seq") int64 inputs, cross entropy over [B, T, V])."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn

SIZES = dict(vocab_size=11, context=8, d_model=16, nhead=2, num_layers=2, dim_feedforward=32)


def _model(**kw):
    tvf.manual_seed(0)
    return nn.CausalLM(**{**SIZES, **kw})


def test_pytorch_module_names_and_tied_head():
    names = [n for n, _ in _model().named_parameters()]
    assert names[:2] == ["tok_emb.weight", "pos_emb.weight"]
    assert "blocks.1.self_attn.in_proj_weight" in names
    assert "blocks.0.linear2.bias" in names and names[-2:] == ["ln_f.weight", "ln_f.bias"]
    assert not any("head" in n for n in names)  # the head is tok_emb.weight
    assert _model().pos_emb.weight.data.shape == (8, 16)


@pytest.mark.parametrize("bad", [dict(context=0), dict(nhead=3), dict(num_layers=1.5)])
def test_bad_sizes_are_named(bad):
    with pytest.raises(ValueError, match="CausalLM|multiple of num_heads"):
        _model(**bad)


@pytest.mark.slow
def test_trains_at_any_batch_and_length():
    model = _model()
    module = tvf.compile_training(
        model, nn.CrossEntropyLoss(), tvf.optim.SGD(lr=0.2),
        inputs=tvf.Spec(("batch", "seq"), "int64"), labels=tvf.Spec(("batch", "seq"), "int64"))
    # a sequence that repeats with period 3 is learnable from the previous token alone
    seq = np.tile(np.array([1, 4, 7]), 4)
    x, y = np.stack([seq[:7], seq[1:8]]), np.stack([seq[1:8], seq[2:9]])
    losses = [float(module.step(x, y)) for _ in range(6)]
    assert losses[0] == pytest.approx(np.log(11), rel=0.05)  # small init: near uniform
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.6 * losses[0], losses
    # another batch size and length, same compiled step
    assert np.isfinite(float(module.step(x[:1, :5], y[:1, :5])))
    logits = module.predict(x[:, :4])
    assert logits.shape == (2, 4, 11)


def test_too_long_a_static_sequence_is_refused():
    with pytest.raises(ValueError, match="9 tokens exceed the context of 8"):
        tvf.compile_inference(_model(), tvf.Spec((1, 9), "int64"))
