"""Attention pieces: batched matmul, axis permutation, softmax over the last axis, each with
its explicit gradient (symbolic batch and sequence lengths need them: the derived gradient
takes fixed extents); the derived ones are checked against them."""

from .._tvm import te
from ..op import op
from .softmax_axis import softmax_along, softmax_output_vjp
from ._dims import same, same_shape, show


@op
def batch_matmul(a, b, transpose_b=False):
    """[..., M, K] @ [..., K, N] -> [..., M, N] (equal leading dims). transpose_b: b is
    [..., N, K] and the product a @ b^T (attention's q k^T, k read in its own layout: no
    transposed copy of k, and its gradient comes out in that layout too)."""
    kb = -1 if transpose_b else -2  # b's reduction axis
    if len(a.shape) < 2 or len(b.shape) != len(a.shape) or \
            not same_shape(a.shape[:-2], b.shape[:-2]) or not same(a.shape[-1], b.shape[kb]):
        layout = "[..., N, K] (transpose_b)" if transpose_b else "[..., K, N]"
        raise ValueError(f"batch_matmul expects [..., M, K] @ {layout}, got {show(a.shape)} "
                         f"@ {show(b.shape)}")
    k = te.reduce_axis((0, a.shape[-1]), "k")
    if transpose_b:
        return te.compute((*a.shape[:-1], b.shape[-2]), lambda *i: te.sum(
            a(*i[:-1], k) * b(*i[:-2], i[-1], k), axis=k), name="batch_matmul")
    shape = (*a.shape[:-1], b.shape[-1])
    return te.compute(shape, lambda *i: te.sum(a(*i[:-1], k) * b(*i[:-2], k, i[-1]), axis=k),
                      name="batch_matmul")


@batch_matmul.grad
def _(dy, a, b, transpose_b=False):
    # da = dy @ b^T, db = a^T @ dy (transpose_b: da = dy @ b, db = dy^T @ a), batched over
    # the leading dims
    n = te.reduce_axis((0, dy.shape[-1]), "n")
    m = te.reduce_axis((0, a.shape[-2]), "m")
    if transpose_b:
        da = te.compute(a.shape, lambda *i: te.sum(dy(*i[:-1], n) * b(*i[:-2], n, i[-1]),
                                                   axis=n), name="batch_matmul_da")
        db = te.compute(b.shape, lambda *i: te.sum(dy(*i[:-2], m, i[-2]) * a(*i[:-2], m, i[-1]),
                                                   axis=m), name="batch_matmul_db")
        return [da, db]
    da = te.compute(a.shape, lambda *i: te.sum(dy(*i[:-1], n) * b(*i[:-2], i[-1], n), axis=n),
                    name="batch_matmul_da")
    db = te.compute(b.shape, lambda *i: te.sum(a(*i[:-2], m, i[-2]) * dy(*i[:-2], m, i[-1]),
                                               axis=m), name="batch_matmul_db")
    return [da, db]


def _permutation(x, axes):
    axes = tuple(range(len(x.shape)))[::-1] if axes is None else tuple(int(a) for a in axes)
    if sorted(axes) != list(range(len(x.shape))):
        raise ValueError(f"transpose: {axes} is not a permutation of {len(x.shape)} axes")
    return axes


def _permute(x, axes, name):
    shape = tuple(x.shape[a] for a in axes)

    def body(*i):
        src = [None] * len(axes)
        for out_axis, in_axis in enumerate(axes):
            src[in_axis] = i[out_axis]
        return x(*src)

    return te.compute(shape, body, name=name)


@op
def transpose(x, axes=None):
    """Permute axes (reverse them when axes is None), as numpy.transpose."""
    return _permute(x, _permutation(x, axes), "transpose")


@transpose.grad
def _(dy, x, axes=None):
    axes = _permutation(x, axes)
    inverse = [axes.index(a) for a in range(len(axes))]
    return [_permute(dy, inverse, "transpose_grad")]


@op
def softmax_last(x):
    """Softmax over the last axis of any-rank x."""
    return softmax_along(x, len(x.shape) - 1, "softmax_last")


@softmax_last.grad(uses_output=True)
def _(dy, s, x):  # s * (dy - sum(dy * s)) along the last axis
    return [softmax_output_vjp(dy, s, len(x.shape) - 1, "softmax_last_grad")]
