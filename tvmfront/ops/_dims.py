"""Shapes with symbolic dimensions, for TE ops: a dimension is an int, or a TIR expression
where the compiled function takes any size (the batch, a sequence length).

Ops compare and multiply dimensions through these helpers instead of int(d), so one op
serves static and symbolic shapes alike.
"""

import math

from .._tvm import arith, tirx
from ..tensor import dim


def dims(shape):
    """The shape as a tuple of dim()s."""
    return tuple(dim(d) for d in shape)


def is_static(shape):
    return all(isinstance(d, int) for d in dims(shape))


def same(a, b):
    """Whether two dimensions are provably equal (a symbolic one equals itself only)."""
    a, b = dim(a), dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return bool(arith.Analyzer().can_prove_equal(a, b))


def same_shape(a, b):
    a, b = dims(a), dims(b)
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def size(shape):
    """The number of elements: an int, or a TIR expression when a dimension is symbolic."""
    shape = dims(shape)
    if all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    out = tirx.const(1, "int64")
    for d in shape:
        out = out * d
    return arith.Analyzer().simplify(out)


def reciprocal(count, dtype):
    """1 / count as a TE scalar of `dtype` (count: an int or a symbolic expression)."""
    if isinstance(count, int):
        return tirx.const(1.0 / count, dtype)
    return tirx.const(1.0, dtype) / count.astype(dtype)


def show(shape):
    """The shape for an error message: ints, and names or expressions where symbolic."""
    return [d if isinstance(d, int) else " ".join(str(d).split()) for d in dims(shape)]
