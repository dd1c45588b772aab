"""Layers, losses and the Module tree."""

from . import init
from .layers import (GELU, AvgPool2d, BatchNorm2d, Conv2d, Embedding, Flatten, GroupNorm,
                     LayerNorm, Linear, MaxPool2d, ReLU, SelfAttention, Sequential, Sigmoid, SiLU,
                     Tanh)
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter

__all__ = ["GELU", "AvgPool2d", "BatchNorm2d", "Conv2d", "CrossEntropyLoss", "Embedding",
           "Flatten", "GroupNorm", "LayerNorm", "Linear", "MSELoss", "MaxPool2d", "Module",
           "Parameter", "ReLU", "SelfAttention", "Sequential", "SiLU", "Sigmoid", "Tanh", "init"]

from .attention import MultiheadAttention  # noqa: E402  (appended: attention and containers)
from .containers import ModuleDict, ModuleList  # noqa: E402
from .transformer import TransformerEncoderLayer  # noqa: E402

__all__ += ["ModuleDict", "ModuleList", "MultiheadAttention", "TransformerEncoderLayer"]
