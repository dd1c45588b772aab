"""Selecting and masking: where(cond, a, b), causal and padding masks for attention.

Mask conventions follow PyTorch: an additive mask holds 0 where attention is allowed and
-inf where it is not (nn.Transformer.generate_square_subsequent_mask); a boolean mask holds
True where a position is masked out (nn.MultiheadAttention's attn_mask / key_padding_mask).
"""

import numpy as np

from .._tvm import te, tirx
from ..autodiff import if_else_zero
from ..op import op
from ._broadcast import broadcast_shape, index_into, reduce_to
from ._dims import show


@op
def where(cond, a, b):
    """cond ? a : b elementwise, broadcasting all three (numpy.where, torch.where). cond is
    bool or integer (nonzero is true); the gradient goes to a where cond holds, else to b
    (derived, reduced over broadcast axes)."""
    if "float" in str(cond.dtype):
        raise TypeError(f"where: cond must be bool or integer, got {cond.dtype}")
    if a.dtype != b.dtype:
        raise TypeError(f"where: a is {a.dtype} and b is {b.dtype}; they must match")
    shape = broadcast_shape(broadcast_shape(cond.shape, a.shape), b.shape)

    def body(*i):
        return te.if_then_else(_holds(cond, i), a(*index_into(a.shape, i)),
                               b(*index_into(b.shape, i)))

    return te.compute(shape, body, name="where")


def _holds(cond, i):
    c = cond(*index_into(cond.shape, i))
    return c if str(cond.dtype) == "bool" else c != tirx.const(0, cond.dtype)


@where.grad
def _(dy, cond, a, b):
    # branch-free (autodiff.if_else_zero): dy's index is in bounds either way
    return [None,
            reduce_to(a.shape, dy.shape, lambda i: if_else_zero(_holds(cond, i), dy(*i),
                                                                dy.dtype), name="where_da"),
            reduce_to(b.shape, dy.shape, lambda i: if_else_zero(tirx.Not(_holds(cond, i)),
                                                                dy(*i), dy.dtype),
                      name="where_db")]


@op
def causal_fill(x, value=float("-inf")):
    """x [..., T, S] with `value` where key j comes after query i (j > i): a causal mask
    applied in place of adding causal_mask(T) (the same values: s + 0 = s, s + -inf = -inf),
    for any T and S, symbolic ones included. The gradient passes dy where x was kept."""
    if len(x.shape) < 2:
        raise ValueError(f"causal_fill expects [..., T, S], got {show(x.shape)}")
    fill = tirx.const(value, x.dtype)
    return te.compute(x.shape, lambda *i: te.if_then_else(i[-1] > i[-2], fill, x(*i)),
                      name="causal_fill")


@causal_fill.grad
def _(dy, x, value=float("-inf")):
    zero = tirx.const(0, dy.dtype)
    return [te.compute(x.shape, lambda *i: te.if_then_else(i[-1] > i[-2], zero, dy(*i)),
                       name="causal_fill_grad")]


def causal_mask(size, additive=True, dtype="float32"):
    """[size, size] mask letting position i attend to positions <= i, as a numpy constant.
    additive=True: 0 on and below the diagonal, -inf above (add it to attention scores);
    additive=False: bool, True above the diagonal (the positions masked out)."""
    size = int(size)
    if size < 1:
        raise ValueError(f"causal_mask: size must be >= 1, got {size}")
    above = np.triu(np.ones((size, size), dtype=bool), k=1)
    if not additive:
        return above
    return np.where(above, -np.inf, 0.0).astype(dtype)


@op
def _padding_mask(x, pad_id=None, max_len=None):
    if "int" not in str(x.dtype):
        raise TypeError(f"padding_mask: expects integer tokens or lengths, got {x.dtype}")
    if max_len is not None:
        if len(x.shape) != 1:
            raise ValueError(f"padding_mask: lengths must be [B], got {list(x.shape)}")
        return te.compute((x.shape[0], int(max_len)),
                          lambda b, t: t.astype(x.dtype) >= x[b], name="padding_mask")
    return te.compute(x.shape, lambda *i: x(*i) == tirx.const(pad_id, x.dtype),
                      name="padding_mask")


def padding_mask(tokens=None, pad_id=None, lengths=None, max_len=None):
    """Boolean mask, True at padded positions (PyTorch's key_padding_mask convention), either
    from token ids: padding_mask(tokens [B, T], pad_id) -> tokens == pad_id; or from lengths:
    padding_mask(lengths=[B], max_len=T) -> [B, T], True where t >= length. Works on numpy
    arrays and on symbolic tensors (a runtime input of a compiled model)."""
    if (tokens is None) == (lengths is None):
        raise TypeError("padding_mask: give tokens= (with pad_id=) or lengths= (with max_len=)")
    if tokens is not None:
        if pad_id is None or max_len is not None:
            raise TypeError("padding_mask(tokens, pad_id): pad_id is required, max_len is not "
                            "taken")
        return _padding_mask(tokens, pad_id=int(pad_id))
    if max_len is None or pad_id is not None:
        raise TypeError("padding_mask(lengths=, max_len=): max_len is required, pad_id is not "
                        "taken")
    return _padding_mask(lengths, max_len=int(max_len))
