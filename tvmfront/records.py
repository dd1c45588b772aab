"""Tuning records: MetaSchedule JSON databases, one folder per target key.

    schedules/                             the records root
      x86_64-avx512-tvm0.27.0.post1/       one database per target key (tvmfront.target.target_key)
        database_workload.json             [structural hash, kernel IR (base64)] per line
        database_tuning_record.json        [workload, [trace, run_secs, target, args]] per line
        tvmfront_records.json              the key, the target and the versions that made them

The root is the ``records=`` argument of compile_training / compile_inference / tune, else
``TVMFRONT_RECORDS``, else ``<repo>/schedules`` in a source checkout (``~/.cache/tvmfront/
schedules`` in an installed package). A build reads only ``<root>/<its target key>``, and of
that only records whose own target has the same key: records made for another CPU or another
TVM version are never applied. A database folder given directly (one holding the two
``database_*.json`` files) is read the same way, with a warning when its records were made for
another target. A file that cannot be read is skipped with a warning naming it, never a crash.

Writes are atomic: ``merge`` writes temporary files beside the store and moves them in with
``os.replace`` (workloads first, and only ever appended to, so a reader sees a consistent pair
at every moment), under a lock so that two tuning runs can merge into one store.
"""

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings

from ._tvm import TVM_VERSION, meta_schedule
from ._version import __version__
from .target import resolve_target, target_json, target_key

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "tvmfront_records.json"
FAILED_SECONDS = 1e9  # MetaSchedule stores 1e10 s for a candidate that failed to build or run
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class RecordsWarning(UserWarning):
    """Records that are skipped: corrupt files, or records made for another target."""


def _warn(message):
    warnings.warn(message, RecordsWarning, stacklevel=3)


# ---- where records live ---------------------------------------------------------------------
def default_root():
    """TVMFRONT_RECORDS, else ``<repo>/schedules`` in a source checkout, else the user cache."""
    env = os.environ.get("TVMFRONT_RECORDS")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    if os.path.exists(os.path.join(ROOT, "pyproject.toml")):
        return os.path.join(ROOT, "schedules")
    cache = os.environ.get("TVMFRONT_CACHE_DIR") or os.path.join("~", ".cache", "tvmfront")
    return os.path.join(os.path.abspath(os.path.expanduser(cache)), "schedules")


def is_database(path):
    """Whether `path` is one database folder (rather than a root of per-target folders)."""
    return any(os.path.exists(os.path.join(path, f)) for f in (WORKLOADS, RECORDS))


def store_for(root, target):
    """The database folder of `target` under records root `root`."""
    return os.path.join(os.fspath(root), target_key(target))


# ---- reading ----------------------------------------------------------------------------------
class Database:
    """A MetaSchedule JSON database read into Python: workloads [(hash, ir)] and records
    [(workload index, [trace, run_secs, target, args_info])], in file order."""

    def __init__(self, workloads=(), records=(), meta=None, path=None):
        self.workloads, self.records = list(workloads), list(records)
        self.meta, self.path = meta or {}, path

    def __len__(self):
        return len(self.records)

    def best(self):
        """{workload index: best valid record} (lowest mean run time)."""
        best = {}
        for w, rec in self.records:
            t = mean_seconds(rec)
            if t is not None and (w not in best or t < mean_seconds(best[w])):
                best[w] = rec
        return best

    def best_seconds(self):
        """{workload structural hash: best mean run time in seconds}."""
        return {self.workloads[w][0]: mean_seconds(rec) for w, rec in self.best().items()}


def mean_seconds(record):
    """Mean measured run time of a record in seconds, None for a failed candidate."""
    secs = record[1]
    if not secs:
        return None
    try:
        secs = [float(s) for s in secs]
    except (TypeError, ValueError):
        return None
    if any(not math.isfinite(s) or s <= 0 or s >= FAILED_SECONDS for s in secs):
        return None
    return sum(secs) / len(secs)


def _read_lines(path, check):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as err:
                raise _Corrupt(path, f"line {n} is not JSON ({err})") from None
            problem = check(item)
            if problem:
                raise _Corrupt(path, f"line {n}: {problem}")
            out.append(item)
    return out


