"""Each rank's part of a global batch."""

import numpy as np

from ..data import _arrays


def shard(batch, rank, size):
    """This rank's samples of a global batch (x, y[, extras]): samples rank, rank + size, ...
    (strided, as torch's DistributedSampler deals them), so shards differ by at most one
    sample and together are the whole batch. x and extras keep their structure (one array, a
    tuple, a dict)."""
    parts = []
    for part in batch:
        arrays, rebuild = _arrays(part, "x")
        parts.append(rebuild([np.ascontiguousarray(a[rank::size]) for _, a in arrays]))
    return tuple(parts)
