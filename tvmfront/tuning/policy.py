"""Which tuning records a build applies: where stores live, their read order, and verdicts.

Where records live:
  user store     ``TVMFRONT_RECORDS`` if set, else ``$TVMFRONT_CACHE_DIR/schedules`` (default
                 ``~/.cache/tvmfront/schedules``): where tvf.tune writes unless given records=
  shipped        ``<repo>/schedules`` in a source checkout: read-only defaults, never written
                 unless named as records= explicitly
A build with records=None reads ``<user store>/<key>`` first, then ``<shipped>/<key>``: per
kernel the first store that has an applicable record wins (the user's own over the shipped
one). records= a root or a database folder reads only that; a list reads each in order;
False reads none. The key is tvmfront.tuning.store.store_key (feature class, core-count
class, TVM version): records made for another key are never applied.

Verdicts: tvf.tune times each kernel that has a record against its default schedule and keeps
the verdict in the store's metadata ("kernels"). A record judged slower than the default
schedule is left out of builds, but only while the verdict holds: each verdict is stamped
with defaults_digest() (the default-schedule code and TVM version) and a stale one is
ignored; timings under the noise floor (both under NOISE_FLOOR_US, or within NOISE_REL of
each other) are not judged at all.
"""

import contextlib
import functools
import hashlib
import math
import os
import shutil
import tempfile

from .._tvm import TVM_VERSION, meta_schedule
from . import store
from .store import Database, best_only, for_key, mean_seconds, read, store_key

PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tvmfront/
ROOT = os.path.dirname(PKG)  # the source checkout (or site-packages)
NOISE_FLOOR_US = 2.0  # kernels this fast are timed at the resolution of the timer
NOISE_REL = 0.05  # run-to-run spread of a kernel timed alone here: closer is not a verdict


# ---- where records live -----------------------------------------------------------------------
def user_root():
    """The user's records root (tvf.tune's default): TVMFRONT_RECORDS, else
    ``$TVMFRONT_CACHE_DIR/schedules`` (``~/.cache/tvmfront/schedules``)."""
    env = os.environ.get("TVMFRONT_RECORDS")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    cache = os.environ.get("TVMFRONT_CACHE_DIR") or os.path.join("~", ".cache", "tvmfront")
    return os.path.join(os.path.abspath(os.path.expanduser(cache)), "schedules")


def shipped_root():
    """The records shipped with a source checkout (``<repo>/schedules``), None elsewhere."""
    path = os.path.join(ROOT, "schedules")
    return path if os.path.isdir(path) and os.path.exists(os.path.join(ROOT, "pyproject.toml")) \
        else None


def sources(records):
    """[(path, explicit)] in read order for a records= argument (see the module docstring)."""
    if records is False:
        return []
    if records is None:
        out = [(user_root(), False)]
        shipped = shipped_root()
        if shipped and os.path.realpath(shipped) != os.path.realpath(out[0][0]):
            out.append((shipped, False))
        return out
    if isinstance(records, (list, tuple)):
        out = []
        for r in records:
            out += [s for s in sources(r) if s[0] not in [p for p, _ in out]]
        return out
    return [(os.path.abspath(os.fspath(records)), True)]


def _folder(path, key, explicit):
    """The database folder to read for `key` under `path` (a root or a database), or None."""
    if not os.path.isdir(path):
        if explicit:
            store.warning(f"tuning records folder {path} does not exist: default schedules are "
                          f"used", stacklevel=4)
        return None
    if store.is_database(path):
        return path
    folder = os.path.join(path, key)
    if store.is_database(folder):
        return folder
    if explicit:
        have = sorted(d for d in os.listdir(path) if store.is_database(os.path.join(path, d)))
        if have:
            store.warning(f"{path} has tuning records for {', '.join(have)}, none for this "
                          f"target {key}: they are not applied (default schedules are used)",
                          stacklevel=4)
    return None


# ---- what a build uses ------------------------------------------------------------------------
class Selection:
    """The records a build applies: the best valid record per workload from the store(s)
    read for its target. ``digest`` names their content (it enters the compile-cache key);
    ``sources`` are the database folders they came from."""

    def __init__(self, db=None, sources=()):
        self.db = db if db is not None and len(db) else None
        self.sources = list(sources)
        self.digest = _digest(self.db) if self.db else ""

    def __bool__(self):
        return self.db is not None

    def hashes(self):
        """Structural hashes of the workloads that have a record."""
        return {h for h, _ in self.db.workloads} if self.db else set()

    def split(self, hashes):
        """(the Selection without the workloads `hashes`, {hash: trace JSON} of their
        records): symbolic kernels' records are replayed by tvmfront.tuning.symbolic, not by
        MetaSchedule (a record that does not replay then falls back, never fails the build).
        The rest keeps this Selection's sources and digest (the compile-cache key names every
        record used)."""
        if not self or not hashes & self.hashes():
            return self, {}
        traces, workloads, records = {}, [], []
        for w, rec in self.db.records:
            h, ir = self.db.workloads[w]
            if h in hashes:
                traces[h] = rec[0]
            else:
                records.append((len(workloads), rec))
                workloads.append((h, ir))
        rest = Selection(Database(workloads, records), self.sources)
        rest.digest = self.digest
        return rest, traces

    @contextlib.contextmanager
    def database(self):
        """A temporary MetaSchedule JSONDatabase of these records: (folder, TVM database),
        or (None, None) when there are none or TVM cannot load them (warned)."""
        if not self:
            yield None, None
            return
        tmp = tempfile.mkdtemp(prefix="tvmfront-records-")
        try:
            store.write(tmp, self.db)
            try:
                ms = meta_schedule()
                tvm_db = ms.database.JSONDatabase(os.path.join(tmp, store.WORKLOADS),
                                                  os.path.join(tmp, store.RECORDS),
                                                  allow_missing=False)
            except Exception as err:  # e.g. a workload whose IR does not deserialize
                store.warning(f"corrupt tuning records in {', '.join(self.sources)} "
                              f"({_first_line(err)}): skipped, default schedules are used")
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
    for line in store.lines(db):
        h.update(line.encode())
    return h.hexdigest()


