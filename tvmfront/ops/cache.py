"""Ops for autoregressive decoding: token positions, and a key/value cache written and read
at a runtime position.

`pos` is always a 0-d integer TENSOR (a runtime input of the compiled decode step), never an
attribute: one compiled step serves every position. A cache is [..., Tmax, D] (rows are
positions); the ops write rows pos..pos+S-1 and mask keys a query may not see. Rows that
would fall outside the cache are dropped, never read or written out of bounds (the caller,
tvf.generate, refuses a position past the context before it gets here).
"""

from .._tvm import te, tirx
from ..op import Op, op
from ._dims import same, same_shape, show


def _pos(pos, name):
    if len(pos.shape) != 0 or "int" not in str(pos.dtype):
        raise TypeError(f"{name}: pos must be a 0-d integer tensor (a runtime position), got "
                        f"{show(pos.shape)} {pos.dtype}")
    return pos().astype("int64")


def _i64(v):
    """An index or extent as int64 (static extents are int32, symbolic ones int64)."""
    return v.astype("int64")


class _Positions(Op):
    """positions' output remembers what it counts, `counts` = (T, start): an index op that
    reads a table with it bounds T or start (ops/index.py's _record_bounds)."""

    def _emit(self, inputs, attrs):
        out = super()._emit(inputs, attrs)
        out.counts = (inputs[0].shape[-1] if inputs[0].shape else None, inputs[1])
        return out


@_Positions
def positions(ids, start):
    """ids [..., T] (only T is read), start 0-d int -> [T] int64: start, start+1, ...,
    start+T-1 (torch.arange(start, start + T)): the position ids of a block of tokens that
    begins at `start`, for a learned positional embedding. No gradient (integer output)."""
    if len(ids.shape) < 1:
        raise ValueError(f"positions: ids must be [..., T], got {show(ids.shape)}")
    first = _pos(start, "positions")
    return te.compute((ids.shape[-1],), lambda t: first + _i64(t), name="positions")


@op
def cache_write(cache, new, pos):
    """cache [..., Tmax, D] with rows pos..pos+S-1 replaced by new [..., S, D] (the leading
    dims equal): the functional form of `cache[..., pos:pos+S, :] = new`. Rows of `new` past
    Tmax are dropped. Gradient: dy outside the written rows to the cache, the written rows of
    dy to new (zero for dropped rows); pos gets none."""
    if len(cache.shape) < 2 or len(new.shape) != len(cache.shape) \
            or not same_shape(cache.shape[:-2], new.shape[:-2]) \
            or not same(cache.shape[-1], new.shape[-1]):
        raise ValueError(f"cache_write expects cache [..., Tmax, D] and new [..., S, D] with "
                         f"the same leading dims and D, got {show(cache.shape)} and "
                         f"{show(new.shape)}")
    if cache.dtype != new.dtype:
        raise TypeError(f"cache_write: cache is {cache.dtype}, new is {new.dtype}")
    at, s = _pos(pos, "cache_write"), _i64(new.shape[-2])

    one = isinstance(new.shape[-2], tirx.IntImm) and int(new.shape[-2]) == 1

    def body(*i):
        r = _i64(i[-2]) - at  # row of `new` landing on cache row i[-2]
        # one row (a decode step): read it at a constant index, so no read goes through pos
        # and the kernel stays injective, fusable with the slice of the layer it writes into
        row = 0 if one else r
        return te.if_then_else(tirx.all(r >= 0, r < s), new(*i[:-2], row, i[-1]), cache(*i))

    return te.compute(cache.shape, body, name="cache_write")


@cache_write.grad
def _(dy, cache, new, pos):
    at, s = _pos(pos, "cache_write"), _i64(new.shape[-2])
    tmax = _i64(cache.shape[-2])
    zero = tirx.const(0, dy.dtype)

    def dcache(*i):
        r = _i64(i[-2]) - at
        return te.if_then_else(tirx.all(r >= 0, r < s), zero, dy(*i))

    def dnew(*i):
        row = _i64(i[-2]) + at
        return te.if_then_else(tirx.all(row >= 0, row < tmax), dy(*i[:-2], row, i[-1]), zero)

    return [te.compute(cache.shape, dcache, name="cache_write_dcache"),
            te.compute(new.shape, dnew, name="cache_write_dnew"), None]


@op
def cache_pad(new, length=1):
    """new [..., T, D] -> [..., length, D]: rows past T are zero (a fresh cache holding the
    prompt's keys or values; rows past `length` are dropped). Gradient: the first T rows."""
    if len(new.shape) < 2:
        raise ValueError(f"cache_pad expects [..., T, D], got {show(new.shape)}")
    if int(length) < 1:
        raise ValueError(f"cache_pad: length must be >= 1, got {length}")
    t = _i64(new.shape[-2])
    zero = tirx.const(0, new.dtype)
    return te.compute((*new.shape[:-2], int(length), new.shape[-1]), lambda *i: te.if_then_else(
        _i64(i[-2]) < t, new(*i), zero), name="cache_pad")


@cache_pad.grad
def _(dy, new, length=1):
    zero = tirx.const(0, dy.dtype)
    return [te.compute(new.shape, lambda *i: te.if_then_else(
        _i64(i[-2]) < int(length), dy(*i), zero), name="cache_pad_grad")]


@op
def cache_mask(scores, pos, value=float("-inf")):
    """scores [..., S, Tmax] of S queries at positions pos..pos+S-1 against every cache row,
    with `value` where key j comes after query i (j > pos + i): the cache rows not yet written
    and the future. At pos = 0 and S = Tmax it is causal_fill. Gradient: dy where kept."""
    if len(scores.shape) < 2:
        raise ValueError(f"cache_mask expects [..., S, Tmax], got {show(scores.shape)}")
    at, fill = _pos(pos, "cache_mask"), tirx.const(value, scores.dtype)
    return te.compute(scores.shape, lambda *i: te.if_then_else(
        _i64(i[-1]) > _i64(i[-2]) + at, fill, scores(*i)), name="cache_mask")


@cache_mask.grad
def _(dy, scores, pos, value=float("-inf")):
    at, zero = _pos(pos, "cache_mask"), tirx.const(0, dy.dtype)
    return [te.compute(scores.shape, lambda *i: te.if_then_else(
        _i64(i[-1]) > _i64(i[-2]) + at, zero, dy(*i)), name="cache_mask_grad"), None]
