"""The records store: MetaSchedule JSON databases on disk, one folder per store key.

    <root>/                                          a records root
      x86_64-avx512-tvm0.27.0.post1-cores2/          one database per store key (store_key)
        database_workload.json                       [structural hash, kernel IR (base64)] per line
        database_tuning_record.json                  [workload, [trace, run_secs, target, args]]
        tvmfront_records.json                        key, target, versions, verdicts ("kernels")

This module owns the files: the key, reading (any bytes: a warning and a skip, never a crash),
writing (atomic, under a lock that is an error when it cannot be taken) and merging. Which
records a build applies, and in which order the stores are read, is tvmfront.tuning.policy.
"""

import contextlib
import json
import math
import os
import time
import warnings

from .. import _files
from .._tvm import TVM_VERSION
from .._version import __version__
from ..errors import TvmfrontError
from ..target import resolve_target, target_json, target_key

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "tvmfront_records.json"
FAILED_SECONDS = 1e9  # MetaSchedule stores 1e10 s for a candidate that failed to build or run
CORE_CLASSES = (1, 2, 4, 8, 16)  # the last one is "16 or more"


class RecordsWarning(UserWarning):
    """Records that are skipped: corrupt files, or records made for another target."""


class RecordsError(TvmfrontError, ValueError):
    """A records operation that cannot be done as asked (e.g. a merge of a root into one
    database), or a store that cannot be locked."""


def warning(message, stacklevel=3):
    warnings.warn(message, RecordsWarning, stacklevel=stacklevel)


# ---- the key ----------------------------------------------------------------------------------
def core_class(target):
    """The core-count class of a CPU target ('1', '2', '4', '8', '16+'), None for a GPU.

    MetaSchedule sizes parallel loops by the target's num-cores (this machine's core count
    when the target has none, as MetaSchedule itself does), so a schedule tuned at 2 cores is
    another answer than one tuned at 16."""
    t = resolve_target(target)
    if t.kind.name != "llvm":
        return None
    n = t.attrs.get("num-cores")
    n = max(1, int(n) if n else (os.cpu_count() or 1))
    c = max(c for c in CORE_CLASSES if c <= n)
    return f"{c}+" if c == CORE_CLASSES[-1] else str(c)


def store_key(target):
    """The folder name of `target`'s records: tvmfront.target.target_key (architecture,
    feature class, TVM version) and, for a CPU, the core-count class, e.g.
    ``x86_64-avx512-tvm0.27.0.post1-cores2``. Everything that changes a record's answer."""
    cores = core_class(target)
    key = target_key(target)
    return key if cores is None else f"{key}-cores{cores}"


_KEYS = {}


def record_key(target_dict):
    """store_key of a record's target JSON (None when it is not a valid target)."""
    try:
        text = json.dumps(target_dict, sort_keys=True)
    except (TypeError, ValueError):
        return None
    if text not in _KEYS:
        try:
            _KEYS[text] = store_key(dict(target_dict))
        except Exception:  # a target this TVM cannot parse is some other target
            _KEYS[text] = None
    return _KEYS[text]


def store_for(root, target):
    """The database folder of `target` under records root `root`."""
    return os.path.join(os.fspath(root), store_key(target))


def is_database(path):
    """Whether `path` is one database folder (rather than a root of per-key folders)."""
    return any(os.path.exists(os.path.join(path, f)) for f in (WORKLOADS, RECORDS))


def kind(path):
    """'database', 'root' (a folder of database folders), 'empty' (missing, or nothing in it
    but dot files) or 'other' (a folder holding something else)."""
    path = os.fspath(path)
    if is_database(path):
        return "database"
    if not os.path.isdir(path):
        return "other" if os.path.exists(path) else "empty"
    entries = [e for e in os.listdir(path) if not e.startswith(".")]
    if not entries:
        return "empty"
    if any(is_database(os.path.join(path, e)) for e in entries):
        return "root"
    if all(_being_made(os.path.join(path, e)) for e in entries):
        return "root"  # another merge's key folder, locked and not written yet
    return "other"


def _being_made(path):
    """A folder holding nothing but dot files (a store's .lock, before its first write)."""
    return os.path.isdir(path) and all(e.startswith(".") for e in os.listdir(path))


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
    if not secs or not isinstance(secs, list):
        return None
    try:
        secs = [float(s) for s in secs if not isinstance(s, bool)]
    except (TypeError, ValueError, OverflowError):
        return None
    if not secs or any(not math.isfinite(s) or s <= 0 or s >= FAILED_SECONDS for s in secs):
        return None
    return sum(secs) / len(secs)


class _Corrupt(Exception):
    def __init__(self, path, why):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def _text(path):
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Corrupt(path, f"not UTF-8 text (byte {err.start})") from None


def _finite(text):
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON, but no number TVM (or we) can write back
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _no_constant(name):
    raise ValueError(f"{name} is not JSON")  # Python's json reads NaN/Infinity; TVM does not


def _json(path, text, where):
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:  # RecursionError: nested past Python's limit
        raise _Corrupt(path, f"{where} is not JSON ({type(err).__name__}: "
                             f"{str(err)[:80]})") from None


def _read_lines(path, check):
    out = []
    # MetaSchedule separates lines by "\n" only (a JSON string may hold U+2028 and the like)
    for n, line in enumerate(_text(path).split("\n"), 1):
        if not line.strip():
            continue
        item = _json(path, line, f"line {n}")
        problem = check(item)
        if problem:
            raise _Corrupt(path, f"line {n}: {problem}")
        out.append(item)
    return out


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _check_workload(item):
    if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
        return "expected [structural hash, workload]"
    return None


