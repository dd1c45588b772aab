"""Layers, losses and the Module tree."""

from . import init, pruning, quantization
from .attention import MultiheadAttention
from .causal_lm import CausalLM
from .containers import ModuleDict, ModuleList
from .dropout import Dropout
from .layers import (GELU, AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Embedding, Flatten,
                     GroupNorm, LayerNorm, Linear, MaxPool2d, ReLU, SelfAttention, Sequential,
                     Sigmoid, SiLU, Tanh)
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter
from .transformer import TransformerEncoderLayer

__all__ = ["GELU", "AvgPool2d", "BatchNorm1d", "BatchNorm2d", "CausalLM", "Conv2d",
           "CrossEntropyLoss",
           "Dropout", "Embedding", "Flatten", "GroupNorm", "LayerNorm", "Linear", "MSELoss",
           "MaxPool2d", "Module", "ModuleDict", "ModuleList", "MultiheadAttention", "Parameter",
           "ReLU", "SelfAttention", "Sequential", "SiLU", "Sigmoid", "Tanh",
           "TransformerEncoderLayer", "init", "pruning", "quantization"]
