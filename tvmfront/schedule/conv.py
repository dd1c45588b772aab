"""Sliding windows with a stride: the gather-form gradients of strided convolutions and
pooling, which index through ``v // s`` and ``v % s``.

Such an axis is split by s, with the remainder loop unrolled innermost, so that every index
becomes affine (no integer division per element). Spatial blocks (a strided gradient's
dilated copy) use _schedule_spatial_split; reductions (pooling's and convolution's gathered
gradients) use the split in reductions._plain_reduction. Convolution forward is a
contraction, register-tiled like a GEMM: see gemm.py.
"""

import math

from .._tvm import tirx
from .analysis import _walk_expr
from .loops import _parallel_worth_it, _parallelize, _vector_factor


def _index_divisors(stmt, variables):
    """{var index: d} for spatial variables used under floordiv/floormod by a constant d
    (gather-form gradients of strided windows). Splitting such an axis by d and unrolling
    the remainder turns those indices affine."""
    position = {v.name: k for k, v in enumerate(variables)}
    found = {}

    def visit(e):
        if isinstance(e, (tirx.FloorDiv, tirx.FloorMod)) and isinstance(e.b, tirx.IntImm):
            d = int(e.b.value)
            if d > 1:
                for x in tirx.analysis.undefined_vars(e.a):
                    if x.name in position:
                        k = position[x.name]
                        found[k] = math.lcm(found.get(k, 1), d)

    _walk_expr(stmt.body.value if isinstance(stmt.body, tirx.BufferStore) else stmt.body, visit)
    return found


def _split_divisors(info):
    """{axis: d} for the spatial axes a block reads through floordiv/floormod by d and that d
    tiles (a strided gradient's dilated copy, pooling's gather-form gradient)."""
    return {k: d for k, d in _index_divisors(info.stmt, info.vars).items()
            if info.kinds[k] == "S" and k not in info.symbolic and info.extents[k] % d == 0
            and info.extents[k] > d}


def _split_by_divisors(sch, info, divisors):
    """(outer, inner, reduction loops) of a block: each axis k of `divisors` split by its
    divisor into an outer and an inner loop; other spatial loops are outer."""
    outer, inner, red = [], [], []
    for k, loop in enumerate(info.loops):
        if info.kinds[k] == "R":
            red.append(loop)
        elif k in divisors:
            o, i = sch.split(loop, factors=[None, divisors[k]])
            outer.append(o)
            inner.append(i)
        else:
            outer.append(loop)
    return outer, inner, red


def _schedule_spatial_split(sch, info, divisors, params):
    """Axes read as v // d or v % d are split by d, the remainders unrolled innermost: every
    index becomes affine in the loops (no integer division per element)."""
    outer, inner, _ = _split_by_divisors(sch, info, divisors)
    notes = ["split " + "x".join(str(divisors[k]) for k in sorted(divisors)), "unrolled"]
    # The last outer loop (a window column) is vectorized under the unrolled remainders: its
    # accesses stride by the divisor, so each vector load or store is a strided gather that
    # LLVM assembles from shuffles. Max-pool's gradient at 28x28 (14 columns) went 7x
    # faster, at 4x4 (2 columns) 2x; where the columns fill whole vectors (8 at 16x16) LLVM
    # vectorizes the scalar loop itself, faster (18 vs 26 us).
    vec = None
    last = len(info.loops) - 1
    lanes = params.lanes(info.dtype)
    columns = info.extents[last] // divisors.get(last, 1)
    if last in divisors and last not in info.symbolic and columns % lanes:
        vec = _vector_factor(columns, lanes)
    if vec is not None:
        column, vector = sch.split(outer[-1], factors=[None, vec])
        outer[-1] = column
        sch.reorder(*outer, *inner, vector)
        sch.vectorize(vector)
        notes.append(f"v{vec}")
    elif last in divisors and len(inner) > 1 and len(info.reads) == 1:
        # A dilated copy of one source (a 1x1 stride-s conv's d/dx: s*s - 1 of the remainders
        # are zeros): the rows' remainders (unrolled) outside the column loop, which LLVM then
        # vectorizes as one row at a time: interleaved stores of the source and zeros, and
        # whole rows of zeros. 1x1 16->32 @32 s2 d/dx 1286 -> 280 us; with four sources (3x3
        # s2) this order was slower, so those keep theirs.
        sch.reorder(*outer[:-1], *inner[:-1], outer[-1], inner[-1])
        outer = outer[:-1]  # the column loop now runs inside the rows' remainders
        notes.append("rows")
    else:
        sch.reorder(*outer, *inner)
    for loop in inner:
        sch.unroll(loop)
    # strided vectors are assembled lane by lane: parallel as for scalar loops
    if _parallel_worth_it(info, 1, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    return f"spatial[{', '.join(notes)}]"
