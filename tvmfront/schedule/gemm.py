"""The GEMM family: register-tiled contractions (dense, batch_matmul, the transposed forms
their gradients use, and convolution forward, whose loop nest has the same shape), and in
"tiled only" mode the vectorizable reductions without a multiply (row sums, max).

A reduction is register-tiled: the spatial axis whose vectors use the SIMD lanes best is
split by the vector length and vectorized (two registers per vector; eight when no other
output axis can tile, e.g. a prime extent); operands strided along it (``x @ w.T``'s weight,
a conv weight when vectorizing over output channels) are first packed into a copy with that
axis last, when the copy is cheap next to the reduction; operands whose rows along the
reduction are far apart (PANEL_MIN_STRIDE, PANEL_MIN_BYTES) are instead copied into panels,
as BLAS packs them: the vector operand into panels of the vector length (the panel index
runs outermost, so one panel stays in cache while the row tiles sweep it; when that loop
runs alone in parallel, each iteration copies its own panel first), the broadcast operand
of A^T B into panels of the tile's rows; copies read whole cache lines of their source
(a transposed copy by tiles); one or two other output axes form a
register tile (CpuParams.acc_registers accumulators: 4 rows x 2 vectors on AVX2, 8 x 2 on
AVX-512) chosen so that operand loads are shared across it; the reduction loops sit between
the outer loops and the tile; the tile accumulates in a small local buffer (``cache_write``,
laid out with the vector axis last) written back together with the pointwise epilogue (bias
add, ReLU), or, with no epilogue and the output contiguous along the vectors, in the output
itself (_cache_accumulator); outer loops are fused just enough to feed ``num-cores`` threads
and parallelized when the kernel is large enough. A long reduction runs in blocks whose slice
of a panel stays in L1 (_reduction_block), and a big output besides in blocks of its rows that
stay in L2, each core sweeping its share of the columns block by block (_row_blocks), as
GotoBLAS blocks a GEMM. Without a vectorizable axis the same rule builds a tile of independent
scalar accumulators (reductions._tile_reduction_scalar).

Symbolic extents: the tile is chosen as at SYMBOLIC_EXTENT, and a symbolic axis that its
vectors or register tile split is first padded to a multiple of them (``pad_einsum``:
zero-padded input copies, a padded output copied out with the epilogue), before any operand
is packed, so the tile itself carries no predicate and equals the fixed size's (a Linear
layer's batch carries the vectors, 10 x v32, as at batch 64); a block that is no einsum (a
conv window) or that tiles rows with scalar accumulators keeps its vectors and tiles to the
static axes instead. Buffers whose extents mix int64 (the symbolic batch) and int32 (sizes a
TE op computed) are laid out by reindex_cache_read/write, which transform_layout refuses.
A static output axis with no divisor for a tile (a prime: the char vocabulary's 103) is
padded the same way, to a multiple of PRIME_PAD. A reduction over a symbolic axis (a
weight gradient summed over the batch, batch statistics) is tiled and vectorized over its
static output axes as usual.

Every output element is accumulated in the order of its reduction loops.
"""

import math

from .params import (BROADCAST_PANELS_MAX_BYTES, CACHE_LINE_BYTES, FAR_PACK_BYTES,
                     FAR_PACK_COST, L1_PANEL_SHARE, MIN_REDUCTION_BLOCK, OUTPUT_BLOCK_L2_SHARE,
                     PACK_COST, PACK_RATIO, PARTIAL_PANEL_GROUP, REDUCTION_BLOCK_MAX_OUTPUT_BYTES,
                     GEMM_PARALLEL_MIN_ITERATIONS, PANEL_MIN_BYTES, PANEL_MIN_STRIDE,
                     PARALLEL_CHUNKS_PER_CORE, PARALLEL_COPY_MIN_ELEMENTS, ROW_PANEL_MIN_BYTES,
                     REMAINDER_TILE_MIN_TILES, ROW_BLOCKS_MIN_VECTOR_BITS,
                     ROWS_OUTER_MAX_PANEL_BYTES, SCALAR_TILE,
                     STREAM_MAX_OUTPUT_BYTES, STREAM_MIN_OPERAND_BYTES, SWEPT_BROADCAST_COST,
                     TILE_ONLY_REGISTERS, UNROLL_MAX_BODY, _dtype_bits)
from .._tvm import arith, tirx
from .failures import NotApplicable, _probe
from .analysis import (_BlockInfo, _bytes, _const, _elements, _guard_reads, _has_if_then_else,
                       _packable_dim, _reduction_iters, _unroll_extent)
from .loops import (_largest_divisor, _parallel_worth_it, _parallelize, _vector_factor,
                    _vectorize_innermost)
from .conv import _index_divisors
from .pad_borders import _copy_with_borders
from .predicates import mark_likely
from .spatial import _absorb_epilogues, _streamed_operands


