"""Elementwise and other injective blocks.

- injective producers of injective blocks (pointwise chains, reshapes) are inlined
  (_inline_spatial); pointwise consumers of a reduction (bias add, ReLU) join its
  write-back (_absorb_epilogues), unless they read operands as large as its output
  (_streamed_operands: relu_grad's x), which they then read in a pass of their own;
- a spatial block left standing has its trailing loops fused as far as every access stays
  contiguous (or constant), split by a vector length that tiles the rows, vectorized, and its
  outer loops parallelized when large enough; padding blocks are first split into a constant
  fill and an in-bounds copy (``decompose_padding``). Vectors use static axes only (a vector
  over a symbolic extent would be predicated).
"""

import math

from .._tvm import tirx
from ..autodiff import MATERIALIZED
from .failures import NotApplicable, _probe
from .analysis import (_BlockInfo, _const, _elements, _has_if_then_else, _reduction_iters,
                       _root_blocks, _size, _walk_block_exprs, _walk_stmts)
from .loops import _in_tasks, _parallel_worth_it, _parallelize, _vector_factor
from .conv import _schedule_spatial_split, _split_divisors


def _inline_spatial(sch):
    """Inline injective blocks into injective consumers (pointwise chains, reshapes) until
    nothing changes. Producers of reductions (padding) stay separate."""
    changed = True
    while changed:
        changed = False
        blocks = _root_blocks(sch)
        outputs = {sch.get(b).name_hint for b in sch.get_output_blocks(sch.get_sblock("root"))}
        for block in blocks:
            stmt = sch.get(block)
            if stmt.name_hint in outputs or _reduction_iters(stmt) or \
                    MATERIALIZED in stmt.annotations:
                continue
            consumers = sch.get_consumers(block)
            if not consumers or any(_reduction_iters(sch.get(c)) for c in consumers):
                continue
            try:
                sch.compute_inline(block)
            except Exception as err:  # noqa: BLE001 - TVM's own check: not inlinable
                _probe(f"compute_inline of block {stmt.name_hint}", err)
                continue
            changed = True
            break


def _nest_pointwise_outputs(sch):
    """Merge the loop nests of consecutive pointwise blocks over the same iterations into one
    (a merged optimizer update, tvmfront/merge_elementwise.py: Adam's new moments, both
    outputs of the step, then the parameter's update that reads them): one loop nest then
    writes every output, each element's moments read back from L1 as they are computed, not
    streamed again. compute_at refuses output blocks; Schedule.merge takes sibling loops.
    Returns the names of the blocks merged into a later one's loops.

    Only blocks that write the kernel's outputs are merged into a later one's loop: TVM 0.27
    miscompiles a vectorized loop in which one block writes an intermediate buffer and a
    later one reads it (every lane read the last lane's value: a user op's compiled gradient
    wrong where its eager one was right)."""
    allocated = set()  # the kernel's intermediates (its outputs are its parameters')
    _walk_stmts(sch.mod["main"].body, lambda node: allocated.update(
        b.name for b in getattr(node, "alloc_buffers", None) or ()))
    nested = []
    run, key = [], None
    for block in [*_root_blocks(sch), None]:
        info = _pointwise(sch, block) if block is not None else None
        this = (info.extents, info.write_strides) if info is not None else None
        # no block with a branch (a concatenation or padding: it gets _schedule_ranges'
        # copies, which a merged loop would lose: the Transformer's d(qkv) 34 -> 204 us),
        # checked last, on candidates only: it walks the whole expression
        if this is not None and this == key and _reads_in_place(info, run) and \
                not any(i.write.source.name in allocated for i in run) and \
                not _has_if_then_else(info.stmt) and \
                (len(run) > 1 or not _has_if_then_else(run[0].stmt)):
            run.append(info)
            continue
        if len(run) > 1:
            try:
                sch.merge(*[sch.get_loops(i.block)[-1] for i in run])
                nested.extend(i.name for i in run[:-1])
            except Exception as err:  # noqa: BLE001 - TVM's own check; they stay apart
                _probe(f"merge of the loops of {', '.join(i.name for i in run)}", err)
        run, key = ([info], this) if info is not None else ([], None)
    return nested


def _reads_in_place(info, run):
    """Whether the block reads what the blocks of `run` write only at its own element, each
    index its own loop variable, as each of them writes it: merged into one loop, a read one
    element ahead would find it not yet written."""
    written = {i.write.source.name: i for i in run}
    for _, region, _ in info.reads:
        writer = written.get(region.source.name)
        if writer is None:
            continue
        for mine, theirs in ((region, info), (writer.write, writer)):
            if len(mine.region) != len(theirs.vars) or not all(
                    r.min.same_as(v) for r, v in zip(mine.region, theirs.vars)):
                return False
    return True