class _Corrupt(Exception):
    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _check_workload(item):
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        return "expected [structural hash, workload]"
    return None


def _check_record(item):
    if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], int)
            and isinstance(item[1], list) and len(item[1]) == 4):
        return "expected [workload index, [trace, run_secs, target, args_info]]"
    trace, secs, target, _ = item[1]
    if not isinstance(trace, list) or not isinstance(target, dict):
        return "malformed trace or target"
    if secs is not None and not isinstance(secs, list):
        return "malformed run_secs"
    return None


def read(path, warn=True):
    """Read the database folder `path`; None (and a RecordsWarning naming the file) when a
    file is corrupt. A folder without files reads as an empty database."""
    path = os.fspath(path)
    try:
        # Records before workloads: merge only appends workloads, so whatever pair of
        # versions this reads, every record's workload index is in range.
        records = _read_lines(os.path.join(path, RECORDS), _check_record) \
            if os.path.exists(os.path.join(path, RECORDS)) else []
        workloads = _read_lines(os.path.join(path, WORKLOADS), _check_workload) \
            if os.path.exists(os.path.join(path, WORKLOADS)) else []
        for n, (w, _) in enumerate(records, 1):
            if not 0 <= w < len(workloads):
                raise _Corrupt(os.path.join(path, RECORDS),
                               f"record {n} refers to workload {w}, the workload file has "
                               f"{len(workloads)}")
        meta = {}
        if os.path.exists(os.path.join(path, META)):
            with open(os.path.join(path, META), encoding="utf-8") as f:
                try:
                    meta = json.load(f)
                except ValueError as err:
                    raise _Corrupt(os.path.join(path, META), f"not JSON ({err})") from None
    except _Corrupt as err:
        if warn:
            _warn(f"corrupt tuning record file {err.path} ({err.why}): the records in {path} "
                  f"are skipped and those kernels get default schedules")
        return None
    except OSError as err:
        if warn:
            _warn(f"cannot read tuning records in {path} ({err}): skipped")
        return None
    return Database([tuple(w) for w in workloads], [tuple(r) for r in records], meta, path)


_KEYS = {}


def record_target_key(target_dict):
    """target_key of a record's target JSON (None when it is not a valid target)."""
    text = json.dumps(target_dict, sort_keys=True)
    if text not in _KEYS:
        try:
            _KEYS[text] = target_key(dict(target_dict))
        except Exception:  # a target this TVM cannot parse is some other target
            _KEYS[text] = None
    return _KEYS[text]


def for_target(db, key):
    """(database of the records of `db` made for target key `key`, {other key: count})."""
    kept, others = [], {}
    version = db.meta.get("tvm_version")
    if version not in (None, TVM_VERSION) and db.records:  # schedules of another TVM release
        others[f"TVM {version}"] = len(db.records)
        return Database(db.workloads, [], db.meta, db.path), others
    for w, rec in db.records:
        k = record_target_key(rec[2])
        if k == key:
            kept.append((w, rec))
        else:
            others[str(k)] = others.get(str(k), 0) + 1
    return Database(db.workloads, kept, db.meta, db.path), others


def best_only(db):
    """The database with one record per workload, the best; workloads without one dropped."""
    best = db.best()
    order = sorted(best)
    index = {w: i for i, w in enumerate(order)}
    return Database([db.workloads[w] for w in order], [(index[w], best[w]) for w in order],
                    db.meta, db.path)


