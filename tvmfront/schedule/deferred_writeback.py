"""A register tile's write-back deferred into the next tile's reduction loop.

conv_forward accumulates a tile of output columns x a vector of channels, then writes it
back to the NCHW output: 7 columns of 32 channels are 32 short runs in 32 output planes,
stored in a burst after the tile's FMAs. On an Emerald Rapids core that burst was 8.5% of b32
32->64 @28's time (perf), and the same tile stored whole, channels last, ran 1.10x faster:
stores are cheap where they overlap with FMA work, dear where they queue behind each other.
So the rule accumulates each tile in a buffer of its own, copies it at the tile's end into a
one-tile channels-last cache (whole vectors), and asks for the write-back to be deferred:
each iteration of the next tile's reduction loop (over input channels) writes one channel of
the tile before (several where the channels outnumber the iterations), and the last tile is
written after the tile loops. One AVX-512 core, old against new interleaved: b32 32->64 @28
forward 6116 -> 5808 us, d/dx 1.030x; ResNet's forwards and stride-1 d/dx 1.01-1.03x, b16
128->128 @28 1.02x / 1.05x; its train step at 2 threads 24.20 -> 23.63 ms. Results are
bit-identical: only the stores move.

The schedule primitives cannot move a consumer into a later iteration, so this is a rewrite
of the scheduled function, as predicates.py's: the rule marks the write-back block, the
reduction loop to carry it and the outermost serial loop over the tiles (mark_deferred),
whose loops must nest perfectly down to the one holding the reduction loop and, after it,
the write-back; anything else keeps its write-back where it is, the marks removed.
"""

import math

from .._tvm import s_tir, tirx
from ..autodiff import _Unsupported, substitute
from ..tir_walk import rebuild, with_block
from .failures import NotApplicable, _failed

DEFER = "tvmfront.defer_writeback"
DEFER_INTO = "tvmfront.defer_writeback_into"
DEFER_TILES = "tvmfront.defer_writeback_tiles"


def mark_deferred(sch, writeback, reduction, tiles):
    """Ask for `writeback` (a block under the innermost tile loop, after `reduction`, the
    tile's outermost reduction loop) to run one tile late, spread over `reduction`; `tiles`
    is the outermost of the serial loops over the tiles, perfectly nested down to the one
    holding both."""
    sch.annotate(writeback, DEFER, 1)
    sch.annotate(reduction, DEFER_INTO, 1)
    sch.annotate(tiles, DEFER_TILES, 1)


def defer_writebacks(func):
    """`func` with every marked write-back deferred (see the module docstring) and the marks
    removed; tiles of another shape keep their write-back where it is."""
    body = rebuild(func.body, _defer)
    return func if body is None else func.with_body(body)


def _defer(node):
    """The replacement of a loop nest over tiles marked by mark_deferred, else None."""
    if type(node).__name__ != "For" or DEFER_TILES not in node.annotations:
        return None
    try:
        return _deferred(node)
    except NotApplicable as err:
        _failed("defer the write-back", err)
        return _unmarked(node)


def _deferred(outer):
    tiles, inner = _chain(outer)
    seq = list(inner.seq) if type(inner).__name__ == "SeqStmt" else []
    writebacks = [k for k, stmt in enumerate(seq) if _marked_realize(stmt) is not None]
    reductions = [k for k, stmt in enumerate(seq)
                  if type(stmt).__name__ == "For" and DEFER_INTO in stmt.annotations]
    if len(writebacks) != 1 or len(reductions) != 1 or reductions[0] > writebacks[0]:
        raise NotApplicable("not one reduction loop before one write-back")
    reduction = seq[reductions[0]]
    loops, realize = _chain(seq[writebacks[0]])
    channel = [lp for lp in loops if _extent(lp) > 1 and lp.kind != tirx.ForKind.VECTORIZED]
    if len(channel) != 1:
        raise NotApplicable("the write-back is not one loop of channels over vectors")
    channel = channel[0]
    width, steps = _extent(channel), _extent(reduction)
    # The tiles in order: t = ((t0 * E1) + t1) * E2 + t2 ...; the one before is t - 1.
    extents = [_extent(lp) for lp in tiles]
    strides = [math.prod(extents[k + 1:]) for k in range(len(tiles))]
    t = sum((lp.loop_var - lp.min) * stride for lp, stride in zip(tiles, strides))
    before = {lp.loop_var: (t - 1) // stride % extent + lp.min
              for lp, stride, extent in zip(tiles, strides, extents)}
    last = {lp.loop_var: lp.min + extent - 1 for lp, extent in zip(tiles, extents)}
    per_step = math.ceil(width / steps)
    c = reduction.loop_var
    late = []
    for q in range(per_step):
        ch = c * per_step + q if per_step > 1 else c
        cond = t > 0 if per_step * steps == width else tirx.And(t > 0, ch < width)
        late.append(tirx.IfThenElse(cond, _clone(loops, realize, {**before, channel.loop_var: ch},
                                                 drop=channel, unvectorize=True), None))
    carried = _for(reduction, tirx.SeqStmt([*late, reduction.body]))
    kept = [carried if k == reductions[0] else stmt for k, stmt in enumerate(seq)
            if k != writebacks[0]]
    body = kept[0] if len(kept) == 1 else tirx.SeqStmt(kept)  # TVM refuses a SeqStmt of one
    for lp in reversed(tiles):
        body = _for(lp, body)
    return tirx.SeqStmt([body, _clone(loops, realize, last)])


