"""The export bundle: a directory with the compiled library, parameters and optimizer state
as safetensors, and a JSON manifest holding versions, specs and a SHA-256 of every file
(optionally an Ed25519 signature of the manifest, manifest.sig).

Writes are atomic: the bundle is assembled in a sibling temporary directory and swapped into
place in one step (renameat2 RENAME_EXCHANGE on Linux), so an export killed at any moment
leaves the old bundle or the new one at its path, never a half-written one or none; the next
export of that path removes the temporaries a killed one left.

Reads trust nothing before checking it: the manifest is validated as a schema first (see
manifest.py), each file is read once, as a regular file inside the bundle directory, and the
bytes whose hash was checked are the bytes used: the library is loaded from a private copy of
them, never from the bundle path again.
"""

import ctypes
import errno
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from .._files import remove_stale_temporaries, temp_prefix
from .._tvm import load_module
from ..errors import BundleError
from . import signing
from .elf import check_shared_object
from .manifest import FILES, FORMAT, FORMAT_VERSION, MANIFEST, SIGNATURE, validate

MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a few kB; anything near this is not one


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def tensors_to_bytes(arrays):
    # np.require, not np.ascontiguousarray: that one turns a 0-d array (a buffer such as
    # BatchNorm's num_batches_tracked) into shape (1,)
    return st_save({k: np.require(v, requirements="C") for k, v in arrays.items()})


def write_bundle(path, manifest, files, sign_key=None):
    """Write `files` ({name: bytes, or a callable(path) that writes it}) and the manifest, and
    with `sign_key` a signature of the manifest."""
    path = os.path.abspath(os.fspath(path))
    sign_key = None if sign_key is None else signing.private_key(sign_key)  # fail before work
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale_temporaries(parent, os.path.basename(path))  # what killed exports left
    tmp = tempfile.mkdtemp(prefix=temp_prefix(path), dir=parent)
    try:
        hashes = {}
        for name, content in files.items():
            target = os.path.join(tmp, name)
            if callable(content):
                content(target)
                with open(target, "rb") as f:
                    content = f.read()
            else:
                with open(target, "wb") as f:
                    f.write(content)
            hashes[name] = sha256(content)
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=hashes)
        validate(manifest, f"exporting {path}")  # never write a bundle load would refuse
        text = json.dumps(manifest, indent=2, sort_keys=True).encode()
        _write(os.path.join(tmp, MANIFEST), text)
        if sign_key is not None:
            _write(os.path.join(tmp, SIGNATURE), signing.sign(text, sign_key))
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# what a bundle folder holds of its own; anything else in it is the user's
_BUNDLE_NAMES = frozenset({MANIFEST, SIGNATURE, *(n for names in FILES.values() for n in names)})
_NEW_BUNDLE_MODE = 0o755  # mkdtemp makes 0700: what an ordinary mkdir would give (as write_atomic)


