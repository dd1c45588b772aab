"""Max and min that propagate NaN and start from -inf / +inf, as numpy and PyTorch do.

TVM's max(a, b) compiles to `a > b ? a : b`, so a NaN survives only as its second operand,
and te.max reduces from the dtype's lowest finite value. ops.max([1, nan, 3]) was 3, a window
of -inf max-pooled to -3.4e38, and clip(nan) was its lower bound. The built-in ops use these
instead; a user's own te.max keeps TVM's meaning (and its derived gradient matches it).

ops.max_pool2d reduces with max_reducer(): its unpadded windows are plain reads, which the
window rule vectorizes column by column with the select at no measurable cost (k2 at b32
64@28: 344 against 309 us for te.max, one core); on LeNet's small planes that rule is slower
than LLVM's vectorizing of te.max's guarded scalar loop was (6@16: 9.6 against 4.4 us), and
the guarded loop with the select stays scalar (76 us). ops.max, whose rows TVM must split to
vectorize (rfactor, which knows only its own reducers), keeps te.max and adds a max over
max_class.

The NaN test is |a| <= inf, false for NaN alone: TVM's simplifier folds a != a to false and
rewrites not(|a| <= inf) into inf < |a|, and tirx.isnan is a call its vectorizer scalarizes.
So no test here is ever negated.
"""

import functools
import math

from ._checks import is_float_dtype
from ._tvm import structural_equal, te, tirx


def _is_float(dtype):
    return is_float_dtype(str(dtype))


def _expr(a):
    """A TE expression (a tensor's element x[i] is a TensorSlice until used)."""
    return a.asobject() if hasattr(a, "asobject") else a


def dtype_of(a):
    return str(_expr(a).ty)


def is_number(a):
    """True where a float `a` is not NaN (always for integers)."""
    a = _expr(a)
    if not _is_float(dtype_of(a)):
        return tirx.const(True, "bool")
    return te.abs(a) <= tirx.const(math.inf, dtype_of(a))


def maximum(a, b):
    """max(a, b), NaN where either is NaN: max(a, b) already takes a NaN b."""
    a = _expr(a)
    if not _is_float(dtype_of(a)):
        return te.max(a, b)
    return tirx.Select(is_number(a), te.max(a, b), a)


def minimum(a, b):
    """min(a, b), NaN where either is NaN."""
    a = _expr(a)
    if not _is_float(dtype_of(a)):
        return te.min(a, b)
    return tirx.Select(is_number(a), te.min(a, b), a)


def lowest(dtype):
    """The max's starting value: -inf for floats (a window of -inf has max -inf)."""
    return tirx.const(-math.inf, dtype) if _is_float(dtype) else te.min_value(dtype)


def highest(dtype):
    return tirx.const(math.inf, dtype) if _is_float(dtype) else te.max_value(dtype)


@functools.cache
def max_reducer():
    """The reducer of a NaN-propagating max from -inf (made on first use: TVM loads lazily)."""
    return te.comm_reducer(lambda a, b: maximum(a, b), lowest, name="nan_max")


def max_class(a):
    """2 where float `a` is NaN, 0 where it is -inf, 1 otherwise: te.max over these classes
    tells what a plain te.max over the same elements misses (a NaN among them; all -inf),
    in a second reduction that TVM's schedules split and vectorize as any max. A reduction
    with max_reducer() they cannot split (rfactor knows TVM's own reducers only): a row max
    of [4096, 1024] took 5.7 ms on one core against 1.6 for te.max, 3.5 with this."""
    a = _expr(a)
    dtype = dtype_of(a)
    one = tirx.const(1.0, dtype)
    return tirx.Select(is_number(a), tirx.Select(a > lowest(dtype), one, tirx.const(0.0, dtype)),
                       tirx.const(2.0, dtype))


def classified_max(top, cls):
    """`top`, a plain te.max, made numpy's by the max of its elements' max_class: NaN where
    one was NaN, -inf where all were -inf (te.max gives the lowest finite value there)."""
    dtype = dtype_of(top)
    return tirx.Select(cls == tirx.const(2.0, dtype), tirx.const(math.nan, dtype),
                       tirx.Select(cls == tirx.const(0.0, dtype), lowest(dtype), top))


def ordering_key(a, is_max):
    """`a` with NaN mapped to the extreme end (+inf for a max): the key under which the first
    element attaining a NaN-propagating extreme is the first NaN (PyTorch's torch.max(dim)
    rule), found by the plain comparisons of a first-extremum search. A window holding +inf
    and NaN takes the first of either."""
    a = _expr(a)
    if not _is_float(dtype_of(a)):
        return a
    return tirx.Select(is_number(a), a, highest(dtype_of(a)) if is_max else lowest(dtype_of(a)))


def kind(combiner):
    """'max' or 'min' for the combiner of te.max / te.min (from the dtype's extreme or
    beyond) or of max_reducer() (and a min alike); None for any other."""
    if len(combiner.result) != 1:
        return None
    a, b, result = combiner.lhs[0], combiner.rhs[0], combiner.result[0]
    ident = getattr(combiner.identity_element[0], "value", None)
    if ident is None:
        return None
    dtype = dtype_of(a)
    for name, plain, ours, at_extreme in (
            ("max", te.max, maximum, ident <= te.min_value(dtype).value),  # or -inf
            ("min", te.min, minimum, ident >= te.max_value(dtype).value)):  # or +inf
        if at_extreme and any(structural_equal(result, f(x, y), map_free_vars=False)
                              for f in (plain, ours) for x, y in ((a, b), (b, a))):
            return name
    return None


def propagates_nan(combiner):
    """For a combiner kind() names: True for max_reducer()'s (a select on the NaN test)."""
    return isinstance(combiner.result[0], tirx.Select)
