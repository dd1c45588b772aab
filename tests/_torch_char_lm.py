"""PyTorch side of tests/test_parity_char_lm.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: ``case`` (JSON: the CausalLM
config, ``adamw`` (torch.optim.AdamW's keyword arguments), ``no_decay`` (parameter names with
weight decay 0), ``lrs`` (one learning rate per step), ``max_norm``), the initial state_dict
as ``s.<name>`` and the batches ``x<t>`` / ``y<t>`` (int64 [B, T]).

tests/_torch_causal_lm.py's PyTorch model of tvf.nn.CausalLM (GPT-style, head tied to the
token embedding), loaded strictly from that state_dict, trained one AdamW step per batch with
clip_grad_norm_ before it. Writes ``losses``, ``norms`` (the total norms
clip_grad_norm_ returned) and ``s.<name>`` (the final parameters).
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _torch_causal_lm import CausalLM  # the reference model of CAUSALLM.md


def main(src, dst):
    torch.manual_seed(0)
    data = np.load(src, allow_pickle=False)
    case = json.loads(str(data["case"]))
    c = case["config"]
    assert c["dropout"] == 0.0, "the reference model has no dropout"
    model = CausalLM(c["vocab_size"], c["context"], c["d_model"], c["nhead"], c["num_layers"],
                     c["dim_feedforward"])
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
