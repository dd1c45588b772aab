"""PyTorch side of tests/test_parity_resnet.py: runs in .venv-bench, in its own process.

The ResNet of examples/resnet_digits.py written with torch.nn (the same module names, so
tvmfront's state_dict loads strictly), trained by tests/_torch_parity.py's loop: its `run`
(AdamW steps in train mode with cross entropy; first-step logits and gradients, losses,
final state_dict, eval-mode outputs) with "resnet" cases built here. argv and the .npz
layout are _torch_parity.py's; a case also gives ``widths``, ``blocks``, ``in_channels``.
"""

import sys

import torch.nn.functional as F
from torch import nn

import _torch_parity


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    def __init__(self, widths, blocks, classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if i and not b else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))


def build(case, others=_torch_parity.build):
    if case["kind"] == "resnet":
        return ResNet(case["widths"], case["blocks"], in_channels=case["in_channels"])
    return others(case)


if __name__ == "__main__":
    _torch_parity.build = build  # run() looks its models up by this name
    _torch_parity.main(sys.argv[1], sys.argv[2])
