"""The built-in op library. Each op: TE forward and TE gradient side by side."""

from .attention import batch_matmul, softmax_last, transpose
from .conv import conv2d
from .elementwise import (add, add_scalar, clip, div, exp, log, mul, mul_scalar, neg, pow_scalar,
                          rdiv_scalar, relu, rpow_scalar, rsub_scalar, sigmoid, sqrt, sub,
                          tanh)
from .linalg import bias_add, dense, matmul
from .loss import cross_entropy, mse_loss, softmax
from .norm import batch_norm, gelu, group_norm, layer_norm
from .operators import install_operators
from .pool import avg_pool2d, max_pool2d
from .shape import flatten, reshape, slice_first

install_operators()

__all__ = [
    "add", "add_scalar", "avg_pool2d", "batch_matmul", "batch_norm", "bias_add", "clip",
    "conv2d", "cross_entropy", "dense", "div", "exp", "flatten", "gelu", "group_norm",
    "layer_norm", "log", "matmul", "max_pool2d", "mse_loss", "mul", "mul_scalar", "neg",
    "pow_scalar", "rdiv_scalar", "relu", "reshape", "rpow_scalar", "rsub_scalar", "sigmoid",
    "slice_first", "softmax", "softmax_last", "sqrt", "sub", "tanh", "transpose",
]
