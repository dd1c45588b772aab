"""TensorSpec: the shape and dtype of a compiled function's input.

A dimension is an int, or a name (a str such as "batch") for a symbolic one: the compiled
function then takes any size there, and every dimension of the same name (across inputs,
labels and extras) must be the same size at each call.
"""

import re
from dataclasses import dataclass

import numpy as np

from ._checks import is_whole
from .errors import ShapeError


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _dim(d):
    """One dimension as an int, or a symbolic one's name (a str, kept); anything else (a
    bool, a float, an array) is None."""
    if isinstance(d, str):
        if not _NAME.match(d):
            raise ShapeError(f"symbolic dimension {d!r}: a name must be an identifier "
                             f"(letters, digits, _), e.g. 'batch'")
        return d
    if not is_whole(d):
        return None
    return int(d)


def dim_text(expr):
    """'batch' for a TIR variable, the expression's text otherwise ('batch * seq',
    'batch * 3', not TVMScript's 'batch * T.int64(3)')."""
    name = getattr(expr, "name", None)
    if isinstance(name, str):
        return name
    return re.sub(r"T\.int(?:32|64)\((-?\d+)\)", r"\1", " ".join(str(expr).split()))


def is_symbolic(d):
    """Whether dimension `d` of a spec's shape is symbolic (a name)."""
    return isinstance(d, str)


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one input, e.g. ``TensorSpec((64, 1, 16, 16), "float32")``, or
    ``TensorSpec(("batch", "seq"), "int64")`` for any batch size and sequence length."""

    shape: tuple
    dtype: str = "float32"

    def __post_init__(self):
        if isinstance(self.shape, (str, bytes)) or not hasattr(self.shape, "__iter__"):
            raise ShapeError(f"TensorSpec: shape must be a tuple of sizes, got {self.shape!r}")
        if self.dtype is None:  # np.dtype(None) is float64; the default is float32
            raise ShapeError("TensorSpec: dtype None; name one (the default is float32)")
        dims = tuple(_dim(d) for d in self.shape)
        if None in dims:
            raise ShapeError(f"shape {tuple(self.shape)!r}: every dimension must be an int or a "
                             f"name (a str, for any size)")
        if any(not is_symbolic(d) and d < 0 for d in dims):
            raise ShapeError(f"negative dimension in shape {dims}")
        if any(not is_symbolic(d) and d >= 2 ** 63 for d in dims):  # a TVM FFI BigInt error
            raise ShapeError(f"dimension too large for int64 in shape {dims}")
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

    @classmethod
    def traced(cls, shape, dtype):
        """The spec of a traced tensor's shape: a symbolic dimension is recorded as its TIR
        expression's text ("batch", or e.g. "batch * seq" after a reshape)."""
        spec = object.__new__(cls)
        dims = tuple(int(d) if isinstance(d, (int, np.integer)) else dim_text(d) for d in shape)
        object.__setattr__(spec, "shape", dims)
        object.__setattr__(spec, "dtype", str(np.dtype(dtype)))
        return spec

    @property
    def symbolic(self):
        """Whether any dimension is symbolic."""
        return any(is_symbolic(d) for d in self.shape)

    def to_json(self):
        return {"shape": list(self.shape), "dtype": self.dtype}
