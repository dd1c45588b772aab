"""tvf.tune: MetaSchedule tuning of a compiled module's kernels, with records that persist.

    report = tvf.tune(module, budget=64)          # trials; seconds=... bounds wall time
    print(report)                                 # per-kernel table
    module.step(x, y)                             # the module now runs the tuned kernels

How a run goes:

1. Tasks (tvmfront.tuning.tasks): MetaSchedule's task extraction on the module's lowered, not
   yet scheduled IR (kept by compile_training / compile_inference as ``module._lowered``): one
   task per distinct kernel.
2. Weights: each task's share of step time = (calls per step) x (its latency with the default
   schedule, measured here: tvmfront.tuning.measure). Calls are counted in the function the
   module runs (train_step for a training module, predict for an inference module); calls from
   its other functions (eval predict, loss) count 1/50. Tasks are tuned in the order of their
   share, so a budget too small for every task goes to the kernels that take the time;
   afterwards the task with the largest expected gain (weight x latency x recent improvement,
   MetaSchedule's gradient rule) goes next.
3. Search (tvmfront.tuning.search): MetaSchedule's evolutionary search with the XGBoost cost
   model, batches of up to 16 candidates, built by a LocalBuilder whose workers skip
   ``import tvm.s_tir.tensor_intrin`` (timeout 120 s; see tvmfront._tvm.ms_local_builder) and
   timed by a LocalRunner. A candidate that fails to build or run is logged (the log file is
   named in the report) and skipped; the search goes on. With ``rpc=``
   (tvmfront.tuning.remote) the builder links each candidate here as a shared library (with
   the cross compiler for another CPU) and MetaSchedule's RPCRunner times it on the device:
   one server, or every server a tracker holds under a key, one session per server at once.
   The default-schedule and tuned latencies of steps 2 and 6 are then timed on the device as
   well (one session, the kernels uploaded as one library).
4. Budget: ``budget`` trials and/or ``seconds`` of wall time. The time limit is checked by a
   measure callback after every batch; no batch is started that would end well past it.
5. Records (tvmfront.tuning.store): tuning writes into a temporary database (seeded with the
   store's records, so a run resumes where the last stopped) and merges it into
   ``<records root>/<store key>`` keeping the best record per kernel (atomic, locked). The
   root is records=, else the user store (tvmfront.tuning.policy.user_root: TVMFRONT_RECORDS,
   else ``~/.cache/tvmfront/schedules``), never the shipped ``schedules/`` unless named. This
   happens however tuning ends: budget spent, time up, a failure, or Ctrl-C
   (tvmfront.tuning.interrupt): the first Ctrl-C stops after the current batch and tune
   returns normally; a second one (or a KeyboardInterrupt raised elsewhere, e.g. from a
   progress callback) stops at once and KeyboardInterrupt is raised after the merge; further
   ones while the records are saved wait for the save.
   Before the merge, the best record of every kernel is checked against the kernel's default
   schedule on random inputs, built for this machine (tvmfront.tuning.correctness): a record
   that computes wrong results is dropped, from the store too, and the next best checked.
Symbolic dimensions (a module compiled with ``inputs=("batch", 64)``): MetaSchedule cannot
tune a kernel with a symbolic loop extent, so steps 1-5 work on each such kernel specialized
at ``sizes`` (default 64 per name), and before the merge the best record of each
specialization is carried over to the symbolic kernel as a record of its own
(tvmfront.tuning.symbolic): builds of the symbolic module replay it, at any batch size. Its
verdict (step 6) times the symbolic kernel at ``sizes``, with its default schedule and with
the carried-over record.

6. Rebuild: the kernels with records are timed against their default schedules, the two in
   turns over a few rounds (tvmfront.tuning.measure.paired: never against the default
   latency of step 2, taken minutes earlier under another load), and the verdicts kept in
   the store (tvmfront.tuning.policy), then the module is rebuilt **in
   place** with the records (the store tuning wrote first, then what it read before): the
   same object runs the tuned kernels from then on, with its parameters, optimizer state and
   step count unchanged. tune returns a TuneReport.
"""

import contextlib
import logging
import os
import shutil
import tempfile
import time

