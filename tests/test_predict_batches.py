"""predict splits samples into compiled batches (zero-padding a fixed batch's last) only where
that leaves every prediction as it is: the output's first axis follows the batch, and no
layer normalises with the batch's statistics in eval mode. Otherwise it runs the samples as
one batch, or names why it cannot (both had been silently wrong: an output [4, B] split
along its 4 rows, a BatchNorm(track_running_stats=False) fed the padding rows)."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import nn, ops


class Rows(nn.Module):
    """[4, B]: 4 fixed queries against every sample, its first axis not the batch."""

    def __init__(self):
        super().__init__()
        self.q = nn.Linear(8, 4)

    def forward(self, x):
        return ops.dense(self.q.weight, x)


def _batch_stats_net():
    tvf.manual_seed(6)
    return nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6, track_running_stats=False),
                         nn.ReLU(), nn.Linear(6, 3))


def _numpy_batch_stats(sd, x):
    h = x.astype(np.float64) @ sd["0.weight"].T + sd["0.bias"]
    h = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5) * sd["1.weight"] + sd["1.bias"]
    return np.maximum(h, 0) @ sd["3.weight"].T + sd["3.bias"]


def test_an_output_whose_first_axis_is_not_the_batch_is_not_split(tmp_path):
    tvf.manual_seed(5)
    fixed = tvf.compile_inference(Rows(), inputs=(4, 8))  # output [4, 4]: 4 by coincidence
    w = fixed.state_dict()["q.weight"]
    x = np.random.default_rng(0).standard_normal((5, 8)).astype("float32")
    np.testing.assert_allclose(fixed.predict(x[:4]), w @ x[:4].T, rtol=1e-5, atol=1e-6)
    with pytest.raises(tvf.ShapeError, match=r"first axis does not follow the batch \(shape "
                                             r"\(4, 4\) at a batch of 4, \(4, 5\) at 5\); pass "
                                             r"exactly 4 samples \(got 5\)"):
        fixed.predict(x)  # had returned (5, 4): rows of W @ x.T and a padded one
    fixed.export(tmp_path / "rows")  # the finding travels with the bundle
    with pytest.raises(tvf.ShapeError, match="first axis does not follow the batch"):
        tvf.load(tmp_path / "rows").predict(x[:3])
    tvf.manual_seed(5)
    any_batch = tvf.compile_inference(Rows(), inputs=("batch", 8))
    np.testing.assert_allclose(any_batch.predict(x, batch_size=2), w @ x.T, rtol=1e-5,
                               atol=1e-6)


def test_batch_statistics_in_eval_mode_keep_the_samples_together():
    x = np.random.default_rng(7).standard_normal((10, 8)).astype("float32")
    fixed = tvf.compile_inference(_batch_stats_net(), inputs=(4, 8))
    sd = fixed.state_dict()
    np.testing.assert_allclose(fixed.predict(x[:4]), _numpy_batch_stats(sd, x[:4]), rtol=1e-4,
                               atol=1e-5)
    with pytest.raises(tvf.ShapeError, match=r"layer '1' \(BatchNorm, track_running_stats="
                                             r"False\) normalises with the batch's statistics"):
        fixed.predict(x[:3])  # had padded the batch with a zero row: off by 0.12
    any_batch = tvf.compile_inference(_batch_stats_net(), inputs=("batch", 8))
    np.testing.assert_allclose(any_batch.predict(x, batch_size=4), _numpy_batch_stats(sd, x),
                               rtol=1e-4, atol=1e-5)  # one batch of 10, not 4 + 4 + 2


def test_independent_samples_are_still_split_and_padded():
    tvf.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model.eval()
    fixed = tvf.compile_inference(model, inputs=(4, 8))
    assert "predict_one_batch" not in fixed.manifest
    x = np.random.default_rng(2).standard_normal((10, 8)).astype("float32")
    whole = np.concatenate([fixed.predict(x[i:i + 4]) for i in (0, 4)] +
                           [fixed.predict(np.concatenate([x[8:], np.zeros((2, 8), "float32")]))[:2]])
    np.testing.assert_array_equal(fixed.predict(x), whole)


class Against(nn.Module):
    """forward(x [batch, 8], keys [4, 8]) -> [batch, 4]: keys is no batch."""

    def forward(self, x, keys):
        return ops.dense(x, keys)


def test_an_input_without_the_batch_axis_is_passed_whole_to_every_batch():
    module = tvf.compile_inference(Against(), inputs=(("batch", 8), (4, 8)))
    rng = np.random.default_rng(3)
    x, keys = rng.standard_normal((5, 8)).astype("float32"), rng.standard_normal(
        (4, 8)).astype("float32")
    np.testing.assert_allclose(module.predict((x, keys), batch_size=2), x @ keys.T, rtol=1e-5,
                               atol=1e-6)  # keys had been split: TVM's match_cast failed
    with pytest.raises(tvf.ShapeError, match=r"keys.*\(4, 8\)"):
        module.predict((x, rng.standard_normal((5, 8)).astype("float32")))  # a raw TVM error


class LogSquare(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 4)

    def forward(self, x):
        return self.lin(ops.log(ops.mul(x, x)))  # finite wherever x is not 0


def test_the_last_partial_batch_is_padded_with_real_samples():
    """Zero padding rows had tripped debug_nans (log(0) on rows nobody passed)."""
    tvf.manual_seed(0)
    module = tvf.compile_inference(LogSquare(), inputs=(4, 8), debug_nans=True)
    x = np.random.default_rng(0).uniform(0.5, 2, (5, 8)).astype("float32")
    out = module.predict(x)
    np.testing.assert_array_equal(out[:4], module.predict(x[:4]))
    np.testing.assert_array_equal(out[4:], module.predict(np.repeat(x[4:], 4, axis=0))[:1])


class SeqFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.mha = nn.MultiheadAttention(4, 2, batch_first=False)

    def forward(self, x):
        return self.mha(x, x, x)[0]


def test_a_sequence_first_model_keeps_its_sequence_whole():
    """axis 0 of a batch_first=False attention is the sequence: predict had split and padded
    it like samples (a T = 3 call of a T = 2 layer off by 0.5)."""
    tvf.manual_seed(2)
    model = SeqFirst()
    x = np.random.default_rng(4).standard_normal((300, 1, 4)).astype("float32")
    fixed = tvf.compile_inference(model, inputs=(2, 1, 4))
    with pytest.raises(tvf.ShapeError, match=r"layer 'mha' takes its input sequence first"):
        fixed.predict(x[:3])
    any_length = tvf.compile_inference(model, inputs=("seq", 1, 4))
    np.testing.assert_allclose(any_length.predict(x), any_length(x), rtol=1e-6)
    np.testing.assert_allclose(any_length.predict(x[:3]), model(x[:3]), rtol=1e-4, atol=1e-5)
