"""int8 on aarch64 with the ARMv8.2 dot product (target "aarch64:dotprod"): the packed kernels
tensorize with sdot (compiled here), tvf.quantize picks 7-bit activations for it, and an
exported int8 bundle runs under qemu-aarch64 with the x86 module's predictions. Plain
"aarch64" (NEON only) has no 8-bit dot product and keeps the widening kernels."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import schedule
from tvmfront.schedule import int8 as si
from tvmfront.target import resolve_target
from tvmfront.testing import qemu as cross

from test_arm import arm_env, cross_cxx  # noqa: F401  (fixtures: qemu, sysroot, wheels)
from test_int8_schedule import build, count, operands

DOTPROD = "aarch64:dotprod"


@pytest.mark.parametrize("kind,x_shape,w_shape", [("dense", (8, 64), (32, 64)),
                                                  ("conv", (2, 8, 6, 6), (16, 8, 3, 3))])
def test_dotprod_targets_compile_sdot(kind, x_shape, w_shape):
    x, w, b, m = operands(np.random.default_rng(1), x_shape, w_shape)
    ex, rule, fallbacks, _ = build(kind, x, w, b, m, resolve_target(DOTPROD), x_max=127)
    assert rule.startswith("tvmfront.int8") and "sdot" in rule, rule
    assert not fallbacks and count(ex, "sdot") > 0


def test_sdot_needs_7_bit_activations_and_the_extension():
    with pytest.raises(schedule.NotApplicable, match="sdot multiplies signed bytes"):
        si.dot_intrinsic(resolve_target(DOTPROD), 255)
    with pytest.raises(schedule.NotApplicable, match="no 8-bit dot-product"):
        si.dot_intrinsic(resolve_target("aarch64"), 127)


def _model():
    tvf.manual_seed(0)
    return tvf.nn.Sequential(tvf.nn.Conv2d(1, 16, 3, padding=1), tvf.nn.ReLU(),
                             tvf.nn.Flatten(), tvf.nn.Linear(1024, 32), tvf.nn.ReLU(),
                             tvf.nn.Linear(32, 10))


@pytest.mark.slow  # cross-compiles an int8 model and runs it under qemu: ~30 s
def test_int8_bundle_runs_on_aarch64_with_x86_predictions(tmp_path, arm_env):  # noqa: F811
    x = tvf.data.load_digits()[0][:96]
    calibration, x_eval = x[:64], x[64:]
    host = tvf.quantize(_model(), calibration=calibration, inputs=("batch", 1, 8, 8),
                        target="x86", reduce_range=True)
    arm = tvf.quantize(_model(), calibration=calibration, inputs=("batch", 1, 8, 8),
                       target=DOTPROD)
    assert {s["input_qmax"] for s in arm.quantization["scales"].values()} == {127}
    assert not arm.build_info["fallback_kernels"]
    path = arm.export(str(tmp_path / "int8_arm"))
    outputs, report = cross.run_bundles_aarch64(
        [{"bundle": path, "op": "predict", "x": "x", "out": "pred"}], {"x": x_eval})
    print(f"qemu run: {report}")
    expected = host.predict(x_eval)
    # the same integers; the float epilogue may round differently (FMA contraction)
    np.testing.assert_allclose(outputs["pred"], expected, rtol=1e-3, atol=1e-3)
    assert (outputs["pred"].argmax(1) == expected.argmax(1)).all()
