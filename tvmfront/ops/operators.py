"""Python operators (+ - * / ** @, [], reshape) on symbolic Tensors, dispatched to ops.

They are attached here, not in tensor.py, because the op layer sits above the tensor layer.
"""

from numbers import Number

from ..tensor import Tensor
from . import elementwise as ew
from .join import getitem
from .linalg import matmul
from .shape import reshape


def _binary(tensor_op, scalar_op, reflected_scalar_op=None):
    def forward(self, other):
        if isinstance(other, Number):
            return scalar_op(self, other)
        return tensor_op(self, other)

    def reflected(self, other):
        if isinstance(other, Number):
            return (reflected_scalar_op or scalar_op)(self, other)
        return tensor_op(other, self)

    return forward, reflected


def install_operators():
    pairs = {
        "add": _binary(ew.add, lambda x, v: ew.add_scalar(x, value=float(v))),
        "sub": _binary(ew.sub, lambda x, v: ew.add_scalar(x, value=-float(v)),
                       lambda x, v: ew.rsub_scalar(x, value=float(v))),
        "mul": _binary(ew.mul, lambda x, v: ew.mul_scalar(x, value=float(v))),
        "truediv": _binary(ew.div, lambda x, v: ew.mul_scalar(x, value=1.0 / float(v)),
                           lambda x, v: ew.rdiv_scalar(x, value=float(v))),
    }
    for name, (fwd, refl) in pairs.items():
        setattr(Tensor, f"__{name}__", fwd)
        setattr(Tensor, f"__r{name}__", refl)
    Tensor.__neg__ = lambda self: ew.neg(self)
    Tensor.__pow__ = lambda self, e: ew.pow_scalar(self, exponent=float(e))
    Tensor.__getitem__ = getitem
    Tensor.__matmul__ = lambda self, other: matmul(self, other)
    Tensor.reshape = lambda self, *shape: reshape(
        self, shape=tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list))
        else shape)
