"""What the calls of a compiled function must satisfy, recorded when it was traced
(tvmfront.tensor.Trace, tvmfront.tensor.BOUND_KINDS) and kept in the manifest, checked before
each call: otherwise a kernel would read outside an input's buffer or clamp an index into a
table, and return numbers that mean nothing.

- min_sizes {dimension: n}: an int index into a symbolic axis (x[:, -1] needs 1 position),
  a max over it (x[:, 1:].max(1) needs 2);
- max_sizes {dimension: n}: positions 0..T-1 of a symbolic T index a table of n rows
  (CausalLM's positional embedding: T <= context);
- id_ranges {input: n}: the input's values index a table of n rows (token ids into an
  embedding, decode's runtime position): each must lie in [0, n).
"""

import numpy as np

from ..errors import ShapeError

KINDS = ("min_sizes", "max_sizes", "id_ranges")


class CallBounds:
    """One compiled function's bounds; `caller` names it in errors."""

    def __init__(self, caller, min_sizes=None, max_sizes=None, id_ranges=None):
        self.caller = caller
        self.min_sizes, self.max_sizes = min_sizes or {}, max_sizes or {}
        self.id_ranges = id_ranges or {}

    @classmethod
    def of(cls, caller, tables, function=None):
        """The bounds in `tables` (a method's spec: {kind: {key: n}}; with `function`, the
        manifest: {kind: {function: {key: n}}}), or None where it has none."""
        found = {k: tables.get(k, {}) if function is None else tables.get(k, {}).get(function)
                 for k in KINDS}
        return cls(caller, **found) if any(found.values()) else None

    def sizes_fit(self, sizes):
        """Whether the symbolic sizes {dimension: size} (as held.fits fills them) are within
        bounds: the fast paths leave a call that is not to the general path, which raises."""
        return all(sizes.get(d, n) >= n for d, n in self.min_sizes.items()) and \
            all(sizes.get(d, n) <= n for d, n in self.max_sizes.items())

    def ids_fit(self, name, array):
        """Whether input `name`'s values (a numpy array) lie in its range, if it has one."""
        n = self.id_ranges.get(name)
        if n is None:
            return True
        if array.size == 1:  # a decode step's token or position: numpy's min costs ~2 us
            return 0 <= array.item() < n
        return not array.size or (array.min() >= 0 and array.max() < n)

    def check_sizes(self, sizes):
        """ShapeError naming the dimension where a size {dimension: (size, the tensor it was
        first seen in)} is out of bounds."""
        caller = self.caller
        for name, need in self.min_sizes.items():
            size, where = sizes.get(name, (need, None))
            if size < need:
                raise ShapeError(f"{caller}: dimension '{name}' is {size} in {where}, but "
                                 f"{caller} needs at least {need} position(s) along it (an int "
                                 f"index such as x[:, -1], or a sum, mean or max over it)")
        for name, most in self.max_sizes.items():
            size, where = sizes.get(name, (most, None))
            if size > most:
                raise ShapeError(f"{caller}: dimension '{name}' is {size} in {where}, but "
                                 f"{caller} reads a table at its positions with rows for "
                                 f"{most} (e.g. a positional embedding): it can be at most "
                                 f"{most}")

    def check_ids(self, arrays):
        """ValueError naming the input, the value and its position where an input's values
        leave its range. arrays: {input name: (its label in errors, numpy array)}."""
        for name, n in self.id_ranges.items():
            label, array = arrays.get(name, (None, None))
            if array is None or self.ids_fit(name, array):
                continue
            lo, hi = int(array.min()), int(array.max())
            bad = lo if lo < 0 else hi
            where = tuple(int(v) for v in np.argwhere(array == bad)[0])
            holds = f"holds {bad} at {where}" if where else f"is {bad}"
            raise ValueError(f"{self.caller}: {label} {holds}, out of range: it indexes a "
                             f"table of {n} rows, so it must lie in 0..{n - 1}")

    def check(self, sizes, arrays):
        self.check_sizes(sizes)
        self.check_ids(arrays)


def array_sizes(specs, arrays, label):
    """{symbolic dimension: (size, tensor label)} of arrays already checked against specs
    ([(name, spec)])."""
    sizes = {}
    for (name, spec), a in zip(specs, arrays):
        for want, have in zip(spec["shape"], a.shape):
            if isinstance(want, str):
                sizes.setdefault(want, (have, label(name)))
    return sizes
