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


def _learnable(x, dy, scale, zp, qmin, qmax, axis):
    """PyTorch's learnable fake quantization's scale and zero-point gradients (LSQ, grad_factor
    1), summed over all but `axis`, in float64."""
    view = [1] * x.ndim
    if axis is not None:
        view[axis] = -1
    s = np.asarray(scale, np.float64).reshape(view)
    z = np.asarray(zp, np.float64).reshape(view)
    q = np.rint(x * (np.float32(1) / s.astype(np.float32))) + z
    fq = (np.clip(q, qmin, qmax) - z) * s
    ds = dy * np.where(q < qmin, qmin - z, np.where(q > qmax, qmax - z, (fq - x) / s))
    dz = dy * np.where((q < qmin) | (q > qmax), -s, 0)
    over = tuple(a for a in range(x.ndim) if a != (axis if axis is None else axis % x.ndim))
    return ds.sum(over).reshape(np.shape(scale)), dz.sum(over).reshape(np.shape(zp))


@pytest.mark.parametrize("k", range(5))
def test_ste_gradient_is_its_definition(k):
    x, scale, zp, attrs = _cases()[k]
    dy = np.random.default_rng(k).standard_normal(x.shape).astype(np.float32)
    grad_x, grad_s, grad_z = ops.fake_quant.vjp(dy, x, scale, zp, **attrs)
    inside = _definition(x, scale, zp, **attrs)
    assert 0 < inside.mean() < 1  # both sides of the clamp occur
    np.testing.assert_array_equal(grad_x, np.where(inside, dy, 0))
    # an integer zero point gets no gradient; the scale gets LSQ's (learned when a Parameter)
    assert grad_z.dtype == np.int32 and not np.any(grad_z)
    want_s, _ = _learnable(x, dy, scale, zp, **attrs)
    np.testing.assert_allclose(grad_s, want_s, rtol=1e-4, atol=1e-4)
    _, want_z = _learnable(x, dy, scale, zp.astype(np.float32), **attrs)
    grad_zf = ops.fake_quant.vjp(dy, x, scale, zp.astype(np.float32), **attrs)[2]
    np.testing.assert_allclose(grad_zf, want_z, rtol=1e-5, atol=1e-5)


def test_derived_gradient_is_zero_through_the_rounding():
    """The gradient derived from the forward is the true derivative of a step function, 0
    almost everywhere: QAT trains on the explicit straight-through estimator only (not under
    tvf.derived_gradients())."""
    x, scale, zp, attrs = _cases()[0]
    dy = np.ones_like(x)
    assert not np.any(ops.fake_quant.vjp(dy, x, scale, zp, derived=True, **attrs)[0])


def test_rounds_half_to_even():
    x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997])
    got = ops.fake_quant(x, np.float32(1.0), np.int32(0), qmin=-128, qmax=127)
    np.testing.assert_array_equal(got, np.float32([0, 2, 2, 0, -2, -2, 0]))


