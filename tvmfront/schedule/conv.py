"""Sliding windows with a stride: the gather-form gradients of strided convolutions and
pooling, which index through ``v // s`` and ``v % s``.

Such an axis is split by s, with the remainder loop unrolled innermost, so that every index
becomes affine (no integer division per element). Spatial blocks (a strided gradient's
dilated copy) use _schedule_spatial_split; reductions (pooling's and convolution's gathered
gradients) use the split in reductions._plain_reduction. Convolution forward is a
contraction, register-tiled like a GEMM: see gemm.py.
"""

import math

from .._tvm import arith, structural_equal, tirx
from ..autodiff import MATERIALIZED
from .analysis import _const, _has_if_then_else, _walk_block_exprs, _walk_expr
from .failures import _probe
from .params import SPLIT_MAX_DIVISOR, STACK_MAX_BYTES, _dtype_bits
from .loops import _parallel_worth_it, _parallelize, _vector_factor, _vectorize_innermost
from . import window_blocks


def _index_divisors(stmt, variables, analyzer=None):
    """{var index: d} for spatial variables used under floordiv/floormod by a constant d
    (gather-form gradients of strided windows). Splitting such an axis by d and unrolling
    the remainder turns those indices affine. With `analyzer` (the block's variable ranges)
    each division is simplified first (see _split_divisors)."""
    position = {v.name: k for k, v in enumerate(variables)}
    found = {}

    def visit(e):
        d = _constant_divisor(e)
        if d is None:
            return
        if analyzer is not None:
            simple = analyzer.simplify(e)
            d = _constant_divisor(simple)
            if d is None:  # an identity within the block
                return
            if d > SPLIT_MAX_DIVISOR and not structural_equal(simple, e):
                return  # a reshape's rows (i // T of [B * T, E] reading [B, T, E])
            e = simple
        for x in tirx.analysis.undefined_vars(e.a):
            if x.name in position:
                k = position[x.name]
                found[k] = math.lcm(found.get(k, 1), d)

    _walk_block_exprs(stmt, visit)
    return found


def _constant_divisor(e):
    """d for a floordiv or floormod of e by a constant d > 1, else None."""
    if isinstance(e, (tirx.FloorDiv, tirx.FloorMod)) and isinstance(e.b, tirx.IntImm) \
            and int(e.b.value) > 1:
        return int(e.b.value)
    return None


