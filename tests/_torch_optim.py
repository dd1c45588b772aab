"""PyTorch side of tests/test_optim_torch.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: ``x`` [steps, B, 5], ``y``
[steps, B], the initial parameters as ``p.<name>`` and ``cases`` (JSON: a list of
{name, optimizer, kwargs, no_decay: [names], max_norm: [one per step] or null}). For each
case: the same MLP from the same weights, one optimizer step per batch (clip_grad_norm_ before
it when max_norm is given); writes ``<case>.losses``, ``<case>.norms`` (the total norms
clip_grad_norm_ returned) and ``<case>.p.<name>`` (final parameters).
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def run(case, data):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(data["p." + name]))
    named = dict(model.named_parameters())
    no_decay = set(case["no_decay"])
    groups = [{"params": [p for n, p in named.items() if n not in no_decay]}]
    if no_decay:
        groups.append({"params": [named[n] for n in case["no_decay"]], "weight_decay": 0.0})
    optim = getattr(torch.optim, case["optimizer"])(groups, **case["kwargs"])
    losses, norms = [], []
    for step in range(len(data["x"])):
        x, y = torch.from_numpy(data["x"][step]), torch.from_numpy(data["y"][step])
        optim.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        if case["max_norm"]:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(),
                                                              case["max_norm"][step])))
        optim.step()
    out = {"losses": np.array(losses), "norms": np.array(norms)}
    out.update({"p." + n: p.detach().numpy().copy() for n, p in named.items()})
    return out


def main(src, dst):
    data = np.load(src, allow_pickle=False)
    out = {}
    for case in json.loads(str(data["cases"])):
        out.update({f"{case['name']}.{k}": v for k, v in run(case, data).items()})
    np.savez(dst, **out)


if __name__ == "__main__":
    main(*sys.argv[1:])
