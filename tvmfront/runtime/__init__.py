"""Load and run compiled modules; needs no frontend code."""

from .modules import InferenceModule, TrainingModule, load

__all__ = ["InferenceModule", "TrainingModule", "load"]