def _for(loop, body, drop=(DEFER_INTO, DEFER_TILES)):
    """`loop` around `body`, without the annotations `drop` (the marks)."""
    return tirx.For(loop.loop_var, loop.min, loop.extent, loop.kind, body, loop.thread_binding,
                    {k: v for k, v in loop.annotations.items() if k not in drop})


def _marked_realize(stmt):
    """The marked write-back realize at the bottom of the loop chain `stmt`, or None."""
    stmt = _chain(stmt)[1]
    if type(stmt).__name__ == "SBlockRealize" and DEFER in stmt.block.annotations:
        return stmt
    return None


def _chain(nest):
    """([the loops of `nest`, outermost first], the statement under them)."""
    loops = []
    while type(nest).__name__ == "For":
        loops.append(nest)
        nest = nest.body
    return loops, nest


def _extent(loop):
    if not isinstance(loop.extent, tirx.IntImm):
        raise NotApplicable(f"loop {loop.loop_var} has no constant extent")
    return int(loop.extent.value)


def _clone(loops, realize, values, drop=None, unvectorize=False):
    """The loops (but `drop`) around `realize`, fresh loop variables for them, the realize's
    bindings and predicate with `values` ({var: expr}) substituted, its block unmarked; with
    `unvectorize`, its vectorized loops unrolled instead.

    A channel's run of columns in the channels-last cache is strided: vectorized, LLVM gathers
    it with vinsertps, shuffles that take port 5 from the FMAs of the reduction the copy runs
    in (on two-FMA-unit AVX-512 cores); unrolled, it is scalar loads and stores beside them.
    One AVX-512 core, b32 32->64 @28 forward: 5780 -> 5602 us (interleaved, 11 rounds)."""
    values = dict(values)
    kept = [lp for lp in loops if drop is None or not lp.same_as(drop)]
    fresh = {}
    for lp in kept:
        var = tirx.Var(lp.loop_var.name, lp.loop_var.ty)
        fresh[lp.loop_var] = var
        values[lp.loop_var] = var
    stmt = s_tir.SBlockRealize([_substitute(v, values) for v in realize.iter_values],
                               _substitute(realize.predicate, values), _unmarked_block(realize))
    for lp in reversed(kept):
        kind = lp.kind
        if unvectorize and kind == tirx.ForKind.VECTORIZED:
            kind = tirx.ForKind.UNROLLED
        stmt = tirx.For(fresh[lp.loop_var], lp.min, lp.extent, kind, stmt, lp.thread_binding,
                        lp.annotations)
    return stmt


def _unmarked(tiles):
    """The tile loop with the marks removed (its write-back left where it is)."""
    def unmark(node):
        kind = type(node).__name__
        if kind == "For" and ({DEFER_INTO, DEFER_TILES} & set(node.annotations.keys())):
            return _for(node, rebuild(node.body, unmark) or node.body)
        if kind == "SBlockRealize" and DEFER in node.block.annotations:
            return s_tir.SBlockRealize(node.iter_values, node.predicate, _unmarked_block(node))
        return None
    return rebuild(tiles, unmark) or tiles


def _unmarked_block(realize):
    """The block of `realize` without the write-back's mark."""
    return with_block(realize.block, annotations={k: v for k, v in
                                                  realize.block.annotations.items()
                                                  if k != DEFER})


def _substitute(expr, values):
    """An index expression with variables replaced per `values` ({Var: expr})."""
    try:
        return substitute(expr, values)
    except _Unsupported as err:  # a load in an index, say: the write-back stays in place
        raise NotApplicable(str(err)) from err
