"""Crash safety of the compile cache, measured: a process killed (SIGKILL) at random moments
while it writes an entry leaves the old entry or the new one, never a half-written one.

A child forked from this process (after the imports: no start-up cost) writes one key over
and over, alternating two real libraries (x + 1 and x + 2), and marks in shared memory where
it is: which version it writes, which it last finished, and whether it is inside
`write_library` or committing. The parent kills it at a random moment, 50 times, and after
each kill looks the key up: what it finds must be a complete entry (library bytes matching
the metadata, loadable, computing what its metadata says) of the last finished version
("old") or of the one being written ("new"); "none" only before any write ever finished.
"""

import mmap
import os
import random
import signal
import struct
import time
import warnings

import numpy as np
import pytest

from tvmfront import cache
from tvmfront._tvm import export_library, load_module, te, to_device, tvm

KILLS = 50
# More kills, up to this many, until both outcomes of a mid-commit kill were seen: the new
# entry is found only for a kill after the rename and before the child marks it done, which
# 50 kills missed in about one run of ten (CI flake, 2026-12-04: 5-9 kills while committing).
MAX_KILLS = 400
KEY = "c0ffee" * 6 + "c0ff"
IDLE, WRITING, COMMITTING = 0, 1, 2
PHASES = {IDLE: "between writes", WRITING: "writing the library", COMMITTING: "committing"}
# shared words: started, phase, version being written, version last finished
LAYOUT = struct.Struct("qqqq")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TVMFRONT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TVMFRONT_CACHE", raising=False)
    return tmp_path / "cache"


def _libraries(folder):
    """{addend: library bytes} of two kernels y = x + addend."""
    x = te.placeholder((4,), "float32", name="x")
    found = {}
    for addend in (1, 2):
        c = float(addend)
        y = te.compute((4,), lambda i: x[i] + c, name="y")  # noqa: B023 - used at once
        path = folder / f"add{addend}.so"
        export_library(tvm.compile(te.create_prim_func([x, y]), target="llvm"), str(path))
        found[addend] = path.read_bytes()
    return found


def _addend(version):
    return 1 if version % 2 else 2


def _writer(shared, libraries, first_version, done):
    """The child: write versions first_version, first_version + 1, ... until killed; `done`
    is the version in the cache when it starts (0: none)."""

    def mark(*words):
        shared[:LAYOUT.size] = LAYOUT.pack(*words)

    version = first_version
    while True:
        data = libraries[_addend(version)]

        def write_library(path, data=data, version=version):
            mark(1, WRITING, version, done)
            _write_in_pieces(path, data)
            mark(1, COMMITTING, version, done)

        cache.store(KEY, write_library, {"version": version, "addend": _addend(version)})
        done = version
        mark(1, IDLE, version, done)
        version += 1


def _write_in_pieces(path, data):
    with open(path, "wb") as f:  # in pieces, like a linker: a kill can cut it short
        for start in range(0, len(data), 4096):
            f.write(data[start:start + 4096])
            f.flush()
            time.sleep(0.002)


def _fork_writer(shared, libraries, first_version, done):
    shared[:LAYOUT.size] = LAYOUT.pack(0, IDLE, first_version, done)
    with warnings.catch_warnings():  # the child touches no TVM thread: fork is safe here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            _writer(shared, libraries, first_version, done)
        finally:
            os._exit(0)
    return pid


def _check_entry(hit, libraries, tmp_path):
    """The entry is complete and correct: returns its version."""
    data, info, path = hit
    addend = info["addend"]
    assert addend == _addend(info["version"])
    assert data == libraries[addend]  # whole, and the library the metadata describes
    with open(path, "rb") as f:
        assert f.read() == data
    # Loadable and computing what it should (content-named path: one library per name).
    kernel = load_module(path)
    x = np.arange(4, dtype="float32")
    out = tvm.runtime.empty((4,), "float32", tvm.cpu())
    kernel["main"](to_device(x), out)
    np.testing.assert_array_equal(out.numpy(), x + addend)
    return info["version"]


def _store_seconds(libraries):
    t0 = time.perf_counter()
    for version in (1, 2, 3):
        # timed as the child writes, in pieces: the kill window must cover whole stores
        cache.store(KEY, lambda p, v=version: _write_in_pieces(p, libraries[_addend(v)]),
                    {"version": version, "addend": _addend(version)})
    seconds = (time.perf_counter() - t0) / 3
    cache.discard(KEY)
    return seconds


@pytest.mark.slow
def test_killed_writers_leave_the_old_or_the_new_entry(cache_dir, tmp_path, monkeypatch):
    libraries = _libraries(tmp_path)
    window = 3 * _store_seconds(libraries)  # kills land in the first few writes of a child
    rng = random.Random(0)
    shared = mmap.mmap(-1, LAYOUT.size)  # anonymous, shared with the forked child
    counts = {"old": 0, "new": 0, "none": 0}
    phases = dict.fromkeys(PHASES.values(), 0)
    next_version, on_disk = 1, 0  # the version the cache holds (0: none)
    t0 = time.perf_counter()
    kills = 0
    while kills < KILLS or not (counts["new"] and counts["old"]) and kills < MAX_KILLS:
        kills += 1
        pid = _fork_writer(shared, libraries, next_version, on_disk)
        deadline = time.perf_counter() + 10
        while LAYOUT.unpack(shared[:LAYOUT.size])[0] == 0:  # the child is running
            assert time.perf_counter() < deadline, "the writer did not start"
            time.sleep(0.0002)
        time.sleep(rng.uniform(0, window))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        _, phase, writing, done = LAYOUT.unpack(shared[:LAYOUT.size])
        phases[PHASES[phase]] += 1
        hit = cache.lookup(KEY)
        if hit is None:
            assert done == 0, "a finished entry was lost"
            counts["none"] += 1
        else:
            version = _check_entry(hit, libraries, tmp_path)
            if phase == IDLE:
                assert version == done
                counts["old"] += 1  # nothing was in flight: the last finished entry
            else:
                assert version in (done, writing), (version, done, writing)
                counts["old" if version == done else "new"] += 1
        on_disk = 0 if hit is None else version
        next_version = writing + 1
    seconds = time.perf_counter() - t0
    mid_write = kills - phases["between writes"]
    print(f"\n{kills} kills in {seconds:.1f} s ({window * 1e3:.1f} ms window): {mid_write} "
          f"mid-write ({phases}); found {counts}")
    assert sum(counts.values()) == kills
    assert mid_write >= kills // 2  # the test does exercise interrupted writes
    assert counts["new"] and counts["old"]
    assert phases["writing the library"] and phases["committing"]

    # Stray temporary files of killed writers are cleaned up once stale; the entry stays.
    monkeypatch.setattr(cache, "STALE_SECONDS", -1)
    cache._prune()
    hit = cache.lookup(KEY)
    names = sorted(os.listdir(cache_dir / "modules"))
    if hit is None:
        assert names == []
    else:
        assert names == sorted([f"{KEY}.json", os.path.basename(hit[2])])
