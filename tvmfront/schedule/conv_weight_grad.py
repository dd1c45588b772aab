"""Weight gradient of a stride-1 convolution whose output has its input's size (a 3x3 with
padding 1): dw[o, c, p, q] = sum_{n, i, j} dy_t[n, i + 2ph - p, j + 2pw - q, o] * x[n, c, i, j]
(ops/conv.py's _same_size_product: dy zero-padded and transposed to [n, rows, columns, o], x
read in place), summed per chunk g of images (part[g, o, c, p, q]) where the batch allows.
A GEMM whose reduction (images x pixels) is long and whose output is small.

The GEMM family's rule (gemm.py) runs that reduction inside each register tile: every tile
sweeps the whole chunk, streaming its dy_t and x from L2 or L3, after one pass that pads and
transposes all of dy first. Here the image loop runs outside the tiles, as the reduction's
blocking: per image, its dy_t is made (padded and transposed by 8 x 8 tiles) just before the
tiles of that image read it from L1 or L2, and each tile's accumulators are loaded and stored
once per image (24 vector loads and stores against H x W x 24 FMAs). The chunks (and panels of
output channels, each copying its own slice of dy_t) run in parallel.

Loop order: (g, o // vec) parallel | n | dy_t of the image | c // tc, p, i, j // 4 | j % 4,
c % tc, q, o % vec (params.DW_UNROLLED_COLUMNS, on AVX-512): per step of (i, j) tc broadcasts
of x and kw vectors of dy_t feed tc x kw x vec FMAs, the unrolled steps sharing their dy_t
loads. ResNet's d/dw at batch 64 and b32 32->64 @28, one AVX-512 core, old/new interleaved:
see the commit.

dy_t's zero padding is inlined (padded_terms.py): dy is copied per image transposed but not
padded, the terms over the border skipped, the rows and the steps of columns each run in a
border part, an interior part (no predicate left) and a border part (_border_partitions).
One Emerald Rapids core against the padded copy: b32 32->64 @28 1.06-1.08x, ResNet's
stride-1 d/dw 1.07-1.09x, explicit and derived.

Autodiff's gradient of a padded stride-1 conv comes in the same form (autodiff.py's
_interior_sum) with dy's copy laid out [n, o, rows, columns]: laid out o last here.
Other weight gradients that read x through a zero-padded copy (strided convs', and autodiff's
where _interior_sum keeps x padded) take the same image-by-image order with x padded per
image and dy transposed per image (_padded_weight_grad).
"""

import math

from .._tvm import tvm
from .failures import NotApplicable
from .params import CONV_MIN_VECTOR_BITS, DW_UNROLLED_COLUMNS
from .analysis import _BlockInfo, _const, _has_if_then_else
from .loops import _largest_divisor, _parallel_worth_it, _vector_factor, _vectorize_innermost
from .gemm import TRANSPOSE_TILE, _decompose_pad, _loops_inside
from .spatial import _transpose_by_tiles
from .padded_terms import inline_padding


