"""Reverse-mode differentiation of TE compute graphs, producing TE (so derived gradients are
scheduled, tuned and fused like any kernel).

For every compute tensor `T[s] = f(reads)` (optionally a sum / max / min over reduce axes
`r`) and every read `A[e(s, r)]` in it, the adjoint contribution is

    dA[j] += sum_{free vars} [ e(s, r) == j ] * df/dA[e] * dT[s]

The equality is solved, not masked: each dimension's affine index `e_k` eliminates one
variable (the one with the largest extent, so what is left to sum over is small), with a
divisibility and range guard when its coefficient is not 1. For a strided convolution this
yields the transposed-convolution gather (sum over kernel taps), not an O(out x in) masked
reduction. Reads that take a linear index apart with floordiv/floormod (reshapes, flattens)
are solved on their row-major flat index when that is affine, else inverted with IterMap
when one-to-one; every solved index is guarded to the forward's loop ranges, so elements a
read never touches get zeros and nothing is read outside a buffer. Other indices
(data-dependent gathers) are rejected with an error naming the expression. Max/min
reductions pass the gradient to the first extremal element (first_extremum), PyTorch's rule.
"""

import functools
import itertools
import math

from . import extremum
from ._tvm import lazy, structural_equal, te, tirx, tvm
from .errors import GradientError

# TVM's expression classes, imported on first use (importing tvmfront does not load TVM)
P = lazy("tvm.ir.prim.expr")  # binary and comparison expression classes
Call = lazy("tvm.ir.expr", "Call")
Var = lazy("tvm.ir.expr", "Var")
Reduce = lazy("tvm.tirx", "Reduce")


def _dtype(e):
    return str(e.ty)


def _const(v, dtype):
    return tirx.const(v, dtype)


def _wide_shape(shape):
    """int64 extents: the loops of a derived kernel are int64 like the widened indices they
    feed (int32 loops would reach every index through a cast, which hides its stride from
    the schedules' linear analysis and leaves the kernel scalar)."""
    return [_const(int(d), "int64") for d in shape]


def _range(start, extent):
    return tvm.ir.Range.from_min_extent(_const(int(start), "int64"), _const(int(extent), "int64"))


def _is_load(e):
    return isinstance(e, Call) and e.op.name == "te.tensor_load"


def _load_parts(e):
    return e.args[0], list(e.args[1:])


@functools.cache
def _symbols():  # a function: the classes are TVM's, loaded on first use
    return {P.Add: "+", P.Sub: "-", P.Mul: "*", P.Div: "/", P.FloorDiv: "//", P.FloorMod: "%",
            P.Mod: "%", P.EQ: "==", P.NE: "!=", P.LT: "<", P.LE: "<=", P.GT: ">", P.GE: ">=",
            P.And: "and", P.Or: "or"}


def show(expr):
    """Readable text of an expression for error messages: loads print as name[i, j]."""
    if _is_load(expr):
        tensor, idx = _load_parts(expr)
        return f"{tensor.op.name}[{', '.join(show(i) for i in idx)}]"
    if type(expr) in _symbols():
        return f"({show(expr.a)} {_symbols()[type(expr)]} {show(expr.b)})"
    if isinstance(expr, (P.Max, P.Min)):
        return f"{type(expr).__name__.lower()}({show(expr.a)}, {show(expr.b)})"
    if isinstance(expr, Call):
        return f"{expr.op.name.split('.')[-1]}({', '.join(show(a) for a in expr.args)})"
    if isinstance(expr, P.Cast):
        return f"{_dtype(expr)}({show(expr.value)})"
    if isinstance(expr, Var):
        return expr.name
    if isinstance(expr, (P.IntImm, P.FloatImm)):
        return str(expr.value)
    return str(expr).split("\n")[0]


def _same_load(a, b):
    ta, ia = _load_parts(a)
    tb, ib = _load_parts(b)
    return ta.same_as(tb) and all(structural_equal(x, y) for x, y in zip(ia, ib))


class _Unsupported(Exception):
    pass


# ---- expression rewriting -------------------------------------------------------------------
@functools.cache
def _binary():
    # the bit operations come from inlined math (ops/fastmath.py builds 2^n from exponent
    # bits): integer-valued, so diff() gives them no derivative, but substitute() rebuilds them
    return (P.Add, P.Sub, P.Mul, P.Div, P.Mod, P.FloorDiv, P.FloorMod, P.Min, P.Max, P.EQ,
            P.NE, P.LT, P.LE, P.GT, P.GE, P.And, P.Or, P.LShift, P.RShift, P.BitwiseAnd,
            P.BitwiseOr, P.BitwiseXor)


def substitute(expr, vmap, loads=None):
    """expr with Vars replaced per vmap {Var: expr} (loads' indices included); `loads` maps a
    tensor to a function (new indices) -> expr that replaces its loads."""
    if loads:
        return _Rewriter(vmap, loads).visit(expr)
    if isinstance(expr, Var):
        for v, e in vmap.items():
            if v.same_as(expr):
                return e
        return expr
    if isinstance(expr, (P.IntImm, P.FloatImm)):
        return expr
    if isinstance(expr, _binary()):
        return type(expr)(*_promote(substitute(expr.a, vmap), substitute(expr.b, vmap)))
    if isinstance(expr, P.Not):
        return P.Not(substitute(expr.a, vmap))
    if isinstance(expr, P.Select):
        return P.Select(substitute(expr.condition, vmap), substitute(expr.true_value, vmap),
                        substitute(expr.false_value, vmap))
    if isinstance(expr, P.Cast):
        return P.Cast(_dtype(expr), substitute(expr.value, vmap))
    if _is_load(expr):
        tensor, idx = _load_parts(expr)
        return tensor(*[substitute(i, vmap) for i in idx])
    if isinstance(expr, Call):
        return tirx.call_intrin(_dtype(expr), expr.op.name, *[substitute(a, vmap) for a in expr.args])
    raise _Unsupported(f"cannot rewrite {type(expr).__name__}: {show(expr)}")


class _Rewriter:
    """substitute() that also replaces loads of given tensors."""

    def __init__(self, vmap, loads):
        self.vmap, self.loads = vmap, loads

    def visit(self, expr):
        if _is_load(expr):
            tensor, idx = _load_parts(expr)
            idx = [self.visit(i) for i in idx]
            for t, fn in self.loads.items():
                if t.same_as(tensor):
                    return fn(idx)
            return tensor(*idx)
        if isinstance(expr, _binary()):
            return type(expr)(*_promote(self.visit(expr.a), self.visit(expr.b)))
        if isinstance(expr, P.Not):
            return P.Not(self.visit(expr.a))
        if isinstance(expr, P.Select):
            return P.Select(self.visit(expr.condition), self.visit(expr.true_value),
                            self.visit(expr.false_value))
        if isinstance(expr, P.Cast):
            return P.Cast(_dtype(expr), self.visit(expr.value))
        if isinstance(expr, Call):
            return tirx.call_intrin(_dtype(expr), expr.op.name, *[self.visit(a) for a in expr.args])
        return substitute(expr, self.vmap)


def _promote(a, b):
    """Widen mixed int32/int64 index operands (Relax emits int64 shapes, TE int32 loops)."""
    da, db = _dtype(a), _dtype(b)
    if da != db and da.startswith("int") and db.startswith("int"):
        wide = max(da, db, key=lambda d: int(d[3:]))
        a, b = (a if da == wide else P.Cast(wide, a)), (b if db == wide else P.Cast(wide, b))
    return a, b


def _loads(expr, out):
    """All tensor loads in expr (post-order), including those inside indices."""
    if _is_load(expr):
        for i in expr.args[1:]:
            _loads(i, out)
        out.append(expr)
    elif isinstance(expr, _binary()) or isinstance(expr, P.Not):
        _loads(expr.a, out)
        if hasattr(expr, "b"):
            _loads(expr.b, out)
    elif isinstance(expr, P.Select):
        for e in (expr.condition, expr.true_value, expr.false_value):
            _loads(e, out)
    elif isinstance(expr, P.Cast):
        _loads(expr.value, out)
    elif isinstance(expr, Call):
        for a in expr.args:
            _loads(a, out)
    elif isinstance(expr, Reduce):
        raise _Unsupported(f"nested reduction {show(expr)}")
    return out


def _nodes(expr):
    """expr and every expression inside it that _loads walks (pre-order, a reduction's
    sources too): for checks of a forward's expressions (op._check_stage)."""
    stack = [expr]
    while stack:
        e = stack.pop()
        yield e
        if isinstance(e, Reduce):
            stack.extend(e.source)
        elif _is_load(e) or isinstance(e, Call):
            stack.extend(e.args[1:] if _is_load(e) else e.args)
        elif isinstance(e, _binary()) or isinstance(e, P.Not):
            stack.extend([e.a, e.b] if hasattr(e, "b") else [e.a])
        elif isinstance(e, P.Select):
            stack.extend([e.condition, e.true_value, e.false_value])
        elif isinstance(e, P.Cast):
            stack.append(e.value)


# ---- symbolic derivative of a scalar expression ---------------------------------------------
def _add(a, b):
    return b if a is None else a if b is None else a + b


def _mul(d, factor):
    return _chain(d, lambda v: v * factor)


def _is_zero(e):
    return isinstance(e, P.FloatImm) and e.value == 0


def _chain(d, apply):
    """apply(d) (the chain rule's product with an outer factor), taken inside each branch of a
    selected derivative that has a zero branch: where the select picks 0 the result is 0
    whatever the factor, as PyTorch's where(mask, grad, 0). Outside, sqrt(max(x, 0))'s
    gradient was 0 * (0.5 / 0) = NaN at every x < 0 (PyTorch: 0)."""
    if d is None:
        return None
    if isinstance(d, Call) and d.op.name == "prim.if_then_else":
        cond, t, f = d.args
    elif isinstance(d, P.Select):
        cond, t, f = d.condition, d.true_value, d.false_value
    else:
        return apply(d)
    if not (_is_zero(t) or _is_zero(f)):
        return apply(d)  # both branches live: one product, not one in each
    t, f = (t if _is_zero(t) else _chain(t, apply)), (f if _is_zero(f) else _chain(f, apply))
    return type(d)(cond, t, f) if isinstance(d, P.Select) else tvm.tirx.if_then_else(cond, t, f)


def _if(cond, t, f, dtype):
    if t is None and f is None:
        return None
    zero = _const(0, dtype)
    t, f = (zero if t is None else t), (zero if f is None else f)
    if not _loads(t, []) and not _loads(f, []):
        # Nothing read in either branch (relu's x <= 0 ? 0 : 1): a select, which vectorizes;
        # TVM runs a vector loop holding an if_then_else as scalars (autodiff's relu gradient
        # over b32 64@28: 869 us against the explicit one's 308)
        return P.Select(cond, t, f)
    return tvm.tirx.if_then_else(cond, t, f)


