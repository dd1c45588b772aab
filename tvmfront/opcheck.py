"""opcheck: one call that checks an op's forward and gradients over a sweep of shapes."""

import inspect
from dataclasses import dataclass

import numpy as np

from ._checks import is_float_dtype, is_whole
from .errors import GradientError, TvmfrontError
from .gradcheck import _check_op, gradcheck
from ._tvm import te

# Default sweep for one-input ops: a size-1 tensor, sizes that are not multiples of any
# vector width, and a broadcast-like unit axis.
DEFAULT_SHAPES = [[(1,)], [(7,)], [(3, 17)], [(2, 1, 5)]]
_FORWARD_TOL = {"float16": (2e-3, 1e-3), "float32": (1e-5, 1e-5), "float64": (1e-10, 1e-12)}


class OpCheckError(TvmfrontError, AssertionError):
    """opcheck found a mismatch; the message holds the report and the worst element."""


@dataclass
class CheckRow:
    shapes: list
    dtype: str
    check: str
    ok: bool
    detail: str


class OpCheckReport:
    """What opcheck ran: one row per (shapes, dtype, check)."""

    def __init__(self, op_name, rows):
        self.op_name, self.rows = op_name, rows

    @property
    def ok(self):
        return all(r.ok for r in self.rows)

    def __str__(self):
        lines = [f"opcheck {self.op_name}: {sum(r.ok for r in self.rows)}/{len(self.rows)} passed"]
        for r in self.rows:
            shapes = ", ".join("x".join(map(str, s)) or "()" for s in r.shapes)
            lines.append(f"  {'ok  ' if r.ok else 'FAIL'} {r.check:<19} {r.dtype:<8} "
                         f"[{shapes}] {r.detail}")
        return "\n".join(lines)

    __repr__ = __str__


def _make_inputs(shapes, dtype, int_inputs, rng):
    xs = []
    for i, shape in enumerate(shapes):
        if i in int_inputs:
            xs.append(rng.integers(0, int_inputs[i], shape).astype("int64"))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    return xs


def opcheck(op, shapes=None, ref=None, dtypes=("float32", "float64"), int_inputs=None,
            make_inputs=None, seed=0, attrs=None, **more_attrs):
    """Check `op` over a sweep of input shapes and dtypes; return an OpCheckReport.

    For each shape set: the forward against `ref` (a numpy function) in every dtype; in float64
    the gradient (explicit, else derived) against central finite differences, and, when the
    op has an explicit `.grad`, the derived gradient against finite differences and against
    the explicit one. Raises OpCheckError, with the report and the worst element, on failure.

    shapes: list of input-shape lists, e.g. [[(4, 5), (5,)], [(1, 1), (1,)]]; one-input ops
      default to a sweep with size-1 and non-multiple-of-vector sizes.
    int_inputs: {input index: upper bound} for integer inputs (labels).
    make_inputs: optional (rng, shapes, dtype) -> list of arrays, for ops with input domains
      (e.g. positive inputs for log).
    Other keywords are the op's attributes; one the op's forward does not take is a TypeError
    naming it; one named as opcheck's own keywords (a `seed` attribute) goes in `attrs=`, a
    dict. The explicit and derived gradients are both checked inside derived_gradients() too.

    >>> print(tvf.opcheck(tvf.ops.tanh, ref=np.tanh))
    """
    attrs = {**(attrs or {}), **more_attrs}
    _check_op(op, "opcheck")
    if shapes is not None and not callable(shapes) and not isinstance(shapes, (list, tuple)) \
            and hasattr(shapes, "__iter__"):
        shapes = list(shapes)  # a generator of cases
    tensor_params = [p for p in inspect.signature(op.fn).parameters.values()
                     if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY,
                                                            p.POSITIONAL_OR_KEYWORD)]
    given = shapes is not None and not callable(shapes)
    op.check_attrs(attrs, len(shapes[0]) if given and shapes else len(tensor_params),
                   caller="opcheck",
                   own=("shapes", "ref", "dtypes", "int_inputs", "make_inputs", "seed", "attrs"))
    if callable(shapes):  # opcheck(op, np.tanh): the reference passed where shapes go
        raise TypeError(f"opcheck: shapes= is a function ({getattr(shapes, '__name__', shapes)}); "
                        "pass the numpy reference as ref=, e.g. opcheck(op, ref=np.tanh)")
    if isinstance(dtypes, str):  # dtypes="float64": one dtype, not its characters
        dtypes = (dtypes,)
    if shapes is not None and (not isinstance(shapes, (list, tuple)) or not shapes or
                               not all(isinstance(case, (list, tuple)) and
                                       all(isinstance(sh, (list, tuple)) for sh in case)
                                       for case in shapes)):
        raise TypeError(f"opcheck: shapes= is a list of cases, each a list with one shape per "
                        f"input (e.g. [[(3, 4)], [(1, 5)]] for a one-input op), got {shapes!r}")
    if not dtypes:
        raise ValueError("opcheck: dtypes= is empty: nothing would be checked")
    int_inputs = dict(int_inputs or {})
    inputs = len(shapes[0]) if shapes else len(tensor_params)
    for i, high in int_inputs.items():
        if not is_whole(i, 0, inputs - 1):
            raise ValueError(f"opcheck: int_inputs= names input {i!r}, but op '{op.name}' "
                             f"takes {inputs} input(s)")
        if not is_whole(high, least=1):
            raise ValueError(f"opcheck: int_inputs= bound for input {i} must be an int >= 1 "
                             f"(values are drawn from [0, bound)), got {high!r}")
    if shapes is None:
        if len(tensor_params) != 1:
            raise ValueError(f"opcheck: op '{op.name}' takes several inputs; pass shapes=")
        shapes = DEFAULT_SHAPES
    rows, failures = [], []
    for shape_set in shapes:
        for dtype in dtypes:
            rng = np.random.default_rng(seed)
            xs = (make_inputs(rng, shape_set, dtype) if make_inputs
                  else _make_inputs(shape_set, dtype, int_inputs, rng))
            checks = []
            if ref is not None:
                checks.append(("forward vs ref", lambda: _check_forward(op, ref, xs, dtype, attrs)))
            if dtype == "float64":
                label = "grad vs fd" if op.has_grad else "derived grad vs fd"
                checks.append((label, lambda: _check_grad(op, xs, attrs, False)))
                underivable = _underivable(op, xs, attrs) if op.has_grad else None
                if underivable:  # take's, embedding's: the explicit gradient is the op's
                    rows.append(CheckRow(list(shape_set), dtype, "derived grad", True,
                                         f"skipped, none derived: {underivable}"))
                elif op.has_grad:
                    checks.append(("derived grad vs fd", lambda: _check_grad(op, xs, attrs, True)))
                    checks.append(("derived vs explicit", lambda: _compare_grads(op, xs, attrs)))
            for name, run in checks:
                try:
                    detail = run()
                    rows.append(CheckRow(list(shape_set), dtype, name, True, detail))
                except (AssertionError, GradientError) as err:
                    rows.append(CheckRow(list(shape_set), dtype, name, False, str(err)))
                    failures.append(str(err))
    report = OpCheckReport(op.name, rows)
    if failures:
        raise OpCheckError(f"{report}\nfirst failure: {failures[0]}")
    return report


