"""Derived gradients of many read patterns against float64 central finite differences.

Each case is a one-input op reading x through an index map (affine, reshape-like `//` `%`,
slices, pads, strides, partial coverage, broadcasting, reductions); its derived gradient must
match finite differences. The test session builds eager kernels with bound checks
(tests/conftest.py), so a gradient that reads outside a buffer fails here with
OutOfBoundsError even where the garbage it read happens to be small.
"""

import math

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront.op import bound_checks, bound_checks_enabled

te = tvf.te
N_RANDOM = 40


def _op(name, out_shape, read, x_shape, reduce=None, f=None):
    """An op y[i] = f(read(x, i)) (summed over `reduce` extents when given)."""
    f = f or (lambda v: v * v)

    def forward(x):
        if reduce is None:
            return te.compute(out_shape, lambda *i: f(read(x, list(i))), name=name)
        axes = [te.reduce_axis((0, r), f"r{k}") for k, r in enumerate(reduce)]
        return te.compute(out_shape, lambda *i: te.sum(f(read(x, list(i) + axes)), axis=axes),
                          name=name)

    forward.__name__ = name
    return tvf.op(forward), x_shape


def _guarded(x, idx):
    """x[idx], or 0 where idx is outside x (a padded read)."""
    inside = te.all(*[te.all(i >= 0, i < d) for i, d in zip(idx, x.shape)])
    return te.if_then_else(inside, x[tuple(idx)], te.const(0.0, x.dtype))


