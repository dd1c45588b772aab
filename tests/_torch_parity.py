"""PyTorch side of tests/test_parity_adamw.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: ``cases``, a JSON list; for case
i, the initial state_dict (parameters and buffers, PyTorch's names) as ``{i}.s.<name>``, the
batches ``{i}.x<t>`` / ``{i}.y<t>`` and, where eval outputs are wanted, ``{i}.xe``.

Per case: the model ``kind`` built in ``dtype``, loaded strictly from that state_dict, trained
``steps`` AdamW steps (``adamw``: torch.optim.AdamW's keyword arguments) in train mode with
cross entropy (``ignore_index``, ``label_smoothing``; over [B, T, V] as
cross_entropy(logits.reshape(-1, V), labels.reshape(-1))). Writes ``{i}.out`` (the first
step's train-mode forward output), ``{i}.losses``, ``{i}.g.<name>`` (the first step's
gradients), ``{i}.s.<name>`` (the final state_dict) and ``{i}.eval`` (eval-mode output on xe).

Kinds:
- "resblock": tests/_torch_batchnorm_ce.py's conv-bn-relu-conv-bn + skip block and head
  (``c`` channels, 4x4 images).
- "encoder": TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0, activation,
  batch_first=True, norm_first) with the causal mask, then Linear(d_model, vocab) -> logits
  [B, T, vocab].
- "embed": Embedding(vocab, dim, padding_idx) on token ids [B, T], then Linear(dim, vocab).
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _torch_batchnorm_ce import Net


class Encoder(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(
            case["d_model"], case["nhead"], case["dim_feedforward"], dropout=0.0,
            activation=case["activation"], batch_first=True, norm_first=case["norm_first"])
        self.head = nn.Linear(case["d_model"], case["vocab"])

    def forward(self, x):
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], dtype=x.dtype)
        return self.head(self.layer(x, src_mask=mask, is_causal=True))


class Embed(nn.Module):
    def __init__(self, case):
        super().__init__()
        self.emb = nn.Embedding(case["vocab"], case["dim"], padding_idx=case["padding_idx"])
        self.head = nn.Linear(case["dim"], case["vocab"])

    def forward(self, ids):
        return self.head(self.emb(ids))


def build(case):
    if case["kind"] == "resblock":
        return Net(case["c"])
    return {"encoder": Encoder, "embed": Embed}[case["kind"]](case)


def run(i, case, data):
    model = build(case)
    if case["dtype"] == "float64":
        model.double()
    prefix = f"{i}.s."
    model.load_state_dict({k[len(prefix):]: torch.from_numpy(data[k]) for k in data.files
                           if k.startswith(prefix)})  # strict: every name, shape and dtype
    optim = torch.optim.AdamW(model.parameters(), **case["adamw"])
    out, losses = {}, []
    model.train()
    for t in range(case["steps"]):
        optim.zero_grad()
        logits = model(torch.from_numpy(data[f"{i}.x{t}"]))
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                               torch.from_numpy(data[f"{i}.y{t}"]).reshape(-1),
                               ignore_index=case["ignore_index"],
                               label_smoothing=case["label_smoothing"])
        loss.backward()
        losses.append(loss.item())
        if t == 0:
            out[f"{i}.out"] = logits.detach().numpy().copy()
            out.update({f"{i}.g.{n}": p.grad.numpy().copy() for n, p in model.named_parameters()})
        optim.step()
    out.update({f"{i}.s.{n}": v.numpy().copy() for n, v in model.state_dict().items()})
    out[f"{i}.losses"] = np.array(losses)
    if f"{i}.xe" in data:
        model.eval()
        with torch.no_grad():
            out[f"{i}.eval"] = model(torch.from_numpy(data[f"{i}.xe"])).numpy()
    return out


def main(src, dst):
    data = np.load(src, allow_pickle=False)
    out = {}
    for i, case in enumerate(json.loads(str(data["cases"]))):
        out.update(run(i, case, data))
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