@pytest.mark.slow
def test_forward_and_gradient_equal_pytorch(request, tmp_path):
    # and the learnable (LSQ) gradients of scale and a float zero point, per tensor and per
    # channel, away from ties: PyTorch's learnable backward rounds ties away from zero (its
    # forward, and ours, to even), so there its gradients disagree with its own forward
    rng = np.random.default_rng(7)
    cases = _cases() + [((rng.standard_normal(x.shape) * 60 * np.min(s)).astype(np.float32), s,
                         z, dict(a, learnable=True)) for x, s, z, a in _cases()[1::2]]
    arrays = {}
    for k, (x, scale, zp, attrs) in enumerate(cases):
        arrays.update({f"c{k}.x": x, f"c{k}.scale": np.atleast_1d(scale),
                       f"c{k}.zp": np.atleast_1d(zp), f"c{k}.attrs": json.dumps(attrs),
                       f"c{k}.dy": np.random.default_rng(k).standard_normal(x.shape)
                       .astype(np.float32)})
    torch_out = run_torch(request, "fake_quant parity with PyTorch", "_torch_quant.py", tmp_path,
                          "ops", **arrays)
    for k, (x, scale, zp, attrs) in enumerate(cases):
        if attrs.get("learnable"):
            zp = zp.astype(np.float32)
        attrs = {a: v for a, v in attrs.items() if a != "learnable"}
        got = ops.fake_quant(x, scale, zp, **attrs)
        grad, grad_s, grad_z = ops.fake_quant.vjp(arrays[f"c{k}.dy"], x, scale, zp, **attrs)
        np.testing.assert_array_equal(got, torch_out[f"c{k}.out"], err_msg=f"case {k}")
        np.testing.assert_array_equal(grad, torch_out[f"c{k}.grad"], err_msg=f"case {k} grad")
        if f"c{k}.grad_scale" in torch_out:  # summation order differs: not bit for bit
            np.testing.assert_allclose(np.atleast_1d(grad_s), torch_out[f"c{k}.grad_scale"],
                                       rtol=1e-4, atol=1e-4, err_msg=f"case {k} scale")
            np.testing.assert_allclose(np.atleast_1d(grad_z), torch_out[f"c{k}.grad_zp"],
                                       rtol=1e-4, atol=1e-4, err_msg=f"case {k} zero point")


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


def test_a_parameter_scale_is_learned_with_lsq_gradients():
    """scale and zero point as Parameters (LSQ): the compiled step's gradients are PyTorch's
    learnable fake quantization's (checked against PyTorch in the parity test above)."""
    class Learned(tvf.nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = tvf.nn.Parameter(np.float32([0.1, 0.3]))
            self.zero_point = tvf.nn.Parameter(np.float32([0.0, 2.0]))

        def forward(self, x):
            return ops.fake_quant(x, self.scale, self.zero_point, qmin=-8, qmax=7, axis=1)

    x = (np.random.default_rng(3).standard_normal((16, 2)) * 1.5).astype(np.float32)
    t = np.zeros((16, 2), np.float32)
    module = tvf.compile_training(Learned(), tvf.nn.MSELoss(), tvf.optim.SGD(0.01),
                                  inputs=(16, 2), labels=tvf.TensorSpec((16, 2), "float32"))
    _, grads = module.loss_and_grads(x, t)
    scale, zp = np.float32([0.1, 0.3]), np.float32([0.0, 2.0])
    dy = 2 * ops.fake_quant(x, scale, zp, qmin=-8, qmax=7, axis=1) / x.size
    want_s, want_z = _learnable(x, dy, scale, zp, qmin=-8, qmax=7, axis=1)
    np.testing.assert_allclose(grads["scale"], want_s, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grads["zero_point"], want_z, rtol=1e-5, atol=1e-6)
    assert np.any(want_s != 0) and np.any(want_z != 0)


@pytest.mark.parametrize("lo, hi, qmin, qmax, scale, zero_point", [
    (np.inf, -np.inf, 0, 255, 1.0, 0),          # nothing observed yet: PyTorch's (1, 0)
    (0.5, 1.0, -128, 127, 1.0 / 255, -128),     # the range always includes 0
    (-1.0, -0.5, 0, 255, 1.0 / 255, 255),
    (0.0, 0.0, 0, 255, float(np.finfo(np.float32).eps), 0),  # scale at least eps
    (-0.3, 2.2, 0, 127, 2.5 / 127, 15),         # reduce_range: round(0.3 / (2.5/127)) = 15
])
def test_affine_qparams(lo, hi, qmin, qmax, scale, zero_point):
    lo, hi = np.float32(lo), np.float32(hi)
    got_s = quant.affine_qparams(lo, hi, qmin=qmin, qmax=qmax, which="scale")
    got_z = quant.affine_qparams(lo, hi, qmin=qmin, qmax=qmax, which="zero_point")
    assert got_s == pytest.approx(scale, rel=1e-6) and got_z == zero_point


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
