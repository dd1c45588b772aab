"""The op DSL: ``@op`` turns a TE forward into an op; ``@myop.grad`` gives its TE gradient.

An op runs two ways:
- symbolically, on Tensors inside a trace: it emits a Relax ``call_tir_with_grad`` whose
  gradient Relax's ``Gradient`` pass obtains from the op, one kernel per input that needs it;
- eagerly, on numpy arrays: it builds (and caches) a kernel for those shapes and runs it.

Example::

    @op
    def square(x):
        return te.compute(x.shape, lambda *i: x(*i) * x(*i), name="square")

    @square.grad
    def _(dy, x):
        return [te.compute(x.shape, lambda *i: 2 * x(*i) * dy(*i))]

    square(np.arange(3.0))          # -> array([0., 1., 4.])
"""

import contextlib
import contextvars
import inspect
import itertools

import numpy as np

from . import boundcheck, config, index_division, long_sums
from ._checks import is_float_dtype
from ._tvm import register_global_func, relax, te, to_device, tvm
from .autodiff import _dtype, _is_load, _nodes, derive_for_op, show
from .errors import GradientError, ShapeError
from .tensor import Tensor, current_trace, resolve, shape_text

_GRAD_PREFIX = "tvm.relax.te_grad._register."
_op_ids = itertools.count()
_EAGER_TARGET = "llvm"


def _freeze(value):
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    # typed: 1, 1.0 and True are equal and hash alike, but a forward may branch on the type
    # (a dtype from a fill value, `mode is True`); one cache entry for all three gave
    # whichever was built first. A float by its bits: -0.0 == 0.0 (copysign(x, s=-0.0) got
    # the kernel built for 0.0), and NaN equals nothing (a new build per call).
    if isinstance(value, (float, np.floating)):
        return (type(value).__name__, float(value).hex())
    return (type(value).__name__, value)


def _cast(t, dtype):
    return te.compute(t.shape, lambda *i: t(*i).astype(dtype), name=f"{t.op.name}_{dtype}")


_HALF_FLOATS = ("float16", "bfloat16")


def _is_half(t):
    return isinstance(t, te.Tensor) and str(t.dtype) in _HALF_FLOATS


def _widened(tensors):
    """float16/bfloat16 TE tensors cast to float32, the dtype ops compute them in; the others
    as they are. A tensor or a list of them, as given (a gradient's dy is a list for an op
    with several outputs)."""
    if isinstance(tensors, te.Tensor):
        return _widened([tensors])[0]
    if not isinstance(tensors, (list, tuple)):
        return tensors
    return type(tensors)(_cast(t, "float32") if _is_half(t) else t for t in tensors)


def _refuse_mixed_floats(name, inputs, err):
    """A TypeError naming the op and its inputs' float dtypes where a forward given several
    failed in TVM's own checks (BatchNorm's float32 parameters and a float64 input met in a
    select: "Check failed: (false_ty == true_ty) is false: mismatched types")."""
    floats = [str(t.dtype) for t in inputs
              if isinstance(t, te.Tensor) and "float" in str(t.dtype)]
    if len(set(floats)) > 1 and "Check failed" in str(err):
        first = str(err).strip().splitlines()[-1][:200]
        raise TypeError(f"op '{name}': its inputs mix float dtypes ({', '.join(floats)}), "
                        f"which its forward does not combine (TVM: {first}); give them one "
                        "dtype (e.g. the input's .astype of the parameters' dtype, as PyTorch "
                        "requires)") from err


def _freeze_attrs(op_name, attrs):
    """attrs as a hashable key (attributes are static: kernels are cached per value)."""
    frozen = []
    for k in sorted(attrs):
        v = _freeze(attrs[k])
        try:
            hash(v)
        except TypeError:
            raise TypeError(f"op '{op_name}': attribute {k}= is a {type(attrs[k]).__name__}, "
                            "which cannot be a static attribute (use numbers, strings, tuples; "
                            "pass arrays as inputs)") from None
        frozen.append((k, v))
    return tuple(frozen)


_force_derived = contextvars.ContextVar("tvmfront_force_derived", default=False)
_force_bound_checks = contextvars.ContextVar("tvmfront_bound_checks", default=None)


