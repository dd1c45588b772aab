"""Reductions with no vectorizable output axis: pooling, gather-form gradients of windows,
row reductions (a loss, softmax's sums).

A reduction with no vectorizable axis gets a tile of independent scalar accumulators (the
GEMM rule without vectors); a gather-form gradient indexed through ``// k`` and ``% k`` has
those axes split by ``k`` so that the indices become affine, with the small inner loops
unrolled (_plain_reduction).
"""

import math

from .params import PLAIN_PARALLEL_PENALTY, UNROLL_MAX_BODY
from .failures import NotApplicable, _probe
from .analysis import _BlockInfo, _unroll_extent
from .loops import _parallel_worth_it, _parallelize, _vectorize_innermost
from .conv import _index_divisors, _split_by_divisors, _split_divisors
from . import gemm


def _tile_reduction_scalar(sch, name, params):
    return gemm._tile_reduction(sch, name, params, vector=False)  # a patch of gemm's reaches it


def _gather_reduction(sch, name, params):
    """_plain_reduction, for blocks indexed through floordiv/floormod only."""
    info = _BlockInfo(sch, sch.get_sblock(name))
    if not _index_divisors(info.stmt, info.vars):
        raise NotApplicable("no strided-window gather")
    return _plain_reduction(sch, name, params)


def _plain_reduction(sch, name, params):
    """Reductions with no vectorizable output axis (pooling, gather-form gradients, row
    reductions): parallel outer spatial loops; axes indexed through floordiv/floormod split
    by the divisor; short inner loops unrolled."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds:
        raise NotApplicable("opaque iterators")
    divisors = _split_divisors(info)
    outer, inner, red = _split_by_divisors(sch, info, divisors)
    if not outer:
        raise NotApplicable("no spatial loop")
    sch.reorder(*outer, *inner, *red)
    notes = []
    if divisors:
        notes.append("split " + "x".join(str(divisors[k]) for k in sorted(divisors)))
    body = math.prod(_unroll_extent(sch, lp) for lp in inner + red)
    if body <= UNROLL_MAX_BODY:
        for loop in inner + red:
            sch.unroll(loop)
        notes.append("unrolled")
    elif red and _unroll_extent(sch, red[-1]) <= 8:
        sch.unroll(red[-1])
        notes.append("unrolled")
    # Guarded loads (gather-form gradients) compile to branches inside parallel closures,
    # where LLVM loses the alias facts it uses to turn them into selects: a higher bar.
    if _parallel_worth_it(info, PLAIN_PARALLEL_PENALTY, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    if not notes:
        raise NotApplicable("nothing to do")
    return f"plain[{', '.join(notes)}]", {name}


# A lane reduction needs at least this many vector steps per output to pay for its final
# horizontal sum (below it, the scalar tile's independent chains do as well).
LANE_REDUCTION_MIN_STEPS = 8
LANE_REDUCTION_REGISTERS = 4  # vector accumulators per output: covers the add's latency


def _lane_reduction(sch, name, params):
    """Sums whose output has no contiguous axis but whose innermost reduction axes are
    contiguous in every operand (BatchNorm's per-channel statistics and gradients over
    (N, H, W) of NCHW): the trailing contiguous reduction axes are fused, split by a few
    vectors' worth of lanes, and those lanes become partial sums (rfactor) accumulated in
    vector registers while the rows stream by; a short horizontal sum per output follows.
    The scalar tile instead reads one element from each of 8 channels per step: 8 streams
    H * W floats apart and no vector arithmetic. Changes the summation order (partial sums
    per lane), as any vectorized reduction must."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds or not info.reduction or not info.spatial or info.symbolic:
        raise NotApplicable("not a static plain reduction")
    if info.kinds != ["S"] * len(info.spatial) + ["R"] * len(info.reduction):
        raise NotApplicable("reduction axes are not innermost")
    lanes = params.lanes(info.dtype)
    streamed = [strides for _, _, strides in info.reads
                if any(strides[k] for k in info.reduction)]
    if not streamed:
        raise NotApplicable("no operand read along the reduction")
    if any(strides[k] == 1 for strides in streamed for k in info.spatial):
        raise NotApplicable("an output axis is contiguous: a vector tile fits")
    # The trailing reduction axes every streamed operand reads contiguously, fused.
    red = info.reduction
    start = len(info.kinds)
    for t in range(len(red) - 1, -1, -1):
        group = red[t:]
        want = {k: math.prod(info.extents[j] for j in red[red.index(k) + 1:]) for k in group}
        if any(strides[k] != want[k] for strides in streamed for k in group):
            break
        start = red[t]
    if start == len(info.kinds):
        raise NotApplicable("no contiguous reduction axis")
    fused_extent = math.prod(info.extents[start:])
    vec = next((lanes * r for r in range(LANE_REDUCTION_REGISTERS, 0, -1)
                if fused_extent % (lanes * r) == 0), None)
    per_output = math.prod(info.extents[k] for k in red)
    if vec is None or per_output < LANE_REDUCTION_MIN_STEPS * vec:
        raise NotApplicable("too few vector steps per output")
    loops = info.loops
    fused = sch.fuse(*loops[start:]) if len(loops) - start > 1 else loops[start]
    _, lane = sch.split(fused, factors=[None, vec])
    # factor_axis after the output axes: each output's partial sums are one contiguous vector
    try:
        partial = sch.rfactor(lane, factor_axis=len(info.spatial))
    except Exception as err:  # noqa: BLE001 - TVM's own check: a reducer it cannot split
        _probe(f"rfactor of block {info.name}", err)
        raise NotApplicable("rfactor refused") from err
    ploops = sch.get_loops(partial)
    spatial_loops, lane_loop = ploops[:len(info.spatial)], ploops[-1]
    notes = [f"lanes v{vec}"]
    outer = list(spatial_loops)
    if _parallel_worth_it(info, lanes, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    sch.vectorize(lane_loop)
    init = sch.decompose_reduction(partial, ploops[len(info.spatial)])
    _vectorize_innermost(sch, init, lanes)
    touched = {name, sch.get(partial).name_hint, sch.get(init).name_hint}
    return f"tiled[{', '.join(notes)}]", touched
