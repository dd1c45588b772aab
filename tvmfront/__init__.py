"""tvmfront: write ops in TVM tensor expressions, train models built from them, ship one
compiled module."""

import importlib as _importlib

from ._version import __version__
from . import data, distributed, extremum, generate, nn, ops, optim  # distributed: MPI in init() only
from ._tvm import te, tirx
from .ops import fastmath
from .compile import compile_inference, compile_training
from .errors import (BundleError, CheckpointError, GradientError, NonFiniteError,
                     NonFiniteLossError, NonFiniteOpError, OutOfBoundsError, ShapeError, TargetError,
                     TvmfrontError)
from .gradcheck import gradcheck
from .nn.init import manual_seed
from .op import Op, bound_checks, derived_gradients, op
from .opcheck import OpCheckError, OpCheckReport, opcheck
from .runtime import InferenceModule, TrainingModule, load
from .spec import TensorSpec

Spec = TensorSpec  # the short name: tvf.Spec(("batch", "seq"), "int64")
from .ptq import quantize  # a module named quantize would shadow the function
from .target import targets
from .trainer import Trainer

# Names whose modules subclass TVM classes when imported, so importing them loads TVM (2-5 s
# on a 2-core machine): they are imported on first use, and `import tvmfront` stays fast.
# (tvf.tune lives in tuning.run: a submodule named tvmfront.tune would, once imported,
# replace the function as the package's attribute.)
_LAZY = {"debug_nans": ".debug", "tune": ".tuning.run", "TuneReport": ".tuning.run"}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(_importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later reads skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BundleError", "CheckpointError", "GradientError", "NonFiniteError", "NonFiniteLossError",
    "NonFiniteOpError", "InferenceModule", "OutOfBoundsError", "Op", "OpCheckError", "OpCheckReport",
    "ShapeError", "TargetError",
    "Spec", "TensorSpec", "Trainer", "TrainingModule", "TvmfrontError", "compile_inference",
    "bound_checks", "compile_training", "data", "distributed", "debug_nans", "generate",
    "derived_gradients", "extremum", "fastmath", "gradcheck", "load", "opcheck", "manual_seed", "nn", "op", "ops", "optim",
    "quantize", "targets", "te", "tirx",
    "tune", "TuneReport",
]
