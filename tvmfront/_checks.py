"""Checks of user arguments shared by every layer (layer 0: imports nothing of tvmfront).
Each caller keeps its own message, naming its own argument."""

import numbers

import numpy as np


def is_whole(value, least=None, most=None):
    """True for an int, numpy's included, in [least, most] (either bound may be None). A
    bool is refused although Python counts it an int: `Linear(True, 3)` is a mistake, not 1."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (least is None or value >= least) and (most is None or value <= most))


def is_float_dtype(dtype):
    """True for a float dtype: numpy's (kind 'f') and ml_dtypes' bfloat16, which numpy
    reports as kind 'V' (a bfloat16 input had been taken for one with no gradient: a
    compiled step gave every parameter before it a zero gradient). A dtype, its name or an
    array's .dtype."""
    if not isinstance(dtype, str):
        try:
            dtype = np.dtype(dtype).name
        except TypeError:  # no numpy dtype: a TVM DataType, say
            dtype = str(dtype)
    return dtype.startswith(("float", "bfloat"))
