"""The compile cache: built libraries keyed by everything that decides their code.

Key: SHA-256 of the lowered IRModule's structural hash (before scheduling), the target (its
full JSON), the content digest of the tuning records applied, the tvmfront and TVM versions
and a digest of tvmfront's own source (schedule rules and passes change code without a
version bump). ``TVMFRONT_CACHE=0`` turns the cache off. The oldest entries beyond
MAX_ENTRIES are removed.

An entry is ``<TVMFRONT_CACHE_DIR>/modules/<key>.json`` (default ``~/.cache/tvmfront``): what
the build applied, the SHA-256 of the library and the library's file name,
``<key>-<sha256 prefix>.so`` beside it. Crash safety: each file is written to a temporary
file, flushed to disk (fsync) and moved in with os.replace; the library first, under its
content's name (never over another library's bytes), then the metadata that names it. A
process killed at any moment leaves the previous entry or the new one (or stray temporary
files, removed later), never a half-written one: a reader finds a library only through the
metadata written after it, and checks its SHA-256 before using it. An entry that does not
check out (unreadable metadata, missing library, bytes that do not match) is logged
(``tvmfront.cache``), removed and built anew, never loaded.
"""

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import time

from ._files import fsync_dir
from ._tvm import TVM_VERSION, structural_hash
from ._version import __version__
from .config import flush_denormals, logger

log = logger("cache")

MAX_ENTRIES = 128
PKG = os.path.dirname(os.path.abspath(__file__))


def cache_dir():
    """The cache folder, or None when TVMFRONT_CACHE=0."""
    if os.environ.get("TVMFRONT_CACHE", "1") == "0":
        return None
    path = os.environ.get("TVMFRONT_CACHE_DIR") or os.path.join("~", ".cache", "tvmfront")
    return os.path.abspath(os.path.expanduser(path))


@functools.lru_cache(maxsize=1)
def source_digest():
    """SHA-256 of tvmfront's Python sources."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(PKG):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, PKG).encode())
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()


def key(lowered, target, records_digest, extra=None):
    """The cache key of building `lowered` for `target` with the records of that digest."""
    material = {
        "ir": str(structural_hash(lowered)),
        "target": str(target),
        "records": records_digest or "",
        "tvmfront": __version__,
        "tvm": TVM_VERSION,
        "source": source_digest(),
        "extra": extra or {},
        # a build switch that changes the kernels built from the same IR
        "flush_denormals": flush_denormals(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]


def _folder():
    return os.path.join(cache_dir(), "modules")


def _meta_path(k):
    return os.path.join(_folder(), k + ".json")


def _library_name(k, sha):
    return f"{k}-{sha[:16]}.so"


def lookup(k):
    """(library bytes, info dict, library path) of entry `k`, or None on a miss. An entry that
    does not check out (see the module docstring) is logged, removed and counts as a miss."""
    if cache_dir() is None:
        return None
    meta = _meta_path(k)
    try:
        with open(meta, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as err:
        return _damaged(k, f"metadata unreadable ({err})")
    try:
        info = json.loads(raw.decode("utf-8"))
        sha, name = info["sha256"], info["library"]
    except (ValueError, TypeError, KeyError) as err:
        return _damaged(k, f"metadata incomplete or not JSON ({type(err).__name__}: {err})")
    if name != _library_name(k, str(sha)):  # a plain name made from the key: no other file
        return _damaged(k, f"metadata names the library {name!r}")
    lib = os.path.join(_folder(), name)
    try:
        with open(lib, "rb") as f:
            data = f.read()
    except OSError as err:
        return _damaged(k, f"library unreadable ({err.strerror or err})")
    if hashlib.sha256(data).hexdigest() != sha:
        return _damaged(k, f"library {name} does not match its SHA-256")
    for p in (meta, lib):
        with contextlib.suppress(OSError):
            os.utime(p)  # recently used: pruned last
    return data, info, lib


def _damaged(k, why):
    log.warning("compile cache entry %s is damaged (%s): removed, building anew", k, why)
    discard(k)
    return None


def discard(k):
    """Remove entry `k`: its metadata first (the entry is gone), then its libraries."""
    with contextlib.suppress(OSError):
        os.unlink(_meta_path(k))
    for lib in _libraries(k):
        with contextlib.suppress(OSError):
            os.unlink(lib)


def _libraries(k):
    try:
        names = os.listdir(_folder())
    except OSError:
        return []
    return [os.path.join(_folder(), n) for n in names
            if n.startswith(k + "-") and n.endswith(".so")]


def _temporary(directory, suffix):
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    return tmp


def _flush(path):
    """fsync `path` and return its bytes."""
    with open(path, "rb+") as f:
        data = f.read()
        os.fsync(f.fileno())
    return data


def store(k, write_library, info):
    """Write entry `k`: `write_library(path)` writes the library. Returns (library path,
    library bytes); the path is a temporary file when the cache is off or `k` is None (the
    caller removes it after loading)."""
    if cache_dir() is None or k is None:
        fd, tmp = tempfile.mkstemp(prefix="tvmfront-", suffix=".so")
        os.close(fd)
        write_library(tmp)
        with open(tmp, "rb") as f:
            return tmp, f.read()
    folder = _folder()
    os.makedirs(folder, exist_ok=True)
    tmp_lib = _temporary(folder, ".so")
    tmp_meta = None
    try:
        write_library(tmp_lib)
        data = _flush(tmp_lib)
        sha = hashlib.sha256(data).hexdigest()
        name = _library_name(k, sha)
        lib = os.path.join(folder, name)
        os.replace(tmp_lib, lib)  # 1. the library, under its content's name
        fsync_dir(folder)
        tmp_meta = _temporary(folder, ".json")
        with open(tmp_meta, "w", encoding="utf-8") as f:
            json.dump(dict(info, sha256=sha, library=name), f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_meta, _meta_path(k))  # 2. the metadata that names it: the commit
        fsync_dir(folder)
    except BaseException:
        for p in (tmp_lib, tmp_meta):
            if p is not None:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        raise
    for old in _libraries(k):  # libraries of the entry this one replaced
        if old != lib:
            with contextlib.suppress(OSError):
                os.unlink(old)
    _prune()
    return lib, data


def _named(name):
    """Whether `name` is the library its key's metadata names."""
    try:
        with open(_meta_path(name.split("-")[0]), encoding="utf-8") as f:
            return json.load(f).get("library") == name
    except (OSError, ValueError, AttributeError):
        return False


STALE_SECONDS = 3600  # temporary files of a writer killed mid-write, orphaned libraries


def _prune():
    """Remove the least recently used entries beyond MAX_ENTRIES, and files no entry names
    that are older than STALE_SECONDS (a younger one may belong to a writer at work)."""
    folder = _folder()
    try:
        names = os.listdir(folder)
        now = time.time()
        metas = [os.path.join(folder, n) for n in names if n.endswith(".json")
                 and not n.startswith(".")]
        metas.sort(key=os.path.getmtime)
        for meta in metas[:max(0, len(metas) - MAX_ENTRIES)]:
            discard(os.path.basename(meta)[:-5])
        for n in names:
            path = os.path.join(folder, n)
            if not (n.startswith(".tmp-") or n.endswith(".so")):
                continue
            with contextlib.suppress(OSError):
                if now - os.path.getmtime(path) > STALE_SECONDS and not _named(n):
                    os.unlink(path)
    except OSError:
        pass
