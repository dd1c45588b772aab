"""BatchNorm's running statistics and its eval-mode normalisation, on NCHW tensors
(BatchNorm1d views [N, C] and [N, C, L] as [N, C, L, 1]).

The running-statistics ops feed only buffers, never the loss: they get no gradient (their
input is detached), so the backward pass has no kernel for them.
"""

from .._tvm import te, tirx
from ..op import op
from ._dims import dims, reciprocal, size


def _c(v, dtype):
    return tirx.const(v, dtype)


@op
def running_mean_update(moments, running, factor):
    """(1 - factor) * running + factor * the batch mean (bn_moments' row 0); factor: a 0-d
    tensor."""
    one = _c(1.0, running.dtype)
    return te.compute(running.shape, lambda ch: (one - factor()) * running[ch]
                      + factor() * moments[0, ch], name="running_mean")


@op
def running_var_update(x, moments, running, factor):
    """(1 - factor) * running + factor * the unbiased variance over (N, H, W) of x (x is read
    for its count only; the variance is bn_moments' row 1): PyTorch's running
    estimate, the batch variance times n / (n - 1). With a symbolic N the count is known at
    run time only: a count of 1, which PyTorch refuses (and a fixed batch refuses when
    traced), takes the variance as 0 here (n - 1 is taken as at least 1), so the running
    variance decays by (1 - factor) instead of becoming NaN."""
    n, c, h, w = dims(x.shape)
    count = size((n, h, w))
    if isinstance(count, int):
        unbias = _c(count / max(count - 1, 1), running.dtype)
    else:
        unbias = count.astype(running.dtype) * reciprocal(
            tirx.max(count - 1, tirx.const(1, "int64")), running.dtype)
    one = _c(1.0, running.dtype)
    return te.compute(running.shape, lambda ch: (one - factor()) * running[ch]
                      + factor() * moments[1, ch] * unbias, name="running_var")


@op
def increment(count):
    """count + 1 (num_batches_tracked, int64)."""
    return te.compute(count.shape, lambda *i: count(*i) + _c(1, count.dtype), name="increment")


@op
def momentum_factor(like, momentum=0.1):
    """momentum as a 0-d tensor of like's dtype: the running statistics' weight. A kernel, not
    a numpy constant: a traced graph holds a float64 numpy scalar as a float32 Relax constant,
    which would round a float64 model's momentum. (`like` is read for its dtype only; not
    num_batches_tracked: an int64 parameter keeps a kernel's indices from narrowing.)"""
    return te.compute((), lambda: _c(momentum, like.dtype), name="momentum")


@op
def cumulative_factor(count, dtype="float32"):
    """1 / count as a float: momentum=None's cumulative moving average."""
    return te.compute((), lambda: _c(1.0, dtype) / count().astype(dtype), name="cumulative_factor")


@op
def batch_norm_eval(x, mean, var, gamma, beta, eps=1e-5):
    """NCHW normalisation with given statistics: each sample on its own (eval mode)."""
    return te.compute(x.shape, lambda b, ch, i, j: (x[b, ch, i, j] - mean[ch]) * te.rsqrt(
        var[ch] + _c(eps, x.dtype)) * gamma[ch] + beta[ch], name="batch_norm_eval")
