"""BatchNorm folded into the convolution before it (eval-mode statistics), for int8 inference.

In eval mode BatchNorm2d is an affine map per channel, y = (x - mean) * s + beta with
s = gamma / sqrt(var + eps), so conv -> BN is one convolution with
w' = w * s[o] (per output channel) and b' = (b - mean) * s + beta. Folded before quantization,
the pair becomes one int8 convolution (its per-channel weight scales absorb s) instead of an
int8 convolution that dequantizes into a float BatchNorm.

Which pairs may be folded (the BN reads the convolution's output and nothing else does) is
decided by tracing the model (``ptq``); this module does the arithmetic on named pairs.
"""

import numpy as np

from .layers import BatchNorm2d, Conv2d
from .module import Module, Parameter


class Identity(Module):
    """What a folded BatchNorm becomes: its input, unchanged."""

    def forward(self, x):
        return x


def foldable(bn):
    """Whether `bn` normalises with running statistics in eval mode (a fixed affine map)."""
    return isinstance(bn, BatchNorm2d) and bn.track_running_stats


def fold_batchnorm(conv, bn):
    """Fold `bn` (eval mode) into `conv` in place: its weight scaled per output channel, its
    bias (created if it had none) shifted. A pruned convolution scales ``weight_orig``, so its
    mask still holds."""
    if not isinstance(conv, Conv2d) or not foldable(bn):
        raise TypeError(f"fold_batchnorm: need a Conv2d and a BatchNorm2d with running "
                        f"statistics, got {type(conv).__name__} and {type(bn).__name__}")
    out = conv.out_channels
    if bn.num_features != out:
        raise ValueError(f"fold_batchnorm: BatchNorm2d({bn.num_features}) after a convolution "
                         f"with {out} output channels")

    def value(p, default):
        return default if p is None else np.asarray(getattr(p, "data", p), np.float64)

    gamma, beta = value(bn.weight, np.ones(out)), value(bn.bias, np.zeros(out))
    mean, var = value(bn.running_mean, None), value(bn.running_var, None)
    scale = gamma / np.sqrt(var + bn.eps)
    name = "weight_orig" if "weight_orig" in conv._parameters else "weight"
    w = conv._parameters[name]
    dtype = w.data.dtype
    b = value(conv.bias, np.zeros(out))
    w_new = np.asarray(w.data, np.float64) * scale.reshape(-1, *([1] * (w.data.ndim - 1)))
    setattr(conv, name, Parameter(w_new.astype(dtype)))
    conv.bias = Parameter(((b - mean) * scale + beta).astype(dtype))
