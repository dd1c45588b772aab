"""Re-verifying a records store against today's default schedules: ``tvmfront records check``.

Records are kept only where they make a whole module faster than the default schedules, but
the default schedules change (a better GEMM rule can beat yesterday's tuned GEMM). check()
rebuilds each module with and without the store's records, times both end to end,
interleaved, and judges each kernel that has a record alone against its default schedule;
with prune it then drops from the store:

  - the records of kernels that, timed alone, are now slower than their default schedule
    (and refreshes every verdict: tvmfront.tuning.policy stamps them with today's defaults);
  - the records applied in a module that is no longer faster end to end (min_speedup), unless
    a module that is faster applies the same kernel's record too;
  - the records that compute wrong results, against the kernel's default schedule on random
    inputs (tvmfront.tuning.correctness: stores tuned before tuning checked its records).
"""

import tempfile

from ..build import build_lowered
from ..runtime.modules import InferenceModule, TrainingModule
from . import correctness, policy, store
from .measure import paired, time_module
from .tasks import kernels_of


def rebuilt(module, records):
    """The same module (same parameters and optimizer state) built again with `records`
    (False: default schedules only; a path or list: as compile_training's records=)."""
    built = build_lowered(module._lowered, module._target, records=records)
    kwargs = dict(library_bytes=built.library_bytes, executable=built.executable)
    if module.kind == "training":
        out = TrainingModule(built.library, dict(module.manifest), module.state_dict(),
                             module.optimizer_state(), **kwargs)
    else:
        out = InferenceModule(built.library, dict(module.manifest), module.state_dict(),
                              **kwargs)
    out.build_info = built.info
    return out


def end_to_end(default, tuned, rounds=3, min_seconds=0.5, sizes=None):
    """(median seconds of a call of `default`, of `tuned`, [tuned speedup of each round]):
    the two timed in turns, the first of each round alternating, so that load from other
    processes (a shared machine) falls on both alike."""
    a, b, ratios = [], [], []
    for r in range(rounds):
        pair = [(default, a), (tuned, b)]
        for module, times in (pair if r % 2 == 0 else pair[::-1]):
            times.append(time_module(module, min_seconds=min_seconds, sizes=sizes))
        ratios.append(a[-1] / b[-1])
    return _median(a), _median(b), ratios


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


class ModuleCheck:
    """One module's verdict: ``default_s`` / ``tuned_s`` (median seconds per call),
    ``ratios`` (speedup per round), ``speedup``, ``hashes`` (workloads whose records it
    applied), ``kernels`` ({hash: (name, default us, tuned us, verdict)}), ``wrong``
    ({hash: kernel name} whose record computes wrong results) and ``keep``."""

    def __init__(self, name, hashes):
        self.name, self.hashes = name, set(hashes)
        self.default_s = self.tuned_s = None
        self.ratios, self.kernels, self.wrong = [], {}, {}
        self.keep = True
        self.applied = 0  # kernels the build with the records scheduled from them

    @property
    def speedup(self):
        return self.default_s / self.tuned_s if self.default_s and self.tuned_s else None


def _record_hashes(module, folder):
    """{kernel name: workload hash} of the module's static kernels that have a record in the
    database `folder` (records judged slower included: they are judged again here)."""
    have = policy.select(folder, module._target, every_record=True).hashes()
    return {k.name: k.hash for k in kernels_of(module) if not k.symbolic and k.hash in have}


def check_module(name, module, folder, rounds=3, min_speedup=1.0, min_seconds=0.5,
                 log=print):
    """ModuleCheck of `module` against the records in the database `folder`."""
    kernels = _record_hashes(module, folder)
    result = ModuleCheck(name, kernels.values())
    if not kernels:
        log(f"{name}: no record of this store applies")
        return result
    lowered, target = module._lowered, module._target
    result.wrong = _wrong_records(module, folder, kernels)
    for h, kname in result.wrong.items():
        log(f"  kernel {kname}: its record computes wrong results (against its default "
            f"schedule): dropped with --prune")
    default, tuned = paired(lowered, target, set(kernels), folder)
    for kname, h in kernels.items():
        d, t = default.get(kname), tuned.get(kname)
        result.kernels[h] = (kname, d, t, policy.judge(d, t))
    with_records = rebuilt(module, folder)
    result.applied = with_records.build_info["tuned_kernels"]
    if not result.applied:  # verdicts left every record out: the build is the default one
        log(f"{name}: no record applied (each left out by a verdict: slower alone)")
        result.keep = False
        return result
    result.default_s, result.tuned_s, result.ratios = end_to_end(
        rebuilt(module, False), with_records, rounds=rounds, min_seconds=min_seconds)
    result.keep = result.speedup >= min_speedup
    log(f"{name}: default {result.default_s * 1e3:.3f} ms, tuned {result.tuned_s * 1e3:.3f} ms "
        f"({result.applied} kernel(s) from records), speedup "
        f"{result.speedup:.3f}x (rounds: {', '.join(f'{r:.2f}' for r in result.ratios)}): "
        f"{'faster' if result.keep else 'NOT faster'}")
    for h, (kname, d, t, verdict) in result.kernels.items():
        if verdict == "slower":
            log(f"  kernel {kname}: record {t:.1f} us, default {d:.1f} us: slower alone")
    return result


