"""A strided convolution's d/dx written by its phases themselves, with no interleave pass.

ops/conv.py's _grad_x makes that d/dx as one stride-1 convolution per output phase (i % s,
j % s), each into a buffer of its own, then a block that interleaves the phases into dx:
dx[a, c, i, j] = phase(i % s, j % s)[a, i // s, j // s, c]. conv_phases tiles each phase as
columns x vectors of channels, so its buffer is laid out channels last, and the interleave
then transposed every element back into NCHW, lane by lane: 14% of b32 64->64 @14 s2's d/dx
on an Emerald Rapids core (perf), 0.8 cycles an element.

Here each phase's write-back stores its tile into dx at (s * i + P, s * j + Q) itself, and the
interleave and the phase buffers are gone; conv_phases then defers that write-back into the
next tile's reduction (deferred_writeback.py), as conv_forward does its NCHW write-back, so
that its scalar stores overlap FMA work.

The schedule primitives cannot make a block write another buffer, so this is a rewrite of
the scheduled function, as deferred_writeback's: the rule checks the interleave (phase_map,
which substitutes i = s * y + P, j = s * x + Q into it and requires each phase to come out
as one load at [.., y, x, ..] of its own buffer, every phase present), then marks it and the
phases' write-backs (mark_phase_writes); direct_phase_writes rewrites the marked function.
"""

import itertools

from .._tvm import arith, s_tir, tirx, tvm
from ..autodiff import _Unsupported, substitute
from ..tir_walk import rebuild, statements, with_block
from .analysis import _walk_expr
from .failures import NotApplicable, _failed

INTERLEAVE = "tvmfront.phase_interleave"  # its value: the stride s
PHASE_WRITE = "tvmfront.phase_write"


