"""nn.Conv2d with a strided 1x1 kernel (a ResNet shortcut) trains through a subsampled input:
strided_slice, then a stride-1 1x1 conv, so that the zero interleave of its d/dx fuses into
the kernel that consumes it; in eval mode it stays one strided conv. Same numbers either way."""

import re

import numpy as np
import pytest

import tvmfront as tvf

nn, ops = tvf.nn, tvf.ops


class Downsample(nn.Module):
    """A ResNet downsampling block without BatchNorm: a 3x3 stride-2 path plus a 1x1 stride-2
    shortcut, added. `raw_shortcut` calls ops.conv2d with the stride itself (the path the
    layer took before)."""

    def __init__(self, raw_shortcut=False):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1)
        self.main = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.short = nn.Conv2d(4, 8, 1, stride=2)
        self.raw_shortcut = raw_shortcut

    def forward(self, x):
        y = ops.relu(self.stem(x))
        if self.raw_shortcut:
            short = ops.bias_add(ops.conv2d(y, self.short.weight, stride=2), self.short.bias,
                                 axis=1)
        else:
            short = self.short(y)
        return ops.add(self.main(y), short)


def _calls(module, function):
    return re.findall(r"call_tir\((?:cls\.)?(\w+),", module._lowered[function].script())


def _train(raw_shortcut, x, y):
    tvf.manual_seed(0)
    model = Downsample(raw_shortcut)
    step = tvf.compile_training(model, nn.MSELoss(), tvf.optim.SGD(lr=0.5),
                                inputs=x.shape, labels=y.shape, records=False)
    losses = [float(step.step(x, y)) for _ in range(2)]
    return step, losses, step.state_dict()


def test_strided_1x1_conv_trains_through_a_subsample_fused_into_its_consumer():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 2, 9, 9)).astype("float32")  # odd size: ceil(9 / 2) rows
    y = rng.standard_normal((4, 8, 5, 5)).astype("float32")
    step, losses, state = _train(False, x, y)
    calls = _calls(step, "loss_adjoint")
    assert "strided_slice" in calls
    # the shortcut's d/dx interleave is computed inside the kernel adding the two paths'
    # gradients (with the stem's relu gradient), not written out at x's size on its own
    assert any("strided_slice_grad" in c and "add" in c for c in calls), calls
    assert "strided_slice_grad" not in calls
    raw_step, raw_losses, raw_state = _train(True, x, y)
    assert not any("strided_slice" in c for c in _calls(raw_step, "loss_adjoint"))
    np.testing.assert_allclose(losses, raw_losses, rtol=1e-5)
    assert losses[1] < losses[0]
    for name, value in raw_state.items():
        np.testing.assert_allclose(state[name], value, rtol=1e-4, atol=1e-6, err_msg=name)


def test_strided_1x1_conv_in_eval_mode_stays_one_strided_conv():
    tvf.manual_seed(0)
    module = tvf.compile_inference(Downsample(), inputs=(2, 2, 8, 8), records=False)
    calls = _calls(module, "predict")
    assert not any("strided_slice" in c for c in calls) and len(calls) == 3, calls
    tvf.manual_seed(0)
    raw = tvf.compile_inference(Downsample(raw_shortcut=True), inputs=(2, 2, 8, 8),
                                records=False)
    x = np.random.default_rng(1).standard_normal((2, 2, 8, 8)).astype("float32")
    np.testing.assert_array_equal(module.predict(x), raw.predict(x))


@pytest.mark.parametrize("stride,padding", [(0, 0), (-1, 0), ((2, 0), 0), (2, -1)])
def test_a_stride_below_one_or_negative_padding_is_refused_by_name(stride, padding):
    # before: ZeroDivisionError, or "kernel larger than padded input" for a negative stride;
    # now the layer refuses it when it is made, and the op when it is called
    what = "padding" if padding == -1 else "stride"
    with pytest.raises(ValueError, match=f"Conv2d: {what} must be at least"):
        nn.Conv2d(4, 8, 1, stride=stride, padding=padding)
    x = np.zeros((2, 4, 8, 8), "float32")
    with pytest.raises(ValueError, match=f"conv2d: {what} must be at least"):
        tvf.ops.conv2d(x, np.zeros((8, 4, 1, 1), "float32"), stride=stride, padding=padding)
