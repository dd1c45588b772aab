"""Which kernels run in parallel on a 2-core machine (params.PARALLEL_MIN_ITERATIONS): the
memory-bound passes of a ResNet train step over [64, 16, 32, 32] activations (BatchNorm's
apply, ReLU's gradient) and of the char Transformer's [16, 64, 128] residual stream do, at
AVX-512's and AVX2's vector widths (counted in hardware vectors: a v64 step on AVX-512 is
four); no kernel of a batch-1
LeNet forward does (a launch costs more than its microseconds of work); the values stay
numpy's."""

import os
import sys

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront._tvm import te
from tvmfront.schedule import default_cpu_schedule

from _scheduled import run, schedule

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples"))
import lenet_digits  # noqa: E402

AVX512 = {"kind": "llvm", "mcpu": "znver4", "num-cores": 2}
AVX2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
RESNET = (64, 16, 32, 32)  # examples/resnet_digits.py's first stage at batch 64
TRANSFORMER = (16, 64, 128)  # examples/char_transformer.py's activations


@pytest.mark.parametrize("shape", [RESNET, TRANSFORMER], ids=["resnet", "transformer"])
@pytest.mark.parametrize("target", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_train_step_sized_elementwise_passes_run_in_parallel(target, shape):
    x, dy = te.placeholder(shape, name="x"), te.placeholder(shape, name="dy")
    dx = ops.relu.te_grad(dy, x, derived=False)[0]
    func, rule, target = schedule([dy, x], dx, target)
    assert "parallel" in rule, rule
    rng = np.random.default_rng(0)
    a, d = (rng.standard_normal(shape).astype("float32") for _ in range(2))
    got, = run(func, target, [d, a], [shape])
    np.testing.assert_array_equal(got, np.where(a > 0, d, 0))


@pytest.mark.parametrize("target", [AVX512, AVX2], ids=["avx512", "avx2"])
def test_batch_one_lenet_forward_stays_on_one_core(target):
    tvf.manual_seed(0)
    module = tvf.compile_inference(lenet_digits.make_model(), inputs=(1, 1, 16, 16),
                                   records=False, target=target)
    rules = {}
    default_cpu_schedule(module._lowered, module._target, report=rules)
    assert rules and not [r for r in rules.values() if "parallel" in r], rules
