"""PyTorch side of tests/test_ops_torch.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Computes, in float64, the values the
test compares: gelu (tanh and exact), silu, log_softmax and softmax over axis 1, layer_norm
over the last two axes, index_select's gradient with repeated indices, and embedding's
output and weight gradient with padding_idx.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F


def main(src, dst):
    d = {k: torch.from_numpy(v) for k, v in np.load(src, allow_pickle=False).items()}
    out = {}
    x = d["x"]
    out["gelu_tanh"] = F.gelu(x, approximate="tanh")
    out["gelu_none"] = F.gelu(x, approximate="none")
    out["silu"] = F.silu(x)
    out["log_softmax"] = F.log_softmax(d["x3"], dim=1)
    out["softmax"] = F.softmax(d["x3"], dim=1)
    out["layer_norm"] = F.layer_norm(d["x3"], d["x3"].shape[1:], d["gamma"], d["beta"])

    table = d["table"].clone().requires_grad_(True)
    torch.index_select(table, 1, d["take_ids"]).backward(d["take_dy"])
    out["take_grad"] = table.grad

    weight = d["weight"].clone().requires_grad_(True)
    emb = F.embedding(d["emb_ids"], weight, padding_idx=int(d["padding_idx"]))
    emb.backward(d["emb_dy"])
    out["emb"], out["emb_grad"] = emb, weight.grad
    np.savez(dst, **{k: v.detach().numpy() for k, v in out.items()})


if __name__ == "__main__":
    main(*sys.argv[1:])