def _underivable(op, xs, attrs):
    """Why `op`'s forward has no derived gradient for inputs like `xs` (a GradientError's
    message), or None where it has one."""
    tensors = [te.placeholder(x.shape, str(x.dtype), name=f"x{i}") for i, x in enumerate(xs)]
    try:
        out = op.te_forward(*tensors, **attrs)
        dy = [te.placeholder(o.shape, o.dtype, name=f"dy{i}") for i, o in enumerate(out)] \
            if isinstance(out, (list, tuple)) else te.placeholder(out.shape, out.dtype, name="dy")
        op.te_grad(dy, *tensors, derived=True, **attrs)
    except GradientError as err:
        return str(err).split(". Supply it explicitly")[0]
    return None


def _worst(got, want, rtol, atol):
    """The index of the worst mismatch of `got` against `want` (np.isclose's, a NaN matching
    only a NaN), or None: `nan > 0` and max(0.0, nan) had read NaN as a match."""
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
    if not bad.any():
        return None
    err = np.where(bad, np.abs(got - want), -1.0)
    err = np.where(np.isnan(err), np.inf, err)
    return np.unravel_index(int(np.argmax(err)), err.shape)


def _check_forward(op, ref, xs, dtype, attrs):
    outs = op.eager(*xs, **attrs)
    wants = ref(*xs, **attrs)
    several = isinstance(outs, tuple)
    outs, wants = (list(outs), list(wants)) if several and isinstance(wants, (tuple, list)) \
        else ([outs], [wants])
    if len(outs) != len(wants):
        raise AssertionError(f"op '{op.name}' has {len(outs)} outputs, the reference gives "
                             f"{len(wants)}")
    rtol, atol = _FORWARD_TOL.get(dtype, (1e-5, 1e-5))
    worst = 0.0
    for k, (got, want) in enumerate(zip(outs, wants)):  # several outputs: each compared
        got, want = np.asarray(got), np.asarray(want)
        which = f"output {k} " if len(outs) > 1 else ""
        if got.shape != want.shape:
            raise AssertionError(f"forward {which}shape {got.shape}, reference {want.shape}")
        i = _worst(got, want, rtol, atol)
        if i is not None:
            raise AssertionError(f"forward {which}at {tuple(int(v) for v in i)}: got "
                                 f"{got[i]:.8g}, reference {want[i]:.8g}")
        finite = np.abs(got - want)[np.isfinite(got - want)]
        worst = max(worst, float(finite.max()) if finite.size else 0.0)
    return f"max |err| {worst:.2g}"


def _check_grad(op, xs, attrs, derived):
    gradcheck(op, [x.copy() for x in xs], derived=derived, attrs=attrs)  # False: explicit
    return "matches finite differences"


def _compare_grads(op, xs, attrs):
    out = op.eager(*xs, **attrs)
    rng = np.random.default_rng(1)
    dy = ([rng.standard_normal(np.shape(o)) for o in out] if isinstance(out, tuple)
          else rng.standard_normal(np.shape(out)))  # one cotangent per output
    explicit = op.vjp(dy, *xs, derived=False, **attrs)  # explicit even in derived_gradients()
    derived = op.vjp(dy, *xs, derived=True, **attrs)
    worst = 0.0
    for k, (e, d) in enumerate(zip(explicit, derived)):
        if not is_float_dtype(e.dtype) or not e.size:
            continue
        i = _worst(d, e, 1e-7, 1e-9)
        if i is not None:
            raise GradientError(f"input {k} at {tuple(int(v) for v in i)}: derived {d[i]:.10g}, "
                                f"explicit {e[i]:.10g}")
        worst = max(worst, float(np.nanmax(np.abs(e - d))))
    return f"max |diff| {worst:.2g}"
