"""Read-only facts about a kernel: walking its statements and expressions, loop kinds, its
total work, symbolic extents, and per block its iteration space and the stride of every
access along each block variable (_BlockInfo), which every rule decides from.

Nothing here changes a schedule. loop_kinds and kernel_work serve tests and reports too.
"""

import math

from .._tvm import arith, structural_equal, structural_hash, tirx, tvm
from ..tir_walk import children as _children, statements
from .params import LIBRARY_CALLS, SYMBOLIC_EXTENT, _dtype_bits
from .failures import NotApplicable


_KIND_NAMES = {int(tirx.ForKind.SERIAL): "serial", int(tirx.ForKind.PARALLEL): "parallel",
               int(tirx.ForKind.VECTORIZED): "vectorized", int(tirx.ForKind.UNROLLED): "unrolled"}


def _walk_stmts(stmt, fn):
    for node in statements(stmt):
        fn(node)


def loop_kinds(func):
    """Set of loop kinds ('serial', 'parallel', 'vectorized', 'unrolled', ...) in a PrimFunc."""
    kinds = set()

    def visit(node):
        if isinstance(node, tirx.For):
            kinds.add(_KIND_NAMES.get(int(node.kind), str(node.kind)))

    _walk_stmts(func.body, visit)
    return kinds


def parallel_write_races(func):
    """Names of the blocks that every iteration of an enclosing parallel loop writes to the
    same place: none of their spatial iteration variables is bound to the loop's variable
    (e.g. dlight's Reduction computing a loss's 0-d sample count inside its parallel rows).
    Each thread then initializes and accumulates the same buffer: a data race, and the work
    repeated once per iteration."""
    races = []

    def visit(node, parallel_vars):
        if isinstance(node, tirx.For) and int(node.kind) == int(tirx.ForKind.PARALLEL):
            parallel_vars = parallel_vars + [node.loop_var]
        if type(node).__name__ in ("SBlockRealize", "BlockRealize") and parallel_vars:
            block = node.block
            bound = [v for iv, value in zip(block.iter_vars, node.iter_values)
                     if int(iv.iter_type) == 0  # data-parallel (spatial)
                     for v in tirx.analysis.undefined_vars(value)]
            # by identity: loop names repeat (dlight names every nest's loops ax0, ax1, ...)
            if block.writes and any(not any(v.same_as(p) for v in bound)
                                    for p in parallel_vars):
                races.append(block.name_hint)
        for child in _children(node):
            visit(child, parallel_vars)

    visit(func.body, [])
    return races


def kernel_work(func, symbolic=False):
    """Total loop iterations of a PrimFunc (sum over loop nests of the product of extents).
    An extent that is not a constant makes it None, or with `symbolic`, counts as
    SYMBOLIC_EXTENT."""
    total = [0]
    ok = [True]

    def visit(node, scale=1):
        if isinstance(node, tirx.For):
            ext = _size(node.extent) if symbolic else _const(node.extent)
            if ext is None:
                ok[0] = False
                return
            for child in _children(node):
                visit(child, scale * ext)
            return
        if type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            total[0] += scale
        for child in _children(node):
            visit(child, scale)

    visit(func.body)
    return total[0] if ok[0] else None


def _max_block_iterations(func):
    """Largest iteration count of any single block (1 for kernels of 0-d computations)."""
    most = [0]

    def visit(node, scale=1):
        if isinstance(node, tirx.For):
            scale *= _size(node.extent) or 2
        elif type(node).__name__ in ("SBlockRealize", "BlockRealize"):
            most[0] = max(most[0], scale)
        for child in _children(node):
            visit(child, scale)

    visit(func.body)
    return most[0]


def _const(expr):
    return int(expr.value) if isinstance(expr, tirx.IntImm) else None


def _size(expr):
    """An extent as an int for planning: its value when constant; when symbolic (a batch size
    known at run time), its value with every variable at SYMBOLIC_EXTENT (see there)."""
    value = _const(expr)
    if value is not None or not isinstance(expr, tirx.Expr):
        return value
    analyzer = arith.Analyzer()
    for var in tirx.analysis.undefined_vars(expr):
        analyzer.bind(var, tirx.IntImm(var.ty.dtype, SYMBOLIC_EXTENT))
    return _const(analyzer.simplify(expr))


def _unroll_extent(sch, loop):
    """A loop's extent for unrolling decisions: a symbolic one cannot be unrolled (infinite)."""
    return _const(sch.get(loop).extent) or math.inf


def _is_symbolic(expr):
    return _const(expr) is None


def _same_extent(a, b):
    return _const(a) == _const(b) if not (_is_symbolic(a) or _is_symbolic(b)) else \
        structural_equal(a, b)


def _walk_expr(expr, fn):
    """fn(e) for every subexpression; where fn returns False, e's children are skipped."""
    stack = [expr]
    while stack:
        e = stack.pop()
        if fn(e) is False:
            continue
        for attr in ("a", "b", "value", "condition", "true_value", "false_value", "base",
                     "stride", "body"):
            child = getattr(e, attr, None)
            if isinstance(child, tirx.Expr):
                stack.append(child)
        for attr in ("args", "indices"):
            children = getattr(e, attr, None)
            if children is not None:
                stack.extend(c for c in children if isinstance(c, tirx.Expr))


