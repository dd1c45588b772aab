"""Block predicates marked likely, so that TVM's LoopPartition peels off the iterations where
they fail.

A register tile split by a factor that does not divide its loop (gemm._remainder_tile: 6-row
tiles over 1024 rows) predicates every point of the tile (T.where(i_0 * 6 + i_1 < 1024)). TVM
lowers a block predicate to a plain `if`, which LoopPartition leaves alone: every tile then
runs the checks (an AVX2 1024^3 GEMM: 5x slower). Wrapped in `likely`, LoopPartition
(partition_const_loop: build.PARTITION_CONST_LOOPS) splits the last, partial tile off the row
loop, and the full tiles run without them. A rule marks such blocks (mark_likely); TVM 0.27
has no statement mutator in Python, so likely_predicates rebuilds the path to them node by
node.
"""

from .._tvm import s_tir, tirx

# The block annotation that asks for a likely predicate (removed once applied).
LIKELY = "tvmfront.likely_predicate"


def mark_likely(sch, block):
    """Ask for `block`'s predicate to be marked likely (see likely_predicates)."""
    sch.annotate(block, LIKELY, 1)


def likely_predicates(func):
    """`func` with the predicate of every block marked by mark_likely wrapped in `likely` and
    the mark removed (the function itself where none is marked)."""
    body = _rebuild(func.body)
    return func if body is None else func.with_body(body)


def _rebuild(node):
    """`node` rebuilt with its marked blocks' predicates likely, or None where nothing under
    it is marked. Scheduled TIR nests blocks only in loops, sequences and blocks: any other
    statement is returned as it is."""
    kind = type(node).__name__
    if kind == "For":
        body = _rebuild(node.body)
        return None if body is None else tirx.For(
            node.loop_var, node.min, node.extent, node.kind, body, node.thread_binding,
            node.annotations, getattr(node, "step", None))
    if kind == "SeqStmt":
        seq = [_rebuild(stmt) for stmt in node.seq]
        if all(stmt is None for stmt in seq):
            return None
        return tirx.SeqStmt([new if new is not None else old for new, old in zip(seq, node.seq)])
    if kind == "SBlockRealize":
        block = node.block
        marked = LIKELY in block.annotations
        rebuilt = _rebuild(block)
        if rebuilt is None and not marked:
            return None
        block = rebuilt if rebuilt is not None else block
        predicate = node.predicate
        if marked:
            block = _block(block, annotations={k: v for k, v in block.annotations.items()
                                               if k != LIKELY})
            if not (isinstance(predicate, tirx.IntImm) and int(predicate.value) == 1):
                predicate = tirx.likely(predicate)
        return s_tir.SBlockRealize(node.iter_values, predicate, block)
    if kind == "SBlock":
        body = _rebuild(node.body)
        init = _rebuild(node.init) if node.init is not None else None
        if body is None and init is None:
            return None
        return _block(node, body=body, init=init)
    return None


def _block(block, body=None, init=None, annotations=None):
    """`block` with a new body, init or annotations (the others kept)."""
    return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint,
                        body if body is not None else block.body,
                        init if init is not None else block.init,
                        block.alloc_buffers, block.match_buffers,
                        annotations if annotations is not None else block.annotations)
