"""nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.ModuleList and nn.ModuleDict without
PyTorch: names and layout, masks, bad input, the dropout hook, the kernels attention
compiles to, and training through containers. PyTorch parity: test_attention_torch.py."""

import re

import numpy as np
import pytest

import tvmfront as tvf

nn, ops = tvf.nn, tvf.ops

# torch.nn.TransformerEncoderLayer(...).state_dict().keys(), torch 2.x
TORCH_LAYER_NAMES = [
    "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
    "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
    "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"]


class Encoder(nn.Module):
    """Two causal pre-norm layers in a ModuleList and a head: names as PyTorch's."""

    def __init__(self, e=8, heads=2, layers=2):
        super().__init__()
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(
            e, heads, dim_feedforward=16, dropout=0.0, norm_first=True) for _ in range(layers)])
        self.head = nn.Linear(e, 1)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x, is_causal=True)
        b, t, e = x.shape
        return ops.reshape(self.head(ops.reshape(x, shape=(b * t, e))), shape=(b, t))


def _lowered_calls(module):
    """Kernel names called by the compiled forward, in call order (predict_packed where the
    inference module packs its dense weights once: predict then calls it)."""
    names = {gv.name_hint for gv in module._lowered.get_global_vars()}
    forward = "predict_packed" if "predict_packed" in names else "predict"
    return re.findall(r"call_tir\((\w+),", module._lowered[forward].script())


# ---- names and layout ----------------------------------------------------------------------
def test_layer_and_module_list_use_pytorch_names():
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    assert list(layer.state_dict()) == TORCH_LAYER_NAMES
    shapes = {n: p.shape for n, p in layer.named_parameters()}
    assert shapes["self_attn.in_proj_weight"] == (24, 8)
    assert shapes["self_attn.in_proj_bias"] == (24,)
    assert shapes["self_attn.out_proj.weight"] == (8, 8)
    assert shapes["linear1.weight"] == (16, 8) and shapes["linear2.weight"] == (8, 16)
    names = list(Encoder().state_dict())
    assert names == ([f"layers.0.{n}" for n in TORCH_LAYER_NAMES]
                     + [f"layers.1.{n}" for n in TORCH_LAYER_NAMES] + ["head.weight", "head.bias"])


def test_multihead_attention_layout_and_init():
    mha = nn.MultiheadAttention(8, 4)
    state = mha.state_dict()
    assert list(state) == ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    assert not state["in_proj_bias"].any() and not state["out_proj.bias"].any()  # as PyTorch
    bound = np.sqrt(6.0 / (8 + 24))  # Xavier-uniform over [3E, E]
    assert np.abs(state["in_proj_weight"]).max() <= bound
    assert list(nn.MultiheadAttention(8, 4, bias=False).state_dict()) == [
        "in_proj_weight", "out_proj.weight"]


# ---- containers ----------------------------------------------------------------------------
def test_module_list_keeps_pytorch_numbering():
    a, b, c, d = (nn.Linear(2, 2) for _ in range(4))
    lst = nn.ModuleList([a, b])
    lst.append(c)
    assert len(lst) == 3 and lst[-1] is c and list(lst) == [a, b, c]
    lst.insert(1, d)  # names follow positions, as in PyTorch
    assert list(lst) == [a, d, b, c] and lst[1] is d
    assert [n for n, _ in lst.named_parameters()][:4] == ["0.weight", "0.bias", "1.weight",
                                                          "1.bias"]
    del lst[0]
    assert list(lst) == [d, b, c] and [n for n, _ in lst.named_children()] == ["0", "1", "2"]
    lst[0] = a  # a replaced entry keeps its place (and so the parameter order)
    assert [n for n, _ in lst.named_children()] == ["0", "1", "2"] and lst[0] is a
    assert isinstance(lst[1:], nn.ModuleList) and list(lst[1:]) == [b, c]
    with pytest.raises(IndexError, match="index 3 out of range for 3 modules"):
        lst[3]  # noqa: B018
    with pytest.raises(TypeError, match="entry 3 is a int, not an nn.Module"):
        lst.append(3)


