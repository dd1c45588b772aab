"""Loss modules: (prediction, target) -> scalar, mean over the batch."""

import numpy as np

from .._checks import is_whole
from .. import ops
from .._tvm import te
from ..errors import ShapeError
from ..op import op
from ..ops._dims import is_static, same_shape, show
from . import init
from .module import Module


@op
def _labels_to_int32(labels):
    """Narrow or unsigned class ids (int8, uint8, int16, ...) widened to int32, so comparing
    them with a class index never wraps around."""
    return te.compute(labels.shape, lambda *i: labels(*i).astype("int32"), name="labels_to_int32")


class CrossEntropyLoss(Module):
    """Softmax cross entropy of logits [..., C] against integer class labels [...] of any
    integer dtype (a bare label shape compiles to int64, as in PyTorch): [B, C] with [B], or
    a sequence's [B, T, V] with [B, T]. The classes are the LAST axis (PyTorch puts them on
    axis 1; for [B, C] the two agree, for [B, T, V] this is PyTorch's
    cross_entropy(logits.reshape(-1, V), labels.reshape(-1))).

    ignore_index: labels equal to it contribute nothing; the mean is over the others (NaN
      when every label is ignored, as in PyTorch).
    label_smoothing: s in [0, 1]: the target is (1 - s) * one_hot + s / C, as in PyTorch."""

    name = "cross_entropy"
    label_dtype = "int64"

    def __init__(self, weight=None, size_average=None, ignore_index=-100, reduce=None,
                 reduction="mean", label_smoothing=0.0):
        super().__init__()
        # PyTorch's order: its first argument is the class weights
        init.torch_only("CrossEntropyLoss", weight=(weight, [None]),
                        size_average=(size_average, [None]), reduce=(reduce, [None]),
                        reduction=(reduction, ["mean"]))
        if not is_whole(ignore_index):
            raise TypeError(f"CrossEntropyLoss: ignore_index must be an int, got {ignore_index!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must lie in [0, 1], got "
                             f"{label_smoothing}")
        self.ignore_index, self.label_smoothing = int(ignore_index), float(label_smoothing)

    def forward(self, logits, labels):
        kind = np.dtype(labels.dtype).kind
        if kind not in "iu":
            raise ShapeError(f"labels: CrossEntropyLoss takes integer class ids, got dtype "
                             f"{labels.dtype} (use MSELoss for float targets)")
        if len(logits.shape) < 2 or not same_shape(logits.shape[:-1], labels.shape):
            raise ShapeError(f"labels: CrossEntropyLoss takes logits [..., C] and labels [...] "
                             f"(classes on the last axis), got logits {show(logits.shape)} and "
                             f"labels {show(labels.shape)}")
        if isinstance(labels, np.ndarray):  # eager: the values are here (a compiled step
            _check_label_values(labels, logits.shape[-1], self.ignore_index)  # checks its own)
        if labels.dtype not in ("int32", "int64"):
            labels = _labels_to_int32(labels)
        # [B, T, V] -> [B*T, V]; symbolic B or T stay apart (ops.cross_entropy takes [..., V]):
        # a merged B*T would make every kernel after it take B and T as extra scalar
        # arguments, which Relax's Gradient (TVM 0.27) cannot differentiate through
        if len(logits.shape) > 2 and is_static(logits.shape):
            logits = ops.reshape(logits, shape=(-1, logits.shape[-1]))
            labels = ops.reshape(labels, shape=(-1,))
        return ops.cross_entropy(logits, labels, ignore_index=self.ignore_index,
                                 label_smoothing=self.label_smoothing)

    def extra_repr(self):
        return f"ignore_index={self.ignore_index}, label_smoothing={self.label_smoothing}"


def _check_label_values(labels, classes, ignore_index):
    """ShapeError, as a compiled step's, for an eager call's labels outside [0, classes) that
    are not ignore_index: picked by no class, they had given logsumexp alone as their loss
    (PyTorch raises 'Target 4 is out of bounds')."""
    counted = labels[labels != ignore_index]
    if counted.size and (counted.min() < 0 or counted.max() >= classes):
        raise ShapeError(f"labels: CrossEntropyLoss's labels must lie in [0, {classes}) or "
                         f"ignore_index {ignore_index}, got values in [{counted.min()}, "
                         f"{counted.max()}]")


class MSELoss(Module):
    """Mean squared error over all elements."""

    name = "mse"
    label_dtype = None  # the prediction's dtype

    def __init__(self, size_average=None, reduce=None, reduction="mean"):
        super().__init__()
        init.torch_only("MSELoss", size_average=(size_average, [None]), reduce=(reduce, [None]),
                        reduction=(reduction, ["mean"]))

    def forward(self, pred, target):
        return ops.mse_loss(pred, target)
