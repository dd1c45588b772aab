"""Reductions over given axes: sum, mean, max (numpy/PyTorch `axis`, `keepdims`).
Gradients are derived (sum and max reductions; max passes it to the first maximum)."""

import math

from .._tvm import te, tirx
from ..op import op


def _axes(x, axis, name):
    ndim = len(x.shape)
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for a in axes:
        if not -ndim <= a < ndim:
            raise ValueError(f"{name}: axis {a} out of range for a {ndim}-d input")
    norm = tuple(sorted(a % ndim for a in axes))
    if len(set(norm)) != len(norm):
        raise ValueError(f"{name}: repeated axis in {axes}")
    return norm


def _reduce(x, axis, keepdims, name, combine, scale=None):
    axes = _axes(x, axis, name)
    r = {a: te.reduce_axis((0, x.shape[a]), f"r{a}") for a in axes}
    shape = tuple(1 if a in r else x.shape[a]
                  for a in range(len(x.shape)) if keepdims or a not in r)

    def body(*j):
        it = iter(j)
        idx = []
        for a in range(len(x.shape)):
            if a in r:
                if keepdims:
                    next(it)
                idx.append(r[a])
            else:
                idx.append(next(it))
        v = x(*idx)
        return combine(v * scale if scale is not None else v, axis=list(r.values()))

    if not r:  # nothing to reduce (axis=() or a 0-d input): a copy
        return te.compute(x.shape, lambda *i: x(*i), name=name)
    return te.compute(shape, body, name=name)


@op
def sum(x, axis=None, keepdims=False):  # noqa: A001  (tvf.ops.sum, as numpy.sum)
    """Sum over `axis` (an int, a tuple, or None for all)."""
    return _reduce(x, axis, keepdims, "sum", te.sum)


@op
def mean(x, axis=None, keepdims=False):
    """Mean over `axis` (an int, a tuple, or None for all)."""
    n = math.prod(int(x.shape[a]) for a in _axes(x, axis, "mean"))
    return _reduce(x, axis, keepdims, "mean", te.sum, tirx.const(1.0 / n if n else 0.0, x.dtype))


@op
def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over `axis`; the gradient goes to the first maximum (PyTorch's rule)."""
    return _reduce(x, axis, keepdims, "max", te.max)
