"""Reshapes, written as index maps so they fuse into their neighbours."""

import math

from .._tvm import te, tirx
from ..op import op, wide_indices
from ._dims import dims, infer_shape, rebind, show


def _wide(shape):
    """Whether a fixed shape has 2^31 elements or more: its positions need int64 (in int32
    TVM refused the literals, and an eager reshape past them failed to build)."""
    extents = dims(shape)
    return all(isinstance(d, int) for d in extents) and wide_indices([extents])


def _flat_index(shape, idx):
    """The row-major position of `idx` in `shape` (int64 for a _wide one)."""
    wide = _wide(shape)
    flat = tirx.const(0, "int64") if wide else 0
    for d, i in zip(dims(shape), idx):
        flat = flat * d + (i.astype("int64") if wide else i)
    return flat


def _unflat_index(shape, flat):
    idx = []
    for d in reversed(dims(shape)):
        # a size-0 dimension: the kernel runs no iteration, but TVM folds `% 0` at build time
        # ("Divide by zero", a raw InternalError for a reshape of an empty array)
        d = 1 if isinstance(d, int) and d == 0 else d
        idx.append(flat % d)
        flat = flat // d
    return list(reversed(idx))


def _reshape_te(x, shape, name):
    return te.compute(shape, lambda *i: x(*_unflat_index(x.shape, _flat_index(shape, i))),
                      name=name)


@op
def reshape(x, shape=()):
    """x viewed as `shape` (row-major), one -1 inferred. On symbolic dimensions the target
    names them (reshape(x, (b * t, d)) for x [b, t, d], b and t from x.shape) or a -1 stands
    where their product cancels: [b, t, d] -> (-1, d) or (b, -1)."""
    return _reshape_te(x, infer_shape(x.shape, rebind(shape, x.shape), "reshape"), "reshape")


@reshape.grad
def _(dy, x, shape=()):
    return [_reshape_te(dy, x.shape, "reshape_grad")]


def flatten(x):
    """[N, ...] -> [N, prod(...)] (N may be symbolic: the batch stays the batch)."""
    rest = dims(x.shape)[1:]
    if all(isinstance(d, int) for d in rest):  # (0, 2, 3) -> (0, 6): a -1 there is ambiguous
        return reshape(x, shape=(x.shape[0], math.prod(rest)))
    return reshape(x, shape=(x.shape[0], -1))


@op
def slice_first(x, index=0):
    """x[index : index + 1] along the first axis (keeps the axis). On a symbolic first axis
    the index cannot be checked when the kernel is built (it must be below every size the
    compiled function is called with)."""
    n = dims(x.shape)[0]
    if not 0 <= index or (isinstance(n, int) and index >= n):
        raise ValueError(f"slice_first: index {index} out of range for {show(x.shape)}")
    return te.compute((1, *x.shape[1:]), lambda i, *r: x(i + index, *r), name="slice_first")


@slice_first.grad
def _(dy, x, index=0):
    zero = tirx.const(0, dy.dtype)
    return [te.compute(x.shape, lambda i, *r: te.if_then_else(
        i == index, dy(0, *r), zero), name="slice_first_grad")]