def _wrong_records(module, folder, kernels):
    """{hash: kernel name} of the kernels ({name: hash}) whose best record in the database
    `folder` computes wrong results (checked on a copy: the store is left as it is)."""
    db = store.read(folder, warn=False)
    if db is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="tvmfront-check-") as tmp:
        store.write(tmp, store.best_only(db))
        wrong, _ = correctness.check_database(tmp, module._lowered, module._target,
                                              {h: n for n, h in kernels.items()})
    return {h: n for n, h in kernels.items() if n in wrong}


def to_drop(checks):
    """Workload hashes whose records go: slower than the default alone, computing wrong
    results, or applied only in modules that are not faster end to end."""
    kept = set().union(*[c.hashes for c in checks if c.keep])
    drop = set().union(*[c.hashes for c in checks if not c.keep]) - kept
    for c in checks:
        drop |= {h for h, (_, _, _, verdict) in c.kernels.items() if verdict == "slower"}
        drop |= set(c.wrong)
    return drop


def prune(folder, checks):
    """Drop to_drop(checks)'s records from the database `folder` and keep every kernel
    measurement as a verdict stamped with today's default schedules. Returns the dropped
    hashes."""
    results = {}
    for c in checks:
        for h, (kname, d, t, _) in c.kernels.items():
            if d is not None and t is not None:
                results[h] = {"name": kname, "default_us": d, "tuned_us": t}
    drop = to_drop(checks)
    with store.locked(folder):
        db = store.read(folder, warn=False)
        if db is None:
            raise store.RecordsError(f"{folder}: the records cannot be read, nothing pruned")
        best = db.best_seconds()
        for h, r in results.items():
            r["record_us"] = best[h] * 1e6 if best.get(h) is not None else None
        kept = [(w, rec) for w, rec in db.records if db.workloads[w][0] not in drop]
        meta = dict(db.meta)
        meta["kernels"] = {h: v for h, v in (meta.get("kernels") or {}).items()
                           if h not in drop}
        meta["modules"] = dict(meta.get("modules") or {}, **_module_results(checks, drop))
        store.write(folder, store.Database(db.workloads, kept, meta), meta=meta)
    policy.set_kernel_results(folder, {h: r for h, r in results.items() if h not in drop})
    return drop


def _module_results(checks, drop):
    """What the store's metadata keeps of each module checked ("modules"): its end-to-end
    times, whether records of it stay (faster, and not all dropped as slower alone), and the
    default schedules it was judged against (tests/test_records_shipped.py builds the
    modules kept)."""
    return {c.name: {"default_ms": round(c.default_s * 1e3, 4),
                     "tuned_ms": round(c.tuned_s * 1e3, 4), "speedup": round(c.speedup, 3),
                     "rounds": [round(r, 3) for r in c.ratios],
                     "kept": c.keep and bool(c.hashes - drop),
                     "tuned_kernels": c.applied, "defaults": policy.defaults_digest()}
            for c in checks if c.speedup is not None}


def store_folder(root, target):
    """The database folder of `target`'s store key under `root` (None when it has none)."""
    folder = store.store_for(root, target)
    return folder if store.is_database(folder) else None


def describe(folder, dropped, checks):
    """Summary lines of a check."""
    lines = []
    for c in checks:
        if c.speedup is None:
            continue
        lines.append(f"  {c.name:<28} default {c.default_s * 1e3:9.3f} ms  tuned "
                     f"{c.tuned_s * 1e3:9.3f} ms  {c.speedup:.3f}x  "
                     f"{'keep' if c.keep else 'drop'}")
    if dropped is not None:
        db = store.read(folder, warn=False)
        lines.append(f"pruned {len(dropped)} kernel record(s) from {folder}; "
                     f"{len(db) if db is not None else '?'} left")
    return lines


__all__ = ["ModuleCheck", "check_module", "describe", "end_to_end", "prune", "rebuilt",
           "store_folder", "to_drop"]
