"""Reductions with no vectorizable output axis: pooling, gather-form gradients of windows,
row reductions (a loss, softmax's sums).

A reduction with no vectorizable axis gets a tile of independent scalar accumulators (the
GEMM rule without vectors); a gather-form gradient indexed through ``// k`` and ``% k`` has
those axes split by ``k`` so that the indices become affine, with the small inner loops
unrolled (_plain_reduction); a short reduction over windows read with a stride along its
output's columns gets vector columns over a deinterleaved copy of each plane
(_window_reduction). Sums along contiguous rows accumulate vectors of partial results
(_lane_reduction), rows that no vector tiles with a scalar tail (_lane_reduction_tail).
"""

import math

from .._tvm import tirx
from .params import PLAIN_PARALLEL_PENALTY, UNROLL_MAX_BODY, _dtype_bits
from .failures import NotApplicable, _probe
from .analysis import (_BlockInfo, _const, _has_if_then_else, _reduction_iters, _root_blocks,
                       _unroll_extent, _walk_stmts)
from .loops import (_in_tasks, _parallel_worth_it, _parallelize, _vector_factor,
                    _vectorize_innermost)
from .conv import (_column_values, _deinterleave, _deinterleaved_layout, _index_divisors,
                   _plane_fits, _split_by_divisors, _split_divisors)
from . import gemm


def _tile_reduction_scalar(sch, name, params):
    return gemm._tile_reduction(sch, name, params, vector=False)  # a patch of gemm's reaches it


def _gather_reduction(sch, name, params):
    """_plain_reduction, for blocks indexed through floordiv/floormod; _window_reduction for
    windows read with a stride along the output's columns."""
    info = _BlockInfo(sch, sch.get_sblock(name))
    if not _index_divisors(info.stmt, info.vars):
        return _window_reduction(sch, info, params)
    return _plain_reduction(sch, name, params)


def _window_reduction(sch, info, params):
    """A short reduction over windows that its output's columns step across with a stride d
    (max-pool's forward over x padded with the lowest value, its first-max pass over x's
    keys padded with NaN): the columns vectorized, the reduction unrolled outside them, and
    the strided operand copied per plane (the last two axes) into a local buffer laid out
    [.., w % d, w // d] (conv._deinterleave), which the vectors read contiguously; a padding
    block producing the operand is itself computed into that local plane (no padded copy of
    the whole tensor). Without it the scalar tile's strided, clamped reads cost 2.2x the
    forward (k3 s2 p1 at 64@28), as much again as the rest of the gradient."""
    spatial, red = info.spatial, info.reduction
    if "O" in info.kinds or not red or info.symbolic & set(spatial[-3:]) or \
            info.kinds != ["S"] * len(spatial) + ["R"] * len(red) or len(spatial) < 3:
        raise NotApplicable("not a static window reduction")
    if math.prod(info.extents[k] for k in red) > UNROLL_MAX_BODY or \
            _has_if_then_else(info.stmt) or info.write_strides[spatial[-1]] != 1:
        raise NotApplicable("not a short unguarded window reduction")
    lanes = params.lanes(info.dtype)
    vec = _vector_factor(info.extents[spatial[-1]], lanes)
    found = _strided_operand(info)
    if vec is None or found is None:
        raise NotApplicable("no operand strided along the columns")
    index, source, d = found
    loops = info.loops
    plane = len(spatial) - 3  # the loop over the planes: the last one before the rows
    column, vector = sch.split(loops[spatial[-1]], factors=[None, vec])
    sch.reorder(*loops[:plane + 2], column, *[loops[k] for k in red], vector)
    notes = [f"window v{vec}"]
    outer = list(loops[:plane + 1])
    if _parallel_worth_it(info, vec, params):
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    at = outer[-1]
    touched = {info.name}
    producer = _producer_of(sch, info.block, source)
    try:
        if producer is not None:  # computed in this kernel (a padding): into the local plane
            sch.compute_at(producer, at)
            sch.set_scope(producer, 0, "local")
            touched.update(_plane_padding(sch, producer, d, lanes))
        else:
            local = sch.cache_read(info.block, index, "local")
            sch.compute_at(local, at)
            _deinterleave(sch, local, d, lanes)
            touched.add(sch.get(local).name_hint)
        notes.append(f"deinterleaved {source.name}")
    except Exception as err:  # noqa: BLE001 - TVM's own check: the strided reads stay
        _probe(f"deinterleaved plane of {source.name}", err)
        raise NotApplicable("no deinterleaved plane") from err
    for loop in red:
        sch.unroll(loops[loop])
    sch.vectorize(vector)
    init = sch.decompose_reduction(info.block, loops[red[0]])  # last: the init goes
    _vectorize_innermost(sch, init, lanes)
    touched.add(sch.get(init).name_hint)
    return f"tiled[{', '.join(notes)}]", touched