def _pointwise(sch, block):
    """The block's _BlockInfo when it is spatial, under its own serial loops, and reads
    every operand with the strides it writes with, or a 0-d one; else None."""
    stmt = sch.get(block)
    if _reduction_iters(stmt) or any(
            int(sch.get(lp).kind) != int(tirx.ForKind.SERIAL) for lp in sch.get_loops(block)):
        return None
    try:
        info = _BlockInfo(sch, block)
    except NotApplicable:
        return None
    if info.symbolic or not info.extents:
        return None
    if any(strides != info.write_strides and any(strides.values())
           for _, _, strides in info.reads):
        return None
    return info


def _absorb_epilogues(sch, writeback):
    """Inline pointwise consumers (bias add, ReLU, ...) into the write-back block. Not a
    consumer that writes more elements than the write-back produces (a strided conv's dilated
    d/dx: zeros between the values): TVM inlines it, and those elements are never written. A
    consumer that reads a slice (a padded GEMM's output cropped back) is inlined."""
    names = []
    progress = True
    while progress:
        progress = False
        for consumer in sch.get_consumers(writeback):
            stmt = sch.get(consumer)
            if _reduction_iters(stmt) or _iterations(stmt) > _iterations(sch.get(writeback)):
                continue
            try:
                sch.reverse_compute_inline(consumer)
            except Exception as err:  # noqa: BLE001 - TVM's own check: not an epilogue
                _probe(f"reverse_compute_inline of block {stmt.name_hint}", err)
                continue
            names.append(stmt.name_hint)
            progress = True
            break
    return names


def _streamed_operands(sch, block):
    """Names of the buffers that the pointwise consumers of reduction `block` read element
    for element beside its output (relu_grad's x, gelu_grad's pre-activation, a residual):
    operands as large as the output, not vectors broadcast along it (a bias).

    Such an epilogue is not absorbed into the register tile's write-back (_absorb_epilogues):
    there it reads each operand a tile at a time (8 rows of 128 bytes, 2 KiB apart, every
    ~1000 cycles of FMAs), a pattern no hardware prefetcher follows, so in a train step, where
    the operand comes from memory, every tile waits on its loads. The Transformer's ff2 d/dx
    (1024 x 128 @ 128 x 512) with gelu_grad, one AVX-512 core, caches flushed before each
    call: 3.15 ms in one kernel against 1.26 + 0.58 ms apart (in the step: 3.25 against 1.25
    + 0.60 ms); the write-back prefetching each tile's 16 lines first still took 2.05 ms.
    The epilogue then runs after the tiles as its own contiguous, vectorized pass (the two
    kernels apart, in one): 1.75 ms there. With relu_grad: 1.61 ms absorbed, 1.30 apart in
    one kernel, 1.37 in two. Not after a convolution (a window read, h + kh): its d/dx with
    relu_grad, or conv + BatchNorm + residual add + ReLU, ran 1-4% slower so."""
    stmt = sch.get(block)
    if _reads_a_window(stmt):
        return []
    out = stmt.writes[0].source
    chain, pending = {}, list(sch.get_consumers(block))
    while pending:
        consumer = pending.pop()
        stmt = sch.get(consumer)
        if stmt.name_hint in chain or _reduction_iters(stmt):
            continue
        chain[stmt.name_hint] = stmt
        pending.extend(sch.get_consumers(consumer))
    written = {w.source.name for stmt in chain.values() for w in stmt.writes}
    size = _elements(out)
    return sorted({r.source.name for stmt in chain.values() for r in stmt.reads
                   if not r.source.same_as(out) and r.source.name not in written
                   and _elements(r.source) >= size})


def _reads_a_window(stmt):
    """Whether a block reads an index that mixes an output and a reduction variable (a
    convolution's h + kh)."""
    reduce = {iv.var.name for iv in _reduction_iters(stmt)}
    spatial = {iv.var.name for iv in stmt.iter_vars} - reduce
    for region in stmt.reads:
        for r in region.region:
            names = {v.name for v in tirx.analysis.undefined_vars(r.min)}
            if names & reduce and names & spatial:
                return True
    return False


def _iterations(stmt):
    """A block's iteration count (symbolic extents as analysis._size counts them)."""
    return math.prod(_size(iv.dom.extent) or 0 for iv in stmt.iter_vars)


# At most this many ranges of a row are unrolled (_schedule_ranges): a concat of a few tensors.
MAX_ROW_RANGES = 16


