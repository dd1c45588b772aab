"""Convolution forward (out[n, o, i, j] = sum_{c, kh, kw} x[n, c, s * i + kh, s * j + kw] *
w[o, c, kh, kw], stride s of 1 or 2, NCHW) on AVX-512: one image per parallel iteration,
register tiles of output columns x vectors of output channels. Each image element is
broadcast to a vector of output channels, so a stride reads no gathers. A zero padding is
inlined and its terms skipped (padded_terms.py): the tiles read the image itself, the border
tiles leave out the taps over the border, no copy is made (one Emerald Rapids core against
the copy per block of rows: b32 32->64 @28 1.087x, 64->64 @14 s2 1.26x, ResNet's 1.13-1.28x,
the stride-1 d/dx 1.11-1.21x). Where it cannot be inlined (another block reads it too) it is
copied inside the image's iteration: at stride 2, and at stride 1 where the padded image is
over L1, per block of output rows (params.CONV_STRIDED_PAD_ROWS, CONV_PAD_ROWS).

The GEMM family's rule (gemm.py) tiles this loop nest too, but as a contraction: with the
weight in panels, the panel index runs outermost and is fused with the images for the thread
pool, so the zero padding stays one serial pass over the whole input before the tiles, and
each thread sweeps every image. Here the images run in parallel, each padded inside its own
iteration (in cache, on every core), and every output-channel panel of the small packed weight
is swept per image (b32 32->64 @28 on two AVX-512 threads: 4.8 -> 4.6 ms, 64->64 @14 2.6 ->
2.2 ms; see the commit).

The tile stays at 14 accumulators (7 columns x v32, each image element broadcast once per
two FMAs): tiles of 28 (7 x v64, 14 x v32, 2 rows x 7 x v32, 28 x v16) made LLVM spill
accumulators to the stack (70-93 GF/s on one Zen 4 core against 104), and neither 14 x v16,
blocking the input channels to keep the weight slice in L1, nor writing the tile back at the
end of each row was faster.

Where the time goes (b32 32->64 @28, one Zen 4 core, 1-thread CPU time, variants of the
scheduled TIR timed interleaved in one process; perf samples agree): the accumulate loop
alone runs at 98% of the FMA peak; the rest is the write-back to NCHW (~4%), the padded copy
(~2.5%: fetching the image from memory ~2%, the copy and the zero fill ~1%) and loop
overhead. On an Emerald Rapids core the write-back, a burst of stores into 32 output planes
after the tile's FMAs, was 8.5% (perf) and the same tile stored channels last 1.10x faster;
there the write-back now runs during the next tile's reduction, one channel per input
channel, its stores overlapping FMA work (_defer_writeback, deferred_writeback.py: 1.05x;
ResNet's convs and stride-1 d/dx 1.01-1.05x, b32 64->64 @14 stride 2 1.00x). Re-tried there, a
shuffle transpose (8 x 16, masked stores) gained 1.02x, the tile's output lines prefetched
1.02x, staging a row block or an image NHWC then transposing 16 x 16 blocks 0.98-1.00x. On
Zen 4 the write-back resisted: the same tiles stored NHWC (whole zmm rows) cost 0.5%,
and with the output kept in L1 a shuffle transpose is 1.5% faster than the lane-by-lane
one, but into the real output an in-register shuffle transpose (LLVM emits
vunpck/vpermt2ps from explicit T.Shuffle stages; 7-lane or masked 8-lane stores), a
per-image or per-4-row NHWC staging buffer transposed by 16x16 shuffle blocks into whole
output lines, scatter-style stores, unrolling the write-back, software prefetch (prefetchw
or prefetcht1 of the tile's or next row's output lines) and huge pages for the output were
each no faster (0.99-1.04x the time). A 28 x v16 tile with the window columns as a loop
(LLVM folds each broadcast into its FMA: 28 FMAs + 1 load, no spills) was 4% slower. Reading
the padded input straight from memory (no copy) gained ~1%, zeroing only the border 0.4%,
prefetching the next image 0.5-0.9%, padding per row (3 rows per output row) lost 2-3%; the loop
order (rows or columns outside the channel panels) made no difference.
"""

import math

from .params import (CONV_MIN_VECTOR_BITS, CONV_PAD_L1_BYTES, CONV_PAD_ROWS,
                     CONV_STRIDED_PAD_ROWS, CONV_STRIDES, PARALLEL_CHUNKS_PER_CORE,
                     UNROLLED_WINDOW_TAPS, _dtype_bits)
from .failures import NotApplicable
from .analysis import _BlockInfo, _const, _packable_dim
from .loops import _largest_divisor, _parallel_worth_it, _parallelize, _vectorize_innermost
from .spatial import _absorb_epilogues
from . import gemm
from .deferred_writeback import mark_deferred
from .padded_terms import inline_padding

# Each tile's write-back runs during the next tile's reduction (deferred_writeback.py); off,
# after its own tile (the tests build both and compare their bits).
DEFER_WRITEBACK = True


