"""PyTorch models of bench/peers.py's transformer and resnet sections (runs in .venv-bench),
built from bench/_workloads.py's plain-data configuration so that they are the tvmfront
models' twins (same parameter count, checked by the worker)."""

import math

import torch
import torch.nn as tnn
import torch.nn.functional as F

from _workloads import resnet_blocks


# ---- transformer ------------------------------------------------------------------------------
class CausalLM(tnn.Module):
    """GPT-style decoder (CAUSALLM.md): token + learned position embedding, pre-norm GELU
    TransformerEncoderLayers with a causal mask, final LayerNorm, head tied to tok_emb."""

    def __init__(self, vocab_size, context, d_model, nhead, num_layers, dim_feedforward,
                 dropout=0.0):
        super().__init__()
        self.nhead = nhead
        self.tok_emb = tnn.Embedding(vocab_size, d_model)
        self.pos_emb = tnn.Embedding(context, d_model)
        self.drop = tnn.Dropout(dropout)
        self.blocks = tnn.ModuleList([
            tnn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                        activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.ln_f = tnn.LayerNorm(d_model)
        self.register_buffer("mask", tnn.Transformer.generate_square_subsequent_mask(context),
                             persistent=False)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb.weight[:t])
        mask = self.mask[:t, :t]
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.ln_f(x) @ self.tok_emb.weight.T

    def decode(self, token, pos, k_cache, v_cache):
        """One token [B, 1] at position `pos` (an int): per layer, write its key and value
        into row `pos` of the caches [L, B, H, context, head_dim] (in place) and attend rows
        0..pos; returns the logits [B, V]. The layer's own weights, written out as a person
        writes a KV-cache step (TransformerEncoderLayer has no cache)."""
        b = token.shape[0]
        x = self.tok_emb(token) + self.pos_emb.weight[pos]               # [B, 1, E]
        for layer, block in enumerate(self.blocks):
            attn = block.self_attn
            e, h = attn.embed_dim, self.nhead
            q, k, v = F.linear(block.norm1(x), attn.in_proj_weight,
                               attn.in_proj_bias).view(b, 3, h, e // h).unbind(1)  # [B, H, hd]
            k_cache[layer, :, :, pos] = k
            v_cache[layer, :, :, pos] = v
            keys, values = k_cache[layer, :, :, :pos + 1], v_cache[layer, :, :, :pos + 1]
            scores = torch.einsum("bhd,bhtd->bht", q, keys) / math.sqrt(e // h)
            y = torch.einsum("bht,bhtd->bhd", scores.softmax(-1), values).reshape(b, 1, e)
            x = x + attn.out_proj(y)
            x = x + block.linear2(F.gelu(block.linear1(block.norm2(x))))
        return self.ln_f(x[:, 0]) @ self.tok_emb.weight.T


# ---- resnet -----------------------------------------------------------------------------------
class BasicBlock(tnn.Module):
    def __init__(self, c_in, c_out, stride, projection):
        super().__init__()
        self.conv1 = tnn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = tnn.BatchNorm2d(c_out)
        self.conv2 = tnn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = tnn.BatchNorm2d(c_out)
        self.shortcut = tnn.Sequential(tnn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                       tnn.BatchNorm2d(c_out)) if projection else tnn.Identity()

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class ResNet(tnn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.stem = tnn.Sequential(tnn.Conv2d(cfg["x_shape"][0], cfg["stem"], 3, padding=1,
                                              bias=False), tnn.BatchNorm2d(cfg["stem"]),
                                   tnn.ReLU())
        self.blocks = tnn.Sequential(*[BasicBlock(*b) for b in resnet_blocks(cfg)])
        self.fc = tnn.Linear(cfg["stages"][-1][0], cfg["classes"])

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def optimizer(o, params):
    """torch.optim's optimizer of a section's {"name", "lr", ...} (clipping is the step's)."""
    cls = getattr(torch.optim, o["name"])
    kw = {k: (tuple(o[k]) if k == "betas" else o[k])
          for k in ("betas", "eps", "weight_decay") if o.get(k) is not None}
    return cls(params, lr=o["lr"], **kw)
