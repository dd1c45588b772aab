"""Shapes with symbolic dimensions, for TE ops: a dimension is an int, or a TIR expression
where the compiled function takes any size (the batch, a sequence length).

Ops compare and multiply dimensions through these helpers instead of int(d), so one op
serves static and symbolic shapes alike.
"""

import math

from .._checks import is_float_dtype
from .._tvm import arith, is_prim_expr, tirx
from ..errors import ShapeError
from ..spec import dim_text
from ..tensor import dim, shape_text


def is_float(x):
    """Whether tensor x is of a float dtype (bfloat16 too)."""
    return is_float_dtype(str(x.dtype))


def require_float(name, x):
    """TypeError unless x is a float tensor: an integer x came back rounded to integers
    (gelu of int32 [1, 2] gave [0, 0]) or failed in TVM ("Cannot find intrinsic
    declaration ... llvm.exp", "TVM supports multiple types of integer divisions")."""
    if not is_float(x):
        raise TypeError(f"{name}: x must be a float tensor, got {x.dtype} (cast it, e.g. "
                        f"x.astype('float32'))")


def integral_scalar(name, x, value, what="value"):
    """TypeError where a non-integral scalar meets an integer x: the scalar was cut to x's
    dtype (mul_scalar(int32 [1, 2, 3], 1.5) gave [1, 2, 3], a compiled x / 2 gave 0), where
    numpy and PyTorch promote to float."""
    if not is_float(x) and float(value) != int(value):
        raise TypeError(f"{name}: {what}={value} is no integer and x is {x.dtype}: the result "
                        f"would be cut to integers; cast x to a float dtype first")


def dims(shape):
    """The shape as a tuple of dim()s."""
    return tuple(dim(d) for d in shape)


def is_static(shape):
    return all(isinstance(d, int) for d in dims(shape))


def same(a, b):
    """Whether two dimensions are provably equal (a symbolic one equals itself only)."""
    a, b = dim(a), dim(b)
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return bool(arith.Analyzer().can_prove_equal(a, b))


def same_shape(a, b):
    a, b = dims(a), dims(b)
    return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))


def size(shape):
    """The number of elements: an int, or a TIR expression when a dimension is symbolic."""
    shape = dims(shape)
    if all(isinstance(d, int) for d in shape):
        return math.prod(shape)
    out = tirx.const(1, "int64")
    for d in shape:
        out = out * d
    return arith.Analyzer().simplify(out)


def reciprocal(count, dtype, op="a mean"):
    """1 / count as a TE scalar of `dtype` (count: an int or a symbolic expression); a
    ShapeError naming `op` for a count of 0 (a bare ZeroDivisionError before: mse_loss of
    empty arrays, layer_norm over an empty axis, batch_norm of an empty batch)."""
    if isinstance(count, int):
        if count == 0:
            raise ShapeError(f"{op}: averages over no elements (an input has a dimension of "
                             f"size 0)")
        return tirx.const(1.0 / count, dtype)
    return tirx.const(1.0, dtype) / count.astype(dtype)


show = shape_text  # the shape for an error message ('batch * 3', not 'batch * T.int64(3)')


def static(d, op, what):
    """`d` as an int; a ShapeError naming the op when it is symbolic (kernel sizes, channels,
    feature dims: what must be known when the kernel is built)."""
    d = dim(d)
    if not isinstance(d, int):
        raise ShapeError(f"{op}: {what} must be a fixed size, got the symbolic "
                         f"{show([d])[0]}")
    return d


def static_shape(shape, op, what):
    return tuple(static(d, op, what) for d in shape)


def simplify(expr):
    """An int for a constant, else the simplified TIR expression; every variable is a size,
    so it is known to be >= 0 (max(batch, 0) is batch)."""
    if isinstance(expr, int):
        return expr
    analyzer = arith.Analyzer()
    for v in tirx.analysis.undefined_vars(expr):
        analyzer.update(v, arith.ConstIntBound(0, arith.ConstIntBound.POS_INF))
    return dim(analyzer.simplify(expr))


