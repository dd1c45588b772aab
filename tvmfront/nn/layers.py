"""Layers built from tvmfront ops."""

import math

from .. import ops
from . import init
from .module import Module, Parameter


class Linear(Module):
    """y = x @ W^T + b, W: [out, in]; Kaiming-uniform init as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, dtype="float32"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), dtype=dtype))
        self.bias = Parameter(init.bias_uniform((out_features,), in_features, dtype)) if bias else None

    def forward(self, x):
        y = ops.dense(x, self.weight)  # [B, in] -> [B, out]
        return ops.bias_add(y, self.bias, axis=1) if self.bias is not None else y

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """NCHW convolution, weight [out, in, k, k]; Kaiming-uniform init as in PyTorch."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 dtype="float32"):
        super().__init__()
        k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = stride, padding
        self.weight = Parameter(init.kaiming_uniform((out_channels, in_channels, *k), dtype=dtype))
        fan_in = in_channels * math.prod(k)
        self.bias = Parameter(init.bias_uniform((out_channels,), fan_in, dtype)) if bias else None

    def forward(self, x):
        y = ops.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        return ops.bias_add(y, self.bias, axis=1) if self.bias is not None else y

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _Pool(Module):
    op = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return type(self).op(x, kernel=self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool):
    op = ops.max_pool2d


class AvgPool2d(_Pool):
    op = ops.avg_pool2d


class Flatten(Module):
    """[N, ...] -> [N, prod(...)]"""

    def forward(self, x):
        return ops.flatten(x)


class _Activation(Module):
    op = None

    def forward(self, x):
        return type(self).op(x)


class ReLU(_Activation):
    op = ops.relu


class Sigmoid(_Activation):
    op = ops.sigmoid


class Tanh(_Activation):
    op = ops.tanh


class Sequential(Module):
    """Runs its children in order; they are named '0', '1', ..."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x