@contextlib.contextmanager
def _scoped(var, value):
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def derived_gradients(enabled=True):
    """Within this block every op uses its derived gradient, even where `.grad` exists
    (to compare the two, or to train on derived gradients alone)."""
    return _scoped(_force_derived, enabled)


def deriving():
    """True within derived_gradients(): ops traced now get their derived gradient."""
    return _force_derived.get()


def bound_checks(enabled=True):
    """Within this block eager kernels are built (and cached apart) with bound checks: a read
    outside a buffer raises OutOfBoundsError (tvmfront/boundcheck.py). Default: on when
    TVMFRONT_BOUND_CHECKS=1 (the test suite sets it)."""
    return _scoped(_force_bound_checks, enabled)


def bound_checks_enabled():
    forced = _force_bound_checks.get()
    return forced if forced is not None else config.bound_checks()


def _zeros(like, name):
    zero = tvm.tirx.const(0, like.dtype)
    return te.compute(like.shape, lambda *_: zero, name=name)


# keywords of te_grad / vjp beside an op's attributes
_RESERVED_ATTRIBUTES = frozenset({"derived", "forward_output"})


class Op:
    """A tensor op: a TE forward (`fn(*te_tensors, **attrs)`) and an optional TE gradient."""

    def __init__(self, fn, name=None):
        if not callable(fn):
            raise TypeError(f"tvf.op takes a function of TE tensors (the forward), got {fn!r}")
        self.fn = fn
        self.name = name or fn.__name__
        self._n_required = None  # _required_inputs, on first call
        taken = _RESERVED_ATTRIBUTES & set(inspect.signature(fn).parameters)
        if taken:
            # te_grad and vjp take these keywords themselves: an attribute so named was
            # silently theirs (vjp(dy, x, derived=3.0) chose the derived gradient)
            raise TypeError(f"op '{self.name}': {', '.join(sorted(taken))} cannot name an "
                            f"attribute (te_grad's and vjp's own keyword); rename it")
        self.__doc__ = fn.__doc__
        self.__name__ = self.name
        # _check_stage walks every expression (2% of the char Transformer's compile): for
        # the ops users write, not for tvmfront's own, which the op tests cover
        self._check_stages = not getattr(fn, "__module__", "").startswith("tvmfront.")
        self._grad_fn, self._grad_uses_output = None, False
        self._kernels = {}  # eager kernels keyed by (input shapes/dtypes, attrs, which)
        self._calls = []  # call id -> (attrs, needs-grad flags), read by the gradient handler
        self._call_ids = {}  # (frozen attrs, needs) -> call id
        # Relax looks gradient handlers up by global name; one name per Op object.
        self._grad_name = f"tvf.{self.name}.{next(_op_ids)}"
        register_global_func(_GRAD_PREFIX + self._grad_name, self._relax_grad_handler)

    def __repr__(self):
        return f"<tvf.op {self.name}{' (with grad)' if self.has_grad else ''}>"

    # ---- gradient registration -------------------------------------------------------------
    def grad(self, fn=None, *, uses_output=False):
        """Decorator: `fn(dy, *inputs, **attrs)` returns one TE tensor (or None) per input.
        `@myop.grad(uses_output=True)`: `fn(dy, out, *inputs, **attrs)` also reads the
        forward's output `out`, the step's own tensor, not recomputed: a gradient that reads
        `out` instead of an input (relu's) lets that input die at the forward, so the kernel
        making it can fuse with the op (one pass over the activation fewer each way)."""
        if fn is None:
            return lambda f: self.grad(f, uses_output=uses_output)
        if not callable(fn):  # `.grad(3)` failed only at the first gradient
            raise TypeError(f"op '{self.name}': .grad takes a function (dy, *inputs, **attrs), "
                            f"got {fn!r}")
        self._grad_fn, self._grad_uses_output = fn, uses_output
        self._kernels.clear()
        return fn

    @property
    def has_grad(self):
        return self._grad_fn is not None

    # ---- attributes --------------------------------------------------------------------------
    def _required_inputs(self):
        """How many positional parameters the forward has without a default."""
        if self._n_required is None:
            self._n_required = sum(
                1 for p in inspect.signature(self.fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty)
        return self._n_required

    def attribute_names(self, n_inputs):
        """Keywords the forward takes as attributes after `n_inputs` tensor inputs (None: any,
        the forward takes **kwargs)."""
        params = list(inspect.signature(self.fn).parameters.values())
        if any(p.kind == p.VAR_KEYWORD for p in params):
            return None
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        taken = {p.name for p in positional[:n_inputs]}
        return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name not in taken]

    def check_attrs(self, attrs, n_inputs, caller=None, own=()):
        """TypeError naming every keyword that is not an attribute of the forward (nor one of
        `own`, the caller's keywords); TypeError naming an attribute whose value is unhashable."""
        valid = self.attribute_names(n_inputs)
        unknown = [] if valid is None else sorted(set(attrs) - set(valid))
        if unknown:
            where = f"{caller}: " if caller else ""
            listed = ", ".join(f"{k}=" for k in valid) or "none"
            mine = f"; {caller}'s own keywords: {', '.join(f'{k}=' for k in own)}" if own else ""
            raise TypeError(f"{where}unknown keyword{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(f'{k}=' for k in unknown)} for op '{self.name}' (its "
                            f"attributes: {listed}{mine})")
        _freeze_attrs(self.name, attrs)

    # ---- TE level ----------------------------------------------------------------------------
    def _forward(self, inputs, attrs):
        try:
            out = self.fn(*inputs, **attrs)
        except Exception as err:
            _refuse_mixed_floats(self.name, inputs, err)
            raise
        outs = out if isinstance(out, (list, tuple)) else [out]
        if not outs or not all(isinstance(o, te.Tensor) for o in outs):
            raise TypeError(f"op '{self.name}' must return a te.Tensor or a list of them, "
                            f"got {type(out).__name__}")
        return out, list(outs)

    def te_forward(self, *inputs, **attrs):
        if any(_is_half(t) for t in inputs):
            out, outs = self._half_forward(inputs, attrs)
        else:
            out, outs = self._forward(inputs, attrs)
        outs = _computed(self.name, "forward", outs, inputs, self._check_stages)
        return type(out)(outs) if isinstance(out, (list, tuple)) else outs[0]

    def _half_forward(self, inputs, attrs):
        """float16/bfloat16 inputs computed in float32, each output rounded once to the dtype
        the forward gives it on the inputs as they are (PyTorch's and JAX's CPU rule): a sum
        of 4096 float16 ones accumulated in float16 was 2048, a float16 LayerNorm's variance
        overflowed to inf for |x| of a few hundred. A forward TVM cannot build on the half
        dtype itself (te.power on bfloat16) gives its float32 outputs that dtype."""
        first = None  # the forward's error on the inputs as they are
        try:
            out, outs = self._forward(inputs, attrs)
            dtypes = [str(o.dtype) for o in outs]
        except Exception as err:
            floats = {str(t.dtype) for t in inputs
                      if isinstance(t, te.Tensor) and is_float_dtype(str(t.dtype))}
            if len(floats) != 1:  # mixed float dtypes: the forward's own error stands
                raise
            first, half = err, floats.pop()
        try:
            wide, outs = self._forward(_widened(inputs), attrs)
        except Exception:
            if first is not None:  # failing in float32 too: the error on the inputs given
                raise first from None
            raise
        if first is not None:
            out, dtypes = wide, [half if str(w.dtype) == "float32" else str(w.dtype)
                                 for w in outs]
        if len({str(t.dtype) for t in inputs if _is_half(t)}) > 1:
            # float16 with bfloat16: float32, as PyTorch promotes them (TVM's float16 turned
            # bfloat16 values past 65504 into inf)
            dtypes = ["float32" if d in _HALF_FLOATS else d for d in dtypes]
        return out, [w if str(w.dtype) == d else _cast(w, d) for w, d in zip(outs, dtypes)]

    def _derived(self, derived=None):
        return (_force_derived.get() or not self.has_grad) if derived is None else derived

    def te_grad(self, dy, *inputs, derived=None, forward_output=None, **attrs):
        """Input gradients as TE tensors; inputs with no gradient get zeros of their shape.

        The explicit `.grad` is used when there is one, else the gradient derived from the
        forward (`derived=True` forces the derived one, e.g. to compare the two). A gradient
        that reads the forward's output gets `forward_output`, or the forward computed again
        from `inputs` (inlined into the gradient kernel) when it is None."""
        if self._derived(derived):
            grads = derive_for_op(self.name, lambda *xs: self.te_forward(*xs, **attrs), inputs, dy)
        elif self._grad_uses_output:  # in float32 for float16/bfloat16, as te_forward
            out = self.te_forward(*inputs, **attrs) if forward_output is None else forward_output
            grads = self._grad_fn(_widened(dy), _widened(out), *_widened(inputs), **attrs)
        else:
            grads = self._grad_fn(_widened(dy), *_widened(inputs), **attrs)
        if isinstance(grads, te.Tensor):
            grads = [grads]
        if not isinstance(grads, (list, tuple)):
            raise GradientError(f"gradient of op '{self.name}' must return a list with one TE "
                                f"tensor (or None) per input, got {type(grads).__name__}")
        grads = list(grads)
        for i, g in enumerate(grads):
            if g is not None and not isinstance(g, te.Tensor):
                raise GradientError(f"gradient of op '{self.name}' for input {i} is a "
                                    f"{type(g).__name__}, not a TE tensor (te.compute) or None")
        given = [dy] if isinstance(dy, te.Tensor) else list(dy)
        if self._grad_uses_output and not self._derived(derived) and forward_output is not None:
            given += list(forward_output) if isinstance(forward_output, (list, tuple)) \
                else [forward_output]
        tensors = _computed(self.name, "gradient", [g for g in grads if g is not None],
                            given + list(inputs), self._check_stages)
        it = iter(tensors)
        grads = [None if g is None else next(it) for g in grads]
        if len(grads) != len(inputs):
            raise GradientError(f"gradient of op '{self.name}' returned {len(grads)} tensors "
                                f"for {len(inputs)} inputs")
        out = []
        for i, (g, x) in enumerate(zip(grads, inputs)):
            if g is None:
                g = _zeros(x, f"zero{i}")
            elif tuple(g.shape) != tuple(x.shape):
                raise GradientError(f"gradient of op '{self.name}' for input {i} has shape "
                                    f"{tuple(shape_text(g.shape))}, input has "
                                    f"{tuple(shape_text(x.shape))}")
            elif str(g.dtype) != str(x.dtype) and "float" in str(x.dtype):
                # an input's gradient has its dtype (PyTorch's rule): a float32 prediction's
                # from a loss promoted to float64 by float64 labels had reached a ReLU's
                # gradient as float64 and failed in TVM (a reinterpret of 64 bits to 32)
                g = _cast(g, str(x.dtype))
            out.append(g)
        return out

    def _placeholders(self, specs):
        """TE placeholders named after the forward's parameters (for readable errors)."""
        params = [p.name for p in inspect.signature(self.fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return [te.placeholder(shape, str(dtype), name=params[i] if i < len(params) else f"x{i}")
                for i, (shape, dtype) in enumerate(specs)]

    def _check_derivable(self, tensors, attrs):
        xs = self._placeholders([(t.shape, t.dtype) for t in tensors])
        out = self.te_forward(*xs, **attrs)
        if isinstance(out, (list, tuple)):  # one output gradient per output
            self.te_grad([te.placeholder(o.shape, o.dtype, name=f"dy{k}")
                          for k, o in enumerate(out)], *xs, **attrs)
        else:
            self.te_grad(te.placeholder(out.shape, out.dtype, name="dy"), *xs, **attrs)

    # ---- calling -----------------------------------------------------------------------------
    def __call__(self, *inputs, **attrs):
        params = [p for p in inspect.signature(self.fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)] \
            if any(isinstance(v, (tuple, list)) for v in inputs) or \
            len(inputs) > self._required_inputs() else []
        for v, p in zip(inputs, params):
            if isinstance(v, (tuple, list)) and p.default is not p.empty:
                # reshape(x, (-1, 32)): the tuple became a tensor input, and iterating that
                # TE tensor as a shape never ended (compile hung)
                raise TypeError(f"op '{self.name}': {p.name} is an attribute; pass it by "
                                f"keyword ({p.name}={v!r}): positional inputs are tensors")
            if p.default not in (p.empty, None) and (hasattr(v, "shape") or
                                                     isinstance(v, Tensor)):
                # masked_softmax(x, mask): the mask became axis=, and the forward failed on
                # "'<=' not supported between instances of 'int' and 'Tensor'"
                raise TypeError(f"op '{self.name}' takes {p.name}= as an attribute (default "
                                f"{p.default!r}), not a tensor; its tensor inputs: "
                                f"{', '.join(q.name for q in params if q.default is q.empty)}")
        if inputs and any(isinstance(v, te.Tensor) for v in inputs):
            # inside another op's forward or gradient: compose at the TE level
            self.check_attrs(attrs, len(inputs))
            return self.te_forward(*inputs, **attrs)
        inputs = [resolve(v) for v in inputs]
        for i, v in enumerate(inputs):
            if isinstance(v, (int, float, bool)):
                raise TypeError(f"op '{self.name}': input {i} is a Python scalar; pass scalars "
                                "as keyword attributes (e.g. value=2.0) or as 0-d arrays")
        self.check_attrs(attrs, len(inputs))
        if any(isinstance(v, Tensor) for v in inputs):
            return self._emit(inputs, attrs)
        return self.eager(*inputs, **attrs)

    def _emit(self, inputs, attrs):
        trace = current_trace()
        if trace is None:
            raise RuntimeError(f"op '{self.name}' got a symbolic Tensor outside of a trace")
        # relax.const without a dtype narrows float64 to float32 and int64 to int32
        tensors = [v if isinstance(v, Tensor) else
                   Tensor(relax.const(np.asarray(v), str(np.asarray(v).dtype))) for v in inputs]
        needs = [t.requires_grad and is_float_dtype(t.dtype) for t in tensors]
        if any(needs) and (_force_derived.get() or not self.has_grad):
            self._check_derivable(tensors, attrs)  # fail now, naming the op, not inside Relax
        # The handler finds attrs and needs-grad flags through this id; equal calls share one.
        key = (_freeze_attrs(self.name, attrs), tuple(needs))
        if key not in self._call_ids:
            self._call_ids[key] = len(self._calls)
            self._calls.append((dict(attrs), needs))
        call_id = self._call_ids[key]

        def forward(*te_inputs):
            return self.te_forward(*te_inputs, **attrs)

        forward.__name__ = self.name
        bb = trace.builder
        call = bb.call_te_with_grad(
            forward, *[t.expr for t in tensors], te_grad_name=self._grad_name,
            te_grad_kwargs={"call": call_id}, primfunc_name_hint=self.name)
        requires = any(needs)
        if requires and len(call.args[1].fields) > len(tensors):
            # The kernel takes a symbolic size as an extra scalar argument (it sees `batch`
            # only inside an expression such as batch * 3): TVM 0.27's Gradient pass fails on
            # such a call with "KeyError: key is not in Map".
            raise GradientError(
                f"op '{self.name}' on shapes {[tuple(shape_text(t.shape)) for t in tensors]}: a "
                f"symbolic dimension appears only inside an expression (e.g. batch * 3), which "
                f"TVM 0.27's Gradient cannot differentiate through; keep symbolic dimensions "
                f"apart (e.g. [B, T, E], not a reshape to [B*T, E]) on the gradient path")
        var = bb.emit(call)
        if isinstance(var.ty, relax.TupleType):
            return tuple(Tensor(bb.emit(relax.TupleGetItem(var, i)), requires_grad=requires)
                         for i in range(len(var.ty.fields)))
        return Tensor(var, requires_grad=requires)

    def _relax_grad_handler(self, orig_var, call, output_grad, ctx):
        # Called by Relax's Gradient pass. One kernel per input that needs a gradient, so
        # gradients nobody uses (e.g. w.r.t. the input batch) are never computed.
        attrs, needs = self._calls[int(call.attrs.te_grad_kwargs["call"])]
        args = list(call.args[1])
        # orig_var, the forward's output in the step, for a gradient that reads it
        outs = [orig_var] if self._grad_uses_output and not self._derived() else []
        if isinstance(output_grad.ty, relax.TupleType):
            # several outputs: Gradient hands a tuple (zeros for an output the loss does not
            # read), which emit_te cannot take; .grad receives the list of its fields
            output_grad = [ctx.emit(relax.TupleGetItem(output_grad, k))
                           for k in range(len(output_grad.ty.fields))]
            outs = [[ctx.emit(relax.TupleGetItem(orig_var, k))
                     for k in range(len(orig_var.ty.fields))]] if outs else []
        partials = []
        for i, arg in enumerate(args):
            if needs[i]:
                def grad_i(dy, *xs, i=i):
                    out, xs = (xs[0], xs[1:]) if outs else (None, xs)
                    return self.te_grad(dy, *xs, forward_output=out, **attrs)[i]

                grad_i.__name__ = f"{self.name}_grad{i}"
                partials.append(ctx.emit_te(grad_i, output_grad, *outs, *args))
            else:
                partials.append(relax.op.zeros(arg.ty.shape, arg.ty.dtype))
        return ctx.emit(relax.Tuple(partials))

    # ---- eager -------------------------------------------------------------------------------
    def _kernel(self, which, arrays, attrs, dy=None):
        """(library, output specs, several outputs?, bound-check descriptions) of the forward,
        or of the explicit or derived gradient (`which`) for output gradient(s) `dy` (one
        array, or a list with one per output)."""
        dys = None if dy is None else list(dy) if isinstance(dy, (list, tuple)) else [dy]
        checked = bound_checks_enabled()
        # Everything that changes the kernel is in the key: which kernel (forward, explicit or
        # derived gradient, resolved by the caller), shapes, dtypes, attributes, bound checks.
        key = (which, tuple((a.shape, a.dtype.str) for a in arrays),
               _freeze_attrs(self.name, attrs),
               None if dys is None else tuple((d.shape, d.dtype.str) for d in dys), checked)
        hit = self._kernels.get(key)
        if hit is not None:
            return hit
        xs = self._placeholders([(a.shape, a.dtype) for a in arrays])
        if which == "forward":
            out = self.te_forward(*xs, **attrs)
            outs = list(out) if isinstance(out, (list, tuple)) else [out]
            args = xs + outs
        else:
            dyp = [te.placeholder(d.shape, str(d.dtype), name=f"dy{i}" if len(dys) > 1 else "dy")
                   for i, d in enumerate(dys)]
            outs = self.te_grad(dyp if isinstance(dy, (list, tuple)) else dyp[0], *xs,
                                derived=which == "derived", **attrs)
            args = dyp + xs + outs
        checks = boundcheck.read_checks(outs) if checked else []
        wide = wide_indices([[int(d) for d in t.shape] for t in args])
        func = long_sums.split_long_sums(te.create_prim_func(
            args + [c for c, _ in checks], index_dtype_override="int64" if wide else None))
        lib = tvm.compile(index_division.rewrite_func(func), target=_EAGER_TARGET)
        spec = [(tuple(int(d) for d in o.shape), o.dtype) for o in outs]
        kernel = (lib, spec, isinstance(out, (list, tuple)) if which == "forward" else True,
                  [d for _, d in checks])
        self._kernels[key] = kernel
        return kernel

    def _run(self, kernel, arrays):
        lib, spec, many, checks = kernel
        dev = tvm.cpu()
        outs = [tvm.runtime.empty(shape, dtype, dev) for shape, dtype in spec]
        # zeroed here: a kernel over an empty output runs no iteration, and a count left
        # uninitialised reported garbage reads (a reshape of a (0, 3) array, "17179869184")
        counts = [to_device(np.zeros(1, np.int64)) for _ in checks]
        lib["main"](*[to_device(np.require(a, requirements="C")) for a in arrays], *outs,
                    *counts)
        boundcheck.raise_if_out_of_bounds(self.name, checks, [c.numpy()[0] for c in counts])
        results = tuple(o.numpy() for o in outs)
        return results if many else results[0]

    def eager(self, *arrays, **attrs):
        """Run the forward on numpy arrays (kernel compiled once per shapes/dtypes/attrs)."""
        self.check_attrs(attrs, len(arrays))
        arrays = [_as_array(a, self.name) for a in arrays]
        return self._run(self._kernel("forward", arrays, attrs), arrays)

    def vjp(self, dy, *arrays, derived=None, **attrs):
        """Input gradients for output gradient `dy`, eagerly: a list of numpy arrays. An op
        with several outputs takes a list of output gradients, one per output.
        `derived=True` uses the gradient derived from the forward even if `.grad` exists,
        `derived=False` the explicit one even inside `derived_gradients()`; None (default):
        the explicit one unless inside `derived_gradients()` or there is none."""
        self.check_attrs(attrs, len(arrays))
        arrays = [_as_array(a, self.name) for a in arrays]
        _, specs, several, _ = self._kernel("forward", arrays, attrs)
        if several and not isinstance(dy, (list, tuple)):
            raise ShapeError(f"op '{self.name}' has {len(specs)} outputs: pass a list of "
                             f"{len(specs)} output gradients, got one array")
        dys = [_as_array(d, self.name) for d in dy] if several else [_as_array(dy, self.name)]
        if len(dys) != len(specs):
            raise ShapeError(f"op '{self.name}' has {len(specs)} outputs, got {len(dys)} output "
                             "gradients")
        for i, (d, (shape, dtype)) in enumerate(zip(dys, specs)):
            what = f"dy[{i}]" if several else "dy"
            if d.shape != shape:
                raise ShapeError(f"op '{self.name}': {what} has shape {d.shape}, output has "
                                 f"{shape}")
            dys[i] = _in_output_dtype(d, dtype, self.name, what)
        if derived is None:
            derived = _force_derived.get()
        derived = derived or not self.has_grad
        which = "derived" if derived else "explicit"
        kernel = self._kernel(which, arrays, attrs, dy=dys if several else dys[0])
        return list(self._run(kernel, dys + arrays))


def op(fn=None, *, name=None):
    """Decorator making a TE function an op: ``@op`` or ``@op(name="my_relu")``."""
    if fn is None:
        return lambda f: Op(f, name=name)
    return Op(fn, name=name)


def _as_array(a, op_name):
    """`a` as a numpy array: a TVM runtime tensor through .numpy() (np.asarray made it a 0-d
    object array, refused as 'unknown dtype object'); a masked array refused."""
    if not isinstance(a, np.ndarray) and hasattr(a, "numpy") and hasattr(a, "shape"):
        return a.numpy()
    if isinstance(a, np.ma.MaskedArray):  # np.asarray drops the mask
        raise TypeError(f"op '{op_name}': a masked array; its mask would be ignored. Pass "
                        f"array.filled(value) (or np.ma.getdata(array) for the data as they "
                        f"are)")
    return np.asarray(a)


def _in_output_dtype(dy, dtype, op_name, what):
    """`dy` in its output's float `dtype`, as PyTorch's autograd casts an output gradient: a
    float64 dy for a float32 output had built a mixed-dtype gradient kernel, which TVM refused
    with a raw internal error in some ops (max_pool2d) and computed in float64 in others. A
    non-numeric dy, or any dy for a non-float output, is a TypeError naming both dtypes."""
    if dy.dtype.name == str(dtype):
        return dy
    if is_float_dtype(str(dtype)) and (is_float_dtype(dy.dtype) or dy.dtype.kind in "iub"):
        return dy.astype(str(dtype))
    raise TypeError(f"op '{op_name}': {what} is {dy.dtype}, the output it is the gradient of "
                    f"is {dtype}")


def _copy(t, name):
    return te.compute(t.shape, lambda *i: t(*i), name=name)


def _computed(name, what, outputs, given, check_stages=True):
    """`outputs` of op `name`'s forward or gradient (`what`), checked against the tensors it
    was `given`, as tensors a kernel can write:
    - one of the given tensors returned as it is (an identity forward, a straight-through
      gradient returning dy) becomes a copy: returned bare, the kernel's output was its own
      input, and a compiled step read uninitialised memory;
    - a tensor returned twice is copied the second time (the kernel declared it twice);
    - a placeholder that is none of the given tensors, returned or read, is a TypeError: its
      values would come from nowhere;
    - a reduction with a where= condition is a ValueError: TVM 0.27's te.create_prim_func
      drops the condition (te.max(x[i, k], axis=k, where=k != 1) compiled to the max over
      every k), a silent wrong answer;
    - a reduction over an axis of size 0 is a ValueError: its output is never written (numpy
      and PyTorch give a sum of 0; TVM's kernel leaves memory as it was);
    - with `check_stages`, what TVM would fail on when building the kernel (_check_stage)."""
    given_ops = [t.op for t in given]
    out, seen_outputs = [], []
    for k, t in enumerate(outputs):
        if any(t.op.same_as(o) for o in given_ops) or \
                any(t.same_as(o) for o in seen_outputs):
            t = _copy(t, f"{name}_copy{k}")
        elif isinstance(t.op, te.PlaceholderOp):
            raise TypeError(f"op '{name}': its {what} returns the placeholder '{t.op.name}', "
                            "which is none of its inputs: an op computes its outputs from its "
                            "inputs (te.compute); pass other arrays as inputs")
        seen_outputs.append(t)
        out.append(t)
    seen, pending = set(), list(out)
    while pending:
        t = pending.pop()
        op = t.op
        if op in seen or any(op.same_as(o) for o in given_ops):
            continue  # a given tensor: computed by whoever gave it (an outer op's forward)
        seen.add(op)
        if isinstance(op, te.PlaceholderOp):
            raise TypeError(f"op '{name}': its {what} reads the placeholder '{op.name}', "
                            "which is none of its inputs; pass it as an input")
        if check_stages and isinstance(op, te.ComputeOp):
            _check_stage(name, what, op)
        for body in op.body if isinstance(op, te.ComputeOp) else []:  # not an extern's loops
            if not isinstance(body, tvm.tirx.Reduce):
                continue
            cond = body.condition
            if not (isinstance(cond, tvm.tirx.IntImm) and cond.value == 1):
                raise ValueError(
                    f"op '{name}': the reduction '{op.name}' has a where= condition ({cond}), "
                    "which TVM 0.27's lowering drops (the condition would be ignored). Put it "
                    "into the reduced value instead: te.max(te.if_then_else(cond, x[i, k], "
                    "te.min_value(x.dtype)), axis=k), or te.sum(te.if_then_else(cond, v, 0), "
                    "axis=k)")
            empty = [str(ax.var.name) for ax in body.axis
                     if isinstance(ax.dom.extent, tvm.tirx.IntImm) and ax.dom.extent.value == 0]
            if empty:
                raise ValueError(
                    f"op '{name}': the reduction '{op.name}' runs over an axis of size 0 "
                    f"({', '.join(empty)}), whose output TVM never writes (it would be "
                    "uninitialised memory); give the empty case its value in the forward, "
                    "e.g. te.compute(shape, lambda *i: tvm.tirx.const(0, dtype))")
        pending.extend(op.input_tensors)
    return out


_ARITHMETIC = ("Add", "Sub", "Mul", "Div", "FloorDiv", "Mod", "FloorMod")


def _check_stage(name, what, op):
    """A TypeError or ValueError naming the stage, for what TVM reports only as an internal
    error or a crash when the kernel is built: a negative extent (std::bad_alloc), an index
    that is no integer (x[i * 0.5], or a float input used as indices), arithmetic on bools."""
    for ax in op.axis:
        extent = ax.dom.extent
        if isinstance(extent, tvm.tirx.IntImm) and extent.value < 0:
            raise ValueError(f"op '{name}': its {what}'s stage '{op.name}' has a negative "
                             f"extent ({extent.value})")
    for body in op.body:
        for e in _nodes(body):
            if _is_load(e):
                bad = [i for i in e.args[1:] if not _dtype(i).startswith(("int", "uint"))]
                if bad:
                    raise TypeError(
                        f"op '{name}': its {what}'s stage '{op.name}' indexes "
                        f"'{e.args[0].op.name}' with the {_dtype(bad[0])} index {show(bad[0])}; "
                        f"indices must be integers (an index input must be an int array: "
                        f"opcheck's int_inputs=)")
            elif type(e).__name__ in _ARITHMETIC and _dtype(e) == "bool":
                raise TypeError(f"op '{name}': its {what}'s stage '{op.name}' does arithmetic "
                                f"on bools, {show(e)}; cast them first (x.astype('float32'))")


# An eager kernel indexes its tensors in int32 (TVM's default) unless one of them has this many
# elements or more: then in int64. In int32 TVM failed to build it ("Literal value 2147549184
# exceeds range of int32", naming no op).
INT32_ELEMENTS = 2 ** 31


def wide_indices(shapes):
    """Whether a kernel over tensors of `shapes` needs int64 indices."""
    return any(int(np.prod(shape, dtype=np.float64)) >= INT32_ELEMENTS for shape in shapes)
