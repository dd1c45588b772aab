"""Loop decisions every kernel family shares: vector lengths that tile an extent, tile
divisors, whether a kernel is worth running in parallel and how its outer loops are fused for
the thread pool, and vectorizing a block's innermost loop.
"""

import math

from .params import (CALL_ITERATIONS, PARALLEL_CHUNKS_PER_CORE, PARALLEL_MIN_ITERATIONS,
                     PARALLEL_TASKS, PARALLEL_TASKS_MAX)
from .analysis import _const, _has_if_then_else, _size


def _vector_factor(extent, lanes, max_registers=2, rows=()):
    """Largest divisor V of `extent` (2 <= V <= max_registers * lanes) with the best use of
    vector lanes; None when no divisor fits. `rows`: extents of the inner dimensions fused
    into this loop; a vector must tile them (V divides a row or covers whole rows), or its
    indices stop being a simple ramp and the vector code turns into gathers."""
    best = None
    for v in range(2, min(extent, max_registers * lanes) + 1):
        if extent % v or any(v % r and r % v for r in rows):
            continue
        if v > lanes and v % lanes:  # e.g. 14 lanes of AVX2 = 8 + 4 + 2: slower than 7
            continue
        efficiency = v / (math.ceil(v / lanes) * lanes)
        key = (efficiency, v)
        if best is None or key > best[0]:
            best = (key, v)
    return best[1] if best else None


def _largest_divisor(n, limit):
    for f in range(min(n, max(1, limit)), 0, -1):
        if n % f == 0:
            return f
    return 1


def _parallel_worth_it(info, lanes, params, minimum=None):
    """A parallel launch costs microseconds: only loops with enough (vector) iterations
    (`minimum`, default PARALLEL_MIN_ITERATIONS), where each call of a math library function
    (exp: never vectorized) weighs CALL_ITERATIONS."""
    iterations = info.work / max(1, lanes) + info.work * info.calls * CALL_ITERATIONS
    minimum = PARALLEL_MIN_ITERATIONS if minimum is None else minimum
    return params.cores > 1 and iterations >= minimum


def _parallelize(sch, loops, params):
    """Fuse the shortest prefix of `loops` that gives every core a few chunks and mark it
    parallel (fusing more only adds index arithmetic). Returns (loops after fusion, note)."""
    extents = [_size(sch.get(lp).extent) for lp in loops]
    want = PARALLEL_CHUNKS_PER_CORE * params.cores
    count, product = len(loops), 1
    for i, ext in enumerate(extents):
        product *= ext
        if product >= want:
            count = i + 1
            break
    if product < 2:
        return loops, ""
    head = sch.fuse(*loops[:count]) if count > 1 else loops[0]
    sch.parallel(head)
    return [head] + list(loops[count:]), "parallel"


def _in_tasks(sch, loop):
    """[loop] to parallelize, or, where it has more than PARALLEL_TASKS_MAX iterations, [its
    tasks, their serial iterations]: split by the least divisor of its extent from
    PARALLEL_TASKS on that leaves each task at least 4 iterations (none: a symbolic or prime
    extent, as it is). A parallel loop's body is each task's code (the denormal mode's check,
    see params.PARALLEL_TASKS_MAX)."""
    extent = _const(sch.get(loop).extent)
    if extent is None or extent <= PARALLEL_TASKS_MAX:
        return [loop]
    # Not over an if_then_else: TVM runs the vector loop holding one as scalars, and LLVM
    # then vectorized the tasks' serial loop across its iterations, by gathers and scatters
    # (autodiff's relu gradient over b32 64@28, an if_then_else then: 916 -> 3960 us)
    if any(_has_if_then_else(sch.get(b)) for b in sch.get_child_blocks(loop)):
        return [loop]
    tasks = next((p for p in range(PARALLEL_TASKS, extent // 4 + 1) if extent % p == 0), None)
    if tasks is None:
        return [loop]
    return list(sch.split(loop, factors=[tasks, None]))


def _vectorize_innermost(sch, block, lanes):
    """Vectorize a block's innermost non-unit loop (unit loops after it fused into it)."""
    loops = list(sch.get_loops(block))
    while len(loops) > 1 and _const(sch.get(loops[-1]).extent) == 1:
        loops.pop()
    if not loops:
        return
    ext = _const(sch.get(loops[-1]).extent)
    if not ext or not 2 <= ext <= 4 * lanes or int(sch.get(loops[-1]).kind) != 0:
        return
    tail = list(sch.get_loops(block))[len(loops):]
    if any(int(sch.get(lp).kind) != 0 for lp in tail):
        return
    sch.vectorize(sch.fuse(loops[-1], *tail) if tail else loops[-1])
