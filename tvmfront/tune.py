"""tvf.tune: MetaSchedule tuning of a compiled module's kernels, with records that persist.

    report = tvf.tune(module, budget=64)          # trials; seconds=... bounds wall time
    print(report)                                 # per-kernel table
    module.step(x, y)                             # the module now runs the tuned kernels

How a run goes:

1. Tasks: MetaSchedule's task extraction on the module's lowered, not yet scheduled IR (kept by
   compile_training / compile_inference as ``module._lowered``): one task per distinct kernel.
2. Weights: each task's share of step time = (calls per step) x (its latency with the default
   schedule, measured here). Calls are counted in the function the module runs (train_step for a
   training module, predict for an inference module); calls from its other functions (eval
   predict, loss) count 1/50. Tasks are tuned in the order of their share, so a budget too small
   for every task goes to the kernels that take the time; afterwards the task with the largest
   expected gain (weight x latency x recent improvement, MetaSchedule's gradient rule) goes next.
3. Search: MetaSchedule's evolutionary search with the XGBoost cost model, batches of up to 16
   candidates, built by a LocalBuilder whose workers skip ``import tvm.s_tir.tensor_intrin``
   (timeout 120 s; see tvmfront._tvm.ms_local_builder) and timed by a LocalRunner. A
   candidate that fails to build or run is logged (the log file is named in the report) and
   skipped; the search goes on. With ``rpc=`` (tvmfront.rpc) the builder links each candidate
   here as a shared library (with the cross compiler for another CPU) and MetaSchedule's
   RPCRunner times it on the device: one server, or every server a tracker holds under a key,
   one session per server at once. The default-schedule and tuned latencies of steps 2 and 6
   are then timed on the device as well (one session, the kernels uploaded as one library).
4. Budget: ``budget`` trials and/or ``seconds`` of wall time. The time limit is checked by a
   measure callback after every batch; no batch is started that would end well past it.
5. Records: tuning writes into a temporary database (seeded with the store's records, so a run
   resumes where the last stopped) and merges it into ``<records root>/<target key>`` keeping the
   best record per kernel (tvmfront.records.merge: atomic, locked). This happens however tuning
   ends: budget spent, time up, a failure, or Ctrl-C. The first Ctrl-C stops after the current
   batch and tune returns normally; a second one (or a KeyboardInterrupt raised elsewhere, e.g.
   from a progress callback) stops at once and is re-raised after the merge.
6. Rebuild: the module is rebuilt **in place** with the store's records (and default schedules
   for kernels without one): the same object runs the tuned kernels from then on, with its
   parameters, optimizer state and step count unchanged. tune returns a TuneReport.
"""

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import namedtuple

import numpy as np

from . import config
from . import records as records_mod
from . import rpc as rpc_mod
from ._tvm import (Target, derived_object, meta_schedule, ms_local_builder, normalize_prim_func,
                   prim_func_type, relax, relax_call_tir_op, structural_hash, to_device, tvm)
from .build import build_lowered, runnable_here, schedule_lowered
from .errors import TvmfrontError
from .target import target_json, target_key

log = logging.getLogger("tvmfront.tune")

MAX_BATCH = 16  # candidates built and timed per batch
OTHER_CALLS_WEIGHT = 0.02  # calls outside the main function (eval predict, loss): tuned last

# Progress as a progress callback receives it. Latencies in microseconds; step_us and
# default_us estimate the kernel time of one call of the main function (calls x latency per
# kernel, MetaSchedule's measurement for tuned kernels); seconds_left is None when unknown.
TuneProgress = namedtuple("TuneProgress", "trials budget tasks_tuned tasks failed elapsed "
                                          "seconds_left step_us default_us")


class Kernel:
    """One tuning task: a distinct kernel, the functions calling it and its latencies."""

    def __init__(self, name, names, workload_hash, calls, other_calls):
        self.name, self.names, self.hash = name, names, workload_hash
        self.calls, self.other_calls = calls, other_calls
        self.default_us = None  # measured here, default schedule
        self.tuned_us = None  # measured here, with the records (tvmfront tune's report)
        self.record_us = None  # the store's best record (MetaSchedule's measurement)
        self.trials = 0

    @property
    def weight(self):
        return self.calls + OTHER_CALLS_WEIGHT * self.other_calls

    @property
    def share_us(self):
        return self.weight * (self.default_us if self.default_us is not None else 1.0)

    def __repr__(self):
        return f"<kernel {self.name} x{self.calls}: default {self.default_us} us>"


