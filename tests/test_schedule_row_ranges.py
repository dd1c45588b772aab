"""A row made of ranges that each read another tensor (the sum of the slice gradients of
attention's q, k and v, a concatenation along the last axis) is split at its ranges' borders
and the pieces unrolled, so each piece is a plain vectorized copy (schedule/spatial.
_schedule_ranges); borders no vector divides keep the general schedule. Both compute numpy's
result exactly (a copy, and additions of zeros)."""

import numpy as np

from tvmfront import ops
from tvmfront._tvm import te, tirx

from _scheduled import run, schedule

ROWS, WIDTH = 96, 128


def _slice_grad_sum(parts, widths):
    """sum over parts of part's values placed at its columns of the row, zeros elsewhere: the
    form Relax's gradient gives a split (strided_slice_grad of each piece, then add)."""
    total = sum(widths)
    zero = tirx.const(0.0, "float32")
    starts = np.cumsum([0] + widths[:-1]).tolist()

    def body(i, j):
        terms = [te.if_then_else(te.all(j >= s, j < s + w), p[i, j - s], zero)
                 for p, s, w in zip(parts, starts, widths)]
        value = terms[0]
        for t in terms[1:]:
            value = value + t
        return value

    return te.compute((ROWS, total), body, name="row")


def test_slice_gradients_summed_into_a_row_are_copied_range_by_range():
    widths = [WIDTH, WIDTH, WIDTH]
    parts = [te.placeholder((ROWS, w), name=f"p{k}") for k, w in enumerate(widths)]
    # the middle piece arrives transposed, as attention's k does
    kt = te.placeholder((WIDTH, ROWS), name="kt")
    k = te.compute((ROWS, WIDTH), lambda i, j: kt[j, i], name="k_untransposed")
    out = _slice_grad_sum([parts[0], k, parts[2]], widths)
    func, rule, target = schedule([parts[0], kt, parts[2]], out)
    assert "row=spatial[3 ranges, v" in rule, rule
    rng = np.random.default_rng(0)
    a, c = (rng.standard_normal((ROWS, WIDTH)).astype("float32") for _ in range(2))
    b = rng.standard_normal((WIDTH, ROWS)).astype("float32")
    np.testing.assert_array_equal(run(func, target, [a, b, c], [(ROWS, 3 * WIDTH)])[0],
                                  np.concatenate([a, b.T, c], axis=1))


def test_borders_no_vector_divides_keep_the_general_schedule():
    widths = [5, 2 * WIDTH - 5]
    parts = [te.placeholder((ROWS, w), name=f"p{k}") for k, w in enumerate(widths)]
    out = _slice_grad_sum(parts, widths)
    func, rule, target = schedule(parts, out)
    assert "row=spatial[" in rule and " ranges" not in rule, rule
    rng = np.random.default_rng(1)
    args = [rng.standard_normal((ROWS, w)).astype("float32") for w in widths]
    np.testing.assert_array_equal(run(func, target, args, [(ROWS, sum(widths))])[0],
                                  np.concatenate(args, axis=1))


def test_concat_op_on_the_last_axis_matches_numpy():
    rng = np.random.default_rng(2)
    args = [rng.standard_normal((ROWS, w)).astype("float32") for w in (64, 32, 96)]
    np.testing.assert_array_equal(ops.concat(*args, axis=1), np.concatenate(args, axis=1))
