"""Integer tensors meet ops as numpy users expect or are refused with a clear error, never cut
to integers or failing inside TVM (found by a dtype sweep against PyTorch):

- a non-integral scalar with an integer x (mul_scalar(int32 [1, 2, 3], 1.5) gave [1, 2, 3];
  a compiled x / 2 gave 0) and an integer mean (cut to an integer; PyTorch refuses it) are
  TypeErrors; so are float-only ops on integers (sigmoid, exp, log, softmax, integer true
  division: raw TVM errors before);
- labels and ids of a narrow integer dtype index past its range: cross_entropy's int8 labels
  over 300 classes picked the wrong logit (the class index cast to int8 wrapped), uint8 ones
  failed on ignore_index -100, one_hot(int8 5, depth=300) also hit 261, and take/embedding
  with int8 ids of a 300-row table failed in TVM.
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

nn = tvf.nn
X = np.array([1, 2, 3], np.int32)


@pytest.mark.parametrize("call", [
    lambda: ops.mul_scalar(X, value=1.5), lambda: ops.add_scalar(X, value=0.5),
    lambda: ops.rsub_scalar(X, value=0.25), lambda: ops.clip(X, lo=0.5, hi=2.0),
    lambda: ops.clip(X, lo=0, hi=2.5)], ids=["mul", "add", "rsub", "clip lo", "clip hi"])
def test_a_fractional_scalar_with_integers_is_refused(call):
    with pytest.raises(TypeError, match=r"is no integer and x is int32"):
        call()


def test_integral_scalars_keep_integers():
    np.testing.assert_array_equal(ops.mul_scalar(X, value=2.0), [2, 4, 6])
    np.testing.assert_array_equal(ops.clip(X, lo=2.0, hi=2.0), [2, 2, 2])
    assert np.asarray(ops.mul_scalar(X, value=2.0)).dtype == np.int32


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "exp", "log", "sqrt", "softmax",
                                  "log_softmax", "rdiv_scalar", "pow_scalar", "mean"])
def test_float_only_ops_refuse_integers(name):
    with pytest.raises(TypeError, match=r"x must be a float tensor, got int32"):
        getattr(ops, name)(X.reshape(1, 3))
    with pytest.raises(TypeError, match=r"true division of integers"):
        ops.div(X, X)


def test_a_compiled_integer_division_is_refused_when_compiling():
    class Half(nn.Module):
        def forward(self, x):
            return x / 2

    with pytest.raises(TypeError, match=r"is no integer and x is int32"):
        tvf.compile_inference(Half(), inputs=tvf.TensorSpec((3,), "int32"))


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint32"])
def test_narrow_labels_and_ids_index_past_their_range(dtype):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 300)).astype(np.float32)
    labels = np.array([0, 5, 100, 127])
    want = float(ops.cross_entropy(logits, labels))
    assert float(ops.cross_entropy(logits, labels.astype(dtype))) == pytest.approx(want, rel=1e-6)
    (dlogits,) = ops.cross_entropy.vjp(np.float32(1), logits, labels.astype(dtype))[:1]
    np.testing.assert_allclose(dlogits, ops.cross_entropy.vjp(np.float32(1), logits, labels)[0],
                               rtol=1e-6)
    hot = np.asarray(ops.one_hot(labels.astype(dtype), depth=300))
    np.testing.assert_array_equal(hot, np.eye(300, dtype=np.float32)[labels])
    table = np.arange(600, dtype=np.float32).reshape(300, 2)
    ids = np.array([100, 5], dtype)
    np.testing.assert_array_equal(ops.take(table, ids), table[[100, 5]])
    np.testing.assert_array_equal(ops.embedding(table, ids), table[[100, 5]])
