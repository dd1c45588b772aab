"""Int8 models whose requantizing epilogue runs inside the GEMM's register tile
(schedule/int8.py, _epilogue_at_tile) against the same quantized model built for "x86:sse",
which has no 8-bit dot product and so runs the plain widening kernels: the same integers, the
same scales, so the same numbers. Each model here gave wrong numbers from the tiled kernels:

- a convolution handing its integers to a padded one (a qchain): the next layer's padded
  input was written only inside its border (896 of 2048 outputs wrong, changing from call to
  call);
- a max-pool epilogue whose windows straddled 1-pixel tiles (odd image widths: 147 of 288).
"""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront._tvm import llvm_has_features
from tvmfront.target import resolve_target

nn = tvf.nn
AVX2 = llvm_has_features(resolve_target("x86"), "avx2")
VNNI = llvm_has_features(resolve_target("x86"), "avx512vnni", "avx512bw")


def conv(c_in, c_out, k=3, **kw):
    return nn.Conv2d(c_in, c_out, k, **kw)


MODELS = {  # name: (layers, input [C, H, W])
    "padded conv after conv, ReLU between": (
        lambda: [conv(16, 16, padding=1), nn.ReLU(), conv(16, 16, padding=1)], (16, 8, 8)),
    "padded conv after conv": (
        lambda: [conv(16, 32, padding=1), conv(32, 32, padding=1)], (16, 16, 16)),
    "padded conv after a pixel-lanes conv": (
        lambda: [conv(1, 16, padding=1), nn.ReLU(), conv(16, 16, padding=1)], (1, 8, 8)),
    "conv, padded conv, Flatten, Linear": (
        lambda: [conv(16, 16, padding=1), nn.ReLU(), conv(16, 16, padding=1), nn.Flatten(),
                 nn.Linear(16 * 4 * 4, 8)], (16, 4, 4)),
    "max-pool over a 7x7 conv output": (
        lambda: [conv(16, 16, padding=1), nn.MaxPool2d(2)], (16, 7, 7)),
    "ReLU, max-pool over a 14x14 conv output": (
        lambda: [conv(16, 16, padding=1), nn.ReLU(), nn.MaxPool2d(2)], (16, 14, 14)),
    "max-pool over a 6x6 1x1-conv output": (
        lambda: [conv(16, 32, k=1), nn.MaxPool2d(2)], (16, 6, 6)),
    "Linear chain ending in one output": (
        lambda: [nn.Linear(17, 64), nn.ReLU(), nn.Linear(64, 1)], (17,)),
    "Linears of 10 and 3 outputs": (
        lambda: [nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3)], (24,)),
}
TARGETS = [
    pytest.param("x86:avx2", marks=pytest.mark.skipif(not AVX2, reason="no AVX2 here")),
    pytest.param("x86", marks=pytest.mark.skipif(not VNNI, reason="no AVX-512 VNNI here")),
]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(MODELS))
def test_tiled_epilogues_give_the_plain_kernels_numbers(name, target, caplog):
    layers, shape = MODELS[name]
    tvf.manual_seed(0)
    model = nn.Sequential(*layers()).eval()
    rng = np.random.default_rng(1)
    calibration = rng.uniform(-2, 3, (32, *shape)).astype(np.float32)
    x = rng.uniform(-2, 3, (3, *shape)).astype(np.float32)
    reduce_range = target == "x86:avx2"  # AVX2's vpmaddubsw: 7-bit activations
    tiled = tvf.quantize(model, calibration=calibration, inputs=("batch", *shape),
                         target=target)
    plain = tvf.quantize(model, calibration=calibration, inputs=("batch", *shape),
                         target="x86:sse", reduce_range=reduce_range)
    scales, same = tiled.quantization["scales"], plain.quantization["scales"]
    assert scales.keys() == same.keys()
    for layer in scales:
        for key in scales[layer]:
            np.testing.assert_array_equal(scales[layer][key], same[layer][key])
    # no rule gave up half-way (a width-1 Linear's epilogue had crashed the int8 rule: its
    # kernel fell back to the generic schedule, 2.2x slower)
    assert "falling back" not in caplog.text, caplog.text
    want = plain.predict(x)
    for _ in range(2):  # an unwritten buffer read gave other numbers each call
        got = tiled.predict(x)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * np.abs(want).max())