def _is_contraction_store(stmt):
    """out = out + f(loads...) where f multiplies two loads of different buffers."""
    store = stmt.body
    if not isinstance(store, tirx.BufferStore) or stmt.init is None:
        return False
    found = [False]

    def visit(e):
        if isinstance(e, tirx.Mul):
            bufs = set()
            for side in (e.a, e.b):
                _walk_expr(side, lambda x: bufs.add(x.source.name)
                           if isinstance(x, tvm.ir.TensorLoad) else None)
            if len(bufs) >= 2:
                found[0] = True

    _walk_expr(store.value, visit)
    return found[0]


def _root_blocks(sch):
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def _has_contraction(sch):
    return any(_is_contraction_store(sch.get(b)) and _reduction_iters(sch.get(b))
               for b in _root_blocks(sch))


def _reduction_iters(stmt):
    return [iv for iv in stmt.iter_vars if int(iv.iter_type) == int(tirx.IterVar.CommReduce)]


def _row_major(shape):
    strides, acc = [], 1
    for ext in reversed(shape):
        strides.append(acc)
        acc *= ext
    return list(reversed(strides))


def _access_strides(region, variables, analyzer=None):
    """Flattened stride of a buffer access with respect to each block variable:
    {index: int}, None for variables the access depends on non-linearly (or non-pointwise).
    `analyzer` knows the variables' ranges (so that reshape indices such as (4i + j) % 64
    simplify to affine ones)."""
    shape = [_size(s) for s in region.source.shape]
    if any(s is None for s in shape):
        return {k: None for k in range(len(variables))}
    strides = {k: 0 for k in range(len(variables))}
    position = {v.name: k for k, v in enumerate(variables)}
    if analyzer is not None and all(_const(r.extent) == 1 for r in region.region):
        # The flattened offset first: a reshape's (i // 4) * 4 + i % 4 is just i.
        flat = 0
        for rng, dim_stride in zip(region.region, _row_major(shape)):
            flat = flat + rng.min * dim_stride
        coeffs = arith.detect_linear_equation(analyzer.canonical_simplify(flat), list(variables))
        if coeffs and all(_const(c) is not None for c in coeffs[:-1]):
            return {k: _const(c) for k, c in enumerate(coeffs[:-1])}
    for rng, dim_stride in zip(region.region, _row_major(shape)):
        index = analyzer.simplify(rng.min) if analyzer is not None else rng.min
        used = [position[v.name] for v in tirx.analysis.undefined_vars(index)
                if v.name in position]
        coeffs = arith.detect_linear_equation(index, list(variables)) if used else []
        if used and (not coeffs or _const(rng.extent) != 1
                     or any(_const(c) is None for c in coeffs[:-1])):
            for k in used:
                strides[k] = None
            continue
        for k in used:
            if strides[k] is not None:
                strides[k] += _const(coeffs[k]) * dim_stride
    return strides


def _same_places(regions):
    """Whether every region is the same place of a same-shaped buffer of as wide elements:
    the outputs of a tuple reduction (several sums in one pass; a max and its position),
    which schedule as one."""
    first = regions[0]
    bits = _dtype_bits(first.source.dtype)
    return all(len(r.region) == len(first.region) and _dtype_bits(r.source.dtype) == bits
               and all(structural_equal(a.min, b.min) and structural_equal(a.extent, b.extent)
                       for a, b in zip(r.region, first.region)) for r in regions[1:])


class _BlockInfo:
    """Iteration space and access strides of one block with trivially bound loops."""

    def __init__(self, sch, block):
        self.block = block
        self.stmt = stmt = sch.get(block)
        self.name = stmt.name_hint
        self.loops = list(sch.get_loops(block))
        self.vars = [iv.var for iv in stmt.iter_vars]
        self.kinds = ["R" if int(iv.iter_type) == int(tirx.IterVar.CommReduce) else
                      "S" if int(iv.iter_type) == int(tirx.IterVar.DataPar) else "O"
                      for iv in stmt.iter_vars]
        # Symbolic extents as SYMBOLIC_EXTENT; `symbolic` lists their axes.
        self.extents = [_size(iv.dom.extent) for iv in stmt.iter_vars]
        self.symbolic = {k for k, iv in enumerate(stmt.iter_vars) if _is_symbolic(iv.dom.extent)}
        if len(self.loops) != len(self.vars) or any(e is None for e in self.extents):
            raise NotApplicable(f"block {self.name}: loops are not trivially bound")
        for loop, iv in zip(self.loops, stmt.iter_vars):
            if not _same_extent(sch.get(loop).extent, iv.dom.extent):
                raise NotApplicable(f"block {self.name}: loops are not trivially bound")
        if not stmt.writes:  # an extern's opaque block (a scatter) declares none
            raise NotApplicable(f"block {self.name}: no declared output")
        if len(stmt.writes) != 1 and not _same_places(stmt.writes):
            raise NotApplicable(f"block {self.name}: {len(stmt.writes)} outputs")
        self.write = stmt.writes[0]
        self.dtype = self.write.source.dtype
        # knows each block variable's range: indices simplified within the block
        self.analyzer = analyzer = arith.Analyzer()
        for iv in stmt.iter_vars:
            analyzer.bind(iv.var, iv.dom)
        self.write_strides = _access_strides(self.write, self.vars, analyzer)
        self.reads = [(i, r, _access_strides(r, self.vars, analyzer))
                      for i, r in enumerate(stmt.reads)
                      if not any(r.source.same_as(w.source) for w in stmt.writes)]
        self.work = math.prod(self.extents)
        self.calls = _library_calls(stmt)

    @property
    def spatial(self):
        return [k for k, kind in enumerate(self.kinds) if kind == "S"]

    @property
    def reduction(self):
        return [k for k, kind in enumerate(self.kinds) if kind == "R"]


