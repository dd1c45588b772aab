"""Indexing by data: take (gather along an axis), embedding lookup, one_hot.

The derived gradient refuses data-dependent reads (`x[idx[i]]`), so take and embedding carry
an explicit scatter-add gradient, a loop nest (te.extern) that adds each id's row of dy into
the row it names.

Out-of-range ids: eagerly (numpy inputs) they are a ValueError naming the op, the offending
id and the valid range, raised before any kernel runs. In compiled code (a model traced into
a train step or inference module) the kernel clamps every id into [0, n - 1]: an id below 0
reads row 0, an id >= n reads row n - 1, and the gradient goes to that same row, so no kernel
ever reads outside the table. Before that, the compiled module checks the ids it can: the
trace records each data input used as ids (values in [0, n)), and ids made by
ops.positions from a sequence length T (start + T <= n: a symbolic T gets a largest size, a
runtime start a range), and every call is checked against them (runtime/modules.py).
"""

import contextlib
import inspect

import numpy as np

from .._tvm import IRBuilder, te, tir_builder, tirx
from ..op import INT32_ELEMENTS, Op
from ..tensor import Tensor, current_trace
from ._dims import dims, show, static


def _clamped(idx, i, n):
    """idx(*i) clamped into [0, n-1] (in the id's own dtype, so no overflow), then int32 for
    indexing (int64 for a table of more than 2^31 rows). n may be symbolic (a table whose
    rows are the batch)."""
    return _clamp_id(idx(*i), str(idx.dtype), n)


INT32_MAX = INT32_ELEMENTS - 1


def _clamp_id(value, dtype, n):
    if dtype in ("int8", "int16", "uint8", "uint16"):
        # widened first: n - 1 may not fit (int8 ids of a 300-row table: "Literal value 299
        # exceeds range of int8" from TVM)
        value, dtype = value.astype("int32"), "int32"
    lo = tirx.const(0, dtype)
    hi = tirx.const(n - 1, dtype) if isinstance(n, int) else (n - 1).astype(dtype)
    # int32 indexes a table of up to 2^31 rows; past them int64 (as int32, id 2^32 + 5 read
    # row 5 and id 2^31 crashed the process)
    wide = isinstance(n, int) and n > INT32_MAX
    return te.max(te.min(value, hi), lo).astype("int64" if wide else "int32")


def _axis(axis, ndim, name):
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} out of range for a {ndim}-d input")
    return axis % ndim


def _check_ids(name, ids, n, what="id", ignored=None):
    """ValueError naming the first id out of [0, n) (`ignored`, e.g. cross_entropy's
    ignore_index, is no id: it is skipped)."""
    ids = np.asarray(ids)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"{name}: {what}s must be integers (int32 or int64), got {ids.dtype}")
    counted = ids if ignored is None else ids[ids != ignored]
    if counted.size:
        lo, hi = int(counted.min()), int(counted.max())
        if lo < 0 or hi >= n:
            bad = lo if lo < 0 else hi
            where = tuple(int(v) for v in np.argwhere(ids == bad)[0])
            also = "" if ignored is None else f" (or {ignored}, which is ignored)"
            raise ValueError(f"{name}: {what} {bad} at position {where} is out of range: the "
                             f"valid range is 0..{n - 1}{also}")


