"""TensorSpec: the shape and dtype of a compiled function's input."""

from dataclasses import dataclass

import numpy as np

from .errors import ShapeError


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one input, e.g. ``TensorSpec((64, 1, 16, 16), "float32")``."""

    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ShapeError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", str(np.dtype(self.dtype)))

    @classmethod
    def of(cls, value, default_dtype="float32"):
        """Coerce a TensorSpec, a shape tuple, a numpy array or a dict(shape=, dtype=)."""
        if isinstance(value, TensorSpec):
            return value
        if isinstance(value, np.ndarray):
            return cls(value.shape, str(value.dtype))
        if isinstance(value, dict):
            return cls(tuple(value["shape"]), value.get("dtype", default_dtype))
        if isinstance(value, (tuple, list)):
            return cls(tuple(value), default_dtype)
        raise ShapeError(f"cannot make a TensorSpec from {type(value).__name__}: {value!r}")

    def to_json(self):
        return {"shape": list(self.shape), "dtype": self.dtype}
