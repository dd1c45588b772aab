"""nn.TransformerEncoderLayer with PyTorch's submodule names (self_attn, linear1, linear2,
norm1, norm2), so a torch state_dict loads as is."""

from .. import ops
from ..ops._dims import is_static, same, show
from .attention import MultiheadAttention, dropout_module
from .layers import LayerNorm, Linear
from .module import Module

_ACTIVATIONS = {"relu": ops.relu, "gelu": ops.gelu}  # "gelu" is the exact (erf) form, as torch


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with a residual connection and a
    LayerNorm: after it (norm_first=False, the original post-norm) or before it
    (norm_first=True, pre-norm), as torch.nn.TransformerEncoderLayer.

    activation: "relu", "gelu" (exact), or a callable on a Tensor (e.g. nn.GELU("tanh")).
    dropout (after attention, inside and after the feed-forward block, on the attention
    weights) needs nn.Dropout for dropout > 0; PyTorch's default is 0.1, so pass dropout=0.0
    until then. Input [B, T, d_model] ([T, B, d_model] when batch_first=False).
    forward(src, src_mask=None, src_key_padding_mask=None, is_causal=False): the masks as in
    MultiheadAttention (numpy constants, or Tensors of a traced model); is_causal=True with no
    src_mask attends causally.

    >>> layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=128, dropout=0.0,
    ...                                    norm_first=True)
    >>> y = layer(x, is_causal=True)   # x: [B, T, 64] -> y: [B, T, 64]
    """

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu",
                 layer_norm_eps=1e-5, batch_first=True, norm_first=False, bias=True, *,
                 dtype="float32"):
        super().__init__()
        if isinstance(activation, str):
            if activation not in _ACTIVATIONS:
                raise ValueError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or "
                                 f"a callable, got {activation!r}")
            self.activation_name, self._activation = activation, _ACTIVATIONS[activation]
        elif callable(activation):
            self.activation_name, self._activation = type(activation).__name__, activation
        else:
            raise TypeError(f"TransformerEncoderLayer: activation must be 'relu', 'gelu' or a "
                            f"callable, got {type(activation).__name__}")
        owner = "TransformerEncoderLayer"
        self.d_model, self.nhead, self.dim_feedforward = d_model, nhead, dim_feedforward
        self.batch_first, self.norm_first = bool(batch_first), bool(norm_first)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=True, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, dtype=dtype)
        self.dropout = dropout_module(dropout, owner)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, dtype=dtype)
        # bias=False drops the norms' biases too, as PyTorch's layer does
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, dtype=dtype, bias=bias)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, dtype=dtype, bias=bias)
        self.dropout1 = dropout_module(dropout, owner)
        self.dropout2 = dropout_module(dropout, owner)

    def extra_repr(self):
        return (f"d_model={self.d_model}, nhead={self.nhead}, dim_feedforward="
                f"{self.dim_feedforward}, activation={self.activation_name}, "
                f"norm_first={self.norm_first}, batch_first={self.batch_first}")

    def _ff_block(self, x):
        # [B, T, E] -> [B*T, E] once, not inside each Linear: the activation then sits
        # between GEMMs with no reshape and fuses into linear1's
        b, t, e = x.shape
        if not is_static((b, t)):  # any batch or length: Linear on [B, T, E] (see _project)
            return self.dropout2(self.linear2(self.dropout(self._activation(self.linear1(x)))))
        y = self._activation(self.linear1(ops.reshape(x, shape=(b * t, e))))
        y = self.linear2(self.dropout(y))
        return self.dropout2(ops.reshape(y, shape=(b, t, e)))

    def _layer(self, x, attend):
        """The block around self-attention `attend(h) -> [B, T, E]`: residuals, norms,
        dropout and the feed-forward block, pre- or post-norm. forward and the cached
        (generation) paths differ only in `attend`."""
        if self.norm_first:  # x + sa(norm1(x)), then x + ff(norm2(x))
            x = ops.add(x, self.dropout1(attend(self.norm1(x))))
            return ops.add(x, self._ff_block(self.norm2(x)))
        # norm1(x + sa(x)), then norm2(x + ff(x))
        x = self.norm1(ops.add(x, self.dropout1(attend(x))))
        return self.norm2(ops.add(x, self._ff_block(x)))

    def _check_src(self, src, cached=False):
        if cached and not self.batch_first:
            raise ValueError("TransformerEncoderLayer: the cached (generation) paths take "
                             "batch_first inputs [B, T, d_model]")
        if len(src.shape) != 3 or not same(src.shape[2], self.d_model):
            layout = "[B, T, d_model]" if self.batch_first else "[T, B, d_model]"
            raise ValueError(f"TransformerEncoderLayer: src must be {layout} with d_model = "
                             f"{self.d_model}, got {show(src.shape)}")

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        self._check_src(src)
        x = src if self.batch_first else ops.transpose(src, axes=(1, 0, 2))

        def attend(h):
            return self.self_attn(h, h, h, key_padding_mask=src_key_padding_mask,
                                  attn_mask=src_mask, is_causal=is_causal)[0]

        x = self._layer(x, attend)
        return x if self.batch_first else ops.transpose(x, axes=(1, 0, 2))

    # ---- with a key/value cache (inference: generation) --------------------------------------
    def causal_kv(self, src):
        """forward(src, is_causal=True) for batch-first src [B, T, d_model], also returning
        the layer's keys and values [B, H, T, hd]: (out, k, v)."""
        self._check_src(src, cached=True)
        kv = []

        def attend(h):
            out, k, v = self.self_attn.causal_kv(h)
            kv.extend((k, v))
            return out

        return (self._layer(src, attend), *kv)

    def cached(self, x, k_cache, v_cache, pos):
        """The layer on x [B, S, d_model], tokens at positions pos..pos+S-1, attending over
        the cache k_cache, v_cache [B, H, Tmax, hd] (see MultiheadAttention.cached):
        (out, k_cache', v_cache')."""
        self._check_src(x, cached=True)
        kv = []

        def attend(h):
            out, k, v = self.self_attn.cached(h, k_cache, v_cache, pos)
            kv.extend((k, v))
            return out

        return (self._layer(x, attend), *kv)
