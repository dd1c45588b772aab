"""Optimizers: pure update rules, composed and compiled into the train step; learning-rate
schedules (`schedules`) that the Trainer feeds as the step's runtime lr."""

from . import schedules
from .clip import clip_by_global_norm, global_norm
from .groups import ParamGroups
from .optimizers import SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from .transform import (GradientTransformation, add_decayed_weights, chain, scale_by_adam,
                        scale_by_learning_rate, scale_by_rms, scale_by_rss, trace)

__all__ = ["Adagrad", "Adam", "AdamW", "GradientTransformation", "Optimizer", "ParamGroups",
           "RMSprop", "SGD", "add_decayed_weights", "chain", "clip_by_global_norm",
           "global_norm", "scale_by_adam", "scale_by_learning_rate", "scale_by_rms",
           "scale_by_rss", "schedules", "trace"]
