"""Reshapes, written as index maps so they fuse into their neighbours."""

import math

from .._tvm import te
from ..op import op


def _flat_index(shape, idx):
    flat = 0
    for d, i in zip(shape, idx):
        flat = flat * int(d) + i
    return flat


def _unflat_index(shape, flat):
    idx = []
    for d in reversed([int(d) for d in shape]):
        idx.append(flat % d)
        flat = flat // d
    return list(reversed(idx))


def _target_shape(in_shape, shape):
    shape = [int(d) for d in shape]
    total = math.prod(int(d) for d in in_shape)
    if shape.count(-1) > 1:
        raise ValueError(f"reshape: at most one -1 in {shape}")
    if -1 in shape:
        known = math.prod(d for d in shape if d != -1)
        shape[shape.index(-1)] = total // known if known else 0
    if math.prod(shape) != total:
        raise ValueError(f"reshape: cannot view {list(in_shape)} ({total} elements) as {shape}")
    return tuple(shape)


def _reshape_te(x, shape, name):
    return te.compute(shape, lambda *i: x(*_unflat_index(x.shape, _flat_index(shape, i))),
                      name=name)


@op
def reshape(x, shape=()):
    return _reshape_te(x, _target_shape(x.shape, shape), "reshape")


@reshape.grad
def _(dy, x, shape=()):
    return [_reshape_te(dy, tuple(int(d) for d in x.shape), "reshape_grad")]


def flatten(x):
    """[N, ...] -> [N, prod(...)]"""
    return reshape(x, shape=(x.shape[0], -1))


@op
def slice_first(x, index=0):
    """x[index : index + 1] along the first axis (keeps the axis)."""
    if not 0 <= index < int(x.shape[0]):
        raise ValueError(f"slice_first: index {index} out of range for {list(x.shape)}")
    return te.compute((1, *x.shape[1:]), lambda i, *r: x(i + index, *r), name="slice_first")
