"""Floor divisions whose terms all count down, rewritten before TVM lowers a kernel.

TVM 0.27's IterMapSimplify (FlattenBuffer runs it on every buffer index) gets
floordiv(c - a*v, s) and floormod(c - a*v, s) wrong when every iterator's coefficient is
negative and c is no multiple of s: (7 - v) // 2 becomes v // -2 + 3, which is 2 at v = 1
(not 3). A user op reading x[(7 - i) // 2] read the wrong elements in its eager kernel, and
the derived gradient of a max over windows read in reverse (x[4 - 2i + k]) sent dy to the
wrong element. Negated, every coefficient is positive, a form it gets right:

    floordiv(n, s) = -floordiv(s - 1 - n, s)        floormod(n, s) = s - 1 - floormod(s - 1 - n, s)

(for any integer n and s > 0). Of 1500 random floordivs/floormods of two iterators
(coefficients -3..3, constants -6..12, divisors 2..5), IterMapSimplify got 37 of the 453 with
every coefficient <= 0 wrong and none of the others; negated, none. Numerators with both
signs or none are left alone (negating those made some wrong). End to end (a kernel reading
src at such an index of two loops, built by tvm.compile), 18 of 400 read wrong elements, none
once rewritten. No kernel of the LeNet, ResNet and char Transformer train steps has such an
index (the pass changes none of them); it costs them ~1-2 ms a kernel.

`module_pass` is the first stage of every kernel build's TIR pipeline (build.py's
kernel_tir_pipeline); op.eager's kernels go through `rewrite_func`.
"""

from ._tvm import s_tir, tirx, tvm
from .tir_walk import rebuild


def module_pass():
    """PositiveDivisions: every PrimFunc of a module through rewrite_func."""
    def run(mod, _ctx):
        funcs = {gv: f for gv, f in mod.functions.items()}
        changed = {gv: rewrite_func(f) for gv, f in funcs.items() if isinstance(f, tirx.PrimFunc)}
        changed = {gv: f for gv, f in changed.items() if f is not funcs[gv]}
        if not changed:
            return mod
        return tvm.IRModule({**funcs, **changed}, attrs=mod.attrs, global_infos=mod.global_infos)
    return tvm.transform.module_pass(run, opt_level=0, name="PositiveDivisions")


def rewrite_func(func):
    """`func` with every index division of negative terms negated (the same func if none)."""
    body = rebuild(func.body, _rewrite_stmt)
    return func if body is None else func.with_body(body)


def _rewrite_stmt(node):
    """The statement rewritten, or None where its own expressions are unchanged (rebuild then
    enters it)."""
    kind = type(node).__name__
    if kind == "BufferStore":
        value, indices = _rewrite(node.value), _rewrite_all(node.indices)
        if value is None and indices is None:
            return None
        return tirx.BufferStore(node.buffer, _or(value, node.value), _or(indices, node.indices))
    if kind == "SBlockRealize":
        values, predicate = _rewrite_all(node.iter_values), _rewrite(node.predicate)
        if values is None and predicate is None:
            return None
        block = rebuild(node.block, _rewrite_stmt) or node.block
        return s_tir.SBlockRealize(_or(values, node.iter_values), _or(predicate, node.predicate),
                                   block)
    if kind == "IfThenElse":
        condition = _rewrite(node.condition)
        if condition is None:
            return None
        then = rebuild(node.then_case, _rewrite_stmt) or node.then_case
        other = node.else_case
        if other is not None:
            other = rebuild(other, _rewrite_stmt) or other
        return tirx.IfThenElse(condition, then, other)
    return None


def rewrite(expr):
    """`expr` with each floordiv/floormod by a positive constant whose numerator's terms all
    have coefficients <= 0 negated."""
    return _or(_rewrite(expr), expr)


def _or(new, old):
    return old if new is None else new


_KINDS = {}  # expression class -> how _rewrite takes it apart (filled on first sight)