def if_else_zero(condition, value, dtype):
    """condition ? value : 0 with `value` computed whatever the condition: its bits (an
    integer's own) and-ed with a mask of all ones or zeros (a select for other dtypes).
    A select whose operand is a load compiles to a masked load or a branch per element:
    branches that random data mispredicts wherever LLVM does not vectorize the loop (in a
    parallel loop's closure it does not: LeNet's 6@16 k2 max-pool gradient took 295 us
    against a 7 us forward). (A Let-bound load would do too, but TVM's common-subexpression
    pass breaks such Lets under some schedules: "cse_v used before definition".)"""
    return _bits_and(value, dtype, lambda bits: _const(0, bits) - P.Cast(bits, condition),
                     lambda: P.Select(condition, value, _const(0, str(dtype))))


def zero_where(condition, value, dtype):
    """condition ? 0 : value, branch-free as if_else_zero, with no negation of `condition`
    (TVM's simplifier turns not(a <= b) into b < a, false for a NaN a): PyTorch's
    where(out <= 0, 0, dy), which passes dy where out is NaN."""
    return _bits_and(value, dtype, lambda bits: P.Cast(bits, condition) - _const(1, bits),
                     lambda: P.Select(condition, _const(0, str(dtype)), value))


def _bits_and(value, dtype, mask, otherwise):
    """`value`'s bits and-ed with mask(bits), an integer of its width that is all ones or
    all zeros: for 8-64-bit integers and 16-64-bit floats; otherwise() for other dtypes."""
    dtype = str(dtype)
    width = "".join(ch for ch in dtype if ch.isdigit())
    is_int = dtype.startswith("int") and width in ("8", "16", "32", "64")
    if not is_int and not (dtype.startswith("float") and width in ("16", "32", "64")):
        return otherwise()
    bits = "int" + width
    if is_int:
        return value & mask(bits)
    return tirx.reinterpret(dtype, tirx.reinterpret(bits, value) & mask(bits))


def diff(expr, target):
    """d expr / d target, where target is one tensor load; None stands for zero."""
    if _is_load(expr):
        return _const(1, _dtype(expr)) if _same_load(expr, target) else None
    dtype = _dtype(expr) if hasattr(expr, "ty") else None
    if isinstance(expr, (P.IntImm, P.FloatImm, Var)) or (dtype and "float" not in dtype):
        return None
    if isinstance(expr, P.Add):
        return _add(diff(expr.a, target), diff(expr.b, target))
    if isinstance(expr, P.Sub):
        db = diff(expr.b, target)
        return _add(diff(expr.a, target), None if db is None else -db)
    if isinstance(expr, P.Mul):
        return _add(_mul(diff(expr.a, target), expr.b), _mul(diff(expr.b, target), expr.a))
    if isinstance(expr, P.Div):
        da, db = diff(expr.a, target), diff(expr.b, target)
        # d/db = -(a / b) / b, as PyTorch's DivBackward: -a / (b * b) loses a representable
        # gradient wherever b * b leaves float32 (a = 1e30, b = 1e20: -1e-10 came out -0)
        return _add(_chain(da, lambda v: v / expr.b),
                    _chain(db, lambda v: -(expr.a / expr.b) / expr.b * v))
    if isinstance(expr, (P.Max, P.Min)):
        pick_a = expr.a >= expr.b if isinstance(expr, P.Max) else expr.a <= expr.b
        return _if(pick_a, diff(expr.a, target), diff(expr.b, target), dtype)
    if isinstance(expr, P.Select):
        return _if(expr.condition, diff(expr.true_value, target), diff(expr.false_value, target),
                   dtype)
    if isinstance(expr, P.Cast):
        d = diff(expr.value, target)
        return None if d is None else P.Cast(dtype, d)
    if isinstance(expr, Call):
        return _diff_call(expr, target, dtype)
    raise _Unsupported(f"no derivative rule for {type(expr).__name__}: {show(expr)}")


def _children(expr):
    kids = [getattr(expr, k, None) for k in ("a", "b", "value", "condition", "true_value",
                                             "false_value")]
    kids += [] if _is_load(expr) else list(getattr(expr, "args", []) or [])
    return [k for k in kids if k is not None and hasattr(k, "ty")]


def _reads(expr, target):
    """Whether `expr` reads the load `target` anywhere (through integer parts too)."""
    return any(_same_load(load, target) for load in _loads(expr, []))


def _reads_bits(expr, target):
    """Whether `expr` reinterprets a float that reads `target` as another type."""
    if isinstance(expr, Call) and expr.op.name == "tirx.reinterpret":
        arg = expr.args[0]
        if "float" in _dtype(arg) and _reads(arg, target):
            return True
    if _is_load(expr):
        return False
    return any(_reads_bits(c, target) for c in _children(expr))


def _diff_call(expr, target, dtype):
    name = expr.op.name
    if name == "prim.if_then_else":
        cond, t, f = expr.args
        return _if(cond, diff(t, target), diff(f, target), dtype)
    if name in ("tirx.floor", "tirx.ceil", "tirx.round", "tirx.trunc", "tirx.nearbyint"):
        return None  # piecewise constant: zero almost everywhere
    if name == "tirx.reinterpret":
        # a float's own bits read as an integer (an abs by clearing the sign bit): integer
        # arithmetic on them is not piecewise constant, and its "no derivative" read as zero.
        # Bits made from an integer (fastmath's 2^n from floor(x / ln 2)) are constant
        # between steps: zero almost everywhere, as floor's.
        if _reads_bits(expr.args[0], target):
            raise _Unsupported(f"no derivative through the bits of a float (reinterpret) in "
                               f"{show(expr)}")
        return None
    a = expr.args[0]
    da = diff(a, target)
    if name == "tirx.pow":
        b = expr.args[1]
        db = diff(b, target)
        return _add(_mul(da, b * te.power(a, b - _const(1, dtype))),
                    _mul(db, expr * te.log(a)))
    if name in ("tirx.hypot", "tirx.atan2"):  # (as PyTorch's: NaN where both are 0)
        b = expr.args[1]
        db = diff(b, target)
        if name == "tirx.hypot":
            return _add(_mul(da, a / expr), _mul(db, b / expr))
        norm = a * a + b * b  # atan2(a, b): d/da = b / norm, d/db = -a / norm
        return _add(_mul(da, b / norm), _mul(db, -a / norm))
    if name == "tirx.fmod":  # as PyTorch's: d/da = 1, d/db = -trunc(a / b)
        b = expr.args[1]
        return _add(da, _mul(diff(b, target), -te.trunc(a / b)))
    if any(diff(other, target) is not None for other in expr.args[1:]):
        # only the first argument was differentiated: atan2(c, x)'s gradient came out 0
        raise _Unsupported(f"no derivative rule for intrinsic {name} in {show(expr)} "
                           f"through its argument(s) after the first")
    if da is None:
        return None
    one = _const(1, dtype)
    rules = {
        "tirx.exp": lambda: expr,
        "tirx.log": lambda: one / a,
        "tirx.log1p": lambda: one / (one + a),
        "tirx.sqrt": lambda: _const(0.5, dtype) / expr,
        "tirx.rsqrt": lambda: _const(-0.5, dtype) * expr / a,
        "tirx.tanh": lambda: one - expr * expr,
        "tirx.sigmoid": lambda: expr * (one - expr),
        "tirx.erf": lambda: _const(2 / math.sqrt(math.pi), dtype) * te.exp(-(a * a)),
        "tirx.fabs": lambda: tvm.tirx.if_then_else(a >= _const(0, dtype), one, -one),
        "tirx.sin": lambda: te.cos(a),
        "tirx.cos": lambda: -te.sin(a),
    }
    if name not in rules:
        raise _Unsupported(f"no derivative rule for intrinsic {name} in {show(expr)}")
    return _chain(da, lambda v: v * rules[name]())


# ---- adjoint of one read: solve the index equation -------------------------------------------
class _Loop:
    def __init__(self, var, extent, start=0):
        self.var, self.extent, self.start = var, int(extent), int(start)


def _strip_index_casts(expr):
    """Drop casts to the type a value already has (left by widening loops to int64), so that
    index arithmetic is visible to the linear analysis."""
    if isinstance(expr, P.Cast) and _dtype(expr) == _dtype(expr.value):
        return _strip_index_casts(expr.value)
    if isinstance(expr, P.Cast) and isinstance(expr.value, P.IntImm) and \
            _dtype(expr).startswith("int"):
        return _const(int(expr.value.value), _dtype(expr))
    if isinstance(expr, (P.Add, P.Sub, P.Mul, P.FloorDiv, P.FloorMod)):
        return type(expr)(*_promote(_strip_index_casts(expr.a), _strip_index_casts(expr.b)))
    return expr


def _affine(expr, loops):
    """(coefficients per loop, base) of an affine index, or None."""
    expr = _strip_index_casts(expr)
    vars_ = [lp.var for lp in loops]
    coeffs = tvm.sym.detect_linear_equation(expr, vars_) if vars_ else [expr]
    if len(coeffs) != len(vars_) + 1:
        return None
    if any(not isinstance(c, P.IntImm) for c in coeffs[:-1]):
        return None
    base = coeffs[-1]
    if _loads(base, []) or _uses_any(base, vars_):
        return None
    return [int(c.value) for c in coeffs[:-1]], base


def _uses_any(expr, vars_):
    found = []

    def visit(e):
        if isinstance(e, Var):
            found.extend(v for v in vars_ if v.same_as(e))
        elif isinstance(e, _binary()):
            visit(e.a)
            visit(e.b)
        elif isinstance(e, P.Cast):
            visit(e.value)
        elif isinstance(e, Call):
            for a in e.args:
                visit(a)
        elif isinstance(e, P.Select):  # a max's NaN test (extremum.ordering_key) is one
            for part in (e.condition, e.true_value, e.false_value):
                visit(part)
        elif isinstance(e, P.Not):
            visit(e.a)
    visit(expr)
    return bool(found)