def _conv_weight_grad(sch, name, params):
    """(note, touched blocks) of a same-size stride-1 conv's weight gradient block `name`
    (see the module docstring). Raises NotApplicable for other blocks."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    g, o, c, p, q, n, copy, o_last = _weight_grad_axes(sch, info)
    if not o_last:  # autodiff's zero-extended dy, [n, o, rows, columns]
        sch.transform_layout(copy, ("write", 0), lambda a, b, e, f: [a, e, f, b])
        info = _BlockInfo(sch, block)
        g, o, c, p, q, n, copy, _ = _weight_grad_axes(sch, info)
    registers, tc = _register_tile(info, o, c, q, params)
    vec = registers * params.lanes(info.dtype)
    if g is None and _parallel_worth_it(info, vec, params) and \
            info.extents[o] // vec < params.cores and n not in info.symbolic and \
            info.extents[n] % params.cores == 0:
        block = _image_chunks(sch, block, info.loops[n], params.cores)
        info = _BlockInfo(sch, block)
        g, o, c, p, q, n, copy, _ = _weight_grad_axes(sch, info)
    loops = info.loops
    o_out, o_vec = sch.split(loops[o], factors=[None, vec])
    c_out, c_in = sch.split(loops[c], factors=[None, tc])
    tasks = ([loops[g]] if g is not None else []) + [o_out]
    parallel = _parallel_worth_it(info, vec, params)
    by_channels = parallel and _extent(sch, tasks) < params.cores
    if by_channels:
        # Too few chunks and panels for the cores: as many groups of input channels as
        # needed, each making its own copy of the image's dy_t (a symbolic batch has no
        # chunks, nor a batch the cores do not divide). One per tile of them copied dy_t 8
        # times per image in ResNet's 32->32 @16 at batch 64 (derived: 2.9 ms, 1.49x).
        groups = _largest_divisor(_extent(sch, [c_out]), -(-params.cores // _extent(sch, tasks)))
        task, c_out = sch.split(c_out, factors=[groups, None])
        tasks.append(task)
    if parallel and _extent(sch, tasks) < params.cores:
        raise NotApplicable(f"{_extent(sch, tasks)} parallel task(s) for {params.cores} cores")
    i, j = loops[info.reduction[1]], loops[info.reduction[2]]
    images = [loops[n], c_out]
    # Steps along j unrolled on AVX-512 only: in AVX2 code the 4 x 3 x v8 tile, its 3
    # vectors of dy_t and a broadcast fill the 16 registers, and the unrolled steps spilled
    # (32->32 @16 at batch 64 on one core: 2.9 -> 4.6 ms).
    unrolled = DW_UNROLLED_COLUMNS if params.vector_bits >= CONV_MIN_VECTOR_BITS else 1
    j_out, j_in = sch.split(j, factors=[None, _largest_divisor(info.extents[info.reduction[2]],
                                                               unrolled)])
    sch.reorder(*tasks, *images, loops[p], i, j_out, j_in, c_in, loops[q], o_vec)
    sch.unroll(j_in)
    outer = sch.fuse(*tasks)
    if parallel:
        sch.parallel(outer)
    # The tiles accumulate in a buffer laid out with o last (whole vectors), written back
    # once every image of the chunk is summed.
    writeback = _o_last_writeback(sch, block, outer)
    lanes = params.lanes(info.dtype)
    # dy transposed per image without its zero border, the terms over it skipped; where its
    # padding does not inline, its padded copy.
    unpadded = _unpadded_dy_per_image(sch, block, copy, loops[n])
    copies, transposed = unpadded[:2] if unpadded else \
        _copy_per_image(sch, copy, loops[n], lanes, channels_first=not o_last)
    touched = {name, sch.get(writeback).name_hint, *copies}
    sch.unroll(c_in)
    sch.unroll(loops[q])
    sch.vectorize(o_vec)
    init = sch.decompose_reduction(block, loops[n])
    sch.vectorize(sch.get_loops(init)[-1])
    touched.add(sch.get(init).name_hint)
    if unpadded:
        steps = _const(sch.get(j_in).extent)  # dy's copy [n, rows, columns, o]
        touched.update(_border_partitions(sch, block, unpadded[2], [
            (-3, p, info.reduction[1], i, 1), (-2, q, info.reduction[2], j_out, steps)]))
    split = "chunks x panels" if g is not None else "panels"
    note = (f"conv_dw[{tc}x{info.extents[q]}xv{vec}, {'parallel ' if parallel else ''}"
            f"{split}{' x channels' if by_channels else ''}, dy_t per image{transposed}]")
    return note, touched


def _image_chunks(sch, block, images, chunks):
    """The weight gradient `block` summed per chunk of images (`chunks` of them, the loop
    `images` split and factored out: rfactor), as ops/conv.py's explicit gradient sums per
    chunk; returns the partial sums' block, whose chunks the cores take, each copying only its
    own images' dy. Autodiff's gradient has no chunks of its own: with fewer panels of output
    channels than cores the cores took groups of input channels, each copying all of dy (one
    emeraldrapids core, derived d/dw at batch 64: ResNet's 16->16 @32 2326 -> 2022 us, 32->32
    @16 1969 -> 1856, the explicit ones' time)."""
    at = next(k for k, lp in enumerate(sch.get_loops(block))
              if sch.get(lp).same_as(sch.get(images)))
    outer, _ = sch.split(images, factors=[chunks, None])
    partial = sch.rfactor(outer, factor_axis=0)
    loops = sch.get_loops(partial)  # rfactor's own loops: the chunks' at the images' place
    sch.reorder(loops[at], *loops[:at])  # the chunk, its block's first axis, outermost
    return partial


def _o_last_writeback(sch, block, loop):
    """The weight gradient's accumulator buffer laid out [.., c, p, q, o] (whole vectors of
    o), written back to [.., o, c, p, q] once per iteration of `loop` (the parallel task),
    or once after the whole nest where `loop` is None. Returns the write-back block."""
    writeback = sch.cache_write(block, 0, "global")
    sch.transform_layout(writeback, ("read", 0), lambda *idx: [
        *idx[:-4], idx[-3], idx[-2], idx[-1], idx[-4]])
    if loop is not None:
        sch.reverse_compute_at(writeback, loop, preserve_unit_loops=True)
    return writeback


def _register_tile(info, o, c, q, params):
    """(registers per vector of o, input channels per tile) of the tile c x q x v."""
    lanes = params.lanes(info.dtype)
    kw = info.extents[q]
    # Two registers per vector where the tile, the kw vectors of dy_t it reads per step and a
    # broadcast still fit the register file (AVX-512: 24 + 6 + 1 of 32); else one (AVX2: a
    # 2 x 3 x v16 tile with its 6 vectors spilled, 1.7x the time of 4 x 3 x v8).
    registers = 2 if info.extents[o] % (2 * lanes) == 0 and \
        params.acc_registers + 2 * kw + 1 <= params.vector_registers else 1
    if info.extents[o] % (registers * lanes):
        raise NotApplicable(f"{info.extents[o]} output channels: no whole vectors")
    tc = _largest_divisor(info.extents[c], params.acc_registers // registers // kw)
    # Fewer accumulators than half the budget leave the FMA latency uncovered.
    if 2 * tc * kw * registers < params.acc_registers:
        raise NotApplicable(f"{info.extents[c]} input channels: no register tile")
    return registers, tc


def _extent(sch, loops):
    """The iterations of `loops` together."""
    return math.prod(_const(sch.get(lp).extent) for lp in loops)


def _weight_grad_axes(sch, info):
    """(g or None, o, c, p, q, n, copy block, whether o is dy_t's last axis) of a same-size
    weight gradient block: output axes ([g,] o, c, p, q) all static, reductions (n, i, j);
    reads dy_t[n', i + a - p, j + b - q, o] (constant along c, made by a padding block of
    the kernel; or dy_t[n', o, i + a - p, j + b - q], autodiff's) and x[n', c, i, j]
    (constant along o, contiguous along j). Raises NotApplicable otherwise."""
    kinds = "".join(info.kinds)
    if kinds not in ("SSSSRRR", "SSSSSRRR") or len(info.reads) != 2:
        raise NotApplicable("not a weight gradient's loop nest")
    g = 0 if kinds.startswith("SSSSS") else None
    o, c, p, q = (1, 2, 3, 4) if g is not None else (0, 1, 2, 3)
    n, i, j = info.reduction
    if any(k in info.symbolic for k in (g, o, c, p, q, i, j) if k is not None):
        raise NotApplicable("symbolic output or image axes")
    if info.write_strides[q] != 1:
        raise NotApplicable("not an OIHW weight gradient")
    vector = broadcast = None
    for _, region, strides in info.reads:
        if strides[o] not in (0, None) and strides[c] == 0 and strides[p] not in (0, None) and \
                strides[q] not in (0, None) and strides[n] not in (0, None):
            vector, o_stride = region, strides[o]
        elif strides[o] == 0 and strides[j] == 1 and strides[c] not in (0, None) and \
                strides[p] == 0 and strides[q] == 0:
            broadcast = region
    if vector is None or broadcast is None:
        raise NotApplicable("not dy_t x x of a same-size conv")
    copy = next((blk for blk in sch.get_producers(info.block)
                 if sch.get(blk).writes[0].source.same_as(vector.source)), None)
    if copy is None or not _has_if_then_else(sch.get(copy)) or \
            len(sch.get_loops(copy)) != 4:
        raise NotApplicable("dy_t is no padding copy of the kernel")
    shape = [_const(d) for d in vector.source.shape]
    if o_stride != 1 and (len(shape) != 4 or o_stride != shape[2] * shape[3]):
        raise NotApplicable("dy_t read along o on no axis of its own")
    return g, o, c, p, q, n, copy, o_stride == 1


def _unpadded_dy_per_image(sch, block, copy, image_loop):
    """Inline dy_t's padding (block `copy`) into the weight gradient `block`, its terms over
    the zero border skipped (padded_terms.py), and copy dy per image inside `image_loop`,
    transposed to [n, rows, columns, o] (_transpose_dy) without the border: no zero fill, a
    smaller copy, 4.7% fewer FMAs at 28 x 28 (b32 32->64 @28 d/dw on one Emerald Rapids
    core: see the commit). Returns (the copy's block names, a note, dy's copy), or None
    where the padding is not inlined."""
    source = sch.get(copy).reads[0].source
    if not inline_padding(sch, [block]):
        return None
    index = next(k for k, read in enumerate(sch.get(block).reads) if read.source.same_as(source))
    dy = sch.cache_read(block, index, "global")
    sch.compute_at(dy, image_loop, preserve_unit_loops=True)
    sch.transform_layout(dy, ("write", 0), lambda a, b, e, f: [a, e, f, b])
    channels, rows, columns = sch.get_loops(dy)[-3:]
    sch.reorder(rows, columns, channels)
    tile, note = _transpose_dy(sch, dy, rows, channels, columns)
    return ([sch.get(dy).name_hint] + ([tile] if tile else []), note + ", padding skipped",
            sch.get(dy).writes[0].source)


def _border_partitions(sch, block, source, axes):
    """Partition loops of the weight gradient `block`, which reads `source` under the
    predicate padded_terms sets, each into the steps that read past `source`'s bounds for
    some tap, before and after, and the interior, where the predicate holds for every tap:
    TVM's simplification removes it there, and the border parts, one step each (see below),
    unroll to constants (LoopPartition on the predicate alone left a branch per step: b32
    32->64 @28 d/dw 0.6x).
    `axes`: (source axis, the tap's block axis, the reduction's block axis, the loop over its
    steps, reduction iterations per step) for each, `source` read there at a * r + b * t + e
    (a > 0, b = +-1). Returns the names of the blocks made."""
    stmt = sch.get(block)
    read = next(r for r in stmt.reads if r.source.same_as(source))
    iter_vars = list(stmt.iter_vars)  # info's, rebuilt by the inlining
    parts = [block]
    names = set()
    # the loops' places counted from the innermost, fixed before any is partitioned (their
    # handles go stale, and the parts hang under blocks of their own)
    loops = sch.get_loops(block)
    depths = [[sch.get(lp).same_as(sch.get(axis[3])) for lp in loops].index(True) - len(loops)
              for axis in axes]
    for index, ((axis, tap, reduction, _, step), depth) in enumerate(zip(axes, depths)):
        coeffs = [_const(k) for k in tvm.sym.detect_linear_equation(
            read.region[axis].min, [iter_vars[reduction].var, iter_vars[tap].var])]
        if len(coeffs) != 3 or None in coeffs or coeffs[0] <= 0 or coeffs[1] not in (1, -1):
            return names
        a, b, e = coeffs
        reach = b * (_const(iter_vars[tap].dom.extent) - 1)
        size = _const(read.source.shape[axis])
        low = -(-(-min(0, reach) - e) // a)  # the first r read in bounds by every tap
        high = (size - 1 - max(0, reach) - e) // a  # the last
        extent = _const(sch.get(sch.get_loops(parts[0])[depth]).extent)
        first = -(-max(0, low) // step)
        end = min(extent, (high + 1 - step) // step + 1)
        if first >= end or (first == 0 and end == extent):
            continue
        # The border steps one part each, and in the last axis (the innermost loops) a border
        # step's unrolled iterations too: in a part of several, TVM's LoopPartition split an
        # unrolled tap loop at a bound set by the part's step or iteration (q >= 2 - j, a 2 x
        # 2 kernel padded 2; q < j + 3 in steps of 2 columns, a 3 x 5 kernel padded (1, 2)),
        # and the unroller refused that loop of no constant extent, failing the build
        # ('Cannot unroll non-constant loop'). Unrolled, it is the same code.
        factors = [1] * first + ([end - first] + [1] * (extent - end - 1) if end < extent else [])
        interior, borders = [], []
        for part in parts:
            target = sch.get_loops(part)[depth]
            for k, lp in enumerate(sch.loop_partition(target, factors=factors)):
                (interior if k == first else borders).extend(sch.get_child_blocks(lp))
        if step > 1 and index == len(axes) - 1:
            borders = [one for part in borders for one in _single_iterations(sch, part, depth + 1)]
        parts = interior + borders
        names.update(sch.get(b).name_hint for b in parts)
    return names


def _single_iterations(sch, block, depth):
    """The blocks of `block` with its loop at `depth` (from the innermost, negative) split into
    loops of one iteration each; [block] where it has one."""
    loop = sch.get_loops(block)[depth]
    count = _const(sch.get(loop).extent)
    if count == 1:
        return [block]
    return [child for lp in sch.loop_partition(loop, factors=[1] * (count - 1))
            for child in sch.get_child_blocks(lp)]


def _copy_per_image(sch, copy, image_loop, lanes, channels_first=False):
    """Make the padded, transposed dy_t (block `copy`, loops (n, rows, columns, o)) per
    image inside `image_loop`: the zero fill by vectors along its rows, the in-bounds copy
    by tiles of columns x channels (rows loaded along the columns into a small buffer,
    stored along the channels: spatial._transpose_by_tiles). Returns the names of
    the blocks and a note on the tiles."""
    sch.compute_at(copy, image_loop, preserve_unit_loops=True)
    if channels_first:  # its loops (o, rows, columns) as its block's axes: o inside
        channels, rows, columns = sch.get_loops(copy)[-3:]
        sch.reorder(rows, columns, channels)
    fill = sch.decompose_padding(copy, _loops_inside(sch, copy, image_loop)[0])
    # Rows of channels: a vector over whole rows and columns would index the compacted
    # per-image buffer through divisions, lane by lane (a scatter of zeros).
    columns, channels = sch.get_loops(fill)[-2:]
    width = _const(sch.get(channels).extent)
    run = sch.fuse(columns, channels)
    f = _vector_factor(_const(sch.get(run).extent), lanes, max_registers=4, rows=[width])
    if f:
        sch.vectorize(sch.split(run, factors=[None, f])[1])
    names = [sch.get(copy).name_hint, sch.get(fill).name_hint]
    rows, cols, chans = sch.get_loops(copy)[-3:]
    tile, note = _transpose_dy(sch, copy, rows, chans, cols)
    return names + ([tile] if tile else []), note


def _transpose_dy(sch, copy, rows, chans, cols):
    """Copy dy's rows into [.., columns, o] by tiles of columns x channels inside the loop
    `rows` (the copy's read contiguous along `cols`, its write along `chans`:
    spatial._transpose_by_tiles). Returns (the tile's block name or None, a note)."""
    # 8 x 8 tiles (gemm.TRANSPOSE_TILE), in a buffer on the stack: 16 x 16 ones, 1 KiB, were
    # a workspace whose lanes LLVM gathered one by one (one AVX-512 core, the whole d/dw:
    # 32->32 @16 1.03x, 16->16 @32 1.07x, b32 32->64 @28 1.04x the time of 8 x 8).
    fc = _vector_factor(_const(sch.get(cols).extent), TRANSPOSE_TILE, max_registers=1)
    fo = _vector_factor(_const(sch.get(chans).extent), TRANSPOSE_TILE, max_registers=1)
    if fc is None or fo is None:
        return None, ""
    _, _, tile = _transpose_by_tiles(sch, copy, [rows], chans, fo, cols, fc, scope="global")
    return sch.get(tile).name_hint, f", transposed {fo}x{fc}"


def _padded_weight_grad(sch, name, params):
    """(note, touched blocks) of a conv's weight gradient block `name` that reads x through a
    zero-padded copy: dw[o, c, p, q] = sum_{n, i, j} dy[n, o, i, j] * x_pad[n, c, s * i + p,
    s * j + q] (_padded_axes), summed over the whole batch or per chunk of images. Strided
    convs' (ops/conv.py's _grad_w: 7 x 7 and 8 x 8 outputs sum the whole batch, larger ones
    per chunk, _grad_w_padded_per_chunk) and at stride 1 autodiff's where it keeps x padded
    (autodiff.INTERIOR_COPY_RATIO).

    Image by image, as _conv_weight_grad: per image, x_pad is made (its zero fill and copy;
    where a row of output columns takes several steps, x is read in place instead, the
    padding's terms skipped) and dy copied into [i, j, o] by 8 x 8 tiles just before the
    tiles read them from cache.
    The GEMM family's rule padded all of x (or a chunk) in one pass first and swept the whole
    batch (or chunk) in each tile. One AVX-512 core, old/new in one process: b32 64->64 @14
    s2 931 -> 850 us (the pass was a fifth of the time); ResNet's b64 32->64 @16 s2 1335 ->
    1105, 16->32 @32 s2 (chunks) 1427 -> 1318; derived at stride 1, b32 32->64 @28 9.7 ->
    6.4 ms, ResNet's 32->32 @16 2.50 -> 2.11, 16->16 @32 2.92 -> 2.69, 64->64 @8 2.10 -> 1.97.
    Raises NotApplicable for other blocks, and under AVX-512 (params.CONV_MIN_VECTOR_BITS):
    AVX2 code, 4 x 3 x v8 tiles, ran the 64->64 @14 s2 d/dw 1.2x the GEMM family's time on
    the same core."""
    if params.vector_bits < CONV_MIN_VECTOR_BITS:
        raise NotApplicable("measured on AVX-512 only: the GEMM family's tiles")
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    g, o, c, p, q, n, dy_index, pad, stride = _padded_axes(sch, info)
    registers, tc = _register_tile(info, o, c, q, params)
    lanes = params.lanes(info.dtype)
    vec = registers * lanes
    dy_t = sch.cache_read(block, dy_index, "global")
    sch.transform_layout(dy_t, ("write", 0), lambda a, b, e, f: [a, e, f, b])
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    o_out, o_vec = sch.split(loops[o], factors=[None, vec])
    c_out, c_in = sch.split(loops[c], factors=[None, tc])
    i, j = loops[info.reduction[1]], loops[info.reduction[2]]
    # The cores take chunks of images, else tiles of input channels, each padding only its
    # channels of x; panels of o would each pad all of x (at stride 2 four times dy's pixels).
    parallel = _parallel_worth_it(info, vec, params)
    tasks = [loops[g]] if g is not None else []
    if parallel and _extent(sch, tasks) < params.cores:
        split = _largest_divisor(_extent(sch, [c_out]), params.cores // _extent(sch, tasks))
        if split * _extent(sch, tasks) < params.cores:
            raise NotApplicable(f"{split * _extent(sch, tasks)} parallel task(s) for "
                                f"{params.cores} cores")
        task, c_out = sch.split(c_out, factors=[split, None])
        tasks.append(task)
    # Strided, its rows of 7 or 8 columns unrolled whole (up to 2 x DW_UNROLLED_COLUMNS): one
    # AVX-512 core, b32 64->64 @14 s2 875 -> 839 us; ResNet's 32->64 @16 s2 1177 -> 1117 (by
    # 4: 1137). At stride 1 the unrolled steps share broadcasts of x_pad (column j + q), which
    # LLVM kept live until the accumulators spilled (b32 32->64 @28, derived: one step 6.3 ms,
    # by 2 11.3, by 4 8.8, by 7 8.5).
    columns = 1 if stride == 1 else \
        _largest_divisor(info.extents[info.reduction[2]], 2 * DW_UNROLLED_COLUMNS)
    j_out, j_in = sch.split(j, factors=[None, columns])
    sch.reorder(*tasks, loops[n], o_out, c_out, loops[p], i, j_out, j_in, c_in, loops[q], o_vec)
    sch.unroll(j_in)
    task_loop = (sch.fuse(*tasks) if len(tasks) > 1 else tasks[0]) if tasks else None
    if parallel and task_loop is not None:
        sch.parallel(task_loop)
    writeback = _o_last_writeback(sch, block, task_loop)
    image = loops[n]
    sch.compute_at(dy_t, image, preserve_unit_loops=True)
    chans, rows, cols = sch.get_loops(dy_t)[-3:]  # dy's loops (o, i, j): written along o
    tile, _ = _transpose_dy(sch, dy_t, rows, chans, cols)
    touched = {name, sch.get(writeback).name_hint, sch.get(dy_t).name_hint}
    if tile:
        touched.add(tile)
    # x read in place, the terms over its zero border skipped (padded_terms.py), where a row
    # of output columns takes more than one unrolled step; rows unrolled whole (7 x 7 and 8 x
    # 8 outputs) keep x padded per image, measured faster (one Emerald Rapids core: read in
    # place, b32 64->64 @14 s2 and ResNet's 32->64 @16 s2 0.75-0.78x; ResNet's 16->32 @32 s2,
    # 16 columns in 2 steps, 1.18-1.26x)
    x = sch.get(pad).reads[0].source
    inlined = inline_padding(sch, [block]) if _const(sch.get(j_out).extent) > 1 else []
    if not inlined:
        sch.compute_at(pad, image, preserve_unit_loops=True)
        touched.update(_decompose_pad(sch, pad, image, lanes))
    sch.unroll(c_in)
    sch.unroll(loops[q])
    sch.vectorize(o_vec)
    init = sch.decompose_reduction(block, loops[n])
    sch.vectorize(sch.get_loops(init)[-1])
    _vectorize_innermost(sch, writeback, lanes)
    touched.add(sch.get(init).name_hint)
    if inlined:
        touched.update(_border_partitions(sch, block, x, [
            (-2, p, info.reduction[1], i, 1), (-1, q, info.reduction[2], j_out, columns)]))
    split = " x ".join((["chunks"] if g is not None else []) +
                       (["channels"] if len(tasks) > (g is not None) else []))
    note = (f"conv_dw[{tc}x{info.extents[q]}xv{vec}, {f'parallel {split}, ' if parallel else ''}"
            f"{'x in place' if inlined else 'x padded'} and dy_t per image"
            f"{f', {columns} columns unrolled' if columns > 1 else ''}"
            f"{', padding skipped' if inlined else ''}]")
    return note, touched


def _padded_axes(sch, info):
    """(g or None, o, c, p, q, n, dy's read index, x_pad's padding block, the stride s) of a
    weight gradient block reading a padded x: output axes ([g,] o, c, p, q) and reductions
    (n, i, j), all static; reads dy[n', o, i, j] (contiguous along j, constant along c, p, q)
    and x_pad[.., c, s * i + p, s * j + q] (s >= 1, constant along o), made by a padding
    block of the kernel. With g, the sum of a chunk of images (ops/conv.py's
    _grad_w_padded_per_chunk: x_pad[g, n, ...]). Raises NotApplicable otherwise."""
    kinds = "".join(info.kinds)
    if kinds not in ("SSSSRRR", "SSSSSRRR") or len(info.reads) != 2 or info.symbolic:
        raise NotApplicable("not a static weight gradient's loop nest")
    g = 0 if kinds.startswith("SSSSS") else None
    o, c, p, q = (1, 2, 3, 4) if g is not None else (0, 1, 2, 3)
    n, i, j = info.reduction
    if info.write_strides[q] != 1:
        raise NotApplicable("not an OIHW weight gradient")
    dy = x = None
    for index, region, strides in info.reads:
        if strides[o] not in (0, 1, None) and all(strides[k] == 0 for k in (c, p, q)) and \
                strides[j] == 1:
            dy = index
        elif strides[o] == 0 and strides[q] == 1 and strides[j] is not None and \
                strides[j] >= 1 and strides[p] not in (0, None) and \
                strides[i] == strides[j] * strides[p] and \
                all(strides[k] not in (0, None) for k in (c, n)):
            x, stride = region, strides[j]  # rows and columns both at the stride s
    if dy is None or x is None:
        raise NotApplicable("not dy x x_pad of a conv")
    pad = next((blk for blk in sch.get_producers(info.block)
                if sch.get(blk).writes[0].source.same_as(x.source)), None)
    if pad is None or not _has_if_then_else(sch.get(pad)) or \
            len(sch.get_loops(pad)) != len(x.region):
        raise NotApplicable("x_pad is no padding copy of the kernel")
    return g, o, c, p, q, n, dy, pad, stride
