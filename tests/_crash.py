"""Crash injection for tests: SIGKILL a forked writer mid-write, then check what is on disk.

The writer runs in a child made with os.fork(), so the test process's imports (tvmfront, TVM)
cost nothing per kill. The child must not run TVM kernels: the parent's thread pool does not
exist in a forked child, and a kernel that waits for it would hang. Writing files is fine.

Two ways to pick the moment of death:
- kill_at_random: the parent sleeps a random delay after the child is ready, then kills it.
  Delays are drawn in [0, 1.2 x the time of one write] (re-estimated as kills go), so most
  kills land inside a write.
- kill_at_each_step: the child kills itself right after its k-th filesystem call (mkdir,
  rename, fsync, ...), for every k. Random kills almost never hit a microsecond-wide gap
  between two renames; this visits every such gap once.

Each child reports its progress through a pipe: R (ready), S (a write started), D (it ended),
E + traceback (it raised). The parent reads the markers after the kill to say when it died.
"""

import collections
import os
import random
import signal
import time
import traceback
import warnings

# The filesystem calls kill_at_each_step stops at: those that change what a reader sees
# (names appear, move, vanish) and fsync (the content is final).
STEPS = ("mkdir", "rename", "replace", "rmdir", "unlink", "fsync")


def _fork(body):
    """(pid, read end of the marker pipe) of a child running body(say), say(bytes) writing
    markers; the child never returns into the test (os._exit), whatever body does."""
    r, w = os.pipe()
    with warnings.catch_warnings():
        # Python warns that fork() in a threaded process may deadlock the child; the child
        # only writes files and exits, without the locks of the parent's other threads.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            body(lambda marker: os.write(w, marker))
        except BaseException:
            code = 1
            try:
                os.write(w, b"E" + traceback.format_exc().encode())
            except BaseException:
                pass
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _read_all(fd):
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            os.close(fd)
            return out
        out += chunk


def _writer(write, repeat):
    def body(say):
        say(b"R")
        for _ in range(repeat):
            say(b"S")
            write()
            say(b"D")
    return body


def _child_error(markers):
    i = markers.find(b"E")
    return markers[i + 1:].decode(errors="replace") if i >= 0 else None


def _when(markers, repeat):
    """When the child died, from its markers (after R)."""
    if markers.count(b"D") == repeat:
        return "after completion"
    if markers.endswith(b"S"):
        return "mid-write"
    if b"S" not in markers:
        return "before start"
    return "between writes"


def time_one_write(write, check_after, repeat=1, tries=3):
    """Median seconds from the child's R marker to its last write's end (each try checked)."""
    times = []
    for _ in range(tries):
        pid, fd = _fork(_writer(write, repeat))
        assert os.read(fd, 1) == b"R"
        t0, markers = time.perf_counter(), b""
        while markers.count(b"D") < repeat and b"E" not in markers:  # not the exit: it is slow
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            markers += chunk
        times.append(time.perf_counter() - t0)
        markers += _read_all(fd)
        os.waitpid(pid, 0)
        assert _child_error(markers) is None, f"write failed in the child:\n{_child_error(markers)}"
        check_after()
    return sorted(times)[len(times) // 2]


def kill_at_random(write, check_after, n=50, seed=0, repeat=1, name="write", min_mid_write=0,
                   states=("old", "new")):
    """Kill a child running `write()` (`repeat` times) at n random moments; after each kill
    `check_after()` asserts the state on disk and returns a label for it ("old", "new").

    Delays are drawn from [0, 1.2 x the write's time], and that time is re-estimated as kills
    show it: a kill that finds the writes completed after `delay` proves they take at most
    that long (on a loaded machine the first timing can be several times too long, and most
    kills then land after the end); ten kills in a row inside the write grow it by half (the
    first timing can be too short as well: a records merge timed at 4.6 ms, all 200 kills
    then landed mid-write on a loaded machine and none found the merged state, a CI flake of
    2026-12-06). Kills go on past n, up to 4n, until `min_mid_write` of
    them landed inside a write and every one of `states` was found (the tests assert both an
    old and a new entry: 50 kills once found only "new", a CI flake of 2026-12-04).

    Returns a Counter of "when:<moment>" and "state:<label>"; prints it (pytest -s shows it).
    A write that raises in the child fails the test: after a crash, the next write must work.
    """
    seconds = first = time_one_write(write, check_after, repeat)
    rng = random.Random(seed)
    counts = collections.Counter()
    i = inside = 0
    while i < n or ((counts["when:mid-write"] < min_mid_write
                     or not all(counts[f"state:{label}"] for label in states)) and i < 4 * n):
        delay = rng.uniform(0, 1.2 * seconds)
        pid, fd = _fork(_writer(write, repeat))
        ready = os.read(fd, 1)
        assert ready == b"R", f"child {pid} died before it was ready: {ready!r}"
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)  # a child that already exited is a zombie: no error
        markers = _read_all(fd)
        os.waitpid(pid, 0)
        error = _child_error(markers)
        assert error is None, f"kill {i}: the write raised in the child:\n{error}"
        when = _when(markers, repeat)
        try:
            label = check_after()
        except Exception as err:  # e.g. the loader's own error: name the kill
            raise AssertionError(f"kill {i} ({when}, {delay * 1e3:.2f} ms into "
                                 f"{seconds * 1e3:.2f} ms of writing): {err}") from err
        if when == "after completion":
            seconds, inside = min(seconds, delay), 0
        else:
            inside += 1
            if inside == 10:
                seconds, inside = seconds * 1.5, 0
        counts[f"when:{when}"] += 1
        counts[f"state:{label}"] += 1
        i += 1
    print(f"\n{name}: {i} kills, one write {first * 1e3:.1f} ms timed, "
          f"{seconds * 1e3:.1f} ms at the end: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return counts


def _kill_after_step(k, log=None):
    """Wrap the STEPS functions of os so that the child SIGKILLs itself right after its k-th
    call (or, with log, records every call instead)."""
    seen = [0]

    def wrap(name, real):
        def call(*args, **kwargs):
            result = real(*args, **kwargs)
            seen[0] += 1
            if log is not None:
                log.append(f"{name}({', '.join(os.path.basename(str(a)) for a in args)})")
            elif seen[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return call

    for name in STEPS:
        setattr(os, name, wrap(name, getattr(os, name)))


def kill_at_each_step(write, check_after):
    """Kill a child running `write()` right after each of its filesystem calls in turn, and
    `check_after()` (as in kill_at_random) after each. Returns [(call, label)] in call order."""
    log = []

    def dry_run(say):
        _kill_after_step(0, log)
        write()
        say("\n".join(log).encode())

    pid, fd = _fork(dry_run)
    text = _read_all(fd).decode(errors="replace")
    os.waitpid(pid, 0)
    assert not text.startswith("E"), f"write failed in the child:\n{text}"
    assert text, f"the write made none of the calls {STEPS}: nothing to stop at"
    steps = text.split("\n")
    check_after()
    seen = []
    for k, step in enumerate(steps, 1):
        def body(say, k=k):
            _kill_after_step(k)
            write()

        pid, fd = _fork(body)
        markers = _read_all(fd)
        _, status = os.waitpid(pid, 0)
        assert _child_error(markers) is None, f"after {step}: write raised:\n{_child_error(markers)}"
        assert os.WIFSIGNALED(status), f"the child did not reach call {k} ({step})"
        try:
            seen.append((step, check_after()))
        except Exception as err:
            raise AssertionError(f"killed right after call {k} of {len(steps)}, {step}: "
                                 f"{err}") from err
    return seen