def _solve(indices, loops, j, shape=None):
    """Eliminate loop variables so that indices(loops) == j (j within `shape`).

    Returns (substitution {var: expr in j and free vars}, guards, free loops, solved), where
    solved maps each eliminated var to (numerator, coefficient, loop, its guards):
    coefficient * var == numerator.
    """
    sub, guards, remaining, solved = {}, [], list(loops), {}
    # Dimensions with fewer candidate variables first, so each finds one to eliminate.
    order = []
    for k, e in enumerate(indices):
        lin = _affine(e, loops)
        if lin is None:
            flat = _flat_index(indices, shape, loops)
            if flat is not None:
                return _solve([flat], loops, [_row_major(j, shape)])
            return _solve_bijective(indices, loops, j)
        order.append((sum(1 for c in lin[0] if c), k))
    for _, k in sorted(order):
        e = substitute(indices[k], sub) if sub else indices[k]
        lin = _affine(e, remaining)
        if lin is None:
            raise _Unsupported(f"index {show(indices[k])} is not affine in the loop variables")
        coeffs, base = lin
        candidates = [(lp.extent, abs(c) == 1, i) for i, (lp, c) in enumerate(zip(remaining, coeffs))
                      if c]
        if not candidates:
            guards.append(P.EQ(*_promote(j[k], e)))
            continue
        pair = _strided_pair(remaining, coeffs)
        if pair is not None:
            sub, solved, remaining = _solve_strided(pair, remaining, j[k] - base, sub, guards,
                                                    solved)
            continue
        _, _, pick = max(candidates)
        lp, c = remaining[pick], coeffs[pick]
        rest = base
        for i, (other, co) in enumerate(zip(remaining, coeffs)):
            if co and i != pick:
                rest = rest + other.var * co
        num = j[k] - rest  # c * v == num
        if c < 0:
            num, c = -num, -c
        own = []
        phase = None
        if c != 1:
            known = tvm.sym.Analyzer()  # the loops' ranges: a 1x1 kernel's taps are all 0
            for other in remaining:
                known.bind(other.var, _range(other.start, other.extent))
            phase = known.simplify(tvm.tirx.floormod(num, c))
        if isinstance(phase, P.IntImm):  # a part of _polyphase_adjoint: j's phase is known
            if phase.value:  # no element of the read lands on this phase
                guards.append(tvm.tirx.const(False, "bool"))
            num = known.simplify(tvm.tirx.floordiv(num, c))
            value, c = num, 1
        elif c != 1:
            own.append(P.EQ(tvm.tirx.floormod(num, c), _const(0, _dtype(num))))
            value = tvm.tirx.floordiv(num, c)
        else:
            value = num
        own += [value >= lp.start, value < lp.start + lp.extent]
        guards += own
        solved[lp.var] = (num, c, lp, own)
        sub, solved = _eliminate(sub, solved, lp.var, value)
        remaining.pop(pick)
    return sub, guards, remaining, solved


def _eliminate(sub, solved, var, value):
    """(sub, solved) with loop variable `var` replaced by `value` in every substitution and
    numerator, and var -> value added to the substitution."""
    sub = {v: substitute(x, {var: value}) for v, x in sub.items()}
    sub[var] = value
    solved = {v: (substitute(n, {var: value}), co, l, g) for v, (n, co, l, g) in solved.items()}
    return sub, solved


def _strided_pair(loops, coeffs):
    """(a, b, s) when the index is s * a + b (+ base) with s > 1 and b in [0, K): a strided
    window (conv or pooling with stride s and kernel K), else None."""
    used = [i for i, c in enumerate(coeffs) if c]
    if len(used) != 2:
        return None
    for a, b in (used, used[::-1]):
        step = coeffs[a]
        if step > 1 and coeffs[b] == 1 and loops[b].start == 0 and loops[b].extent > 1:
            return a, b, step
    return None


