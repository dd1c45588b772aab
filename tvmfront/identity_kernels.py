"""Kernels that only copy their input, elided before fusion.

A derived gradient is often the incoming gradient itself: the d/dx of ``x + b`` or of a bias
add, the d/da of ``a + b`` where nothing broadcasts. Once drop_unread_inputs has removed the
inputs such a kernel ignores, it is a copy: ``out[i, j] = dy[i, j]``. FuseOps fuses a copy into
an elementwise consumer, but not into a GEMM's input, so a Transformer step kept ten of them
(each a full pass over a [1024, 128..512] activation gradient). Relax values are immutable, so
the copy's output can be its input: every use of such a call's result reads its argument.
"""

from ._tvm import (PyExprMutator, mutator, prim_func_type, relax, relax_call_tir_op,
                   structural_equal)

_DATA_PAR = 0  # IterVar kind of a spatial (data-parallel) block iterator


def elide_identity_copies(mod):
    """`mod` with every call_tir of a copy kernel (one input, one output of the same shape and
    dtype, every element written from the same element of the input) bound to its argument.
    Only dataflow values are aliased: a function's own outputs keep their copies."""
    copies = {gvar.name_hint for gvar, func in mod.functions.items()
              if isinstance(func, prim_func_type()) and is_identity_copy(func)}
    if not copies:
        return mod
    rewriter = _ElideCopies(mod, copies)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()


def is_identity_copy(func):
    """Whether PrimFunc `func` is ``out[i...] = in[i...]`` over all of `out`, `in` of the same
    shape and dtype, in one block under a plain loop nest."""
    if len(func.params) != 2:
        return False
    src, dst = func.params  # TVM 0.27: a PrimFunc's parameters are its buffers
    if not all(hasattr(b, "shape") and hasattr(b, "dtype") for b in (src, dst)):
        return False
    if src.dtype != dst.dtype or not structural_equal(list(src.shape), list(dst.shape)):
        return False
    realize, loops = _only_block(func.body)
    if realize is None:
        return False
    block = realize.block
    store = block.body
    if (block.init is not None or len(block.alloc_buffers) or len(block.match_buffers)
            or type(store).__name__ != "BufferStore" or not store.buffer.same_as(dst)):
        return False
    load = store.value
    loaded = getattr(load, "buffer", None) or getattr(load, "source", None)  # TensorLoad: source
    if type(load).__name__ not in ("BufferLoad", "TensorLoad") or loaded is None \
            or not loaded.same_as(src):
        return False
    iters = list(block.iter_vars)
    if len(iters) != len(dst.shape) or any(int(iv.iter_type) != _DATA_PAR for iv in iters):
        return False
    same_place = all(s.same_as(iv.var) and ld.same_as(iv.var)
                     for s, ld, iv in zip(store.indices, load.indices, iters))
    return same_place and _covers(realize, loops, iters, dst.shape)


def _only_block(body):
    """(the one SBlockRealize under the root block, the loops above it) or (None, None)."""
    root = getattr(body, "block", None)
    if root is None or len(root.alloc_buffers):
        return None, None
    stmt, loops = root.body, []
    while type(stmt).__name__ == "For":
        loops.append(stmt)
        stmt = stmt.body
    if type(stmt).__name__ not in ("SBlockRealize", "BlockRealize"):
        return None, None
    return stmt, loops


def _covers(realize, loops, iters, shape):
    """Whether the block runs once for every index of `shape`: each iterator bound to its own
    loop, from 0 over the whole dimension, with no predicate."""
    if not _is_true(realize.predicate) or len(loops) != len(iters):
        return False
    for value, loop, iv, dim in zip(realize.iter_values, loops, iters, shape):
        if not (value.same_as(loop.loop_var) and _is_zero(loop.min) and _is_zero(iv.dom.min)
                and structural_equal(loop.extent, dim) and structural_equal(iv.dom.extent, dim)):
            return False
    return True


def _is_zero(expr):
    return getattr(expr, "value", None) == 0


def _is_true(expr):
    return getattr(expr, "value", None) in (1, True)


@mutator
class _ElideCopies(PyExprMutator):
    """lv = call_tir(copy, (x,), ...) -> uses of lv read x, for dataflow vars lv."""

    def __init__(self, mod, copies):
        super().__init__(mod)
        self.copies = copies

    def visit_var_binding_(self, binding):
        value = binding.value
        if isinstance(binding.var, relax.DataflowVar) and self._is_copy(value):
            self.set_var_remap(binding.var, self.visit_expr(value.args[1].fields[0]))
            return
        super().visit_var_binding_(binding)

    def _is_copy(self, value):
        return (isinstance(value, relax.Call) and value.op.same_as(relax_call_tir_op())
                and len(value.args) == 2 and isinstance(value.args[0], relax.GlobalVar)
                and value.args[0].name_hint in self.copies
                and isinstance(value.args[1], relax.Tuple) and len(value.args[1].fields) == 1)
