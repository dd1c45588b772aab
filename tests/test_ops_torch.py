"""A few ops whose semantics are PyTorch's, against PyTorch itself (float64): gelu's tanh
form, log_softmax / softmax over a middle axis, layer_norm over the last two axes, take's
scatter-add gradient with repeated indices, embedding with padding_idx."""

import numpy as np
import pytest

from _torch import run_torch
from tvmfront import ops


@pytest.fixture(scope="module")
def case(request, tmp_path_factory):
    rng = np.random.default_rng(0)
    inputs = {
        "x": rng.standard_normal((3, 7)) * 3,
        "x3": rng.standard_normal((2, 5, 4)) * 4,
        "gamma": rng.standard_normal((5, 4)), "beta": rng.standard_normal((5, 4)),
        "table": rng.standard_normal((3, 6)),
        "take_ids": np.array([4, 1, 4, 4, 0], np.int64),       # 4 three times
        "take_dy": rng.standard_normal((3, 5)),
        "weight": rng.standard_normal((6, 3)),
        "emb_ids": np.array([[2, 5, 5], [5, 0, 2]], np.int64),
        "emb_dy": rng.standard_normal((2, 3, 3)),
        "padding_idx": np.array(5),
    }
    return inputs, run_torch(request, "PyTorch parity of gelu/log_softmax/layer_norm/take/"
                             "embedding", "_torch_ops.py", tmp_path_factory.mktemp("torch_ops"),
                             **inputs)


def _close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_gelu_and_silu(case):
    i, ref = case
    _close(ops.gelu(i["x"], approximate="tanh"), ref["gelu_tanh"])
    _close(ops.gelu(i["x"]), ref["gelu_none"])
    _close(ops.silu(i["x"]), ref["silu"])
    # the two forms differ by more than the tolerance: the comparison tells them apart
    assert np.abs(ref["gelu_tanh"] - ref["gelu_none"]).max() > 1e-5


def test_log_softmax_softmax_over_axis_1(case):
    i, ref = case
    _close(ops.log_softmax(i["x3"], axis=1), ref["log_softmax"])
    _close(ops.softmax(i["x3"], axis=1), ref["softmax"])


def test_layer_norm_over_last_two_axes(case):
    i, ref = case
    _close(ops.layer_norm(i["x3"], i["gamma"], i["beta"]), ref["layer_norm"])


def test_take_gradient_with_repeated_indices(case):
    i, ref = case
    _close(ops.take.vjp(i["take_dy"], i["table"], i["take_ids"], axis=1)[0], ref["take_grad"])


def test_embedding_padding_idx(case):
    i, ref = case
    pad = int(i["padding_idx"])
    _close(ops.embedding(i["weight"], i["emb_ids"], padding_idx=pad), ref["emb"])
    grad = ops.embedding.vjp(i["emb_dy"], i["weight"], i["emb_ids"], padding_idx=pad)[0]
    _close(grad, ref["emb_grad"])
    assert not ref["emb_grad"][pad].any() and ref["emb_grad"][2].any()
