"""BatchNorm folded into the convolution before it at quantize time (tvmfront/nn/fold.py,
ptq.fold_batchnorms): the folded float model computes what the unfolded one does, only pairs
where the BatchNorm alone reads the convolution's output are folded, and the quantized ResNet
keeps no BatchNorm in float."""

import copy
import sys
import pathlib
import warnings

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ptq
from tvmfront.nn import fold, pruning

nn = tvf.nn
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
SPEC = ("batch", 2, 8, 8)


def _trained_bn(bn, rng):
    """A BatchNorm with statistics and affine parameters far from the identity."""
    c = bn.num_features
    bn.running_mean = rng.normal(0, 1, c).astype(np.float32)
    bn.running_var = rng.uniform(0.2, 3, c).astype(np.float32)
    bn.weight = nn.Parameter(rng.uniform(0.5, 2, c).astype(np.float32))
    bn.bias = nn.Parameter(rng.normal(0, 1, c).astype(np.float32))
    return bn


class Block(nn.Module):
    """conv-BN-ReLU (foldable), conv-BN whose conv output also feeds the sum (not foldable),
    and a conv with a bias before a BN in a Sequential (foldable, bias kept)."""

    def __init__(self):
        super().__init__()
        tvf.manual_seed(0)
        rng = np.random.default_rng(0)
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = _trained_bn(nn.BatchNorm2d(4), rng)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = _trained_bn(nn.BatchNorm2d(4), rng)
        self.tail = nn.Sequential(nn.Conv2d(4, 3, 1), _trained_bn(nn.BatchNorm2d(3), rng),
                                  nn.ReLU())

    def forward(self, x):
        h = tvf.ops.relu(self.bn1(self.conv1(x)))
        c = self.conv2(h)
        return self.tail(self.bn2(c) + c)


def _x(n=5):
    return np.random.default_rng(1).normal(0, 1, (n, 2, 8, 8)).astype(np.float32)


def test_only_a_batchnorm_that_alone_reads_the_conv_output_is_folded():
    model = Block().eval()
    want = tvf.compile_inference(model, SPEC).predict(_x())
    folded = copy.deepcopy(model)
    pairs = ptq.fold_batchnorms(folded, tvf.TensorSpec(SPEC, "float32"))
    assert pairs == [("conv1", "bn1"), ("tail.0", "tail.1")]  # conv2's output is read twice
    assert isinstance(folded.bn1, fold.Identity) and isinstance(folded.tail[1], fold.Identity)
    assert isinstance(folded.bn2, nn.BatchNorm2d)
    assert folded.conv1.bias is not None  # created by the fold
    got = tvf.compile_inference(folded, SPEC).predict(_x())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_convolution_called_twice_is_not_folded():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            rng = np.random.default_rng(2)
            self.conv = nn.Conv2d(2, 2, 3, padding=1)
            self.bn_a = _trained_bn(nn.BatchNorm2d(2), rng)
            self.bn_b = _trained_bn(nn.BatchNorm2d(2), rng)

        def forward(self, x):
            return self.bn_b(self.conv(self.bn_a(self.conv(x))))

    assert ptq.fold_batchnorms(Shared().eval(), tvf.TensorSpec(SPEC, "float32")) == []


def test_a_convolution_placed_twice_in_a_sequential_is_not_folded():
    # Sequential(conv, bn1, relu, conv, bn2): only the conv's first name was spied on, so
    # its second call went unseen; bn1 was folded into it and bn2 read the folded conv
    rng = np.random.default_rng(3)
    tvf.manual_seed(0)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, _trained_bn(nn.BatchNorm2d(2), rng), nn.ReLU(), conv,
                          _trained_bn(nn.BatchNorm2d(2), rng)).eval()
    want = tvf.compile_inference(model, SPEC).predict(_x())
    folded = copy.deepcopy(model)
    assert ptq.fold_batchnorms(folded, tvf.TensorSpec(SPEC, "float32")) == []
    np.testing.assert_array_equal(tvf.compile_inference(folded, SPEC).predict(_x()), want)


def test_a_pruned_convolution_keeps_its_zeros_when_folded():
    model = Block().eval()
    pruning.prune(model, amount=0.5, scope="layer")
    want = tvf.compile_inference(model, SPEC).predict(_x())
    pairs = ptq.fold_batchnorms(model, tvf.TensorSpec(SPEC, "float32"))
    assert ("conv1", "bn1") in pairs
    w = np.asarray(model.conv1.weight)
    assert (w == 0).mean() == 0.5
    np.testing.assert_allclose(tvf.compile_inference(model, SPEC).predict(_x()), want,
                               rtol=1e-5, atol=1e-5)


def test_quantize_reports_the_folded_pairs_and_keeps_the_rest_float():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q = tvf.quantize(Block(), calibration=_x(64), inputs=SPEC)
    assert q.quantization["folded"] == [("conv1", "bn1"), ("tail.0", "tail.1")]
    assert q.quantization["float"] == [("bn2", "BatchNorm2d")]
    assert "'bn2' (BatchNorm2d)" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the three BatchNorms it keeps float
        kept = tvf.quantize(Block(), calibration=_x(64), inputs=SPEC, fold_bn=False)
    assert kept.quantization["folded"] == []
    assert len(kept.quantization["float"]) == 3


def test_fold_refuses_a_batchnorm_of_another_width():
    with pytest.raises(ValueError, match=r"BatchNorm2d\(5\) after a convolution with 4"):
        fold.fold_batchnorm(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(5))


@pytest.mark.slow
def test_resnet_quantized_with_every_batchnorm_folded():
    sys.path.insert(0, str(EXAMPLES))
    import resnet_digits as rd

    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    x_train, x_test = tvf.data.upsample(x_train, 4), tvf.data.upsample(x_test, 4)
    tvf.manual_seed(0)
    model = rd.make_model()
    step = tvf.compile_training(model, nn.CrossEntropyLoss(), rd.make_optimizer(),
                                inputs=("batch", 1, 32, 32), labels=("batch",))
    # 66 steps: after 16 (512 samples, 2 epochs) the eval-mode accuracy was chance, 0.11
    # (the running statistics still 19% = 0.9^16 their initial values), so int8 against
    # float compared two coin tosses and failed on 0.6 points of noise
    tvf.Trainer(step, seed=0, progress=False).fit(x_train, y_train, epochs=3, batch_size=64)
    model.load_state_dict(step.state_dict())
    spec = ("batch", 1, 32, 32)
    float_acc = (tvf.compile_inference(model, spec).predict(x_test).argmax(1) == y_test).mean()
    assert float_acc >= 0.9, float_acc
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays float: no warning
        q = tvf.quantize(model, calibration=x_train[:256], inputs=spec)
    assert q.quantization["float"] == []
    assert len(q.quantization["folded"]) == 9
    int8_acc = (q.predict(x_test).argmax(1) == y_test).mean()
    assert int8_acc >= float_acc - 0.005, (float_acc, int8_acc)
