"""A seeded sweep of convolution shapes through the default schedules: the forward, d/dx and
d/dw (explicit and derived) of each, scheduled for this host and for AVX2 code, built and run
here against numpy in float64.

The convolution rules (conv_forward, conv_phases, conv_weight_grad) pick tiles, paddings and
border parts from the shape; the fixed shapes of the other tests cover the benchmarks'. A
wider random sweep of this kind found weight gradients that failed to build (5x5 padded 2 on
AVX2, 7x7 padded 3, 3x5 padded (1, 2): conv_weight_grad._border_partitions); this sweep keeps
a seeded sample of such shapes (kernels 1x1 to 7x7, square and not, strides 1 and 2, padding
0 to 3, odd sizes, 1 to 64 channels) in CI.
"""

import random

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, to_device, tvm
from tvmfront.build import compile_kernels
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target

from op_specs import conv2d_ref
from test_conv_grad import _conv_grads_ref


def _shapes(seed, count):
    """`count` (n, c_in, c_out, (h, w), kernel, stride, padding) drawn from `seed`, each small
    enough to build and run in about a second."""
    rng, out = random.Random(seed), []
    while len(out) < count:
        kernel = rng.choice([(1, 1), (3, 3), (3, 3), (5, 5), (3, 5), (7, 7), (2, 2), (1, 7)])
        stride = rng.choice([(1, 1), (1, 1), (2, 2), (1, 2)])
        padding = rng.choice([(0, 0), (1, 1), (2, 2), (1, 2), (3, 3), (0, 3), "same", "same"])
        if padding == "same":  # the common one: the output the input's size at stride 1
            padding = (kernel[0] // 2, kernel[1] // 2)
        h = rng.randint(3, 30)
        hw = (h, rng.choice([h, rng.randint(3, 30)]))
        n, ci, co = rng.choice([1, 2, 4, 8]), rng.choice([1, 3, 8, 16, 32]), \
            rng.choice([8, 16, 32, 48, 64])
        if any(s + 2 * p < k for s, p, k in zip(hw, padding, kernel)) or \
                n * ci * co * hw[0] * hw[1] * kernel[0] * kernel[1] > 2e7:
            continue
        out.append((n, ci, co, hw, kernel, stride, padding))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("schedule_for", ["x86", "x86:avx2"])
@pytest.mark.parametrize("n, ci, co, hw, kernel, stride, padding", _shapes(0, 10))
def test_swept_convolutions_build_and_match_numpy(n, ci, co, hw, kernel, stride, padding,
                                                  schedule_for):
    rng = np.random.default_rng(n * ci + co)
    xv = rng.standard_normal((n, ci, *hw))
    wv = rng.standard_normal((co, ci, *kernel))
    y = conv2d_ref(xv, wv, stride, padding)
    dyv = rng.standard_normal(y.shape)
    dx, dw = _conv_grads_ref(xv, wv, dyv, stride, padding)
    x = te.placeholder(xv.shape, "float32", name="x")
    w = te.placeholder(wv.shape, "float32", name="w")
    out = ops.conv2d.te_forward(x, w, stride=stride, padding=padding)
    dy = te.placeholder(out.shape, "float32", name="dy")
    kernels = [("forward", [x, w], out, [xv, wv], y)]
    for derived in (False, True):
        grads = ops.conv2d.te_grad(dy, x, w, stride=stride, padding=padding, derived=derived)
        kernels += [(f"{'derived' if derived else 'explicit'} d/d{name}", [dy, x, w], grad,
                     [dyv, xv, wv], want) for name, grad, want in zip("xw", grads, (dx, dw))]
    target = resolve_target(schedule_for)
    for what, params, result, values, want in kernels:
        scheduled, rule = schedule_prim_func(te.create_prim_func(params + [result]), target)
        got = to_device(np.full(want.shape, np.nan, "float32"))
        compile_kernels(scheduled, target)["main"](
            *[to_device(v.astype("float32")) for v in values], got)
        err = np.abs(got.numpy() - want).max() / np.abs(want).max()
        assert err < 1e-4, (what, rule, err)
