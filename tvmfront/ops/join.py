"""Joining and cutting tensors: concat, stack, strided slices, split.

split is several slices, not one op with several outputs: each slice is a kernel of its own
that fuses with its consumer, where one multi-output kernel stays apart (TVM 0.27's FuseTIR
fails on it: pipeline.keep_multi_output_kernels_unfused).
"""

from .._tvm import te, tirx
from ..op import Op, op
from ..tensor import current_trace
from ._dims import dims, same, same_shape, show, simplify, static


class _SeqOp(Op):
    """An op over a variable number of tensors that also takes them as one list, as
    torch.cat / torch.stack do: concat([a, b], axis=1) == concat(a, b, axis=1)."""

    def __call__(self, *inputs, **attrs):
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        if not inputs:
            raise ValueError(f"{self.name}: needs at least one tensor")
        return super().__call__(*inputs, **attrs)


def _axis(axis, ndim, name):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} out of range for {ndim}-d tensors")
    return axis % ndim


def _chain(parts, i, a):
    """Body of a concatenation along axis a: the part whose range holds i[a]."""
    body, start = None, 0
    pieces = []
    for x in parts:
        pieces.append((start, x))
        start = start + dims(x.shape)[a]
    for start, x in reversed(pieces):
        read = x(*i[:a], i[a] - start, *i[a + 1:])
        body = read if body is None else te.if_then_else(i[a] < start + dims(x.shape)[a], read,
                                                         body)
    return body


def _concat_shape(xs, axis, name):
    a = _axis(axis, len(xs[0].shape), name)
    first = dims(xs[0].shape)
    for k, x in enumerate(xs):
        other = dims(x.shape)
        if len(other) != len(first) or not same_shape(other[:a] + other[a + 1:],
                                                      first[:a] + first[a + 1:]) \
                or x.dtype != xs[0].dtype:
            raise ValueError(f"{name}: tensor {k} is {show(other)} {x.dtype}, tensor 0 is "
                             f"{show(first)} {xs[0].dtype}; all must match except along axis {a}")
    total = 0
    for x in xs:
        total = total + dims(x.shape)[a]
    return a, (*first[:a], simplify(total), *first[a + 1:])


def _concat(*xs, axis=0):
    """Join tensors along an existing axis (torch.cat, numpy.concatenate)."""
    a, shape = _concat_shape(xs, axis, "concat")
    return te.compute(shape, lambda *i: _chain(xs, i, a), name="concat")


concat = _SeqOp(_concat, name="concat")


def _shifted(dy, a, start):
    return lambda *i: dy(*i[:a], i[a] + start, *i[a + 1:])


@concat.grad
def _(dy, *xs, axis=0):
    a = _axis(axis, len(xs[0].shape), "concat")
    grads, start = [], 0
    for k, x in enumerate(xs):
        grads.append(te.compute(x.shape, _shifted(dy, a, start), name=f"concat_grad{k}"))
        start = start + dims(x.shape)[a]
    return grads


def _stack(*xs, axis=0):
    """Join equal-shape tensors along a new axis (torch.stack, numpy.stack)."""
    ndim = len(xs[0].shape) + 1
    a = _axis(axis, ndim, "stack")
    for k, x in enumerate(xs):
        if not same_shape(x.shape, xs[0].shape) or x.dtype != xs[0].dtype:
            raise ValueError(f"stack: tensor {k} is {show(x.shape)} {x.dtype}, "
                             f"tensor 0 is {show(xs[0].shape)} {xs[0].dtype}")
    shape = (*xs[0].shape[:a], len(xs), *xs[0].shape[a:])

    def body(*i):
        out = None
        for k in reversed(range(len(xs))):
            read = xs[k](*i[:a], *i[a + 1:])
            out = read if out is None else te.if_then_else(i[a] == k, read, out)
        return out

    return te.compute(shape, body, name="stack")


