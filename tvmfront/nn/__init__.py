"""Layers, losses and the Module tree."""

from . import init
from .layers import (AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Sigmoid,
                     Tanh)
from .loss import CrossEntropyLoss, MSELoss
from .module import Module, Parameter

__all__ = ["AvgPool2d", "Conv2d", "CrossEntropyLoss", "Flatten", "Linear", "MSELoss",
           "MaxPool2d", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid", "Tanh", "init"]
