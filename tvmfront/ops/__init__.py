"""The built-in op library. Each op: TE forward and TE gradient side by side."""

from .activation import gelu, silu
from .attention import batch_matmul, softmax_last, transpose
from .cache import cache_mask, cache_pad, cache_write, positions
from .conv import conv2d
from .dropout import dropout
from .elementwise import (add, add_scalar, addcmul, clip, div, exp, log, mul, mul_scalar,
                          neg, one_minus_pow, pow_scalar, rdiv_scalar, relu, rpow_scalar,
                          rsub_scalar, sigmoid, sqrt, sub, tanh)
from .index import embedding, one_hot, take
from .join import concat, split, stack, strided_slice
from .linalg import bias_add, dense, matmul
from .loss import cross_entropy, mse_loss
from .mask import causal_fill, causal_mask, padding_mask, where
from .norm import batch_norm, group_norm, layer_norm
from .operators import install_operators
from .pool import avg_pool2d, max_pool2d
from .quant import fake_quant
from .random import random_bits, uniform
from .reduce import max, mean, sum  # noqa: A004  (tvf.ops.sum etc., as numpy's)
from .shape import flatten, reshape, slice_first
from .softmax_axis import log_softmax, masked_softmax, softmax

install_operators()

__all__ = [
    "add", "add_scalar", "avg_pool2d", "batch_matmul", "batch_norm", "bias_add", "cache_mask",
    "cache_pad", "cache_write", "causal_fill", "causal_mask",
    "clip", "concat", "conv2d", "cross_entropy", "dense", "div", "embedding", "exp", "fake_quant",
    "flatten",
    "gelu", "group_norm", "layer_norm", "log", "log_softmax", "masked_softmax", "matmul", "max",
    "max_pool2d",
    "mean", "mse_loss", "mul", "mul_scalar", "neg", "one_hot", "one_minus_pow", "padding_mask",
    "positions",
    "pow_scalar",
    "rdiv_scalar", "relu", "reshape", "rpow_scalar", "rsub_scalar", "sigmoid", "silu",
    "slice_first", "softmax", "softmax_last", "split", "sqrt", "stack", "strided_slice", "sub",
    "sum", "take", "tanh", "transpose", "where",
    "dropout", "random_bits", "uniform",
]
