"""A derived max/min gradient over windows of more than autodiff.SCAN_WINDOW_MAX elements
finds each window's first extremal element with a (position, value) tuple reduction
(autodiff.first_extremum): the default schedule tiles it like any reduction, its two outputs
(int32 position, float32 value) being one place of as wide elements, and the gradient is the
explicit one's, element for element. (Smaller windows scan their elements in straight-line
code instead: tests/test_derived_max_pool.py.)"""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront import schedule as cpu_schedule
from tvmfront._tvm import te, to_device, tvm
from tvmfront.target import resolve_target


def _gradient(derived, shape, kernel, stride, padding, target):
    x = te.placeholder(shape, name="x")
    out = ops.max_pool2d.te_forward(x, kernel=kernel, stride=stride, padding=padding)
    dy = te.placeholder([int(d) for d in out.shape], name="dy")
    dx = ops.max_pool2d.te_grad(dy, x, derived=derived, kernel=kernel, stride=stride,
                                padding=padding)[0]
    func, rule = cpu_schedule.schedule_prim_func(te.create_prim_func([dy, x, dx]), target)
    return func, rule, [int(d) for d in dy.shape]


@pytest.mark.parametrize("name", ["x86", "x86:avx2"])
@pytest.mark.parametrize("kernel, stride, padding", [(5, None, 0), (5, 2, 2)])
def test_derived_max_pool_gradient_is_tiled_and_equals_the_explicit_one(kernel, stride,
                                                                         padding, name):
    # the tuple reduction was refused by every tvmfront rule (two outputs of two dtypes) and
    # fell to dlight's Reduction: 22 ms for b32 64@28 k2 on one AVX-512 core, 3.8 ms tiled;
    # the vector gather rule, tried first, got overlapping windows' positions wrong
    target = resolve_target(name)
    shape = (2, 8, 12, 12)
    func, rule, dy_shape = _gradient(True, shape, kernel, stride, padding, target)
    assert "max_pool2d_first=tiled[" in rule, rule
    explicit, _, _ = _gradient(False, shape, kernel, stride, padding, target)
    rng = np.random.default_rng(0)
    # ties inside windows (values from a few levels): the first maximal element takes dy
    x = rng.integers(0, 3, shape).astype("float32")
    dy = rng.standard_normal(dy_shape).astype("float32")
    got = []
    for f in (func, explicit):
        lib = tvm.compile(f, target=target)
        out = tvm.runtime.empty(shape, "float32", tvm.cpu())
        lib(to_device(dy), to_device(x), out)
        got.append(out.numpy())
    np.testing.assert_array_equal(got[0], got[1])
    assert np.isclose(got[0].sum(), dy.sum(), rtol=1e-4)  # each window's dy lands once
