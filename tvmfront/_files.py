"""Atomic writes: what tvmfront writes (bundles, checkpoints, tuning records, the compile
cache, data files) is the old version or the new one at every moment, never half of one.

A file is written to a temporary sibling, flushed to disk (fsync), moved over its target
with os.replace, and the folder fsynced so the rename itself survives a power loss. The
writer's pid is in every temporary's name (``.<target>.<pid>.<random>.tmp``), so a later
writer can remove what a killed one left without touching a live writer's files.
"""

import contextlib
import os
import shutil
import tempfile

_TMP = ".tmp"


def temp_prefix(path):
    """Prefix of the temporaries of `path`: ``.<name>.<pid>.``."""
    return f".{os.path.basename(os.fspath(path))}.{os.getpid()}."


def write_atomic(path, data, mode=None):
    """Write `data` (bytes or str) to `path`, atomically; returns the absolute path. `mode`:
    the file's permissions (default: those of the file it replaces, else 0o644). A symlink is
    written through, as open() would: its target is replaced and the link kept (os.replace
    on the link itself had turned it into a plain file)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.islink(path):
        path = os.path.realpath(path)
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=temp_prefix(path), suffix=_TMP)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode is None:  # mkstemp makes 0600; keep what an ordinary write would give
            try:
                mode = os.stat(path).st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
    return path


def fsync_dir(folder):
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder, target=None):
    """Remove the temporaries (files or folders) that dead writers left in `folder`, those of
    `target` (a name in it) only when given."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        pid = _writer_pid(name, target)
        if pid is not None and not pid_alive(pid):
            path = os.path.join(folder, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _writer_pid(name, target):
    """The pid in a temporary's name ``.<target>.<pid>.<random>[.tmp]``, else None."""
    if not name.startswith("."):
        return None
    head, sep, rest = name[1:].rpartition(".")  # rest: the random part, or "tmp"
    if rest == "tmp":
        head, sep, rest = head.rpartition(".")
    base, _, pid = head.rpartition(".")
    if not sep or not pid.isdigit() or (target is not None and base != target):
        return None
    return int(pid)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
