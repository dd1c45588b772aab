"""A strided convolution's d/dx as ops.conv builds it (ops/conv.py's _grad_x): one stride-1
convolution of a zero-padded dy per input phase (i % s, j % s), then a block interleaving the
phases into dx. Scheduled per image: the interleave's image loop runs in parallel, and in
each iteration that image's padded dy and every phase are computed just before the
interleave reads them, so they are read back from cache.

Scheduled block by block, each phase swept the whole batch in its own parallel loop, writing
a quarter of dx to memory, and the interleave then read all four quarters back: in ResNet's
3x3 s2 16->32 d/dx at batch 64 the interleave was ~16% of the time and the padded copy of dy
~12% (see the commit for the measured gain).

Where every phase is tiled along vectors of input channels (laid out channels last), the
interleave was still a transpose, lane by lane: the phases now store into dx themselves,
each tile during the next one's reduction, and the interleave is removed (phase_writes.py;
one Emerald Rapids core, old and new interleaved in one process: b32 64->64 @14 s2 d/dx
1.208 -> 1.161x its forward, ResNet's b64 32->64 @16 s2 1.191 -> 1.144x, 1x1 32->64 @16 s2
1.159 -> 1.150x). The phases share one copy of the weight.
"""

from .._tvm import s_tir
from .analysis import _BlockInfo, _const, _has_if_then_else, _reduction_iters, _root_blocks
from .conv import _split_divisors
from .failures import NotApplicable
from . import gemm
from .loops import _largest_divisor, _vector_factor
from .padded_terms import inline_padding
from .conv_forward import _defer_writeback
from .deferred_writeback import defer_writebacks
from .phase_writes import direct_phase_writes, mark_phase_writes, phase_map
from .params import PARALLEL_CHUNKS_PER_CORE


# The phases store into dx themselves (phase_writes.py); off, through the interleave (the
# tests build both and compare their bits).
DIRECT_WRITES = True


def _conv_phases(func, params):
    """(scheduled func, note) of a strided conv's d/dx kernel (_phases_per_image); None for
    other kernels, which the next rules take."""
    sch = s_tir.Schedule(func)
    try:
        plans = _plan(sch, params)
    except NotApplicable:
        return None
    note = _phases_per_image(sch, params, plans)
    return defer_writebacks(direct_phase_writes(sch.mod["main"])), note


def _plan(sch, params):
    """(interleave, phases, paddings, each phase's tile) of a strided conv's d/dx kernel
    (_phase_blocks, _phase_tile). Raises NotApplicable for other kernels and for too few
    images to run one per parallel iteration."""
    interleave, phases, pads = _phase_blocks(sch)
    info = _BlockInfo(sch, interleave)
    if 0 in info.symbolic or info.extents[0] < PARALLEL_CHUNKS_PER_CORE * params.cores:
        raise NotApplicable("too few images for one per parallel iteration")
    lanes = params.lanes(info.dtype)
    tiles = [_phase_tile(_BlockInfo(sch, phase), lanes, params) for phase in phases]
    return interleave, phases, pads, tiles


def _phases_per_image(sch, params, plans):
    """Schedule `sch` per image as `plans` (_plan) says; returns the rule's note."""
    interleave, phases, pads, tiles = plans
    info = _BlockInfo(sch, interleave)
    lanes = params.lanes(info.dtype)
    direct = _direct_writes(sch, info, tiles)
    image = _schedule_interleave(sch, info)
    names = [sch.get(phase).name_hint for phase in phases]
    for name in names:
        sch.compute_at(sch.get_sblock(name), image, preserve_unit_loops=True)
    pads = [sch.get(p).name_hint for p in pads]
    # dy's padding inlined into the phases, their terms over it skipped (padded_terms.py),
    # where each broadcasts dy to vectors of channels: a guard along vectors of columns
    # would take every lane apart (ResNet's 16->32 @32 s2 d/dx 3x slower).
    inlined = inline_padding(sch, [sch.get_sblock(name) for name in names]) \
        if all(plan[0] == 1 for plan in tiles) else []
    for pad in pads:
        if pad not in inlined:
            sch.compute_at(sch.get_sblock(pad), image, preserve_unit_loops=True)
            gemm._decompose_pad(sch, sch.get_sblock(pad), image, lanes)
    _weight_copies(sch, names, tiles)
    done = [_tile_phase(sch, name, plan, lanes, direct) for name, plan in zip(names, tiles)]
    if direct:
        mark_phase_writes(sch, sch.get_sblock(info.name), [wb for _, wb in done], direct)
    notes = [note for note, _ in done]
    return f"phases per image[{', '.join(notes)}{', written into dx' if direct else ''}]"