stack = _SeqOp(_stack, name="stack")


@stack.grad
def _(dy, *xs, axis=0):
    a = _axis(axis, len(xs[0].shape) + 1, "stack")
    return [te.compute(x.shape, _at(dy, a, k), name=f"stack_grad{k}") for k, x in enumerate(xs)]


def _at(dy, a, k):
    return lambda *i: dy(*i[:a], k, *i[a:])


# ---- slices ----------------------------------------------------------------------------------
def _bound(v, d, default, lo, hi):
    """One slice bound over a symbolic axis of size d, as Python's slice.indices takes it:
    None -> default, negative -> from the end, then clamped into [lo, hi]."""
    if v is None:
        return default
    v = d + v if v < 0 else tirx.const(v, "int64")
    return tirx.max(tirx.min(v, hi), tirx.const(lo, "int64"))


def _one_axis(d, start, stop, step):
    """(start, step, length) of slice(start, stop, step) over an axis of size d (an int, or a
    symbolic size: then start and length are TIR expressions, as slice.indices would give)."""
    if isinstance(d, int):
        start, stop, step = slice(start, stop, step).indices(d)
        return start, step, len(range(start, stop, step))
    step = 1 if step is None else step
    if step > 0:
        first, last = _bound(start, d, 0, 0, d), _bound(stop, d, d, 0, d)
        length = (last - first + (step - 1)) // step
    else:
        first, last = _bound(start, d, d - 1, -1, d - 1), _bound(stop, d, -1, -1, d - 1)
        length = (first - last + (-step - 1)) // -step
    return simplify(first), step, simplify(tirx.max(length, 0))


def _normalise_slices(shape, slices):
    """Per axis (start, step, length) from a tuple of (start, stop, step), None meaning ':'."""
    if len(slices) > len(shape):
        raise IndexError(f"too many slices ({len(slices)}) for a {len(shape)}-d tensor")
    out = []
    for d, s in zip(dims(shape), tuple(slices) + ((None, None, None),) * (len(shape) - len(slices))):
        if len(s) == 1:  # (k,): the one element k (from the end when negative), length 1
            k = s[0]
            if isinstance(d, int) and not -d <= k < d:
                raise IndexError(f"index {k} is out of range for an axis of size {d}")
            out.append((k % d if isinstance(d, int) else k if k >= 0 else simplify(d + k), 1, 1))
            continue
        start, stop, step = s
        if step == 0:
            raise ValueError("strided_slice: step cannot be zero")
        out.append(_one_axis(d, start, stop, step))
    return out


def _index(s, st, v):
    if isinstance(s, int) and s == 0 and st == 1:
        return v
    first = tirx.const(s, "int32") if isinstance(s, int) else s  # int64 when symbolic
    return first + v * st


@op
def strided_slice(x, slices=()):
    """x[s0, s1, ...] for Python slices given as (start, stop, step) triples (None for a
    default), one per leading axis: numpy/PyTorch basic slicing, negative steps and indices
    included; on a symbolic axis the bounds are clamped at run time, as Python does. A
    1-tuple (k,) takes the one element k (length 1), as x[k] does before dropping the axis."""
    norm = _normalise_slices(x.shape, slices)
    shape = tuple(n for _, _, n in norm)
    return te.compute(shape, lambda *i: x(*[_index(s, st, v) for v, (s, st, _) in zip(i, norm)]),
                      name="strided_slice")


