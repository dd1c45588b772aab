"""Symbolic tensors: what ops see while a model is traced into a Relax function.

A Tensor wraps one Relax variable emitted into the active BlockBuilder. It carries its
shape (ints, and TIR variables or expressions for symbolic dimensions such as the batch), dtype
and whether it depends on trainable parameters (`requires_grad`),
so an op with no gradient is reported by name at trace time, not deep inside Relax.
Arithmetic operators are attached by `tvmfront.ops` (the op layer sits above this one).
"""

import contextlib
import threading

import numpy as np

from ._tvm import is_prim_expr, relax, tirx
from .spec import dim_text

_state = threading.local()


class Tensor:
    """A symbolic tensor inside a trace. Shape is a tuple of ints, with a TIR expression
    (tirx.Var or arithmetic on one) for each symbolic dimension; dtype a numpy dtype name."""

    __array_priority__ = 1000  # numpy defers `ndarray * Tensor` to Tensor.__rmul__

    def __init__(self, expr, requires_grad=False, name=None):
        ty = expr.ty if hasattr(expr, "ty") else None
        self.expr = expr
        self.shape = tuple(dim(d) for d in ty.shape)
        self.dtype = str(ty.dtype)
        self.requires_grad = bool(requires_grad)
        self.name = name

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"

    def __bool__(self):
        raise TypeError("a symbolic Tensor has no truth value while tracing; "
                        "data-dependent Python control flow cannot be compiled")


# What a call of a traced function must satisfy (Trace's tables, checked before each call by
# runtime/bounds.py), and how two bounds on one dimension or input combine: the tighter wins
BOUND_KINDS = {"min_sizes": max, "max_sizes": min, "id_ranges": min}


class Trace:
    """One tracing session: the BlockBuilder ops emit into, and parameter bindings."""

    def __init__(self, builder, bindings=None):
        self.builder = builder
        self.bindings = dict(bindings or {})  # id(parameter object) -> Tensor
        # What a call of the traced function must satisfy, or a kernel would read outside a
        # buffer or clamp an index (runtime/modules.py checks them before each call):
        # {symbolic dimension: the fewest positions an int index into it needs} (x[:, -1] on
        # a symbolic T: 1), {symbolic dimension: the most positions a table indexed by them
        # has} (positions 0..T-1 into a positional embedding of `context` rows), and
        # {data input: n} (its values index a table of n rows: each in [0, n))
        self.min_sizes, self.max_sizes, self.id_ranges = {}, {}, {}
        self.inputs = []  # [(relax Var, name)]: the traced function's data inputs

    def input_name(self, tensor):
        """The data input `tensor` is (its name), or None for any other tensor."""
        return next((n for v, n in self.inputs if v.same_as(tensor.expr)), None)

    def bound(self, kind, key, value):
        """Record bound `value` of `kind` (a BOUND_KINDS name) on `key`, the tightest kept."""
        table = getattr(self, kind)
        table[key] = BOUND_KINDS[kind](table.get(key, value), value)

    def lookup(self, obj):
        try:
            return self.bindings[id(obj)]
        except KeyError:
            raise RuntimeError(f"{obj!r} is not bound in this trace: was it registered on the "
                               "model being compiled?") from None


def current_trace():
    """The active Trace, or None when running eagerly."""
    stack = getattr(_state, "stack", None)
    return stack[-1] if stack else None


@contextlib.contextmanager
def tracing(trace):
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(trace)
    try:
        yield trace
    finally:
        stack.pop()


def resolve(value):
    """Objects with __tvf_value__ (parameters) become their traced Tensor or numpy value."""
    hook = getattr(value, "__tvf_value__", None)
    return hook() if hook is not None else value


def dim(d):
    """A dimension as an int when it is a constant, else its TIR expression (symbolic)."""
    if isinstance(d, tirx.IntImm):
        return int(d.value)
    return d if is_prim_expr(d) else int(d)


def is_static(shape):
    return all(isinstance(d, int) for d in shape)


def shape_text(shape):
    """A shape for messages: ints, and symbolic dimensions as their names or expressions
    ('batch * 3', not TVMScript's 'batch * T.int64(3)')."""
    return [d if isinstance(d, int) else dim_text(d) for d in map(dim, shape)]


def new_var(name, shape, dtype, dims=None):
    """A fresh Relax function parameter of `shape` and dtype. A str dimension is symbolic: the
    TIR variable of that name in `dims` (a dict, one per Relax function: each function
    defines its own symbolic variables), created there on first use."""
    def one(d):
        if isinstance(d, str):
            if dims is None:
                raise ValueError(f"symbolic dimension {d!r} needs a dims scope")
            if d not in dims:
                dims[d] = tirx.Var(d, "int64")
            return dims[d]
        return int(d)

    return relax.Var(name, relax.TensorType(tuple(one(d) for d in shape), str(np.dtype(dtype))))