def test_module_dict_names_order_and_bad_keys():
    heads = nn.ModuleDict({"cls": nn.Linear(4, 3), "reg": nn.Linear(4, 1)})
    assert list(heads.state_dict()) == ["cls.weight", "cls.bias", "reg.weight", "reg.bias"]
    new = nn.Linear(4, 3, bias=False)
    heads["cls"] = new  # replaced in place: the order stays
    assert heads.keys() == ["cls", "reg"] and heads["cls"] is new and "reg" in heads
    heads.update([("aux", nn.Linear(4, 2))])
    assert heads.pop("reg") is not None and list(heads) == ["cls", "aux"]
    assert list(heads.state_dict()) == ["cls.weight", "aux.weight", "aux.bias"]
    with pytest.raises(KeyError, match="no module 'reg'"):
        heads["reg"]  # noqa: B018
    with pytest.raises(KeyError, match="contain no '.'"):
        heads["a.b"] = nn.Linear(1, 1)
    with pytest.raises(KeyError, match="clashes with an attribute"):
        heads["forward"] = nn.Linear(1, 1)
    with pytest.raises(TypeError, match="keys must be strings"):
        heads[1] = nn.Linear(1, 1)
    with pytest.raises(TypeError, match="not an nn.Module"):
        heads["x"] = np.zeros(2)


# ---- bad input -----------------------------------------------------------------------------
def test_bad_configuration_and_input_are_clear_errors():
    with pytest.raises(ValueError, match="embed_dim 10 must be a positive multiple of "
                                         "num_heads 4"):
        nn.MultiheadAttention(10, 4)
    with pytest.raises(ValueError, match="activation must be 'relu', 'gelu' or a callable"):
        nn.TransformerEncoderLayer(8, 2, dropout=0.0, activation="swish")
    mha = nn.MultiheadAttention(8, 2)
    x = np.zeros((2, 5, 8), "float32")
    with pytest.raises(ValueError, match=r"query must be \[B, L, E\] with E = 8, got \[2, 5, 6\]"):
        mha(x[..., :6], x, x)
    with pytest.raises(ValueError, match=r"attn_mask must be \[T, S\] = \[5, 5\] or \[B\*H, T, "
                                         r"S\] = \[4, 5, 5\], got \[5, 4\]"):
        mha(x, x, x, attn_mask=np.zeros((5, 4), bool))
    with pytest.raises(ValueError, match=r"key_padding_mask must be \[B, S\] = \[2, 5\]"):
        mha(x, x, x, key_padding_mask=np.zeros((5,), bool))
    with pytest.raises(TypeError, match="attn_mask must be bool .* or float"):
        mha(x, x, x, attn_mask=np.zeros((5, 5), "int32"))
    layer = nn.TransformerEncoderLayer(8, 2, dropout=0.0)
    with pytest.raises(ValueError, match=r"src must be \[B, T, d_model\] with d_model = 8"):
        layer(np.zeros((2, 5), "float32"))


def test_every_dropout_site_draws_in_training_and_is_the_identity_in_inference():
    """PyTorch's sites (attention weights, after attention, in and after the feed-forward
    block) are nn.Dropout(p); in the train step they draw masks, in inference they are off."""
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        nn.MultiheadAttention(8, 2, dropout=1.0)
    tvf.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.25)
    sites = [layer.self_attn.attn_dropout, layer.dropout, layer.dropout1, layer.dropout2]
    assert all(isinstance(d, nn.Dropout) and d.p == 0.25 for d in sites)
    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype("float32")
    step = tvf.compile_training(layer, nn.MSELoss(), tvf.optim.SGD(0.1), inputs=x, labels=x)
    losses = [step.step(x, x, lr=0.0) for _ in range(3)]
    assert len(set(losses)) == 3  # new masks every step
    tvf.manual_seed(0)
    plain = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    plain.load_state_dict(layer.state_dict())
    np.testing.assert_allclose(tvf.compile_inference(layer, inputs=x)(x),
                               tvf.compile_inference(plain, inputs=x)(x), rtol=1e-6)