class _IndexOp(Op):
    """An op whose integer input (position `ids_at`) indexes an axis of size `size(arrays,
    attrs)`: eagerly the ids are checked before any kernel runs."""

    def __init__(self, fn, ids_at, size, what="id", reads=True, ignored=None):
        super().__init__(fn)
        self._ids_at, self._size, self._what = ids_at, size, what
        self._reads = reads  # the ids select rows to read (not one_hot's): bound calls
        self._ignored = ignored  # the attribute naming an id value that is skipped, if any

    def _check(self, arrays, attrs):
        arrays = [np.asarray(a) for a in arrays]
        if len(arrays) > self._ids_at:
            ignored = None
            if self._ignored is not None:
                ignored = attrs.get(self._ignored, inspect.signature(self.fn).parameters[
                    self._ignored].default)
            _check_ids(self.name, arrays[self._ids_at], self._size(arrays, attrs), self._what,
                       ignored)

    def eager(self, *arrays, **attrs):
        self._check(arrays, attrs)
        return super().eager(*arrays, **attrs)

    def vjp(self, dy, *arrays, derived=None, **attrs):
        self._check(arrays, attrs)
        return super().vjp(dy, *arrays, derived=derived, **attrs)

    def _emit(self, inputs, attrs):
        ids = inputs[self._ids_at] if len(inputs) > self._ids_at else None
        trace = current_trace()
        if self._reads and isinstance(ids, Tensor) and trace is not None:
            n = self._size(inputs, attrs)
            if isinstance(n, int):  # a table of a symbolic size (rows are the batch): none
                _record_bounds(self.name, trace, ids, n)
        return super()._emit(inputs, attrs)

    def unchecked(self, *arrays, **attrs):
        """The forward kernel on numpy arrays without the eager id check: what compiled code
        does with out-of-range ids (clamps them). For tests of that behaviour."""
        return super().eager(*arrays, **attrs)


def _record_bounds(name, trace, ids, n):
    """Record in `trace` what calls must satisfy for `ids` to index n rows in range: a data
    input's values in [0, n); positions start..start+T-1 (ops.positions, its `counts`) within
    n rows: T <= n - start for a symbolic T and a constant start (a trace-time error for a
    constant T), start in [0, n - T] for a runtime start (a data input) and a constant T."""
    source = trace.input_name(ids)
    if source is not None:
        trace.bound("id_ranges", source, n)
    length, start = getattr(ids, "counts", (None, None))
    if length is None:
        return
    if not isinstance(start, Tensor):  # a constant start
        first = int(np.asarray(start))
        if isinstance(length, int):
            if first + length > n:
                raise ValueError(f"{name}: positions {first}..{first + length - 1} index a "
                                 f"table of {n} rows (0..{n - 1})")
        elif isinstance(getattr(length, "name", None), str):
            trace.bound("max_sizes", length.name, n - first)
    elif isinstance(length, int):
        source = trace.input_name(start)
        if source is not None:  # start in [0, n - length]: values below n - length + 1
            trace.bound("id_ranges", source, n - length + 1)


def _index_op(ids_at, size, what="id", reads=True, ignored=None):
    return lambda fn: _IndexOp(fn, ids_at, size, what, reads, ignored)


# ---- take ------------------------------------------------------------------------------------
def _take_te(x, idx, axis, name):
    a = _axis(axis, len(x.shape), name)
    n, k = dims(x.shape)[a], len(idx.shape)
    shape = (*x.shape[:a], *idx.shape, *x.shape[a + 1:])
    if "int" not in str(idx.dtype):
        raise TypeError(f"{name}: indices must be integers (int32 or int64), got {idx.dtype}")
    if isinstance(n, int) and n == 0:
        raise ValueError(f"{name}: cannot take from an empty axis {a} of {show(x.shape)}")
    return te.compute(shape, lambda *i: x(*i[:a], _clamped(idx, i[a:a + k], n), *i[a + k:]),
                      name=name)


def _scatter_add(dy, x, idx, axis, skip=None, name="take_grad"):
    """dx[.., r, ..] = sum over id positions p with clamp(idx[p]) == r of dy[.., p, ..].

    A loop nest (te.extern): dx zeroed, then each id position adds its row of dy into the row
    its id names, O(dy.size). As a TE reduction every element of dx scanned every id,
    O(x.size * idx.size): the char Transformer's embedding gradient (103 x 128 table, 1024 ids)
    was a 27 MFLOP one-hot GEMM, 273-393 us on one core; a 50k-word vocabulary would make it
    13 GFLOP a step. The positions run in order, so the sums keep the ids' order (each row's
    additions are those of the serial loop, deterministic). `skip`: a row that gets no
    gradient (Embedding's padding_idx)."""
    a = _axis(axis, len(x.shape), "take")
    n = dims(x.shape)[a]

    def body(ins, outs):
        grad, ids, out = (tir_builder.buffer_proxy(b) for b in (ins[0], ins[1], outs[0]))
        # The builder's root takes one statement: a unit loop holds the two nests (seq_scope
        # would add a pragma LLVM warns about on every build); lowering removes it.
        with IRBuilder() as builder, tir_builder.serial(0, 1):
            with _loops(x.shape) as e:
                out[tuple(e)] = tirx.const(0, dy.dtype)
            # outer axes, then the id positions, then the row (the axes after `a`)
            with _loops((*x.shape[:a], *idx.shape)) as op:
                o, p = op[:a], op[a:]
                row = _clamp_id(ids[tuple(p)], str(idx.dtype), n)
                with _when(None if skip is None else row != skip), \
                        _loops(x.shape[a + 1:]) as j:
                    at = (*o, row, *j)
                    out[at] = out[at] + grad[(*o, *p, *j)]
        return builder.get()

    return te.extern([x.shape], [dy, idx], body, dtype=[str(dy.dtype)], name=name)


