"""Gather-form gradients of non-overlapping windows (max-pool's, stride == kernel) whose rows
of windows are narrower than a vector: LeNet's max-pools, 8 windows a row at 16x16 and 2 at
4x4, were vectorized over one row of windows (v8 and v2 of AVX-512's 16 lanes), their
gradients 3.3x and 3.5x the forward on one AVX-512 core.

Here the vector runs over blocks of consecutive windows instead, whole rows of them (of
several planes at 4x4): such a block reads a contiguous run of x and of dy and writes one of
dx. x is copied per block onto the stack laid out [row in window, column in window, window]
and dx computed in that layout, then copied out: each window element's values for the
block's windows are one vector, and LLVM turns the copies into shuffles of whole vectors.
"""

import math

from .._tvm import arith, tirx
from .analysis import _const
from .failures import _probe
from .loops import _parallel_worth_it
from .params import STACK_MAX_BYTES, _dtype_bits

# A block's window element (one vector) may gather from at most this many vectors of x: two
# is one two-source shuffle. LeNet's 16@4 k2 gradient with 16 windows a vector (4 planes, 4
# source vectors each) compiled to 56 shuffles for 16 windows, 3.2x its forward; with 8 (2
# planes, 2 sources) 2.6x.
MAX_SOURCE_VECTORS = 2
# Blocks have at least this many windows: AVX2's 4x4 k2 gradient by blocks of 4 (one plane a
# vector of 4) compiled to per-lane loads, 30x its forward against 3.5x by rows of 2 windows.
MIN_BLOCK_WINDOWS = 8