def _strided_operand(info):
    """(read index, buffer, stride d) of the operand read along the output's columns with a
    constant stride d > 1 whose planes are small (DEINTERLEAVE_MAX_PLANE_BYTES), or None."""
    for index, region, _ in info.reads:
        source = region.source
        if len(source.shape) != len(info.vars) - len(info.reduction):
            continue
        order = [k for k in range(len(info.vars)) if k != info.spatial[-1]] + \
            [info.spatial[-1]]  # the output's column last
        values = _column_values(region.region[-1].min, [info.vars[k] for k in order],
                                [info.extents[k] for k in order])
        if values is None or len(values) < 2:
            continue
        d = values[1] - values[0]
        if d > 1 and all(b - a == d for a, b in zip(values, values[1:])) and \
                _plane_fits(source, d):
            return index, source, d
    return None


def _producer_of(sch, block, buffer):
    """The block of this kernel that writes `buffer` for `block` alone (spatial), or None."""
    for producer in sch.get_producers(block):
        stmt = sch.get(producer)
        if stmt.writes[0].source.same_as(buffer) and not _reduction_iters(stmt) and \
                len(sch.get_consumers(producer)) == 1:
            return producer
    return None


def _plane_padding(sch, producer, d, lanes):
    """Lay out a padding block computed per plane as [.., w % d, w // d] and split it into
    a fill of the plane and a copy of its inside (no test per element). Returns the names
    of its blocks."""
    _deinterleaved_layout(sch, producer, d)
    names = {sch.get(producer).name_hint}
    if _has_if_then_else(sch.get(producer)):
        own = [lp for lp in sch.get_loops(producer)
               if int(sch.get(lp).kind) == int(tirx.ForKind.SERIAL)]
        fill = sch.decompose_padding(producer, own[-2])
        _vectorize_innermost(sch, fill, lanes)
        sch.unroll(sch.get_loops(fill)[-2])  # constant places: LLVM merges the stores
        names.add(sch.get(fill).name_hint)
    _vectorize_innermost(sch, producer, lanes)
    sch.unroll(sch.get_loops(producer)[-2])
    return names


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


# A lane reduction with several vector accumulators per output needs this many vector
# steps per accumulator; short rows (layer norm's 128, attention's 64) get one accumulator,
# which pays for its final horizontal sum from LANE_REDUCTION_MIN_SINGLE_STEPS steps: the
# scalar tile's strided reads (one element of each of 8 rows per step) ran 5-10x slower on
# them (layer_norm_grad [1024, 128] 684 -> 71 us, softmax_grad [64, 64, 64] 1362 -> 426 us,
# one AVX-512 core; 2 steps of v32 over 64 lost to 4 of v16: 780 us).
LANE_REDUCTION_MIN_STEPS = 8
LANE_REDUCTION_MIN_SINGLE_STEPS = 4
LANE_REDUCTION_REGISTERS = 4  # vector accumulators per output: covers the add's latency


def _lane_vector(fused_extent, per_output, lanes):
    """The lanes of partial sums per output (a multiple of `lanes` dividing the contiguous
    extent), or None when the rows are too short for vector steps to pay."""
    for r in range(LANE_REDUCTION_REGISTERS, 0, -1):
        steps = LANE_REDUCTION_MIN_STEPS if r > 1 else LANE_REDUCTION_MIN_SINGLE_STEPS
        if fused_extent % (lanes * r) == 0 and per_output >= steps * lanes * r:
            return lanes * r
    return None


