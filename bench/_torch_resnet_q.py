"""examples/resnet_digits.py's ResNet in torch.nn, written for torch.ao eager-mode static
quantization (runs in .venv-bench, imported by bench/_torch_int8.py): the same module names
as tvmfront's (its state_dict loads strictly), ReLUs as modules and the residual sum through
FloatFunctional so that torch can quantize them, and `fuse()` giving the conv-BN(-ReLU)
groups torch.ao fuses (eval-mode BatchNorm folded into the convolution, as tvf.quantize
does). Widths (16, 32, 64), one block per stage."""

import torch.ao.nn.quantized as nnq
import torch.ao.quantization as tq
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.skip = nnq.FloatFunctional()
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = self.relu1(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.relu2(self.skip.add(h, x if self.shortcut is None else self.shortcut(x)))

    def fuse(self):
        tq.fuse_modules(self, [["conv1", "bn1", "relu1"], ["conv2", "bn2"]], inplace=True)
        if self.shortcut is not None:
            tq.fuse_modules(self.shortcut, [["0", "1"]], inplace=True)


class ResNet(nn.Module):
    def __init__(self, widths=(16, 32, 64), classes=10, in_channels=1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            layers.append(BasicBlock(cin, width, stride=2 if i else 1))
            cin = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(self.stages(self.stem(x)).mean(dim=(2, 3)))

    def fuse(self):
        """Fuse in place (eval mode): stem conv-BN-ReLU, each block's groups."""
        tq.fuse_modules(self.stem, [["0", "1", "2"]], inplace=True)
        for block in self.stages:
            block.fuse()
        return self
