"""Whether a consumer block computed under a tile loop reads only what that tile wrote.

A rule that moves an epilogue under its GEMM's tile (reverse_compute_at) and then keeps the
tile's accumulator in registers (scope "local": one tile's worth, rewritten every tile)
is right only if the epilogue, at each tile, reads nothing the tile did not write. TVM's
reverse_compute_at does not ensure that: it places the consumer iterations whose reads cover
the tile, and a max-pool window straddling two 1-pixel tiles then read the other tile's
values from registers that no longer held them. Here both regions are bounded per tile
(the loops inside the tile relaxed, those outside it kept symbolic) and containment is
proved with TVM's arithmetic analyzer; what it cannot prove counts as outside.
"""

from .._tvm import arith, tirx, tvm
from ..autodiff import substitute
from ..tir_walk import children
from .analysis import _walk_block_exprs

_SYMBOLIC_MAX = 1 << 30  # a symbolic extent (the batch): positive, and below this


def analyzer_for(*exprs):
    """An Analyzer that knows each free variable of `exprs` (a symbolic extent) is >= 1."""
    analyzer = arith.Analyzer()
    for expr in exprs:
        for var in tirx.analysis.undefined_vars(expr):
            analyzer.bind(var, tvm.ir.Range.from_min_extent(1, _SYMBOLIC_MAX))
    return analyzer


def _realize(func, name):
    """(the realize of block `name` in `func`, the loops around it, outermost first)."""
    stack = [(func.body, ())]
    while stack:
        node, loops = stack.pop()
        kind = type(node).__name__
        if kind in ("SBlockRealize", "BlockRealize") and node.block.name_hint == name:
            return node, loops
        if kind == "For":
            loops = loops + (node,)
        stack.extend((child, loops) for child in children(node))
    raise LookupError(f"no block {name}")


def reads_stay_in_tile(sch, producer, consumer, tile):
    """Whether block `consumer` (an SBlockRV) reads the only buffer block `producer` (a
    name) writes within what `producer` writes at the same iteration of loop `tile` (a
    LoopRV above both)."""
    func = sch.mod["main"]
    written_buffer = sch.get(sch.get_sblock(producer)).writes[0].source
    tile_loop = sch.get(tile)
    analyzer = analyzer_for(*(lp.extent for lp in _realize(func, producer)[1]))

    def inside(loops):
        """The loops below the tile, as intervals; those above it bound in the analyzer."""
        at = [lp.same_as(tile_loop) for lp in loops].index(True)
        for lp in loops[:at + 1]:
            analyzer.bind(lp.loop_var, tvm.ir.Range.from_min_extent(lp.min, lp.extent))
        return {lp.loop_var: arith.IntervalSet(lp.min, lp.min + lp.extent - 1)
                for lp in loops[at + 1:]}

    def bounds(realize, loops, exprs):
        values = {iv.var: v for iv, v in zip(realize.block.iter_vars, realize.iter_values)}
        domain = inside(loops)
        sets = [analyzer.int_set(substitute(e, values), domain) for e in exprs]
        return [(s.min_value, s.max_value) for s in sets]

    realize, loops = _realize(func, producer)
    region = realize.block.writes[0].region
    written = [(lo, hi) for (lo, _), (_, hi) in zip(
        bounds(realize, loops, [r.min for r in region]),
        bounds(realize, loops, [r.min + r.extent - 1 for r in region]))]
    realize, loops = _realize(func, sch.get(consumer).name_hint)
    loads = []
    _walk_block_exprs(realize.block, lambda e: loads.append(e) if isinstance(
        e, tvm.ir.TensorLoad) and e.source.same_as(written_buffer) else None)
    return all(analyzer.can_prove(lo >= w_lo) and analyzer.can_prove(hi <= w_hi)
               for load in loads
               for (lo, hi), (w_lo, w_hi) in zip(bounds(realize, loops, load.indices), written))
