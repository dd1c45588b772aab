"""BatchNorm's running statistics and its eval-mode normalisation, on NCHW tensors
(BatchNorm1d views [N, C] and [N, C, L] as [N, C, L, 1]).

The running-statistics ops feed only buffers, never the loss: they get no gradient (their
input is detached), so the backward pass has no kernel for them.
"""

from .._tvm import te, tirx
from ..op import op


def _c(v, dtype):
    return tirx.const(v, dtype)


def _channel_mean(x, tag):
    n, c, h, w = (int(d) for d in x.shape)
    inv = _c(1.0 / (n * h * w), x.dtype)
    a = [te.reduce_axis((0, n), f"b{tag}"), te.reduce_axis((0, h), f"h{tag}"),
         te.reduce_axis((0, w), f"w{tag}")]
    return te.compute((c,), lambda ch: te.sum(x[a[0], ch, a[1], a[2]] * inv, axis=a),
                      name=f"bn_mean{tag}")


@op
def running_mean_update(x, running, factor):
    """(1 - factor) * running + factor * mean over (N, H, W); factor: a 0-d tensor."""
    mean = _channel_mean(x, "")
    one = _c(1.0, x.dtype)
    return te.compute(running.shape, lambda ch: (one - factor()) * running[ch]
                      + factor() * mean[ch], name="running_mean")


@op
def running_var_update(x, running, factor):
    """(1 - factor) * running + factor * the unbiased variance over (N, H, W) (PyTorch's
    running estimate: the batch variance times n / (n - 1))."""
    n, c, h, w = (int(d) for d in x.shape)
    count = n * h * w
    mean = _channel_mean(x, "v")
    a = [te.reduce_axis((0, n), "b2"), te.reduce_axis((0, h), "h2"), te.reduce_axis((0, w), "w2")]
    inv = _c(1.0 / max(count - 1, 1), x.dtype)

    def centered_sq(ch, b, i, j):
        v = x[b, ch, i, j] - mean[ch]
        return v * v * inv

    var = te.compute((c,), lambda ch: te.sum(centered_sq(ch, *a), axis=a), name="bn_var_unbiased")
    one = _c(1.0, x.dtype)
    return te.compute(running.shape, lambda ch: (one - factor()) * running[ch]
                      + factor() * var[ch], name="running_var")


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
