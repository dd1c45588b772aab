"""softmax and log_softmax over any axis, numerically stable (the max along the axis is
subtracted before exp), each with its explicit gradient; the derived ones are checked too."""

from .._tvm import te, tirx
from ..op import op
from ._dims import require_float
from .fastmath import exp


def _axis(x, axis, name):
    ndim = len(x.shape)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}: axis {axis} out of range for a {ndim}-d input")
    return axis % ndim


def _rest(i, a):
    return (*i[:a], *i[a + 1:])


def _max_and_sumexp(x, a, masked_rows=False):
    """(max over axis a, exp(x - max), its sum over axis a). exp is a stage of its own, not
    inside the sum: there it ran once per element, vectorized, where inside the reduction's
    scalar tiles (and again in softmax's output) it made a 16x4x64x64 softmax 5x slower.
    masked_rows: a row all -inf subtracts 0, not its max (-inf - -inf is NaN): exp 0, sum 0."""
    require_float("softmax", x)
    rest = (*x.shape[:a], *x.shape[a + 1:])
    k1, k2 = te.reduce_axis((0, x.shape[a]), "k1"), te.reduce_axis((0, x.shape[a]), "k2")
    mx = te.compute(rest, lambda *j: te.max(x(*j[:a], k1, *j[a:]), axis=k1), name="sm_max")
    if masked_rows:
        minus_inf, zero = tirx.const(float("-inf"), x.dtype), tirx.const(0, x.dtype)
        mx = te.compute(rest, lambda *j: te.if_then_else(mx(*j) == minus_inf, zero, mx(*j)),
                        name="sm_max_or_0")
    e = te.compute(x.shape, lambda *i: exp(x(*i) - mx(*_rest(i, a))), name="sm_exp")
    se = te.compute(rest, lambda *j: te.sum(e(*j[:a], k2, *j[a:]), axis=k2), name="sm_sum")
    return mx, e, se


def _dot_along(dy, s, a):
    """sum over axis a of dy * s (s None: of dy alone)."""
    k = te.reduce_axis((0, dy.shape[a]), "k")
    rest = (*dy.shape[:a], *dy.shape[a + 1:])
    if s is None:
        return te.compute(rest, lambda *j: te.sum(dy(*j[:a], k, *j[a:]), axis=k), name="dsum")
    return te.compute(rest, lambda *j: te.sum(dy(*j[:a], k, *j[a:]) * s(*j[:a], k, *j[a:]),
                                              axis=k), name="dot")


def softmax_along(x, a, name, masked_rows=False):
    """exp(x - max) times the reciprocal of its sum along axis a: one division per row, not
    one per element (a vector division takes about as long as the exp; attention's
    [16, 4, 64, 64] softmax alone, 2 AVX-512 cores: 107-114 -> 95 us). PyTorch's CPU softmax
    multiplies by the reciprocal too. masked_rows: a row all -inf gives zeros (masked_softmax)."""
    _, e, se = _max_and_sumexp(x, a, masked_rows)
    one, zero = tirx.const(1.0, x.dtype), tirx.const(0, x.dtype)
    inv = te.compute(se.shape, lambda *j: te.if_then_else(se(*j) == zero, zero, one / se(*j))
                     if masked_rows else one / se(*j), name="sm_inv")
    return te.compute(x.shape, lambda *i: e(*i) * inv(*_rest(i, a)), name=name)


def softmax_output_vjp(dy, s, a, name):
    """s * (dy - sum(dy * s)) along axis a from the softmax's output s (saved by the forward:
    attention's backward reads it for weights @ v's gradient anyway): one reduction and no
    exp, where recomputing s from x took three reductions and an exp per element (attention's
    softmax gradient with causal_fill's, alone: 145-155 -> 27 us; the char Transformer's
    train step with both changes 17.38 -> 17.01 ms, in-process A/B)."""
    dot = _dot_along(dy, s, a)
    return te.compute(s.shape, lambda *i: s(*i) * (dy(*i) - dot(*_rest(i, a))), name=name)


@op
def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)) along `axis` (torch.softmax(x, dim))."""
    return softmax_along(x, _axis(x, axis, "softmax"), "softmax")


@softmax.grad(uses_output=True)
def _(dy, s, x, axis=-1):
    return [softmax_output_vjp(dy, s, _axis(x, axis, "softmax"), "softmax_grad")]


@op
def masked_softmax(x, axis=-1):
    """softmax, except that a row whose elements are all -inf (every key masked) gives zeros,
    not NaN: PyTorch's scaled_dot_product_attention (2.5 on: nn.MultiheadAttention with
    need_weights=False, TransformerEncoderLayer), which attention uses. Its gradient there is
    0 too."""
    return softmax_along(x, _axis(x, axis, "masked_softmax"), "masked_softmax", True)


@masked_softmax.grad(uses_output=True)
def _(dy, s, x, axis=-1):
    return [softmax_output_vjp(dy, s, _axis(x, axis, "masked_softmax"), "masked_softmax_grad")]


@op
def log_softmax(x, axis=-1):
    """x - max - log(sum(exp(x - max))) along `axis` (torch.log_softmax(x, dim))."""
    a = _axis(x, axis, "log_softmax")
    mx, _, se = _max_and_sumexp(x, a)
    return te.compute(x.shape, lambda *i: x(*i) - mx(*_rest(i, a)) - te.log(se(*_rest(i, a))),
                      name="log_softmax")


@log_softmax.grad
def _(dy, x, axis=-1):
    # d/dx: dy - softmax(x) * sum(dy) along the axis
    a = _axis(x, axis, "log_softmax")
    s = softmax.te_forward(x, axis=axis)
    total = _dot_along(dy, None, a)
    return [te.compute(x.shape, lambda *i: dy(*i) - s(*i) * total(*_rest(i, a)),
                       name="log_softmax_grad")]
