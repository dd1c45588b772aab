"""nn.MultiheadAttention with PyTorch's parameter layout, so a torch state_dict loads as is.

Every head is computed at once: the in-projection is one GEMM ([B*T, E] x [E, 3E] for
self-attention), heads become a [B, H, T, hd] view, and scores and context are two batched
matmuls over (B, H); no per-head Python loop, no per-head kernel.
"""

import math

import numpy as np

from .. import ops
from .._checks import is_float_dtype
from ..ops._dims import dims, is_static, same, same_shape, show
from ..tensor import Tensor
from . import init
from .dropout import Dropout
from .layers import Linear
from .module import Module, Parameter


def dropout_module(p, owner):
    """nn.Dropout(p) for one of `owner`'s dropout sites (PyTorch's: attention weights; in
    the encoder layer also after attention, in and after the feed-forward block)."""
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {p}")
    return Dropout(p)


def _additive(mask, dtype, what):
    """A mask as an additive float tensor: a bool mask (True = masked out, PyTorch's
    convention) becomes -inf / 0; a float mask is added as it is."""
    if isinstance(mask, Tensor):
        if mask.dtype == "bool":
            return ops.where(mask, np.array(-np.inf, dtype), np.array(0, dtype))
        if mask.dtype != dtype:
            raise TypeError(f"MultiheadAttention: {what} is {mask.dtype}; give bool or {dtype}")
        return mask
    mask = np.asarray(mask)
    if mask.dtype == bool:
        return np.where(mask, -np.inf, 0.0).astype(dtype)
    if not is_float_dtype(mask.dtype):
        raise TypeError(f"MultiheadAttention: {what} must be bool (True = masked out) or float "
                        f"(added to the scores), got {mask.dtype}")
    return mask.astype(dtype)