class TuneReport:
    """What tvf.tune did: ``kernels`` (Kernel rows, largest share first), ``trials``,
    ``failed`` (candidates that did not build or run), ``elapsed`` seconds, ``stopped``
    ('budget', 'time', 'interrupt' or 'done'), ``store`` (the records folder), ``log`` (the
    tuning log file), ``module`` (rebuilt in place), and with rpc= ``remote`` (where the
    candidates were timed, as text) and ``servers`` (how many timed them)."""

    def __init__(self, module, kernels, store, log_path):
        self.module, self.kernels, self.store, self.log = module, kernels, store, log_path
        self.trials = self.failed = 0
        self.elapsed = 0.0
        self.stopped = "done"
        self.merged = 0
        self.remote, self.servers = None, 1  # where candidates were timed (tvmfront.rpc)

    def table(self, top=None):
        """The per-kernel table: calls, default and tuned latency, speedup."""
        rows = [("kernel", "calls", "default us", "tuned us", "record us", "speedup", "trials")]
        kernels = self.kernels if top is None else self.kernels[:top]
        for k in kernels:
            tuned = k.tuned_us if k.tuned_us is not None else k.record_us
            speed = (f"{k.default_us / tuned:.2f}x" if k.default_us and tuned else "-")
            rows.append((k.name[:48], f"{k.calls:g}" if k.calls else f"({k.other_calls:g})",
                         _us(k.default_us), _us(k.tuned_us), _us(k.record_us), speed,
                         str(k.trials)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                           for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
        if top is not None and len(self.kernels) > top:
            lines.append(f"... and {len(self.kernels) - top} more kernel(s)")
        return "\n".join(lines)

    def __str__(self):
        head = (f"tuned {len([k for k in self.kernels if k.trials])}/{len(self.kernels)} "
                f"kernels: {self.trials} trials ({self.failed} failed) in {self.elapsed:.0f} s, "
                f"stopped: {self.stopped}; records: {self.store}")
        if self.remote is not None:
            head += f"\nmeasured over RPC on {self.remote} ({self.servers} server(s))"
        return head + "\n" + self.table()

    __repr__ = __str__


def _us(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 \
        else f"{x:,.0f}"


# ---- kernels, calls and default latencies ---------------------------------------------------
def _main_function(module):
    return "train_step" if getattr(module, "kind", None) == "training" else "predict"


def _call_counts(lowered, main):
    """({kernel name: calls per call of `main`}, {kernel name: calls per call of each other
    Relax function, summed}). Calls through other Relax functions (train_step calls
    loss_adjoint) count as often as those are called."""
    op = relax_call_tir_op()
    funcs = {gv.name_hint: f for gv, f in lowered.functions.items()
             if isinstance(f, relax.Function)}
    direct = {}
    for name, func in funcs.items():
        kernels, callees = {}, {}
        for block in getattr(func.body, "blocks", []):
            for binding in block.bindings:
                value = binding.value
                if not isinstance(value, relax.Call):
                    continue
                if value.op.same_as(op):
                    k = value.args[0].name_hint
                    kernels[k] = kernels.get(k, 0) + 1
                elif isinstance(value.op, tvm.ir.GlobalVar) and value.op.name_hint in funcs:
                    callees[value.op.name_hint] = callees.get(value.op.name_hint, 0) + 1
        direct[name] = (kernels, callees)
    memo = {}

    def total(name, stack=()):
        if name not in memo:
            kernels, callees = direct[name]
            out = dict(kernels)
            for callee, n in callees.items():
                if callee not in stack:
                    for k, m in total(callee, stack + (name,)).items():
                        out[k] = out.get(k, 0) + n * m
            memo[name] = out
        return memo[name]

    inside = total(main) if main in funcs else {}
    outside = {}
    for name in funcs:
        if name != main:
            for k, m in total(name).items():
                outside[k] = outside.get(k, 0) + m
    return inside, outside


def kernels_of(module):
    """The module's tuning tasks as Kernel rows (default latencies not measured yet)."""
    lowered, target = _lowered_of(module)
    inside, outside = _call_counts(lowered, _main_function(module))
    by_hash = {}
    for gvar, func in lowered.functions.items():
        if isinstance(func, prim_func_type()):
            by_hash.setdefault(str(structural_hash(normalize_prim_func(func))), []).append(
                gvar.name_hint)
    out = []
    for h, names in by_hash.items():
        out.append(Kernel(names[0], names, h, sum(inside.get(n, 0) for n in names),
                          sum(outside.get(n, 0) for n in names)))
    return out


def measure_kernels(lowered, target, names, records=False, every_record=False,
                    min_repeat_ms=25, repeat=5, remote=None):
    """{kernel name: median latency in microseconds} of the named kernels of `lowered`,
    scheduled as a build with `records` would schedule them (every_record: with every record,
    also those found slower than the default schedule), built into one library and each timed
    on its own with random inputs (integer inputs are zeros: valid indices). remote (a
    tvmfront.rpc spec): timed on that device, the library linked here and uploaded."""
    selection = records_mod.select(records, target, every_record=every_record)
    scheduled, _ = schedule_lowered(lowered, target, selection)
    funcs = {}
    for gvar, func in scheduled.functions.items():
        if gvar.name_hint in names and isinstance(func, prim_func_type()):
            funcs[gvar.name_hint] = func.with_attr("global_symbol", gvar.name_hint)
    if not funcs:
        return {}
    lib = tvm.compile(tvm.IRModule(funcs), target=target)
    if remote is not None:
        with rpc_mod.session(remote) as sess:
            remote_lib, device = rpc_mod.upload(sess, lib, target)
            try:
                return _time_kernels(remote_lib, device, funcs, min_repeat_ms, repeat)
            finally:
                del remote_lib, device  # remote objects go before the session ends
    lib = lib.jit() if hasattr(lib, "jit") else lib  # an Executable: compile to a library
    device = tvm.cpu() if target.kind.name == "llvm" else tvm.cuda(0)
    return _time_kernels(lib, device, funcs, min_repeat_ms, repeat)


def _time_kernels(lib, device, funcs, min_repeat_ms, repeat):
    rng = np.random.default_rng(0)
    out = {}
    for name, func in funcs.items():
        try:
            args = []
            for param in func.params:
                # TVM 0.27: a PrimFunc's parameters are buffer-typed vars (shape, dtype)
                buf = func.buffer_map[param] if hasattr(func, "buffer_map") else param
                shape = [int(s) for s in buf.shape]
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


def _measured(lowered, target, names, **kw):
    """measure_kernels, or {} (logged) when the kernels cannot be built alone or timed on the
    remote device: tuning goes on with weights by call count only, and records apply
    unmeasured."""
    try:
        return measure_kernels(lowered, target, names, **kw)
    except Exception as err:
        where = f" on {kw['remote']}" if kw.get("remote") is not None else ""
        log.warning("could not time the kernels on their own%s: %s", where, err)
        return {}


def _lowered_of(module):
    lowered, target = getattr(module, "_lowered", None), getattr(module, "_target", None)
    if lowered is None or target is None:
        raise TvmfrontError(
            "tvf.tune needs a module made by tvf.compile_training or tvf.compile_inference in "
            "this process (it tunes the module's IR); a bundle loaded with tvf.load has no IR "
            "to tune: compile the model, tune it, then export")
    return lowered, target


def time_module(module, min_seconds=1.0, min_runs=10, seed=0):
    """Median seconds of one call: a train step (random batch) or a forward."""
    rng = np.random.default_rng(seed)
    spec = module.manifest["inputs"]
    x = rng.standard_normal(spec["shape"]).astype(spec["dtype"])
    if getattr(module, "kind", None) == "training":
        lab = module.manifest["labels"]
        classes = module.manifest.get("num_classes")
        if classes:
            y = rng.integers(0, classes, lab["shape"]).astype(lab["dtype"])
        else:
            y = rng.standard_normal(lab["shape"]).astype(lab["dtype"])

        def call():
            module.step(x, y, lr=0.0)
    else:
        def call():
            module(x)
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


# ---- the tuning run ---------------------------------------------------------------------------
class _Run:
    """State of one tuning run, shared by the task scheduler and the measure callback."""

    def __init__(self, kernels, budget, seconds, per_batch, progress):
        self.kernels, self.budget, self.seconds = kernels, budget, seconds
        self.per_batch, self.progress = per_batch, progress
        self.t0 = time.monotonic()
        self.trials = self.failed = self.batches = 0
        self.best = [None] * len(kernels)  # seconds
        self.history = [[] for _ in kernels]
        self.stop = None  # why tuning stops: 'time', 'interrupt'
        self.exception = None  # a Python exception raised inside TVM's tuning loop
        self.tty = progress is True and sys.stderr.isatty()

    def elapsed(self):
        return time.monotonic() - self.t0

    # called by the measure callback after every batch
    def on_batch(self, task_id, builder_results, runner_results):
        k = self.kernels[task_id]
        self.batches += 1
        self.trials += len(runner_results)
        k.trials += len(runner_results)
        best = self.best[task_id]
        for b, r in zip(builder_results, runner_results):
            error = b.error_msg or r.error_msg
            if error:
                self.failed += 1
                stage = "build" if b.error_msg else "run"
                lines = str(error).strip().splitlines()
                log.info("kernel %s: a candidate failed to %s (skipped): %s", k.name, stage,
                         lines[-1] if lines else "?")
                continue
            secs = [float(s) for s in r.run_secs]
            t = float(np.median(secs))
            if t < records_mod.FAILED_SECONDS and (best is None or t < best):
                best = t
        self.best[task_id] = best
        self.history[task_id].append(best if best is not None else math.inf)
        if self.seconds is not None and self.elapsed() >= self.seconds:
            self.stop = self.stop or "time"
        self.report()

    def snapshot(self):
        step = default = 0.0
        for k, best in zip(self.kernels, self.best):
            d = k.default_us if k.default_us is not None else 0.0
            default += k.weight * d
            step += k.weight * (min(d, best * 1e6) if best is not None and d else
                                best * 1e6 if best is not None else d)
        elapsed = self.elapsed()
        left = []
        if self.seconds is not None:
            left.append(max(0.0, self.seconds - elapsed))
        if self.budget is not None and self.trials:
            left.append(elapsed / self.trials * max(0, self.budget - self.trials))
        return TuneProgress(self.trials, self.budget,
                            sum(1 for k in self.kernels if k.trials), len(self.kernels),
                            self.failed, elapsed, min(left) if left else None, step, default)

    def report(self, final=False):
        if not self.progress:
            return
        p = self.snapshot()
        if callable(self.progress) and self.progress is not True:
            if not final:  # a callback hears every batch; the printed line also ends
                self.progress(p)
            return
        budget = f"/{p.budget}" if p.budget is not None else ""
        left = "" if p.seconds_left is None or final else f"  left {_clock(p.seconds_left)}"
        line = (f"tune: trials {p.trials}{budget}  tasks {p.tasks_tuned}/{p.tasks}  "
                f"est. kernels {p.step_us:,.1f} us/call (default {p.default_us:,.1f})  "
                f"failed {p.failed}  {_clock(p.elapsed)} elapsed{left}")
        if self.tty:
            sys.stderr.write("\r" + line + "\033[K" + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    # called by the task scheduler for every batch
    def should_stop(self):
        if self.stop:
            return True
        if self.budget is not None and self.trials + self.per_batch > self.budget:
            self.stop = "budget"  # no batch that would take more trials than the budget
            return True
        if self.seconds is not None and self.batches:
            per_batch = self.elapsed() / self.batches
            if self.elapsed() + 0.5 * per_batch >= self.seconds:
                self.stop = "time"
                return True
        return False

    def next_task(self, outer):
        tasks = outer.tasks_
        for i, task in enumerate(tasks):  # run the measure callbacks of finished batches
            if not task.is_terminated and task.runner_futures is not None:
                outer.join_running_task(i)
        alive = [i for i, task in enumerate(tasks) if not task.is_terminated]
        if not alive:
            return -1
        if self.should_stop():
            for i in alive:
                outer.terminate_task(i)
            return -1
        for i in alive:  # first, every task once, largest share of step time first
            if not self.history[i]:
                return i
        best_i, best_g = alive[0], -math.inf
        for i in alive:  # then MetaSchedule's gradient rule on the step time each task takes
            hist, k = self.history[i], self.kernels[i]
            if not math.isfinite(hist[-1]):
                g = -1e9  # nothing valid yet: last
            else:
                n, w = len(hist), 3
                g1 = (hist[-1 - w] - hist[-1]) / w if n >= 1 + w and math.isfinite(hist[-1 - w]) \
                    else 0.0
                # the kernel runs min(default, best found) per call
                now = min(hist[-1], k.default_us * 1e-6) if k.default_us else hist[-1]
                g = (0.2 * g1 + 0.8 * now / n) * k.weight
            if g > best_g:
                best_i, best_g = i, g
        return best_i


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


_CLASSES = {}


def _tvm_classes():
    """The MetaSchedule task scheduler and measure callback subclasses (made once)."""
    if _CLASSES:
        return _CLASSES["scheduler"], _CLASSES["callback"]
    ms = meta_schedule()

    @derived_object
    class BudgetScheduler(ms.task_scheduler.PyTaskScheduler):
        """Picks tasks by share of step time; stops when the run says so."""

        def __init__(self, run):
            super().__init__()
            self.run = run

        def next_task_id(self):
            try:
                return self.run.next_task(self._outer())
            except BaseException as err:  # TVM turns it into a RuntimeError: keep the original
                self.run.exception = self.run.exception or err
                raise

    @derived_object
    class BatchCallback(ms.measure_callback.PyMeasureCallback):
        """After every batch: counts, failures, best latency, time limit, progress."""

        def __init__(self, run):
            super().__init__()
            self.run = run

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            try:
                self.run.on_batch(task_id, builder_results, runner_results)
            except BaseException as err:
                self.run.exception = self.run.exception or err
                raise

    _CLASSES.update(scheduler=BudgetScheduler, callback=BatchCallback)
    return BudgetScheduler, BatchCallback


@contextlib.contextmanager
def _ctrl_c(run):
    """First Ctrl-C: stop after the current batch. Second: KeyboardInterrupt at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if run.stop == "interrupt":
            run.exception = run.exception or KeyboardInterrupt()
            raise run.exception
        run.stop = "interrupt"
        sys.stderr.write("\ntune: Ctrl-C: stopping after the current batch, keeping every "
                         "record (press Ctrl-C again to stop at once)\n")
        sys.stderr.flush()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _logging_to(path):
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger(n) for n in ("tvm.s_tir.meta_schedule", "tvmfront.tune")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        if lg.level == logging.NOTSET or lg.level > logging.INFO:
            lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)
        handler.close()


def _batch_size(budget):
    """Candidates per batch: at most MAX_BATCH, dividing the budget evenly."""
    if budget is None:
        return MAX_BATCH
    return max(1, budget // math.ceil(budget / MAX_BATCH))


def _log_path(key):
    folder = os.path.join(os.environ.get("TVMFRONT_CACHE_DIR")
                          or os.path.join(os.path.expanduser("~"), ".cache", "tvmfront"),
                          "tune-logs")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        folder = tempfile.gettempdir()
    return os.path.join(folder, f"{key}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")


def tune(module, budget=64, seconds=None, records=None, progress=True, seed=0,
         batch_size=None, rpc=None):
    """Tune every kernel of a compiled module with MetaSchedule; keep the records; rebuild.

    module: a TrainingModule / InferenceModule from tvf.compile_training / compile_inference
      (this process: it keeps the IR to tune). The module is **rebuilt in place** with the
      records afterwards, so it runs the tuned kernels at once; its parameters, optimizer
      state and step count are kept. (Other modules of the same model pick the records up
      when compiled with the same records root.)
    budget: measured candidates in all, never exceeded (None: no limit; then give seconds).
    seconds: wall-time limit, checked after every batch (None: no limit).
    records: the records root; the records go to ``<records>/<target key>/``. None: the root
      the module was compiled with, else TVMFRONT_RECORDS, else the default root
      (``<repo>/schedules``).
    progress: True prints a progress line (tasks tuned, trials, estimated kernel time per step,
      failures, time left) to stderr; False is silent; a callable receives a TuneProgress after
      every batch (raising KeyboardInterrupt there stops tuning as Ctrl-C does).
    seed: seed of the search.
    batch_size: candidates per batch (default: at most 16, dividing the budget evenly).
    rpc: measure on other machines over TVM RPC instead of here (tvmfront.rpc):
      ``"host:port"`` (one ``python -m tvm.exec.rpc_server``), ``"host:port/key"`` (a tracker:
      candidates fan out over every server registered under the key), or a dict
      ``{"host", "port"}`` / ``{"tracker": "host:port", "key"}`` with an optional
      ``"timeout"`` (seconds per measurement session, default 60). Candidates and the kernels
      timed before and after tuning are built here (cross-compiled for a target this machine
      cannot run, e.g. "arm") and timed on the device. The module is rebuilt in place all the
      same; for a target this machine cannot run, export it and run the bundle on the device.

    Tasks are weighted by call count x measured default-schedule latency (see the module
    docstring). Returns a TuneReport; str(report) is a per-kernel table.
    """
    if budget is None and seconds is None:
        raise ValueError("tune needs a budget (trials) or seconds (wall time), or both")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be at least 1 trial, got {budget}")
    lowered, target = _lowered_of(module)
    remote = rpc_mod.parse(rpc) if rpc is not None else None
    if remote is None and not runnable_here(target):
        raise TvmfrontError(f"tuning times candidates on this machine, which cannot run code for "
                            f"{target_key(target)}: measure on such a device over RPC "
                            f"(tvf.tune(module, rpc=\"board:9090\"), see tvmfront.rpc), or tune "
                            f"on it (the records are files: copy <records>/{target_key(target)} "
                            f"back)")
    if remote is not None:
        rpc_mod.cxx_for(target)  # a cross compiler for the device's CPU, before any work
        if target.kind.name != "llvm":
            raise TvmfrontError(f"tuning over RPC supports CPU (llvm) targets, not "
                                f"{target.kind.name}")
        servers = rpc_mod.servers(remote)  # RpcError naming the address if unreachable
    if progress is True:
        progress = config.progress_enabled()
    root = records
    if root is None:
        given = getattr(module, "_records", None)
        root = given if given not in (None, False) else records_mod.default_root()
    root = os.path.abspath(os.fspath(root))
    if records_mod.is_database(root):
        raise TvmfrontError(f"{root} is one database folder; tune takes a records root and "
                            f"writes to <root>/{target_key(target)}")
    store = records_mod.store_for(root, target)
    key = target_key(target)

    kernels = kernels_of(module)
    default = _measured(lowered, target, {k.name for k in kernels}, records=False,
                        remote=remote)
    for k in kernels:
        k.default_us = default.get(k.name)
    kernels.sort(key=lambda k: -k.share_us)
    report = TuneReport(module, kernels, store, _log_path(key))
    if remote is not None:
        report.remote, report.servers = str(remote), servers
    if not kernels:
        return report

    ms = meta_schedule(target)
    per_batch = batch_size or _batch_size(budget)
    run = _Run(kernels, budget, seconds, per_batch, progress)
    work = tempfile.mkdtemp(prefix="tvmfront-tune-")
    try:
        _seed_work_dir(work, store, key)
        with _logging_to(report.log):
            _tune_in(work, ms, lowered, target, kernels, run, budget, per_batch, seed,
                     remote, report.servers)
    finally:
        report.trials, report.failed, report.elapsed = run.trials, run.failed, run.elapsed()
        report.stopped = run.stop or ("budget" if budget is not None and run.trials >= budget
                                      else "done")
        try:
            if records_mod.is_database(work):
                os.makedirs(store, exist_ok=True)
                report.merged = records_mod.merge(work, store, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if progress:
            run.report(final=True)
    _finish(report, module, root, target, remote)
    return report


def _seed_work_dir(work, store, key):
    """Start from the store's records: the search skips what was measured before."""
    if not records_mod.is_database(store):
        return
    db = records_mod.read(store)
    if db is None:
        return
    mine, _ = records_mod.for_target(db, key)
    records_mod.write(work, records_mod.best_only(mine))


def _tune_in(work, ms, lowered, target, kernels, run, budget, per_batch, seed, remote=None,
             servers=1):
    if remote is not None and "num-cores" not in target.attrs:
        # MetaSchedule needs the device's core count (parallel loops); not part of the key
        target = Target(dict(target_json(target), **{"num-cores": rpc_mod.device_threads(remote)}))
    tasks = {str(structural_hash(t.mod)): t
             for t in ms.relax_integration.extract_tasks(lowered, target)}
    big = budget is None or budget >= 64
    population = 512 if big else 128
    seeds = ms.utils.fork_seed(seed, len(kernels))
    search_log = logging.getLogger("tvmfront.tune.search")
    contexts = []
    for k, s in zip(kernels, seeds):
        task = tasks[k.hash]
        contexts.append(ms.TuneContext(
            mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 4),
                genetic_num_iters=4 if big else 2),
            task_name=k.name, rand_state=s, logger=search_log).clone())
    try:
        database = ms.database.JSONDatabase(work_dir=work)
    except Exception as err:  # the seeded records do not load: start empty
        log.warning("starting without the stored records: %s", err)
        for name in (records_mod.WORKLOADS, records_mod.RECORDS):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(work, name))
        database = ms.database.JSONDatabase(work_dir=work)
    scheduler_cls, callback_cls = _tvm_classes()
    if remote is None:
        builder = ms_local_builder(timeout_sec=120)
        runner = ms.runner.LocalRunner(timeout_sec=60)
    else:  # linked here (cross-compiled), timed on the servers: one session per server at once
        builder = rpc_mod.builder(target, timeout_sec=120)
        runner = rpc_mod.runner(remote, workers=servers)
    callbacks = list(ms.measure_callback.MeasureCallback.create("default")) + [callback_cls(run)]
    try:
        with _ctrl_c(run):
            ms.tune_tasks(
                tasks=contexts, task_weights=[k.weight for k in kernels], work_dir=work,
                max_trials_global=budget if budget is not None else 1 << 30,
                max_trials_per_task=budget, num_trials_per_iter=per_batch, builder=builder,
                runner=runner, database=database, cost_model="xgb", measure_callbacks=callbacks,
                task_scheduler=scheduler_cls(run))
    except BaseException as err:
        original = run.exception or err
        if isinstance(original, KeyboardInterrupt):
            run.stop = "interrupt"
        raise original from None
    finally:
        with contextlib.suppress(Exception):
            runner.pool.shutdown(wait=False)


def _finish(report, module, root, target, remote=None):
    """Time the kernels that have records against their default schedules, keep the verdict
    in the store (a record slower than the default schedule is not applied), rebuild."""
    db = records_mod.read(report.store, warn=False) if records_mod.is_database(report.store) \
        else None
    if db is not None:
        best = records_mod.for_target(db, target_key(target))[0].best_seconds()
        for k in report.kernels:
            if best.get(k.hash) is not None:
                k.record_us = best[k.hash] * 1e6
        with_records = [k for k in report.kernels if k.record_us is not None]
        tuned = _measured(module._lowered, target, {k.name for k in with_records},
                          records=report.store, every_record=True, remote=remote)
        results = {}
        for k in with_records:
            k.tuned_us = tuned.get(k.name)
            if k.tuned_us is not None and k.default_us is not None:
                results[k.hash] = {"name": k.name, "default_us": k.default_us,
                                   "tuned_us": k.tuned_us, "record_us": k.record_us}
        if results:
            records_mod.set_kernel_results(report.store, results)
    built = build_lowered(module._lowered, target, records=root)
    module._replace_library(built.library, built.library_bytes, built.executable)
    module._build_info, module._records = built.info, root