def phase_map(block, stride):
    """[(phase buffer, (P, Q, [the interleave's variable each of its axes holds]))] of an
    interleave `block` (an SBlock: dx[..] = a choice among loads of the phases), with
    variables y and x standing for i // s and j // s, both returned after the map:
    (map, (a, c, i, j) block variables, y, x). Raises NotApplicable where the block is not
    such an interleave of s * s phases, each read whole at [.., y, x, ..] and only there."""
    store = block.body
    if not isinstance(store, tirx.BufferStore) or len(block.iter_vars) != 4:
        raise NotApplicable("the interleave is not one store over four axes")
    a, c, i, j = (iv.var for iv in block.iter_vars)
    if not all(isinstance(e, tirx.Var) for e in store.indices) or \
            [e.name for e in store.indices] != [v.name for v in (a, c, i, j)]:
        raise NotApplicable("the interleave does not write dx[a, c, i, j]")
    extents = [int(iv.dom.extent) for iv in block.iter_vars]
    if extents[2] % stride or extents[3] % stride:
        raise NotApplicable("the stride does not tile dx")
    y, x = tirx.Var("y", i.ty), tirx.Var("x", j.ty)
    analyzer = arith.Analyzer()
    for var, extent in ((a, extents[0]), (c, extents[1]), (y, extents[2] // stride),
                        (x, extents[3] // stride)):
        analyzer.bind(var, tvm.ir.Range.from_min_extent(0, extent))
    found = []
    for p, q in itertools.product(range(stride), repeat=2):
        values = {i: y * stride + p, j: x * stride + q}
        load = _chosen_load(store.value, values, analyzer)
        indices = [analyzer.simplify(_subst(e, values)) for e in load.indices]
        axes = []
        for e in indices:
            var = next((v for v in (a, y, x, c) if isinstance(e, tirx.Var) and e.same_as(v)),
                       None)
            if var is None or any(var.same_as(k) for k in axes):
                raise NotApplicable(f"phase ({p}, {q}) read at {indices}")
            axes.append(var)
        sizes = {id(a): extents[0], id(c): extents[1], id(y): extents[2] // stride,
                 id(x): extents[3] // stride}
        if len(axes) != 4 or [int(d) for d in load.source.shape] != [sizes[id(v)] for v in axes] \
                or _phase_of(found, load.source) is not None:
            raise NotApplicable(f"phase ({p}, {q}) is not a whole buffer of its own")
        found.append((load.source, (p, q, axes)))
    return found, (a, c, i, j), y, x


def _phase_of(phases, buffer):
    """(P, Q, axes) of `buffer` among `phases` (phase_map's), or None."""
    return next((phase for source, phase in phases if source.same_as(buffer)), None)


def _chosen_load(expr, values, analyzer):
    """The load that `expr` (if_then_else and Select choices among loads) takes where
    `values` hold; NotApplicable where a condition does not simplify to a constant."""
    while True:
        if isinstance(expr, tvm.ir.TensorLoad):
            return expr
        if isinstance(expr, tirx.Select):
            cond, then, other = expr.condition, expr.true_value, expr.false_value
        elif type(expr).__name__ == "Call" and expr.op.name.endswith(".if_then_else"):
            cond, then, other = expr.args
        else:
            raise NotApplicable(f"the interleave computes {type(expr).__name__}")
        decided = analyzer.simplify(_subst(cond, values))
        if not isinstance(decided, tirx.IntImm):
            raise NotApplicable(f"the interleave's choice {cond} is not fixed per phase")
        expr = then if int(decided.value) else other


def _subst(expr, values):
    try:
        return substitute(expr, values)
    except _Unsupported as err:
        raise NotApplicable(str(err)) from err


def mark_phase_writes(sch, interleave, writebacks, stride):
    """Ask for the phases' `writebacks` to store into the interleave's output themselves and
    for `interleave` to go (direct_phase_writes). The caller has checked phase_map."""
    sch.annotate(interleave, INTERLEAVE, stride)
    for writeback in writebacks:
        sch.annotate(writeback, PHASE_WRITE, 1)


def direct_phase_writes(func):
    """`func` with every marked interleave removed and its phases' marked write-backs storing
    into its output (see the module docstring); where the marks do not fit, the marks
    removed and the interleave kept."""
    interleaves = [node for node in statements(func.body)
                   if type(node).__name__ == "SBlockRealize" and
                   INTERLEAVE in node.block.annotations]
    if not interleaves:
        return func
    try:
        return _direct(func, interleaves)
    except NotApplicable as err:
        _failed("write the phases into dx", err)
        return func.with_body(rebuild(func.body, _unmark) or func.body)


def _direct(func, interleaves):
    if len(interleaves) != 1:
        raise NotApplicable(f"{len(interleaves)} interleaves")
    block = interleaves[0].block
    stride = int(block.annotations[INTERLEAVE])
    phases, (a, c, i, j), y, x = phase_map(block, stride)
    dx = block.body.buffer
    done = []

    def change(node):
        kind = type(node).__name__
        inner = node
        while type(inner).__name__ == "For":
            inner = inner.body
        if type(inner).__name__ == "SBlockRealize" and inner.block.same_as(block):
            return tirx.Evaluate(0)  # the interleave's loop nest
        if kind == "SBlockRealize" and PHASE_WRITE in node.block.annotations:
            store = node.block.body
            phase = _phase_of(phases, store.buffer) \
                if isinstance(store, tirx.BufferStore) else None
            if phase is None:
                raise NotApplicable(f"{node.block.name_hint} stores no phase")
            p, q, axes = phase
            at = {id(v): e for v, e in zip(axes, store.indices)}
            indices = [at[id(a)], at[id(c)], at[id(y)] * stride + p, at[id(x)] * stride + q]
            done.append(store.buffer)
            written = tirx.BufferStore(dx, store.value, indices)
            region = tirx.BufferRegion(dx, [tvm.ir.Range.from_min_extent(e, 1) for e in indices])
            annotations = {k: v for k, v in node.block.annotations.items() if k != PHASE_WRITE}
            return s_tir.SBlockRealize(node.iter_values, node.predicate, with_block(
                node.block, body=written, annotations=annotations, writes=[region]))
        return None

    body = rebuild(func.body, change)
    if len(done) != len(phases):
        raise NotApplicable(f"{len(phases) - len(done)} phase(s) without a marked write-back")
    left = [buf.name for buf in _buffers_used(body) if _phase_of(phases, buf) is not None]
    if left:
        raise NotApplicable(f"phase buffers still read or written: {sorted(set(left))}")
    root = body.block
    kept = [buf for buf in root.alloc_buffers if _phase_of(phases, buf) is None]
    return func.with_body(s_tir.SBlockRealize(body.iter_values, body.predicate,
                                              with_block(root, alloc_buffers=kept)))


def _buffers_used(stmt):
    """The buffer of every store and load under `stmt` (loads in indices included)."""
    found = []

    def visit(e):
        if isinstance(e, tvm.ir.TensorLoad):
            found.append(e.source)

    for node in statements(stmt):
        if isinstance(node, tirx.BufferStore):
            found.append(node.buffer)
            for e in [node.value, *node.indices]:
                _walk_expr(e, visit)
    return found


def _unmark(node):
    if type(node).__name__ != "SBlockRealize":
        return None
    marks = {INTERLEAVE, PHASE_WRITE} & set(node.block.annotations.keys())
    if not marks:
        return None
    block = rebuild(node.block, _unmark) or node.block
    return s_tir.SBlockRealize(node.iter_values, node.predicate, with_block(
        block, annotations={k: v for k, v in block.annotations.items() if k not in marks}))
