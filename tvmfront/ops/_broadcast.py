"""Numpy broadcasting for TE ops, and the reduction that undoes it in gradients."""

from .._tvm import te
from ._dims import dims, same, show


def _one(d):
    return isinstance(d, int) and d == 1


def broadcast_shape(a, b):
    """numpy's broadcast of two shapes; a symbolic dimension matches itself or a 1 (it is
    never assumed to be 1: a size-1 batch is still the batch)."""
    a, b = dims(a), dims(b)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if _one(x) or _one(y):
            out.append(y if _one(x) else x)
        elif same(x, y):
            out.append(x)
        else:
            raise ValueError(f"shapes {show(a)} and {show(b)} cannot be broadcast (axis {i}: "
                             f"{show([x])[0]} vs {show([y])[0]})")
    return tuple(out)


def index_into(shape, out_index):
    """Index of a tensor of `shape` broadcast to an output indexed by `out_index`."""
    offset = len(out_index) - len(shape)
    return [0 if _one(d) else out_index[offset + k] for k, d in enumerate(dims(shape))]


def reduce_to(shape, out_shape, value, name="unbroadcast"):
    """Tensor of `shape` = sum over broadcast axes of value(out_index), out_index in out_shape.

    A gradient w.r.t. a broadcast input is the output gradient summed over the axes the
    input was broadcast along; `value` gives that per-output-element term.
    """
    shape, out_shape = dims(shape), dims(out_shape)
    offset = len(out_shape) - len(shape)
    reduced = [d for d in range(len(out_shape))
               if d < offset or (_one(shape[d - offset]) and not _one(out_shape[d]))]
    if not reduced:
        return te.compute(shape, lambda *i: value(list(i) if offset == 0 else
                                                  [None] * offset + list(i)), name=name)
    axes = {d: te.reduce_axis((0, out_shape[d]), f"r{d}") for d in reduced}

    def body(*j):
        idx = [axes[d] if d in axes else j[d - offset] for d in range(len(out_shape))]
        return te.sum(value(idx), axis=list(axes.values()))

    return te.compute(shape, body, name=name)
