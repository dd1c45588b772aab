"""Losses (mean over the batch)."""

from .._tvm import te, tirx
from ..errors import ShapeError
from ..op import op
from .index import _index_op
from .softmax_axis import _max_and_sumexp
from ._dims import reciprocal, same_shape, show, size, static


def _check_ce(logits, labels):
    if len(logits.shape) < 2 or len(labels.shape) != len(logits.shape) - 1 or \
            not same_shape(labels.shape, logits.shape[:-1]):
        raise ValueError(f"cross_entropy expects logits [B, C] and labels [B] (or [..., C] and "
                         f"[...]), got {show(logits.shape)} and {show(labels.shape)}")
    if "int" not in str(labels.dtype):
        raise ValueError(f"cross_entropy labels must be integers, got {labels.dtype}")


def _label(labels, i):
    return labels(*i).astype("int64")


def _lead_axes(labels, tag):
    return [te.reduce_axis((0, d), f"{tag}{j}") for j, d in enumerate(labels.shape)]


def _valid_count(labels, ignore_index, dtype):
    """(valid(*i): 1 where labels[i] != ignore_index else 0, their count as a 0-d tensor)."""
    # labels compared as int64 (_label): ignore_index -100 is no uint8, and a class index
    # cast to int8 wrapped past 127 (300 classes: the wrong logit picked)
    ignore = tirx.const(ignore_index, "int64")
    one, zero = tirx.const(1, dtype), tirx.const(0, dtype)

    def valid(*i):
        return te.if_then_else(_label(labels, i) != ignore, one, zero)

    kb = _lead_axes(labels, "kv")
    count = te.compute((), lambda: te.sum(valid(*kb), axis=kb), name="valid_count")
    return valid, count


def _spread(label_smoothing, logits):
    c = static(logits.shape[-1], "cross_entropy", "the class count")
    return tirx.const(label_smoothing / c, logits.dtype)


# eagerly a label out of range is a ValueError, as in PyTorch (it had given a loss silently;
# compiled steps check theirs in runtime/modules.py)
@_index_op(1, lambda arrays, attrs: arrays[0].shape[-1], what="label", reads=False,
           ignored="ignore_index")
def cross_entropy(logits, labels, ignore_index=-100, label_smoothing=0.0):
    """Mean over the samples whose label is not ignore_index of
    logsumexp(logits[b]) - (1 - s) * logits[b, labels[b]] - s * mean_c(logits[b, c]),
    s = label_smoothing: PyTorch's cross_entropy (0/0 = NaN when every label is ignored).
    logits [B, C] with labels [B], or [..., C] with [...] (e.g. a sequence's [B, T, V] with
    [B, T], no reshape: a symbolic B and T stay two plain dimensions)."""
    _check_ce(logits, labels)
    lead, c = tuple(logits.shape[:-1]), logits.shape[-1]
    mx, _, se = _max_and_sumexp(logits, len(logits.shape) - 1)  # over the classes
    zero = tirx.const(0, logits.dtype)
    kc = te.reduce_axis((0, c), "kc")
    picked = te.compute(lead, lambda *i: te.sum(te.if_then_else(
        kc.var.astype("int64") == _label(labels, i), logits(*i, kc), zero), axis=kc),
        name="picked")
    keep = tirx.const(1.0 - label_smoothing, logits.dtype)
    # Each row's loss from the gaps to its max, no term of the logits' size: log(se) + max -
    # picked had rounded the loss to ulp(max) (logits [1e6, 1e6 - 1, 0, 0]: 0.3125, not
    # 0.31326; [-1e30] * 4: 0, not log 4), and the smoothing's sum of the logits cancelled
    # alike (-2.7e22 compiled for [-1e30] * 4). With keep + C * spread = 1:
    # lse - keep * picked - spread * sum_c x_c = log(se) + keep * (max - picked) + spread *
    # sum_c (max - x_c).
    if label_smoothing:
        ks = te.reduce_axis((0, c), "ks")
        spread = _spread(label_smoothing, logits)
        row_gap = te.compute(lead, lambda *i: te.sum(mx(*i) - logits(*i, ks), axis=ks),
                             name="row_logit_gap")

        def term(*i):
            return te.log(se(*i)) + keep * (mx(*i) - picked(*i)) + spread * row_gap(*i)
    else:
        def term(*i):
            return te.log(se(*i)) + (mx(*i) - picked(*i))
    valid, count = _valid_count(labels, ignore_index, logits.dtype)
    kb = _lead_axes(labels, "kb")
    # a select, not valid * term: an ignored row's term may be NaN (logits all -inf there, a
    # padded position's), and 0 * NaN had made the loss NaN (PyTorch skips the row)
    total = te.compute((), lambda: te.sum(te.if_then_else(valid(*kb) > zero, term(*kb), zero),
                                          axis=kb), name="ce_total")
    return te.compute((), lambda: total() / count(), name="cross_entropy")


@cross_entropy.grad
def _(dy, logits, labels, ignore_index=-100, label_smoothing=0.0):
    _, e, se = _max_and_sumexp(logits, len(logits.shape) - 1)  # over the classes
    keep = tirx.const(1.0 - label_smoothing, logits.dtype)
    spread = _spread(label_smoothing, logits)
    zero = tirx.const(0, logits.dtype)
    valid, count = _valid_count(labels, ignore_index, logits.dtype)
    one = tirx.const(1.0, logits.dtype)
    lead = tuple(logits.shape[:-1])
    # per row: the sample's weight dy / count (0 for an ignored row) and 1 / sum(exp), so
    # that each logit takes multiplies only (two divisions per element cost as much as the
    # row's exp). An ignored row's weight is 0, not 0 * dy / count: when every label is
    # ignored the loss is 0/0 = NaN but the gradient 0, as PyTorch's (a NaN gradient would
    # make every parameter NaN after one step, e.g. on a batch of padding tokens only)
    weight = te.compute(lead, lambda *r: te.if_then_else(valid(*r) > zero, dy() / count(),
                                                         zero), name="ce_row_weight")
    inv_se = te.compute(lead, lambda *r: one / se(*r), name="ce_inv_sumexp")
    dlogits = te.compute(logits.shape, lambda *i: weight(*i[:-1]) * (
        e(*i) * inv_se(*i[:-1]) - spread
        - te.if_then_else(i[-1].astype("int64") == _label(labels, i[:-1]), keep, zero)),
        name="cross_entropy_grad")
    return [dlogits, None]


@op
def mse_loss(pred, target):
    """mean((pred - target)^2) over all elements."""
    if not same_shape(pred.shape, target.shape):
        # a ShapeError, as cross_entropy's labels (MSELoss's targets are the step's labels)
        raise ShapeError(f"mse_loss: pred {show(pred.shape)} and target {show(target.shape)} "
                         f"differ")
    axes = [te.reduce_axis((0, d), f"r{i}") for i, d in enumerate(pred.shape)]
    inv = reciprocal(size(pred.shape), pred.dtype, "mse_loss")

    def sq(*i):
        d = pred(*i) - target(*i)
        return d * d * inv

    return te.compute((), lambda: te.sum(sq(*axes), axis=axes), name="mse_loss")


@mse_loss.grad
def _(dy, pred, target):
    k = tirx.const(2.0, pred.dtype) * reciprocal(size(pred.shape), pred.dtype, "mse_loss")
    dp = te.compute(pred.shape, lambda *i: dy() * k * (pred(*i) - target(*i)), name="mse_dpred")
    dt = te.compute(pred.shape, lambda *i: -dy() * k * (pred(*i) - target(*i)), name="mse_dtarget")
    return [dp, dt]