def _tile_reduction(sch, name, params, vector=True, plan=False):
    """Register-tiled, parallel schedule of a reduction. With `vector`, the output's
    contiguous axis (along which every operand must be contiguous or constant, after packing
    a strided operand when cheap) is vectorized and the tile holds vector accumulators;
    without, the tile holds scalar accumulators (independent chains for the FPU). With
    `plan`, returns (vector axis, vector length, tiles) once they are chosen (`sch` is then
    left half scheduled: pass a copy)."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if "O" in info.kinds or not info.reduction or not info.spatial:
        raise NotApplicable("not a plain reduction")
    if vector and info.symbolic and not plan and _pad_planned_axes(sch, info, params):
        info = _BlockInfo(sch, sch.get_sblock(name))
    lanes = params.lanes(info.dtype)
    packed = []
    copies = []  # blocks of the panel copies, scheduled by _pack_panels
    v = vec = None
    if vector:
        # A symbolic axis may carry the vectors (the batch of a Linear layer, as at a fixed
        # size) where it can be padded to a multiple of them; else the static axes do.
        for symbolic in (_plain(info.write) and all(_plain(r) for _, r, _ in info.reads),
                         False):
            v, vec = _choose_vector_axis(info, lanes, symbolic)
            info, vec = _vector_length(sch, name, info, v, vec, params)
            if v not in info.symbolic or _pad_vector_axis(sch, info, v, vec):
                break
        info = _BlockInfo(sch, sch.get_sblock(name))
        # Operands strided along v: pack them into a copy whose last dimension is v's, or
        # straight into panels when they are big enough for panels (one copy, not two).
        panel = None  # the copy of the operand read in panels along v
        rows_outer = False  # whether the row tiles, not the panels, run outermost
        for _ in range(len(info.reads)):
            strided = [(i, r, strides) for i, r, strides in info.reads
                       if strides[v] not in (0, 1) and r.source.name != panel]
            if not strided:
                break
            index, region, strides = strided[0]
            if panel is None and _panel_fits(info, region, strides, v, vec):
                deferred = _pack_panels(sch, info, index, region, v, vec, params, defer=True)
                panel = deferred[0]
                copies.append(panel)
                packed.append(f"{region.source.name} (panels)")
                rows_outer = _rows_outer(info, region, index)
            else:
                _pack_operand(sch, info, index, region, v)
                packed.append(region.source.name)
            block = sch.get_sblock(name)
            info = _BlockInfo(sch, block)
        if any(strides[v] not in (0, 1) for _, r, strides in info.reads
               if r.source.name != panel):
            raise NotApplicable("an operand is strided along the vector axis")
        found = _panel_operand(info, v, vec) if panel is None else None
        if found is not None:
            rows_outer = _rows_outer(info, found[1], found[0])
            deferred = _pack_panels(sch, info, *found, v, vec, params, defer=True)
            panel = deferred[0]
            copies.append(panel)
            packed.append(f"{found[1].source.name} (panels)")
            info = _BlockInfo(sch, sch.get_sblock(name))
        budget = max(1, params.acc_registers // math.ceil(vec / lanes))
    else:
        panel, rows_outer = None, False
        if _index_divisors(info.stmt, info.vars):
            raise NotApplicable("strided-window gather: see _plain_reduction")
        budget = SCALAR_TILE

    tiles = _register_tiles(info, v, budget, math.ceil(vec / lanes) if vector else 1)
    if not vector and not tiles:
        # No reuse to exploit: independent accumulators along the innermost spatial axis.
        k = next((k for k in reversed(info.spatial) if info.extents[k] > 1), None)
        f = _largest_divisor(info.extents[k], budget) if k is not None else 1
        if f < 2:
            raise NotApplicable("nothing to tile")
        tiles[k] = f
    # A kernel worth running in parallel keeps a few outer iterations per core.
    if _in_parallel(info, vec, lanes, params, vector):
        def outer_count():
            spatial = math.prod(info.extents[k] for k in info.spatial)
            return spatial // math.prod(tiles.values()) // (vec or 1)

        while tiles and outer_count() < params.cores:
            k = max(tiles, key=tiles.get)
            tiles[k] = _largest_divisor(info.extents[k], tiles[k] - 1)
            if tiles[k] == 1:
                del tiles[k]
        if not vector and not tiles:
            raise NotApplicable("nothing to tile")
    prepacked = _prepacked_panel_axis(info, v, tiles) if vector and panel is None else None
    if vector and (panel is not None or prepacked is not None):
        tiles = _remainder_tile(info, v, vec, tiles, budget, params, rows_outer if prepacked
                                is None else _rows_outer(info, *prepacked[1:]),
                                None if prepacked is None else info.extents[prepacked[0]])
    partial = any(info.extents[k] % f for k, f in tiles.items())  # a partial last tile
    if plan:
        return v, vec, tiles
    broadcast_panels = None  # the copy of that operand in panels of the tile
    if vector and not info.symbolic:
        # The operand broadcast across the vectors (A of A^T B) in panels of its tile too
        # (_broadcast_in_panels)
        for t, f in tiles.items():
            found = _panel_operand(info, t, f, broadcast=v, partial=partial)
            if found is not None:
                rows_outer = False
                broadcast_panels = (_pack_panels(sch, info, *found, t, f, params),
                                    _packable_dim(found[1], info.vars[t]))
                copies.append(broadcast_panels[0])
                packed.append(f"{found[1].source.name} (panels of {f})")
                block = sch.get_sblock(name)
                info = _BlockInfo(sch, block)
    try:
        padded = _pad_symbolic_tiles(sch, info, tiles, vector)
    except Exception as err:  # noqa: BLE001 - TVM's own check: not an einsum (a conv window)
        _probe(f"pad_einsum of block {name}", err)
        padded = False
        tiles = {k: f for k, f in tiles.items() if k not in info.symbolic}
        if not vector and not tiles:
            raise NotApplicable("only a symbolic axis to tile") from err
    if padded:
        block = sch.get_sblock(name)
        info = _BlockInfo(sch, block)

    outer, outer_axes, inner, red = [], [], [], []
    vec_loop = None
    batch_at = 0  # outer loops over batch axes before the panel loop
    for k, loop in enumerate(info.loops):
        if info.kinds[k] == "R":
            red.append(loop)
        elif k == v:
            o, vec_loop = sch.split(loop, factors=[None, vec])
            # With panels, the panel index runs outermost: one panel stays in cache while
            # every tile of the other axes sweeps it (but see _rows_outer), after the
            # batch axes, whose indices have panels of their own (_batch_loops).
            if panel is not None and not rows_outer:
                batch_at = _batch_loops(info, outer_axes)
                outer.insert(batch_at, o)
                outer_axes.insert(batch_at, k)
            else:
                outer.append(o)
                outer_axes.append(k)
        elif k in tiles:
            o, i = sch.split(loop, factors=[None, tiles[k]])
            outer.append(o)
            outer_axes.append(k)
            inner.append(i)
        else:
            outer.append(loop)
            outer_axes.append(k)
    panel_axis = _prepacked_panel_axis(info, v, tiles) if panel is None else None
    if panel_axis is not None:
        rows_outer = _rows_outer(info, *panel_axis[1:])
    if panel_axis is not None and not rows_outer:  # as with panels made here (one panel
        panel_axis = panel_axis[0]                 # swept by every tile; see _rows_outer)
        position = outer_axes.index(panel_axis)
        outer.insert(0, outer.pop(position))
        outer_axes.insert(0, outer_axes.pop(position))
    # The reduction in blocks whose slice of the vector panel stays in L1 (_reduction_block):
    # their loop runs outside the panels, so that the broadcast operand's slice stays in L2
    # while every panel sweeps it (not rows outer: each row tile sweeps every panel whole;
    # not per batch index: its panels are small, and the core loop would split the batch).
    # (A partial tile is predicated: blockize, which the blocks' init needs, refuses it.)
    kc = _reduction_block(sch, block, info, v, vec, params) \
        if panel is not None and not rows_outer and not batch_at and not partial else None
    # Or, past its output's limit there, in blocks of output rows too (_row_blocks), the
    # vector operand in panels copied here or before (an inference weight: panel_axis).
    panels_first = (panel is not None or panel_axis is not None) and not rows_outer
    row_blocks = _row_blocks(sch, block, info, v, vec, tiles, params) \
        if kc is None and panels_first and not batch_at else None
    if row_blocks is not None:
        init, writeback = _schedule_row_blocks(
            sch, info, tiles, row_blocks, (outer, outer_axes, red, inner), vec_loop,
            deferred if panel is not None else None, broadcast_panels, params)
        if partial:
            for predicated in (block, init, writeback):
                mark_likely(sch, predicated)
        tile = "x".join(str(tiles[k]) for k in sorted(tiles))
        note = (f"tiled[{tile}xv{vec}, parallel, packed {'+'.join(packed)}, "
                f"row blocks of {row_blocks[1]}, k-blocks of {row_blocks[2]}]")
        return note, {name, sch.get(init).name_hint, sch.get(writeback).name_hint} | set(copies)
    k_outer = None
    if kc:
        k_outer, red[0] = sch.split(red[0], factors=[None, kc])
    sch.reorder(*([k_outer] if k_outer is not None else []), *outer, *red, *inner,
                *([vec_loop] if vec_loop is not None else []))
    # A tile written back transposed (a d/dw [k, m]^T @ [k, n], vectors along m) holds its
    # panel's tiles in its accumulator: the reduction in blocks inside the panel loop
    # (_panel_blocks_inside)
    k_panel = _panel_blocks_inside(sch, info, v, vec, outer, red, params) \
        if panel is not None and not rows_outer and not batch_at and k_outer is None else None
    parallel = ""
    padded_here = []
    panel_loop = outer[batch_at]
    # whether the panel copy can go panel by panel into the panel loop (not rows outer: the
    # outer loop then runs over rows, whatever its extent)
    per_panel = vector and not rows_outer and \
        _const(sch.get(panel_loop).extent) == info.extents[v] // vec
    in_parallel = _in_parallel(info, vec, lanes, params, vector)
    if in_parallel and k_outer is not None and _cores_outside_blocks(sch, k_outer, outer, params):
        parallel = "parallel"
        panel_loop = outer[1]
    elif in_parallel:
        first = outer[0]
        # The fused parallel loop stops before an untiled axis the block reads under
        # floordiv or floormod (a derived strided conv's d/dx: (i + 1) // 2, (i + 1) % 2):
        # TVM 0.27 lowered such an axis fused whole into it to wrong values (LeNet's
        # stride-2 d/dx on AVX-512, 4x4 input: off by 32). Tiled axes (a panel's i // f over
        # a tile of f, the strided d/dx phases' channels) fuse as before.
        risky = {k for k in _index_divisors(info.stmt, info.vars)
                 if k not in tiles and not (vector and k == v)}
        limit = next((i for i, k in enumerate(outer_axes) if k in risky), len(outer))
        if k_panel is not None:
            limit = 1  # the panels alone: the blocks of the reduction run inside them
        head, parallel = _parallelize(sch, outer[:limit], params)
        outer = head + outer[limit:]
        if not (batch_at and any(lp is panel_loop for lp in outer)):
            # (after batch loops, not fused into the parallel loop: it copies the panels
            # of its batch index, as they are read)
            panel_loop = outer[0]
            per_panel = per_panel and panel_loop is first  # else fused with other loops
        if parallel and outer[0] is first and first is info.loops[0]:
            padded_here = _pad_per_iteration(sch, block, outer[0], info, lanes)
    if panel is not None:
        _place_panel_copy(sch, deferred, panel_loop, per_panel)
    elif parallel and not padded_here and k_outer is None:
        outer = _chunk_parallel_loop(sch, outer, params)
    # (with blocks inside the panels, the panel loop: parallelized alone, never fused)
    anchor = outer[-1] if k_panel is None else outer[0]

    # Accumulate the register tile in a local buffer; write it back with the epilogue,
    # unless the epilogue streams operands of the output's size: then it runs after the tiles.
    streamed = _streamed_operands(sch, block)
    writeback = _cache_accumulator(sch, block, info, v, absorb=not streamed)
    epilogue = []
    if writeback is not None:
        sch.reverse_compute_at(writeback, anchor, preserve_unit_loops=True)
        epilogue = [] if streamed else _absorb_epilogues(sch, writeback)
    tile_points = math.prod(tiles.values())
    last_red = red[-1]
    if _unroll_extent(sch, last_red) * tile_points <= UNROLL_MAX_BODY and len(red) > 1:
        sch.unroll(last_red)
    for loop in inner:
        sch.unroll(loop)
    if vec_loop is not None:
        sch.vectorize(vec_loop)
    if writeback is not None:
        _vectorize_innermost(sch, writeback, lanes)
    if k_outer is not None:
        # Each block of the reduction adds to the output; the first sets it. As one block
        # over the tile (whose reduction is the block loop), the tile's init is one branch
        # per tile (k_outer == 0) around vector stores, outside the reduction's inner loop
        # (decompose_reduction refuses an init below a reduction loop).
        init = sch.blockize(red[0])
    else:
        # Last: the update block loses its init, and with it the checks other primitives
        # need.
        init = sch.decompose_reduction(block, red[0] if k_panel is None else k_panel)
        _vectorize_innermost(sch, init, lanes)
    if partial:
        for predicated in (block, init, writeback):
            if predicated is not None:
                mark_likely(sch, predicated)
    touched = {sch.get(init).name_hint, name} | set(copies) | set(padded_here) \
        | ({sch.get(writeback).name_hint} if writeback is not None else set())
    tile = "x".join(str(tiles[k]) for k in sorted(tiles))
    note = (f"tiled[{tile}{'x' if tile and vec else ''}{f'v{vec}' if vec else ' scalar'}"
            f"{', parallel' if parallel else ''}"
            f"{', packed ' + '+'.join(packed) if packed else ''}"
            f"{', rows outer' if rows_outer else ''}"
            f"{f', k-blocks of {kc}' if k_outer is not None else ''}"
            f"{f', k-blocks of {_const(sch.get(red[0]).extent)} per panel' if k_panel else ''}"
            f"{', padded per image' if padded_here else ''}"
            f"{', +' + '+'.join(epilogue) if epilogue else ''}]")
    return note, touched


def _broadcast_in_panels(info, v, tiles):
    """Whether _tile_reduction packs the operand broadcast across the vectors (A of A^T B)
    into panels of the static block's tile `tiles` ({t: f}), which runs the panels first
    (rows_outer = False) whatever _rows_outer said."""
    partial = any(info.extents[k] % f for k, f in tiles.items())
    return any(_panel_operand(info, t, f, broadcast=v, partial=partial) is not None
               for t, f in tiles.items())


def _remainder_tile(info, v, vec, tiles, budget, params, rows_outer=False, panels=None):
    """`tiles`, or on a 16-register target (AVX2) a tile of rows of the whole register budget
    where its largest divisor is smaller: 6 x v16 (12 accumulators) over 1024 rows, 170 full
    tiles and a last one of 4 rows, not 4 x v16 (8). The split is then predicated, and
    LoopPartition (build.PARTITION_CONST_LOOPS) peels the partial tile off the row loop. Only
    for a 2-D output (a GEMM's: not a conv's or a batch's) contiguous along the vectors (or
    written back transposed, panels first: below), of at least REMAINDER_TILE_MIN_TILES
    tiles, with its vector operand in panels (copied here, or an inference weight packed
    before: _prepacked_panel_axis), where the thread pool takes the panels' loop alone, or
    with rows outer the row tiles' (a row loop fused with another for the pool would keep its
    predicates). The reduction then runs whole (blockize, which blocks of it need
    (_reduction_block), refuses the predicated tile) but in a big output's row blocks
    (_row_blocks) and a transposed tile's panel (_panel_blocks_inside), whose blocks
    decompose_reduction makes. A
    broadcast operand whose rows lie far apart along the reduction (A of A^T B) goes into
    panels of the tile's rows, the last one padded with zeros (_pack_partial_panels); read in
    place it touched a new row every step (1024^3: 0.43x the time of 4 x v16).

    Eight accumulators barely cover the FMA latency of two units (4-5 cycles). AVX2 code on the
    2-core AVX-512 Xeon against OpenBLAS's Haswell kernels (OPENBLAS_CORETYPE=Haswell), one
    thread: 768 x 1024 x 1024 A B 6 x v16 1.10x the speed of 4 x v16, A^T B 1.06x. With the
    last tile partial, old/new interleaved, 1 / 2 threads: 1024^3 A B 1.10x / 1.18x, A B^T
    1.09x / 1.25x (0.76-0.86x -> 0.90-0.95x OpenBLAS); 512^3 (4 x v16 in blocks of the
    reduction before) 1.21x / 1.15x; A^T B in partial panels 1024^3 1.11x / 1.10x, 512^3
    1.15x / 1.16x; 256^3 1.19x; the Transformer's Linear layers (1024 rows, rows outer)
    1.10-1.14x / 1.06-1.16x, its train step 1.035x, its inference at batch 64 (prepacked
    weights) 1.13x. A weight prepacked in panels, panels first (its panel index an axis of
    its own, `panels` of them): 1024^3 at 2 threads 0.80x -> 0.93x numpy, the MLP's forward
    at batch 64 1.05x. Rows outer ends where the tile sends the broadcast operand into panels
    (_broadcast_in_panels): the panels then run first, and the tile is
    judged by them (A^T B 200 x 256 x 128 took 6 rows for 34 row tiles, then fused its 8
    panels with them for the pool, and LoopPartition left the unrolled tile a loop of
    symbolic extent: TVM refused to build it). A tile written back transposed (vectors along
    the output's rows: the Transformer's d/dw [1024, 512]^T @ [1024, 128], A in panels of
    v16, B in panels of 6 columns) takes it panels first, its write-back vectors as wide as
    the tile (6, the last 2) peeled off with it: 4 x v16 -> 6 x v16 0.827 -> 0.804 ms on 2
    AVX2 threads (0.88x -> 0.91x numpy). Not with rows outer: the pool fused the row
    tiles' loop with the panels' there, and the partial write-back vector had no constant
    width (the MLP's 64 x 256 dense: TVM refused to vectorize it)."""
    if params.vector_registers > 16 or len(tiles) != 1 or info.symbolic or \
            len(info.write.region) != 2 or \
            (info.write_strides[v] != 1 and rows_outer):
        return tiles
    (t, f), = tiles.items()
    if not any(r.min.same_as(info.vars[t]) for r in info.write.region):
        return tiles
    # the loop the thread pool takes alone (_parallelize fuses no other into it): the row
    # tiles' with rows outer, else the panels' (`panels`: those of a weight already in
    # panels, whose panel index is an axis of its own, v running within one panel)
    alone = -(-info.extents[t] // budget) if rows_outer else \
        panels if panels is not None else info.extents[v] // vec
    if f >= budget or info.extents[t] < REMAINDER_TILE_MIN_TILES * budget or \
            alone < PARALLEL_CHUNKS_PER_CORE * params.cores:
        return tiles
    if rows_outer and _broadcast_in_panels(info, v, {t: budget}):
        return _remainder_tile(info, v, vec, tiles, budget, params, False, panels)
    return {t: budget}


def _panel_blocks_inside(sch, info, v, vec, outer, red, params):
    """For a tile written back transposed (its accumulator a buffer, not the output: the
    vectors run along the output's rows), panels first over a single static reduction: split
    that reduction into blocks whose slice of the vector panel fits in L1
    (_panel_block_steps) and put their loop right inside the panel loop outer[0], the row
    tiles inside it, in place in `red`. The accumulator then holds every tile of the panel
    (the Transformer's d/dw [1024, 512]^T @ [1024, 128]: a [128, 16] panel, 8 KiB) and is
    written back after the panel. Returns the blocks' loop, or None where none is needed, or
    where the panel loop, then the only parallel one, has fewer than PARALLEL_CHUNKS_PER_CORE
    iterations per core (before, the pool fused it with the row tiles).

    That d/dw at 2 threads, against numpy interleaved: AVX2 code 0.88x -> 0.92x (its 64 KiB
    panel, read by each of 22 row tiles, was in L2), AVX-512 1.03x -> 1.05x; the Transformer's
    train step 1.006x (AVX2), 1.002x (AVX-512): its two d/dw are the only kernels of the
    example models this changes."""
    if info.write_strides[v] == 1 or info.symbolic or len(red) != 1 or len(outer) < 2 or \
            (_const(sch.get(outer[0]).extent) or 0) < PARALLEL_CHUNKS_PER_CORE * params.cores:
        return None
    kc = _panel_block_steps(info, vec, params)
    if kc is None:
        return None
    k_panel, red[0] = sch.split(red[0], factors=[None, kc])
    sch.reorder(outer[0], k_panel, *outer[1:])
    return k_panel


def _batch_loops(info, outer_axes):
    """How many of `outer_axes` (the axes of the outer loops placed so far) lead over batch
    axes: axes along which every operand is read (batch_matmul's batch and heads), each
    index of which has panels of its own. The panel loop goes after them, not outermost:
    each core then copies and reads the panels of its own batch indices, in cache, writes
    whole rows of their outputs and reads only their rows of the other operand (attention's
    q k^T over 16 x 4 heads of [64, 32]: 105 -> 79 us warm, 184 -> 136 us flushed, 2 threads
    of the 2-core AVX-512 Xeon; panel outermost, each core read all of q and wrote a column
    strip of every head)."""
    count = 0
    for k in outer_axes:
        if not all(strides[k] not in (0, None) for _, _, strides in info.reads):
            break
        count += 1
    return count


def _rows_outer(info, region, index):
    """Whether the row tiles run outside the panels of the operand `region` (read `index`)
    is packed into: when all its panels fit in ROWS_OUTER_MAX_PANEL_BYTES, within a core's
    L2 cache, and the largest other operand is bigger. Panels outermost, each core reads
    that operand once per panel it owns, from L3 when it is past L2; rows outermost, once,
    every row tile then sweeping all the panels from L2, and each core writes whole rows
    of the output, not a column strip of it (in the train step, with the operands and the
    output cold, a Transformer's forward dense and d/dx: 20.13 -> 18.12 ms a step on a 2-core
    AVX-512 Xeon; its d/dw, whose other operand is packed in panels of its tile too, lost:
    0.76x)."""
    panel_bytes = _bytes(region.source)
    others = [_bytes(r.source) for i, r, _ in info.reads if i != index]
    return panel_bytes <= ROWS_OUTER_MAX_PANEL_BYTES and max(others, default=0) > panel_bytes


def _reduction_block(sch, block, info, v, vec, params):
    """Steps of the reduction per block (KC, as BLAS calls it) for a contraction that reads
    its vector operand in panels, or None where the whole reduction fits: a block's slice of
    a panel (KC x vec) fits in L1_PANEL_SHARE of the L1 data cache, where every row tile
    reads it again; a whole panel of a 1024-step reduction (128 KiB at v32) sat in L2.
    Only a single static reduction that accumulates in the output itself (no write-back:
    _accumulates_in_output), each block adding to it, into an output of at most
    REDUCTION_BLOCK_MAX_OUTPUT_BYTES: each block reloads the output tiles before its FMAs.

    At 1024^3 (a 4 MiB output, from L3 on every reload) blocks of 256 made one AVX-512 core
    7-19% slower, and two threads 0.87x -> 0.92x numpy on a quiet machine (the broadcast
    operand's 1 MiB block kept in each core's L2 across its panels, not 4 MiB streamed from
    L3 per panel) but 8-18% slower under load. Summing each block from zero in registers and
    adding it to the output after (hand-written TIR, one core) was slower still; GotoBLAS
    also prefetches the output tile meanwhile, which this tile does not (untried)."""
    if v is None or info.symbolic or len(info.reduction) != 1 or \
            _bytes(info.write.source) > REDUCTION_BLOCK_MAX_OUTPUT_BYTES or \
            not _accumulates_in_output(sch, block, info, v):
        return None
    return _panel_block_steps(info, vec, params)


def _panel_block_steps(info, vec, params):
    """KC: the steps of the (single) reduction whose slice of a vector panel (KC x vec) fits
    in L1_PANEL_SHARE of the L1 data cache, dividing the reduction; None where the whole
    panel fits, or where the blocks would be shorter than MIN_REDUCTION_BLOCK."""
    extent = info.extents[info.reduction[0]]
    step = vec * _dtype_bits(info.dtype) // 8  # bytes of a panel per step of the reduction
    fits = int(params.l1d_bytes * L1_PANEL_SHARE) // step
    if extent <= fits:
        return None
    kc = _largest_divisor(extent, fits)
    return kc if kc >= MIN_REDUCTION_BLOCK else None


def _row_blocks(sch, block, info, v, vec, tiles, params):
    """(row axis t, rows per block, KC, the output dimension t indexes) for a big 2-D
    contraction whose output is past REDUCTION_BLOCK_MAX_OUTPUT_BYTES and whose vector panel is
    past L1 (_panel_block_steps), as GotoBLAS blocks it; else None. Each core takes an equal
    share of the panels (the output's columns) and sweeps it block of rows by block of rows
    (its share of a block at most OUTPUT_BLOCK_L2_SHARE of L2), accumulating a block in a
    buffer of its own laid out panel after panel ([columns // vec, rows, vec]: the output's
    rows, 4 KiB apart at 1024 columns, would share L1 sets with the panel's slice), copied out
    after the block; inside, the blocks of the reduction, then the panels (a block's slice of
    one in L1), then the row tiles (the broadcast operand's rows x KC in L2). A block holds a
    divisor of the row tiles, at least half the most it may hold (else None); the last tile
    may be partial (_remainder_tile: 6 x v16 over 1024 rows, 171 tiles in blocks of 9), its
    predicate peeled off by LoopPartition as without blocks. Only where the tile accumulates
    in the output itself (no epilogue: _accumulates_in_output), from AVX2's vectors up
    (ROW_BLOCKS_MIN_VECTOR_BITS).

    Panels outermost over the whole reduction, each core streamed all of the broadcast
    operand (4 MiB at 1024^3) from L3 once per panel, beside the other core's stream. Blocks
    of whole rows taken by the cores in turn (before) needed rows in full tiles, which AVX2's
    6-row tile over 1024 rows is not. 1024^3 on the 2-core AVX-512 Xeon, 2 threads, against
    numpy interleaved (whole reduction / whole rows by block / columns by core):
    AVX-512 A B 0.92 / 1.01 / 1.02-1.04x, A B^T 0.94 / 0.96 / 1.00-1.01x, A^T B 0.93 / 0.95 /
    0.98-0.99x; AVX2 code against OpenBLAS's Haswell kernels A B 0.91-0.93 / - / 0.97-0.98x,
    A B^T 0.96-0.98 / - / 1.00-1.01x, A^T B 0.83-0.84 / - / 0.92x (one thread: 1.02x, -, 0.98x
    the whole reduction's speed)."""
    if v is None or info.symbolic or len(info.reduction) != 1 or len(tiles) != 1 or \
            params.vector_bits < ROW_BLOCKS_MIN_VECTOR_BITS or \
            _bytes(info.write.source) <= REDUCTION_BLOCK_MAX_OUTPUT_BYTES or \
            not _accumulates_in_output(sch, block, info, v):
        return None
    (t, f), = tiles.items()
    # a 2-D output [rows, columns]: the row axis t indexes one dimension (d_t), the vectors
    # (and the panel index of a weight already in panels: jo * vec + ji) the other
    region = info.write.region
    d_t = next((d for d, r in enumerate(region) if r.min.same_as(info.vars[t])), None)
    columns = _const(info.write.source.shape[1 - d_t]) if len(region) == 2 and \
        d_t is not None else None
    kc = _panel_block_steps(info, vec, params)
    if not columns or kc is None or columns % vec or (columns // vec) % params.cores:
        return None
    share_bytes = columns // params.cores * _dtype_bits(info.dtype) // 8  # a core's row
    most = max(1, int(params.l2_bytes * OUTPUT_BLOCK_L2_SHARE) // share_bytes // f)
    count = -(-info.extents[t] // f)  # row tiles, the last one maybe partial
    per_block = _largest_divisor(count, most)
    if 2 * per_block < most:  # (a partial last block kept its checks: LoopPartition peels
        return None           # no predicate of two conditions)
    return t, per_block * f, kc, d_t


def _schedule_row_blocks(sch, info, tiles, row_blocks, loops, vec_loop, deferred, broadcast,
                         params):
    """The loop nest of _row_blocks: `loops` are (outer loops, their axes, reduction loops,
    tile loops) as _tile_reduction split them, the panel loop first; `deferred` the vector
    operand's panel copy (None where it came in panels), which runs whole first, in
    parallel; `broadcast` the copy of the operand broadcast across the vectors in panels of
    the tile (A of A^T B) and the dimension of it the tile's rows index, or None. That one
    each core makes block by block, a block of rows x KC just before its panels sweep it, as
    GotoBLAS packs A: in its own cache, not a copy of the whole made by both cores and then
    read by both (1024^3 A^T B, 2 threads: AVX2 code 0.92x -> 0.95x numpy, one thread 0.88x
    -> 0.90x; AVX-512 0.97-1.00x -> 1.00-1.02x; A B^T, whose x goes into panels too, 1.00x
    on both). Returns (the init block, the write-back block)."""
    outer, outer_axes, red, inner = loops
    t, rows, kc, d_t = row_blocks
    position = outer_axes.index(t)
    cores, outer[0] = sch.split(outer[0], factors=[params.cores, None])
    row_block, outer[position] = sch.split(outer[position], factors=[None, rows // tiles[t]])
    k_outer, red[0] = sch.split(red[0], factors=[None, kc])
    sch.reorder(cores, row_block, k_outer, *outer, *red, *inner, vec_loop)
    sch.parallel(cores)
    if deferred is not None:
        _place_panel_copy(sch, deferred, None, False)
    if broadcast is not None:
        copy = sch.get_sblock(broadcast[0])
        sch.compute_at(copy, k_outer, preserve_unit_loops=True)
        if len(sch.get(copy).iter_vars) == 3:
            # partial panels (_pack_partial_panels: panel, step, row) -> (step, panel, row):
            # the block's rows of each step of the reduction read at once (its steps lie a
            # row of the operand apart)
            copy_loops = sch.get_loops(copy)[-3:]
            sch.reorder(copy_loops[1], copy_loops[0], copy_loops[2])
        else:  # over the source's dimensions, as a whole copy is ordered (AVX-512 1024^3
            # A^T B at 2 threads: 0.97x -> 1.00x numpy; left in source order, 0.96x)
            _order_panel_copy(sch, copy, broadcast[1], 2, tiles[t],
                              sch.get(copy).reads[0].source, params, parallel=False)
    d_v = 1 - d_t  # the output's last dimension: it is contiguous along the vectors
    vec = _const(sch.get(vec_loop).extent)
    writeback = _cache_laid_out(sch, info, "write", 0, info.write, lambda *idx: [
        idx[d_v] // vec, idx[d_t], idx[d_v] % vec])
    sch.reverse_compute_at(writeback, row_block, preserve_unit_loops=True)
    # the write-back by vectors of the tile's width, along the output's contiguous axis
    sch.vectorize(sch.split(sch.get_loops(writeback)[-1], factors=[None, vec])[1])
    lanes = params.lanes(info.dtype)
    for loop in inner:
        sch.unroll(loop)
    sch.vectorize(vec_loop)
    init = sch.decompose_reduction(info.block, k_outer)
    _vectorize_innermost(sch, init, lanes)
    return init, writeback


def _cores_outside_blocks(sch, k_outer, outer, params):
    """Split the outermost loop `outer[0]` (the panels) into one parallel iteration per core
    outside the loop over blocks of the reduction `k_outer` (outermost until now), in place
    in `outer`: one parallel launch per call, not one per block, each core sweeping its own
    panels block by block. Returns whether it did; not where the cores do not divide that
    loop (then the parallel loop runs inside the blocks: a launch per block)."""
    extent = _const(sch.get(outer[0]).extent)
    if not extent or extent % params.cores:
        return False
    core, rest = sch.split(outer[0], factors=[params.cores, None])
    sch.reorder(core, k_outer)
    sch.parallel(core)
    outer[:1] = [core, rest]
    return True


def _accumulates_in_output(sch, block, info, v):
    """Whether the block's vector tile accumulates in its output (_cache_accumulator returns
    None): the output is contiguous along v and no epilogue reads it."""
    return info.write_strides[v] == 1 and (
        _streamed_operands(sch, block) or not sch.get_consumers(block))


def _prepacked_panel_axis(info, v, tiles):
    """(The output axis that selects the panel of an operand already in panels (an inference
    weight packed once, tvmfront.prepack: w[jo, k, ji] read at the vector axis ji), that
    operand's region, its read index), when no other operand depends on that axis and no
    tile splits it; else None. That axis goes outermost unless _rows_outer: each panel is
    read once while every row tile sweeps it, instead of every panel once per row tile (the
    MLP's 256 -> 256 Linear at batch 64: its 256 KiB of panels 8 times per call, 2 MiB,
    against its 64 KiB input 8 times). Rows outer, the Transformer's inference at batch 64
    (4096 rows, weights of 64-256 KiB): 22.1 -> 18.9 ms."""
    if v is None:
        return None
    for index, region, strides in info.reads:
        first = region.region[0].min
        axis = next((k for k, var in enumerate(info.vars) if first.same_as(var)), None)
        if axis is None or axis == v or axis in tiles or info.kinds[axis] == "R" or \
                len(region.region) < 3 or not _plain(region) or \
                not region.region[-1].min.same_as(info.vars[v]):
            continue
        if all(s[axis] == 0 for _, r, s in info.reads if r is not region):
            return axis, region, index
    return None


def _in_parallel(info, vec, lanes, params, vector):
    """Whether the block runs in parallel. A plain contraction with vector tiles (every
    operand read at loop variables: no conv window) counts its register FMAs (a v32 tile
    of AVX-512 is 2 per iteration, a v10 one 1) against GEMM_PARALLEL_MIN_ITERATIONS;
    everything else its vector iterations against params.PARALLEL_MIN_ITERATIONS."""
    if vector and all(_plain(r) for _, r, _ in info.reads):
        per_register = vec / math.ceil(vec / lanes)
        return _parallel_worth_it(info, per_register, params, GEMM_PARALLEL_MIN_ITERATIONS)
    return _parallel_worth_it(info, vec or 1, params)


def _chunk_parallel_loop(sch, outer, params):
    """`outer` with its fused parallel loop split into at most PARALLEL_CHUNKS_PER_CORE
    parallel iterations per core, each a serial loop over the tiles it covers.

    Per parallel iteration TVM allocates the tile's accumulator buffer: an 8 x v32 fp32
    tile is 1 KiB, too big for its stack (under 1 KiB only), so each iteration called
    TVMBackendAllocWorkspace and FreeWorkspace and kept the tile in that memory around the
    reduction. Serial loops inside let StorageRewrite hoist it to the parallel iteration
    (one AVX-512 core, kernels alone, 20th percentile, load 3.6-13: the MLP's 256 -> 256
    Linear at batch 64, 64 tiles in 16 chunks, 78.2 -> 75.8 us; its 64 -> 256 one, parallel,
    20.8 -> 20.1 us, against 18.4 us with no parallel loop at all). The chunks are a multiple
    of the cores: 171 row tiles (1024 rows of 6) went into 9 chunks of 19, 5 on one core and
    4 on the other (an inference dense over a prepacked [384, 128] weight at 1024 rows, AVX2
    code at 2 threads: 575 -> 521 us as 171 parallel iterations)."""
    head = outer[0]
    extent = _const(sch.get(head).extent)
    want = PARALLEL_CHUNKS_PER_CORE * params.cores
    if not extent or extent <= want:
        return outer
    # a count of chunks the cores share evenly, dividing the loop; else the loop whole (the
    # pool then splits its iterations within one of even)
    chunks = next((d for d in range(want, params.cores - 1, -1)
                   if d % params.cores == 0 and extent % d == 0), None)
    if chunks is None:
        return outer
    chunk, tiles = sch.split(head, factors=[chunks, None])
    sch.parallel(chunk)
    return [chunk, tiles] + list(outer[1:])


def _vector_length(sch, name, info, v, vec, params):
    """(block info, vector length) for vectors of `vec` along v chosen by _choose_vector_axis,
    adjusted for the register tile beside them; pads prime output axes (_pad_prime_axes)."""
    lanes = params.lanes(info.dtype)
    if vec > lanes and vec % lanes == 0 and _streams_operands(info) and \
            _tile_outputs(info, v, lanes, params) > _tile_outputs(info, v, vec, params):
        # One register per vector leaves room for a register tile over a second output
        # axis: fewer passes over operands that do not fit in cache (a conv's d/dw:
        # 3x3xv8 outputs per tile, not 3xv16). Not where the tile would cover no more
        # outputs (a GEMM's d/dw: 8xv8 ran at half the speed of 4xv16).
        vec = lanes
    if _pad_prime_axes(sch, info, v, params):
        # A prime output axis (the char vocabulary's 103) padded to a multiple of
        # PRIME_PAD: a register tile over it (8 x v32), not the vectors along v alone.
        info = _BlockInfo(sch, sch.get_sblock(name))
    if _no_tile_beside(info, v, params):
        # No other output axis tiles (the char vocabulary's 103 outputs, a prime): wider
        # vectors along v keep enough independent accumulators in flight instead.
        vec = _vector_factor(info.extents[v], lanes, max_registers=min(
            TILE_ONLY_REGISTERS, params.acc_registers)) or vec
    return info, vec


def _pad_vector_axis(sch, info, v, vec):
    """Pad the symbolic vector axis v to a multiple of `vec` (_pad_axes): its vectors then
    need no predicate. Returns whether v's extent is such a multiple (TVM finds no einsum to
    pad: not)."""
    try:
        _pad_axes(sch, info, {v: vec})
    except Exception as err:  # noqa: BLE001 - TVM's own check: not an einsum
        _probe(f"pad_einsum of block {info.name}", err)
        return False
    return True


def _pad_planned_axes(sch, info, params):
    """Pad the symbolic axes that the block's vectors or register tile will split to
    multiples of their factors, before any operand is packed (_pad_axes): a block reading
    panels (w[j // 32, k, j % 32]) is no einsum that TVM could pad. The factors are those
    _tile_reduction chooses, found on a copy of the schedule. Returns whether it padded."""
    try:
        v, vec, tiles = _tile_reduction(sch.copy(), info.name, params, plan=True)
    except Exception as err:  # noqa: BLE001 - the rule itself will fail, or tile less
        _probe(f"planning the tile of {info.name}", err)
        return False
    factors = {k: f for k, f in tiles.items() if k in info.symbolic}
    if v in info.symbolic:
        factors[v] = vec
    try:
        return _pad_axes(sch, info, factors)
    except Exception as err:  # noqa: BLE001 - TVM's own check: not an einsum (a conv window)
        _probe(f"pad_einsum of block {info.name}", err)
        return False


def _pad_axes(sch, info, factors):
    """Pad the block's axes {k: f} whose extent is not yet a multiple of f to such multiples
    (``pad_einsum``: inputs are copied into zero-padded buffers, the output is computed into
    a padded buffer and copied out). Returns whether anything was padded; raises where TVM
    finds no einsum."""
    analyzer = arith.Analyzer()
    padding = [1] * len(info.vars)
    for k, f in factors.items():
        extent = info.stmt.iter_vars[k].dom.extent
        if f > 1 and not analyzer.can_prove_equal(tirx.floormod(extent, f), 0):
            padding[k] = f
    if all(p == 1 for p in padding):
        return False
    sch.pad_einsum(info.block, padding)
    return True


def _cache_accumulator(sch, block, info, v, absorb=True):
    """The block's output accumulated in a buffer of its own (returns the write-back block),
    laid out with v's dimension last when the output is strided along v (a conv's output
    channels), so the tile's vectors are stored whole; None where the vector tile accumulates
    in the block's output itself: no epilogue to absorb (no consumer, or not `absorb`) and no
    layout to change.

    LLVM keeps the tile in registers either way, but a buffer of its own is compacted to the
    tile, which at 8 x v32 fp32 is 1 KiB: too big for TVM to put on the stack (under 1 KiB
    only), so every tile allocated a workspace and stored its registers there before the
    write-back (the Transformer's qkv 1024x128 @ 384x128^T on one AVX-512 core: 1141 ->
    1011 us; attention's 64 x [64, 32] @ [32, 64]: 176 -> 155 us)."""
    d = _packable_dim(info.write, info.vars[v]) if v is not None and \
        info.write_strides[v] != 1 else None
    ndim = len(info.write.region)
    if d is None or d == ndim - 1:
        if v is not None and (not absorb or not sch.get_consumers(block)):
            return None
        return sch.cache_write(block, 0, "global")
    return _cache_laid_out(sch, info, "write", 0, info.write,
                           lambda *idx: [idx[i] for i in range(ndim) if i != d] + [idx[d]])


def _cache_read(sch, block, index):
    """A copy of `block`'s read `index` that `block` alone reads. By default cache_read
    sends every block of the kernel that reads the buffer to the copy, in the layout chosen
    for this one: a strided conv's d/dx phases all read the weight in the panels of the
    first phase's vectors of input channels, which the others could then not vectorize
    (w_packed[c // 32, o, kh, kw, c % 32] has no stride along c) and tiled the batch instead,
    with a transposed copy of dy and a write-back scattered across channels (64->64 @14
    stride 2, b32, d/dx on one AVX-512 core: 1601 -> 1331 us).

    TVM names every copy of a buffer x x_global, and the rules find blocks by name: where
    that name is taken, the copy is copied again (x_global_global) and the first copy
    inlined into the second, until the name is new."""
    copy = sch.cache_read(block, index, "global", consumer_blocks=[block])
    chain = []
    while not _named_once(sch, sch.get(copy).name_hint):
        chain.append(copy)
        copy = sch.cache_read(block, index, "global")
    for first in chain:
        sch.compute_inline(first)
    return copy


def _named_once(sch, name):
    """Whether exactly one block of the kernel is called `name`."""
    try:
        sch.get_sblock(name)
    except Exception:  # noqa: BLE001 - TVM's error: no block, or several, of that name
        return False
    return True


def _cache_laid_out(sch, info, kind, index, region, layout):
    """A copy of the block's read (`kind` "read") or written buffer `index` (region `region`)
    in a new buffer whose indices are layout(*the buffer's indices). Returns the block of the
    copy (cache_read's, or cache_write's write-back)."""
    if len({str(e.ty.dtype) for e in region.source.shape}) == 1:
        if kind == "read":
            copy = _cache_read(sch, info.block, index)
            sch.transform_layout(copy, ("write", 0), layout)
        else:
            copy = sch.cache_write(info.block, index, "global")
            sch.transform_layout(copy, ("read", 0), layout)
        return copy
    # A shape of int64 and int32 extents (a symbolic batch n beside a TE op's Python-int
    # sizes): transform_layout refuses it (one index dtype per buffer); reindex_cache_*
    # make the buffer in its layout at once, from the block's variables, in one dtype.
    position = [next((k for k, var in enumerate(info.vars) if r.min.same_as(var)), None)
                for r in region.region]
    if None in position or any(_const(r.extent) != 1 for r in region.region):
        raise NotApplicable("an index of a mixed int32/int64 buffer is no block variable")
    index_map = tirx.function.IndexMap.from_func(
        lambda *iters: layout(*[iters[k] for k in position]), ndim=len(info.vars),
        index_dtype="int64")
    reindex = sch.reindex_cache_read if kind == "read" else sch.reindex_cache_write
    copy = reindex(info.block, index, "global", index_map)
    # Its loops run over the block's variables in the block's order: put them in the
    # buffer's order, as cache_* would have.
    loops = list(sch.get_loops(copy))[-len(position):]
    ranked = sorted(position)
    sch.reorder(*[loops[ranked.index(k)] for k in position])
    return copy


def _pad_per_iteration(sch, block, loop, info, lanes):
    """Move the zero-padding copies the block reads (a conv's padded input or dy) into its
    parallel loop, when that loop runs over the first axis alone (the images) and the copy's
    first axis is indexed by it: each iteration pads its own image just before its tiles
    read it (in cache, on every core), instead of one pass over the whole padded tensor
    first. Returns the names of the blocks so placed (copy and fill)."""
    var = info.vars[0]
    placed = []
    for producer in sch.get_producers(block):
        stmt = sch.get(producer)
        if _reduction_iters(stmt) or not _has_if_then_else(stmt):
            continue
        reads = [r for r in sch.get(block).reads if r.source.same_as(stmt.writes[0].source)]
        if not reads or not all(r.region[0].min.same_as(var) and _const(r.region[0].extent) == 1
                                for r in reads):
            continue
        try:
            sch.compute_at(producer, loop, preserve_unit_loops=True)
        except Exception as err:  # noqa: BLE001 - TVM's own check: not placeable there
            _probe(f"compute_at of padding {stmt.name_hint}", err)
            continue
        own = _loops_inside(sch, producer, loop)
        placed.append(stmt.name_hint)
        parts = _copy_with_borders(sch, producer, own)
        if parts is not None:
            placed.extend(parts)
            continue
        try:
            fill = sch.decompose_padding(producer, own[0])
        except Exception as err:  # noqa: BLE001 - keeps its per-element branch
            _probe(f"decompose_padding of {stmt.name_hint}", err)
            continue
        placed.append(sch.get(fill).name_hint)
        _vectorize_fill_and_copy(sch, fill, producer, loop, lanes)
    return placed


def _vectorize_fill_and_copy(sch, fill, copy, loop, lanes):
    """Vector loops for a padding placed at `loop` and split by decompose_padding: its
    in-bounds copy along its innermost loop, its constant fill (one contiguous run per
    iteration of `loop`) over its fused loops."""
    _vectorize_innermost(sch, copy, lanes)
    inner = _loops_inside(sch, fill, loop)
    run = sch.fuse(*inner) if len(inner) > 1 else inner[0]
    f = _vector_factor(_const(sch.get(run).extent) or 1, lanes, max_registers=4)
    if f:
        sch.vectorize(sch.split(run, factors=[None, f])[1])


def _decompose_pad(sch, pad, loop, lanes):
    """A padding block placed in `loop`: its borders and interior copied by parts of its
    columns (pad_borders.py), else its zero fill and its copy separate, each a vector loop
    (no per-element branch). Returns the names of the blocks made."""
    parts = _copy_with_borders(sch, pad, _loops_inside(sch, pad, loop))
    if parts is not None:
        return parts
    fill = sch.decompose_padding(pad, _loops_inside(sch, pad, loop)[0])
    _vectorize_fill_and_copy(sch, fill, pad, loop, lanes)
    return [sch.get(pad).name_hint, sch.get(fill).name_hint]


def _loops_inside(sch, block, loop):
    """The loops of `block` nested inside `loop` (one of its loops), outermost first."""
    loops = sch.get_loops(block)
    at = next(k for k, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    return loops[at + 1:]


def _choose_vector_axis(info, lanes, symbolic=False):
    """(axis, vector length) for a reduction's register tile: the spatial axis whose vectors
    use the lanes best, minus the cost of packing operands that are strided along it and
    of a strided write-back. A symbolic axis only with `symbolic` (it is then padded to a
    multiple of the vectors: unpadded, its last vector would be predicated, scalar code).
    Raises when no axis qualifies."""
    best = None
    for v in info.spatial:
        if v in info.symbolic and not symbolic:
            continue
        vec = _vector_factor(info.extents[v], lanes)
        if vec is None:
            continue
        score = vec / (math.ceil(vec / lanes) * lanes)
        feasible = True
        for _, region, strides in info.reads:
            if strides[v] in (0, 1):
                continue
            size = _elements(region.source)
            if _packable_dim(region, info.vars[v]) is None or size * PACK_RATIO > info.work:
                feasible = False
                break
            score -= 0.02 + (PACK_COST if _plain_gemm(info) else 4) * size / info.work
            score -= _far_pack_cost(info, region, strides[v])
        if not feasible:
            continue
        if info.write_strides[v] != 1:
            if _packable_dim(info.write, info.vars[v]) is None:
                continue
            score -= _strided_write_cost(info)
        score -= _swept_broadcast_cost(info, v)
        if _guard_reads(info.stmt, info.vars[v]):
            # a guard that varies along the lanes makes TVM scalarize the vector loop (a
            # derived d/dx reading w guarded: AVX2 LeNet conv2 1338 us along its 8 columns)
            score -= 1
        if best is None or score > best[0]:
            best = (score, v, vec)
    if best is None:
        raise NotApplicable("no vectorizable output axis")
    return best[1], best[2]


def _far_pack_cost(info, region, stride):
    """The score _choose_vector_axis takes off for packing an operand of a GEMM whose elements
    along the vector axis lie a page or more apart (FAR_PACK_BYTES): each element of a copied
    vector comes from another page, and no cache line read serves a second vector. The
    Transformer's head over [16, 64] tokens, vectorized along the 16 sequences (its x
    gathered 32 KiB apart) rather than along the 64 positions (512 B apart), its tiles then
    written back transposed: 151 -> 120 us warm, 180 -> 162 us flushed (2 threads, AVX-512
    Xeon)."""
    if not _plain_gemm(info) or stride is None:
        return 0
    return FAR_PACK_COST if stride * _dtype_bits(region.source.dtype) // 8 >= FAR_PACK_BYTES \
        else 0


def _strided_write_cost(info):
    """The score _choose_vector_axis takes off for an output strided along the vector axis:
    a GEMM's tiles are written back transposed, like a packing copy of the output, whose
    share of the work grows as its reduction shortens (x[64, 32] @ w[128, 32]^T: 11 us with
    vectors along w's rows, 12 us along the batch, x copied and the tiles written back
    transposed); 0.05 in other blocks (convolutions and their phases, tuned on that)."""
    if not _plain_gemm(info):
        return 0.05
    return 0.02 + PACK_COST * _elements(info.write.source) / info.work


def _swept_broadcast_cost(info, v):
    """The score _choose_vector_axis takes off an axis v of A^T B whose broadcast operand
    (constant along v, its rows far apart along the reduction: packed into panels of the
    tile's rows) is bigger than BROADCAST_PANELS_MAX_BYTES: every vector panel sweeps all of
    it, from L3 once it is past L2. The other output axis then carries the vectors, the
    tiles written back transposed (the Transformer's d/dw [1024, 512]^T @ [1024, 128], 2 MiB
    swept by 4 panels of v32, against 512 KiB by 16: 702 -> 553 us with the caches warm,
    743 -> 629 us flushed, 2 threads of the 2-core AVX-512 Xeon)."""
    if not _plain_gemm(info):
        return 0
    for _, region, strides in info.reads:
        if strides[v] == 0 and _bytes(region.source) > BROADCAST_PANELS_MAX_BYTES and \
                _rows_far_along_reduction(info, strides):
            return SWEPT_BROADCAST_COST
    return 0


def _plain_gemm(info):
    """A GEMM or batched GEMM: one reduction, every index a block variable. The costs of
    PACK_COST were measured on these; convolutions keep the older estimates their tiles
    were tuned with (a copied element as 4 multiply-adds, a strided write-back 0.05)."""
    return len(info.reduction) == 1 and all(_plain(r) for _, r, _ in info.reads)


def _pack_operand(sch, info, index, region, v):
    """Copy a read operand into a buffer whose last dimension is the one indexed by v."""
    d = _packable_dim(region, info.vars[v])
    if d is None:
        raise NotApplicable("operand not packable")
    size = _elements(region.source)
    if size * PACK_RATIO > info.work:
        raise NotApplicable("packing costs too much")
    ndim = len(region.region)
    if d == ndim - 1:
        return _cache_read(sch, info.block, index)
    packed = _cache_laid_out(sch, info, "read", index, region,
                             lambda *idx: [idx[i] for i in range(ndim) if i != d] + [idx[d]])
    _tile_transpose(sch, packed, d, ndim)
    return packed


# A transposing copy runs by TRANSPOSE_TILE x TRANSPOSE_TILE tiles: row by row, the rows of
# a [256, 64] fp32 weight lie 256 bytes apart and those of a [256, 256] one 1 KiB apart, so
# the column side of the copy touches a new cache line (soon evicted: the rows alias in L1)
# per element; by tiles both sides stay in cache (dense 64x256 @ [256, 64]^T as a transposed
# copy, one core: 52 -> 30 us; an operand that size now goes into panels).
TRANSPOSE_TILE = 8


def _tile_transpose(sch, packed, d, ndim):
    """Loop the copy block `packed` (source axis d becomes its last) over square tiles, the
    copy's contiguous axis (d) innermost and vectorized. Symbolic or ragged extents keep
    the row-by-row copy."""
    loops = sch.get_loops(packed)
    last, t = ndim - 1, TRANSPOSE_TILE
    if len(loops) != ndim:
        return
    extents = [_const(sch.get(loops[a]).extent) for a in (d, last)]
    if any(e is None or e % t for e in extents):
        return
    d_out, d_in = sch.split(loops[d], factors=[None, t])
    l_out, l_in = sch.split(loops[last], factors=[None, t])
    others = [lp for i, lp in enumerate(loops) if i not in (d, last)]
    sch.reorder(*others, d_out, l_out, l_in, d_in)
    sch.vectorize(d_in)


def _register_tiles(info, v, budget, registers=1, balance=True):
    """{axis: factor} of the register tile beside vector axis v (None: scalar accumulators)
    with `budget` accumulators of `registers` vector registers each: at most two other
    output axes, those across which the most operand loads are shared first, each split by
    its largest divisor within the budget; then, with `balance` and vectors, a tile of two
    axes with as many accumulators that loads less per FMA (_tile_loads), if any."""
    def reuse(k):
        return _reuse(info, v, k)

    # An axis with no divisor within the whole budget (a unit axis: a stem's one input
    # channel; a prime: 7x7 outputs) takes neither place: the stem's d/dw got a tile of 3,
    # not 3x4, and a stride-2 conv at 7x7 lone vectors, not 4 images x the vectors.
    candidates = [k for k in info.spatial
                  if k != v and _largest_divisor(info.extents[k], budget) > 1]
    ranked = [k for k in sorted(candidates, key=lambda k: (-reuse(k), -k)) if reuse(k) > 0]
    tiles = {}
    left = budget
    for k in ranked[:2]:
        if left <= 1:
            break
        f = _largest_divisor(info.extents[k], left)
        if f > 1:
            tiles[k] = f
            left //= f
    # Balanced tiles: a stride-2 d/dx phase (8 columns) tiled 8 channels x v8 loads 8 weights
    # and 1 row per 8 FMAs; 4 channels x 2 rows load 4 weights and 2 rows.
    best, cost = tiles, _tile_loads(info, v, tiles, registers)
    points = math.prod(tiles.values())
    for a, k1 in enumerate(ranked[:3] if balance and v is not None else []):
        for k2 in ranked[a + 1:3]:
            for f1 in _divisors(info.extents[k1], budget):
                for f2 in _divisors(info.extents[k2], budget // f1):
                    trial = {k1: f1, k2: f2}
                    loads = _tile_loads(info, v, trial, registers)
                    if f1 * f2 >= points and loads < cost * (1 - TILE_LOADS_MARGIN):
                        best, cost = trial, loads
    return best


def _reuse(info, v, k, packing=False):
    """Operand loads shared across a register tile along axis k (vector loads count 2; with
    `packing`, those of operands strided along v too: they will be packed)."""
    return sum((2 if v is not None and (strides[v] == 1 or packing and strides[v] != 0) else 1)
               for _, _, strides in info.reads if strides[k] == 0)


# A balanced tile replaces the first one only when it loads this much less per FMA.
TILE_LOADS_MARGIN = 0.05


def _divisors(n, limit):
    """Divisors of n from 2 to limit, largest first."""
    return [f for f in range(min(n, limit), 1, -1) if n % f == 0]


def _tile_loads(info, v, tiles, registers):
    """Operand loads per FMA of a register tile: an operand constant along a tiled axis is
    loaded once for the axis; a vector operand loads each of its registers, and counts twice
    (as in _register_tiles' reuse): a window's vectors start anywhere, and often straddle two
    cache lines, a broadcast never (LeNet's 6xv16 conv beat 3 channels x 2 rows x v16, 61 vs
    74 us, though the rows load one operand less per 12 FMAs)."""
    loads = 0
    for _, _, strides in info.reads:
        n = math.prod(f for k, f in tiles.items() if strides[k] != 0)
        loads += n * (2 * registers if v is not None and strides[v] == 1 else 1)
    fmas = math.prod(tiles.values()) * registers
    return loads / fmas


def _tile_outputs(info, v, vec, params):
    """Outputs one register tile covers with vectors of `vec` along v."""
    budget = max(1, params.acc_registers // math.ceil(vec / params.lanes(info.dtype)))
    registers = math.ceil(vec / params.lanes(info.dtype))
    return vec * math.prod(_register_tiles(info, v, budget, registers, balance=False).values())


def _streams_operands(info):
    """A reduction with a small output (a weight gradient) over operands larger than a cache:
    every pass of its register tiles over the reduction streams them from memory again."""
    return (_bytes(info.write.source) <= STREAM_MAX_OUTPUT_BYTES
            and sum(_bytes(r.source) for _, r, _ in info.reads) >= STREAM_MIN_OPERAND_BYTES)


def _no_tile_beside(info, v, params):
    """Whether every output axis but v is wider than 1 and has no divisor for a register tile
    (a prime extent; a symbolic one is planned at SYMBOLIC_EXTENT and padded to its tile):
    the tile would be v's vectors alone."""
    others = [k for k in info.spatial if k != v and info.extents[k] > 1]
    return bool(others) and all(_largest_divisor(info.extents[k], params.acc_registers) == 1
                                for k in others)


# A static output axis with no divisor for a register tile is padded to a multiple of this.
PRIME_PAD = 8


def _pad_prime_axes(sch, info, v, params):
    """Pad the static output axes other than v that have no divisor for a register tile (a
    prime) to multiples of PRIME_PAD, where the tile would share more operand loads across
    them than across any axis that tiles as it is (``pad_einsum``: a zero-padded copy of each
    operand indexed by them, the output computed padded and copied out). The Transformer's
    head, 103 characters: its forward [1024, 128] @ [103, 128]^T, tiled v128 alone, loaded
    one vector per FMA (~47 GF/s on one AVX-512 core vs numpy's 90); over [16, 64] tokens,
    tiled 16 sequences x v16, one vector load per FMA too (11 GF/s in the train step).
    Returns whether it padded: not in a block that reads through a window (a conv), nor
    where TVM finds no einsum."""
    def prime(k):
        return info.extents[k] > PRIME_PAD and \
            _largest_divisor(info.extents[k], params.acc_registers) == 1

    others = [k for k in info.spatial if k != v and k not in info.symbolic]
    best = max((_reuse(info, v, k, True) for k in others
                if not prime(k) and info.extents[k] > 1), default=0)
    padding = [1] * len(info.vars)
    for k in others:
        if prime(k) and _reuse(info, v, k, True) > best:
            padding[k] = PRIME_PAD
    if all(p == 1 for p in padding) or not all(_plain(r) for _, r, _ in info.reads):
        return False
    try:
        sch.pad_einsum(info.block, padding)
    except Exception as err:  # noqa: BLE001 - TVM's own check: not an einsum
        _probe(f"pad_einsum of block {info.name}", err)
        return False
    return True


def _panel_operand(info, v, vec, broadcast=None, partial=False):
    """(read index, region) of an operand worth packing into panels of `vec` along axis v:
    read contiguously along v, with a large stride along a reduction (the right operand of a
    big GEMM: each step of the reduction would touch a new row, and rows 2 or 4 KiB apart
    alias in the L1 cache; the left operand of A^T B likewise), and fit for panels
    (_panel_fits). With `broadcast`, only an operand constant along that axis (the vector
    axis, whose tile broadcasts it). With `partial`, panels whose last one is partial (vec
    does not divide the axis: _pack_panels pads it with zeros), for a far operand only."""
    for index, region, strides in info.reads:
        if broadcast is not None and strides[broadcast] != 0:
            continue
        far = strides[v] == 1 and _rows_far_along_reduction(info, strides)
        # Or the tile's rows far apart (A of A B): a transposing copy into panels.
        rows = broadcast is not None and not partial and _rows_apart(info, region, strides, v)
        if (far or rows) and _panel_fits(info, region, strides, v, vec, partial):
            return index, region
    return None


def _rows_far_along_reduction(info, strides):
    """Whether an operand read with `strides` steps PANEL_MIN_STRIDE elements or more along
    a reduction: each step of it touches a new row (far enough apart to alias in L1)."""
    return any(strides[k] is not None and strides[k] >= PANEL_MIN_STRIDE for k in info.reduction)


def _rows_apart(info, region, strides, t):
    """Whether the broadcast operand is read along a reduction contiguously, its tile's rows
    (along t) PANEL_MIN_STRIDE or more apart, and too big for an L2 cache
    (ROW_PANEL_MIN_BYTES): A of a 1024^3 A B or A B^T, whose tiles read one element of each
    of their rows per step of the reduction, a stream per row from L3 on every pass of a
    vector panel, rows 4 KiB apart in one L1 set. Only in plain contractions, every index a
    loop variable (a conv's window, h + kh, is not)."""
    return (strides[t] is not None and strides[t] >= PANEL_MIN_STRIDE
            and _bytes(region.source) >= ROW_PANEL_MIN_BYTES
            and any(strides[k] == 1 for k in info.reduction)
            and _plain(region))


def _plain(region):
    """Whether every index of an access is a loop variable (not a window's h + kh)."""
    return all(isinstance(r.min, tirx.Var) for r in region.region)


def _panel_fits(info, region, strides, v, vec, partial=False):
    """Whether an operand can be copied into panels of `vec` along v: linear in every block
    variable, reused across another output axis (stride 0 there: a weight, not an
    activation), bigger than PANEL_MIN_BYTES and cheap to copy next to the reduction
    (PACK_RATIO), its dimension indexed by v a multiple of vec (more than one panel; any
    extent with `partial`) and read at exactly v (a window offset such as i + kh would
    straddle two panels)."""
    if any(strides[k] is None for k in range(len(info.vars))):
        return False
    if not any(strides[k] == 0 for k in info.spatial if k != v):
        return False
    d = _packable_dim(region, info.vars[v])
    if d is None or _bytes(region.source) < PANEL_MIN_BYTES or \
            _elements(region.source) * PACK_RATIO > info.work:
        return False
    extent = _const(region.source.shape[d])
    return extent is not None and (partial or extent % vec == 0) and extent > vec and \
        region.region[d].min.same_as(info.vars[v])


def _pack_panels(sch, info, index, region, v, vec, params, defer=False):
    """Copy an operand into panels: its dimension d indexed by v becomes [d // vec, ...,
    d % vec], so the slice one register tile reads along the reduction is contiguous. The
    copy runs panel by panel, each written in order (a transposed weight is read from vec
    rows at once: each cache line read serves several consecutive steps). With `defer`, its
    loops are left for _place_panel_copy. Returns the name of the copy (its block and its
    buffer)."""
    d = _packable_dim(region, info.vars[v])
    ndim = len(region.region)
    layout = lambda *idx: [idx[d] // vec] + [  # noqa: E731
        idx[i] for i in range(ndim) if i != d] + [idx[d] % vec]
    if _const(region.source.shape[d]) % vec:  # (a broadcast operand's: never deferred)
        assert not defer, "partial panels are copied whole, first"
        return _pack_partial_panels(sch, info, index, region, layout, params)
    packed = _cache_laid_out(sch, info, "read", index, region, layout)
    name = sch.get(packed).name_hint
    assert sch.get(packed).writes[0].source.name == name, "cache_read: block and buffer alike"

    def order(panel_loop=None):
        # by its handle, not its name: another block's copy of the source may share it
        if panel_loop is not None:
            sch.compute_at(packed, panel_loop, preserve_unit_loops=True)
        _order_panel_copy(sch, packed, d, ndim, vec, region.source, params,
                          one_panel=panel_loop is not None)

    if defer:
        return name, order
    order()
    return name


def _pack_partial_panels(sch, info, index, region, layout, params):
    """_pack_panels where the last panel is partial (a register tile of 6 rows over 1024:
    _remainder_tile): the copy pads it with zeros and runs by groups of PARTIAL_PANEL_GROUP
    panels (in parallel when big), each panel's rows unrolled. Returns the name of the copy."""
    copy = _cache_read(sch, info.block, index)
    sch.transform_layout(copy, ("write", 0), layout, pad_value=0.0)
    loops = list(sch.get_loops(copy))  # over the panels' layout: panel, ..., row of the panel
    # a few panels at a time, so that each line read of a source row serves all its rows
    group = _largest_divisor(_const(sch.get(loops[0]).extent), PARTIAL_PANEL_GROUP)
    head, panels = sch.split(loops[0], factors=[None, group])
    sch.reorder(head, *loops[1:-1], panels, loops[-1])
    sch.unroll(loops[-1])
    if params.cores > 1 and _elements(region.source) >= PARALLEL_COPY_MIN_ELEMENTS:
        sch.parallel(head)
    return sch.get(copy).name_hint


def _place_panel_copy(sch, deferred, panel_loop, per_panel):
    """Schedule a deferred panel copy (`deferred`: its name and order, from _pack_panels).
    When the panel loop runs alone (`per_panel`: not fused with other loops for the thread
    pool), each of its iterations copies its own panel just before the tiles read it: the
    copy runs on every core, and the panel is still in cache when read (under a loop over
    blocks of the reduction, the block's slice of it). Else the whole copy runs first."""
    _, order = deferred
    order(panel_loop if per_panel else None)


def _order_panel_copy(sch, packed, d, ndim, vec, source, params, one_panel=False,
                      parallel=True):
    """Loop order of a panel copy (see _pack_panels): its last ndim loops are the source's
    dimensions, d's over every panel, or over one panel's vec rows (`one_panel`: the copy
    sits inside the panel loop; it is then never parallel itself, nor without `parallel`)."""
    loops = list(sch.get_loops(packed))[-ndim:]  # the source's dimensions, in its order
    if one_panel:
        outer, inner = None, loops[d]
    else:
        outer, inner = sch.split(loops[d], factors=[None, vec])
    head = [outer] if outer is not None else []
    others = [lp for i, lp in enumerate(loops) if i != d]
    line = CACHE_LINE_BYTES * 8 // _dtype_bits(source.dtype)
    per_line = line // vec if line % vec == 0 else 1
    extent_d = _const(source.shape[d])
    if d == ndim - 1 and outer is not None and per_line > 1 and extent_d and \
            extent_d % line == 0:
        # Panels narrower than a cache line: per_line panels at once, so every line of the
        # source is read whole (one panel at a time would read a quarter of each line, and
        # come back for the rest after the line was evicted).
        outer, mid = sch.split(outer, factors=[None, per_line])
        head = [outer]
        sch.reorder(outer, *others, mid, inner)
        sch.vectorize(inner)
    elif d == ndim - 1:  # contiguous in the source too: a vector copy
        sch.reorder(*head, *others, inner)
        sch.vectorize(inner)
    elif _const(source.shape[-1]) and _const(source.shape[-1]) % line == 0:
        # A transpose, by blocks of vec rows x one cache line, so the block's writes fill
        # vec lines and each row's line is read whole while it stays in cache; inside a
        # block row by row, element by element. Column by column, each column a vector
        # gathered from the vec rows, TVM loads the vector's elements one by one and inserts
        # them, and rows 4 KiB apart, in one L1 set, evict each other (row by row: attention's
        # q k^T, one head's [32, 32] panels copied in its loop, 80.5 -> 68.9 us; 512^3 A B^T
        # 0.93 -> 0.90 ms; [64, 256] @ [256, 256]^T 38 -> 37 us; Transformer and MLP train
        # steps 1.009x and 1.025x; 2 threads, 2-core AVX-512 Xeon).
        others[-1], last_inner = sch.split(others[-1], factors=[None, line])
        sch.reorder(*head, *others, inner, last_inner)
        sch.unroll(last_inner)
    else:
        sch.reorder(*head, *others, inner)
        sch.unroll(inner)
    # A copy is memory-bound: its vector width does not make it cheaper per element.
    if parallel and not one_panel and params.cores > 1 and \
            _elements(source) >= PARALLEL_COPY_MIN_ELEMENTS:
        _parallelize(sch, [*head, *others], params)


def _pad_symbolic_tiles(sch, info, tiles, vector):
    """Pad the block's symbolic axes that `tiles` splits to multiples of their tile factors
    (``pad_einsum``: inputs are copied into zero-padded buffers, the output is computed into a
    padded buffer and copied out). Split without padding, a symbolic axis predicates every
    point of the tile, which keeps the accumulators out of registers and the tile's buffer
    from being compacted. Returns whether anything was padded."""
    factors = {k: f for k, f in tiles.items() if k in info.symbolic}
    if factors and not vector:  # row reductions (loss, softmax): copies cost more than
        raise NotApplicable("scalar tile over a symbolic axis")  # the tile gains
    return _pad_axes(sch, info, factors)
