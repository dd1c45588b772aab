"""conv_forward's unrolled window (schedule/conv_forward.py): a 3x3 window is unrolled whole
(rows and columns: one loop iteration per input channel), a larger one by its columns only.
Read from the scheduled TIR of an AVX-512 target, whatever this machine is; the values are
checked against numpy where the host has AVX-512."""

import numpy as np
import pytest

from tvmfront import ops
from tvmfront._tvm import te, tirx
from tvmfront.schedule import schedule_prim_func
from tvmfront.target import resolve_target
from test_conv_register_tiles import (AVX512, _conv_reference, _loops_around,
                                      _run_on_avx512_host)


def _forward(x_shape, w_shape, padding):
    x = te.placeholder(x_shape, "float32", name="x")
    w = te.placeholder(w_shape, "float32", name="w")
    y = ops.conv2d.te_forward(x, w, padding=padding)
    func = te.create_prim_func([x, w, y])
    return schedule_prim_func(func, resolve_target(AVX512)), [int(d) for d in y.shape]


@pytest.mark.parametrize("x_shape, w_shape, padding, unrolled", [
    # 3x3: kh, kw, then the 7 columns of the tile
    ((32, 32, 28, 28), (64, 32, 3, 3), 1, [3, 3, 7]),
    ((8, 64, 14, 14), (64, 64, 3, 3), 1, [3, 3, 7]),
    # 5x5 (25 taps): kw and the columns; the rows stay a loop
    ((8, 32, 28, 28), (64, 32, 5, 5), 2, [5, 7]),
])
def test_window_unrolled_up_to_nine_taps(x_shape, w_shape, padding, unrolled):
    (func, rule), y_shape = _forward(x_shape, w_shape, padding)
    assert "conv2d=conv[7xv32" in rule, rule
    serial, unroll, vector = tirx.ForKind.SERIAL, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED
    # innermost: the input channels (a loop), the window rows where not unrolled, the
    # unrolled window and tile columns, the vector of output channels
    rows = [] if len(unrolled) == 3 else [(serial, w_shape[2])]
    expected = [(serial, x_shape[1])] + rows + [(unroll, e) for e in unrolled] + [(vector, 32)]
    loops = _loops_around(func, "conv2d_update")
    assert loops[-len(expected):] == expected, (loops, rule)
    run = _run_on_avx512_host(func, x_shape, w_shape, y_shape, seed=5)
    if run is not None:
        xv, wv, got = run
        np.testing.assert_allclose(got, _conv_reference(xv, wv, padding), rtol=1e-4, atol=1e-4)
