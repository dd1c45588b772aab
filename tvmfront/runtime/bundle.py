"""The export bundle: a directory with the compiled library, parameters and optimizer state
as safetensors, and a JSON manifest holding versions, specs and a SHA-256 of every file.

Writes are atomic: the bundle is assembled in a sibling temporary directory and renamed
into place, so an interrupted export never leaves a half-written bundle where one was.
"""

import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ..errors import BundleError

MANIFEST = "manifest.json"
FORMAT = "tvmfront-bundle"
FORMAT_VERSION = 1


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tensors_to_bytes(arrays):
    return st_save({k: np.ascontiguousarray(v) for k, v in arrays.items()})


def write_bundle(path, manifest, files):
    """Write `files` ({name: bytes, or a callable(path) that writes it}) and the manifest."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tvmfront-export-", dir=parent)
    try:
        hashes = {}
        for name, content in files.items():
            target = os.path.join(tmp, name)
            if callable(content):
                content(target)
            else:
                with open(target, "wb") as f:
                    f.write(content)
            hashes[name] = sha256(target)
        manifest = dict(manifest, format=FORMAT, format_version=FORMAT_VERSION, files=hashes)
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _swap_into_place(tmp, path):
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    if not os.path.isdir(path) or (os.listdir(path) and not os.path.exists(
            os.path.join(path, MANIFEST))):
        raise BundleError(f"{path} exists and is not a tvmfront bundle; refusing to overwrite it")
    old = tempfile.mkdtemp(prefix=".tvmfront-old-", dir=os.path.dirname(path))
    os.rmdir(old)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def read_bundle(path):
    """Manifest of the bundle at `path`, after checking every file against its hash."""
    path = os.fspath(path)
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise BundleError(f"{path}: no such bundle directory")
    if not os.path.exists(mpath):
        raise BundleError(f"{path}: missing {MANIFEST}; not a tvmfront bundle")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise BundleError(f"{mpath}: unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a tvmfront bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{mpath}: bundle format version {manifest.get('format_version')}, "
                          f"this tvmfront reads version {FORMAT_VERSION}")
    for name, digest in manifest.get("files", {}).items():
        fpath = os.path.join(path, name)
        if not os.path.exists(fpath):
            raise BundleError(f"{path}: missing file {name}")
        actual = sha256(fpath)
        if actual != digest:
            raise BundleError(f"{path}: {name} is corrupt or was modified (sha256 {actual[:12]}…"
                              f" does not match the manifest's {digest[:12]}…)")
    return manifest


def read_tensors(path, name, expected):
    """Arrays of safetensors file `name`, checked against [(name, shape, dtype)] `expected`."""
    with open(os.path.join(path, name), "rb") as f:
        try:
            arrays = st_load(f.read())
        except Exception as err:  # safetensors raises its own error types
            raise BundleError(f"{path}: {name} is not a valid safetensors file ({err})") from None
    for key, shape, dtype in expected:
        if key not in arrays:
            raise BundleError(f"{path}: {name} lacks tensor '{key}'")
        a = arrays[key]
        if list(a.shape) != list(shape) or str(a.dtype) != dtype:
            raise BundleError(f"{path}: tensor '{key}' in {name} has shape {list(a.shape)} "
                              f"{a.dtype}, manifest says {list(shape)} {dtype}")
    return arrays
