"""The compile cache: built libraries keyed by everything that decides their code.

Key: SHA-256 of the lowered IRModule's structural hash (before scheduling), the target (its
full JSON), the content digest of the tuning records applied, the tvmfront and TVM versions
and a digest of tvmfront's own source (schedule rules and passes change code without a
version bump). Entries are ``<TVMFRONT_CACHE_DIR>/modules/<key>.so`` (default
``~/.cache/tvmfront``) with ``<key>.json`` beside it (the SHA-256 of the library and what the
build applied), each written to a temporary file and moved in with os.replace. A hit loads
the library with tvm.runtime.load_module; the VM runs it as it would a fresh build.
``TVMFRONT_CACHE=0`` turns the cache off. The oldest entries beyond MAX_ENTRIES are removed.
"""

import contextlib
import functools
import hashlib
import json
import os
import tempfile

from ._tvm import TVM_VERSION, structural_hash
from ._version import __version__

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
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:40]


def _paths(k):
    base = os.path.join(cache_dir(), "modules", k)
    return base + ".so", base + ".json"


def lookup(k):
    """(library bytes, info dict, library path) of entry `k`, or None on a miss. An entry
    whose bytes do not match its recorded SHA-256 is removed and counts as a miss."""
    if cache_dir() is None:
        return None
    lib, meta = _paths(k)
    try:
        with open(meta, encoding="utf-8") as f:
            info = json.load(f)
        with open(lib, "rb") as f:
            data = f.read()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(data).hexdigest() != info.get("sha256"):
        for p in (lib, meta):
            with contextlib.suppress(OSError):
                os.unlink(p)
        return None
    with contextlib.suppress(OSError):
        os.utime(lib)  # recently used: pruned last
    return data, info, lib


def _atomic_write(path, write):
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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
    lib, meta = _paths(k)
    _atomic_write(lib, write_library)
    with open(lib, "rb") as f:
        data = f.read()
    info = dict(info, sha256=hashlib.sha256(data).hexdigest())

    def write_meta(path):
        with open(path, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1, sort_keys=True)

    _atomic_write(meta, write_meta)
    _prune()
    return lib, data


def _prune():
    folder = os.path.join(cache_dir(), "modules")
    try:
        libs = [os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".so")]
        if len(libs) <= MAX_ENTRIES:
            return
        libs.sort(key=os.path.getmtime)
        for lib in libs[:len(libs) - MAX_ENTRIES]:
            for p in (lib, lib[:-3] + ".json"):
                with contextlib.suppress(OSError):
                    os.unlink(p)
    except OSError:
        pass
