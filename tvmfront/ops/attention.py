"""Attention pieces: batched matmul, axis permutation, softmax over the last axis.
Gradients are derived from the TE forward."""

from .._tvm import te
from ..op import op


@op
def batch_matmul(a, b):
    """[..., M, K] @ [..., K, N] -> [..., M, N] (equal leading dims)."""
    if len(a.shape) < 2 or tuple(a.shape[:-2]) != tuple(b.shape[:-2]) or \
            int(a.shape[-1]) != int(b.shape[-2]):
        raise ValueError(f"batch_matmul expects [..., M, K] @ [..., K, N], got {list(a.shape)} @ "
                         f"{list(b.shape)}")
    k = te.reduce_axis((0, a.shape[-1]), "k")
    shape = (*a.shape[:-1], b.shape[-1])
    return te.compute(shape, lambda *i: te.sum(a(*i[:-1], k) * b(*i[:-2], k, i[-1]), axis=k),
                      name="batch_matmul")


@op
def transpose(x, axes=None):
    """Permute axes (reverse them when axes is None), as numpy.transpose."""
    axes = tuple(range(len(x.shape)))[::-1] if axes is None else tuple(int(a) for a in axes)
    if sorted(axes) != list(range(len(x.shape))):
        raise ValueError(f"transpose: {axes} is not a permutation of {len(x.shape)} axes")
    shape = tuple(x.shape[a] for a in axes)

    def body(*i):
        src = [None] * len(axes)
        for out_axis, in_axis in enumerate(axes):
            src[in_axis] = i[out_axis]
        return x(*src)

    return te.compute(shape, body, name="transpose")


@op
def softmax_last(x):
    """Softmax over the last axis of any-rank x."""
    lead, c = tuple(x.shape[:-1]), x.shape[-1]
    k1, k2 = te.reduce_axis((0, c), "k1"), te.reduce_axis((0, c), "k2")
    mx = te.compute(lead, lambda *i: te.max(x(*i, k1), axis=k1), name="sm_max")
    se = te.compute(lead, lambda *i: te.sum(te.exp(x(*i, k2) - mx(*i)), axis=k2), name="sm_sum")
    return te.compute(x.shape, lambda *i: te.exp(x(*i) - mx(*i[:-1])) / se(*i[:-1]),
                      name="softmax_last")