# ---- what a build uses --------------------------------------------------------------------------
class Selection:
    """The records a build applies: the best valid record per workload from the folder(s)
    chosen for its target. ``digest`` names their content (it enters the compile-cache key)."""

    def __init__(self, db=None, sources=()):
        self.db = db if db is not None and len(db) else None
        self.sources = list(sources)
        self.digest = _digest(self.db) if self.db else ""

    def __bool__(self):
        return self.db is not None

    def hashes(self):
        """Structural hashes of the workloads that have a record."""
        return {h for h, _ in self.db.workloads} if self.db else set()

    @contextlib.contextmanager
    def database(self):
        """A temporary MetaSchedule JSONDatabase of these records: (folder, TVM database),
        or (None, None) when there are none or TVM cannot load them (warned)."""
        if not self:
            yield None, None
            return
        tmp = tempfile.mkdtemp(prefix="tvmfront-records-")
        try:
            write(tmp, self.db)
            try:
                ms = meta_schedule()
                tvm_db = ms.database.JSONDatabase(os.path.join(tmp, WORKLOADS),
                                                  os.path.join(tmp, RECORDS),
                                                  allow_missing=False)
            except Exception as err:  # e.g. a workload whose IR does not deserialize
                _warn(f"corrupt tuning records in {', '.join(self.sources)} ({_first_line(err)}): "
                      f"skipped, default schedules are used")
                yield None, None
                return
            yield tmp, tvm_db
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _first_line(err):
    text = str(err).strip().splitlines()
    return text[-1] if text else type(err).__name__


def _digest(db):
    h = hashlib.sha256()
    for line in _lines(db):
        h.update(line.encode())
    return h.hexdigest()


def select(records, target, every_record=False):
    """The Selection a build for `target` applies.

    records: None (TVMFRONT_RECORDS / the default root, if it exists), False (none), a root
    of per-target-key folders, or one database folder.
    every_record: also the records that tuning found slower than the default schedule
    (tvf.tune measures both to decide again).
    """
    if records is False:
        return Selection()
    explicit = records is not None
    path = os.path.abspath(os.fspath(records)) if explicit else default_root()
    key = target_key(target)
    if not os.path.isdir(path):
        if explicit:
            _warn(f"tuning records folder {path} does not exist: default schedules are used")
        return Selection()
    if is_database(path):
        folder = path
    else:
        folder = os.path.join(path, key)
        if not is_database(folder):
            if explicit:
                have = sorted(d for d in os.listdir(path) if is_database(os.path.join(path, d)))
                if have:
                    _warn(f"{path} has tuning records for {', '.join(have)}, none for this "
                          f"target {key}: they are not applied (default schedules are used)")
            return Selection()
    db = read(folder)
    if db is None:
        return Selection()
    mine, others = for_target(db, key)
    if others:
        _warn(f"tuning records in {folder} were made for another target "
              f"({', '.join(f'{k}: {n}' for k, n in sorted(others.items()))} record(s)) and are "
              f"not applied to this target {key}")
    chosen = best_only(mine)
    if not every_record:
        chosen = _drop_slower_than_default(chosen)
    return Selection(chosen, [folder])


def _drop_slower_than_default(db):
    """Leave out records that tvf.tune measured slower than the default schedule (the store's
    "kernels" metadata: default and tuned latency, and the record they were measured with)."""
    verdicts = db.meta.get("kernels") or {}
    kept = []
    for w, rec in db.records:
        v = verdicts.get(db.workloads[w][0])
        if v and _slower(v) and _same(v.get("record_us"), mean_seconds(rec) * 1e6):
            continue
        kept.append((w, rec))
    index, workloads, records = {}, [], []
    for w, rec in kept:
        index[w] = len(workloads)
        workloads.append(db.workloads[w])
        records.append((index[w], rec))
    return Database(workloads, records, db.meta, db.path)


def _slower(v):
    try:
        return float(v["tuned_us"]) >= float(v["default_us"])
    except (KeyError, TypeError, ValueError):
        return False


def _same(a, b):
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(b)), 1e-12)
    except (TypeError, ValueError):
        return False


def set_kernel_results(store, results):
    """Record per-kernel measurements in the store's metadata: {workload hash: {"name",
    "default_us", "tuned_us", "record_us"}}. A build leaves out a record measured slower
    than the default schedule, until a better record replaces it."""
    with _locked(store):
        db = read(store, warn=False)
        meta = dict(db.meta) if db is not None else {}
        meta["kernels"] = dict(meta.get("kernels") or {}, **results)
        _write_atomic(os.path.join(store, META), json.dumps(meta, indent=1, sort_keys=True) + "\n")