def _split_divisors(info):
    """{axis: d} for the spatial axes a block reads through floordiv/floormod by d and that d
    tiles (a strided gradient's dilated copy, pooling's gather-form gradient, dropout's four
    words per Philox block).

    Each division is first simplified within the block's domain: a kernel that reaches its
    operands through a reshape indexes them by the flattened position, cut again, as in
    ((j // 128 + i) % 1024) // 64 and (j % 128) // 4 over [1024, 128] (i // 64 and j // 4
    within it), and the wrap-arounds that are identities there had hidden the divisor of 4
    that dropout's words need under the least common multiple (the char Transformer's
    dropout-then-reshape kernels ran scalar, each Philox block computed four times). A
    divisor that the simplification reveals (a reshape's) splits only up to
    SPLIT_MAX_DIVISOR; one written in the index itself (a pooling window of 16) as before."""
    found = _index_divisors(info.stmt, info.vars, info.analyzer)
    return {k: d for k, d in found.items()
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
    index becomes affine in the loops (no integer division per element). Rows of windows
    narrower than a vector are vectorized by blocks of windows (window_blocks.py)."""
    last = len(info.loops) - 1
    if last in divisors:
        blocks = window_blocks._window_blocks(sch, info, divisors,
                                              _window_operands(info, divisors[last]), params)
        if blocks:
            return blocks
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
    if last in divisors and last not in info.symbolic and \
            (columns % lanes or _shifted_column_reads(info, last, divisors[last])):
        vec = _vector_factor(columns, lanes)
    axes = [k for k in range(len(info.loops)) if info.kinds[k] == "S"]  # outer's axes
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
        before = len(outer)
        # A deinterleaved copy is placed per plane: only the loops over planes are fused (one
        # fused with the rows would leave no plane loop to place it at).
        head = outer if vec is None else [lp for lp, k in zip(outer, axes) if k < last - 1]
        fused, note = _parallelize(sch, head, params)
        outer = fused + outer[len(head):]
        if note:
            notes.append(note)
            axes = axes[before - len(outer):]  # the fused head: its last axis
    extended = _extensions_per_plane(sch, info, outer, axes, lanes)
    if extended:
        notes.append(f"{'+'.join(extended)} per plane")
    if vec is not None:
        planes = _deinterleave_window_reads(sch, info, divisors[last], outer, axes, lanes)
        if planes:
            notes.append(f"deinterleaved {'+'.join(planes)}")
    return f"spatial[{', '.join(notes)}]"


def _extensions_per_plane(sch, info, outer, axes, lanes):
    """Compute each zero-extended copy the gather reads (ops/pool._window_gather's dy and
    first-max positions, autodiff.MATERIALIZED) per plane, inside the gather's loop over
    the planes, into a buffer in cache: its fill and copy cost a pass over the whole tensor
    each otherwise (max-pool k3 s2 p1's gradient at b32 64@28, one Ice Lake core: 2.8 ms
    with both copies whole, 1.34 ms per plane, as much as the unsafe clamped reads took).
    Returns the names of the copies placed."""
    plane_axis = len(info.loops) - 3
    head = [lp for lp, k in zip(outer, axes) if k <= plane_axis]
    if not head:
        return []
    placed = []
    for producer in sch.get_producers(info.block):
        stmt = sch.get(producer)
        if MATERIALIZED not in stmt.annotations or not _has_if_then_else(stmt):
            continue
        try:
            sch.compute_at(producer, head[-1], preserve_unit_loops=True)
            loops = list(sch.get_loops(producer))
            at = next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(head[-1])))
            own = loops[at + 1:]
            fill = sch.decompose_padding(producer, own[-2])
            for block in (fill, producer):
                _vectorize_innermost(sch, block, lanes)
        except Exception as err:  # noqa: BLE001 - TVM's own check: the copy stays whole
            _probe(f"extended copy {stmt.name_hint} per plane", err)
            continue
        placed.append(stmt.name_hint)
    return placed


def _window_operands(info, d):
    """Read indices of the operands shaped like the block and read at window columns with a
    stride of d (max-pool's x in its gradient)."""
    return [index for index, region, _ in info.reads
            if [_const(n) for n in region.source.shape] == info.extents
            and _strided_by(region.region[-1].min, info.vars, info.extents, d)]


def _shifted_column_reads(info, last, d):
    """Whether a read's column index is not v // d at some remainder v < d (a part read one
    column on, part[v // d + 1], as in a derived strided gradient's interleave once the
    padding's crop is inlined: dx[i] = part[(i + 1) // 2]), or at column 0 already (a padded
    pooling's gradient reads dy[(j + 1) // 2 - 1]). LLVM vectorizes such a loop itself with
    gathers (4 parts interleaved into 64x16x32x32: 4.3 ms, against 0.1 ms with the columns
    vectorized here and the remainders unrolled outside them), or not at all (max-pool k3 s2
    p1's gradient at b32 16@32: 1461 us, against 343 us vectorized here)."""
    for _, region, _ in info.reads:
        if not region.region:  # a 0-d buffer (dropout's counter): the same at every column
            continue
        index = region.region[-1].min
        if not _divides(index, d):  # read at the column itself (max-pool's x): not a part
            continue
        for r in range(d):  # the index at column r < d, every other variable 0
            analyzer = arith.Analyzer()
            for k, var in enumerate(info.vars):
                analyzer.bind(var, tirx.const(r if k == last else 0, str(var.ty)))
            if _const(analyzer.simplify(index)) != 0:
                return True
    return False


def _divides(index, d):
    """Whether `index` divides something by d (floordiv)."""
    found = [False]

    def visit(e):
        if isinstance(e, tirx.FloorDiv) and _constant_divisor(e) == d:
            found[0] = True

    _walk_expr(index, visit)
    return found[0]


# A window operand is copied per plane (see _deinterleave_window_reads) up to this size: a
# plane stays in the L1 data cache between its copy and its reads.
DEINTERLEAVE_MAX_PLANE_BYTES = 16 << 10


def _deinterleave_window_reads(sch, info, d, outer, axes, lanes):
    """Operands the vectorized window columns read with a stride of d (max-pool's input in
    its gradient: x[.., 2 * jo + e] for the column jo of vector lanes) are first copied, one
    plane (the last two axes) at a time, into a local buffer laid out [.., w % d, w // d],
    which the vector loop then reads contiguously. TVM assembles a strided vector lane by
    lane (a scalar load and an insert per lane); the copy loads whole rows, and LLVM turns
    the lanes it scatters into the local rows into shuffles. The copy is made per block of
    window rows where that fits on the stack, else per plane (_place_window_copy). `outer`
    are the block's outer loops after the parallel fusion, `axes` the last block axis each
    runs over. Returns the names of the operands copied."""
    # the loop over the planes: the innermost outer loop over axes before the rows
    rows = len(info.loops) - 2
    plane = next((lp for lp, k in reversed(list(zip(outer, axes))) if k < rows), None)
    if plane is None or rows < 1:
        return []
    row_block = next((lp for lp, k in zip(outer, axes) if k == rows), None)
    copied = []
    for index, region, _ in info.reads:
        source = region.source
        if len(source.shape) != len(info.vars) or not _plane_fits(source, d):
            continue
        if not _strided_by(region.region[-1].min, info.vars, info.extents, d):
            continue
        try:
            local = sch.cache_read(info.block, index, "global")
            _place_window_copy(sch, local, row_block, plane)
            _deinterleave(sch, local, d, lanes)
        except Exception as err:  # noqa: BLE001 - TVM's own check: keep the strided reads
            _probe(f"deinterleaved copy of {source.name}", err)
            continue
        copied.append(source.name)
    return copied


def _place_window_copy(sch, copy, row_block, plane):
    """Compute the deinterleaved copy per block of window rows (`row_block`: the loop over
    those blocks, or None) where that copy fits on the stack (STACK_MAX_BYTES), else per
    plane. On the stack LLVM keeps the rows in registers and deinterleaves them with
    shuffles; a plane's copy (1 KiB at 16x16) was a workspace allocation per plane. Max-pool
    k2 gradients on one AVX-512 core, new/old paired: LeNet's 6@16 0.86x (21.8 -> 20.3 us),
    16@4 0.91x, 64@28 b32 0.74x (311 -> 263 us)."""
    if row_block is not None:
        trial = sch.copy()  # a block computed at a loop cannot move out to another
        trial.compute_at(copy, row_block)
        if _bytes_under(trial, copy, row_block) < STACK_MAX_BYTES:
            sch.compute_at(copy, row_block)
            return
    sch.compute_at(copy, plane)


def _bytes_under(sch, block, loop):
    """Bytes `block` writes per iteration of `loop` (one of its loops): its loops inside."""
    loops = [sch.get(lp) for lp in sch.get_loops(block)]
    inside = loops[next(k for k, lp in enumerate(loops) if lp.same_as(sch.get(loop))) + 1:]
    elements = math.prod(_const(lp.extent) or STACK_MAX_BYTES for lp in inside)
    return elements * _dtype_bits(sch.get(block).writes[0].source.dtype) // 8


def _plane_fits(source, d):
    """Whether `source`'s planes (its last two axes) are static, their columns split evenly
    into d phases, and one fits DEINTERLEAVE_MAX_PLANE_BYTES (a deinterleaved copy per
    plane)."""
    plane = [_const(n) for n in source.shape[-2:]]
    return None not in plane and plane[1] % d == 0 and \
        plane[0] * plane[1] * _dtype_bits(source.dtype) // 8 <= DEINTERLEAVE_MAX_PLANE_BYTES


def _column_values(index, variables, extents):
    """The values of `index` (over the block variables, the column last) along the column,
    the other variables at 0; None where one is not a constant."""
    column, values = variables[-1], []
    for j in range(extents[-1]):
        analyzer = arith.Analyzer()
        for var in variables:
            analyzer.bind(var, tirx.IntImm(var.ty.dtype, j if var.same_as(column) else 0))
        values.append(_const(analyzer.simplify(index)))
    return None if None in values else values


def _strided_by(index, variables, extents, d):
    """Whether `index` steps by d whenever the column steps by d: d * jo plus a function of
    the remainder r, for j = d * jo + r (a window element's column in a gather-form
    gradient)."""
    values = _column_values(index, variables, extents)
    return values is not None and all(values[j + d] - values[j] == d
                                      for j in range(len(values) - d))


def _deinterleave(sch, block, d, lanes):
    """Lay a plane copy's buffer (its block: `block`) out as [.., w % d, w // d] and schedule
    it: rows unrolled, columns vectorized. Each lane's place in the plane is then a
    constant, which LLVM needs to see the scattered lanes as shuffles of whole vectors (a
    row loop ran 2.7x slower)."""
    _deinterleaved_layout(sch, block, d)
    _vectorize_innermost(sch, block, lanes)
    sch.unroll(sch.get_loops(block)[-2])


def _deinterleaved_layout(sch, block, d):
    """The buffer `block` writes laid out [.., w % d, w // d] (its last axis deinterleaved)."""
    ndim = len(sch.get(block).writes[0].region)
    sch.transform_layout(block, ("write", 0), lambda *idx: [
        *idx[:ndim - 1], idx[ndim - 1] % d, idx[ndim - 1] // d])