def _direct_writes(sch, info, tiles):
    """The stride whose phases write dx themselves (phase_writes.py), or None: where every
    phase is tiled along vectors of channels (laid out channels last, the interleave a
    transpose) and the interleave is one phase_writes reads."""
    if not DIRECT_WRITES or any(plan[0] != 1 for plan in tiles):
        return None
    stride = max(_split_divisors(info).values())
    try:
        phase_map(info.stmt, stride)
    except NotApplicable:
        return None
    return stride


def _phase_blocks(sch):
    """(interleave, phases, paddings): the kernel's last root block, spatial, reading its
    producers through floordiv/floormod (i // s, i % s); those producers, each a reduction
    over 4 spatial and 3 reduction axes (o, taps), or fewer where a phase has one tap along an
    axis (autodiff's: one AVX-512 core, 64->64 @14 s2 d/dx 919 -> 863 us, ResNet's b64 16->32
    @32 s2 1836 -> 1311, 32->64 @16 s2 1322 -> 1092, from each phase on the GEMM rule over the
    whole batch); the padding blocks they read."""
    roots = _root_blocks(sch)
    interleave = roots[-1]
    info = _BlockInfo(sch, interleave)
    if info.kinds != ["S"] * 4 or set(_split_divisors(info)) != {2, 3}:
        raise NotApplicable("no interleave of phases")
    phases = sch.get_producers(interleave)
    if len(phases) < 2 or len(roots) > len(phases) + 2:
        raise NotApplicable("not a strided d/dx's phases")
    pads = []
    for phase in phases:
        stmt = sch.get(phase)
        reductions = len(_reduction_iters(stmt))
        # the output channel and the taps, those of one tap gone in autodiff's phases
        if len(stmt.iter_vars) - reductions != 4 or not 1 <= reductions <= 3:
            raise NotApplicable(f"{stmt.name_hint}: not a convolution phase")
        for producer in sch.get_producers(phase):
            if _reduction_iters(sch.get(producer)) or not _has_if_then_else(sch.get(producer)):
                raise NotApplicable(f"{stmt.name_hint} reads a computed operand")
            if not any(sch.get(p).same_as(sch.get(producer)) for p in pads):
                pads.append(producer)
    return interleave, phases, pads


def _schedule_interleave(sch, info):
    """The interleave's loops (n | c, i // s, i % s, j // s, j % s), the remainders unrolled
    (affine indices into each phase), n parallel. Returns the image loop."""
    divisors = _split_divisors(info)
    n, c, i, j = info.loops
    io, ii = sch.split(i, factors=[None, divisors[2]])
    jo, ji = sch.split(j, factors=[None, divisors[3]])
    sch.reorder(n, c, io, ii, jo, ji)
    sch.unroll(ii)
    sch.unroll(ji)
    sch.parallel(n)
    return n


