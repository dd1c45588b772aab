"""Checks of user arguments shared by every layer (layer 0: imports nothing of tvmfront).
Each caller keeps its own message, naming its own argument."""

import numbers


def is_whole(value, least=None, most=None):
    """True for an int, numpy's included, in [least, most] (either bound may be None). A
    bool is refused although Python counts it an int: `Linear(True, 3)` is a mistake, not 1."""
    return (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and (least is None or value >= least) and (most is None or value <= most))
