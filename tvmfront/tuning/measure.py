"""Timing kernels on their own (default schedules vs records), here or on a remote device,
and timing a whole module call."""

import logging
import time

import numpy as np

from .._tvm import prim_func_type, to_device, tvm
from ..build import compile_kernels, schedule_lowered
from . import policy, remote as rpc_mod, symbolic

log = logging.getLogger("tvmfront.tune")


def measure_kernels(lowered, target, names, records=False, every_record=False,
                    min_repeat_ms=25, repeat=5, remote=None, sizes=None):
    """{kernel name: median latency in microseconds} of the named kernels of `lowered`,
    scheduled as a build with `records` would schedule them (every_record: with every record,
    also those found slower than the default schedule), built into one library and each timed
    on its own with random inputs (integer inputs are zeros: valid indices). remote (a
    tvmfront.rpc spec): timed on that device, the library linked here and uploaded. Kernels
    with symbolic dimensions are timed at `sizes` ({name: size}, default 64 each)."""
    selection = policy.select(records, target, every_record=every_record)
    scheduled, _ = schedule_lowered(lowered, target, selection)
    funcs = {}
    for gvar, func in scheduled.functions.items():
        if gvar.name_hint in names and isinstance(func, prim_func_type()):
            funcs[gvar.name_hint] = func.with_attr("global_symbol", gvar.name_hint)
    if not funcs:
        return {}
    # compiled as module builds compile them (LLVM opt level, no kernel asserts): a verdict
    # judged at another opt level than builds use would judge other code
    lib = compile_kernels(tvm.IRModule(funcs), target)
    if remote is not None:
        with rpc_mod.session(remote) as sess:
            remote_lib, device = rpc_mod.upload(sess, lib, target)
            try:
                return _time_kernels(remote_lib, device, funcs, min_repeat_ms, repeat, sizes)
            finally:
                del remote_lib, device  # remote objects go before the session ends
    lib = lib.jit() if hasattr(lib, "jit") else lib  # an Executable: compile to a library
    device = tvm.cpu() if target.kind.name == "llvm" else tvm.cuda(0)
    return _time_kernels(lib, device, funcs, min_repeat_ms, repeat, sizes)


def _time_kernels(lib, device, funcs, min_repeat_ms, repeat, sizes=None):
    rng = np.random.default_rng(0)
    out = {}
    for name, func in funcs.items():
        try:
            args = []
            for param in func.params:
                if symbolic.is_scalar(param):  # a symbolic size Relax passes as a scalar
                    args.append(symbolic.evaluate(param, sizes))
                    continue
                # TVM 0.27: a PrimFunc's parameters are buffer-typed vars (shape, dtype)
                buf = func.buffer_map[param] if hasattr(func, "buffer_map") else param
                shape = [symbolic.evaluate(s, sizes) for s in buf.shape]
                dtype = str(buf.dtype)
                if dtype.startswith("float"):
                    arr = rng.uniform(0.1, 1.0, shape).astype(dtype)
                else:
                    arr = np.zeros(shape, dtype)
                args.append(to_device(arr, device))
            timer = lib.time_evaluator(name, device, number=1, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)
            out[name] = float(np.median(timer(*args).results)) * 1e6
        except Exception as err:  # a kernel that cannot be timed alone keeps no latency
            log.info("could not time kernel %s: %s", name, err)
        finally:
            args = timer = None
    return out


def measured(lowered, target, names, **kw):
    """measure_kernels, or {} (logged) when the kernels cannot be built alone or timed on the
    remote device: tuning goes on with weights by call count only, and records apply
    unmeasured."""
    try:
        return measure_kernels(lowered, target, names, **kw)
    except Exception as err:
        where = f" on {kw['remote']}" if kw.get("remote") is not None else ""
        log.warning("could not time the kernels on their own%s: %s", where, err)
        return {}


PAIRED_ROUNDS = 3  # rounds of default-then-tuned (alternating) behind each verdict


def paired(lowered, target, names, records, rounds=PAIRED_ROUNDS, **kw):
    """({name: default-schedule us}, {name: us with `records`}) of the named kernels, timed
    in turns, the first of each round alternating, each the median of its rounds.

    A verdict compares these two: timed minutes apart (the default before the search, the
    record after it) they measured the load of the moment as much as the kernels on a shared
    machine (the MLP's dense: default 251 us under load before a search, 29 us idle; its
    record 104 us), and a record that lost by 3.6x was kept as faster."""
    default, tuned = {}, {}
    for r in range(rounds):
        pair = [(False, dict(every_record=False), default),
                (records, dict(every_record=True), tuned)]
        for recs, extra, into in (pair if r % 2 == 0 else pair[::-1]):
            for name, us in measured(lowered, target, names, records=recs, **extra,
                                     **kw).items():
                into.setdefault(name, []).append(us)
    return ({n: float(np.median(v)) for n, v in default.items()},
            {n: float(np.median(v)) for n, v in tuned.items()})


def _random(rng, shape, dtype):
    # integer inputs (token ids) get small non-negative values, valid for any table
    if np.dtype(dtype).kind in "iu":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def module_call(module, seed=0, sizes=None):
    """A function running one call of `module` on random inputs made once: a train step
    (random batch, lr 0) or a forward. Symbolic dimensions take `sizes` ({name: size}; a
    name not given: 64, the size tvf.tune tunes at by default)."""
    rng = np.random.default_rng(seed)
    sizes = symbolic.check_sizes(sizes)

    def shape(spec):
        return [sizes.get(d, symbolic.DEFAULT_SIZE) if isinstance(d, str) else d
                for d in spec["shape"]]

    inputs = module.manifest["inputs"]  # {shape, dtype}, or a list of them (several inputs)
    xs = tuple(_random(rng, shape(s), s["dtype"])
               for s in ([inputs] if isinstance(inputs, dict) else inputs))
    x = xs[0] if len(xs) == 1 else xs
    if getattr(module, "kind", None) == "training":
        lab = module.manifest["labels"]
        classes = module.manifest.get("num_classes")
        if classes:
            y = rng.integers(0, classes, shape(lab)).astype(lab["dtype"])
        else:
            y = rng.standard_normal(shape(lab)).astype(lab["dtype"])
        return lambda: module.step(x, y, lr=0.0)
    return lambda: module(x)


def time_module(module, min_seconds=1.0, min_runs=10, seed=0, sizes=None):
    """Median seconds of one call (module_call's), after 3 warm-up calls."""
    call = module_call(module, seed, sizes)
    for _ in range(3):
        call()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
        if len(times) >= 10000:
            break
    return float(np.median(times))
