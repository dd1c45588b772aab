"""Numpy broadcasting for TE ops, and the reduction that undoes it in gradients."""

from .._tvm import te


def broadcast_shape(a, b):
    a, b = tuple(int(d) for d in a), tuple(int(d) for d in b)
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y and 1 not in (x, y):
            raise ValueError(f"shapes {a} and {b} cannot be broadcast (axis {i}: {x} vs {y})")
        out.append(max(x, y) if 0 not in (x, y) else 0)
    return tuple(out)


def index_into(shape, out_index):
    """Index of a tensor of `shape` broadcast to an output indexed by `out_index`."""
    offset = len(out_index) - len(shape)
    return [0 if int(d) == 1 else out_index[offset + k] for k, d in enumerate(shape)]


def reduce_to(shape, out_shape, value, name="unbroadcast"):
    """Tensor of `shape` = sum over broadcast axes of value(out_index), out_index in out_shape.

    A gradient w.r.t. a broadcast input is the output gradient summed over the axes the
    input was broadcast along; `value` gives that per-output-element term.
    """
    shape, out_shape = tuple(int(d) for d in shape), tuple(int(d) for d in out_shape)
    offset = len(out_shape) - len(shape)
    reduced = [d for d in range(len(out_shape))
               if d < offset or (shape[d - offset] == 1 and out_shape[d] != 1)]
    if not reduced:
        return te.compute(shape, lambda *i: value(list(i) if offset == 0 else
                                                  [None] * offset + list(i)), name=name)
    axes = {d: te.reduce_axis((0, out_shape[d]), f"r{d}") for d in reduced}

    def body(*j):
        idx = [axes[d] if d in axes else j[d - offset] for d in range(len(out_shape))]
        return te.sum(value(idx), axis=list(axes.values()))

    return te.compute(shape, body, name=name)