# ---- semantics and kernels -----------------------------------------------------------------
@pytest.mark.slow
def test_causal_layer_ignores_later_positions_and_batches_heads():
    tvf.manual_seed(0)

    class Causal(nn.Module):
        def __init__(self, heads):
            super().__init__()
            self.layer = nn.TransformerEncoderLayer(16, heads, dim_feedforward=32, dropout=0.0)

        def forward(self, x):
            return self.layer(x, is_causal=True)

    module = tvf.compile_inference(Causal(4), inputs=(2, 6, 16))
    x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype("float32")
    later = x.copy()
    later[:, 3:] += 1.0
    y, y_later = module(x), module(later)
    np.testing.assert_array_equal(y[:, :3], y_later[:, :3])  # no position sees the future
    assert np.abs(y[:, 3:] - y_later[:, 3:]).min() > 0
    # All heads at once: two batched matmuls (scores, context) for 4 heads as for 1, and at
    # most 18 kernels in all (17 today: 5 GEMMs, 2 layer norms, softmax, the rest fused
    # reshapes, slices, transposes and residual adds)
    for heads, calls in ((4, _lowered_calls(module)),
                         (1, _lowered_calls(tvf.compile_inference(Causal(1), inputs=(2, 6, 16))))):
        assert sum("batch_matmul" in c for c in calls) == 2, (heads, calls)
        assert len(calls) <= 18, (heads, calls)


@pytest.mark.slow
def test_eager_attention_matches_compiled():
    """On numpy arrays the layer runs op by op, eagerly (bound-checked kernels in the tests),
    and agrees with the compiled forward."""
    tvf.manual_seed(1)
    mha = nn.MultiheadAttention(8, 2)
    rng = np.random.default_rng(1)
    q, kv = rng.standard_normal((2, 3, 8)).astype("float32"), \
        rng.standard_normal((2, 4, 8)).astype("float32")
    pad = np.array([[False] * 4, [False, False, True, True]])
    eager, weights = mha(q, kv, kv, key_padding_mask=pad, need_weights=True)
    assert weights.shape == (2, 3, 4) and np.allclose(weights.sum(-1), 1, atol=1e-6)
    assert not weights[1, :, 2:].any()  # padded keys get no weight

    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = mha

        def forward(self, x):  # x: query (3 positions) and memory (4) side by side
            return self.mha(x[:, :3], x[:, 3:], x[:, 3:], key_padding_mask=pad)[0]

    compiled = tvf.compile_inference(Cross(), inputs=(2, 7, 8))(np.concatenate([q, kv], 1))
    np.testing.assert_allclose(eager, compiled, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_encoder_in_a_module_list_trains():
    tvf.manual_seed(2)
    model = Encoder()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 6, 8)).astype("float32")
    y = np.cumsum(x[..., 0], axis=1).astype("float32") / 3  # causal target: a running sum
    module = tvf.compile_training(model, nn.MSELoss(), tvf.optim.Adam(1e-2), inputs=x, labels=y)
    assert module.param_names == list(model.state_dict())
    losses = [module.step(x, y) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.slow
def test_key_padding_mask_from_the_token_input():
    """A mask computed in the traced model (ops.padding_mask of the token ids: a symbolic bool
    Tensor) masks as the same mask given as a numpy constant does."""
    tvf.manual_seed(3)
    embed = nn.Embedding(10, 8)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0)
    tokens = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 0]], dtype="int64")

    class FromTokens(nn.Module):
        def __init__(self, constant=None):
            super().__init__()
            self.embed, self.layer, self.constant = embed, layer, constant

        def forward(self, ids):
            pad = ops.padding_mask(ids, pad_id=0) if self.constant is None else self.constant
            return self.layer(self.embed(ids), src_key_padding_mask=pad)

    symbolic = tvf.compile_inference(FromTokens(), inputs=tokens)(tokens)
    constant = tvf.compile_inference(FromTokens(tokens == 0), inputs=tokens)(tokens)
    unmasked = tvf.compile_inference(FromTokens(np.zeros_like(tokens, bool)), inputs=tokens)(tokens)
    np.testing.assert_allclose(symbolic, constant, rtol=1e-6, atol=1e-6)
    assert np.abs(symbolic - unmasked).max() > 1e-3  # the mask did something