def select(records, target, every_record=False):
    """The Selection a build for `target` applies.

    records: None (the user store, then the shipped records), False (none), a records root,
    one database folder, or a list of those (read in order).
    every_record: also the records that tuning found slower than the default schedule
    (tvf.tune measures both to decide again).
    """
    key = store_key(target)
    layers = []
    for path, explicit in sources(records):
        folder = _folder(path, key, explicit)
        db = read(folder) if folder is not None else None
        if db is None:
            continue
        mine, others = for_key(db, key)
        if others:
            store.warning(f"tuning records in {folder} were made for another target "
                          f"({', '.join(f'{k}: {n}' for k, n in sorted(others.items()))} "
                          f"record(s)) and are not applied to this target {key}")
        chosen = best_only(mine)
        if not every_record:
            chosen = _drop_slower_than_default(chosen)
        if len(chosen):
            layers.append((folder, chosen))
    return _layered(layers)


def _layered(layers):
    """One Selection of [(folder, Database)]: per workload, the first layer's record."""
    workloads, recs, index, used = [], [], {}, []
    for folder, db in layers:
        before = len(recs)
        for w, rec in db.records:
            h, ir = db.workloads[w]
            if h in index:
                continue
            index[h] = len(workloads)
            workloads.append((h, ir))
            recs.append((index[h], rec))
        if len(recs) > before:
            used.append(folder)
    return Selection(Database(workloads, recs), used)


# ---- verdicts ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def defaults_digest():
    """Names the default schedules a verdict was judged against: TVM's version and the
    source of tvmfront's default CPU schedules (every file of the package tvmfront/schedule/)."""
    h = hashlib.sha256(TVM_VERSION.encode())
    base = os.path.join(PKG, "schedule")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(base) for f in fs
                   if f.endswith(".py"))
    for path in files:
        h.update(os.path.relpath(path, PKG).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:16]


def judge(default_us, tuned_us):
    """'slower' / 'faster' for a record timed against the default schedule; None when the
    timings cannot tell (missing, both under the noise floor, or within the noise)."""
    try:
        d, t = float(default_us), float(tuned_us)
    except (TypeError, ValueError, OverflowError):
        return None
    if not (math.isfinite(d) and math.isfinite(t)) or d <= 0 or t <= 0:
        return None
    if max(d, t) < NOISE_FLOOR_US or abs(t - d) <= NOISE_REL * max(d, t):
        return None
    return "slower" if t > d else "faster"


def _holds(v, record):
    """Whether verdict `v` still speaks for `record`: judged against today's default
    schedules, above the noise, and measured with this very record."""
    return (isinstance(v, dict) and v.get("defaults") == defaults_digest()
            and judge(v.get("default_us"), v.get("tuned_us")) is not None
            and _same(v.get("record_us"), mean_seconds(record) * 1e6))


def _drop_slower_than_default(db):
    """Leave out records that a verdict that still holds found slower than the default
    schedule (the store's "kernels" metadata)."""
    verdicts = db.meta.get("kernels") or {}
    kept = []
    for w, rec in db.records:
        v = verdicts.get(db.workloads[w][0])
        if _holds(v, rec) and judge(v["default_us"], v["tuned_us"]) == "slower":
            continue
        kept.append((w, rec))
    index, workloads, records = {}, [], []
    for w, rec in kept:
        index[w] = len(workloads)
        workloads.append(db.workloads[w])
        records.append((index[w], rec))
    return Database(workloads, records, db.meta, db.path)


def _same(a, b):
    try:
        return abs(float(a) - float(b)) <= 1e-6 * max(abs(float(b)), 1e-12)
    except (TypeError, ValueError, OverflowError):
        return False


def set_kernel_results(folder, results):
    """Keep tvf.tune's per-kernel measurements as verdicts in the store's metadata:
    results {workload hash: {"name", "default_us", "tuned_us", "record_us"}}. A result the
    noise floor cannot tell apart records no verdict (and drops an older one for the kernel);
    the others are stamped with defaults_digest()."""
    with store.locked(folder):
        db = read(folder, warn=False)
        meta = dict(db.meta) if db is not None else {}
        kernels = dict(meta.get("kernels") or {})
        for h, r in results.items():
            verdict = judge(r.get("default_us"), r.get("tuned_us"))
            if verdict is None:
                kernels.pop(h, None)
            else:
                kernels[h] = dict(r, verdict=verdict, defaults=defaults_digest())
        meta["kernels"] = kernels
        store.write_meta_dict(folder, meta)
