"""Load and run compiled modules; needs no frontend code."""

from . import signing
from .modules import InferenceModule, TrainingModule, load

__all__ = ["InferenceModule", "TrainingModule", "load", "signing"]
