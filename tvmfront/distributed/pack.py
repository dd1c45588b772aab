"""Many tensors laid out in one flat buffer per dtype, so that a collective sends one message
per dtype (in practice one: float32) instead of one per tensor."""

import math

import numpy as np


class Packed:
    """Flat buffers for tensors of the given (shape, dtype), and a view into them per tensor.

    >>> packed = Packed([((3, 4), "float32"), ((4,), "float32")])
    >>> packed.views[0][...] = 1.0          # writes into packed.buffers[np.float32]
    >>> [b.size for b in packed.buffers.values()]
    [16]
    """

    def __init__(self, specs):
        sizes = {}
        offsets = []
        for shape, dtype in specs:  # each tensor's place in its dtype's buffer
            dtype = np.dtype(dtype)
            offsets.append((dtype, sizes.get(dtype, 0), tuple(shape)))
            sizes[dtype] = sizes.get(dtype, 0) + math.prod(shape)
        self.buffers = {dtype: np.zeros(size, dtype) for dtype, size in sizes.items()}
        self.views = [self.buffers[d][start:start + math.prod(shape)].reshape(shape)
                      for d, start, shape in offsets]

    def pack(self, arrays):
        """Copy `arrays` (one per spec, in order) into the buffers."""
        for view, array in zip(self.views, arrays):
            view[...] = array

    def __repr__(self):
        return f"<Packed {', '.join(f'{b.size} {d}' for d, b in self.buffers.items())}>"
