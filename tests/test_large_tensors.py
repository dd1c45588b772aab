"""Eager kernels over tensors of 2^31 elements or more index in int64 (tvmfront/op.py's
_wide_indices, ops/index.py's _clamp_id). Before: TVM failed to build them ("Literal value
2147549184 exceeds range of int32", naming no op), and take/embedding cast their ids to int32:
id 2^32 + 5 read row 5, id 2^31 crashed the process. Found by a sweep past 2^31 elements."""

import sys

import numpy as np
import psutil
import pytest

import tvmfront as tvf
from tvmfront.ops import index as index_module

ops = tvf.ops
BIG = (65536, 32769)  # 2^31 + 2^16 elements, every dimension small


@pytest.mark.parametrize("name, attrs", [("relu", {}), ("sum", {"axis": 1}), ("max", {}),
                                         ("transpose", {}), ("softmax", {})])
def test_kernels_over_more_than_int32_elements_build(name, attrs):
    # broadcast_to allocates nothing: the kernel is built for the shape, not run
    dtype = "float32" if name == "softmax" else "int8"
    x = np.broadcast_to(np.zeros((), dtype), BIG)
    lib, spec, _, _ = getattr(ops, name)._kernel("forward", [x], attrs)
    assert lib is not None and spec


def test_reshapes_over_more_than_int32_elements_build():
    x = np.broadcast_to(np.int8(0), BIG)
    for shape in ((BIG[1], BIG[0]), (-1,)):
        _, spec, _, _ = ops.reshape._kernel("forward", [x], {"shape": shape})
        assert int(np.prod(spec[0][0])) == x.size


def test_an_output_past_int32_from_small_inputs_builds():
    a, b = np.zeros((BIG[0], 1), np.int8), np.zeros((1, BIG[1]), np.int8)
    lib, spec, _, _ = ops.add._kernel("forward", [a, b], {})
    assert spec[0][0] == BIG


class _Transpose(tvf.nn.Module):
    def forward(self, x):
        return ops.transpose(x)


def test_a_compiled_transpose_over_more_than_int32_elements_builds():
    # TVM's has_reshape_pattern (merge_elementwise) raised on its int32 literal; the whole
    # build failed
    module = tvf.compile_inference(_Transpose(), inputs=tvf.Spec(BIG, "int8"))
    assert module.manifest["outputs"]["shape"] == [BIG[1], BIG[0]]


@pytest.fixture
def int64_from_16_elements(monkeypatch):
    """The int64 path taken from 16 elements, so that small tensors check its values."""
    monkeypatch.setattr(sys.modules["tvmfront.op"], "INT32_ELEMENTS", 16)  # (tvmfront.op:
    # the decorator)
    monkeypatch.setattr(index_module, "INT32_MAX", 15)
    for op in (ops.relu, ops.add, ops.sum, ops.transpose, ops.softmax, ops.take,
               ops.embedding, ops.matmul):
        monkeypatch.setattr(op, "_kernels", {})


def test_int64_indexed_kernels_compute_what_numpy_does(int64_from_16_elements):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7)).astype(np.float32)
    np.testing.assert_array_equal(ops.relu(x), np.maximum(x, 0))
    np.testing.assert_allclose(ops.add(x[:, :1], x[:1]), x[:, :1] + x[:1])
    np.testing.assert_allclose(ops.sum(x, axis=1), x.sum(1), rtol=1e-6)
    np.testing.assert_array_equal(ops.transpose(x), x.T)
    np.testing.assert_allclose(ops.matmul(x, x.T), x @ x.T, rtol=1e-5)
    e = np.exp(x - x.max(1, keepdims=True))
    np.testing.assert_allclose(ops.softmax(x), e / e.sum(1, keepdims=True), rtol=1e-6)
    ids = np.array([5, 0, 19, 19], np.int64)
    table = rng.standard_normal((20, 3)).astype(np.float32)
    np.testing.assert_array_equal(ops.take(table, ids), table[ids])
    np.testing.assert_array_equal(ops.embedding(table, ids), table[ids])
    dw = ops.embedding.vjp(np.ones((4, 3), np.float32), table, ids)[0]
    want = np.zeros_like(table)
    np.add.at(want, ids, 1.0)
    np.testing.assert_array_equal(dw, want)


@pytest.mark.slow
@pytest.mark.skipif(psutil.virtual_memory().available < 10 * 2 ** 30,
                    reason="needs about 5 GiB free (a 4 GiB table)")
def test_take_and_embedding_read_rows_past_2_to_the_32():
    x = np.zeros(2 ** 32 + 16, np.int8)
    ids = np.array([5, 2 ** 31, 2 ** 32 + 5, 2 ** 32 + 15], np.int64)
    x[ids] = [6, 9, 22, 32]  # row 5 read for id 2^32 + 5 before; id 2^31 crashed
    np.testing.assert_array_equal(ops.take(x, ids), [6, 9, 22, 32])
    np.testing.assert_array_equal(ops.embedding(x.reshape(-1, 1), ids).ravel(), [6, 9, 22, 32])


@pytest.mark.slow
@pytest.mark.skipif(psutil.virtual_memory().available < 12 * 2 ** 30,
                    reason="needs about 7 GiB free (two 2 GiB arrays and their copies)")
def test_a_reshape_past_2_to_the_31_keeps_every_value_in_place():
    n = 2 ** 31 + 64
    x = np.zeros(n, np.int8)
    x[[5, 2 ** 31 - 1, 2 ** 31, n - 1]] = [1, 2, 3, 4]
    y = ops.reshape(x, shape=(2, n // 2))
    assert y.shape == (2, n // 2)
    assert [y[0, 5], y[1, 2 ** 30 - 33], y[1, 2 ** 30 - 32], y[1, -1]] == [1, 2, 3, 4]