def _solve_strided(pair, remaining, num, sub, guards, solved):
    """Solve s * a + b == num for a strided window, polyphase: b keeps only the taps of num's
    phase, b = s * q + num % s with q in [0, ceil(K / s)), and a = num // s - q. The sum runs
    over q alone: K / s taps per element instead of K taps of which all but K / s read zeros
    (the dilated form). When K == s (pooling whose windows tile the axis) nothing is left to
    sum: a = num // s, b = num % s. Returns (sub, solved, remaining); appends to guards."""
    a, b, step = pair
    la, lb = remaining[a], remaining[b]
    phase = tvm.sym.Analyzer().simplify(tvm.tirx.floormod(num, step))
    known = isinstance(phase, P.IntImm)  # a part of _polyphase_adjoint: its own taps only
    taps = len(range(phase.value, lb.extent, step)) if known else -(-lb.extent // step)
    rest = [lp for i, lp in enumerate(remaining) if i not in (a, b)]
    if taps == 0:  # no tap of this phase reaches num: nothing to sum
        guards.append(tvm.tirx.const(False, "bool"))
        taps = 1
    if taps == 1:
        q_value, a_num = _const(0, _dtype(num)), tvm.tirx.floordiv(num, step)
    else:
        q = _Loop(Var(f"{lb.var.name}_q", tvm.ir.PrimType(_dtype(num))), taps)
        rest.append(q)
        q_value, a_num = q.var, tvm.tirx.floordiv(num, step) - q.var
    b_value = step * q_value + phase if taps > 1 else phase
    own = [a_num >= la.start, a_num < la.start + la.extent]
    guards += own
    if lb.extent % step and not known:
        guards.append(b_value < lb.extent)
    for var, value in ((la.var, a_num), (lb.var, b_value)):
        sub, solved = _eliminate(sub, solved, var, value)
    # a is read at a_num: recorded as solved (coefficient 1), so that a read of the output
    # adjoint there can move its range guards into a zero-extended copy (_extend_adjoint).
    solved[la.var] = (a_num, 1, la, own)
    return sub, solved, rest


def _row_major(idx, shape):
    flat = idx[0]
    for i, d in zip(idx[1:], shape[1:]):
        flat = flat * int(d) + i
    return flat


def _flat_index(indices, shape, loops):
    """The row-major flat index of a read whose indices take a linear index apart with // and %
    (reshapes, flattens, partial or overlapping): e.g. x[g // 4, g % 4] of x [3, 4] reads the
    flat element g. When that flat index is affine in the loops, solving it == flat(j) is
    the whole adjoint: in-bounds indices and flat indices correspond one to one."""
    if shape is None or len(indices) < 2:
        return None
    analyzer = tvm.sym.Analyzer()
    for lp in loops:
        analyzer.bind(lp.var, _range(lp.start, lp.extent))
    wide = [_strip_index_casts(e) for e in indices]
    wide = [e if _dtype(e) == "int64" else P.Cast("int64", e) for e in wide]
    flat = _try_simplify(analyzer, _row_major(wide, [int(d) for d in shape]))
    return flat if _affine(flat, loops) is not None else None


def _solve_bijective(indices, loops, j):
    """Indices with floordiv/floormod (reshapes): invert them when they map the loops they use
    one-to-one onto the read tensor's elements."""
    used = [lp for lp in loops if any(_uses_any(e, [lp.var]) for e in indices)]
    domain = {lp.var: tvm.ir.Range(lp.start, lp.start + lp.extent) for lp in used}
    found = tvm.sym.detect_iter_map(indices, domain, check_level="bijective")
    if not found.indices:
        # A read of a prefix (f // 3, f % 3 for f < 5): the map is one-to-one on loops
        # extended to a multiple of the divisors; the guards below restore the real extents.
        step = math.lcm(*(_divisors(indices) or [1]))
        domain = {lp.var: tvm.ir.Range(lp.start, lp.start + -(-lp.extent // step) * step)
                  for lp in used}
        found = tvm.sym.detect_iter_map(indices, domain, check_level="bijective")
    if not found.indices:
        raise _Unsupported(f"index [{', '.join(show(e) for e in indices)}] is neither affine in "
                           "the loop variables nor a one-to-one index map")
    inverse = tvm.sym.inverse_affine_iter_map(found.indices, j)
    sub, guards = {}, []
    for lp in used:
        try:
            sub[lp.var] = inverse[lp.var]
        except KeyError:  # an extent-1 loop, folded to a constant by detect_iter_map
            sub[lp.var] = _const(lp.start, _dtype(lp.var))
        guards += [sub[lp.var] >= lp.start, sub[lp.var] < lp.start + lp.extent]
    _check_round_trip(indices, used, domain, sub, j)
    # The inverse formula is only right on the read's image: an element j the forward never
    # reads (a read covering part of its input) gets loop values outside their ranges, or
    # inside them but mapping back to another element. Both contribute zero.
    for k, e in enumerate(indices):
        guards.append(P.EQ(*_promote(substitute(e, sub), j[k])))
    return sub, guards, [lp for lp in loops if lp not in used], {}


def _check_round_trip(indices, used, domain, sub, j):
    """Refuse an inverse that does not take every loop point back to itself. detect_iter_map
    takes (i + 1) % 4 for the map i (the offset dropped), and the guards below then turned
    every element's gradient into 0, silently."""
    analyzer = tvm.sym.Analyzer()
    for var, rng in domain.items():
        analyzer.bind(var, rng)
    back = {jk: e for jk, e in zip(j, indices)}
    for lp in used:
        if not analyzer.can_prove(P.EQ(*_promote(substitute(sub[lp.var], back), lp.var))):
            raise _Unsupported(f"index [{', '.join(show(e) for e in indices)}]: its inverse "
                               f"could not be verified (a wrap-around such as (i + 1) % n is "
                               f"not supported)")


def _divisors(indices):
    """Constant divisors of the floordiv/floormod in index expressions."""
    found = []

    def visit(e):
        if isinstance(e, (P.FloorDiv, P.FloorMod)) and isinstance(e.b, P.IntImm):
            found.append(int(e.b.value))
        for child in ("a", "b", "value"):
            if hasattr(e, child):
                visit(getattr(e, child))

    for e in indices:
        visit(_strip_index_casts(e))
    return [d for d in found if d > 0]


def _try_simplify(analyzer, expr):
    # Folds guards the index solution made redundant (e.g. padding bounds). The simplifier
    # cannot hash some tensor loads (e.g. comparisons between loads); leave those as they are.
    try:
        return analyzer.simplify(expr)
    except TypeError:
        return expr


def _split_div_loops(indices, loops, value):
    """Loops read as v // c or v % c (grouped channels, pixel shuffles) become two loops
    v = c * outer + inner, which turns those indices affine."""
    indices = [_strip_index_casts(e) for e in indices]
    found = {}

    def visit(e):
        if isinstance(e, (P.FloorDiv, P.FloorMod)) and isinstance(e.a, Var) and \
                isinstance(e.b, P.IntImm):
            for lp in loops:
                if lp.var.same_as(e.a) and lp.start == 0 and lp.extent % int(e.b.value) == 0:
                    found.setdefault(lp.var, (lp, int(e.b.value)))
        for child in ("a", "b", "value", "condition", "true_value", "false_value"):
            if hasattr(e, child):
                visit(getattr(e, child))
        if isinstance(e, Call):
            for arg in e.args:
                visit(arg)

    for e in indices:
        visit(e)
    if not found:
        return indices, loops, value
    sub, new_loops = {}, []
    for lp in loops:
        if lp.var not in found:
            new_loops.append(lp)
            continue
        _, c = found[lp.var]
        outer = Var(f"{lp.var.name}_o", lp.var.ty)
        inner = Var(f"{lp.var.name}_i", lp.var.ty)
        sub[lp.var] = outer * c + inner
        new_loops += [_Loop(outer, lp.extent // c), _Loop(inner, c)]
    analyzer = tvm.sym.Analyzer()
    for lp in new_loops:
        analyzer.bind(lp.var, tvm.ir.Range(lp.start, lp.start + lp.extent))
    indices = [analyzer.simplify(substitute(e, sub)) for e in indices]
    return indices, new_loops, substitute(value, sub)


def _extend_adjoint(adjoint, value, solved, guards, analyzer, name, shared=None):
    """Move range and stride guards off the inner loop: the output adjoint dT is read at
    var = num / c for eliminated spatial vars; when dT is the only thing reading such a var,
    read instead a zero-extended (and, for strides, dilated) copy of dT at num - lo. For a
    convolution this is the classic transposed convolution over a padded, dilated dy.
    adjoint = (dT, spatial vars, *companions): companions are tensors of dT's shape read
    with it at the same point (a max's first positions), extended alike (their zeros are
    read where dT's are: the term is zero there whatever they hold).
    `shared` (see _shared_extension): one copy of dT for the parts of a polyphase adjoint.
    Returns the new value and the guards still needed."""
    if adjoint is None:
        return value, guards
    dT, spatial, *companions = adjoint
    read_with = (dT, *companions)
    probe = substitute(value, {}, loads={t: functools.partial(_zero_of, t) for t in read_with})
    plan = {}  # dim -> (num, c, loop, lo, size)
    for d, var in enumerate(spatial):
        entry = next(((n, c, lp, g) for v, (n, c, lp, g) in solved.items() if v.same_as(var)),
                     None)
        if entry is None or _uses_any(probe, [var]):
            continue
        num, c, lp, own = entry
        bound = analyzer.const_int_bound(num)
        lo, hi = int(bound.min_value), int(bound.max_value)
        if hi - lo > 1 << 20 or (c == 1 and lo >= lp.start and hi < lp.start + lp.extent):
            continue  # huge, or every read is in range already: nothing to move
        plan[d] = (num, c, lp, lo, hi - lo + 1)
        guards = [g for g in guards if not any(g.same_as(o) for o in own)]
    if not plan:
        return value, guards
    extent = {d: entry[1:] for d, entry in plan.items()}  # dim -> (c, loop, lo, size)
    ext = None
    if shared is not None:
        extent, ext = _shared_extension(shared, extent)
    if ext is None:
        ext = _zero_extended(dT, extent, shared.get("name", name) if shared else name)
        if shared is not None and shared.get("use"):
            shared["tensor"] = ext

    def read(copy, idx):
        # dims this read keeps in range but the shared copy extends: c * index - lo there
        return copy(*[plan[d][0] - extent[d][2] if d in plan else
                      extent[d][0] * idx[d] - extent[d][2] if d in extent else idx[d]
                      for d in range(len(idx))])

    loads = {dT: functools.partial(read, ext)}
    for k, tensor in enumerate(companions, 1):  # over the same extents: read at dT's points
        loads[tensor] = functools.partial(read, _zero_extended(tensor, extent, name, f"ext{k}"))
    return substitute(value, {}, loads=loads), guards


def _zero_of(tensor, idx):
    return _const(0, str(tensor.dtype))


def _shared_extension(shared, extent):
    """(extent, copy or None) for a read of dT that the parts of one polyphase adjoint share
    (`shared`, made by its two passes): the first pass ("use" unset) records the union of
    the parts' extents and keeps each its own; the second gives every part that union and
    the one copy made for it. A stride-2 3x3 d/dx otherwise made a zero-extended dy for each
    of three phases (17x17, 17x16, 16x17 per image at 16x16 for ResNet's 16->32 @32), three
    copies where one serves."""
    ranges = shared.setdefault("ranges", {})
    if shared.get("use"):
        return ranges, shared.get("tensor")
    for d, (c, lp, lo, size) in extent.items():
        old = ranges.get(d)
        if old is None:
            ranges[d] = (c, lp, lo, size)
            continue
        if old[0] != c or (old[1].start, old[1].extent) != (lp.start, lp.extent):
            shared["conflict"] = True  # not one copy's dims: each part keeps its own
        first = min(old[2], lo)
        ranges[d] = (c, lp, first, max(old[2] + old[3], lo + size) - first)
    return extent, None


def _zero_extended(tensor, extent, name, suffix="dy_ext", full_name=None):
    """`tensor` (dT, or a companion of its shape) zero-extended (and dilated by c) along the
    dims of `extent` ({dim: (c, loop, lo, size)}): element u is tensor[(u + lo) / c] where
    that is a whole index in the loop's range, else 0. Named `full_name`, else
    name_suffix."""
    shape = [extent[d][3] if d in extent else int(n) for d, n in enumerate(tensor.shape)]
    zero = _const(0, str(tensor.dtype))

    def ext_body(*u):
        src, ok = [], []
        for d, ud in enumerate(u):
            if d not in extent:
                src.append(ud)
                continue
            c, lp, lo, _ = extent[d]
            raw = ud + lo
            q = tvm.tirx.floordiv(raw, c) if c != 1 else raw
            if c != 1:
                ok.append(P.EQ(tvm.tirx.floormod(raw, c), _const(0, _dtype(raw))))
            ok += [q >= lp.start, q < lp.start + lp.extent]
            src.append(q)
        cond = ok[0]
        for extra in ok[1:]:
            cond = P.And(cond, extra)
        return tvm.tirx.if_then_else(cond, tensor(*src), zero)

    return te.compute(_wide_shape(shape), ext_body, name=full_name or f"{name}_{suffix}")


def _trimmed_extensions(expr, analyzer):
    """expr with its reads of a zero-extended dT (_padding_of) taken from a copy extended
    only over the indices read there (the analyzer bounds expr's variables). A padding's
    adjoint inlines a crop of the transposed convolution over the padded input
    (_inlined_reduction), whose dy_ext spans the padded input's taps: 32 columns for a 3x3
    at 28 + 2 x 1, of which the crop reads 30 (b32 32->64 @28's derived d/dx, one AVX-512
    core: 1.04x the explicit one's time, with its copy of dy 32 wide)."""
    reads = {}
    for load in _loads(expr, []):
        tensor, idx = _load_parts(load)
        padded = _padding_of(tensor)
        if padded is None:
            continue
        source, lo = padded  # tensor[u] = source[u - lo]: extended by -lo before it
        extended = {d: -low for d, low in lo.items()
                    if low or int(tensor.shape[d]) != int(source.shape[d])}
        entry = reads.setdefault(_key(tensor), [tensor, (source, extended), {}])
        for d in extended:
            bound = analyzer.const_int_bound(idx[d])
            low, high = entry[2].get(d, (bound.min_value, bound.max_value))
            entry[2][d] = (int(min(low, bound.min_value)), int(max(high, bound.max_value)))
    loads = {}
    for tensor, (source, lo), span in reads.values():
        if all(span[d][0] <= 0 and span[d][1] >= int(tensor.shape[d]) - 1 for d in lo) or \
                any(span[d][0] < 0 or span[d][1] >= int(tensor.shape[d]) for d in lo):
            continue  # read whole (or beyond: leave it be)
        extent = {d: (1, _Loop(None, int(source.shape[d])), lo[d] + span[d][0],
                      span[d][1] - span[d][0] + 1) for d in lo}
        trimmed = _zero_extended(source, extent, None, full_name=tensor.op.name)
        loads[tensor] = functools.partial(
            lambda t, sp, idx: t(*[i - _const(sp[d][0], _dtype(i)) if d in sp and sp[d][0]
                                  else i for d, i in enumerate(idx)]), trimmed, span)
    return substitute(expr, {}, loads=loads) if loads else expr


# ---- a sum over a zero-padded tensor's window: over its interior ----------------------------
# _interior_sum trades the padded copy of X for a zero-extended copy of dT up to this many
# times its size. One AVX-512 core, the derived d/dw: b32 32->64 @28 (dy's copy 2x) 1.06x
# faster than the padded form; with 16 or 6 output channels per input channel (ResNet's stem
# 1->16, LeNet's 1->6 5x5) 2.2x and 2.6x slower (1734 against 806 us, 248 against 96).
INTERIOR_COPY_RATIO = 2


def _padding_of(tensor):
    """(X, {axis: lo}) when `tensor` is X zero-padded: a compute whose element u is
    if_then_else(X's bounds at u - lo, X[u - lo], 0) (ops/conv.py's _padded), else None."""
    op = tensor.op
    if not isinstance(op, te.ComputeOp) or len(op.body) != 1:
        return None
    body = op.body[0]
    if not _is_guarded_read(body) or body.args[2].value:  # a zero fill only
        return None
    cond, then, _ = body.args
    source, idx = _load_parts(then)
    axes = [_Loop(iv.var, iv.dom.extent, iv.dom.min) for iv in op.axis]
    if len(idx) != len(axes):
        return None
    lo = {}
    for k, e in enumerate(idx):
        lin = _affine(e, axes)
        if lin is None or lin[0] != [int(m == k) for m in range(len(axes))] or \
                not isinstance(lin[1], P.IntImm):
            return None
        lo[k] = -int(lin[1].value)
    analyzer = tvm.sym.Analyzer()
    for lp in axes:
        analyzer.bind(lp.var, _range(lp.start, lp.extent))
    if not _guards_its_bounds(cond, then, analyzer):
        return None
    return source, lo


def _interior_sum(indices, loops, value, dT, spatial, name):
    """(loops, value) of the adjoint of a read at `indices` whose value d * dT reads a
    zero-padded P (ops/conv.py's x_pad) at f + e along its padded axes, f a loop of the output
    the adjoint sums over (free: not in `indices`), e fixed by `indices`: the same sum taken
    over the interior u = f + e - lo of P, which reads its source X in place, dT read at
    u + lo - e from a zero-extended copy. A convolution's weight gradient sum_{n, i, j}
    dy[n, o, i, j] * x_pad[n, c, i + p, j + q] becomes sum_{n, u, v} dy_ext[n, o, u + 2 - p,
    v + 2 - q] * x[n, c, u, v] (3x3, padding 1): the explicit gradient's form (ops/conv.py's
    _same_size_product), a copy of dy where x_pad copied x, and x's pixels as the reduction.
    Only where no term is added (X no longer than f along each axis) and f is read nowhere
    else (but by dT, as itself); None otherwise."""
    def is_fixed(lp):
        return any(_uses_any(e, [lp.var]) for e in indices)

    free = [lp for lp in spatial if not is_fixed(lp)]
    reads = [_load_parts(ld) for ld in _loads(value, [])]
    dT_reads = [idx for tensor, idx in reads if tensor.same_as(dT)]
    padded = [(tensor, idx, _padding_of(tensor)) for tensor, idx in reads]
    padded = [read for read in padded if read[2] is not None]
    if len(dT_reads) != 1 or len(padded) != 1:
        return None
    dT_idx = dT_reads[0]
    tensor, idx, (source, lo) = padded[0]
    shift, new_loops, sub, moved = {}, list(loops), {}, []
    for k, e in enumerate(idx):
        if not lo[k] and int(tensor.shape[k]) == int(source.shape[k]):
            continue  # not padded along k
        lin = _affine(e, loops)
        if lin is None:
            return None
        used = [lp for lp, c in zip(loops, lin[0]) if c]
        f = [lp for lp in used if any(lp is g for g in free)]
        if len(f) != 1 or lin[0][loops.index(f[0])] != 1 or f[0].start != 0 or \
                any(lp is not f[0] and not is_fixed(lp) for lp in used) or \
                any(lp is f[0] for lp in moved) or int(source.shape[k]) > f[0].extent or \
                sum(_uses_any(i, [f[0].var]) for i in dT_idx) != 1 or \
                not any(i.same_as(f[0].var) for i in dT_idx) or \
                any(_uses_any(other, [f[0].var]) for m, other in enumerate(idx) if m != k):
            return None
        u = Var(f"{f[0].var.name}_in", f[0].var.ty)
        # f + e == u + lo: f = u + lo - e
        sub[f[0].var] = u + _const(lo[k], _dtype(u)) - (e - f[0].var)
        shift[k] = u
        moved.append(f[0])
        new_loops[loops.index(f[0])] = _Loop(u, int(source.shape[k]))
    if not shift or any(_uses_any(i, [lp.var for lp in moved]) for t, idx_t in reads
                        if not t.same_as(dT) and not t.same_as(tensor) for i in idx_t):
        return None
    analyzer = tvm.sym.Analyzer()
    for lp in new_loops:
        analyzer.bind(lp.var, _range(lp.start, lp.extent))
    extent, at = {}, []
    for d, i in enumerate(dT_idx):
        here = analyzer.simplify(substitute(i, sub))
        at.append(here)
        owner = next((lp for lp in moved if i.same_as(lp.var)), None)
        if owner is None:
            continue
        bound = analyzer.const_int_bound(here)
        low, high = int(bound.min_value), int(bound.max_value)
        if low < 0 or high >= owner.extent:
            extent[d] = (1, owner, low, high - low + 1)
    size = math.prod(extent[d][3] if d in extent else int(n) for d, n in enumerate(dT.shape))
    if size > INTERIOR_COPY_RATIO * math.prod(int(n) for n in tensor.shape):
        return None
    ext = _zero_extended(dT, extent, name) if extent else dT
    read_dT = ext(*[a - _const(extent[d][2], _dtype(a)) if d in extent else a
                    for d, a in enumerate(at)])
    read_x = source(*[shift[k] if k in shift else substitute(e, sub) for k, e in enumerate(idx)])
    loads = {dT: lambda _idx: read_dT, tensor: lambda _idx: read_x}
    return new_loops, substitute(value, sub, loads=loads)


def _adjoint_of_read(shape, dtype, indices, loops, value, name, adjoint=None, inline=False,
                     phased=None):
    """Tensor of `shape`: sum over loops with indices(loops) == j of value(loops).
    `adjoint` = (dT, spatial vars) names the output adjoint read in `value`. `phased`
    ({interleave op: its parts' maker}, one per derive) collects the polyphase adjoints made
    here and serves _cropped_polyphase."""
    # x[idx[()]]: a read through a 0-d index tensor is data-dependent like x[idx[i]] (which
    # the affine solve refuses); refused here, as TVM's simplifier cannot hash a 0-d read.
    if any(_is_load(ld) and len(ld.args) == 1 for e in indices for ld in _loads(e, [])):
        raise _Unsupported(f"index [{', '.join(show(e) for e in indices)}] reads a tensor "
                           f"(a data-dependent gather)")
    indices, loops, value = _split_div_loops(indices, loops, value)
    strides = _polyphase_strides(indices, loops, shape)
    if strides:
        return _polyphase_adjoint(shape, dtype, indices, loops, value, name, adjoint, strides,
                                  {} if phased is None else phased)
    body = _adjoint_body(shape, dtype, indices, loops, value, name, adjoint, inline)
    out = te.compute(_wide_shape(shape), lambda *j: body(list(j), list(j), shape), name=name)
    cropped = _cropped_polyphase(out, adjoint[0], phased) if adjoint and inline and phased \
        else None
    return out if cropped is None else cropped


def _polyphase_strides(indices, loops, shape):
    """{dim: stride} of the dims read as a strided window s * a + b with more taps than the
    stride (K > s: a strided convolution's input, an overlapping pooling's), where s divides
    the dim: their adjoint is computed per phase (_polyphase_adjoint)."""
    strides = {}
    for k, e in enumerate(indices):
        lin = _affine(e, loops)
        if lin is None:
            continue
        pair = _strided_pair(loops, lin[0])
        used = [int(c) for c, lp in zip(lin[0], loops) if c and lp.extent > 1]
        if pair is not None:
            _, b, step = pair
            if loops[b].extent > step and int(shape[k]) % step == 0:
                strides[k] = step
        elif len(used) == 1 and abs(used[0]) > 1 and int(shape[k]) % abs(used[0]) == 0:
            strides[k] = abs(used[0])  # a 1x1 kernel's stride: one phase of s reads
    return strides


def _polyphase_adjoint(shape, dtype, indices, loops, value, name, adjoint, strides, phased):
    """The adjoint of a strided window read as one tensor per input phase (j % s along each
    strided dim), interleaved: each part sums only the taps of its phase, with no guard in
    its loop (stride 2, 3x3: 1 or 2 taps of 3 per dim), and has the shape class of a
    stride-1 convolution, which the schedules tile as such (the explicit conv2d gradient's
    form: ops/conv.py's _grad_x). In one tensor the phase is j % s inside the reduction:
    taps and indices vary from one output element to the next (ResNet's 16->32 @32 stride-2
    d/dx: 11.9 ms against the explicit 2.1 ms on one AVX-512 core). The maker of its parts
    is kept in `phased` under the interleave's op (see _cropped_polyphase)."""
    dims = sorted(strides)

    def parts(region, shifts, prefix):
        """{phase: part} for the elements shifts + j (j < region) of the adjoint, region a
        multiple of the strides: part q holds those at s * i + q + shifts."""
        part_shape = [n // strides[k] if k in strides else n for k, n in enumerate(region)]
        shared = {"name": prefix}  # one zero-extended dT for all parts: a pass to size it,
        # one to use it
        for _ in range(2):
            made = {}
            for phase in itertools.product(*[range(strides[k]) for k in dims]):
                part = f"{prefix}_p{''.join(map(str, phase))}"
                body = _adjoint_body(shape, dtype, indices, loops, value, part, adjoint, False,
                                     shared)
                made[phase] = te.compute(_wide_shape(part_shape),
                                         _phase_body(body, dict(zip(dims, phase)), strides,
                                                     part_shape, shifts), name=part)
            if shared.get("conflict") or not shared.get("ranges"):
                break
            shared["use"] = True
        return made

    result = _interleave(shape, dtype, parts(shape, [0] * len(shape), name), strides, name)
    phased[result.op] = (parts, strides)
    return result


def _interleave(shape, dtype, parts, strides, name):
    """The tensor of `shape` whose element j is parts[j % s][j // s] along the strided dims
    ({dim: s}; parts keyed by the phase tuple over the sorted dims)."""
    dims = sorted(strides)
    zero = _const(0, dtype)

    def interleave(*j):
        result = zero
        for phase, part in parts.items():
            cond = None
            for k, c in zip(dims, phase):
                here = P.EQ(tvm.tirx.floormod(j[k], strides[k]), _const(c, _dtype(j[k])))
                cond = here if cond is None else P.And(cond, here)
            src = [tvm.tirx.floordiv(jk, strides[k]) if k in strides else jk
                   for k, jk in enumerate(j)]
            result = tvm.tirx.if_then_else(cond, part(*src), result)
        return result

    return te.compute(_wide_shape(shape), interleave, name=name)


def _cropped_polyphase(t, dT, phased):
    """t, a read of dT (a polyphase adjoint of `phased`) at constant shifts (the adjoint of
    a zero padding: a crop), as a polyphase adjoint of its own: its parts sum the products
    of t's elements only, and no pass crops them. None where t is no such read or a strided
    dim of t is no multiple of its stride. The parts of dT summed over the padded extent:
    a 3x3 stride-2 conv's d/dx on 14x14 over phases of 8x8 (16x16 padded), 1.31x the
    products, and each part's zero-extended dy was sized for those (64->64 @14 s2, b32, one
    AVX-512 core: 2210 -> 1553 us)."""
    body = t.op.body[0]
    if dT.op not in phased or not _is_load(body) or not _load_parts(body)[0].op.same_as(dT.op):
        return None
    parts, strides = phased[dT.op]
    analyzer = tvm.sym.Analyzer()
    shifts = [analyzer.simplify(index - iv.var)
              for index, iv in zip(_load_parts(body)[1], t.op.axis)]
    region = [int(n) for n in t.shape]
    if any(not isinstance(c, P.IntImm) for c in shifts) or \
            any(region[k] % s for k, s in strides.items()):
        return None
    made = parts(region, [int(c.value) for c in shifts], t.op.name)
    return _interleave(region, str(t.dtype), made, strides, t.op.name)


def _phase_body(body, at, strides, part_shape, shifts):
    """The compute body of the part of phase `at` ({dim: phase}): index j of the part is
    index s * j + phase + shift of the whole along each strided dim, j + shift along the
    others."""
    def part_body(*j):
        full = [strides[k] * jk + at[k] + c if k in at else jk + c
                for k, (jk, c) in enumerate(zip(j, shifts))]
        return body(list(j), full, part_shape)

    return part_body


def _adjoint_body(shape, dtype, indices, loops, value, name, adjoint, inline, shared=None):
    """body(j, full, bounds) of the adjoint of a read at `indices`: its value at the index
    `full` (expressions of the compute's variables j, whose extents are `bounds`). `shared`:
    see _shared_extension."""
    red_axes = {}

    def body(j, full, bounds):
        sub, guards, free, solved = _solve(indices, loops, full, shape)
        for lp in free:
            if lp.var not in red_axes:
                red_axes[lp.var] = te.reduce_axis(_range(lp.start, lp.extent), lp.var.name)
        rename = {lp.var: red_axes[lp.var].var for lp in free}
        sub = {v: substitute(x, rename) for v, x in sub.items()}
        sub.update(rename)
        analyzer = tvm.sym.Analyzer()
        for d, jv in zip(bounds, j):
            analyzer.bind(jv, _range(0, d))
        for lp in free:
            analyzer.bind(rename[lp.var], _range(lp.start, lp.extent))
        ext_analyzer = tvm.sym.Analyzer()
        for d, jv in zip(bounds, j):
            ext_analyzer.bind(jv, _range(0, d))
        for lp in free:
            ext_analyzer.bind(lp.var, _range(lp.start, lp.extent))
        value_here, guards = _extend_adjoint(adjoint, value, solved, guards, ext_analyzer, name,
                                             shared)
        cond = None
        for g in guards:
            # guards made before a later elimination still hold its variable: substitute all
            g = analyzer.simplify(substitute(g, sub))
            if isinstance(g, P.IntImm) and g.value == 1:
                continue
            if isinstance(g, P.IntImm):  # never true (a phase no read lands on): zeros
                return _const(0, dtype)
            cond = g if cond is None else P.And(cond, g)
        term = _try_simplify(analyzer, substitute(value_here, sub))
        if cond is not None:
            term = tvm.tirx.if_then_else(cond, term, _const(0, dtype))
        if free:
            return te.sum(term, axis=[red_axes[lp.var] for lp in free])
        inlined = _inlined_reduction(term, adjoint[0] if adjoint and inline else None,
                                     analyzer)
        return term if inlined is None else inlined

    return body


def _inlined_reduction(term, dT, analyzer):
    """When `term` is just a read of dT and dT is one reduction, that reduction evaluated at
    the read's indices (a Reduce for a compute body), else None. A crop or shift of a
    reduction's result (the adjoint of a padding) then costs no extra pass, and the reduction
    runs over the cropped extent only: no gradient computed for the padding just to be
    dropped."""
    if dT is None or not _is_load(term):
        return None
    tensor, indices = _load_parts(term)
    op = dT.op
    if not tensor.op.same_as(op) or not isinstance(op, te.ComputeOp) or len(op.body) != 1 or \
            not isinstance(op.body[0], Reduce) or len(op.body[0].source) != 1:
        return None
    red = op.body[0]
    vmap = {iv.var: _promote(idx, iv.var)[0] for iv, idx in zip(op.axis, indices)}
    for iv in red.axis:
        analyzer.bind(iv.var, iv.dom)
    source = _trimmed_extensions(substitute(red.source[0], vmap), analyzer)
    return Reduce(red.combiner, [source], red.axis, substitute(red.condition, vmap),
                  red.value_index, red.init)


# ---- ties: the first extremal element -------------------------------------------------------
def _first_extremum_reducer(is_max, worst):
    """comm_reducer over (reduction index, value): the extreme value, and on ties the smallest
    index (order-independent, so the reduction may run in any order), from `worst`(dtype)."""

    def combine(x, y):
        (ix, vx), (iy, vy) = x, y
        better = vy > vx if is_max else vy < vx
        take = tvm.tirx.Or(better, tvm.tirx.And(vy == vx, iy < ix))
        return tvm.tirx.Select(take, iy, ix), tvm.tirx.Select(take, vy, vx)

    def identity(idx_dtype, value_dtype):
        return te.max_value(idx_dtype), worst(value_dtype)

    return te.comm_reducer(combine, identity, name="first_max" if is_max else "first_min")


def _extremum_search(red):
    """(is_max, key, worst) for a max or min reduction's first-extremum search: compare
    key(element) from worst(dtype) on. A NaN-propagating reduction (extremum.max_reducer)
    has NaN as its extreme, found as the first NaN (key: NaN at the far end), and starts
    from -inf, so a window of -inf finds its first element as PyTorch does; te.max's
    (TVM's: NaN dropped, from the lowest finite value) compares the elements as they are,
    as its forward did."""
    is_max = extremum.kind(red.combiner) == "max"
    if extremum.propagates_nan(red.combiner):
        return (is_max, lambda v: extremum.ordering_key(v, is_max),
                extremum.lowest if is_max else extremum.highest)
    return is_max, lambda v: v, te.min_value if is_max else te.max_value


def reduction_position(loops):
    """Row-major position of a point of the reduce loops [(var, start, extent)]: the
    reduction order in which ties are broken. int32 whenever the window fits (always, in
    practice): an int64 position, and its reducer's identity (the int64 maximum), would keep
    the kernel from the schedules' int32 index narrowing."""
    size = 1
    for _, _, extent in loops:
        # a symbolic extent (the batch) has no size to check here: int64 positions
        size = size * int(extent) if _is_const(extent) else 2**63 - 1
    dtype = "int32" if size < 2**31 - 1 else "int64"
    pos = _const(0, dtype)
    for var, start, extent in loops:
        v = var if _dtype(var) == dtype else P.Cast(dtype, var)
        n = _const(int(extent), dtype) if _is_const(extent) else P.Cast(dtype, extent)
        pos = pos * n + (v - _const(int(start), dtype))
    return pos


def _is_const(x):
    return isinstance(x, (int, P.IntImm))


def first_extremum(t, name=None):
    """For `t`, a max or min reduction (one TE stage), the tensor of t's shape holding, per
    output element, the reduction_position of the FIRST element attaining the extreme.

    The tie rule of every max/min gradient (derived and explicit, PyTorch's max_pool2d):
    the whole output gradient goes to that one element, so the total is dy, not k * dy."""
    op = t.op
    red = op.body[0]
    is_max, key, worst = _extremum_search(red)
    reducer = _first_extremum_reducer(is_max, worst)

    def body(*i):
        axes = [te.reduce_axis(iv.dom, iv.var.name) for iv in red.axis]
        vmap = {iv.var: v for iv, v in zip(op.axis, i)}
        vmap.update({iv.var: ax.var for iv, ax in zip(red.axis, axes)})
        pos = reduction_position([(ax.var, iv.dom.min, iv.dom.extent)
                                  for iv, ax in zip(red.axis, axes)])
        value = _keyed_guarded(substitute(_inline_paddings(red.source[red.value_index]), vmap),
                               key)
        cond = substitute(red.condition, vmap)
        return reducer((pos, value), axis=axes, where=cond)

    position, _ = te.compute(t.shape, body, name=name or f"{op.name}_first")
    return position


# A window of at most this many elements has its first extremum found by straight-line code
# (_scan_first_extremum), not by first_extremum's (position, value) tuple reduction, which
# the schedules run on scalars (max-pool k2 64@28 b32: the tuple pass alone 0.9 ms against a
# 0.2 ms forward).
SCAN_WINDOW_MAX = 16


def _window_points(red):
    """The points of a reduction's axes in reduction_position order, or None where an extent
    is symbolic or there are more than SCAN_WINDOW_MAX points."""
    extents = [iv.dom.extent for iv in red.axis]
    if not all(_is_const(e) and _is_const(iv.dom.min) for e, iv in zip(extents, red.axis)) \
            or math.prod(int(e) for e in extents) > SCAN_WINDOW_MAX:
        return None
    return list(itertools.product(*[range(int(iv.dom.min), int(iv.dom.min) + int(iv.dom.extent))
                                    for iv in red.axis]))


def _is_true(cond):
    return isinstance(cond, P.IntImm) and bool(cond.value)


class _Guarded(Exception):
    """A guarded read that is not a padded window's element."""


def _keyed_unguarded(expr, analyzer, pads, key):
    """key(expr unguarded) for a window's element that is one read, guarded or not: a guarded
    read becomes a read of a copy of key(x) padded with NaN (no key equals NaN and no max or
    min over keys, `k > top ? k : top`, takes it), so that the padding is never a window's
    first extremum, as it is none of its elements. None for any other expression."""
    if _is_load(expr):
        return key(expr)
    if not _is_guarded_read(expr):
        return None
    cond, then = expr.args[:2]
    tensor, _ = _load_parts(then)
    keys = pads.get(("keys", tensor))
    if keys is None:
        keys = pads[("keys", tensor)] = te.compute(
            tensor.shape, lambda *i: key(tensor(*i)), name=f"{tensor.op.name}_key")
    read = substitute(then, {}, loads={tensor: lambda idx: keys(*idx)})
    return _unguarded(tvm.tirx.if_then_else(cond, read, _const(math.nan, str(tensor.dtype))),
                      analyzer, pads)


def _unguarded(expr, analyzer, pads):
    """expr with each guarded read if_then_else(x's bounds at i, x[i], v) (a padded window's
    element) made a read of x padded with v (_padded, one copy per (x, v) in `pads`): the
    same value with no guard (a guarded load is a branch or a scalarized vector loop; a
    select of a clamped read would do, but TVM's simplifier drops the clamps under the
    select's condition, and the select reads out of bounds). Guards the analyzer (over the
    window and output loops) proves true, as without padding, are dropped. Raises _Guarded
    for another guard."""
    if isinstance(expr, Call) and expr.op.name == "prim.if_then_else":
        cond = _try_simplify(analyzer, expr.args[0])
        then, other = expr.args[1:]
        if isinstance(cond, P.IntImm):
            return _unguarded(then if cond.value else other, analyzer, pads)
        if not _is_load(then) or not isinstance(other, (P.FloatImm, P.IntImm)) or \
                not _guards_its_bounds(cond, then, analyzer):
            raise _Guarded(show(expr))
        tensor, idx = _load_parts(then)
        bounds = [analyzer.const_int_bound(i) for i in idx]
        lo = [min(0, int(b.min_value)) for b in bounds]
        key = (tensor, repr(float(other.value)))  # a NaN fill (a keyed copy) equals itself
        if key not in pads:
            # as much padding after as before at least, the forward's padded input: its
            # planes split evenly by the stride (the schedule's deinterleaved plane copy)
            hi = [max(int(n) - 1 - low, int(b.max_value)) for n, b, low in
                  zip(tensor.shape, bounds, lo)]
            pads[key] = _padded(tensor, other, lo, hi), _pads(tensor, lo, hi)
        return _shifted_read(*pads[key], idx)
    if isinstance(expr, _binary()):
        return type(expr)(*_promote(_unguarded(expr.a, analyzer, pads),
                                    _unguarded(expr.b, analyzer, pads)))
    if isinstance(expr, P.Cast):
        return P.Cast(_dtype(expr), _unguarded(expr.value, analyzer, pads))
    if isinstance(expr, (P.Select, Call)) and not _is_load(expr):
        raise _Guarded(show(expr))  # a select or another call may guard a read
    return expr


def _guards_its_bounds(cond, load, analyzer):
    """Whether cond holds exactly where `load` reads inside its tensor."""
    inside = _in_bounds(load)
    with analyzer.constraint_scope(inside):
        implied = _is_true(_try_simplify(analyzer, cond))
    with analyzer.constraint_scope(cond):
        return implied and _is_true(_try_simplify(analyzer, inside))


def _padded(tensor, fill, lo, hi):
    """`tensor` extended to [lo, hi] per axis (lo <= 0), `fill` outside it, indexed from 0."""
    pads = _pads(tensor, lo, hi)

    def body(*u):
        src, inside = _pad_source(tensor, u, pads)
        return te.if_then_else(inside, tensor(*src), fill)

    return te.compute(_pad_shape(tensor, pads), body, name=f"{tensor.op.name}_pad")


# A stage so annotated stays a loop nest of its own: the schedules do not inline it into its
# readers (schedule/spatial._inline_spatial), and split a padding into a fill and a copy.
MATERIALIZED = "tvmfront.materialized"


def _zero_padded_kernel(tensor, pads):
    """`tensor` extended to [lo, hi] along each axis of pads {axis: (lo <= 0, hi)} with
    zeros, indexed from 0, as a kernel of its own (a one-step reduction: the schedules
    inline a spatial padding into its reader, where its guarded load scalarizes a vector
    loop), and with no guarded load (a branch per element): each element read at an index
    clamped into the tensor, its bits masked."""
    one = te.reduce_axis((0, 1), "one")

    def body(*u):
        src, inside = _pad_source(tensor, u, pads)
        value = tensor(*[te.max(te.min(sk, _const(int(tensor.shape[k]) - 1, _dtype(sk))),
                                _const(0, _dtype(sk))) if k in pads else sk
                         for k, sk in enumerate(src)])
        # 0 + v: v (a max's identity would turn -inf finite)
        return te.sum(if_else_zero(inside, value, str(tensor.dtype)), axis=one)

    return te.compute(_pad_shape(tensor, pads), body, name=f"{tensor.op.name}_pad")


def _pads(tensor, lo, hi):
    """{axis: (lo, hi)} of the axes [lo, hi] extends beyond [0, n - 1]."""
    return {k: (low, h) for k, (low, h, n) in enumerate(zip(lo, hi, tensor.shape))
            if low or h != int(n) - 1}


def _pad_shape(tensor, pads):
    return [pads[k][1] - pads[k][0] + 1 if k in pads else n for k, n in enumerate(tensor.shape)]


def _pad_source(tensor, u, pads):
    """(the tensor's index at the padded index u, whether it is inside the tensor)."""
    src = [uk + _const(pads[k][0], _dtype(uk)) if k in pads and pads[k][0] else uk
           for k, uk in enumerate(u)]
    inside = [P.And(src[k] >= _const(0, _dtype(src[k])),
                    src[k] < _const(int(tensor.shape[k]), _dtype(src[k]))) for k in pads]
    return src, te.all(*inside) if inside else tvm.tirx.const(True, "bool")


def _shifted_read(padded, pads, idx):
    """The element of a tensor at idx, read from its copy padded by pads {axis: (lo, hi)}."""
    return padded(*[i - _const(pads[k][0], _dtype(i)) if k in pads and pads[k][0] else i
                    for k, i in enumerate(idx)])


def _scan_first_extremum(t, index, pads=None):
    """first_extremum(t) at `index` as straight-line code over the window's points (at most
    SCAN_WINDOW_MAX): the same position, the number of points where none is found (a window
    of NaN or -inf), which no position equals. Each point's element is compared as the
    tuple reducer does: taken when strictly better, so NaN never is. Raises _Guarded, also
    for a where= condition (op.py refuses such a forward; the tuple reduction honours it)."""
    op = t.op
    red = op.body[0]
    if not _is_true(red.condition):
        raise _Guarded(show(red.condition))
    is_max, key, worst = _extremum_search(red)
    analyzer = tvm.sym.Analyzer()
    for iv in list(op.axis) + list(red.axis):
        analyzer.bind(iv.var, iv.dom)
    pads = {} if pads is None else pads
    source = _inline_paddings(red.source[red.value_index])
    keyed = None
    if extremum.propagates_nan(red.combiner):
        # keys (and their padding) ahead of the padding: a padded window of -inf finds its
        # first element, not the padding (-inf too), as the explicit max-pool gradient
        keyed = _keyed_unguarded(source, analyzer, pads, key)
    source = keyed if keyed is not None else _unguarded(source, analyzer, pads)
    at = {iv.var: i for iv, i in zip(op.axis, index)}
    vals = []
    for point in _window_points(red):
        vmap = {iv.var: _const(p, _dtype(iv.var)) for iv, p in zip(red.axis, point)}
        vmap.update(at)
        value = substitute(source, vmap)
        vals.append(value if keyed is not None else key(value))
    top = worst(_dtype(vals[0]))
    for value in vals:
        # max(value, top) compiles to value > top ? value : top, the reducer's test
        top = te.max(value, top) if is_max else te.min(value, top)
    return least_found([P.EQ(value, top) for value in vals])


def _is_guarded_read(expr):
    """Whether expr is if_then_else(cond, x[i], constant): a padded window's element."""
    return isinstance(expr, Call) and expr.op.name == "prim.if_then_else" and \
        _is_load(expr.args[1]) and isinstance(expr.args[2], (P.FloatImm, P.IntImm))


def _keyed_guarded(expr, key):
    """key(expr), where a guarded read if_then_else(cond, x[i], v) (a padded window's
    element) keys to NaN outside x, which the first-extremum reducer never takes (neither
    better nor equal): a padded window of -inf finds its first element of x, not the
    padding (-inf too), as PyTorch's gradient does (windows of more than SCAN_WINDOW_MAX
    elements, reduced by first_extremum)."""
    if _is_guarded_read(expr):
        keyed = key(expr.args[1])
        return tvm.tirx.if_then_else(expr.args[0], keyed, _const(math.nan, _dtype(keyed)))
    return key(expr)


def _inline_paddings(expr):
    """expr with each read of a padding stage, a te.compute of if_then_else(cond, x[..],
    constant) (max-pool's forward reads x padded with the lowest value), replaced by that
    stage's value at the read's index: a guarded read of x, which the scan tells from x's
    own elements (_keyed_unguarded), so that a padded window of -inf finds its first element
    of x, not the padding, as PyTorch's gradient does."""
    stages = {}
    for load in _loads(expr, []):
        tensor, _ = _load_parts(load)
        op = tensor.op
        if not isinstance(op, te.ComputeOp) or len(op.body) != 1:
            continue
        body = op.body[0]
        if _is_guarded_read(body):
            stages[tensor] = (lambda idx, op=op, body=body: substitute(
                body, {iv.var: i for iv, i in zip(op.axis, idx)}))
    return substitute(expr, {}, loads=stages) if stages else expr


def least_found(found):
    """The least position e whose found[e] holds, len(found) where none does, as a min of
    integers (none - (none - e) * found): a chain of selects compiled to a chain of branches,
    mispredicted on real data."""
    none, first = len(found), None
    for e, f in enumerate(found):
        candidate = _const(none, "int32") - _const(none - e, "int32") * P.Cast("int32", f)
        first = candidate if first is None else te.min(first, candidate)
    return first


def _first_extremum_stage(t):
    """The scan of _scan_first_extremum as a kernel of its own (a one-step reduction, which
    the schedules do not inline into its readers): where windows overlap, each window's
    position is read by several elements of the gradient, which would scan it again.
    Raises _Guarded."""
    one = te.reduce_axis((0, 1), "one")
    pads = {}
    _scan_first_extremum(t, [iv.var for iv in t.op.axis], pads)  # the padded copies, once
    return te.compute(t.shape, lambda *i: te.min(_scan_first_extremum(t, i, pads), axis=one),
                      name=f"{t.op.name}_first")


def _reads_windows_once(source, loops, live):
    """Whether every float read of a live tensor in `source` reads each element at one point
    of `loops` at most (windows that do not overlap: max-pool with its stride equal to its
    kernel, a max over whole axes)."""
    domain = {lp.var: tvm.ir.Range.from_min_extent(_const(lp.start, _dtype(lp.var)),
                                                   _const(lp.extent, _dtype(lp.var)))
              for lp in loops}
    for load in _loads(source, []):
        tensor, indices = _load_parts(load)
        if _key(tensor) not in live or "float" not in str(tensor.dtype):
            continue
        found = tvm.sym.detect_iter_map([_strip_index_casts(i) for i in indices], domain,
                                        check_level="bijective")
        if not found.indices:
            return False
    return True


def _inside_read(expr, load):
    """expr simplified knowing that `load` reads inside its tensor, as it does wherever its
    adjoint is evaluated: the derivative of a padded window's read, inside ? 1 : 0, is 1.
    Nothing else then reads the output's spatial indices, so _extend_adjoint can move the
    range guards of the dy and first-position reads into zero-extended copies (max-pool k3
    s2 p1: its column guards scalarized the vector loops of two of the four phases)."""
    analyzer = tvm.sym.Analyzer()
    with analyzer.constraint_scope(_in_bounds(load)):
        return _try_simplify(analyzer, expr)


def _in_bounds(load):
    """The condition that `load` reads inside its tensor."""
    tensor, idx = _load_parts(load)
    inside = None
    for i, n in zip(idx, tensor.shape):
        bounds = P.And(i >= _const(0, _dtype(i)), i < _const(int(n), _dtype(i)))
        inside = bounds if inside is None else P.And(inside, bounds)
    return inside


# A max's adjoint whose index solve leaves at most this many points of free loops (the taps
# of the windows covering an element: 2 x 2 for a 3x3 window of stride 2) sums them unrolled.
GATHER_TAPS_MAX = 9


def _tap_gather(shape, dtype, indices, loops, value, name, read_with):
    """The adjoint of a read as an unrolled sum over the few windows covering each element
    (free loops of at most GATHER_TAPS_MAX points), in one pass, the explicit max-pool
    gradient's form (ops/pool.py's _window_gather), where _adjoint_of_read's per-phase
    parts write and reread the whole gradient once more (max-pool k3 s2 p1: 1.3 ms against
    0.3 ms). For a max or min with overlapping windows, whose value reads only dy and the
    positions (`read_with`): from copies zero-padded to every index a tap reads (a window
    out of range has dy 0), so each term is a select of reads in bounds (not guarded
    loads, which scalarize the vector loop). None where the solve leaves no free loop or
    more points, or the value reads another tensor."""
    if any(_is_load(ld) and len(ld.args) == 1 for e in indices for ld in _loads(e, [])):
        return None  # refused by _adjoint_of_read, with its message
    if any(not any(t.same_as(_load_parts(ld)[0]) for t in read_with)
           for ld in _loads(value, [])):
        return None
    indices, loops, value = _split_div_loops(indices, loops, value)
    probe = [Var(f"j{k}", tvm.ir.PrimType("int64")) for k in range(len(shape))]
    try:
        _, _, free, _ = _solve(indices, loops, probe, shape)
    except _Unsupported:
        return None
    if not free or math.prod(lp.extent for lp in free) > GATHER_TAPS_MAX:
        return None

    def body(*j):
        sub, guards, free, _ = _solve(indices, loops, list(j), shape)
        analyzer = tvm.sym.Analyzer()
        for jk, n in zip(j, shape):
            analyzer.bind(jk, _range(0, n))
        taps = []
        for point in itertools.product(*[range(lp.start, lp.start + lp.extent) for lp in free]):
            at = {lp.var: _const(p, _dtype(lp.var)) for lp, p in zip(free, point)}
            vmap = {v: substitute(x, at) for v, x in sub.items()}
            vmap.update(at)
            cond = [_try_simplify(analyzer, substitute(g, vmap)) for g in guards]
            if not any(isinstance(c, P.IntImm) and not c.value for c in cond):
                taps.append((substitute(value, vmap), [c for c in cond if not _is_true(c)]))
        reads = _zero_padded_reads([term for term, _ in taps], analyzer)
        total = _const(0, dtype)
        for term, cond in taps:
            term = substitute(term, {}, loads=reads)
            if cond:
                term = P.Select(functools.reduce(P.And, cond), term, _const(0, dtype))
            total = total + term
        return total

    return te.compute(_wide_shape(shape), body, name=name)


def _zero_padded_reads(terms, analyzer):
    """{tensor: read} reading each tensor loaded in `terms` from a copy zero-padded to every
    index they read (over the analyzer's loops)."""
    lo, hi, tensors = {}, {}, {}
    for term in terms:
        for load in _loads(term, []):
            tensor, idx = _load_parts(load)
            key = _key(tensor)
            tensors[key] = tensor
            for k, i in enumerate(idx):
                bound = analyzer.const_int_bound(i)
                lo[key, k] = min(lo.get((key, k), 0), int(bound.min_value))
                hi[key, k] = max(hi.get((key, k), int(tensor.shape[k]) - 1),
                                 int(bound.max_value))
    reads = {}
    for key, tensor in tensors.items():
        pads = _pads(tensor, *zip(*[(lo[key, k], hi[key, k]) for k in range(len(tensor.shape))]))
        if pads:  # else read in bounds as it is
            reads[tensor] = functools.partial(_shifted_read, _zero_padded_kernel(tensor, pads),
                                              pads)
    return reads


def _first_position(t, spatial, reduce_loops, live):
    """The reduction_position of t's first extremum at the spatial loops' point: a scan of
    the window inline where each window is read by its own elements only (the gradient's
    element finds its window's first from cache, in the same pass), a scan kernel where
    windows overlap, the tuple reduction first_extremum for large windows. Returns (that
    position, the tensor read for it or None)."""
    index = [lp.var for lp in spatial]
    stage = None
    if _window_points(t.op.body[0]) is not None:
        try:
            if _reads_windows_once(t.op.body[0].source[0], spatial + reduce_loops, live):
                return _scan_first_extremum(t, index), None
            stage = _first_extremum_stage(t)
        except _Guarded:  # a guard other than a padded window's: the tuple reduction
            stage = None
    stage = stage if stage is not None else first_extremum(t)
    return stage(*index), stage


# ---- the graph walk -------------------------------------------------------------------------
def _topo(outputs, inputs):
    order, seen = [], set()
    input_ids = {_key(t) for t in inputs}

    def visit(t):
        key = _key(t)
        if key in seen:
            return
        seen.add(key)
        if key not in input_ids and isinstance(t.op, te.ComputeOp):
            for parent in t.op.input_tensors:
                visit(parent)
        order.append(t)

    for o in outputs:
        visit(o)
    return order


def derive(name, outputs, inputs, output_grads, needs=None):
    """Gradients (TE tensors or None) of `inputs` given cotangents of `outputs`."""
    needs = needs or [True] * len(inputs)
    adj = {}
    for o, g in zip(outputs, output_grads):
        adj.setdefault(_key(o), []).append(g)
    order = _topo(outputs, inputs)
    phased = {}  # polyphase adjoints made so far: see _cropped_polyphase
    tensors = {_key(t): t for t in order}
    wanted = {_key(t) for t, n in zip(inputs, needs) if n and "float" in str(t.dtype)}
    # tensors on a path from a wanted input: only those need adjoints
    live = set(wanted)
    for t in order:
        if _key(t) in wanted or not any(_key(p) in live for p in t.op.input_tensors):
            continue
        if not isinstance(t.op, te.ComputeOp):  # its path had been dropped: a gradient short
            raise _Unsupported(f"stage '{t.op.name}' is no te.compute ({type(t.op).__name__}: "
                               f"a te.extern call): no derivative through it")
        live.add(_key(t))
    for t in reversed(order):
        k = _key(t)
        if k in wanted or k not in adj or not isinstance(t.op, te.ComputeOp):
            continue
        dT = _sum_all(adj[k], t, f"{t.op.name}_adj")
        for src, contribution in _backprop(name, t, dT, live, phased):
            adj.setdefault(_key(src), []).append(contribution)
    result = []
    for t, n in zip(inputs, needs):
        contribs = adj.get(_key(t)) if n else None
        result.append(_sum_all(contribs, t, f"{name}_d{len(result)}") if contribs else None)
    return result


def _key(t):
    return (t.op, t.value_index)


def _sum_all(parts, like, name):
    if len(parts) == 1:
        return parts[0]
    return te.compute(like.shape, lambda *i: _sum_exprs([p(*i) for p in parts]), name=name)


def _sum_exprs(exprs):
    total = exprs[0]
    for e in exprs[1:]:
        total = total + e
    return total


def _standard_combiner(combiner):
    """P.Add, P.Max or P.Min for a reducer that is exactly te.sum, te.max or te.min (a + b
    from 0, max(a, b) from the lowest value, min(a, b) from the highest) or extremum's
    NaN-propagating max or min. Anything else is refused: the node type alone took a + b * b
    for a sum (gradient 1 for 2x) and a max from 0 for a plain max (a row of negatives sent
    dy to an element)."""
    extreme = extremum.kind(combiner)
    if extreme is not None:
        return P.Max if extreme == "max" else P.Min
    result = combiner.result[0] if len(combiner.result) == 1 else None
    if isinstance(result, P.Add):
        a, b = combiner.lhs[0], combiner.rhs[0]
        operands = (result.a, result.b)
        if getattr(combiner.identity_element[0], "value", None) == 0 and (
                operands[0].same_as(a) and operands[1].same_as(b) or
                operands[0].same_as(b) and operands[1].same_as(a)):
            return P.Add
    raise _Unsupported(f"a reduction with combiner {combiner}: a derived gradient takes "
                       f"te.sum, te.max and te.min only")


def _backprop(name, t, dT, live, phased=None):
    """[(input tensor, its adjoint contribution)] for compute tensor t with adjoint dT
    (`phased`: see _adjoint_of_read)."""
    op = t.op
    if len(op.body) != 1:
        raise _Unsupported(f"compute '{op.name}' has {len(op.body)} outputs in one stage")
    body = op.body[0]
    spatial = [_Loop(iv.var, iv.dom.extent, iv.dom.min) for iv in op.axis]
    reduce_loops, mask, extremum, companions = [], None, False, []
    source = body
    dtype = str(t.dtype)
    if isinstance(body, Reduce):
        combiner = _standard_combiner(body.combiner)
        source = body.source[0]
        reduce_loops = [_Loop(iv.var, iv.dom.extent, iv.dom.min) for iv in body.axis]
        if not (isinstance(body.condition, P.IntImm) and body.condition.value == 1):
            mask = body.condition
        if combiner is P.Max or combiner is P.Min:
            # the gradient flows to the first element (in reduction order) equal to the extreme
            extremum = True
            first, first_tensor = _first_position(t, spatial, reduce_loops, live)
            companions = [first_tensor] if first_tensor is not None else []
            here = reduction_position([(lp.var, lp.start, lp.extent) for lp in reduce_loops])
            hit = P.EQ(*_promote(here, first))
            mask = hit if mask is None else P.And(mask, hit)
    # One index width: Relax gives int64 shapes, Python-int shapes give int32 loops, and the
    # casts between them would hide affine indices from the linear analysis.
    wide = {lp.var: Var(lp.var.name, tvm.ir.PrimType("int64")) for lp in spatial + reduce_loops
            if _dtype(lp.var) != "int64"}
    if wide:
        spatial = [_Loop(wide.get(lp.var, lp.var), lp.extent, lp.start) for lp in spatial]
        reduce_loops = [_Loop(wide.get(lp.var, lp.var), lp.extent, lp.start)
                        for lp in reduce_loops]
        source = substitute(source, wide)
        mask = None if mask is None else substitute(mask, wide)
    dy = dT(*[lp.var for lp in spatial])
    groups = []
    for load in _loads(source, []):
        tensor, _ = _load_parts(load)
        if _key(tensor) not in live or "float" not in str(tensor.dtype):
            continue
        if not any(_same_load(load, g) for g in groups):
            groups.append(load)
    out = []
    for g, load in enumerate(groups):
        tensor, indices = _load_parts(load)
        d = diff(source, load)
        if d is None:
            continue
        if extremum:
            d = _inside_read(d, load)
        value = d * dy
        if mask is not None and extremum:
            value = if_else_zero(mask, value, dtype)
        elif mask is not None:
            value = tvm.tirx.if_then_else(mask, value, _const(0, dtype))
        shape, name = tuple(int(s) for s in tensor.shape), f"{op.name}_d{tensor.op.name}{g}"
        gather = _tap_gather(shape, str(tensor.dtype), indices, spatial + reduce_loops, value,
                             name, [dT, *companions]) if companions else None
        interior = _interior_sum(indices, spatial + reduce_loops, value, dT, spatial, name) \
            if mask is None and not companions else None
        if interior is not None:
            out.append((tensor, _adjoint_of_read(shape, str(tensor.dtype), indices, *interior,
                                                 name)))
            continue
        out.append((tensor, gather if gather is not None else _adjoint_of_read(
            shape, str(tensor.dtype), indices, spatial + reduce_loops, value, name,
            adjoint=(dT, [lp.var for lp in spatial], *companions), inline=len(groups) == 1,
            phased=phased)))
    return out


def derive_for_op(op_name, forward, inputs, dy, needs=None):
    """Derived input gradients of `forward(*inputs)` for output cotangent `dy` (TE)."""
    out = forward(*inputs)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    dys = list(dy) if isinstance(dy, (list, tuple)) else [dy]
    symbolic = [t for t in list(inputs) + outs if not all(_is_const(d) for d in t.shape)]
    if symbolic:  # the derivation solves index maps over fixed extents
        shape = [int(d) if _is_const(d) else str(d) for d in symbolic[0].shape]
        raise GradientError(
            f"cannot derive the gradient of op '{op_name}' on a symbolic shape ({shape}): "
            f"derived gradients need fixed sizes. Supply it explicitly with @{op_name}.grad "
            "(a function (dy, *inputs, **attrs) returning one TE tensor per input), or "
            "compile with fixed sizes")
    try:
        return derive(op_name, outs, list(inputs), dys, needs)
    except _Unsupported as err:
        raise GradientError(
            f"cannot derive the gradient of op '{op_name}': {err}. Supply it explicitly with "
            f"@{op_name}.grad (a function (dy, *inputs, **attrs) returning one TE tensor per "
            "input)") from None
