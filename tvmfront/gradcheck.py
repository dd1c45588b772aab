"""Check an op's gradient against central finite differences, in float64."""

import numpy as np

from .errors import GradientError


def _float64(a):
    a = np.asarray(a)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


def gradcheck(op, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0, derived=None, **attrs):
    """True if `op`'s gradient matches central differences; raises GradientError otherwise.

    The check projects the output on a random cotangent `dy` and compares
    d<dy, op(x)>/dx (finite differences, float64) with `op.vjp(dy, x)`, for every float input;
    an op with several outputs gets one cotangent per output (their projections summed).
    The error names the worst element: its input, index, both values and the error.
    `derived=True` checks the gradient derived from the forward even when `.grad` exists,
    `derived=False` the explicit one; by default the one `op.vjp` uses (see derived_gradients).
    Keywords other than these are the op's attributes; an unknown one is a TypeError.

    >>> gradcheck(ops.tanh, [np.random.rand(3, 4)])
    True
    """
    op.check_attrs(attrs, len(inputs), caller="gradcheck",
                   own=("eps", "atol", "rtol", "seed", "derived"))
    xs = [_float64(x) for x in inputs]
    out = op.eager(*xs, **attrs)
    rng = np.random.default_rng(seed)
    several = isinstance(out, tuple)
    # several outputs: one cotangent each, projected together: sum_k <dy_k, out_k>
    dys = [rng.standard_normal(o.shape) for o in (out if several else (out,))]

    def project():
        outs = op.eager(*xs, **attrs)
        return float(sum(np.sum(o * d) for o, d in zip(outs if several else (outs,), dys)))

    analytic = op.vjp(dys if several else dys[0], *xs, derived=derived, **attrs)
    worst = None  # (excess, input, index, numeric, analytic)
    for k, x in enumerate(xs):
        if x.dtype.kind != "f":
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