def _lane_reduction(sch, name, params):
    """Sums whose output has no contiguous axis but whose innermost reduction axes are
    contiguous in every operand (BatchNorm's per-channel statistics and gradients over
    (N, H, W) of NCHW): the trailing contiguous reduction axes are fused, split by a few
    vectors' worth of lanes, and those lanes become partial sums (rfactor) accumulated in
    vector registers while the rows stream by; a short horizontal sum per output follows.
    The scalar tile instead reads one element from each of 8 channels per step: 8 streams
    H * W floats apart and no vector arithmetic. Changes the summation order (partial sums
    per lane), as any vectorized reduction must. Also a sum to a scalar (gradient clipping's
    sum of squares of each gradient: one scalar add chain, 72 -> 3.4 us for [128, 512]).
    A row that no vector tiles takes a vector bulk and a scalar tail (_lane_reduction_tail)."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds or not info.reduction:
        raise NotApplicable("not a plain reduction")
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
        if info.symbolic & set(group):  # lanes split a static run (a symbolic batch: outer)
            break
        want = {k: math.prod(info.extents[j] for j in red[red.index(k) + 1:]) for k in group}
        if any(strides[k] != want[k] for strides in streamed for k in group):
            break
        start = red[t]
    if start == len(info.kinds):
        raise NotApplicable("no contiguous reduction axis")
    fused_extent = math.prod(info.extents[start:])
    per_output = math.prod(info.extents[k] for k in red)
    _loop_over_loopless_blocks(sch)
    if fused_extent % lanes:  # no vector tiles the row (a vocabulary of 103): bulk and tail
        return _lane_reduction_tail(sch, info, params)
    vec = _lane_vector(fused_extent, per_output, lanes)
    if vec is None:
        raise NotApplicable("too few vector steps per output")
    loops = info.loops
    fused = sch.fuse(*loops[start:]) if len(loops) - start > 1 else loops[start]
    partial = _lane_partials(sch, info, fused, vec)
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


def _column_reduction(sch, name, params):
    """A sum over leading axes into the last axis, [rows..., C] -> [C] (a bias's gradient, a
    layer norm's dgamma and dbeta), every operand read contiguously along C or constant
    along it, with work for several cores: the rows split across the cores (rfactor), each
    core streaming whole rows into its own vector partial sums of C, then the cores'
    partials added. The GEMM family's tile read it column block by column block down all
    the rows on one core, each row a new page (bias_add_grad [1024, 512] with cold caches:
    210 -> 136 us). Changes the summation order (one partial sum per core)."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    spatial, red = info.spatial, info.reduction
    if "O" in info.kinds or not red or not spatial or info.symbolic or \
            info.kinds != ["S"] * len(spatial) + ["R"] * len(red) or \
            any(info.extents[k] != 1 for k in spatial[:-1]):
        raise NotApplicable("not a static sum over leading axes into one axis")
    c = spatial[-1]
    lanes = params.lanes(info.dtype)
    if info.write_strides[c] != 1 or info.extents[c] % lanes or \
            any(strides[c] not in (0, 1) for _, _, strides in info.reads) or \
            not any(strides[c] == 1 and any(strides[k] for k in red)
                    for _, _, strides in info.reads):
        raise NotApplicable("no operand streamed in rows along the output")
    rows = math.prod(info.extents[k] for k in red)
    if not _parallel_worth_it(info, lanes, params) or rows % params.cores:
        raise NotApplicable("one core's work")
    loops = info.loops
    r = sch.fuse(*loops[len(spatial):]) if len(red) > 1 else loops[-1]
    per_core, _ = sch.split(r, factors=[params.cores, None])
    partial = _rfactor(sch, info, per_core, 0)
    # the partial sums' loops: (spatial..., core, rows of the core) -> (core, rows, C)
    ploops = sch.get_loops(partial)
    core, own_rows, columns = ploops[len(spatial)], ploops[-1], ploops[len(spatial) - 1]
    sch.reorder(core, own_rows, columns)
    _, vector = sch.split(columns, factors=[None, lanes])
    sch.parallel(core)
    sch.vectorize(vector)
    init = sch.decompose_reduction(partial, own_rows)
    _vectorize_innermost(sch, init, lanes)
    touched = {name, sch.get(partial).name_hint, sch.get(init).name_hint}
    return f"tiled[columns, rows over {params.cores} cores, v{lanes}]", touched


def _lane_partials(sch, info, loop, vec):
    """Split the reduction `loop` of `info`'s block by `vec` and make those lanes partial
    results (rfactor) after the output axes, so that each output's partial results are one
    contiguous vector. Returns the partial block."""
    _, lane = sch.split(loop, factors=[None, vec])
    return _rfactor(sch, info, lane, len(info.spatial))


def _rfactor(sch, info, loop, factor_axis):
    """sch.rfactor, or NotApplicable where TVM refuses the block's reducer: it splits only
    the reducers it knows (a sum, te.max; not extremum's NaN-propagating max)."""
    try:
        return sch.rfactor(loop, factor_axis=factor_axis)
    except Exception as err:  # noqa: BLE001 - TVM's own check: a reducer it cannot split
        _probe(f"rfactor of block {info.name}", err)
        raise NotApplicable("rfactor refused") from err


def _loop_over_loopless_blocks(sch):
    """A unit loop over each block at the kernel's root that has none (a loss's final 0-d
    division): TVM 0.27's rfactor fails on a kernel with such a block (an internal check in
    its block replacer, which meets the block's realize where it expects only loops)."""
    for block in _root_blocks(sch):
        if not sch.get_loops(block):
            sch.add_unit_loop(block)


def _lane_reduction_tail(sch, info, params):
    """A per-row reduction along one contiguous axis of n elements, n a multiple of no vector
    (a cross-entropy over a vocabulary of 103): the row is split into steps of one vector
    (the last step short, under a predicate), the lanes become partial results (rfactor),
    and the steps are partitioned into the whole ones, vectorized, and the last one, unrolled
    scalar code over its n % lanes elements: the partial results of the lanes it does not reach
    keep the reducer's identity (their init), which the per-row combination of the lanes
    then reads. Everything after the partial block is computed under its row loop
    (reverse_compute_at: compute_at of the partial block instead drops its predicate, reading
    past the row). The scalar tile ran 8 rows a step, one element of each
    ([1024, 103] max: 15 us against ~7 on one AVX-512 core). One vector of partial results:
    the lanes' combination is scalar code per row, and with 2 or 4 vectors it cost more than
    their shorter chains gained ([64, 1032] sum: v16 3.4-3.9 us, v32 3.6-4.0, v64 4.9-5.2;
    [256, 263]: v16 4.7-4.8, v32 6.0-6.6; and 4 vectors leave up to 63 elements to the
    scalar step)."""
    red = info.reduction
    if len(red) != 1 or not info.spatial or info.symbolic & set(red):
        raise NotApplicable("not one static reduction axis under output axes")
    k = red[0]
    n, lanes = info.extents[k], params.lanes(info.dtype)
    if n < lanes:
        raise NotApplicable("a row shorter than a vector")
    partial = _lane_partials(sch, info, info.loops[k], lanes)
    ploops = sch.get_loops(partial)
    outer, step, lane = list(ploops[:len(info.spatial)]), ploops[-2], ploops[-1]
    sch.reverse_compute_at(info.block, outer[-1])
    notes = [f"lanes v{lanes}", f"tail {n % lanes}"]
    if _parallel_worth_it(info, lanes, params):  # before the partition: its blocks have no init
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    sch.vectorize(lane)
    init = sch.decompose_reduction(partial, step)
    _vectorize_innermost(sch, init, lanes)
    sch.unroll(sch.get_loops(info.block)[-1])  # the combination of the lanes
    _, last = sch.loop_partition(step, factors=[n // lanes, None])
    for block in sch.get_child_blocks(last):
        sch.unroll(sch.get_loops(block)[-1])  # the short step: scalar code, not vectors
    return f"tiled[{', '.join(notes)}]", _block_names(sch.get(outer[-1]))


def _block_names(stmt):
    """Names of the blocks inside a statement (a loop's body)."""
    names = set()
    _walk_stmts(stmt, lambda node: names.add(node.name_hint)
                if type(node).__name__ in ("SBlock", "Block") else None)
    return names


# Rows are fused from this tensor size (the output's): past a core's L2, where each whole
# pass streams from L3. Below it the passes did as well or better: [1024, 128] (512 KiB)
# layer norm 33 us in passes vs 43 fused, its gradient 69 vs 72; [16, 4, 64, 64] (1 MiB)
# softmax 339 -> 170 us, its gradient 394 -> 273 (min of 7, one AVX-512 core, load ~5).
ROW_FUSION_MIN_BYTES = 1 << 20
# On several cores, from this size: each whole pass is a parallel region of its own (a fork
# and a join per pass), the fused rows one. [1024, 128] layer norm at 2 threads: 30.9 us in
# passes, 19.5 fused; its gradient with the residual add 58.2 -> 34.5 (one core: 27.3 passes,
# 36.8 fused). In-process A/B on a 2-core AVX-512 Xeon, 8 interleaved rounds (median).
PARALLEL_ROW_FUSION_MIN_BYTES = 1 << 18
# ... for rows of this many vectors or more: each row pays its lane sums' horizontal adds, which
# rows of 2 vectors do not win back (softmax over 32: 37.5 us in passes, 45.2 fused; over 64:
# 87.5 -> 67.6, same machine and rounds).
PARALLEL_ROW_FUSION_MIN_VECTORS = 4


def _row_fusion(sch, name, params):
    """A kernel that works row by row along a short contiguous last axis (softmax and its
    gradient, layer norm's dx: per-row max / sums, then a result per element): every block
    is computed per row, inside the output's row loop, its sums as lane reductions over the
    row and its elementwise stages vectorized along it. Passes over the whole tensor (each
    stage's intermediate written, then read back by the next) read the row from L1 instead:
    attention's [16, 4, 64, 64] is 1 MiB per tensor. Tried on the kernel's first reduction."""
    blocks = [sch.get(b).name_hint for b in _root_blocks(sch)]
    out, rows, n, dtype = _row_output(sch)
    lanes = params.lanes(dtype)
    reductions = [b for b in blocks if b != out and _reduction_iters(sch.get(sch.get_sblock(b)))]
    if not reductions or reductions[0] != name or n % lanes or n < 2 * lanes:
        raise NotApplicable("not the first reduction of a row kernel")
    parallel = _parallel_worth_it(_RowWork(math.prod(rows) * n), lanes, params)
    long_rows = n >= PARALLEL_ROW_FUSION_MIN_VECTORS * lanes
    minimum = PARALLEL_ROW_FUSION_MIN_BYTES if parallel and long_rows else ROW_FUSION_MIN_BYTES
    if math.prod(rows) * n * _dtype_bits(dtype) // 8 < minimum:
        raise NotApplicable("small enough for whole passes")
    for b in blocks:
        if b != out:
            _check_row_block(sch, b, rows, n)
    partials = [_row_partial_sums(sch, b, lanes) for b in reductions]  # rfactor: at the root
    out_loops = sch.get_loops(sch.get_sblock(out))
    row = sch.fuse(*out_loops[:len(rows)]) if len(rows) > 1 else out_loops[0]
    notes = [f"fused rows of {n}, lanes v{lanes}"]
    # Marked parallel while the output is its only block: TVM checks a parallel loop's
    # subtree for compact dataflow, which the partial sums computed at it would fail.
    if parallel:
        # tasks of several rows each where there are many rows (loops._in_tasks): the
        # attention softmax's 4096 rows of 64 each paid the denormal check of a task
        *tasks, row = _in_tasks(sch, row)
        _, note = _parallelize(sch, [*tasks, row], params)
        if note:
            notes.append(note)
    inner = [sch.get(b).name_hint for b in _root_blocks(sch)]
    for b in reversed([b for b in inner if b != out]):
        sch.compute_at(sch.get_sblock(b), row, preserve_unit_loops=False)
    touched = set(inner)
    for b, partial in zip(reductions, partials):
        touched.add(_vectorize_partial_sums(sch, b, partial, lanes))
    for b in inner:
        if b not in reductions and b not in partials:
            loop = sch.get_loops(sch.get_sblock(b))[-1]
            if _const(sch.get(loop).extent) == n:
                _vectorize_row(sch, loop, n, lanes)
    return f"tiled[{', '.join(notes)}]", touched


class _RowWork:  # what _parallel_worth_it reads of a block: its work and library calls
    def __init__(self, work):
        self.work, self.calls = work, 0


def _row_output(sch):
    """(name, row extents, row length, dtype) of the kernel's one output block: spatial,
    static, written contiguously along its last axis."""
    root = sch.get_sblock("root")
    outputs = sch.get_output_blocks(root)
    if len(outputs) != 1:
        raise NotApplicable("not one output block")
    info = _BlockInfo(sch, outputs[0])
    if info.reduction or info.symbolic or len(info.spatial) < 2 or "O" in info.kinds or \
            info.write_strides[len(info.kinds) - 1] != 1:
        raise NotApplicable("the output is not a static row-major spatial block")
    return info.name, info.extents[:-1], info.extents[-1], info.dtype


def _check_row_block(sch, name, rows, n):
    """A block of a row kernel: per row (spatial over the rows, one reduction of length n
    innermost and contiguous) or per element (spatial over rows + [n])."""
    info = _BlockInfo(sch, sch.get_sblock(name))
    if info.symbolic or "O" in info.kinds:
        raise NotApplicable(f"block {name}: not static")
    if info.kinds == ["S"] * len(rows) + ["R"] and info.extents == [*rows, n]:
        if all(strides[len(rows)] in (0, 1) for _, _, strides in info.reads):
            return
    elif info.kinds == ["S"] * (len(rows) + 1) and info.extents == [*rows, n]:
        return
    elif info.kinds == ["S"] * len(rows) and info.extents == list(rows):
        return
    raise NotApplicable(f"block {name}: not a row block")


def _row_partial_sums(sch, name, lanes):
    """Split a per-row reduction into `lanes` partial results per row (rfactor, at the root:
    TVM refuses it under a compute_at). Returns the partial block's name."""
    block = sch.get_sblock(name)
    _, lane = sch.split(sch.get_loops(block)[-1], factors=[None, lanes])
    try:
        partial = sch.rfactor(lane, factor_axis=len(sch.get_loops(block)) - 2)
    except Exception as err:  # noqa: BLE001 - TVM's own check: a reducer it cannot split
        _probe(f"rfactor of block {name}", err)
        raise NotApplicable("rfactor refused") from err
    return sch.get(partial).name_hint


def _vectorize_partial_sums(sch, name, partial, lanes):
    """The partial results accumulated in one vector along the row; their sum unrolled.
    Returns the name of the partial results' init block."""
    block = sch.get_sblock(partial)
    step, lane = _step_and_lane(sch, block, lanes)
    sch.reorder(step, lane)
    sch.vectorize(lane)
    init = sch.decompose_reduction(block, step)
    _vectorize_innermost(sch, init, lanes)
    sch.unroll(sch.get_loops(sch.get_sblock(name))[-1])  # the horizontal sum of the lanes
    return sch.get(init).name_hint


def _step_and_lane(sch, block, lanes):
    """(the loop over a row's vector steps, the loop over lanes) of a partial-sums block under
    its row loop, in whatever order compute_at made them: told apart by the block iterator
    each binds (the lanes a data-parallel one)."""
    loops = sch.get_loops(block)[-2:]
    realize = sch.get(loops[-1]).body  # the block's realize: iterator bindings
    stmt = realize.block if hasattr(realize, "block") else None
    if stmt is None or not hasattr(realize, "iter_values"):
        raise NotApplicable("no block realize under the innermost loop")
    kinds = {}
    for iv, value in zip(stmt.iter_vars, realize.iter_values):
        used = tirx.analysis.undefined_vars(value)
        for loop in loops:
            if any(v.same_as(sch.get(loop).loop_var) for v in used):
                kinds[loop] = int(iv.iter_type)
    lane = [lp for lp in loops if kinds.get(lp) == int(tirx.IterVar.DataPar)]
    step = [lp for lp in loops if kinds.get(lp) == int(tirx.IterVar.CommReduce)]
    if len(lane) != 1 or len(step) != 1 or _const(sch.get(lane[0]).extent) != lanes:
        raise NotApplicable("partial sums not under a lane and a step loop")
    return step[0], lane[0]


def _vectorize_row(sch, loop, n, lanes):
    vec = _vector_factor(n, lanes)
    _, inner = sch.split(loop, factors=[None, vec])
    sch.vectorize(inner)
