"""PyTorch side of tests/test_torch_batchnorm_ce.py: runs in .venv-bench, in its own process.

argv: input .npz, case ("resblock" or "seq_ce"), output .npz (no pickle either way).
resblock: a conv-bn-relu-conv-bn + skip block and a linear head, the initial parameters as
``p.<name>``, three SGD (momentum 0.9) steps on batches ``x0..x2``/``y0..y2`` in train mode,
then eval on ``xe``. Writes the losses, the first step's gradients ``g.<name>``, the final
state_dict ``s.<name>`` (parameters and buffers) and the eval outputs ``eval``.
seq_ce: logits = x @ w over [B, T, V], CrossEntropyLoss(ignore_index, label_smoothing) on
the flattened logits; writes ``loss`` and ``g.w``.
"""

import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c, momentum=None)
        self.fc = nn.Linear(c * 16, 3)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.fc(torch.flatten(F.relu(h + x), 1))


def resblock(data):
    model = Net(int(data["c"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.from_numpy(data["p." + name]))
    optim = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    out, losses = {}, []
    model.train()
    for step in range(3):
        optim.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(data[f"x{step}"])),
                               torch.from_numpy(data[f"y{step}"]))
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            out.update({"g." + n: p.grad.numpy().copy() for n, p in model.named_parameters()})
        optim.step()
    out.update({"s." + n: v.numpy() for n, v in model.state_dict().items()})
    model.eval()
    with torch.no_grad():
        out["eval"] = model(torch.from_numpy(data["xe"])).numpy()
    out["losses"] = np.array(losses)
    return out


def seq_ce(data):
    w = torch.from_numpy(data["w"]).requires_grad_()
    logits = torch.from_numpy(data["x"]) @ w                       # [B, T, V]
    loss = F.cross_entropy(logits.reshape(-1, w.shape[1]), torch.from_numpy(data["y"]).reshape(-1),
                           ignore_index=int(data["ignore_index"]),
                           label_smoothing=float(data["label_smoothing"]))
    loss.backward()
    return {"loss": np.array(loss.item()), "g.w": w.grad.numpy()}


if __name__ == "__main__":
    src, case, dst = sys.argv[1:]
    result = {"resblock": resblock, "seq_ce": seq_ce}[case](np.load(src, allow_pickle=False))
    np.savez(dst, **result)
