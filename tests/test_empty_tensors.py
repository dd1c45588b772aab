"""Eager ops on arrays with a dimension of size 0 give numpy's shapes, or a ShapeError naming
the op: found by a sweep of degenerate shapes. Before, a reshape or flatten of an empty array
failed inside TVM ("Divide by zero", a raw InternalError), flatten of (0, 2, 3) would have been
(0, 0), and mse_loss, layer_norm and batch_norm over no elements raised a bare
ZeroDivisionError."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.errors import ShapeError

ops = tvf.ops


@pytest.mark.parametrize("shape, target", [((0, 3), (-1,)), ((0, 3), (3, 0)),
                                           ((2, 0, 4), (0, 8)), ((2, 0, 4), (4, -1, 2))])
def test_reshapes_of_empty_arrays_have_numpys_shapes(shape, target):
    x = np.zeros(shape, np.float32)
    assert ops.reshape(x, shape=target).shape == x.reshape(target).shape


def test_flatten_keeps_the_feature_count_of_an_empty_batch():
    assert ops.flatten(np.zeros((0, 2, 3), np.float32)).shape == (0, 6)  # as torch.flatten
    assert tvf.nn.Flatten()(np.zeros((0, 2, 3), np.float32)).shape == (0, 6)


@pytest.mark.parametrize("name, call", [
    ("mse_loss", lambda z: ops.mse_loss(z(0, 3), z(0, 3))),
    ("mse_loss", lambda z: ops.mse_loss.vjp(np.array(1, np.float32), z(0, 3), z(0, 3))),
    ("layer_norm", lambda z: ops.layer_norm(z(3, 0), z(0), z(0))),
    ("batch_norm", lambda z: ops.batch_norm(z(0, 2, 3, 3), np.ones(2, np.float32), z(2))),
])
def test_means_over_no_elements_are_shape_errors_naming_the_op(name, call):
    with pytest.raises(ShapeError, match=f"{name}: averages over no elements"):
        call(lambda *s: np.zeros(s, np.float32))


def test_an_ambiguous_minus_one_on_an_empty_array_is_refused_as_numpy_does():
    for shape, target in (((0, 3), (0, -1)), ((3, 0), (-1, 0))):
        with pytest.raises(ShapeError, match="cannot infer the -1"):  # it had been (0, 0)
            ops.reshape(np.zeros(shape, np.float32), shape=target)
