"""Reductions over given axes: sum, mean, max (numpy/PyTorch `axis`, `keepdims`).
Each has an explicit gradient (a broadcast of dy back over the reduced axes; max passes it
to the first maximum, PyTorch's rule), so they train on symbolic shapes too, where the
derived gradient does not apply; the derived ones are checked against them."""

from .. import extremum
from .._tvm import te, tirx
from ..autodiff import first_extremum, if_else_zero
from ..op import op
from ._dims import dims, reciprocal, require_float, show, size
from .join import _needs_positions


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


def _reduce(x, axis, keepdims, name, combine, scale=None, empty=None, value=None):
    """`combine` over `axis`. A static axis of size 0 gives `empty` (sum's 0, mean's NaN, as
    numpy and PyTorch); with none (max) it is a ValueError. A symbolic axis of size 0 is a
    size the compiled module refuses (runtime/bounds.py): its kernel never writes the output
    (a max would return its initial value, -3.4e38, a sum or mean uninitialised memory)."""
    axes = _axes(x, axis, name)
    r = {a: te.reduce_axis((0, x.shape[a]), f"r{a}") for a in axes}
    shape = tuple(1 if a in r else x.shape[a]
                  for a in range(len(x.shape)) if keepdims or a not in r)
    extents = {a: dims(x.shape)[a] for a in axes}
    if any(isinstance(n, int) and n == 0 for n in extents.values()):
        if empty is None:
            raise ValueError(f"{name}: reducing {show(x.shape)} over axis "
                             f"{[a for a, n in extents.items() if n == 0]} of size 0: there "
                             f"is no {name} of no elements (numpy and PyTorch refuse it too)")
        return te.compute(shape, lambda *j: tirx.const(empty, x.dtype), name=name)
    for n in extents.values():
        # over a symbolic size 0 the kernel never writes its output (a sum or mean had
        # returned whatever memory held, another value each call): the call is refused
        _needs_one(n)

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
        v = x(*idx) if value is None else value(x(*idx))
        return combine(v * scale if scale is not None else v, axis=list(r.values()))

    if not r:  # nothing to reduce (axis=() or a 0-d input): a copy
        return te.compute(x.shape, lambda *i: x(*i), name=name)
    return te.compute(shape, body, name=name)


def _needs_one(extent):
    """Record that a symbolic extent T (or T - c, a slice's x[:, c:], which strided_slice
    writes max(T - c, 0)) must be at least 1."""
    if isinstance(extent, tirx.Max) and isinstance(extent.b, tirx.IntImm) and \
            extent.b.value == 0:
        extent = extent.a
    if isinstance(extent, tirx.Sub) and isinstance(extent.b, tirx.IntImm):
        _needs_positions(extent.a, int(extent.b.value) + 1)
    elif not isinstance(extent, int):
        _needs_positions(extent, 1)


def _out_index(x, axis, keepdims, i):
    """The output position an input position i reduces into."""
    axes = _axes(x, axis, "reduce")
    if keepdims:
        return [0 if a in axes else v for a, v in enumerate(i)]
    return [v for a, v in enumerate(i) if a not in axes]


def _spread(dy, x, axis, keepdims, name, scale=None):
    """dx[i] = dy[the output i reduces into] (* scale)."""
    def body(*i):
        v = dy(*_out_index(x, axis, keepdims, i))
        return v * scale if scale is not None else v
    return te.compute(x.shape, body, name=name)


@op
def sum(x, axis=None, keepdims=False):  # noqa: A001  (tvf.ops.sum, as numpy.sum)
    """Sum over `axis` (an int, a tuple, or None for all)."""
    return _reduce(x, axis, keepdims, "sum", te.sum, empty=0)


@sum.grad
def _(dy, x, axis=None, keepdims=False):
    return [_spread(dy, x, axis, keepdims, "sum_grad")]


def _inverse_count(x, axis):
    n = size([dims(x.shape)[a] for a in _axes(x, axis, "mean")])
    if isinstance(n, int) and n == 0:
        return tirx.const(0.0, x.dtype)
    return reciprocal(n, x.dtype)  # a symbolic count: 1 / n at run time


@op
def mean(x, axis=None, keepdims=False):
    """Mean over `axis` (an int, a tuple, or None for all)."""
    require_float("mean", x)  # an integer mean was cut to an integer (PyTorch refuses it)
    return _reduce(x, axis, keepdims, "mean", te.sum, _inverse_count(x, axis),
                   empty=float("nan"))


@mean.grad
def _(dy, x, axis=None, keepdims=False):
    return [_spread(dy, x, axis, keepdims, "mean_grad", _inverse_count(x, axis))]


@op
def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over `axis`, NaN where a NaN is (numpy's and PyTorch's max, not TVM's te.max,
    which drops it); the gradient goes to the first maximum, the first NaN if any
    (torch.max(x, dim)'s rule)."""
    top = _reduce(x, axis, keepdims, "max", te.max)
    if "float" not in str(x.dtype) or not isinstance(top.op.body[0], tirx.Reduce):
        return top  # integers, or no axis to reduce (a copy)
    cls = _reduce(x, axis, keepdims, "max_class", te.max, value=extremum.max_class)
    return te.compute(top.shape, lambda *i: extremum.classified_max(top(*i), cls(*i)),
                      name="max_nan")


@max.grad
def _(dy, x, axis=None, keepdims=False):
    axes = _axes(x, axis, "max")
    if not axes:
        return [te.compute(x.shape, lambda *i: dy(*i), name="max_grad")]
    first = first_extremum(_reduce(x, axis, keepdims, "max", extremum.max_reducer()))
    dt = first.dtype
    red = [dims(x.shape)[a] for a in axes]

    def body(*i):
        pos = tirx.const(0, dt)  # row-major position among the reduced axes, as first_extremum
        for a, n in zip(axes, red):
            pos = pos * tirx.Cast(dt, n) + tirx.Cast(dt, i[a])
        out = _out_index(x, axis, keepdims, i)
        return if_else_zero(pos == first(*out), dy(*out), dy.dtype)  # branch-free

    return [te.compute(x.shape, body, name="max_grad")]