def _buffers(func):
    """Every buffer a kernel's blocks read, write or allocate."""
    found = []

    def visit(node):
        found.extend(getattr(node, "alloc_buffers", None) or [])
        for region in list(getattr(node, "reads", None) or []) + \
                list(getattr(node, "writes", None) or []):
            found.append(region.source)

    _walk_stmts(func.body, visit)
    return found


# An inlined math function (ops/fastmath.py's exp, erf, tanh: a clamp, a polynomial and bit
# tricks, ~30 nodes, 4-5 cycles an element vectorized against libm's ~10 scalar) weighs one
# library call per ARITH_NODES_PER_CALL arithmetic nodes beyond the first FREE_ARITH_NODES, so
# exp-heavy kernels still run in parallel at the sizes where libm's calls did.
FREE_ARITH_NODES, ARITH_NODES_PER_CALL = 16, 64


def _library_calls(stmt):
    """How many math library calls (exp, log, tanh, ...) one iteration of a block makes, or
    their equivalent in inlined arithmetic (a float)."""
    if not isinstance(stmt.body, tirx.BufferStore):
        return 0
    calls, nodes, seen = [0], [0], set()

    def visit(e):  # the value's expression DAG: a shared subexpression once (CSE keeps one)
        if isinstance(e, (tirx.Var, tirx.IntImm, tirx.FloatImm)) or \
                type(e).__name__ == "BufferLoad":  # (0.27's tirx.BufferLoad is a function)
            return False  # a load's index arithmetic is not counted
        key = structural_hash(e)  # TE's lowering copies what the ops shared
        if key in seen:
            return False
        seen.add(key)
        if isinstance(e, tvm.ir.Call) and \
                str(getattr(e.op, "name", "")).rpartition(".")[2] in LIBRARY_CALLS:
            calls[0] += 1
        else:
            nodes[0] += 1
        return True

    _walk_expr(stmt.body.value, visit)
    return calls[0] + max(0, nodes[0] - FREE_ARITH_NODES) / ARITH_NODES_PER_CALL


def _walk_block_exprs(stmt, fn):
    """fn(e) for every subexpression a block's body computes: its stores' values, and the
    lets and conditions of a body that is more than one store (a tuple reduction's: a max
    and its position)."""
    def visit_stmt(node):
        for attr in ("value", "condition"):  # a store's or a let's value, an if's condition
            e = getattr(node, attr, None)
            if isinstance(e, tirx.Expr):
                _walk_expr(e, fn)

    _walk_stmts(stmt.body, visit_stmt)


def _guards(stmt):
    """The conditions of the block's if_then_else calls (its guarded reads)."""
    found = []

    def visit(e):
        if isinstance(e, tvm.ir.Call) and str(getattr(e.op, "name", "")).endswith("if_then_else"):
            found.append(e.args[0])

    _walk_block_exprs(stmt, visit)
    return found


def _has_if_then_else(stmt):
    """Whether the block's body computes an if_then_else (a guarded read)."""
    return bool(_guards(stmt))


def _guard_reads(stmt, var):
    """Whether a condition of the block's guarded reads reads `var`."""
    found = [False]

    def visit(e):
        if isinstance(e, tirx.Var) and e.same_as(var):
            found[0] = True

    for condition in _guards(stmt):
        _walk_expr(condition, visit)
    return found[0]


def _elements(buf):
    return math.prod(_size(d) for d in buf.shape)


def _bytes(buf):
    return _elements(buf) * _dtype_bits(buf.dtype) // 8


def _packable_dim(region, var):
    """The one dimension of a point access indexed by `var` (with coefficient 1), or None."""
    if any(_const(r.extent) != 1 for r in region.region):
        return None
    dims = [d for d, rng in enumerate(region.region)
            if any(x.name == var.name for x in tirx.analysis.undefined_vars(rng.min))]
    if len(dims) != 1:
        return None
    coeffs = arith.detect_linear_equation(region.region[dims[0]].min, [var])
    return dims[0] if coeffs and _const(coeffs[0]) == 1 else None