# ---- named cases -----------------------------------------------------------------------------
NAMED = {
    # the case: a reshape read covering 2 of x's 3 rows
    "reshape-partial": ((2, 4), lambda x, i: x[(4 * i[0] + i[1]) // 4, (4 * i[0] + i[1]) % 4],
                        (3, 4)),
    # the inverse of f -> (f // 3, f % 3) maps x[0, 3] to f = 3, inside f's range, but f = 3
    # reads x[1, 0]: only the round-trip guard gives x[0, 3] its zero gradient
    "reshape-narrower-rows": ((6,), lambda x, i: x[i[0] // 3, i[0] % 3], (2, 4)),
    "flatten-prefix": ((5,), lambda x, i: x[i[0] // 3, i[0] % 3], (3, 3)),
    "unflatten": ((2, 3), lambda x, i: x[3 * i[0] + i[1]], (7,)),
    "transpose": ((4, 3), lambda x, i: x[i[1], i[0]], (3, 4)),
    "slice": ((3,), lambda x, i: x[i[0] + 2], (6,)),
    "strided-slice": ((3, 2), lambda x, i: x[2 * i[0] + 1, i[1]], (7, 3)),
    "reverse": ((5,), lambda x, i: x[4 - i[0]], (6,)),
    "pad": ((7,), lambda x, i: _guarded(x, [i[0] - 2]), (4,)),
    "pad-2d-strided": ((3, 3), lambda x, i: _guarded(x, [2 * i[0] - 1, i[1] - 1]), (4, 2)),
    "broadcast-row": ((3, 4), lambda x, i: x[0, i[1]], (1, 4)),
    "broadcast-scalar": ((2, 3), lambda x, i: x[0], (1,)),
    "diagonal": ((3,), lambda x, i: x[i[0], i[0]], (3, 4)),
    "windows-overlap": ((4, 3), lambda x, i: x[i[0] + i[1]], (7,)),
    "pixel-shuffle": ((4, 3), lambda x, i: x[i[0] // 2, 2 * i[1] + i[0] % 2], (2, 6)),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_read_pattern(name):
    out_shape, read, x_shape = NAMED[name]
    op, _ = _op(name.replace("-", "_"), out_shape, read, x_shape)
    x = np.random.default_rng(0).standard_normal(x_shape)
    assert bound_checks_enabled()
    assert tvf.gradcheck(op, [x], derived=True)


def test_a_quotients_gradient_keeps_values_whose_denominator_squared_leaves_float32():
    """d(a/b)/db = -(a / b) / b, PyTorch's form: -a / (b * b) gave -0 for a divisor of 1e20
    (b * b = 1e40, inf in float32) and lost 5 digits for 1e-20 (b * b = 1e-40, a denormal),
    where the gradient itself is an ordinary float32."""
    quotient = tvf.op(lambda a, b: te.compute(a.shape, lambda i: a[i] / b[i], name="quot"))
    a = np.array([1e30, 1e-20, 3.0], "float32")
    b = np.array([1e20, 1e-20, 2.0], "float32")
    da, db = quotient.vjp(np.ones(3, "float32"), a, b, derived=True)
    want = -(a.astype("float64") / b) / b
    np.testing.assert_allclose(db, want, rtol=1e-6)
    np.testing.assert_allclose(da, 1 / b.astype("float64"), rtol=1e-6)


def test_reshape_partial_coverage_gives_exact_zeros():
    op, _ = _op("rs", (2, 4), NAMED["reshape-partial"][1], (3, 4), f=lambda v: v)
    x = np.random.default_rng(0).standard_normal((3, 4))
    (dx,) = op.vjp(np.ones((2, 4)), x)
    np.testing.assert_array_equal(dx, np.r_[np.ones((2, 4)), np.zeros((1, 4))])
    with bound_checks(False):  # the unchecked kernel gives the same: no garbage
        np.testing.assert_array_equal(op.vjp(np.ones((2, 4)), x)[0], dx)


def test_reductions_and_two_reads():
    cases = [
        # conv-like: y[i] = sum_k x[2 i + k]^2, strided windows over a reduce axis
        _op("conv1d", (3,), lambda x, i: x[2 * i[0] + i[1]], (8,), reduce=(3,)),
        # column sums of a transposed read
        _op("colsum", (4,), lambda x, i: x[i[1], i[0]], (3, 4), reduce=(3,)),
        # sum over a flattened prefix read through // and %
        _op("flatsum", (2,), lambda x, i: x[(3 * i[0] + i[1]) // 4, (3 * i[0] + i[1]) % 4],
            (3, 4), reduce=(3,)),
        # two reads of one input: y[i] = x[i] * x[i + 1]
        _op("neighbours", (4,), lambda x, i: x[i[0]] * x[i[0] + 1], (6,), f=lambda v: v),
    ]
    rng = np.random.default_rng(1)
    for op, shape in cases:
        assert tvf.gradcheck(op, [rng.standard_normal(shape)], derived=True), op.name


# ---- seeded random cases ---------------------------------------------------------------------
def _random_case(seed):
    """A random read pattern: affine (coefficients -1..2, offsets), optionally padded (x
    smaller than the indices reach, reads guarded), optionally reshape-like (x read at
    (flat // C, flat % C) for an affine flat index), optionally summed over one loop."""
    rng = np.random.default_rng(seed)
    out_rank = int(rng.integers(1, 3))
    out_shape = tuple(int(d) for d in rng.integers(1, 5, out_rank))
    n_red = int(rng.integers(0, 2))
    extents = list(out_shape) + [int(rng.integers(2, 4)) for _ in range(n_red)]
    kind = rng.choice(["affine", "padded", "reshape"])
    f = [lambda v: v * v, lambda v: te.tanh(v), lambda v: v * te.exp(v * 0.5)][seed % 3]
    if kind == "reshape":
        strides = [int(rng.integers(1, 4)) for _ in extents]
        offset = int(rng.integers(0, 3))
        top = offset + sum(s * (e - 1) for s, e in zip(strides, extents))
        cols = int(rng.integers(2, 5))
        x_shape = (top // cols + 1 + int(rng.integers(0, 2)), cols)

        def read(x, i):
            flat = offset + sum(s * v for s, v in zip(strides, i))
            return x[flat // cols, flat % cols]
    else:
        x_rank = int(rng.integers(1, 3))
        coeffs = rng.integers(-1, 3, (x_rank, len(extents)))
        lows = [int(sum(min(c * (e - 1), 0) for c, e in zip(row, extents))) for row in coeffs]
        highs = [int(sum(max(c * (e - 1), 0) for c, e in zip(row, extents))) for row in coeffs]
        offsets = [-lo + int(rng.integers(0, 2)) for lo in lows]
        reach = [hi + off + 1 for hi, off in zip(highs, offsets)]
        if kind == "padded":  # x smaller than the reads reach: the reads outside are zeros
            x_shape = tuple(max(1, r - int(rng.integers(1, 3))) for r in reach)
            offsets = [off - int(rng.integers(0, 2)) for off in offsets]
        else:  # partial coverage: x may be larger than the reads reach
            x_shape = tuple(r + int(rng.integers(0, 2)) for r in reach)

        def read(x, i):
            idx = [sum(int(c) * v for c, v in zip(row, i)) + off
                   for row, off in zip(coeffs, offsets)]
            return _guarded(x, idx) if kind == "padded" else x[tuple(idx)]
    return _op(f"case{seed}_{kind}", out_shape, read, x_shape,
               reduce=tuple(extents[out_rank:]) or None, f=f)


@pytest.mark.parametrize("seed", range(N_RANDOM))
def test_random_read_pattern(seed):
    op, x_shape = _random_case(seed)
    x = np.random.default_rng(seed).standard_normal(x_shape)
    assert math.prod(x_shape) <= 200
    assert tvf.gradcheck(op, [x], derived=True)
