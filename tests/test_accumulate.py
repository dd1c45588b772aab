"""Gradient accumulation: accumulate(x, y) per micro-batch, then apply() is one optimizer step
with the mean of their gradients, the same as one step on the whole batch."""

import numpy as np
import pytest

import tvmfront as tvf

nn = tvf.nn


def _compiled(batch, accumulate=True):
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    return tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.AdamW(0.01, max_norm=1.0),
                                inputs=(batch, 6), labels=(batch,), accumulate=accumulate)


def test_four_micro_batches_step_like_the_whole_batch():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)).astype("float32"), np.arange(16) % 3
    whole, micro = _compiled(16), _compiled(4)
    for _ in range(3):
        loss = whole.step(x, y)
        losses = [micro.accumulate(x[i:i + 4], y[i:i + 4]) for i in range(0, 16, 4)]
        micro.apply()
        assert np.isclose(np.mean(losses), loss, rtol=1e-5)
    assert micro.step_count == whole.step_count == 3
    for name, value in whole.state_dict().items():
        np.testing.assert_allclose(micro.state_dict()[name], value, rtol=1e-4, atol=1e-6,
                                   err_msg=name)


def test_accumulation_misuse_is_a_clear_error():
    x, y = np.zeros((4, 6), "float32"), np.zeros(4, "int64")
    plain = _compiled(4, accumulate=False)
    with pytest.raises(RuntimeError, match="accumulate=True"):
        plain.accumulate(x, y)
    module = _compiled(4)
    with pytest.raises(RuntimeError, match="no gradients accumulated"):
        module.apply()
    module.accumulate(x, y)
    with pytest.raises(RuntimeError, match="call apply"):
        module.step(x, y)
    with pytest.raises(TypeError, match="unknown keyword"):
        module.apply(momentum=0.5)


def test_micro_batches_draw_their_own_dropout_masks():
    tvf.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1),
                                  inputs=(4, 6), labels=(4,), accumulate=True)
    x, y = np.random.default_rng(0).standard_normal((4, 6)).astype("float32"), np.arange(4) % 3
    first, second = module.accumulate(x, y), module.accumulate(x, y)
    assert first != second  # the same data, other masks
    module.apply()
    assert module.step_count == 1