def _window_blocks(sch, info, divisors, window_reads, params):
    """Schedule `info`'s block by blocks of windows (see the module docstring) and return its
    note, or "" where it does not apply: the last two axes split by their window size, every
    other axis static and spatial, the window operands (`window_reads`: read indices of
    buffers shaped like the block) and every other read one element per window (dy)."""
    n = len(info.loops)
    rows, cols = n - 2, n - 1
    if n < 3 or info.symbolic or any(k != "S" for k in info.kinds) or \
            set(divisors) != {rows, cols} or not window_reads:
        return ""
    kr, kc = divisors[rows], divisors[cols]
    grid = [*info.extents[:rows], info.extents[rows] // kr, info.extents[cols] // kc]
    for index, region, _ in info.reads:
        if index not in window_reads and not _one_per_window(region, info, kr, kc, grid):
            return ""
    lanes = params.lanes(info.dtype)
    block = _block_windows(info, grid, kr, kc, lanes)
    if block is None:
        return ""
    try:  # on a copy first: a primitive TVM refuses leaves the kernel as it was
        _tile_window_blocks(sch.copy(), info, kr, kc, grid, block, window_reads, lanes)
    except Exception as err:  # noqa: BLE001 - TVM's own check
        _probe(f"window blocks of {info.name}", err)
        return ""
    _tile_window_blocks(sch, info, kr, kc, grid, block, window_reads, lanes)
    notes = [f"split {kr}x{kc}", "unrolled", f"v{block} window blocks"]
    loops = sch.get_loops(info.block)
    if _parallel_worth_it(info, lanes, params):
        sch.parallel(loops[0])
        notes.append("parallel")
    names = [info.stmt.reads[index].source.name for index in window_reads]
    notes.append(f"deinterleaved {'+'.join(names)}")
    return f"spatial[{', '.join(notes)}]"


def _one_per_window(region, info, kr, kc, grid):
    """Whether a read is of a buffer shaped like the window grid, at the block's window:
    dy[.., i // kr, j // kc] (checked at the first window rows and columns)."""
    if [_const(d) for d in region.source.shape] != grid:
        return False
    rows, cols = len(info.vars) - 2, len(info.vars) - 1
    for i in range(min(info.extents[rows], 2 * kr)):
        for j in range(min(info.extents[cols], 2 * kc)):
            analyzer = arith.Analyzer()
            values = {rows: i, cols: j}
            for k, var in enumerate(info.vars):
                analyzer.bind(var, tirx.IntImm(var.ty.dtype, values.get(k, 0)))
            got = [_const(analyzer.simplify(r.min)) for r in region.region]
            if got != [0] * rows + [i // kr, j // kc]:
                return False
    return True


def _block_windows(info, grid, kr, kc, lanes):
    """Windows in a block: the most whole rows of windows (two at least, MIN_BLOCK_WINDOWS
    windows at least) that fit a vector, divide the windows and read each window element
    from at most MAX_SOURCE_VECTORS vectors of x; None where none does (a row of windows as
    wide as a vector or more: the vectors over one row are full)."""
    total, width = math.prod(grid), grid[-1]
    elements = kr * kc
    fewest = max(2 * width, MIN_BLOCK_WINDOWS)
    for windows in range(lanes // width * width, fewest - 1, -width):
        if total % windows or \
                windows * elements * _dtype_bits(info.dtype) // 8 > STACK_MAX_BYTES:
            continue
        if _source_vectors(grid, kr, kc, windows, lanes) <= MAX_SOURCE_VECTORS:
            return windows
    return None


def _source_vectors(grid, kr, kc, windows, lanes):
    """The most vectors of x (aligned runs of `lanes` elements) that one window element of a
    block of `windows` windows reads from, over the blocks (their alignment repeats after
    `lanes` blocks)."""
    height, width = grid[-2], grid[-1]
    row = width * kc  # x's row length
    worst = 0
    for first in range(0, min(math.prod(grid), lanes * windows), windows):
        for dh in range(kr):
            for dw in range(kc):
                vectors = set()
                for w in range(first, first + windows):
                    plane, rest = divmod(w, height * width)
                    oh, ow = divmod(rest, width)
                    offset = plane * height * kr * row + (oh * kr + dh) * row + ow * kc + dw
                    vectors.add(offset // lanes)
                worst = max(worst, len(vectors))
    return worst


def _tile_window_blocks(sch, info, kr, kc, grid, windows, window_reads, lanes):
    """The loops over blocks of `windows` windows, the window's rows and columns unrolled
    and the block's windows vectorized; x (`window_reads`) and dx through stack copies laid
    out [block, row in window, column in window, window in block]."""
    loops = info.loops
    rows = len(loops) - 2
    oh, dh = sch.split(loops[rows], factors=[None, kr])
    ow, dw = sch.split(loops[rows + 1], factors=[None, kc])
    sch.reorder(*loops[:rows], oh, ow, dh, dw)
    outer, lane = sch.split(sch.fuse(*loops[:rows], oh, ow), factors=[None, windows])
    sch.reorder(outer, dh, dw, lane)
    names = [info.stmt.reads[index].source.name for index in window_reads]
    out = sch.cache_write(info.block, 0, "global")
    sch.reverse_compute_at(out, outer)
    copies = [out]
    for name in names:
        index = next(k for k, r in enumerate(sch.get(info.block).reads) if r.source.name == name)
        copy = sch.cache_read(info.block, index, "global")
        sch.compute_at(copy, outer)
        copies.append(copy)

    def blocked(*idx):
        flat = 0
        for k, extent in enumerate(grid):
            window = idx[k] if k < rows else idx[k] // (kr if k == rows else kc)
            flat = flat * extent + window
        return (flat // windows, idx[rows] % kr, idx[rows + 1] % kc, flat % windows)

    sch.transform_layout(info.block, ("write", 0), blocked)
    for copy in copies[1:]:
        sch.transform_layout(copy, ("write", 0), blocked)
    sch.vectorize(lane)
    sch.unroll(dh)
    sch.unroll(dw)
    for copy in copies:  # whole vectors of the contiguous run, each lane's place a constant
        run = sch.fuse(*sch.get_loops(copy)[1:])
        steps, vector = sch.split(run, factors=[None, min(lanes, windows)])
        sch.unroll(steps)
        sch.vectorize(vector)