def _conv_forward(sch, name, params):
    """(note, touched blocks) of a stride-1 or -2 NCHW convolution forward block `name`: the
    output channels o split into vectors of `registers` SIMD registers (the weight packed
    [o // vec, c, kh, kw, o % vec], read as whole vectors), the output columns j into a
    register tile; loops (n | o // vec, i, j // tile | c, kh, kw | j % tile, o % vec), the
    padding inlined, or copied, at stride 2 or over L1 per block of rows (n | i // rows,
    o // vec, i % rows, j // tile | ...: _padding_rows), the tile accumulated in a buffer
    laid out [n, i, j, o] and written back (with pointwise epilogues) after each tile.
    Raises NotApplicable for other blocks."""
    if params.vector_bits < CONV_MIN_VECTOR_BITS:
        raise NotApplicable("measured on AVX-512 only: the GEMM family's tiles")
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    n, o, i, j, image, weight = _conv_axes(info)
    lanes = params.lanes(info.dtype)
    registers = _vector_registers(info, o, lanes)
    vec = registers * lanes
    columns = _largest_divisor(info.extents[j], params.acc_registers // registers)
    # Fewer accumulators than half the budget (4 columns x v32: 8 of 24) leave the FMA
    # latency uncovered; the GEMM family's rule tiles channels or images there instead.
    if 2 * columns * registers < params.acc_registers:
        raise NotApplicable(f"{info.extents[j]} columns: no register tile")
    if not _parallel_worth_it(info, vec, params):
        raise NotApplicable("too small to run in parallel")
    # The weight in panels of vec output channels, copied a panel at a time (gemm's copy).
    packed = gemm._pack_panels(sch, info, weight[0], weight[1], o, vec, params)
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    loops = info.loops
    # The zero padding inlined, its terms skipped (padded_terms.py): no copy to place.
    inlined = inline_padding(sch, [block])
    o_out, o_vec = sch.split(loops[o], factors=[None, vec])
    j_out, j_tile = sch.split(loops[j], factors=[None, columns])
    red = [loops[k] for k in info.reduction]
    per_image = info.extents[n] >= PARALLEL_CHUNKS_PER_CORE * params.cores
    per_block = _padding_rows(info, i, j, image) if per_image and not inlined else None
    row_block = None
    if per_block is not None:
        # Padded per block of output rows: the block's input rows are copied just before
        # the tiles of every output-channel panel read them.
        row_block, row = sch.split(loops[i], factors=[None, per_block])
        sch.reorder(loops[n], row_block, o_out, row, j_out, *red, j_tile, o_vec)
    else:
        sch.reorder(loops[n], o_out, loops[i], j_out, *red, j_tile, o_vec)
    outer, _ = _parallelize(sch, [loops[n]] if per_image else [loops[n], o_out, loops[i]],
                            params)
    writeback = sch.cache_write(block, 0, "global")
    sch.transform_layout(writeback, ("read", 0), lambda a, b, c, d: [a, c, d, b])
    sch.reverse_compute_at(writeback, j_out, preserve_unit_loops=True)
    epilogue = _absorb_epilogues(sch, writeback)
    pad_at = outer[0] if row_block is None else row_block
    padded = gemm._pad_per_iteration(sch, block, pad_at, info, lanes) \
        if per_image and not inlined else []
    sch.unroll(red[-1])
    if info.extents[info.reduction[1]] * info.extents[info.reduction[2]] <= UNROLLED_WINDOW_TAPS:
        sch.unroll(red[-2])
    sch.unroll(j_tile)
    sch.vectorize(o_vec)
    _vectorize_innermost(sch, writeback, lanes)
    # The tiles run serially within an image: each can write the one before it back.
    tiles = ([o_out, loops[i] if row_block is None else row] if per_image else []) + [j_out]
    copy = _defer_writeback(sch, block, writeback, red[0], tiles, columns, vec, lanes)
    init = sch.decompose_reduction(block, red[0])
    _vectorize_innermost(sch, init, lanes)
    touched = {name, packed, sch.get(init).name_hint, sch.get(writeback).name_hint, *padded,
               *([sch.get(copy).name_hint] if copy is not None else [])}
    pad_note = "image" if row_block is None else f"{per_block} row(s)"
    note = (f"conv[{columns}xv{vec}, parallel{' per image' if per_image else ''}, packed w"
            f"{', padded per ' + pad_note if padded else ''}"
            f"{', padding skipped' if inlined else ''}"
            f"{', +' + '+'.join(epilogue) if epilogue else ''}]")
    return note, touched


def _conv_axes(info):
    """(n, o, i, j, image read, weight read) of an NCHW convolution forward block of a stride
    s in CONV_STRIDES: spatial axes n, o, i, j (all static but n) and three reductions c, kh,
    kw; the image read x[n, c, s * i + kh, s * j + kw] (contiguous along kw, constant along
    o), or at stride 1 x[n, c, i - kh + a, j - kw + b] (autodiff's d/dx reading dy: one
    AVX-512 core, b32 32->64 @28 5878 -> 5717 us against the GEMM family's tiles, ResNet's b64
    32->32 @16 1.012x, 64->64 @8 1.017x), and the weight w[o, c, kh, kw] (constant along n,
    i, j). Raises NotApplicable otherwise."""
    if info.kinds != ["S"] * 4 + ["R"] * 3 or len(info.reads) != 2:
        raise NotApplicable("not a 2-D convolution's loop nest")
    n, o, i, j = 0, 1, 2, 3
    if any(k in info.symbolic for k in (o, i, j, *info.reduction)) or \
            info.write_strides[j] != 1 or info.write_strides[o] in (0, 1, None):
        raise NotApplicable("not a static NCHW output")
    image = weight = None
    kh, kw = info.reduction[1], info.reduction[2]
    for read in info.reads:
        strides = read[2]
        stride = strides[j]
        # The window rising along the image (x[i + kh], a forward's), or at stride 1 falling
        # (dy[i - kh]: autodiff's d/dx, whose taps run backwards through dy; a window of one
        # column has no direction).
        sign = -1 if stride == 1 and strides[kw] == -1 and info.extents[kw] > 1 else 1
        if strides[o] == 0 and strides[kw] == sign and stride in CONV_STRIDES and \
                strides[kh] not in (0, None) and strides[i] == stride * sign * strides[kh] \
                and strides[n] not in (0, None):
            image = read
        elif all(strides[k] == 0 for k in (n, i, j)) and strides[o] not in (0, None) and \
                all(strides[k] not in (0, None) for k in info.reduction):
            weight = read
    channel = _packable_dim(weight[1], info.vars[o]) if weight is not None else None
    if image is None or channel is None or \
            _const(weight[1].source.shape[channel]) != info.extents[o]:
        raise NotApplicable("not a stride-1 or -2 convolution's operands")
    if image[2][kw] == -1 and abs(weight[2][kw]) != 1:
        # every other tap of the weight: a strided d/dx's phase (the GEMM family's or
        # conv_phases' tiles), not a whole window read backwards
        raise NotApplicable("a phase of a strided convolution's d/dx")
    return n, o, i, j, image, weight


def _padding_rows(info, i, j, image):
    """Output rows per block of the zero padding's copy, or None to copy it per image: at
    stride 2 CONV_STRIDED_PAD_ROWS, at stride 1 CONV_PAD_ROWS where the padded image is over
    CONV_PAD_L1_BYTES and such a block of rows (with the window's) within it (fewer rows where
    they do not divide the output's). Every output-channel panel sweeps the image: a padded
    image in L1 is read from there each time, a larger one from L2, where a block of rows
    in L1 serves all the panels."""
    if image[2][j] > 1:
        return _largest_divisor(info.extents[i], CONV_STRIDED_PAD_ROWS)
    channels, height, width = (_const(d) for d in image[1].source.shape[1:])
    if None in (channels, height, width):
        return None
    row_bytes = channels * width * _dtype_bits(image[1].source.dtype) // 8
    rows = _largest_divisor(info.extents[i], CONV_PAD_ROWS)
    window = info.extents[info.reduction[1]]
    if height * row_bytes <= CONV_PAD_L1_BYTES or \
            (rows + window - 1) * row_bytes > CONV_PAD_L1_BYTES:
        return None
    return rows


def _vector_registers(info, o, lanes):
    """SIMD registers per vector of output channels: two (a broadcast image element feeds
    two FMAs). Where they do not tile the channels (16 on AVX-512), the GEMM family's tiles
    win (ResNet's 16->16 @32, one AVX-512 core: 16 columns x v16 took 3.3 ms, its 8 x v32
    along the columns 3.0)."""
    if info.extents[o] % (2 * lanes):
        raise NotApplicable(f"{info.extents[o]} output channels: no two-register vectors")
    return 2


def _defer_writeback(sch, block, writeback, reduction, tiles, columns, vec, lanes):
    """Accumulate each tile in a buffer of its own, copied at the tile's end into the
    channels-last cache, and mark the write-back to run one tile late, spread over the next
    tile's `reduction` loop (deferred_writeback.py). `tiles`: the serial loops over the tiles,
    outermost first. Returns the copy block, or None."""
    if not DEFER_WRITEBACK:
        return None
    copy = sch.cache_write(block, 0, "local")
    if not any(sch.get(lp).same_as(sch.get(tiles[-1])) for lp in sch.get_loops(copy)):
        sch.reverse_compute_at(copy, tiles[-1], preserve_unit_loops=True)
    _vectorize_innermost(sch, copy, lanes)
    # The cache holds one tile, on the stack (896 B at 7 x v32): a tile's copy overwrites the
    # tile before it only after the write-back has read that one, during the reduction.
    sch.set_scope(copy, 0, "local")
    sch.transform_layout(copy, ("write", 0), lambda n, i, j, o: [j % columns, o % vec],
                         assume_injective_transform=True)
    mark_deferred(sch, writeback, reduction, tiles[0])
    return copy