@strided_slice.grad
def _(dy, x, slices=()):
    # dx[i] = dy[j] where i = start + j * step for some 0 <= j < length, else 0
    norm = _normalise_slices(x.shape, slices)
    zero = tirx.const(0, dy.dtype)

    def body(*i):
        ok, j = [], []
        for v, (s, st, n) in zip(i, norm):
            if isinstance(s, int) and s == 0 and st == 1 and same(n, dims(x.shape)[len(j)]):
                j.append(v)
                continue
            t = (v - s) if st > 0 else (s - v)
            # truncdiv, not //: t >= 0 where it counts, and TVM 0.27's unscheduled LLVM
            # lowering computed floordiv(7 - v, 2) one low inside the select (eager vjp of
            # x[::-2] on 8 elements put dy one position off); the scheduled kernel did not
            q, r = tirx.truncdiv(t, abs(st)), tirx.truncmod(t, abs(st))
            ok += [t >= 0, r == 0, q < n]
            j.append(q)
        return te.if_then_else(te.all(*ok), dy(*j), zero) if ok else dy(*j)

    return [te.compute(x.shape, body, name="strided_slice_grad")]


def split(x, split_size_or_sections, axis=0):
    """torch.split: chunks of `split_size_or_sections` along `axis` (the last one smaller if
    the size does not divide), or pieces of the given sizes (a list summing to the axis).
    Returns a tuple of slices; each trains like any slice."""
    a = _axis(axis, len(x.shape), "split")
    n = static(x.shape[a], "split", "the axis split")
    if isinstance(split_size_or_sections, int):
        if split_size_or_sections <= 0:
            raise ValueError(f"split: size {split_size_or_sections} must be positive")
        sizes = [min(split_size_or_sections, n - s) for s in range(0, n, split_size_or_sections)]
    else:
        sizes = [int(s) for s in split_size_or_sections]
        if sum(sizes) != n or any(s < 0 for s in sizes):
            raise ValueError(f"split: sizes {sizes} do not sum to axis {a}'s length {n}")
    out, start = [], 0
    for size in sizes:
        slices = ((None, None, None),) * a + ((start, start + size, 1),)
        out.append(strided_slice(x, slices=slices))
        start += size
    return tuple(out)


def _needs_positions(dim, count):
    """Record in the trace that symbolic dimension `dim` needs at least `count` positions
    (an int index into it): a compiled method called with fewer raises ShapeError instead of
    reading outside its buffer (CausalLM.prefill's x[:, -1] on an empty prompt)."""
    trace = current_trace()
    name = getattr(dim, "name", None)
    if trace is not None and isinstance(name, str):
        trace.bound("min_sizes", name, count)


def getitem(x, key):
    """x[key] for basic indexing: slices (any step, negative bounds), ints (negative too; each
    drops its axis) and one Ellipsis. One strided_slice, then a reshape if ints drop axes."""
    key = key if isinstance(key, tuple) else (key,)
    if sum(k is Ellipsis for k in key) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    for k in key:
        if not (k is Ellipsis or isinstance(k, (int, slice))) or isinstance(k, bool):
            raise TypeError(f"symbolic tensor index {k!r} ({type(k).__name__}): only ints, "
                            "slices and ... are supported; gather by an index tensor with "
                            "ops.take(x, indices, axis=...)")
    if Ellipsis in key:
        at = key.index(Ellipsis)
        fill = len(x.shape) - (len(key) - 1)
        key = key[:at] + (slice(None),) * max(fill, 0) + key[at + 1:]
    if len(key) > len(x.shape):
        raise IndexError(f"too many indices ({len(key)}) for a {len(x.shape)}-d tensor")
    slices, keep = [], []
    for axis, k in enumerate(key):
        if isinstance(k, int):
            n = dims(x.shape)[axis]
            if not isinstance(n, int):  # a symbolic axis: x[-1] is its last element
                slices.append((k,))
                _needs_positions(n, k + 1 if k >= 0 else -k)
                continue
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of range for axis {axis} of size {n}")
            k %= n
            slices.append((k, k + 1, 1))
        else:
            slices.append((k.start, k.stop, k.step))
            keep.append(axis)
    keep += list(range(len(key), len(x.shape)))
    out = strided_slice(x, slices=tuple(slices))
    if len(keep) != len(x.shape):
        out = out.reshape(tuple(out.shape[a] for a in keep))
    return out
