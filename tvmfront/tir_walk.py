"""Every statement of a TIR body, for the passes that read kernels: the graph passes
(pipeline.py, merge_elementwise.py) and the schedule rules' analysis (schedule/analysis.py);
and a body rebuilt around the statements a pass replaces (schedule/predicates.py,
denormals.py). TVM 0.27's Python API has no statement visitor or mutator (no
tirx.stmt_functor)."""

from ._tvm import s_tir, tirx


def children(node):
    """The statements directly inside `node`: a loop's or block's body, a realize's block, an
    if's branches, a block's init, a sequence's statements."""
    for attr in ("body", "block", "then_case", "else_case", "init"):
        child = getattr(node, attr, None)
        if child is not None and isinstance(child, tirx.Stmt):
            yield child
    seq = getattr(node, "seq", None)
    if seq is not None:
        yield from seq


def statements(stmt):
    """`stmt` and every statement inside it (a stack: a sequence's last statement first)."""
    stack = [stmt]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(children(node))


def rebuild(node, change):
    """`node` with the statements change(statement) replaces (top-down: a replaced statement is
    not entered), the loops, sequences, blocks, realizes and conditions above them rebuilt;
    None where nothing under `node` changed. change returns the replacement or None. Scheduled
    TIR nests statements only in those; any other statement is neither entered nor rebuilt."""
    new = change(node)
    if new is not None:
        return new
    kind = type(node).__name__
    if kind == "For":
        body = rebuild(node.body, change)
        return None if body is None else tirx.For(
            node.loop_var, node.min, node.extent, node.kind, body, node.thread_binding,
            node.annotations, getattr(node, "step", None))
    if kind == "SeqStmt":
        seq = [rebuild(stmt, change) for stmt in node.seq]
        if all(stmt is None for stmt in seq):
            return None
        return tirx.SeqStmt([new if new is not None else old for new, old in zip(seq, node.seq)])
    if kind == "SBlockRealize":
        block = rebuild(node.block, change)
        return None if block is None else s_tir.SBlockRealize(node.iter_values, node.predicate,
                                                              block)
    if kind == "SBlock":
        body = rebuild(node.body, change)
        init = rebuild(node.init, change) if node.init is not None else None
        if body is None and init is None:
            return None
        return with_block(node, body=body, init=init)
    if kind == "IfThenElse":
        then = rebuild(node.then_case, change)
        other = rebuild(node.else_case, change) if node.else_case is not None else None
        if then is None and other is None:
            return None
        return tirx.IfThenElse(node.condition, then if then is not None else node.then_case,
                               other if other is not None else node.else_case)
    return None


def with_block(block, body=None, init=None, annotations=None, alloc_buffers=None, writes=None):
    """`block` (an SBlock) with a new body, init, annotations, buffers or written regions
    (the rest kept)."""
    return s_tir.SBlock(block.iter_vars, block.reads,
                        writes if writes is not None else block.writes, block.name_hint,
                        body if body is not None else block.body,
                        init if init is not None else block.init,
                        alloc_buffers if alloc_buffers is not None else block.alloc_buffers,
                        block.match_buffers,
                        annotations if annotations is not None else block.annotations)