def _check_record(item):
    if not (isinstance(item, list) and len(item) == 2 and _is_int(item[0])
            and isinstance(item[1], list) and len(item[1]) == 4):
        return "expected [workload index, [trace, run_secs, target, args_info]]"
    trace, secs, target, args = item[1]
    if not isinstance(trace, list) or not isinstance(target, dict) or not isinstance(args, list):
        return "malformed trace, target or args_info"
    if secs is not None and not isinstance(secs, list):
        return "malformed run_secs"
    return None


def _check_meta(meta):
    if not isinstance(meta, dict):
        return "expected a JSON object"
    for field in ("target_key", "tvm_version"):
        if field in meta and not isinstance(meta[field], str):
            return f"{field} is not a string"
    if "kernels" in meta and not isinstance(meta["kernels"], dict):
        return "kernels is not an object"
    return None


def read(path, warn=True):
    """Read the database folder `path`; None (and a RecordsWarning naming the file) when any
    of its files is unreadable or malformed, whatever its bytes. A folder without files reads
    as an empty database."""
    path = os.fspath(path)
    try:
        # Records before workloads: merge only appends workloads, so whatever pair of
        # versions this reads, every record's workload index is in range.
        rpath, wpath, mpath = (os.path.join(path, f) for f in (RECORDS, WORKLOADS, META))
        records = _read_lines(rpath, _check_record) if os.path.exists(rpath) else []
        workloads = _read_lines(wpath, _check_workload) if os.path.exists(wpath) else []
        for n, (w, _) in enumerate(records, 1):
            if not 0 <= w < len(workloads):
                raise _Corrupt(rpath, f"record {n} refers to workload {w}, the workload file "
                                      f"has {len(workloads)}")
        meta = _json(mpath, _text(mpath), "the file") if os.path.exists(mpath) else {}
        problem = _check_meta(meta)
        if problem:
            raise _Corrupt(mpath, problem)
    except _Corrupt as err:
        if warn:
            warning(f"corrupt tuning record file {err.path} ({err.why}): the records in {path} "
                 f"are skipped and those kernels get default schedules")
        return None
    except (OSError, MemoryError) as err:
        if warn:
            warning(f"cannot read tuning records in {path} ({err}): skipped")
        return None
    return Database([tuple(w) for w in workloads], [tuple(r) for r in records], meta, path)


def for_key(db, key):
    """(database of the records of `db` made for store key `key`, {other key: count})."""
    kept, others = [], {}
    version = db.meta.get("tvm_version")
    if version not in (None, TVM_VERSION) and db.records:  # schedules of another TVM release
        others[f"TVM {version}"] = len(db.records)
        return Database(db.workloads, [], db.meta, db.path), others
    for w, rec in db.records:
        k = record_key(rec[2])
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


# ---- writing ----------------------------------------------------------------------------------
def lines(db):
    """The two files' lines, separated by a NUL (what digests of a database hash)."""
    for h, ir in db.workloads:
        yield json.dumps([h, ir], separators=(",", ":")) + "\n"
    yield "\0"
    for w, rec in db.records:
        yield json.dumps([w, rec], separators=(",", ":")) + "\n"


def best_records(db):
    """The database with only the best record of each workload; every workload stays at its
    index, so a store rewritten from it only ever appends workloads (what `read` relies on
    when a writer dies between the two files' renames)."""
    return Database(db.workloads, sorted(db.best().items()), db.meta, db.path)


def _dump(obj):
    # allow_nan=False: a NaN or infinity read from a damaged file is never written back as
    # JSON that other readers (TVM's) refuse
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def write(path, db, meta=None):
    """Write `db` as the database folder `path` (workloads first, each file atomically)."""
    os.makedirs(path, exist_ok=True)
    _files.write_atomic(os.path.join(path, WORKLOADS),
                        "".join(_dump([h, ir]) + "\n" for h, ir in db.workloads))
    _files.write_atomic(os.path.join(path, RECORDS),
                        "".join(_dump([w, rec]) + "\n" for w, rec in db.records))
    if meta is not None:
        write_meta_dict(path, meta)


def write_meta_dict(path, meta):
    _files.write_atomic(os.path.join(path, META),
                        json.dumps(meta, indent=1, sort_keys=True, allow_nan=False) + "\n")


@contextlib.contextmanager
def locked(path):
    """Hold the store's lock (two tuning runs merging into one store take turns). A lock that
    cannot be taken is a RecordsError naming the store: going on without it can lose
    records."""
    try:
        os.makedirs(path, exist_ok=True)
        f = open(os.path.join(path, ".lock"), "a")
    except OSError as err:
        raise RecordsError(f"cannot lock the tuning records store {path}: {err.strerror or err} "
                           f"(is it writable? pass records= another folder)") from None
    with f:
        try:
            _lock_file(f)
        except OSError as err:
            raise RecordsError(f"cannot lock the tuning records store {path} "
                               f"({err.strerror or err}): not written, so no record is lost "
                               f"to a concurrent writer; use a local folder (records=, "
                               f"TVMFRONT_RECORDS)") from None
        yield


def _lock_file(f):
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
        return
    fcntl.flock(f, fcntl.LOCK_EX)


def meta_of(target):
    return {"target_key": store_key(target), "target": target_json(resolve_target(target)),
            "tvm_version": TVM_VERSION, "tvmfront_version": __version__}


def write_meta(path, target):
    """Record which target the database folder `path` holds records for."""
    write_meta_dict(path, meta_of(target))


def stamp():
    return time.strftime("%Y%m%d-%H%M%S")
