"""The train step's runtime scalars (lr, and an optimizer's own such as max_norm): 0-d tensors
of the step's scalar dtype, so a value is checked as that dtype will hold it."""

import math

import numpy as np

# the largest finite value of each float dtype a step's scalars may have
_LARGEST = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38,
            "float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}


def largest(dtype):
    """The largest finite value of float dtype `dtype`."""
    return _LARGEST.get(dtype, math.inf)


def fits_float(value, dtype):
    """Whether the finite number `value` stays finite as `dtype` (a float dtype name)."""
    return abs(value) <= largest(dtype)


def is_rate(value):
    """Whether `value`, as JSON gives it (an int or float), is a finite number >= 0: a
    learning rate a manifest or checkpoint may record (an int too large for a float is not)."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and \
            math.isfinite(value) and value >= 0
    except OverflowError:
        return False


def step_scalar(what, value, dtype, finite=True):
    """`value` as a float for a 0-d `dtype` scalar of the step, or ValueError naming `what`:
    a real number (numpy scalars and 0-d arrays too) >= 0, and with `finite`, finite and
    within `dtype`'s range (lr=1e39 is inf in float32: every parameter inf after one step)."""
    if isinstance(value, (bool, np.bool_, str, bytes)):  # float('0.1') would take a string
        raise ValueError(f"{what} must be a number, got {value!r:.80}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r:.80}") from None
    except OverflowError:  # an int past any float
        raise ValueError(f"{what} {value!r:.80} does not fit the step's {dtype} scalars: it "
                         f"would be inf there") from None
    if not v >= 0 or finite and not math.isfinite(v):  # NaN fails v >= 0
        raise ValueError(f"{what} must be a {'finite ' if finite else ''}number >= 0, got "
                         f"{value!r:.80}")
    if finite and not fits_float(v, dtype):
        raise ValueError(f"{what} {v!r} does not fit the step's {dtype} scalars (at most "
                         f"{largest(dtype):.6g}): it would be inf there")
    return v
