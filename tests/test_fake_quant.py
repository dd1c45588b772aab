"""ops.fake_quant: its straight-through gradient against its definition and against PyTorch
(forward and gradient, bit for bit in float32, ties included); its bad inputs. The forward
against numpy is in op_specs.py (rows fake_quant-*)."""

import json

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops
from tvmfront.ops import quant
from _torch import run_torch


def _ties_and_clamps(rng, shape, scale):
    """Exact ties (k + 1/2) * scale, values far outside the range, and normal draws."""
    ties = (rng.integers(-200, 200, size=shape) + 0.5) * scale
    wide = rng.standard_normal(shape) * 300 * scale
    pick = rng.integers(0, 3, size=shape)
    return np.where(pick == 0, ties, np.where(pick == 1, wide, wide / 50)).astype(np.float32)


def _cases():
    rng = np.random.default_rng(0)
    out = []
    # per tensor, int8 and uint8 ranges, zero points 0 and nonzero
    for qmin, qmax, zp in ((-128, 127, 0), (0, 255, 37), (-8, 7, -2)):
        x = _ties_and_clamps(rng, (5, 7), 0.125)
        out.append((x, np.float32(0.125), np.int32(zp), {"qmin": qmin, "qmax": qmax,
                                                          "axis": None}))
    # per channel along axis 0 (a weight) and axis 1 (NCHW activations)
    w = _ties_and_clamps(rng, (4, 3, 2, 2), 0.25)
    out.append((w, np.float32([0.25, 0.5, 0.01, 2.0]), np.zeros(4, np.int32),
                {"qmin": -128, "qmax": 127, "axis": 0}))
    a = _ties_and_clamps(rng, (2, 3, 4, 4), 0.5)
    out.append((a, np.float32([0.5, 0.0625, 1.5]), np.int32([0, 100, 255]),
                {"qmin": 0, "qmax": 255, "axis": 1}))
    return out


def _definition(x, scale, zp, qmin, qmax, axis):
    """STE: dy where round-half-even(x / scale) + zp is in [qmin, qmax] (before clamping)."""
    view = [1] * x.ndim
    if axis is not None:
        view[axis] = -1
    s = np.asarray(scale, np.float32).reshape(view)
    q = np.rint(x * (np.float32(1) / s)) + np.asarray(zp).reshape(view)
    return (q >= qmin) & (q <= qmax)


@pytest.mark.parametrize("k", range(5))
def test_ste_gradient_is_its_definition(k):
    x, scale, zp, attrs = _cases()[k]
    dy = np.random.default_rng(k).standard_normal(x.shape).astype(np.float32)
    grad_x, grad_s, grad_z = ops.fake_quant.vjp(dy, x, scale, zp, **attrs)
    inside = _definition(x, scale, zp, **attrs)
    assert 0 < inside.mean() < 1  # both sides of the clamp occur
    np.testing.assert_array_equal(grad_x, np.where(inside, dy, 0))
    # scale and zero point are not learned: zero gradients
    assert not np.any(grad_s) and not np.any(grad_z)


def test_rounds_half_to_even():
    x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997])
    got = ops.fake_quant(x, np.float32(1.0), np.int32(0), qmin=-128, qmax=127)
    np.testing.assert_array_equal(got, np.float32([0, 2, 2, 0, -2, -2, 0]))


@pytest.mark.slow
def test_forward_and_gradient_equal_pytorch(request, tmp_path):
    cases = _cases()
    arrays = {}
    for k, (x, scale, zp, attrs) in enumerate(cases):
        arrays.update({f"c{k}.x": x, f"c{k}.scale": np.atleast_1d(scale),
                       f"c{k}.zp": np.atleast_1d(zp), f"c{k}.attrs": json.dumps(attrs),
                       f"c{k}.dy": np.random.default_rng(k).standard_normal(x.shape)
                       .astype(np.float32)})
    torch_out = run_torch(request, "fake_quant parity with PyTorch", "_torch_quant.py", tmp_path,
                          "ops", **arrays)
    for k, (x, scale, zp, attrs) in enumerate(cases):
        got = ops.fake_quant(x, scale, zp, **attrs)
        grad = ops.fake_quant.vjp(arrays[f"c{k}.dy"], x, scale, zp, **attrs)[0]
        np.testing.assert_array_equal(got, torch_out[f"c{k}.out"], err_msg=f"case {k}")
        np.testing.assert_array_equal(grad, torch_out[f"c{k}.grad"], err_msg=f"case {k} grad")


def test_scale_and_zero_point_are_runtime_inputs():
    """One compiled function serves every scale: they are inputs, not constants."""
    class Quantize(tvf.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("scale", np.float32(0.5))
            self.register_buffer("zero_point", np.int32(0))

        def forward(self, x):
            return ops.fake_quant(x, self.scale, self.zero_point, qmin=-4, qmax=3)

    module = tvf.compile_inference(Quantize(), inputs=(6,))
    x = np.float32([-3.0, -0.8, 0.1, 0.3, 0.8, 3.0])
    np.testing.assert_array_equal(module(x),
                                  np.float32([-2, -1, 0, 0.5, 1, 1.5]))
    state = module.state_dict()
    module.load_state_dict(dict(state, scale=np.float32(0.25), zero_point=np.int32(1)))
    np.testing.assert_array_equal(module(x), np.float32([-1.25, -0.75, 0, 0.25, 0.5, 0.5]))


@pytest.mark.parametrize("call, error, match", [
    (lambda: ops.fake_quant(np.ones(3, np.float32), np.float32(1), np.int32(0), qmin=5, qmax=5),
     ValueError, "qmin < qmax"),
    (lambda: ops.fake_quant(np.ones(3, np.float32), np.float32(1), np.int32(0), qmin=0.5),
     ValueError, "integers"),
    (lambda: ops.fake_quant(np.ones((2, 3), np.float32), np.ones(3, np.float32),
                            np.zeros(3, np.int32)), tvf.ShapeError, "pass axis="),
    (lambda: ops.fake_quant(np.ones((2, 3), np.float32), np.ones(2, np.float32),
                            np.zeros(2, np.int32), axis=1), tvf.ShapeError, r"\(3,\)"),
    (lambda: ops.fake_quant(np.ones((2, 3), np.float32), np.ones(3, np.float32),
                            np.zeros(3, np.int32), axis=2), ValueError, "axis 2 out of range"),
    (lambda: ops.fake_quant(np.ones((2, 3), np.float32), np.ones(3, np.float32),
                            np.zeros(2, np.int32), axis=1), tvf.ShapeError, "zero_point"),
    (lambda: ops.fake_quant(np.ones(3, np.int32), np.float32(1), np.int32(0)),
     TypeError, "float32 or float64"),
    (lambda: quant.observe(np.ones(3, np.float32), np.float32(0), np.float32(1), which="avg"),
     ValueError, "'min' or 'max'"),
])
def test_bad_input_is_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()