from .. import config
from .._tvm import Target, meta_schedule
from ..build import build_lowered, runnable_here
from ..errors import TvmfrontError
from ..target import target_json
from . import correctness, interrupt, merge, policy, search, store, symbolic
from . import remote as rpc_mod
from .measure import measured, paired
from .tasks import kernels_of, lowered_of

log = logging.getLogger("tvmfront.tune")


class TuneReport:
    """What tvf.tune did: ``kernels`` (Kernel rows, largest share first), ``trials``,
    ``failed`` (candidates that did not build or run), ``elapsed`` seconds, ``stopped``
    ('budget', 'time', 'interrupt' or 'done'), ``store`` (the records folder), ``log`` (the
    tuning log file), ``module`` (rebuilt in place), and with rpc= ``remote`` (where the
    candidates were timed, as text) and ``servers`` (how many timed them); for a module with
    symbolic dimensions, ``not_generalized`` ({kernel: why} for symbolic kernels whose tuned
    record could not be carried over from their specialization); ``wrong`` ({kernel: [error
    of each record dropped]}: tuned schedules that computed wrong results, checked against
    the default schedule before the merge, tvmfront.tuning.correctness)."""

    def __init__(self, module, kernels, store, log_path):
        self.module, self.kernels, self.store, self.log = module, kernels, store, log_path
        self.trials = self.failed = 0
        self.elapsed = 0.0
        self.stopped = "done"
        self.merged = 0
        self.remote, self.servers = None, 1  # where candidates were timed (tvmfront.rpc)
        self.tuning = None  # the IRModule tuned and timed (symbolic kernels specialized)
        self.sizes = {}  # the sizes symbolic dimensions were tuned at (64 where not given)
        self.not_generalized = {}  # symbolic kernel: why its record did not carry over
        self.wrong = {}  # kernel: [error of each record dropped as wrong] (tuning.correctness)

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
        if self.wrong:
            head += (f"\nrecords dropped, wrong results against the default schedule: "
                     f"{', '.join(f'{k} ({len(v)})' for k, v in sorted(self.wrong.items()))}")
        return head + "\n" + self.table()

    __repr__ = __str__


