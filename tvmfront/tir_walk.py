"""Every statement of a TIR body, for the passes that read kernels: the graph passes
(pipeline.py, merge_elementwise.py) and the schedule rules' analysis (schedule/analysis.py).
TVM 0.27's Python API has no statement visitor (no tirx.stmt_functor)."""

from ._tvm import tirx


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
