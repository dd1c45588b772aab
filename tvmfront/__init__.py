"""tvmfront: write ops in TVM tensor expressions, train models built from them, ship one
compiled module."""

__version__ = "0.1.0"

from . import data, nn, ops, optim  # noqa: E402
from ._tvm import te  # noqa: E402
from .compile import compile_inference, compile_training  # noqa: E402
from .errors import (BundleError, GradientError, ShapeError, TargetError,  # noqa: E402
                     TvmfrontError)
from .gradcheck import gradcheck  # noqa: E402
from .nn.init import manual_seed  # noqa: E402
from .op import Op, op  # noqa: E402
from .runtime import InferenceModule, TrainingModule, load  # noqa: E402
from .spec import TensorSpec  # noqa: E402
from .target import targets  # noqa: E402
from .trainer import Trainer  # noqa: E402

__all__ = [
    "BundleError", "GradientError", "InferenceModule", "Op", "ShapeError", "TargetError",
    "TensorSpec", "Trainer", "TrainingModule", "TvmfrontError", "compile_inference", "compile_training", "data",
    "gradcheck", "load", "manual_seed", "nn", "op", "ops", "optim", "targets", "te",
]