@contextlib.contextmanager
def _when(condition):
    """The body under `condition` in an IRBuilder (unconditionally for None)."""
    if condition is None:
        yield
        return
    with tir_builder.If(condition), tir_builder.Then():
        yield


@contextlib.contextmanager
def _loops(extents):
    """Serial loops over `extents` in an IRBuilder, as a list of their variables (none for no
    extents: the body once)."""
    if not extents:
        yield []
        return
    with tir_builder.grid(*extents) as v:
        yield [v] if isinstance(v, tirx.Var) else list(v)


@_index_op(1, lambda arrays, attrs: arrays[0].shape[_axis(attrs.get("axis", 0),
                                                            arrays[0].ndim, "take")], "index")
def take(x, indices, axis=0):
    """Gather along `axis`: out[..., p, ...] = x[..., indices[p], ...] (numpy.take, and
    torch.index_select for 1-d indices). Indices int32 or int64, of any shape: the output
    shape is x.shape[:axis] + indices.shape + x.shape[axis+1:]. Out-of-range indices: see
    the module docstring (an error eagerly, clamped in compiled code)."""
    return _take_te(x, indices, axis, "take")


@take.grad
def _(dy, x, indices, axis=0):
    return [_scatter_add(dy, x, indices, axis), None]


# ---- embedding -------------------------------------------------------------------------------
def _padding_row(padding_idx, n):
    if padding_idx is None:
        return None
    if not -n <= padding_idx < n:
        raise ValueError(f"embedding: padding_idx {padding_idx} out of range for {n} rows")
    return padding_idx % n


@_index_op(1, lambda arrays, attrs: arrays[0].shape[0])
def embedding(weight, ids, padding_idx=None):
    """weight [num, dim], ids [...] int32/int64 -> [..., dim] (torch.nn.functional.embedding).
    The row `padding_idx` is read as is but receives no gradient."""
    if len(weight.shape) != 2:
        raise ValueError(f"embedding: weight must be [num, dim], got {show(weight.shape)}")
    _padding_row(padding_idx, static(weight.shape[0], "embedding", "the number of rows"))
    return _take_te(weight, ids, 0, "embedding")


@embedding.grad
def _(dy, weight, ids, padding_idx=None):
    skip = _padding_row(padding_idx, static(weight.shape[0], "embedding", "the number of rows"))
    return [_scatter_add(dy, weight, ids, 0, skip=skip, name="embedding_grad"), None]


# ---- one_hot ---------------------------------------------------------------------------------
@_index_op(0, lambda arrays, attrs: attrs["depth"], "class id", reads=False)
def one_hot(indices, depth, dtype="float32"):
    """indices [...] -> [..., depth], 1 at each index, 0 elsewhere (no gradient: the input is
    integer). Compiled code with an out-of-range id gives an all-zero row (no read involved)."""
    if "int" not in str(indices.dtype):
        raise TypeError(f"one_hot: indices must be integers, got {indices.dtype}")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)
    return te.compute((*indices.shape, int(depth)), lambda *i: te.if_then_else(
        # compared as int64: i cast to an int8 id wrapped (depth 300: id 5 also hit 261)
        indices(*i[:-1]).astype("int64") == i[-1].astype("int64"), one, zero), name="one_hot")
