"""Matrix times vector (a Linear layer at batch 1, its weight [N, K] row-major): vectorized
along the reduction, as a CPU GEMV kernel is. Each row is summed in `lanes` interleaved
partial sums added at the end (about 1e-6 relative to the naive order).

dlight's GEMV, tried after this one, is filtered in dispatch._dlight_gemv.
"""

from .._tvm import s_tir
from .params import GEMV_ROWS
from .failures import NotApplicable
from .analysis import _BlockInfo, _reduction_iters, _root_blocks
from .loops import _largest_divisor, _parallel_worth_it
from .spatial import _inline_spatial


def _gemv(func, params):
    """A matrix-vector product y[n] = sum_k w[n, k] * x[k] (+ a pointwise epilogue) whose
    operands are all contiguous along k: vectorized along k, as a CPU GEMV kernel is.

    The other rules vectorize an output axis, along which such a weight is strided: scalar
    tiles (tvmfront's rule) or gathers (dlight's GEMV), 3-12x slower on the decode step's
    Linear layers. Here k is split by the vector length and rfactored: GEMV_ROWS rows keep
    one vector accumulator each over k (every load of x shared by them), then each row's
    lanes are summed and the epilogue (bias, GELU) applied to those rows. Rows run in
    parallel when the kernel is large enough. None (not applicable) for anything else: more
    than one output axis wider than 1 (a GEMM, attention's batched products), a symbolic
    axis, k not a multiple of the vector length, an operand strided along k."""
    sch = s_tir.Schedule(func)
    _inline_spatial(sch)
    blocks = [b for b in _root_blocks(sch) if _reduction_iters(sch.get(b))]
    if len(blocks) != 1:
        return None
    block = blocks[0]
    try:
        info = _BlockInfo(sch, block)
    except NotApplicable:
        return None
    wide = [k for k in info.spatial if info.extents[k] > 1]
    if "O" in info.kinds or len(info.reduction) != 1 or len(wide) != 1 or info.symbolic \
            or str(info.dtype) not in ("float32", "float64") or len(info.reads) != 2:
        return None
    (r,), (n,) = info.reduction, wide
    lanes = params.lanes(info.dtype)
    # one operand varies along n (the matrix), the other not (the vector); both contiguous in k
    if info.extents[r] % lanes or any(strides[r] != 1 for _, _, strides in info.reads) \
            or sorted(strides[n] == 0 for _, _, strides in info.reads) != [False, True]:
        return None
    rows = _largest_divisor(info.extents[n], GEMV_ROWS)
    unit = [info.loops[k] for k in info.spatial if k != n]
    jo, ji = sch.split(info.loops[n], [None, rows])
    ko, ki = sch.split(info.loops[r], [None, lanes])
    sch.reorder(*unit, jo, ko, ji, ki)
    partial = sch.rfactor(ki, len(info.write.region))  # [..., lanes]: the accumulators
    *unit, jo, ko, ji, ki = sch.get_loops(partial)  # rfactor made these loops anew
    # the lanes' sum and the epilogue, for the rows of one tile, right after it
    sch.reverse_compute_at(block, jo, preserve_unit_loops=True)
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, jo, preserve_unit_loops=True)
    parallel = _parallel_worth_it(info, lanes, params)
    if parallel:  # before decompose_reduction, which leaves blocks parallel() refuses
        sch.parallel(sch.fuse(*unit, jo) if unit else jo)
    sch.unroll(ji)
    sch.vectorize(ki)
    init = sch.decompose_reduction(partial, ko)
    init_loops = sch.get_loops(init)
    sch.unroll(init_loops[-2])
    sch.vectorize(init_loops[-1])
    return sch.mod["main"], f"{rows} rows x v{lanes} along k{', parallel' if parallel else ''}"
