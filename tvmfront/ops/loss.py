"""Losses (mean over the batch)."""

from .._tvm import te, tirx
from ..op import op


def _log_softmax_parts(logits):
    b, c = logits.shape
    k1 = te.reduce_axis((0, c), "k1")
    k2 = te.reduce_axis((0, c), "k2")
    mx = te.compute((b,), lambda i: te.max(logits[i, k1], axis=k1), name="row_max")
    se = te.compute((b,), lambda i: te.sum(te.exp(logits[i, k2] - mx[i]), axis=k2), name="row_sum")
    return mx, se


def _check_ce(logits, labels):
    if len(logits.shape) != 2 or len(labels.shape) != 1 or \
            int(labels.shape[0]) != int(logits.shape[0]):
        raise ValueError(f"cross_entropy expects logits [B, C] and labels [B], got "
                         f"{list(logits.shape)} and {list(labels.shape)}")
    if "int" not in str(labels.dtype):
        raise ValueError(f"cross_entropy labels must be integers, got {labels.dtype}")


@op
def cross_entropy(logits, labels):
    """mean_b( logsumexp(logits[b]) - logits[b, labels[b]] ), integer class labels."""
    _check_ce(logits, labels)
    b, c = logits.shape
    mx, se = _log_softmax_parts(logits)
    zero = tirx.const(0, logits.dtype)
    kc = te.reduce_axis((0, c), "kc")
    picked = te.compute((b,), lambda i: te.sum(te.if_then_else(
        kc.var.astype(labels.dtype) == labels[i], logits[i, kc], zero), axis=kc), name="picked")
    kb = te.reduce_axis((0, b), "kb")
    inv_b = tirx.const(1.0 / int(b), logits.dtype)
    return te.compute((), lambda: te.sum((te.log(se[kb]) + mx[kb] - picked[kb]) * inv_b, axis=kb),
                      name="cross_entropy")


@cross_entropy.grad
def _(dy, logits, labels):
    b, c = logits.shape
    mx, se = _log_softmax_parts(logits)
    one, zero = tirx.const(1, logits.dtype), tirx.const(0, logits.dtype)
    inv_b = tirx.const(1.0 / int(b), logits.dtype)
    dlogits = te.compute(logits.shape, lambda i, j: dy() * inv_b * (
        te.exp(logits[i, j] - mx[i]) / se[i]
        - te.if_then_else(j.astype(labels.dtype) == labels[i], one, zero)), name="cross_entropy_grad")
    return [dlogits, None]


@op
def mse_loss(pred, target):
    """mean((pred - target)^2) over all elements."""
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"mse_loss: pred {list(pred.shape)} and target {list(target.shape)} differ")
    axes = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(pred.shape)]
    count = 1
    for d in pred.shape:
        count *= int(d)
    inv = tirx.const(1.0 / count, pred.dtype)

    def sq(*i):
        d = pred(*i) - target(*i)
        return d * d * inv

    return te.compute((), lambda: te.sum(sq(*axes), axis=axes), name="mse_loss")


@mse_loss.grad
def _(dy, pred, target):
    count = 1
    for d in pred.shape:
        count *= int(d)
    k = tirx.const(2.0 / count, pred.dtype)
    dp = te.compute(pred.shape, lambda *i: dy() * k * (pred(*i) - target(*i)), name="mse_dpred")
    dt = te.compute(pred.shape, lambda *i: -dy() * k * (pred(*i) - target(*i)), name="mse_dtarget")
    return [dp, dt]

