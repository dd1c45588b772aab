"""Optimizers: pure update rules, composed and compiled into the train step."""

from .optimizers import SGD, Adam, Optimizer
from .transform import (GradientTransformation, add_decayed_weights, chain, scale_by_adam,
                        scale_by_learning_rate, trace)

__all__ = ["Adam", "GradientTransformation", "Optimizer", "SGD", "add_decayed_weights", "chain",
           "scale_by_adam", "scale_by_learning_rate", "trace"]
