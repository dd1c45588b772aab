"""nn.CausalLM: a GPT-style decoder-only language model, with PyTorch's module names, and
the prefill / decode pair that generation with a key/value cache compiles.

forward, prefill and decode run the same layers on the same parameters (the blocks'
causal_kv / cached paths share forward's attention math, tvmfront/nn/attention.py); only
where keys and values come from differs.
"""

import numpy as np

from .. import ops
from ..ops._dims import dims, show
from ..spec import TensorSpec
from . import init
from .containers import ModuleList
from .dropout import Dropout
from .layers import Embedding, LayerNorm
from .module import Module, Parameter
from .transformer import TransformerEncoderLayer

_START = np.zeros((), "int64")  # forward's and prefill's tokens start at position 0


class CausalLM(Module):
    """Token + learned positional embedding, dropout, `num_layers` pre-norm
    TransformerEncoderLayers (GELU, causal), a final LayerNorm and an output head tied to the
    token embedding (logits = ln_f(x) @ tok_emb.weight^T, no bias). Module names follow the
    PyTorch model of the same architecture (tok_emb, pos_emb, drop, blocks.<i>.*, ln_f), so
    its state_dict maps 1:1.

    Embeddings start from N(0, 0.02) (GPT-2's choice; torch.nn.Embedding's N(0, 1) makes the
    tied head's first logits ~sqrt(d_model) large), every other layer as PyTorch does.

    forward(idx [B, T] int64, T <= context) -> logits [B, T, V]; B and T may be symbolic.
    prefill(idx [B, T]) -> (logits of the last position [B, V], k_cache, v_cache), the caches
      [num_layers, B, nhead, context, head_dim] holding rows 0..T-1 (rows >= T zero).
    decode(token [B, 1], pos 0-d int64, k_cache, v_cache) -> (logits [B, V], k_cache',
      v_cache'): the token at position `pos` attends over cache rows <= pos; its row is
      written. pos is a runtime input: one compiled step serves every position. A compiled
      module refuses pos outside 0..context-1, ids outside the vocabulary and a symbolic T
      past the context (its trace bounds them: tvmfront/runtime/bounds.py).

    >>> model = nn.CausalLM(96, context=128, d_model=128, nhead=4, num_layers=4,
    ...                     dim_feedforward=512)
    >>> gen = tvf.compile_inference(model, tvf.Spec(("batch", "seq"), "int64"),
    ...     methods={"prefill": model.prefill_spec(), "decode": model.decode_spec()})
    >>> tvf.generate.sample(gen, [5, 17, 3], steps=20, top_k=10)   # 20 new token ids
    """

    def __init__(self, vocab_size, context, d_model, nhead, num_layers, dim_feedforward,
                 dropout=0.0, dtype="float32"):
        super().__init__()
        for name, v in (("vocab_size", vocab_size), ("context", context), ("d_model", d_model),
                        ("nhead", nhead), ("num_layers", num_layers),
                        ("dim_feedforward", dim_feedforward)):
            if int(v) != v or v < 1:
                raise ValueError(f"CausalLM: {name} must be a positive int, got {v!r}")
        self.vocab_size, self.context, self.d_model = int(vocab_size), int(context), int(d_model)
        self.nhead, self.num_layers = int(nhead), int(num_layers)
        self.dim_feedforward, self.dropout_p = int(dim_feedforward), float(dropout)
        self.tok_emb = Embedding(self.vocab_size, self.d_model, dtype=dtype)
        self.pos_emb = Embedding(self.context, self.d_model, dtype=dtype)
        self.tok_emb.weight = Parameter(init.normal((self.vocab_size, self.d_model), 0.02, dtype))
        self.pos_emb.weight = Parameter(init.normal((self.context, self.d_model), 0.02, dtype))
        self.drop = Dropout(dropout)
        self.blocks = ModuleList([
            TransformerEncoderLayer(self.d_model, self.nhead, self.dim_feedforward, dropout,
                                    activation="gelu", batch_first=True, norm_first=True,
                                    dtype=dtype)
            for _ in range(self.num_layers)])
        self.ln_f = LayerNorm(self.d_model, dtype=dtype)

    def extra_repr(self):
        return (f"vocab_size={self.vocab_size}, context={self.context}, d_model={self.d_model}, "
                f"nhead={self.nhead}, num_layers={self.num_layers}, dim_feedforward="
                f"{self.dim_feedforward}, dropout={self.dropout_p}")

    @property
    def head_dim(self):
        return self.d_model // self.nhead

    def cache_shape(self, batch):
        """The shape of k_cache and v_cache: [num_layers, batch, nhead, context, head_dim]."""
        return (self.num_layers, batch, self.nhead, self.context, self.head_dim)

    # Specs for compile_inference's methods=. The batch defaults to 1, a fixed size: a
    # symbolic batch ("batch") serves any number of prompts at once, but its kernels are
    # planned for a batch of 64 (tvmfront/schedule/), which costs a batch-1 decode step
    # several times its time on CPU.
    def prefill_spec(self, batch=1, seq="seq"):
        """methods= entry for prefill: {"idx": ([batch, seq], int64)} (any prompt length)."""
        return {"idx": TensorSpec((batch, seq), "int64")}

    def decode_spec(self, batch=1, dtype=None):
        """methods= entry for decode: token [batch, 1] int64, pos 0-d int64, k_cache and
        v_cache of cache_shape(batch) in the model's dtype."""
        dtype = dtype or str(self.tok_emb.weight.data.dtype)
        cache = TensorSpec(self.cache_shape(batch), dtype)
        return {"token": TensorSpec((batch, 1), "int64"), "pos": TensorSpec((), "int64"),
                "k_cache": cache, "v_cache": cache}

    # ---- pieces ------------------------------------------------------------------------------
    def _embed(self, idx, start):
        """idx [B, T] at positions start..start+T-1 -> [B, T, E]."""
        if len(idx.shape) != 2 or "int" not in str(idx.dtype):
            raise ValueError(f"CausalLM: token ids must be [B, T] integers, got "
                             f"{show(idx.shape)} {idx.dtype}")
        t = dims(idx.shape)[1]
        if isinstance(t, int) and t > self.context:
            raise ValueError(f"CausalLM: {t} tokens exceed the context of {self.context}")
        pos = self.pos_emb(ops.positions(idx, start))                     # [T, E]
        return self.drop(ops.add(self.tok_emb(idx), pos))                 # [B, T, E]

    def _head(self, x):
        """x [..., E] -> logits [..., V], the head tied to the token embedding."""
        return ops.dense(self.ln_f(x), self.tok_emb.weight)

    def _caches(self, ks, vs):
        return ops.stack(ks, axis=0), ops.stack(vs, axis=0)  # [L, B, H, Tmax, hd] each

    # ---- entry points ------------------------------------------------------------------------
    def forward(self, idx):
        x = self._embed(idx, _START)
        for block in self.blocks:
            x = block(x, is_causal=True)
        return self._head(x)

    def prefill(self, idx):
        x = self._embed(idx, _START)
        ks, vs = [], []
        for block in self.blocks:
            x, k, v = block.causal_kv(x)                                # k, v: [B, H, T, hd]
            ks.append(ops.cache_pad(k, length=self.context))
            vs.append(ops.cache_pad(v, length=self.context))
        return (self._head(x[:, -1]), *self._caches(ks, vs))            # [B, V], caches

    def decode(self, token, pos, k_cache, v_cache):
        x = self._embed(token, pos)
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.cached(x, k_cache[i], v_cache[i], pos)      # k, v: [B, H, Tmax, hd]
            ks.append(k)
            vs.append(v)
        return (self._head(x[:, -1]), *self._caches(ks, vs))
