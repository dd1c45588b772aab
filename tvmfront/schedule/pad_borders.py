"""A zero padding placed inside a loop (a conv's padded input per image or per block of rows,
gemm._pad_per_iteration and _decompose_pad), written once: its innermost loop, the padded
columns, partitioned into the left border, the interior and the right border. The borders
store zeros; the interior copies the rows in range, its guard now the row's alone (the
columns' is proven by the partition's range), one branch per row around a vector copy.

decompose_padding's form, the one before and still where this does not apply, zero-fills the
whole block and then copies the interior over it: every element stored twice. One AVX-512
core, a 3x3 conv padded per block of 4 rows (b32 64->32 @28, the shape of 32->64's d/dx):
without the fill 1.035x faster (its border then wrong, timing only), with the borders apart
1.025x. Small blocks keep the fill (params.PAD_BORDERS_MIN_BYTES).
"""

import math

from .._tvm import tvm
from .analysis import _const
from .params import PAD_BORDERS_MIN_BYTES, _dtype_bits

IF_THEN_ELSE = "if_then_else"


def _copy_with_borders(sch, pad, inner):
    """Partition the padding block `pad`'s innermost loop (`inner`: its loops inside the loop
    it was placed in, outermost first) into its left border, interior and right border, the
    interior a vector loop. Returns the names of the blocks made, or None (nothing done) for
    a copy under PAD_BORDERS_MIN_BYTES or a loop that does not run from the first column of a
    padded axis copied along it (_column_parts): the caller decomposes the padding then."""
    parts = _column_parts(sch, pad, inner[-1])
    size = math.prod(_const(sch.get(lp).extent) or 0 for lp in inner) * \
        _dtype_bits(sch.get(pad).writes[0].source.dtype) // 8
    if parts is None or size < PAD_BORDERS_MIN_BYTES:
        return None
    before, width, after = parts
    factors = [f for f in (before, width) if f] if after else [before] if before else []
    loops = sch.loop_partition(inner[-1], factors=factors) if factors else [inner[-1]]
    sch.vectorize(loops[1] if before else loops[0])
    return [sch.get(b).name_hint for lp in loops for b in sch.get_child_blocks(lp)] or None


def _column_parts(sch, pad, columns):
    """(left padding, source columns, right padding) the loop `columns` of the padding block
    `pad` runs over, from the first column of its last axis (all of them, or fewer: a
    stride-2 window reads 15 of 14 + 2 x 1), where the block stores if_then_else(cond,
    src[..., v - left], 0) at [..., v] (v the last axis); else None."""
    stmt = sch.get(pad)
    store = stmt.body
    if not isinstance(store, tvm.tirx.BufferStore) or not store.indices:
        return None
    value = store.value
    if not (isinstance(value, tvm.ir.Call) and
            str(getattr(value.op, "name", "")).endswith(IF_THEN_ELSE)):
        return None
    _, then, other = value.args
    if not isinstance(then, tvm.ir.TensorLoad) or not isinstance(other, tvm.tirx.FloatImm) \
            or other.value != 0 or not then.indices:
        return None
    last = stmt.iter_vars[-1].var
    if not store.indices[-1].same_as(last):
        return None
    coeffs = tvm.sym.detect_linear_equation(then.indices[-1], [last])
    if len(coeffs) != 2 or _const(coeffs[0]) != 1 or _const(coeffs[1]) is None:
        return None
    before = -_const(coeffs[1])
    padded, width = _const(store.buffer.shape[-1]), _const(then.source.shape[-1])
    extent = _const(sch.get(columns).extent)
    if None in (padded, width, extent) or before < 0 or padded - width - before < 0 or \
            extent > padded or extent <= before or \
            _const(sch.get(columns).min) not in (0, None):
        return None
    width = min(width, extent - before)
    after = extent - before - width
    if not (before or after):
        return None
    return before, width, after
