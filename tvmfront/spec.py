"""TensorSpec: the shape and dtype of a compiled function's input."""

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import ShapeError


def _dim(d):
    """One dimension as an int; anything but an integer (a bool, a float, an array) is None."""
    if isinstance(d, (bool, np.bool_)) or not isinstance(d, (numbers.Integral, np.integer)):
        return None
    return int(d)


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one input, e.g. ``TensorSpec((64, 1, 16, 16), "float32")``."""

    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        dims = tuple(_dim(d) for d in self.shape)
        if None in dims:
            raise ShapeError(f"shape {tuple(self.shape)!r}: every dimension must be an int")
        if any(d < 0 for d in dims):
            raise ShapeError(f"negative dimension in shape {dims}")
        try:
            dtype = str(np.dtype(self.dtype))
        except TypeError:
            raise ShapeError(f"unknown dtype {self.dtype!r}") from None
        object.__setattr__(self, "shape", dims)
        object.__setattr__(self, "dtype", dtype)

    @classmethod
    def of(cls, value, default_dtype="float32", what="spec"):
        """Coerce a TensorSpec, a shape tuple, an example array (numpy, or anything with
        `.shape` and `.dtype`) or a dict(shape=, dtype=). `what` names the argument in errors
        (e.g. "inputs")."""
        if isinstance(value, TensorSpec):
            return value
        try:
            if isinstance(value, dict):
                unknown = sorted(set(value) - {"shape", "dtype"})
                if unknown or "shape" not in value:
                    raise ShapeError(f"a spec dict holds 'shape' and optionally 'dtype', got "
                                     f"keys {sorted(value)}")
                return cls(tuple(value["shape"]), value.get("dtype", default_dtype))
            if isinstance(value, (tuple, list)):
                if any(hasattr(d, "shape") and hasattr(d, "dtype") and not isinstance(d, np.generic)
                       for d in value):  # a numpy scalar (np.int64(4)) is a dimension
                    raise ShapeError(
                        f"got a {type(value).__name__} holding an array; the compiled step "
                        f"takes one array here: pass the array itself or its shape")
                return cls(tuple(value), default_dtype)
            if hasattr(value, "shape") and hasattr(value, "dtype"):  # an example array
                return cls(tuple(value.shape), str(np.dtype(value.dtype)))
        except ShapeError as e:
            raise ShapeError(f"{what}: {e}") from None
        raise ShapeError(f"{what}: expected a shape tuple, a TensorSpec or an example array, "
                         f"got {type(value).__name__}: {value!r}")

    def to_json(self):
        return {"shape": list(self.shape), "dtype": self.dtype}