def _us(x):
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 1 else f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 1000 \
        else f"{x:,.0f}"


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
         batch_size=None, rpc=None, sizes=None):
    """Tune every kernel of a compiled module with MetaSchedule; keep the records; rebuild.

    module: a TrainingModule / InferenceModule from tvf.compile_training / compile_inference
      (this process: it keeps the IR to tune). The module is **rebuilt in place** with the
      records afterwards, so it runs the tuned kernels at once; its parameters, optimizer
      state and step count are kept. (Other modules of the same model pick the records up
      when compiled with the default records=None, which reads the user store.)
    budget: measured candidates in all, never exceeded (None: no limit; then give seconds).
    seconds: wall-time limit, checked after every batch (None: no limit).
    records: the records root to write to; the records go to ``<records>/<store key>/``.
      None: the user store (TVMFRONT_RECORDS, else ``~/.cache/tvmfront/schedules``), never the
      repository's shipped ``schedules/``.
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
      cannot run, e.g. "arm") and timed on the device. A target without num-cores is tuned
      at the device's thread count (it enters the store key: build for the device with that
      num-cores to apply the records). The module is rebuilt in place all the same; for a
      target this machine cannot run, export it and run the bundle on the device.
    sizes: for a module compiled with symbolic dimensions (``inputs=("batch", 64)``), the
      size each is tuned at, e.g. ``{"batch": 256}``; a name not given is tuned at 64
      (tvmfront.tuning.symbolic.DEFAULT_SIZE). MetaSchedule cannot tune a symbolic kernel
      itself: its specialization at these sizes is tuned, and the best record is carried over
      to the symbolic kernel (tiles of a symbolic loop become a guarded split), so the tuned
      module and any later compile of it run tuned kernels at every batch size. Tune at the
      size you mostly run: the tiles are chosen for it.

    Tasks are weighted by call count x measured default-schedule latency (see the module
    docstring). Returns a TuneReport; str(report) is a per-kernel table.
    """
    if budget is None and seconds is None:
        raise ValueError("tune needs a budget (trials) or seconds (wall time), or both")
    if budget is not None and budget < 1:
        raise ValueError(f"budget must be at least 1 trial, got {budget}")
    sizes = symbolic.check_sizes(sizes)
    lowered, target = lowered_of(module)
    remote = rpc_mod.parse(rpc) if rpc is not None else None
    if remote is None and not runnable_here(target):
        key = store.store_key(target)
        raise TvmfrontError(f"tuning times candidates on this machine, which cannot run code for "
                            f"{key}: measure on such a device over RPC "
                            f"(tvf.tune(module, rpc=\"board:9090\"), see tvmfront.rpc), or tune "
                            f"on it (the records are files: copy <records>/{key} back)")
    if remote is None and not module.runnable:  # e.g. AVX-512 code on an AVX2 CPU: SIGILL
        raise TvmfrontError(f"tuning times candidates on this machine, which cannot run this "
                            f"module: {module.not_runnable_reason}")
    if remote is not None:
        rpc_mod.cxx_for(target)  # a cross compiler for the device's CPU, before any work
        if target.kind.name != "llvm":
            raise TvmfrontError(f"tuning over RPC supports CPU (llvm) targets, not "
                                f"{target.kind.name}")
        servers = rpc_mod.servers(remote)  # RpcError naming the address if unreachable
        if "num-cores" not in target.attrs:
            # MetaSchedule sizes parallel loops by the device's cores; they enter the key
            target = Target(dict(target_json(target),
                                 **{"num-cores": rpc_mod.device_threads(remote)}))
    if progress is True:
        progress = config.progress_enabled()
    root = os.path.abspath(os.fspath(records if records is not None else policy.user_root()))
    if store.is_database(root):
        raise TvmfrontError(f"{root} is one database folder; tune takes a records root and "
                            f"writes to <root>/{store.store_key(target)}")
    folder, key = store.store_for(root, target), store.store_key(target)

    unknown = set(sizes) - symbolic.module_names(lowered)
    if unknown:
        raise ValueError(f"sizes names {sorted(unknown)}, which are not symbolic dimensions of "
                         f"this module (it has {sorted(symbolic.module_names(lowered)) or 'none'})")
    kernels = kernels_of(module, sizes)
    # what is tuned and timed: the kernels, symbolic ones specialized at `sizes`
    tuning, generalize = symbolic.tuning_module(lowered, sizes)
    per_batch = batch_size or search.batch_size(budget)
    run = search.Run(kernels, budget, seconds, per_batch, progress)
    with interrupt.handled(run) as sigint:  # from here on Ctrl-C never lands inside TVM
        default = measured(tuning, target, {k.name for k in kernels}, records=False,
                           remote=remote)
        sigint.checkpoint()
        for k in kernels:
            k.default_us = default.get(k.name)
        kernels.sort(key=lambda k: -k.share_us)
        report = TuneReport(module, kernels, folder, _log_path(key))
        report.tuning, report.sizes = tuning, sizes
        if remote is not None:
            report.remote, report.servers = str(remote), servers
        if not kernels:
            return report
        ms = meta_schedule(target)
        work = tempfile.mkdtemp(prefix="tvmfront-tune-")
        run.start()
        try:
            _seed_work_dir(work, folder, key)
            with _logging_to(report.log):
                search.tune_in(work, ms, tuning, target, kernels, run, budget, per_batch, seed,
                               remote, report.servers)
        finally:  # however tuning ended (a Ctrl-C waits: the handler only sets flags)
            run.phase = "after"
            report.trials, report.failed, report.elapsed = run.trials, run.failed, run.elapsed()
            report.stopped = run.stop or ("budget" if budget is not None
                                          and run.trials >= budget else "done")
            try:
                dropped = []
                if store.is_database(work):  # first: symbolic kernels carry checked records over
                    report.wrong, dropped = _checked(work, tuning, target, kernels)
                if generalize and store.is_database(work):
                    report.not_generalized = _generalized(work, lowered, tuning, generalize,
                                                          target)
                if store.is_database(work):
                    report.merged = merge.merge_folder(work, folder, target=target)
                    correctness.prune(folder, dropped)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            if progress:
                run.report(final=True)
        _finish(report, module, root, target, remote, sigint.checkpoint)
    return report


