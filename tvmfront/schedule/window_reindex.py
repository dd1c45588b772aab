"""Reductions over a symbolic axis that read a small operand through a window: the window
read copied out (``reindex``) so the block becomes a contraction the GEMM family's rule can
pad and tile along the symbolic axis.

LeNet's second convolution's d/dx (dy of [batch, 16, 4, 4] as the kernel swept over the
weight: dx[n, c, i, j] = sum dy[n, o, a, b] * w[o, c, i - a, j - b], read under w's bounds;
it had read a zero-padded copy w_pad[o, c, i + 3 - a, j + 3 - b], timed below) is
vectorized along the batch at a fixed size (32 images per vector, dy in panels). Over a
symbolic batch TVM's pad_einsum refuses the block (the window index i + 3 - a is no einsum),
so the batch cannot be padded to whole vectors and the rule vectorized the 8 output columns
instead: 267 us against 124 us at batch 64 on one AVX-512 core. The window read does not
depend on the batch: copied out once per call as w_pad_reindex[c, i, j, o, a, b] (98K
elements, 393 KB), the block reads every operand by loop variables, and the GEMM rule pads
the batch and vectorizes it: 150 us (159 us on a 2-core AVX-512 EPYC, from w_pad or from w
under its bounds alike).
"""

import math

from .params import REINDEX_MAX_BYTES, _dtype_bits
from .failures import NotApplicable, _probe
from .analysis import _BlockInfo, _reduction_iters
from . import gemm


def _window_reindex(sch, name, params):
    """(note, touched) of block `name` tiled by gemm._tile_reduction after its window reads
    of operands that do not depend on a symbolic axis are copied out (``reindex``). Raises
    NotApplicable unless the block has a symbolic axis, such a window read, and every other
    access plain (indexed by loop variables)."""
    block = sch.get_sblock(name)
    info = _BlockInfo(sch, block)
    if not info.symbolic or not info.reduction:
        raise NotApplicable("no symbolic reduction")
    if not gemm._plain(info.write):
        raise NotApplicable("a window write")
    windows = [index for index, region, _ in info.reads if not gemm._plain(region)]
    if not windows:
        raise NotApplicable("no window read: an einsum already")
    for index, region, strides in info.reads:
        if index not in windows:
            continue
        used = {k for k, stride in strides.items() if stride != 0}  # None: used, not affine
        if used & info.symbolic:
            raise NotApplicable(f"window read of {region.source.name} depends on a symbolic axis")
        size = math.prod(info.extents[k] for k in used) * _dtype_bits(region.source.dtype) // 8
        if size > REINDEX_MAX_BYTES:
            raise NotApplicable(f"window copy of {region.source.name}: {size} bytes")
    try:  # last: planning schedules a copy of the kernel
        _, vec, _ = gemm._tile_reduction(sch.copy(), name, params, plan=True)
    except NotApplicable:
        vec = None
    if vec is not None and vec >= params.lanes(info.dtype):
        raise NotApplicable(f"whole vectors of {vec} as it is")  # no copy to win back
    # Highest index first: reindex leaves the indices of the reads before it as they are.
    copies = []
    for index in sorted(windows, reverse=True):
        copy = sch.reindex(sch.get_sblock(name), ("read", index))
        _inline_producers(sch, copy)
        copies.append(sch.get(copy).name_hint)
    note, touched = gemm._tile_reduction(sch, name, params)
    return f"{note[:-1]}, window copied: {'+'.join(copies)}]", touched


def _inline_producers(sch, copy):
    """Inline into the window copy the pointwise blocks that only it reads (a zero padding
    of the weight, as LeNet's d/dx above had read): one pass over the weight instead of a
    padded copy and a copy of that (that d/dx: 203 -> 151 us)."""
    block = sch.get(copy)
    for producer in sch.get_producers(copy):
        if _reduction_iters(sch.get(producer)) or \
                any(not sch.get(c).same_as(block) for c in sch.get_consumers(producer)):
            continue
        try:
            sch.compute_inline(producer)
        except Exception as err:  # noqa: BLE001 - TVM's own check: the copy reads it anyway
            _probe(f"compute_inline of {sch.get(producer).name_hint}", err)

