"""A sum's terms that read a zero padding, skipped where they read the padding.

A 3x3 convolution with padding 1 over 28 x 28 outputs multiplies zeros in 4.7% of its terms
(the window's first or last row or column over the border), over 14 x 14 in 9.3%, and reads
them from a padded copy of its input, made per image or per block of rows. conv_forward
instead inlines the padding into the sum (inline_padding): the sum's update then reads
if_then_else(inside, x[...], 0) * w[...], and skip_padded_terms moves `inside` into the
block's predicate, marked likely, the term reading x directly. TVM's LoopPartition and
unrolling leave the interior tiles without checks and the border tiles with a few branches
that every iteration of the reduction takes the same way. No copy, no zero fill, fewer FMAs.
One Emerald Rapids core, b32 32->64 @28 forward 1.08x (the padding per block of 4 rows
before), b32 64->64 @14 1.13-1.15x.

Skipping a term leaves out 0 * w, which differs from adding it only where w is inf or NaN (the
padded form's NaN there, as PyTorch's oneDNN kernels also skip those terms). The rewrite runs
on the scheduled function (the schedule primitives set no predicates), as predicates.py's.
"""

from .._tvm import s_tir, structural_equal, tirx, tvm
from ..autodiff import substitute
from ..tir_walk import rebuild, with_block
from .analysis import _reduction_iters
from .failures import _probe

SKIP = "tvmfront.skip_padded_terms"
IF_THEN_ELSE = "if_then_else"


def inline_padding(sch, blocks):
    """Inline into `blocks`, sums of products (acc + a * b), the zero paddings (_zero_padding)
    that they alone read, and mark each block that read one for skip_padded_terms. Returns the
    names of the paddings inlined. Only for blocks whose vector loop is not one the padding's
    condition reads: a predicate that varies along the lanes takes every vector apart."""
    if any(_product(sch.get(block).body) is None for block in blocks):
        return []
    names = {sch.get(block).name_hint for block in blocks}
    paddings, readers = [], set()
    for block in blocks:
        for producer in sch.get_producers(block):
            stmt = sch.get(producer)
            consumers = {sch.get(c).name_hint for c in sch.get_consumers(producer)}
            if stmt.name_hint in paddings or _reduction_iters(stmt) or \
                    _zero_padding(stmt) is None or not consumers <= names:
                continue
            try:
                sch.compute_inline(producer)
            except Exception as err:  # noqa: BLE001 - TVM's own check: the copy stays
                _probe(f"inline of padding {stmt.name_hint}", err)
                continue
            paddings.append(stmt.name_hint)
            readers |= consumers
    for name in sorted(readers):
        sch.annotate(sch.get_sblock(name), SKIP, 1)
    return paddings


def skip_padded_terms(func):
    """`func` with every block marked by inline_padding predicated on its padding's condition
    (likely) and reading the padded tensor's source directly; the mark removed. Dispatch runs
    it on whatever rule scheduled the kernel."""
    body = rebuild(func.body, _skip)
    return func if body is None else func.with_body(body)


def _skip(node):
    """A marked block's realize with its guarded term unguarded and the guard in its
    predicate, or None for any other statement."""
    if type(node).__name__ != "SBlockRealize" or SKIP not in node.block.annotations:
        return None
    block = node.block
    annotations = {k: v for k, v in block.annotations.items() if k != SKIP}
    # A block with its init would skip that too where the guard fails: decomposed first
    # (conv_forward's is); not acc + if_then_else(c, v, 0) * w: the select stays, still right.
    split = None if block.init is not None else _guarded_term(block.body)
    if split is None:
        return s_tir.SBlockRealize(node.iter_values, node.predicate,
                                   with_block(block, annotations=annotations))
    store, cond = split
    values = {iv.var: value for iv, value in zip(block.iter_vars, node.iter_values)}
    guard = substitute(cond, values)
    # Marked likely for LoopPartition, but not over int64 loops (a symbolic batch's): TVM
    # 0.27's LoopPartition then builds int32 bounds against them and fails the build
    # ('mismatched types. int32 vs. int64'). Rules that partition their loops themselves
    # (conv_weight_grad._border_partitions) need it too: with a plain guard the same-size
    # d/dw ran 0.50-0.56x (one core), the guard left in its parts.
    if all(str(value.ty) == "int32" for value in node.iter_values):
        guard = tirx.likely(guard)
    predicate = node.predicate
    if not (isinstance(predicate, tirx.IntImm) and int(predicate.value) == 1):
        guard = tirx.And(predicate, guard)
    return s_tir.SBlockRealize(node.iter_values, guard,
                               with_block(block, body=store, annotations=annotations))


def _guarded_term(store):
    """(the store with its term's if_then_else(c, v, 0) replaced by v, c) for a block body
    acc = acc + a * b whose a or b is such a select; else None."""
    product = _product(store)
    if product is None:
        return None
    acc, a, b = product
    for guarded, other, first in ((a, b, True), (b, a, False)):
        parts = _select_of_zero(guarded)
        if parts is None:
            continue
        cond, value = parts
        term = tirx.Mul(value, other) if first else tirx.Mul(other, value)
        return tirx.BufferStore(store.buffer, tirx.Add(acc, term), store.indices), cond
    return None


def _product(store):
    """(acc, a, b) of a store acc = acc + a * b (acc a load of the stored element), else
    None."""
    if not isinstance(store, tirx.BufferStore) or not isinstance(store.value, tirx.Add):
        return None
    acc, term = store.value.a, store.value.b
    if not isinstance(term, tirx.Mul) or not isinstance(acc, tvm.ir.TensorLoad) or \
            not acc.source.same_as(store.buffer) or \
            not structural_equal(list(acc.indices), list(store.indices)):
        return None
    return acc, term.a, term.b


def _select_of_zero(expr):
    """(c, v) of if_then_else(c, v, 0), else None."""
    if not (isinstance(expr, tvm.ir.Call) and
            str(getattr(expr.op, "name", "")).endswith(IF_THEN_ELSE)):
        return None
    cond, value, other = expr.args
    if not isinstance(other, tirx.FloatImm) or other.value != 0:
        return None
    return cond, value


def _zero_padding(stmt):
    """(c, v) of a block storing if_then_else(c, v, 0) (v a load: a zero padding), else
    None."""
    store = stmt.body
    if not isinstance(store, tirx.BufferStore):
        return None
    parts = _select_of_zero(store.value)
    if parts is None or not isinstance(parts[1], tvm.ir.TensorLoad):
        return None
    return parts
