"""Gradients at ties follow one rule, PyTorch's: the first extremal element gets the gradient.

max/min (pointwise: the first operand; reductions and max pooling: the first element in
reduction / scan order) pass the whole output gradient to one element, so a window of k equal
values passes dy, not k * dy. relu is max(0, x), so relu'(0) = 0; clip passes the gradient at
its bounds (torch.clamp's rule). Derived and explicit gradients agree with the rule and,
where PyTorch is installed (bench venv), with PyTorch.
"""

import json
import os
import subprocess
import textwrap

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

from _torch import torch_python

te = tvf.te


def _both(op, dy, *xs, **attrs):
    """(explicit, derived) gradients of input 0; one of them when the op has no .grad."""
    derived = op.vjp(dy, *xs, derived=True, **attrs)[0]
    explicit = op.vjp(dy, *xs, derived=False, **attrs)[0]
    return explicit, derived


@tvf.op
def row_max(x):
    k = te.reduce_axis((0, x.shape[1]), "k")
    return te.compute((x.shape[0],), lambda i: te.max(x[i, k], axis=k), name="row_max")


@tvf.op
def col_min(x):
    k = te.reduce_axis((0, x.shape[0]), "k")
    return te.compute((x.shape[1],), lambda j: te.min(x[k, j], axis=k), name="col_min")


def test_relu_at_zero():
    x = np.array([-1.0, 0.0, 0.0, 2.0])
    dy = np.array([1.0, 2.0, 3.0, 4.0])
    explicit, derived = _both(ops.relu, dy, x)
    np.testing.assert_array_equal(explicit, [0, 0, 0, 4])
    np.testing.assert_array_equal(derived, explicit)
    assert np.isnan(ops.relu(np.array([np.nan]))[0])  # as torch.relu: NaN is not hidden


def test_clip_at_its_bounds():
    x = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    explicit, derived = _both(ops.clip, np.ones(5), x, lo=0.0, hi=1.0)
    np.testing.assert_array_equal(explicit, [0, 1, 1, 1, 0])  # torch.clamp's rule
    np.testing.assert_array_equal(derived, explicit)


def test_max_and_min_reductions_give_dy_to_the_first_extreme():
    x = np.array([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 0.0, 7.0]])
    (dx,) = row_max.vjp(np.array([1.0, 2.0, 3.0]), x)
    np.testing.assert_array_equal(dx, [[0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 3]])
    (dx,) = col_min.vjp(np.array([1.0, 2.0, 3.0, 4.0]), x)
    np.testing.assert_array_equal(dx, [[0, 0, 0, 4], [0, 0, 0, 0], [1, 2, 3, 0]])
    assert tvf.gradcheck(row_max, [np.random.default_rng(0).standard_normal((3, 5))])


def _pool_rule(x, dy, kernel, stride, padding):
    """numpy: each window's dy goes to its first maximal element in row-major scan order."""
    dx = np.zeros_like(x)
    n, c, h, w = x.shape
    for b, ch, oh, ow in np.ndindex(dy.shape):
        best = None
        for rh in range(kernel):
            for rw in range(kernel):
                i, j = oh * stride + rh - padding, ow * stride + rw - padding
                if 0 <= i < h and 0 <= j < w and (best is None or x[b, ch, i, j] > x[best]):
                    best = (b, ch, i, j)
        dx[best] += dy[b, ch, oh, ow]
    return dx


POOL_CASES = [(2, 2, 0), (2, 1, 0), (3, 2, 1), (3, 1, 1)]  # (kernel, stride, padding)


def _pool_inputs(seed):
    rng = np.random.default_rng(seed)
    shape = (2, 2, 5, 5)  # one shape: one forward and two gradient kernels per geometry
    return [np.zeros(shape),  # every window all-equal
            rng.integers(0, 2, shape).astype(np.float64),  # many ties
            rng.standard_normal(shape)]  # no ties


@pytest.mark.parametrize("kernel,stride,padding", POOL_CASES)
def test_max_pool_ties_derived_explicit_and_rule_agree(kernel, stride, padding):
    attrs = dict(kernel=kernel, stride=stride, padding=padding)
    for k, x in enumerate(_pool_inputs(kernel + stride)):
        out = ops.max_pool2d(x, **attrs)
        dy = np.random.default_rng(k).standard_normal(out.shape)
        explicit, derived = _both(ops.max_pool2d, dy, x, **attrs)
        want = _pool_rule(x, dy, kernel, stride, padding)
        np.testing.assert_allclose(explicit, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(derived, want, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(derived.sum(), dy.sum(), rtol=1e-9)  # dy, not k * dy


def test_ties_match_pytorch(request, tmp_path):
    python = torch_python(request, "PyTorch parity of gradients at ties")
    cases = []
    for kernel, stride, padding in POOL_CASES:
        for k, x in enumerate(_pool_inputs(kernel + stride)):
            attrs = dict(kernel=kernel, stride=stride, padding=padding)
            dy = np.random.default_rng(k).standard_normal(ops.max_pool2d(x, **attrs).shape)
            np.save(tmp_path / f"x{len(cases)}.npy", x)
            np.save(tmp_path / f"dy{len(cases)}.npy", dy)
            cases.append(attrs)
    script = textwrap.dedent(f"""
        import json, numpy as np, torch
        d = {str(tmp_path)!r}
        cases = json.loads({json.dumps(json.dumps(cases))})
        for n, a in enumerate(cases):
            x = torch.tensor(np.load(f"{{d}}/x{{n}}.npy"), requires_grad=True)
            y = torch.nn.functional.max_pool2d(x, a["kernel"], a["stride"], a["padding"])
            y.backward(torch.tensor(np.load(f"{{d}}/dy{{n}}.npy")))
            np.save(f"{{d}}/torch{{n}}.npy", x.grad.numpy())
        x = torch.tensor([-1.0, 0.0, 2.0], dtype=torch.float64, requires_grad=True)
        torch.relu(x).backward(torch.ones(3, dtype=torch.float64))
        np.save(f"{{d}}/relu.npy", x.grad.numpy())
        x = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
        torch.clamp(x, 0.0, 1.0).backward(torch.ones(5, dtype=torch.float64))
        np.save(f"{{d}}/clip.npy", x.grad.numpy())
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([python, "-c", script], check=True, env=env, timeout=300)
    for n, attrs in enumerate(cases):
        x, dy = np.load(tmp_path / f"x{n}.npy"), np.load(tmp_path / f"dy{n}.npy")
        want = np.load(tmp_path / f"torch{n}.npy")
        for got in _both(ops.max_pool2d, dy, x, **attrs):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=str(attrs))
    for got in _both(ops.relu, np.ones(3), np.array([-1.0, 0.0, 2.0])):
        np.testing.assert_array_equal(got, np.load(tmp_path / "relu.npy"))
    for got in _both(ops.clip, np.ones(5), np.array([-1.0, 0.0, 0.5, 1.0, 2.0]), lo=0.0, hi=1.0):
        np.testing.assert_array_equal(got, np.load(tmp_path / "clip.npy"))