def _kind(e):
    cls = type(e)
    kind = _KINDS.get(cls)
    if kind is None:
        prim = tvm.ir.prim.expr
        kind = ("division" if isinstance(e, (prim.FloorDiv, prim.FloorMod)) else
                "load" if isinstance(e, tvm.ir.TensorLoad) else
                "call" if isinstance(e, tvm.ir.expr.Call) else
                "not" if isinstance(e, prim.Not) else
                "binary" if isinstance(e, (prim.BinaryOpExpr, prim.CmpExpr, prim.LogicalExpr))
                else "select" if isinstance(e, prim.Select) else
                "cast" if isinstance(e, prim.Cast) else
                "let" if isinstance(e, prim.Let) else
                "leaf")  # and kinds no kernel holds before lowering (Ramp, Broadcast, Shuffle)
        _KINDS[cls] = kind
    return kind


def _rewrite_all(exprs):
    """The rewritten list, or None where none changed."""
    new = [_rewrite(e) for e in exprs]
    if all(n is None for n in new):
        return None
    return [_or(n, e) for n, e in zip(new, exprs)]


def _rewrite(e):
    """The rewritten `e`, or None where nothing in it changed."""
    kind = _kind(e)
    if kind in ("division", "binary"):
        a, b = e.a, e.b
        new_a, new_b = _rewrite(a), _rewrite(b)
        a, b = _or(new_a, a), _or(new_b, b)
        negated = _negated(a, b, isinstance(e, tirx.FloorDiv)) if kind == "division" else None
        if negated is not None:
            return negated
        return None if new_a is None and new_b is None else type(e)(a, b)
    if kind == "load":
        indices = _rewrite_all(e.indices)
        return None if indices is None else tirx.BufferLoad(e.source, indices)
    if kind == "call":
        args = _rewrite_all(e.args)
        return None if args is None else tvm.ir.expr.Call(e.op, args, ret_ty=e.ty)
    if kind == "not":
        a = _rewrite(e.a)
        return None if a is None else tirx.Not(a)
    if kind == "select":
        parts = [e.condition, e.true_value, e.false_value]
        new = _rewrite_all(parts)
        return None if new is None else tirx.Select(*new)
    if kind == "cast":
        value = _rewrite(e.value)
        return None if value is None else tirx.Cast(str(e.ty), value)
    if kind == "let":
        value, body = _rewrite(e.value), _rewrite(e.body)
        if value is None and body is None:
            return None
        return tirx.Let(e.var, _or(value, e.value), _or(body, e.body))
    return None


def _negated(n, s, is_div):
    """The negated form of floordiv(n, s) (is_div) or floormod(n, s), or None where s is no
    positive constant or n has a term of positive coefficient (or none)."""
    if not isinstance(s, tirx.IntImm) or s.value <= 0:
        return None
    terms, const = [], [0]
    if not _linear(n, 1, terms, const) or not terms or any(c > 0 for c, _ in terms):
        return None
    dtype = str(n.ty)
    flipped = tirx.const(s.value - 1 - const[0], dtype)
    for coeff, term in terms:
        flipped = flipped + (term if coeff == -1 else term * tirx.const(-coeff, dtype))
    if is_div:
        return tirx.const(0, dtype) - tirx.floordiv(flipped, s)
    return tirx.const(s.value - 1, dtype) - tirx.floormod(flipped, s)


def _linear(e, sign, terms, const):
    """Collect e * sign as sum(coeff * term) + const: a term is what is no sum, difference or
    product with a constant. False where a term is no integer (nothing to negate)."""
    if isinstance(e, tirx.IntImm):
        const[0] += sign * int(e.value)
        return True
    if isinstance(e, tirx.Add):
        return _linear(e.a, sign, terms, const) and _linear(e.b, sign, terms, const)
    if isinstance(e, tirx.Sub):
        return _linear(e.a, sign, terms, const) and _linear(e.b, -sign, terms, const)
    if isinstance(e, tirx.Mul) and isinstance(e.b, tirx.IntImm):
        return _linear(e.a, sign * int(e.b.value), terms, const) if e.b.value else True
    if isinstance(e, tirx.Mul) and isinstance(e.a, tirx.IntImm):
        return _linear(e.b, sign * int(e.a.value), terms, const) if e.a.value else True
    if not isinstance(e.ty, tvm.ir.PrimType) or not str(e.ty).startswith("int"):
        return False
    terms.append((sign, e))
    return True
