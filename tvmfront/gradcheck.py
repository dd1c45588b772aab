"""Check an op's gradient against central finite differences, in float64."""

import numpy as np

from ._checks import is_float_dtype
from .errors import GradientError
from .op import Op


def _float64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if is_float_dtype(a.dtype) else a


def _check_op(op, caller):
    """TypeError unless `op` is a tvf.op (a plain function or a numpy ufunc has no kernels)."""
    if not isinstance(op, Op):
        raise TypeError(f"{caller}: the first argument must be a tvf.op (decorate the TE "
                        f"forward with @tvf.op), got {type(op).__name__} {op!r}")


def gradcheck(op, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0, derived=None, attrs=None,
              **more_attrs):
    """True if `op`'s gradient matches central differences; raises GradientError otherwise.

    The check projects the output on a random cotangent `dy` and compares
    d<dy, op(x)>/dx (finite differences, float64) with `op.vjp(dy, x)`, for every float input;
    an op with several outputs gets one cotangent per output (their projections summed).
    The error names the worst element: its input, index, both values and the error.
    `derived=True` checks the gradient derived from the forward even when `.grad` exists,
    `derived=False` the explicit one; by default the one `op.vjp` uses (see derived_gradients).
    Keywords other than these are the op's attributes; an unknown one is a TypeError. An
    attribute named as one of gradcheck's own keywords (layer_norm's eps) goes in `attrs=`,
    a dict of attributes.

    >>> gradcheck(ops.tanh, [np.random.rand(3, 4)])
    True
    """
    attrs = {**(attrs or {}), **more_attrs}
    _check_op(op, "gradcheck")
    if not isinstance(inputs, (list, tuple)):
        raise TypeError(f"gradcheck: inputs must be a list with one array per input of op "
                        f"'{getattr(op, 'name', op)}', got {type(inputs).__name__}")
    for name, value, low in (("eps", eps, 0.0), ("atol", atol, 0.0), ("rtol", rtol, 0.0)):
        if not isinstance(value, (int, float, np.floating, np.integer)) or \
                isinstance(value, bool) or not np.isfinite(value) or value < low or \
                (name == "eps" and value == 0):
            raise ValueError(f"gradcheck: {name} must be a finite number "
                             f"{'> 0' if name == 'eps' else '>= 0'}, got {value!r}")
    op.check_attrs(attrs, len(inputs), caller="gradcheck",
                   own=("eps", "atol", "rtol", "seed", "derived", "attrs"))
    xs = [_float64(x) for x in inputs]
    if not any(is_float_dtype(x.dtype) for x in xs):
        raise GradientError(f"gradcheck: op '{op.name}' has no floating-point input to check "
                            f"(got dtypes {[str(x.dtype) for x in xs]}); integer inputs have "
                            "no gradient")
    for k, x in enumerate(xs):
        if is_float_dtype(x.dtype) and not np.isfinite(x).all():
            raise ValueError(f"gradcheck: input {k} of op '{op.name}' holds non-finite values "
                             f"(at {tuple(int(v) for v in np.argwhere(~np.isfinite(x))[0])}): "
                             "finite differences need finite inputs")
    out = op.eager(*xs, **attrs)
    rng = np.random.default_rng(seed)
    several = isinstance(out, tuple)
    # several outputs: one cotangent each, projected together: sum_k <dy_k, out_k>. Output
    # elements infinite at x (causal_fill's -inf) get no cotangent: -inf * dy made every
    # projection -inf, every finite difference NaN, and NaN had read as a pass. A NaN output
    # keeps its cotangent, and fails.
    finite = [~np.isinf(o) for o in (out if several else (out,))]
    dys = [np.where(f, rng.standard_normal(f.shape), 0.0) for f in finite]

    def project():
        outs = op.eager(*xs, **attrs)
        return float(sum(np.sum(np.where(f, o * d, 0.0))
                         for o, d, f in zip(outs if several else (outs,), dys, finite)))

    analytic = op.vjp(dys if several else dys[0], *xs, derived=derived, **attrs)
    worst = None  # (excess, input, index, numeric, analytic)
    for k, x in enumerate(xs):
        if not is_float_dtype(x.dtype):
            continue
        numeric = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            orig = x[idx]
            x[idx] = orig + eps
            plus = project()
            x[idx] = orig - eps
            minus = project()
            x[idx] = orig
            numeric[idx] = (plus - minus) / (2 * eps)
        err = np.abs(numeric - analytic[k]) - (atol + rtol * np.abs(numeric))
        # NaN anywhere (a non-finite input, an output NaN at one element) fails, as
        # torch.autograd.gradcheck's allclose does: `nan > 0` had read as a pass
        err = np.where(np.isnan(err), np.inf, err)
        if err.size and (worst is None or err.max() > worst[0]):
            i = np.unravel_index(int(np.argmax(err)), err.shape)
            worst = (float(err.max()), k, i, numeric[i], analytic[k][i])
    if worst is not None and worst[0] > 0:
        _, k, i, num, ana = worst
        raise GradientError(
            f"gradcheck failed for op '{op.name}'{' (derived gradient)' if derived else ''}: input {k} at index {tuple(int(v) for v in i)}: "
            f"finite difference {num:.8g}, gradient {ana:.8g}, |error| {abs(num - ana):.3g} "
            f"(atol={atol}, rtol={rtol})")
    return True
