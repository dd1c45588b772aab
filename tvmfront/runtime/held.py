"""Device tensors that a call's fast path refills in place instead of making new ones (~5-15 us
each on the CPU): per thread, per shapes of the call. A module compiled for a fixed batch
meets one set of shapes; one compiled for any batch size a few (the batch, an epoch's last
partial one), each kept, up to a bound.
"""

import threading

import numpy as np

from .._tvm import to_device

# Sets of tensors kept per thread: a caller cycling through more shapes than this starts over
# (each set is a batch's worth of inputs: memory, not correctness).
MAX_SETS = 8


def fits(shape, spec_shape, sizes):
    """Whether the array shape `shape` is one `spec_shape` allows: numbers equal, and each
    symbolic dimension (a name) one positive size across the tensors of one call (`sizes`,
    {name: size}, filled here). A size 0 is left to the general path and its checks."""
    if len(shape) != len(spec_shape):
        return False
    for have, want in zip(shape, spec_shape):
        if type(want) is str:
            if have <= 0 or sizes.setdefault(want, have) != have:
                return False
        elif want != have:
            return False
    return True


class HeldTensors:
    """{key: (device tensors, numpy views of them)} of this thread: the tensors are made once
    per key (the call's shapes) and refilled through the views."""

    def __init__(self):
        self._local = threading.local()

    def get(self, key):
        sets = getattr(self._local, "sets", None)
        return None if sets is None else sets.get(key)

    def make(self, key, arrays, device):
        """A new set holding copies of `arrays` (numpy) on `device`, kept under `key`."""
        sets = getattr(self._local, "sets", None)
        if sets is None or len(sets) >= MAX_SETS:
            sets = self._local.sets = {}
        tensors = [to_device(np.array(a, order="C"), device) for a in arrays]
        held = sets[key] = (tensors, [np.from_dlpack(t) for t in tensors])
        return held

    def forget(self):
        """Drop this thread's sets (their tensors may be held elsewhere now: never refill)."""
        self._local.sets = {}
