"""Long float sums of an eager kernel in two levels, for accuracy.

Eager kernels (an op called on numpy arrays, opcheck, gradcheck) run unscheduled, so a sum
adds its elements one at a time into one accumulator, whose rounding error grows with the
count: 2^20 float32 copies of 0.1 summed 1% off (numpy's pairwise sum: 2e-7; a compiled
kernel's vector lanes: 1.5e-4). Here each sum over at least LEAST elements is split into
about sqrt(n) partial sums of sqrt(n) elements each (TVM's rfactor), then their sum: 1.4e-5
there. Compiled kernels keep their schedules (tvmfront.schedule); this is for eager ones.
"""

import math

from ._checks import is_float_dtype
from ._tvm import s_tir, tirx

LEAST = 4096  # elements a sum runs over before it is split
MOST_PARTIALS = 1 << 22  # partial sums one kernel may hold (16 MB in float32)


def split_long_sums(func):
    """`func` (a PrimFunc from te.create_prim_func) with each long float sum in two levels."""
    sch = s_tir.Schedule(func)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks if _plan(sch, b) is not None]
    if not names:
        return func
    for block in blocks:
        # rfactor fails inside TVM ("Check failed: block_realize == old_block_realize_")
        # beside a block outside any loop (a 0-d output's cast, a float16 sum's)
        if not sch.get_loops(block):
            sch.add_unit_loop(block)
    for name in names:
        trial = sch.copy()
        try:
            loops, reduce, d = _plan(trial, trial.get_sblock(name))
            loop = trial.fuse(*loops[-reduce:]) if reduce > 1 else loops[-1]
            outer, _ = trial.split(loop, [None, d])  # a ragged last partial is guarded
            trial.rfactor(outer, factor_axis=len(loops) - reduce)
        except Exception:  # noqa: BLE001  a TVM rule's refusal: that sum stays as it was
            continue
        sch = trial
    return sch.mod["main"]


def _plan(sch, block):
    """(loops, reduction loops, elements per partial sum) for a float sum block over LEAST
    elements or more whose partials fit MOST_PARTIALS, else None."""
    node = sch.get(block)
    store = node.body
    if node.init is None or not isinstance(store, tirx.BufferStore) or \
            not is_float_dtype(str(store.buffer.dtype)):
        return None
    total = store.value  # a sum: out[i] = out[i] + value (TE's form for te.sum)
    if not (isinstance(total, tirx.Add) and type(total.a).__name__ == "TensorLoad"
            and total.a.source.same_as(store.buffer)):
        return None
    reduce = sum(1 for v in node.iter_vars if int(v.iter_type) == int(tirx.IterVar.CommReduce))
    loops = sch.get_loops(block)
    extents = [sch.get(loop).extent for loop in loops]
    if not reduce or len(loops) < reduce or \
            not all(isinstance(e, tirx.IntImm) for e in extents):
        return None
    n = math.prod(int(e) for e in extents[-reduce:])  # TE's reduction loops are innermost
    spatial = math.prod(int(e) for e in extents[:-reduce])
    if n < LEAST:
        return None
    d = math.isqrt(n - 1) + 1  # ceil(sqrt(n)) elements in each of ceil(n / d) partial sums
    if spatial * -(-n // d) > MOST_PARTIALS:
        return None
    return loops, reduce, d