def _row_cuts(stmt, var, extent):
    """The points 0 < c < extent where a comparison of the block's body with a constant
    changes its answer along `var` (c <= v, v < c, ...): the borders of the row's ranges."""
    cuts = set()
    # v < c and v >= c change at c; v <= c and v > c at c + 1
    past = {tirx.LT: 0, tirx.LE: 1, tirx.GT: 1, tirx.GE: 0}
    flipped = {tirx.LT: tirx.GT, tirx.LE: tirx.GE, tirx.GT: tirx.LT, tirx.GE: tirx.LE}

    def visit(e):
        kind = type(e)
        if kind not in past:
            return
        a, b = e.a, e.b
        if isinstance(a, tirx.IntImm) and isinstance(b, tirx.Var):
            kind, a, b = flipped[kind], b, a
        if isinstance(b, tirx.IntImm) and isinstance(a, tirx.Var) and a.same_as(var):
            c = int(b.value) + past[kind]
            if 0 < c < extent:
                cuts.add(c)

    _walk_block_exprs(stmt, visit)
    return sorted(cuts)


def _schedule_ranges(sch, block, params):
    """A row made of ranges that each read something else (the sum of the slice gradients of
    attention's q, k and v: each output column is in exactly one slice's range, the others'
    if_then_else give 0): the row is split at the greatest common divisor of the ranges'
    borders and the pieces unrolled, so in each piece every condition and index is a
    constant expression of the unrolled loop (simplified away) and the run inside it is a
    plain vectorized copy. Per element the whole sum of guarded reads with its divisions of
    the reshape's indices ran scalar otherwise: the Transformer's [1024, 384] q/k/v gradient
    697 -> 59 us on one AVX-512 core. One vector per step: k's piece is read transposed (a
    gather), and two or four vectors took 67 and 137 us. '' when the block is not such a row."""
    stmt = sch.get(block)
    try:
        info = _BlockInfo(sch, block)
    except NotApplicable:
        return ""
    last = len(info.vars) - 1
    extent = info.extents[last]
    if last in info.symbolic or info.write_strides.get(last) != 1:
        return ""
    cuts = _row_cuts(stmt, info.vars[last], extent)
    if not cuts:
        return ""
    run = math.gcd(extent, *cuts)
    lanes = params.lanes(info.dtype)
    vec = _vector_factor(run, lanes, max_registers=1) if run >= lanes else None
    if vec is None or extent // run > MAX_ROW_RANGES:
        return ""
    pieces, inner = sch.split(info.loops[-1], factors=[extent // run, run])
    sch.unroll(pieces)
    _, lane = sch.split(inner, factors=[None, vec])
    sch.vectorize(lane)
    notes = [f"{extent // run} ranges", f"v{vec}"]
    outer = info.loops[:-1]
    if outer and _parallel_worth_it(info, vec, params):
        _, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    return f"spatial[{', '.join(notes)}]"


def _schedule_transposed_copy(sch, info, params):
    """A copy whose write is contiguous along one axis v and whose read is contiguous along
    another u (a transpose: a weight gradient's dy copied to [n, rows, columns, o] with its
    zero padding, ops/conv.py's _same_size_product), by tiles of (v, u): each tile's rows
    are loaded as vectors along u into a small buffer, then stored as vectors along v. The
    whole tile is unrolled, so LLVM turns the columns it reads from that buffer into
    shuffles. Row by row, vectors along v would gather every lane from a row of its own,
    and along u scatter every lane (ResNet's 16->16 @32 d/dw at batch 64, dy padded and
    transposed, 1.2M elements, one AVX-512 core: about 0.28 ms by tiles; the kernel 3.24 ms
    with the copy unvectorized, 3.34 with the gathers, 3.05 by tiles). Returns the note, or
    "" where the block is no such copy."""
    if len(info.reads) != 1 or info.symbolic or any(k == "R" for k in info.kinds):
        return ""
    _, region, strides = info.reads[0]
    v = next((k for k, s in info.write_strides.items() if s == 1), None)
    u = next((k for k, s in strides.items() if s == 1), None)
    if v is None or u is None or v == u or strides[v] in (0, 1) or \
            info.write_strides[u] in (0, 1):
        return ""
    lanes = params.lanes(info.dtype)
    fv = _vector_factor(info.extents[v], lanes, max_registers=1)
    fu = _vector_factor(info.extents[u], lanes, max_registers=1)
    if fv is None or fu is None:
        return ""
    others = [lp for k, lp in enumerate(info.loops) if k not in (u, v)]
    v_out, u_out, _ = _transpose_by_tiles(sch, info.block, others, info.loops[v], fv,
                                          info.loops[u], fu)
    notes = [f"transposed {fv}x{fu}"]
    if _parallel_worth_it(info, 1, params):
        _, note = _parallelize(sch, others + [v_out, u_out], params)
        if note:
            notes.append(note)
    return f"spatial[{', '.join(notes)}]"


def _transpose_by_tiles(sch, block, outer, v, fv, u, fu, scope="local"):
    """Loop the copy `block` (its write contiguous along loop v, its read along loop u) over
    tiles of fv x fu inside the loops `outer`: (outer, v // fv, u // fu, u % fu, v % fv). Each
    tile's rows are loaded as vectors along u into a small buffer of `scope`, then stored as
    vectors along v, the whole tile unrolled. Returns (v's outer loop, u's outer loop, the
    tile's block)."""
    v_out, v_in = sch.split(v, factors=[None, fv])
    u_out, u_in = sch.split(u, factors=[None, fu])
    sch.reorder(*outer, v_out, u_out, u_in, v_in)
    tile = sch.cache_read(block, 0, scope, consumer_blocks=[block])
    sch.compute_at(tile, u_out)
    loops = [sch.get(lp) for lp in sch.get_loops(tile)]
    at = next(k for k, lp in enumerate(loops) if lp.same_as(sch.get(u_out)))
    tile_loops = [lp for lp in sch.get_loops(tile)[at + 1:] if _const(sch.get(lp).extent) != 1]
    if len(tile_loops) == 2:
        sch.unroll(tile_loops[0])
        sch.vectorize(tile_loops[1])
    sch.unroll(u_in)
    sch.vectorize(v_in)
    return v_out, u_out, tile


def _schedule_spatial(sch, block, params, transposes=False):
    """Fuse the contiguous trailing loops, vectorize them, parallelize the rest. A padding
    block is first split into a constant fill and an in-bounds copy (no per-element branch);
    that copy, when it transposes (`transposes`), goes by tiles (_schedule_transposed_copy)."""
    name = sch.get(block).name_hint
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or _reduction_iters(stmt):
        return ""
    # Only blocks still under their own loop nest at the root are ours to schedule.
    if any(int(sch.get(lp).kind) != int(tirx.ForKind.SERIAL) for lp in loops):
        return ""
    if _has_if_then_else(stmt):
        try:
            fill = sch.decompose_padding(block, loops[0])
        except Exception as err:  # noqa: BLE001 - TVM's own check: not a padding pattern
            _probe(f"decompose_padding of block {name}", err)
            fill = None
        if fill is not None:
            first = _schedule_spatial(sch, fill, params)
            second = _schedule_spatial(sch, block, params, transposes=True)
            return f"padding[fill {first or '-'}; copy {second or '-'}]"
        ranges = _schedule_ranges(sch, block, params)
        if ranges:
            return ranges
    info = _BlockInfo(sch, block)
    divisors = _split_divisors(info)
    if divisors:
        return _schedule_spatial_split(sch, info, divisors, params)
    n = len(info.loops)
    lanes = params.lanes(info.dtype)
    start = n
    for t in range(n - 1, -1, -1):
        if t in info.symbolic:  # the vectors tile the static axes only (never predicated)
            break
        group = range(t, n)
        want = {k: math.prod(info.extents[k + 1:]) for k in group}
        if any(info.write_strides[k] != want[k] for k in group):
            break
        if not all(all(strides[k] == want[k] for k in group)
                   or all(strides[k] == 0 for k in group) for _, _, strides in info.reads):
            break
        start = t
    if start == n and transposes:  # nothing contiguous on both sides: a transpose?
        transposed = _schedule_transposed_copy(sch, info, params)
        if transposed:
            return transposed
    notes = []
    outer = list(info.loops)
    vec = None
    if start < n:
        fused = sch.fuse(*info.loops[start:]) if n - start > 1 else info.loops[start]
        extent = math.prod(info.extents[start:])
        rows = [math.prod(info.extents[k:]) for k in range(start + 1, n)]
        vec = _vector_factor(extent, lanes, max_registers=4, rows=rows)
        if vec is not None:
            o, i = sch.split(fused, factors=[None, vec])
            sch.vectorize(i)
            outer = list(info.loops[:start]) + [o]
            notes.append(f"v{vec}")
        else:
            outer = list(info.loops[:start]) + [fused]
    # counted in hardware vectors: a v64 step on AVX-512 is four iterations' work; the
    # blocks merged into this one's loops (_nest_pointwise_outputs) add theirs
    info.work *= len(sch.get_child_blocks(outer[0])) if outer else 1
    if outer and _parallel_worth_it(info, min(vec, lanes) if vec else 1, params):
        outer = _in_tasks(sch, outer[0]) + outer[1:]
        outer, note = _parallelize(sch, outer, params)
        if note:
            notes.append(note)
    if not notes:
        return ""
    return f"spatial[{', '.join(notes)}]"
