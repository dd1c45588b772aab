"""PyTorch side of tests/test_causal_lm.py: the CAUSALLM.md reference model (tok_emb, pos_emb,
drop, blocks of nn.TransformerEncoderLayer(gelu, norm_first, batch_first) with a causal mask,
ln_f, head tied to tok_emb), loaded strictly from tvmfront's state_dict; saves its logits.

    python _torch_causal_lm.py in.npz V C E H L F out.npz
"""

import sys

import numpy as np
import torch
from torch import nn


class CausalLM(nn.Module):
    def __init__(self, vocab, context, d_model, nhead, layers, ff):
        super().__init__()
        self.tok_emb, self.pos_emb = nn.Embedding(vocab, d_model), nn.Embedding(context, d_model)
        self.drop = nn.Dropout(0.0)
        self.blocks = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, ff, 0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(t)))
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=True)
        return self.ln_f(x) @ self.tok_emb.weight.T


def main():
    src, sizes, dst = sys.argv[1], [int(v) for v in sys.argv[2:8]], sys.argv[8]
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    model = CausalLM(*sizes).eval()
    idx = torch.from_numpy(arrays.pop("idx"))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=True)
    with torch.no_grad():
        np.savez(dst, logits=model(idx).numpy())


if __name__ == "__main__":
    main()
