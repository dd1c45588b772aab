"""Loss modules: (prediction, target) -> scalar, mean over the batch."""

from .. import ops
from .module import Module


class CrossEntropyLoss(Module):
    """Softmax cross entropy of logits [B, C] against integer labels [B]."""

    name = "cross_entropy"
    label_dtype = "int64"

    def forward(self, logits, labels):
        return ops.cross_entropy(logits, labels)


class MSELoss(Module):
    """Mean squared error over all elements."""

    name = "mse"
    label_dtype = None  # the prediction's dtype

    def forward(self, pred, target):
        return ops.mse_loss(pred, target)