def _phase_tile(info, lanes, params):
    """(vector axis, its length, {axis: tile}, the weight's read or None) of a phase's
    register tile. Vectors along the columns (the write and dy's rows contiguous, the weight
    broadcast) under a tile of input channels x rows, where the columns fill whole vectors;
    else vectors of input channels (_channel_vectors; the weight read through a copy laid
    out [o, kh, kw, c]) under a tile of columns. Fewer accumulators than half the registers
    kept for them (params.acc_registers) leave the FMA latency uncovered: NotApplicable."""
    _, c, i, j = info.extents[:4]
    budget = params.acc_registers
    if j % lanes == 0 and j // lanes <= 2:
        registers = j // lanes
        rows = 2 if i % 2 == 0 else 1
        channels = _largest_divisor(c, budget // (registers * rows))
        if 2 * channels * rows * registers >= budget:
            return 3, j, {1: channels, 2: rows}, None
    weight = next((index for index, _, strides in info.reads if strides[0] == 0), None)
    for vec in _channel_vectors(c, lanes):
        registers = -(-vec // lanes)
        columns = _largest_divisor(j, budget // registers)
        if 2 * columns * registers >= budget and weight is not None:
            return 1, vec, {3: columns}, weight
    raise NotApplicable(f"{info.name}: no register tile")


def _channel_vectors(c, lanes):
    """Vector lengths along c, the preferred first: all the channels where they fit two
    registers (_vector_factor), else panels of two registers, then of one (a tile of 7
    columns: 64 channels on AVX-512 take 7 x v32, on AVX2 7 x v8). The weight's copy is
    then swept once per panel for each image."""
    vec = _vector_factor(c, lanes)
    if vec == c:
        return [vec]
    return [r * lanes for r in (2, 1) if c % (r * lanes) == 0]


def _weight_copies(sch, names, plans):
    """Copy the weight of the phases tiled along vectors of input channels laid out [o, kh,
    kw, c], so that each reads a vector of channels as one load: one copy per weight buffer
    that the phases share (a copy per phase made the whole weight four times over, b32
    64->64 @14 s2 d/dx 1.03x the time)."""
    copied = []
    for name, (v, _, _, weight) in zip(names, plans):
        if v != 1:
            continue
        block = sch.get_sblock(name)
        source = sch.get(block).reads[weight].source
        if any(source.same_as(done) for done in copied):
            continue
        copied.append(source)
        readers = [sch.get_sblock(other) for other, plan in zip(names, plans) if plan[0] == 1
                   and sch.get(sch.get_sblock(other)).reads[plan[3]].source.same_as(source)]
        copy = sch.cache_read(block, weight, "global", consumer_blocks=readers)
        sch.transform_layout(copy, ("write", 0), lambda o, c, h, w: [o, h, w, c])


def _tile_phase(sch, name, plan, lanes, direct=None):
    """Tile the phase `name` (its loops: the image's, then a, c, i, j, o, t, u) per `plan`
    (_phase_tile), accumulating in a local buffer written back per tile; with `direct`, its
    write-back a loop of channels over columns, to store into dx (phase_writes.py). Returns
    (a note, the write-back block)."""
    v, vec, tiles, _ = plan
    block = sch.get_sblock(name)
    loops = list(sch.get_loops(block))[1:]
    spatial, red = loops[:4], loops[4:]
    outer, inner, vector = [spatial[0]], [], spatial[v]
    for k in (1, 2, 3):
        if k == v and _const(sch.get(spatial[k]).extent) > vec:
            o, vector = sch.split(spatial[k], factors=[None, vec])
            outer.append(o)
        elif k in tiles:
            o, i = sch.split(spatial[k], factors=[None, tiles[k]])
            outer.append(o)
            inner.append(i)
        elif k != v:
            outer.append(spatial[k])
    sch.reorder(*outer, *red, *inner, vector)
    if v == 1:
        # The phase's buffer laid out [n, i, j, c]: its tile's vectors of channels are
        # stored whole, and the interleave transposes them into dx (in cache, per image)
        # in its own pass. Written back NCHW, lane by lane, the scalar stores of a short
        # reduction (64 channels x 1 tap in ResNet's 32->64 d/dx) cost a fifth of the time.
        sch.transform_layout(block, ("write", 0), lambda a, b, c, d: [a, c, d, b])
    writeback = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(writeback, outer[-1], preserve_unit_loops=True)
    for loop in [*red[1:], *inner]:
        sch.unroll(loop)
    sch.vectorize(vector)
    if direct:
        # a channel's columns (at the stride apart in dx) per step, each tile's written
        # during the next tile's reduction, as conv_forward's
        columns, channels = sch.get_loops(writeback)[-2:]
        sch.reorder(channels, columns)
        sch.vectorize(columns)
        _defer_writeback(sch, block, writeback, red[0], outer, tiles[3], vec, lanes)
    else:
        _vectorize_last(sch, writeback)
    init = sch.decompose_reduction(block, red[0])
    _vectorize_last(sch, init)
    tile = "x".join(str(tiles[k]) for k in sorted(tiles))
    return f"{name}={tile}xv{vec}", writeback


def _vectorize_last(sch, block):
    loops = sch.get_loops(block)
    if loops:
        sch.vectorize(loops[-1])