def _checked(work, tuning, target, kernels):
    """Drop the records of `work` that compute wrong results (tvmfront.tuning.correctness):
    ({kernel: [errors]}, [(workload hash, record)]) of those dropped. A check that cannot run
    is logged and keeps the records (it must not lose a run's records)."""
    try:
        return correctness.check_database(work, tuning, target, {k.hash: k.name for k in kernels})
    except Exception as err:  # noqa: BLE001 - a TVM error here must not lose the records
        log.warning("the tuned kernels could not be checked against their default schedules: "
                    "%s", err)
        return {}, []


def _generalized(work, lowered, tuning, generalize, target):
    """Records of the symbolic kernels, generalized from their specializations' (in `work`,
    before the merge); {kernel: why} for those that could not be (logged, never raised: the
    static records are kept whatever happens here)."""
    try:
        return symbolic.add_generalized(work, lowered, tuning, generalize, target)
    except Exception as err:  # noqa: BLE001 - a TVM error here must not lose the records
        log.warning("records of the symbolic kernels were not derived: %s", err)
        return {name: str(err) for name in generalize}


def _symbolic_results(report, module, target, kernels, remote):
    """Verdicts for the generalized records of symbolic kernels: each symbolic kernel timed at
    the tuning sizes with its default schedule and with its record (the default schedule of a
    symbolic kernel is not its specialization's, so their verdicts differ)."""
    names = {n: (k, h) for k in kernels for n, h in k.symbolic.items()}
    if not names:
        return {}
    default, tuned = paired(module._lowered, target, set(names), report.store, remote=remote,
                            sizes=report.sizes)
    results = {}
    for name, (k, h) in names.items():
        k.symbolic_us = (default.get(name), tuned.get(name))
        if None not in k.symbolic_us:
            results[h] = {"name": name, "default_us": default[name], "tuned_us": tuned[name],
                          "record_us": k.record_us, "sizes": report.sizes}
    return results


def _seed_work_dir(work, folder, key):
    """Start from the store's records: the search skips what was measured before."""
    if not store.is_database(folder):
        return
    db = store.read(folder)
    if db is None:
        return
    mine, _ = store.for_key(db, key)
    store.write(work, store.best_only(mine))


def _finish(report, module, root, target, remote, checkpoint):
    """Time the kernels that have records against their default schedules, keep the verdict
    in the store (a record slower than the default schedule is not applied), rebuild.
    checkpoint() raises KeyboardInterrupt when Ctrl-C asked to stop at once."""
    checkpoint()
    db = store.read(report.store, warn=False) if store.is_database(report.store) else None
    if db is not None:
        best = store.for_key(db, store.store_key(target))[0].best_seconds()
        for k in report.kernels:
            if best.get(k.hash) is not None:
                k.record_us = best[k.hash] * 1e6
        with_records = [k for k in report.kernels if k.record_us is not None]
        # the default schedule is timed again beside the record: the latency measured before
        # the search was taken at another moment, under another load (tuning.measure.paired)
        default, tuned = paired(report.tuning, target, {k.name for k in with_records},
                                report.store, remote=remote)
        results = {}
        for k in with_records:
            k.tuned_us = tuned.get(k.name)
            k.default_us = default.get(k.name, k.default_us)
            if k.tuned_us is not None and k.default_us is not None:
                results[k.hash] = {"name": k.name, "default_us": k.default_us,
                                   "tuned_us": k.tuned_us, "record_us": k.record_us}
        results.update(_symbolic_results(report, module, target, with_records, remote))
        checkpoint()
        if results:
            policy.set_kernel_results(report.store, results)
    checkpoint()
    given = getattr(module, "_records", None)
    # the store just written first, then what the module read before (None: the default order)
    reads = [root] if given is False else [root, given]
    built = build_lowered(module._lowered, target, records=reads)
    module._replace_library(built.library, built.library_bytes, built.executable)
    module.build_info, module._records = built.info, reads