def _swap_into_place(tmp, path):
    if not os.path.exists(path):
        os.chmod(tmp, _NEW_BUNDLE_MODE)
        os.rename(tmp, path)
        return
    if not os.path.isdir(path) or (os.listdir(path) and not os.path.exists(
            os.path.join(path, MANIFEST))):
        raise BundleError(f"{path} exists and is not a tvmfront bundle; refusing to overwrite it")
    _keep_the_users_files(path, tmp)
    if _exchange(tmp, path):  # one atomic step: tmp now holds the old bundle
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # No atomic exchange here (not Linux, or a filesystem without it): two renames, and a
    # crash between them leaves the old bundle beside `path`, in the folder named below.
    old = tempfile.mkdtemp(prefix=temp_prefix(path), dir=os.path.dirname(path))
    os.rmdir(old)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def _keep_the_users_files(path, tmp):
    """The new bundle `tmp` keeps the old bundle folder's mode and what the user put beside
    its files (a vocabulary, a model card): a re-export had deleted them and left the folder
    0700. Files are hard-linked where the filesystem allows (no second copy on disk), and the
    originals stay in the old folder until the swap, so a crash loses neither."""
    os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
    for name in os.listdir(path):
        if name in _BUNDLE_NAMES:
            continue
        src, dst = os.path.join(path, name), os.path.join(tmp, name)
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isdir(src):
            shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(src, dst)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a, b):
    """Atomically swap the directories `a` and `b` (Linux renameat2 RENAME_EXCHANGE, glibc
    2.28+); False where that is not available, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # the filesystem cannot exchange
        return False
    raise OSError(err, f"cannot swap the new bundle into {b}: {os.strerror(err)}")


# ---- reading -------------------------------------------------------------------------------
def _read_file(dir_fd, name, where, limit=None, missing_ok=False):
    """Bytes of regular file `name` in the bundle directory (open as dir_fd). Symlinks, FIFOs
    and devices are refused: O_NOFOLLOW, and O_NONBLOCK so that opening a FIFO cannot wait
    for a writer; the type is checked on the open descriptor, so it cannot change after."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise BundleError(f"{where}: missing file {name}") from None
    except OSError as err:  # ELOOP: a symlink
        raise BundleError(f"{where}: cannot open {name} as a regular file in the bundle "
                          f"({err.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BundleError(f"{where}: {name} is not a regular file; refusing to read it")
        if limit is not None and info.st_size > limit:
            raise BundleError(f"{where}: {name} is {info.st_size} bytes, more than a "
                              f"{name} can be ({limit})")
        chunks, left = [], info.st_size
        while True:  # to the end, even if the file grew since fstat
            chunk = os.read(fd, max(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left = max(left - len(chunk), 0)
        data = b"".join(chunks)
        if limit is not None and len(data) > limit:
            raise BundleError(f"{where}: {name} grew past {limit} bytes while being read")
        return data
    finally:
        os.close(fd)


class Bundle:
    """A bundle as read and checked: its manifest and the verified bytes of each file."""

    def __init__(self, path, manifest, files):
        self.path, self.manifest, self.files = path, manifest, files


def read_bundle(path, trusted_keys=None):
    """The bundle at `path`: the manifest validated, the signature checked when
    `trusted_keys` are given, and every listed file read once and checked against its hash."""
    path = os.fspath(path)
    keys = None if trusted_keys is None else signing.trusted(trusted_keys)
    try:
        dir_fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        raise BundleError(f"{path}: no such bundle directory") from None
    try:
        text = _read_file(dir_fd, MANIFEST, path, MAX_MANIFEST_BYTES, missing_ok=True)
        if text is None:
            raise BundleError(f"{path}: missing {MANIFEST}; not a tvmfront bundle")
        if keys is not None:
            signature = _read_file(dir_fd, SIGNATURE, path, 1 << 16, missing_ok=True)
            signing.verify(text, signature, keys, path)
        try:
            manifest = json.loads(text)
        except ValueError as err:  # bad JSON or bad UTF-8
            raise BundleError(f"{path}: unreadable manifest ({err})") from None
        validate(manifest, path)
        files = {}
        for name, digest in manifest["files"].items():
            data = _read_file(dir_fd, name, path)
            actual = sha256(data)
            if actual != digest:
                raise BundleError(f"{path}: {name} is corrupt or was modified (sha256 "
                                  f"{actual[:12]}… does not match the manifest's {digest[:12]}…)")
            files[name] = data
    finally:
        os.close(dir_fd)
    return Bundle(path, manifest, files)


def read_tensors(bundle, name, expected):
    """Arrays of the bundle's safetensors file `name` (from its verified bytes), checked
    against [(name, shape, dtype)] `expected`."""
    try:
        arrays = st_load(bundle.files[name])
    except Exception as err:  # safetensors raises its own error types
        raise BundleError(f"{bundle.path}: {name} is not a valid safetensors file ({err})") \
            from None
    for key, shape, dtype in expected:
        if key not in arrays:
            raise BundleError(f"{bundle.path}: {name} lacks tensor '{key}'")
        a = arrays[key]
        if list(a.shape) != list(shape) or str(a.dtype) != dtype:
            raise BundleError(f"{bundle.path}: tensor '{key}' in {name} has shape "
                              f"{list(a.shape)} {a.dtype}, manifest says {list(shape)} {dtype}")
    unexpected = sorted(set(arrays) - {key for key, _, _ in expected})
    if unexpected:
        raise BundleError(f"{bundle.path}: {name} holds tensors the manifest does not list: "
                          f"{unexpected}")
    return arrays


def load_library(bundle, name):
    """The bundle's native library `name`, loaded from its verified bytes: they are written to
    a file only this user can reach (a fresh private temporary directory) and loaded from
    there, so nothing that changes the bundle after its hash was checked gets loaded."""
    check_shared_object(bundle.files[name], f"{bundle.path}: {name}")
    private = tempfile.mkdtemp(prefix="tvmfront-lib-")  # mode 0700
    try:
        fd, lib_path = tempfile.mkstemp(suffix=".so", dir=private)
        with os.fdopen(fd, "wb") as f:
            f.write(bundle.files[name])
        try:
            return load_module(lib_path)
        except Exception as err:  # TVM's loader error: a truncated file, a noexec TMPDIR
            raise BundleError(f"{bundle.path}: cannot load {name} ({err}); if the temporary "
                              f"directory {tempfile.gettempdir()} is mounted noexec, set "
                              "TMPDIR to one that is not") from None
    finally:
        shutil.rmtree(private, ignore_errors=True)  # the loaded library stays mapped
