"""The search: MetaSchedule's evolutionary search over the tasks, in batches, under a trial
budget and a time limit, with tvmfront's task order (share of step time first)."""

import contextlib
import logging
import math
import os
import sys
import time
from collections import namedtuple

import numpy as np

from .._tvm import (derived_object, meta_schedule, ms_local_builder, normalize_prim_func,
                    structural_hash)
from ..build import codegen_target
from . import remote as rpc_mod
from . import store

log = logging.getLogger("tvmfront.tune")

MAX_BATCH = 16  # candidates built and timed per batch


# Progress as a progress callback receives it. Latencies in microseconds; step_us and
# default_us estimate the kernel time of one call of the main function (calls x latency per
# kernel, MetaSchedule's measurement for tuned kernels); seconds_left is None when unknown.
TuneProgress = namedtuple("TuneProgress", "trials budget tasks_tuned tasks failed elapsed "
                                          "seconds_left step_us default_us")


# ---- the tuning run ---------------------------------------------------------------------------
class Run:
    """State of one tuning run, shared by the task scheduler and the measure callback."""

    def __init__(self, kernels, budget, seconds, per_batch, progress):
        self.kernels, self.budget, self.seconds = kernels, budget, seconds
        self.per_batch, self.progress = per_batch, progress
        self.t0 = time.monotonic()
        self.trials = self.failed = self.batches = 0
        self.best = [None] * len(kernels)  # seconds
        self.history = [[] for _ in kernels]
        self.stop = None  # why tuning stops: 'time', 'interrupt'
        self.abort = False  # stop at once (a second Ctrl-C): raised from the next callback
        self.phase = "before"  # 'search' while MetaSchedule runs, then 'after'
        self.exception = None  # a Python exception raised inside TVM's tuning loop
        self.tty = progress is True and sys.stderr.isatty()

    def keep_only(self, indices):
        """Tune only the kernels at `indices` (the others cannot be tuned)."""
        self.kernels = [self.kernels[i] for i in indices]
        self.best = [None] * len(self.kernels)
        self.history = [[] for _ in self.kernels]

    def start(self):
        """The search begins: the time limit counts from now."""
        self.phase, self.t0 = "search", time.monotonic()

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
            if t < store.FAILED_SECONDS and (best is None or t < best):
                best = t
        self.best[task_id] = best
        self.history[task_id].append(best if best is not None else math.inf)
        if self.abort:
            raise KeyboardInterrupt
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
        if self.abort:
            raise KeyboardInterrupt
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


def batch_size(budget):
    """Candidates per batch: at most MAX_BATCH, dividing the budget evenly."""
    if budget is None:
        return MAX_BATCH
    return max(1, budget // math.ceil(budget / MAX_BATCH))


def tune_in(work, ms, lowered, target, kernels, run, budget, per_batch, seed, remote=None,
             servers=1):
    tasks = {str(structural_hash(t.mod)): t
             for t in ms.relax_integration.extract_tasks(lowered, target)}
    big = budget is None or budget >= 64
    population = 512 if big else 128
    seeds = ms.utils.fork_seed(seed, len(kernels))
    search_log = logging.getLogger("tvmfront.tune.search")
    contexts = []
    for k, s in zip(kernels, seeds):
        task = tasks.get(k.hash)
        # a symbolic kernel's specialization has no Relax call to extract it from
        mod = task.dispatched[0] if task is not None else normalize_prim_func(lowered[k.name])
        # MetaSchedule's builder compiles each candidate for the context's target: the target
        # as module builds compile kernels (their LLVM opt level), so that candidates are
        # timed as the code a build of the record runs
        contexts.append(ms.TuneContext(
            mod=mod, target=codegen_target(task.target if task is not None else target),
            space_generator="post-order-apply",
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=population, init_min_unmeasured=min(50, population // 4),
                genetic_num_iters=4 if big else 2),
            task_name=k.name, rand_state=s, logger=search_log).clone())
    contexts = _tunable(contexts, run)
    if not contexts:
        return
    kernels = run.kernels
    try:
        database = ms.database.JSONDatabase(work_dir=work)
    except Exception as err:  # the seeded records do not load: start empty
        log.warning("starting without the stored records: %s", err)
        for name in (store.WORKLOADS, store.RECORDS):
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


def _tunable(contexts, run):
    """The contexts whose design space MetaSchedule can generate; the kernels of the others
    are logged and left to their default schedules (run.keep_only). MetaSchedule raises a
    schedule rule's ScheduleError out of its whole tuning loop (e.g. reverse_compute_at on a
    LayerNorm backward kernel whose producers sit under other loops): one such kernel would
    end the run with nothing tuned."""
    usable = []
    for i, ctx in enumerate(contexts):
        try:
            ctx.generate_design_space()
            usable.append(i)
        except Exception as err:  # noqa: BLE001 - any TVM error: this kernel is not tuned
            lines = str(err).strip().splitlines()
            log.warning("kernel %s is not tuned: MetaSchedule cannot generate its design "
                        "space (%s)", run.kernels[i].name, lines[-1][:300] if lines else err)
    if len(usable) < len(contexts):
        run.keep_only(usable)
    return [contexts[i] for i in usable]
