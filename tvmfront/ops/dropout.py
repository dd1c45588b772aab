"""Dropout with masks drawn from the counter-based generator (ops/random.py), never stored.

The mask is a pure function of (key, counter, stream) and the element's position, so the
gradient kernel draws the very same mask again from the same runtime inputs: no mask tensor
is saved between the forward and the backward, and a compiled step gets new masks each step
because the counter is one of its inputs.
"""

import numpy as np

from .._tvm import te, tirx
from ..tensor import Tensor, resolve
from ._dims import dims
from .random import bits_of, check_stream, runtime_inputs, signature


def _probability(p):
    if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
        raise TypeError(f"dropout: p must be a number in [0, 1], got {type(p).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also NaN
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    return p


def _threshold(p):
    """Drop where the uint32 word < p * 2**32: keep probability 1 - p up to 2**-32. None for
    p = 1 (no uint32 threshold drops every word: everything is dropped)."""
    t = int(round(p * 2.0 ** 32))
    return None if t >= 2 ** 32 else t


def _mask_scale(x, key, counter, p, stream, name):
    """Function of the output position: 1/(1-p) where the element is kept, else 0."""
    if "float" not in str(x.dtype):
        raise TypeError(f"dropout: x must be a float tensor, got {x.dtype}")
    shape = dims(x.shape)
    word = bits_of(key, counter, shape, check_stream(stream), name=name)
    t = _threshold(p)
    zero = tirx.const(0, x.dtype)
    if t is None:
        return lambda *i: zero
    # 1 / (1 - p) in double, rounded once to x's dtype (torch rounds 1 - p first: <= 1 ulp).
    scale = tirx.const(1.0 / (1.0 - p), x.dtype)
    threshold = tirx.const(t, "uint32")
    return lambda *i: te.if_then_else(word(*i) >= threshold, scale, zero)


def _arrange(x, p, key, counter, stream=0):
    p = _probability(p)
    if p == 0.0:  # torch returns the input unchanged in value; no kernel
        x = resolve(x)
        return x if isinstance(x, Tensor) else np.array(x)
    return (x, *runtime_inputs(key, counter)), {"p": p, "stream": check_stream(stream)}


@signature(_arrange, "dropout")
def dropout(x, key, counter, p=0.5, stream=0):
    """Inverted dropout (torch.nn.functional.dropout in training mode), called as
    dropout(x, p, key, counter, stream=0): each element is zeroed with probability p and the
    kept ones are scaled by 1 / (1 - p); p = 0 returns x, p = 1 zeros. The mask is drawn
    from Philox-4x32-10 at (key, counter, stream) (tvmfront.ops.random): the same inputs give
    the same mask in any process; the gradient, dy * mask / (1 - p), draws it again instead
    of storing it; key and counter get no gradient. In a compiled step key and counter are
    runtime inputs (the seed and the step), so each step draws a new mask.

    >>> y = dropout(np.ones((2, 4), "float32"), 0.5, 7, 0)   # each value 0.0 or 2.0
    """
    factor = _mask_scale(x, key, counter, _probability(p), stream, "dropout")
    # A product, not a select: a dropped inf or NaN gives NaN, as in PyTorch (input * mask).
    return te.compute(x.shape, lambda *i: x(*i) * factor(*i), name="dropout")


@dropout.grad
def _(dy, x, key, counter, p=0.5, stream=0):
    # The forward's mask, drawn again from (key, counter, stream): dx = dy * mask / (1 - p).
    factor = _mask_scale(x, key, counter, p, stream, "dropout_grad")
    return [te.compute(x.shape, lambda *i: dy(*i) * factor(*i), name="dropout_grad"), None, None]

