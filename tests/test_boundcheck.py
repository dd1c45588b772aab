"""The test session's eager kernels are bound-checked: an out-of-bounds read raises."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import OutOfBoundsError
from tvmfront.op import bound_checks, bound_checks_enabled

te = tvf.te


@tvf.op
def shifted(x):
    return te.compute((4,), lambda i: x[i + 2], name="shifted")  # reads x[4], x[5]


@tvf.op
def guarded(x):
    return te.compute((4,), lambda i: te.if_then_else(i < 2, x[i + 2], te.const(0.0, x.dtype)),
                      name="guarded")


@tvf.op
def guarded_one_short(x):  # the guard lets x[4] through
    return te.compute((4,), lambda i: te.if_then_else(i < 3, x[i + 2], te.const(0.0, x.dtype)),
                      name="guarded_one_short")


def test_session_runs_checked():
    assert bound_checks_enabled()  # tests/conftest.py sets TVMFRONT_BOUND_CHECKS=1


def test_out_of_bounds_read_raises_naming_the_read():
    with pytest.raises(OutOfBoundsError, match=r"stage 'shifted' reads x\[\(i \+ 2\)\] outside "
                                               r"x's shape \[4\] \(2 times\)"):
        shifted(np.arange(4.0))
    with pytest.raises(IndexError):  # OutOfBoundsError is an IndexError too
        shifted(np.arange(4.0))


def test_guards_are_respected_and_checked():
    np.testing.assert_array_equal(guarded(np.arange(4.0)), [2, 3, 0, 0])
    with pytest.raises(OutOfBoundsError, match=r"\(1 times\)"):
        guarded_one_short(np.arange(4.0))


def test_unchecked_kernels_are_cached_apart():
    with bound_checks(False):
        out = shifted(np.arange(4.0))  # reads garbage past the buffer, silently
    np.testing.assert_array_equal(out[:2], [2, 3])
    with pytest.raises(OutOfBoundsError):  # the checked kernel is not replaced by the unchecked
        shifted(np.arange(4.0))


def test_out_of_bounds_gradient_read_raises():
    @tvf.op
    def bad_grad_op(x):
        return te.compute((2,), lambda i: x[i] * 2.0, name="bad_grad_op")

    @bad_grad_op.grad
    def _(dy, x):  # reads dy[2] for x[2]
        return [te.compute(x.shape, lambda i: dy[i] * 2.0, name="bad_grad")]

    with pytest.raises(OutOfBoundsError, match="reads dy"):
        bad_grad_op.vjp(np.ones(2), np.ones(3))