# ---- products of dimensions, for reshape -----------------------------------------------------
def _factors(d, coef=1, atoms=None):
    """(int coefficient, {text: (expr, power)}) of a dimension seen as a product of factors:
    `batch * seq * 4` -> (4, {batch: 1, seq: 1}); anything that is not a product (a sum) is
    one opaque factor, keyed by its simplified text."""
    atoms = {} if atoms is None else atoms
    d = dim(d)
    if isinstance(d, int):
        return coef * d, atoms
    if isinstance(d, tirx.Mul):
        coef, atoms = _factors(d.a, coef, atoms)
        return _factors(d.b, coef, atoms)
    key = dim_text(d)
    expr, power = atoms.get(key, (d, 0))
    atoms[key] = (expr, power + 1)
    return coef, atoms


def _product(shape):
    coef, atoms = 1, {}
    for d in shape:
        coef, atoms = _factors(simplify(d), coef, atoms)
    return coef, atoms


def _monomial(coef, atoms):
    out = coef
    for expr, power in atoms.values():
        for _ in range(power):
            out = expr if isinstance(out, int) and out == 1 else out * expr
    return out


def rebind(shape, like):
    """`shape` with each symbolic variable replaced by the one of the same name in the shape
    `like`. An attribute such as reshape's target holds the traced function's variables
    (x.shape[0]); the kernel's placeholders hold copies of them (TVM gives each kernel its
    own), and mixing the two would leave the kernel two unrelated sizes for one dimension."""
    from ..autodiff import substitute  # ops sit above autodiff; _dims is imported first

    own = {v.name: v for d in dims(like) if not isinstance(d, int)
           for v in tirx.analysis.undefined_vars(d)}
    out = []
    for d in shape:
        if is_prim_expr(d) and not isinstance(d, tirx.IntImm):
            vmap = {v: own[v.name] for v in tirx.analysis.undefined_vars(d)
                    if v.name in own and not v.same_as(own[v.name])}
            d = substitute(d, vmap) if vmap else d
        out.append(d)
    return tuple(out)


def infer_shape(in_shape, shape, op):
    """`shape` with its one -1 inferred from `in_shape` (numpy's reshape rule), checking that
    the element counts agree. Symbolic factors cancel: (b, t, 4) -> (-1, 4) gives b * t,
    (b * t, 4) -> (b, t, -1) gives 4. A count that cannot be proved equal is a ShapeError."""
    shape = [d if d == -1 else dim(d) for d in shape] if shape else []
    if sum(1 for d in shape if isinstance(d, int) and d == -1) > 1:
        raise ShapeError(f"{op}: at most one -1 in {show(shape)}")
    total = _product(in_shape)
    if any(isinstance(d, int) and d == -1 for d in shape):
        at = next(i for i, d in enumerate(shape) if isinstance(d, int) and d == -1)
        coef, atoms = _product(shape[:at] + shape[at + 1:])
        left = dict(total[1])
        for key, (expr, power) in atoms.items():
            have = left.get(key, (expr, 0))[1]
            if have < power:
                raise ShapeError(f"{op}: cannot view {show(in_shape)} as {show(shape)}: the "
                                 f"symbolic factor {key} does not divide the element count")
            left[key] = (expr, have - power)
        left = {k: v for k, v in left.items() if v[1]}
        if coef == 0:  # (0, 3) -> (0, -1): any size fits; it had silently been 0
            raise ShapeError(f"{op}: cannot infer the -1 of {show(shape)} for {show(in_shape)}: "
                             f"the other dimensions hold no elements, so any size fits (numpy "
                             f"refuses it too)")
        if total[0] % coef:
            inferred = None
        else:
            inferred = _monomial(total[0] // coef, left)
        if inferred is None:
            raise ShapeError(f"{op}: cannot view {show(in_shape)} as {show(shape)}")
        shape[at] = simplify(inferred)
    want = _product(shape)
    if want[0] != total[0] or {k: p for k, (_, p) in want[1].items()} != \
            {k: p for k, (_, p) in total[1].items()}:
        if want[0] == total[0] == 0:
            return tuple(shape)
        raise ShapeError(f"{op}: cannot view {show(in_shape)} ({show([size(in_shape)])[0]} "
                         f"elements) as {show(shape)}")
    return tuple(shape)
