"""Block predicates marked likely, so that TVM's LoopPartition peels off the iterations where
they fail.

A register tile split by a factor that does not divide its loop (gemm._remainder_tile: 6-row
tiles over 1024 rows) predicates every point of the tile (T.where(i_0 * 6 + i_1 < 1024)). TVM
lowers a block predicate to a plain `if`, which LoopPartition leaves alone: every tile then
runs the checks (an AVX2 1024^3 GEMM: 5x slower). Wrapped in `likely`, LoopPartition
(partition_const_loop: build.PARTITION_CONST_LOOPS) splits the last, partial tile off the row
loop, and the full tiles run without them. A rule marks such blocks (mark_likely); TVM 0.27
has no statement mutator in Python, so likely_predicates rebuilds the path to them node by
node (tir_walk.rebuild).
"""

from .._tvm import s_tir, tirx
from ..tir_walk import rebuild, with_block

# The block annotation that asks for a likely predicate (removed once applied).
LIKELY = "tvmfront.likely_predicate"


def mark_likely(sch, block):
    """Ask for `block`'s predicate to be marked likely (see likely_predicates)."""
    sch.annotate(block, LIKELY, 1)


def likely_predicates(func):
    """`func` with the predicate of every block marked by mark_likely wrapped in `likely` and
    the mark removed (the function itself where none is marked)."""
    body = rebuild(func.body, _likely)
    return func if body is None else func.with_body(body)


def _likely(node):
    """A marked block's realize with its predicate likely and the mark removed (its own
    body rebuilt too), or None for any other statement."""
    if type(node).__name__ != "SBlockRealize" or LIKELY not in node.block.annotations:
        return None
    block = rebuild(node.block, _likely) or node.block
    block = with_block(block, annotations={k: v for k, v in block.annotations.items()
                                           if k != LIKELY})
    predicate = node.predicate
    if not (isinstance(predicate, tirx.IntImm) and int(predicate.value) == 1):
        predicate = tirx.likely(predicate)
    return s_tir.SBlockRealize(node.iter_values, predicate, block)