class MultiheadAttention(Module):
    """Multi-head scaled dot-product attention, torch.nn.MultiheadAttention's layout:
    `in_proj_weight` [3E, E] (q, k, v stacked), `in_proj_bias` [3E], `out_proj.weight`
    [E, E], `out_proj.bias` [E]; initialised as PyTorch does (Xavier-uniform in-projection,
    zero biases). Keys and values have embed_dim features (no kdim/vdim, add_bias_kv,
    add_zero_attn).

    forward(query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
    average_attn_weights=True, is_causal=False) returns `(output, weights)` as PyTorch does;
    output is [B, T, E] ([T, B, E] when batch_first=False). `weights` is None unless
    need_weights=True, then the softmax weights averaged over heads [B, T, S] (per head
    [B, H, T, S] when average_attn_weights=False). PyTorch's need_weights defaults to True;
    here it defaults to False (no extra kernel unless asked).
    Masks (numpy constants, or symbolic Tensors of a traced model): `attn_mask` [T, S] or
    [B*H, T, S], `key_padding_mask` [B, S]; bool means True = not attended, float is added to
    the scores; both given, they add. `is_causal=True` with no attn_mask masks every key after
    the query's position (top-left aligned when T != S, as torch's scaled_dot_product_attention);
    with an attn_mask it is PyTorch's hint that the mask is causal, and the mask is used as given.
    `dropout` (on the attention weights, training only) needs nn.Dropout.

    >>> mha = nn.MultiheadAttention(16, 4)
    >>> out, _ = mha(x, x, x, is_causal=True)     # x: [B, T, 16] -> out: [B, T, 16]
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
                 add_zero_attn=False, kdim=None, vdim=None, batch_first=True, *,
                 dtype="float32"):
        super().__init__()
        init.torch_only("MultiheadAttention", add_bias_kv=(add_bias_kv, [False]),
                        add_zero_attn=(add_zero_attn, [False]),
                        kdim=(kdim, [None, embed_dim]), vdim=(vdim, [None, embed_dim]))
        dtype = init.float_dtype(dtype, "MultiheadAttention")
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim {embed_dim} must be a positive "
                             f"multiple of num_heads {num_heads}")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.head_dim = self.embed_dim // self.num_heads
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        self.attn_dropout = dropout_module(dropout, "MultiheadAttention")
        e = self.embed_dim
        self.in_proj_weight = Parameter(init.xavier_uniform((3 * e, e), dtype=dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * e, dtype)) if bias else None
        self.out_proj = Linear(e, e, bias=bias, dtype=dtype)
        if bias:
            self.out_proj.bias = Parameter(np.zeros(e, dtype))

    def extra_repr(self):
        return (f"{self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"bias={self.in_proj_bias is not None}, batch_first={self.batch_first}")

    # ---- pieces ------------------------------------------------------------------------------
    def _project(self, x, part, parts=1):
        """x [B, L, E] @ rows [part*E, (part+parts)*E) of in_proj_weight^T (+ bias):
        [B*L, parts*E]. Self-attention takes all three parts in one GEMM."""
        b, n, e = x.shape
        lo, hi = part * e, (part + parts) * e
        w, bias = self.in_proj_weight, self.in_proj_bias
        if parts != 3:
            w = ops.strided_slice(w, slices=((lo, hi, 1),))
            bias = None if bias is None else ops.strided_slice(bias, slices=((lo, hi, 1),))
        # A symbolic B or L stays a dimension of its own ([B, L, k*E]): merged into B*L it
        # would make every later kernel take B and L as extra scalar arguments, which Relax's
        # Gradient (TVM 0.27) cannot differentiate through.
        y = ops.dense(x if not is_static((b, n)) else ops.reshape(x, shape=(b * n, e)), w)
        return y if bias is None else ops.bias_add(y, bias, axis=-1)

    def _heads(self, y, b, n, part):
        """Columns [part*E, (part+1)*E) of y [B*L, k*E] (or [B, L, k*E]) as heads:
        [B, H, L, hd]."""
        e, h, hd = self.embed_dim, self.num_heads, self.head_dim
        if not same(y.shape[-1], e):
            y = ops.strided_slice(y, slices=((None, None, None),) * (len(y.shape) - 1)
                                  + ((part * e, (part + 1) * e, 1),))
        return ops.transpose(ops.reshape(y, shape=(b, n, h, hd)), axes=(0, 2, 1, 3))

    def _check(self, query, key, value):
        e = self.embed_dim
        for name, x in (("query", query), ("key", key), ("value", value)):
            if len(x.shape) != 3 or not same(x.shape[2], e):
                layout = "[B, L, E]" if self.batch_first else "[L, B, E]"
                raise ValueError(f"MultiheadAttention: {name} must be {layout} with E = {e}, "
                                 f"got {show(x.shape)}")
        if not same_shape(key.shape, value.shape) or not same(key.shape[0], query.shape[0]):
            raise ValueError(f"MultiheadAttention: key {show(key.shape)} and value "
                             f"{show(value.shape)} must match, with query's batch "
                             f"{show(query.shape)}")

    def _mask(self, attn_mask, key_padding_mask, b, t, s, dtype):
        """The additive mask to add to scores [B, H, T, S] (None: none)."""
        h = self.num_heads
        total = None
        if attn_mask is not None:
            shape = dims(attn_mask.shape)
            if not (same_shape(shape, (t, s)) or same_shape(shape, (b * h, t, s))):
                raise ValueError(f"MultiheadAttention: attn_mask must be [T, S] = "
                                 f"{show((t, s))} or [B*H, T, S] = {show((b * h, t, s))}, got "
                                 f"{show(shape)}")
            total = _additive(attn_mask, dtype, "attn_mask")
            if len(shape) == 3:
                total = ops.reshape(total, shape=(b, h, t, s))
        if key_padding_mask is not None:
            shape = dims(key_padding_mask.shape)
            if not same_shape(shape, (b, s)):
                raise ValueError(f"MultiheadAttention: key_padding_mask must be [B, S] = "
                                 f"{show((b, s))}, got {show(shape)}")
            pad = ops.reshape(_additive(key_padding_mask, dtype, "key_padding_mask"),
                              shape=(b, 1, 1, s))
            total = pad if total is None else ops.add(total, pad)
        return total

    # ---- the math every entry point shares -----------------------------------------------
    def _self_qkv(self, x):
        """x [B, L, E] -> q, k, v [B, H, L, hd] each, from one GEMM."""
        b, n = dims(x.shape)[:2]
        qkv = self._project(x, 0, parts=3)                          # [B*L, 3E]
        return tuple(self._heads(qkv, b, n, i) for i in range(3))

    def _attend(self, q, k, v, fill=None, mask=None):
        """Softmax attention of q [B, H, T, hd] over k, v [B, H, S, hd]: (context [B, H, T,
        hd], weights [B, H, T, S]). `fill(scores)` masks in place (causal_fill, cache_mask),
        `mask` is added to the scores."""
        # scores: [B, H, T, hd] @ [B, H, S, hd]^T -> [B, H, T, S]; q scaled first, as
        # PyTorch; k read as it is (transpose_b), not copied transposed
        scores = ops.batch_matmul(ops.mul_scalar(q, value=1.0 / math.sqrt(self.head_dim)), k,
                                  transpose_b=True)
        if fill is not None:
            scores = fill(scores)
        if mask is not None:
            scores = ops.add(scores, mask)
        # dropped-out weights are the ones returned too, as in PyTorch. Masked: a query whose
        # every key is masked (a padded sample) gets zero weights, as PyTorch's
        # scaled_dot_product_attention gives them (NaN had spread through the whole sample)
        softmax = ops.softmax if fill is None and mask is None else ops.masked_softmax
        weights = self.attn_dropout(softmax(scores, axis=-1))
        return ops.batch_matmul(weights, v), weights                     # [B, H, T, hd]

    def _merge(self, ctx, b, t):
        """Heads back together and the out-projection: ctx [B, H, T, hd] -> [B, T, E]."""
        e = self.embed_dim
        if is_static((b, t)):
            ctx = ops.reshape(ops.transpose(ctx, axes=(0, 2, 1, 3)), shape=(b * t, e))
            return ops.reshape(self.out_proj(ctx), shape=(b, t, e))
        # [B, T, E] throughout (see _project)
        return self.out_proj(ops.reshape(ops.transpose(ctx, axes=(0, 2, 1, 3)), shape=(b, t, e)))

    # ---- forward -----------------------------------------------------------------------------
    def forward(self, query, key, value, key_padding_mask=None, need_weights=False,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        self_attention = query is key and key is value
        if not self.batch_first:  # [L, B, E] -> [B, L, E]
            query, key, value = (ops.transpose(x, axes=(1, 0, 2)) for x in (query, key, value))
        self._check(query, key, value)
        b, t, e = dims(query.shape)  # b, t (and s) may be symbolic: any batch, any length
        s = dims(key.shape)[1]
        mask = self._mask(attn_mask, key_padding_mask, b, t, s, str(query.dtype))
        if self_attention:
            q, k, v = self._self_qkv(query)                          # [B, H, T, hd] each
        else:
            q = self._heads(self._project(query, 0), b, t, 0)
            k = self._heads(self._project(key, 1), b, s, 1)
            v = self._heads(self._project(value, 2), b, s, 2)
        # -inf after the query's position, any T and S
        fill = ops.causal_fill if attn_mask is None and is_causal else None
        ctx, weights = self._attend(q, k, v, fill=fill, mask=mask)
        out = self._merge(ctx, b, t)
        if not self.batch_first:
            out = ops.transpose(out, axes=(1, 0, 2))
        if not need_weights:
            return out, None
        return out, (ops.mean(weights, axis=1) if average_attn_weights else weights)

    # ---- with a key/value cache (inference: generation) --------------------------------------
    def causal_kv(self, x):
        """Causal self-attention of x [B, T, E] (batch first), as forward(x, x, x,
        is_causal=True), also returning the keys and values it computed: (out [B, T, E],
        k [B, H, T, hd], v [B, H, T, hd]), a prompt's entries for a cache."""
        self._check_cached(x)
        b, t = dims(x.shape)[:2]
        q, k, v = self._self_qkv(x)
        ctx, _ = self._attend(q, k, v, fill=ops.causal_fill)
        return self._merge(ctx, b, t), k, v

    def cached(self, x, k_cache, v_cache, pos):
        """Causal self-attention of x [B, S, E], the tokens at positions pos..pos+S-1 (pos a
        0-d int64 Tensor), over a cache k_cache, v_cache [B, H, Tmax, hd] holding the keys and
        values of positions < pos: writes this step's rows at pos, attends over rows <= each
        query's position. Returns (out [B, S, E], k_cache', v_cache')."""
        self._check_cached(x)
        b, s = dims(x.shape)[:2]
        q, k, v = self._self_qkv(x)
        k_cache, v_cache = ops.cache_write(k_cache, k, pos), ops.cache_write(v_cache, v, pos)
        ctx, _ = self._attend(q, k_cache, v_cache, fill=lambda sc: ops.cache_mask(sc, pos))
        return self._merge(ctx, b, s), k_cache, v_cache

    def _check_cached(self, x):
        if not self.batch_first:
            raise ValueError("MultiheadAttention: the cached (generation) path takes batch_first "
                             "inputs [B, T, E]")
        self._check(x, x, x)
