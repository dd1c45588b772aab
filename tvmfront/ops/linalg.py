"""Matrix products and bias addition."""

from .._tvm import te
from ..op import op
from ._broadcast import reduce_to
from ._dims import same, show


@op
def matmul(a, b):
    """[M, K] @ [K, N] -> [M, N]"""
    if len(a.shape) != 2 or len(b.shape) != 2 or not same(a.shape[1], b.shape[0]):
        raise ValueError(f"matmul expects [M, K] @ [K, N], got {show(a.shape)} @ {show(b.shape)}")
    k = te.reduce_axis((0, a.shape[1]), "k")
    return te.compute((a.shape[0], b.shape[1]), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k),
                      name="matmul")


@matmul.grad
def _(dy, a, b):
    # da = dy @ b^T ; db = a^T @ dy
    n = te.reduce_axis((0, b.shape[1]), "n")
    m = te.reduce_axis((0, a.shape[0]), "m")
    return [te.compute(a.shape, lambda i, k: te.sum(dy[i, n] * b[k, n], axis=n), name="matmul_da"),
            te.compute(b.shape, lambda k, j: te.sum(a[m, k] * dy[m, j], axis=m), name="matmul_db")]


@op
def dense(x, w):
    """x @ w^T: [..., in] x [out, in] -> [..., out] (PyTorch's Linear weight layout; the
    usual [B, in] -> [B, out], and any leading dims, e.g. [B, T, in], without a reshape)."""
    if len(x.shape) < 1 or len(w.shape) != 2 or not same(x.shape[-1], w.shape[1]):
        raise ValueError(f"dense expects x [..., in] and w [out, in], got {show(x.shape)} and "
                         f"{show(w.shape)}")
    k = te.reduce_axis((0, x.shape[-1]), "k")
    if len(x.shape) == 2:  # the GEMM as tuning records know it
        return te.compute((x.shape[0], w.shape[0]),
                          lambda i, j: te.sum(x[i, k] * w[j, k], axis=k), name="dense")
    return te.compute((*x.shape[:-1], w.shape[0]),
                      lambda *i: te.sum(x(*i[:-1], k) * w[i[-1], k], axis=k), name="dense")


@dense.grad
def _(dy, x, w):
    o = te.reduce_axis((0, w.shape[0]), "o")
    if len(x.shape) == 2:  # the GEMMs as tuning records know them
        b = te.reduce_axis((0, x.shape[0]), "b")
        return [te.compute(x.shape, lambda i, k: te.sum(dy[i, o] * w[o, k], axis=o),
                           name="dense_dx"),
                te.compute(w.shape, lambda j, k: te.sum(dy[b, j] * x[b, k], axis=b),
                           name="dense_dw")]
    lead = [te.reduce_axis((0, d), f"b{j}") for j, d in enumerate(x.shape[:-1])]
    dx = te.compute(x.shape, lambda *i: te.sum(dy(*i[:-1], o) * w[o, i[-1]], axis=o),
                    name="dense_dx")
    dw = te.compute(w.shape, lambda j, k: te.sum(dy(*lead, j) * x(*lead, k), axis=lead)
                    if lead else dy(j) * x(k), name="dense_dw")
    return [dx, dw]


def _axis(axis, x):
    if not -len(x.shape) <= axis < len(x.shape):
        raise ValueError(f"axis {axis} out of range for a {len(x.shape)}-d tensor")
    return axis % len(x.shape)


@op
def bias_add(x, b, axis=1):
    """x + b broadcast along `axis` (b is 1-D with x.shape[axis] elements)."""
    axis = _axis(axis, x)
    if len(b.shape) != 1 or not same(b.shape[0], x.shape[axis]):
        raise ValueError(f"bias_add: bias of shape {show(b.shape)} does not match axis {axis} "
                         f"of x {show(x.shape)}")
    return te.compute(x.shape, lambda *i: x(*i) + b[i[axis]], name="bias_add")


@bias_add.grad
def _(dy, x, b, axis=1):
    # db sums dy over every axis but `axis`: view b as broadcast along the others.
    axis = _axis(axis, x)
    shape = [1] * len(x.shape)
    shape[axis] = b.shape[0]
    db = reduce_to(shape, dy.shape, lambda i: dy(*i), name="bias_add_db_nd")
    return [te.compute(x.shape, lambda *i: dy(*i), name="bias_add_dx"),
            te.compute(b.shape, lambda c: db(*[c if d == axis else 0 for d in range(len(shape))]),
                       name="bias_add_db")]
