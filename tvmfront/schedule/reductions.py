"""Reductions with no vectorizable output axis: pooling, gather-form gradients of windows,
row reductions (a loss, softmax's sums).

A reduction with no vectorizable axis gets a tile of independent scalar accumulators (the
GEMM rule without vectors); a gather-form gradient indexed through ``// k`` and ``% k`` has
those axes split by ``k`` so that the indices become affine, with the small inner loops
unrolled (_plain_reduction).
"""

import math

from .params import PLAIN_PARALLEL_PENALTY, UNROLL_MAX_BODY
from .failures import NotApplicable
from .analysis import _BlockInfo, _unroll_extent
from .loops import _parallel_worth_it, _parallelize
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
