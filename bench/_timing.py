"""Timing and the worker protocol shared by every bench worker (stdlib only: it runs in .venv
and in .venv-bench alike).

A worker is started as ``python bench/_peer_X.py '<json spec>'`` and prints one JSON line as
its last line of stdout; anything else it prints (library chatter) is ignored by the driver.
"""

import json
import statistics
import sys
import time

# Every timed call: WARMUP calls first, then at least MIN_RUNS calls and MIN_SECONDS of calls;
# the median is reported. The spec may override both (the driver's --quick).
WARMUP = 5
MIN_RUNS = 30
MIN_SECONDS = 1.0


def median_seconds(fn, spec=None, warmup=None):
    """Median wall seconds of `fn()` (which must return only once its work is done)."""
    spec = spec or {}
    min_runs = spec.get("min_runs", MIN_RUNS)
    min_seconds = spec.get("min_seconds", MIN_SECONDS)
    for _ in range(WARMUP if warmup is None else warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 20000:
            break
    return statistics.median(times)


def alternating_medians(timers, rounds):
    """[median] of each timer (a callable returning one time) over `rounds` rounds, the timers
    alternating within each round, their order reversed every other round: kernels compared
    with each other see the same phases of a shared machine (timed one after the other, a
    slow phase once read a backward 1.8x or 2.1x its forward)."""
    times = [[] for _ in timers]
    for r in range(rounds):
        order = list(range(len(timers)))
        for k in order if r % 2 == 0 else reversed(order):
            times[k].append(timers[k]())
    return [statistics.median(t) for t in times]


def interleaved_medians(fns, rounds=9, block_seconds=0.1, rest_seconds=0.15):
    """{name: [median seconds of each round's block]} for several callables timed in turn,
    round after round (the order reversed every round), in one process.

    Contenders timed minutes apart in separate processes drift apart with the machine (on a
    shared 2-core VM back-to-back runs of one kernel differed 1.5-2x); blocks of ~0.1 s that
    alternate see the same machine, so the ratio of two contenders' blocks in one round is
    steady even when both times move. Between blocks the process sleeps `rest_seconds`: a
    thread pool keeps spinning after its last call (OpenBLAS ~2^28 cycles, ~0.1 s), which
    would otherwise take the cores from the next contender."""
    names = list(fns)
    blocks = {n: [] for n in names}
    for round_ in range(rounds):
        for n in (names if round_ % 2 == 0 else names[::-1]):
            time.sleep(rest_seconds)
            fns[n]()  # wakes the pool after the rest
            times, start = [], time.perf_counter()
            while len(times) < 3 or time.perf_counter() - start < block_seconds:
                t = time.perf_counter()
                fns[n]()
                times.append(time.perf_counter() - t)
            blocks[n].append(statistics.median(times))
    return blocks


def paired_ratio(blocks, numerator, denominator):
    """Median over rounds of numerator's block time / denominator's (interleaved_medians)."""
    return statistics.median(a / b for a, b in zip(blocks[numerator], blocks[denominator]))


def first_and_median(fn, spec=None):
    """{"seconds": median of fn's calls, "compile_s": its first call} (where torch.compile and
    jax.jit compile: their first-call time)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    return {"seconds": median_seconds(fn, spec), "compile_s": first}


def read_spec():
    return json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}


def emit(result):
    sys.stdout.flush()
    print("\n" + json.dumps(result), flush=True)


def guarded(fn, *args, **kwargs):
    """fn(...) or {"error": "..."}: one failing contender variant does not sink the rest."""
    try:
        return fn(*args, **kwargs)
    except Exception as err:  # reported in the table as n/a (error)
        lines = str(err).strip().splitlines() or [type(err).__name__]
        return {"error": f"{type(err).__name__}: {lines[0][:200]}"}
