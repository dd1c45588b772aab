"""PyTorch side of tests/test_parity_char_lm.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: ``case`` (JSON: the CausalLM
config, ``adamw`` (torch.optim.AdamW's keyword arguments), ``no_decay`` (parameter names with
weight decay 0), ``lrs`` (one learning rate per step), ``max_norm``), the initial state_dict
as ``s.<name>`` and the batches ``x<t>`` / ``y<t>`` (int64 [B, T]).

The GPT-style model of tvf.nn.CausalLM written in PyTorch (token + learned positional
embedding, pre-norm GELU TransformerEncoderLayers with the causal mask, final LayerNorm, head
tied to the token embedding), loaded strictly from that state_dict, trained one AdamW step per
batch with clip_grad_norm_ before it. Writes ``losses``, ``norms`` (the total norms
clip_grad_norm_ returned) and ``s.<name>`` (the final parameters).
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class CausalLM(nn.Module):
    def __init__(self, vocab_size, context, d_model, nhead, num_layers, dim_feedforward,
                 dropout=0.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, d_model)
        self.pos_emb = nn.Embedding(context, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers)])
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(t)))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.ln_f(x) @ self.tok_emb.weight.T


def main(src, dst):
    torch.manual_seed(0)
    data = np.load(src, allow_pickle=False)
    case = json.loads(str(data["case"]))
    model = CausalLM(**case["config"])
    model.load_state_dict({k[2:]: torch.from_numpy(data[k]) for k in data.files
                           if k.startswith("s.")})  # strict: every name, shape and dtype
    named = dict(model.named_parameters())
    no_decay = set(case["no_decay"])
    optim = torch.optim.AdamW(
        [{"params": [p for n, p in named.items() if n not in no_decay]},
         {"params": [p for n, p in named.items() if n in no_decay], "weight_decay": 0.0}],
        **case["adamw"])
    model.train()
    losses, norms = [], []
    for t, lr in enumerate(case["lrs"]):
        for group in optim.param_groups:
            group["lr"] = lr
        optim.zero_grad()
        logits = model(torch.from_numpy(data[f"x{t}"]))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               torch.from_numpy(data[f"y{t}"]).reshape(-1))
        loss.backward()
        losses.append(loss.item())
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), case["max_norm"])))
        optim.step()
    out = {"losses": np.array(losses), "norms": np.array(norms)}
    out.update({"s." + n: p.detach().numpy().copy() for n, p in named.items()})
    np.savez(dst, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
