"""PyTorch side of tests/test_attention_torch.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: `cases`, a JSON list; for case
i, `x{i}` (and `target{i}`, `mask{i}`, `pad{i}` where the case has them). Per case, torch
builds the layer from a fixed seed and writes its state_dict as `{i}.p.<name>`, the forward
output `{i}.out`, and, where a target is given, the MSE loss `{i}.loss` and every
parameter's gradient `{i}.g.<name>`; `{i}.weights` for need_weights. A case with
`dtype` "float64" runs in double precision.

Case kinds:
- "layer": TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout=0, activation,
  batch_first, norm_first) on x, causal (the square subsequent mask with is_causal=True) when
  `causal`, with src_key_padding_mask `pad{i}` when given. Training mode (dropout 0): the
  slow, reference path.
- "mha": MultiheadAttention(d_model, nhead, batch_first); self-attention on x, or with
  `split` S, cross-attention of x[:, :-S] (query) on x[:, -S:] (key = value) (batch-first
  layout; the sequence axis is 0 when batch_first is False); attn_mask `mask{i}`,
  key_padding_mask `pad{i}`, need_weights and average_attn_weights as given.
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def _layer(case):
    layer = torch.nn.TransformerEncoderLayer(
        case["d_model"], case["nhead"], case["dim_feedforward"], dropout=0.0,
        activation=case["activation"], batch_first=case["batch_first"],
        norm_first=case["norm_first"])

    def run(x, mask, pad):
        if case["causal"]:
            seq = x.shape[1] if case["batch_first"] else x.shape[0]
            mask = torch.nn.Transformer.generate_square_subsequent_mask(seq)
        return layer(x, src_mask=mask, src_key_padding_mask=pad,
                     is_causal=case["causal"]), None

    return layer, run


def _mha(case):
    mha = torch.nn.MultiheadAttention(case["d_model"], case["nhead"],
                                      batch_first=case["batch_first"])
    seq_axis = 1 if case["batch_first"] else 0

    def run(x, mask, pad):
        if case.get("split"):
            q, kv = torch.split(x, [x.shape[seq_axis] - case["split"], case["split"]], seq_axis)
        else:
            q = kv = x
        return mha(q, kv, kv, key_padding_mask=pad, attn_mask=mask,
                   need_weights=case.get("need_weights", False),
                   average_attn_weights=case.get("average_attn_weights", True))

    return mha, run


def main(src, dst):
    data = np.load(src, allow_pickle=False)
    out = {}
    for i, case in enumerate(json.loads(str(data["cases"]))):
        torch.manual_seed(100 + i)
        module, run = {"layer": _layer, "mha": _mha}[case["kind"]](case)
        module.train()
        if case.get("dtype") == "float64":
            module.double()
        x = torch.from_numpy(data[f"x{i}"])
        mask = torch.from_numpy(data[f"mask{i}"]) if f"mask{i}" in data else None
        pad = torch.from_numpy(data[f"pad{i}"]) if f"pad{i}" in data else None
        y, weights = run(x, mask, pad)
        out.update({f"{i}.p.{n}": v.detach().numpy().copy()
                    for n, v in module.state_dict().items()})
        out[f"{i}.out"] = y.detach().numpy()
        if weights is not None:
            out[f"{i}.weights"] = weights.detach().numpy()
        if f"target{i}" in data:
            loss = F.mse_loss(y, torch.from_numpy(data[f"target{i}"]))
            loss.backward()
            out[f"{i}.loss"] = np.array(loss.item())
            out.update({f"{i}.g.{n}": p.grad.numpy().copy()
                        for n, p in module.named_parameters()})
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