# ---- writing ---------------------------------------------------------------------------------
def _lines(db):
    for h, ir in db.workloads:
        yield json.dumps([h, ir], separators=(",", ":")) + "\n"
    yield "\0"  # separates the two files in digests
    for w, rec in db.records:
        yield json.dumps([w, rec], separators=(",", ":")) + "\n"


def _write_atomic(path, text):
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write(path, db, meta=None):
    """Write `db` as the database folder `path` (workloads first, each file atomically)."""
    os.makedirs(path, exist_ok=True)
    _write_atomic(os.path.join(path, WORKLOADS),
                  "".join(json.dumps([h, ir], separators=(",", ":")) + "\n"
                          for h, ir in db.workloads))
    _write_atomic(os.path.join(path, RECORDS),
                  "".join(json.dumps([w, rec], separators=(",", ":")) + "\n"
                          for w, rec in db.records))
    if meta is not None:
        _write_atomic(os.path.join(path, META), json.dumps(meta, indent=1, sort_keys=True) + "\n")


@contextlib.contextmanager
def _locked(path):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, ".lock"), "a") as f:
        try:
            import fcntl

            fcntl.flock(f, fcntl.LOCK_EX)
        except (ImportError, OSError):  # no flock here: merges are still atomic, not serialized
            pass
        yield


def merge(src_dir, dst_dir, target=None):
    """Merge the database folder `src_dir` into `dst_dir`, keeping the best valid record of
    every workload; returns the number of workloads whose record is new or faster.

    target: the store's target (a name, dict or Target); records of `src_dir` made for
    another target key are skipped with a warning. Without it, the key recorded in
    `dst_dir` (or, for a new store, `src_dir`'s own records) decides.
    A corrupt destination file is moved aside (``*.corrupt-<time>``) with a warning, never
    deleted.
    """
    src = read(src_dir)
    if src is None:
        return 0
    with _locked(dst_dir):
        dst = read(dst_dir, warn=False) if is_database(dst_dir) else Database()
        if dst is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for name in (WORKLOADS, RECORDS):
                p = os.path.join(dst_dir, name)
                if os.path.exists(p):
                    os.replace(p, f"{p}.corrupt-{stamp}")
            _warn(f"corrupt tuning records in {dst_dir} were moved aside (*.corrupt-{stamp}); "
                  f"the store starts again from the merged records")
            dst = Database()
        meta = dict(dst.meta or {})
        if target is not None:
            meta.update(_meta(target))
            key = meta["target_key"]
        else:
            key = dst.meta.get("target_key") or src.meta.get("target_key")
            if key is None and src.records:
                key = record_target_key(src.records[0][1][2])
            for k, v in (src.meta or {}).items():
                meta.setdefault(k, v)
            meta.setdefault("target_key", key)
        src_mine, others = for_target(src, key)
        if others:
            _warn(f"{sum(others.values())} tuning record(s) in {src_dir} were made for another "
                  f"target ({', '.join(sorted(others))}) and are not merged into {dst_dir} ({key})")
        merged, changed = _merge(best_only(dst), best_only(src_mine))
        write(dst_dir, merged, dict(meta, updated=time.strftime("%Y-%m-%dT%H:%M:%S")))
    return changed


def _merge(dst, src):
    """dst's workloads keep their indices (new ones are appended); best record per workload."""
    workloads = list(dst.workloads)
    index = {h: i for i, (h, _) in enumerate(workloads)}
    best = {w: rec for w, rec in dst.records}
    changed = 0
    for w, rec in src.records:
        h, ir = src.workloads[w]
        if h not in index:
            index[h] = len(workloads)
            workloads.append((h, ir))
        i = index[h]
        if i not in best or mean_seconds(rec) < mean_seconds(best[i]):
            changed += best.get(i) != rec
            best[i] = rec
    return Database(workloads, [(i, best[i]) for i in sorted(best)]), changed


def _meta(target):
    return {"target_key": target_key(target), "target": target_json(resolve_target(target)),
            "tvm_version": TVM_VERSION, "tvmfront_version": __version__}


def write_meta(path, target):
    """Record which target the database folder `path` holds records for."""
    _write_atomic(os.path.join(path, META), json.dumps(_meta(target), indent=1, sort_keys=True)
                  + "\n")
