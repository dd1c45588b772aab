"""Loss modules: (prediction, target) -> scalar, mean over the batch."""

import numpy as np

from .. import ops
from .._tvm import te
from ..errors import ShapeError
from ..op import op
from .module import Module


@op
def _labels_to_int32(labels):
    """Narrow or unsigned class ids (int8, uint8, int16, ...) widened to int32, so comparing
    them with a class index never wraps around."""
    return te.compute(labels.shape, lambda *i: labels(*i).astype("int32"), name="labels_to_int32")


class CrossEntropyLoss(Module):
    """Softmax cross entropy of logits [B, C] against integer class labels [B] of any integer
    dtype (a bare label shape compiles to int64, as in PyTorch)."""

    name = "cross_entropy"
    label_dtype = "int64"

    def forward(self, logits, labels):
        kind = np.dtype(labels.dtype).kind
        if kind not in "iu":
            raise ShapeError(f"labels: CrossEntropyLoss takes integer class ids, got dtype "
                             f"{labels.dtype} (use MSELoss for float targets)")
        if labels.dtype not in ("int32", "int64"):
            labels = _labels_to_int32(labels)
        return ops.cross_entropy(logits, labels)


class MSELoss(Module):
    """Mean squared error over all elements."""

    name = "mse"
    label_dtype = None  # the prediction's dtype

    def forward(self, pred, target):
        return ops.mse_loss(pred, target)
