"""PyTorch side of tests/test_tied_weights.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: x, y, the initial parameters as
``p.<name>`` and ``opt`` (a JSON string: name, lr, momentum or betas, steps). Builds the same
tied model as the test (PyTorch weight tying: ``b.weight = a.weight``, ``a`` used twice), runs
``steps`` optimizer steps and writes the losses, the first step's gradients (``g.<name>``) and
the final parameters (``p.<name>``), one entry per parameter as named_parameters lists them.
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(4, 4)
        self.b = torch.nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.tanh(self.b(h))
        h = torch.tanh(self.a(h))
        return self.head(h)


def main(src, dst):
    data = np.load(src, allow_pickle=False)
    opt = json.loads(str(data["opt"]))
    torch.manual_seed(0)
    model = Tied()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(data["p." + name]))
    if opt["name"] == "sgd":
        optim = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"])
    else:
        optim = torch.optim.Adam(model.parameters(), lr=opt["lr"], betas=tuple(opt["betas"]))
    x, y = torch.from_numpy(data["x"]), torch.from_numpy(data["y"])
    out, losses = {}, []
    for step in range(opt["steps"]):
        optim.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            out.update({"g." + n: p.grad.numpy().copy() for n, p in model.named_parameters()})
        optim.step()
    out.update({"p." + n: p.detach().numpy() for n, p in model.named_parameters()})
    out["losses"] = np.array(losses)
    out["names"] = np.array([n for n, _ in model.named_parameters()])
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
