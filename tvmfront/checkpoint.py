"""Training checkpoints: one safetensors file holding everything a Trainer needs to resume.

Tensors: ``param/<name>`` (parameters) and ``optim/<name>`` (optimizer state). The header's
metadata holds ``format``, ``format_version`` and ``meta``: JSON with the step count (also the
position of a per-step lr schedule), epoch, trainer seed (batch order and augmentation draw
from (seed, epoch), so seed + epoch is the whole RNG state), learning rate, the schedule's
description, history, the spec of every tensor and a SHA-256 over the tensor bytes and that
metadata, so a flipped byte is caught as well as a cut-off file (format version 1, still
read, hashed the tensors alone). The metadata is checked as a schema before anything of the
file is used. No pickle anywhere.

Writes are atomic: a temporary file in the same folder, fsync, os.replace, fsync of the
folder; a crash leaves the old checkpoint or the new one, never half of one.
"""


import hashlib
import json
import os
import struct

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from . import _files
from .errors import CheckpointError
from .runtime.scalars import is_rate

FORMAT = "tvmfront-checkpoint"
FORMAT_VERSION = 2  # 2: the SHA-256 covers the metadata too; version 1 files are read
_READS = ("1", "2")
_PARAM, _OPTIM = "param/", "optim/"


def _digest(tensors, meta=None):
    """SHA-256 of the tensors' names, specs and bytes, then of `meta` (its JSON without the
    digest itself) unless None (a version 1 file)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        a = np.require(tensors[name], requirements="C")
        h.update(f"{name}:{a.dtype}:{a.shape};".encode())
        h.update(a.tobytes())
    if meta is not None:
        h.update(json.dumps({k: v for k, v in meta.items() if k != "sha256"},
                            sort_keys=True).encode())
    return h.hexdigest()


def _is_int(v, least=None):
    return isinstance(v, int) and not isinstance(v, bool) and (least is None or v >= least)


def _is_in_epoch(v):
    """fit's position within an epoch (Trainer._in_epoch as save_checkpoint writes it)."""
    if not isinstance(v, dict) or set(v) != {"steps", "batch", "losses", "sizes", "lr"}:
        return False
    return (_is_int(v["steps"], 1) and _is_int(v["batch"], 1)
            and isinstance(v["losses"], list) and len(v["losses"]) == v["steps"]
            and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                    for x in v["losses"])
            and isinstance(v["sizes"], list) and len(v["sizes"]) == v["steps"]
            and all(_is_int(x, 1) for x in v["sizes"])
            and (v["lr"] is None or is_rate(v["lr"])))


# what load_checkpoint uses from the metadata: key -> (check, what it must be); the other
# keys are informative (target_key, ranks, lr_schedule's description)
_META = {
    # (a step count beyond int64 loaded, then fit failed in numpy: OverflowError)
    "step": (lambda v: _is_int(v, 0) and v < 2**63, "an integer in [0, 2**63)"),
    "epoch": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "seed": (lambda v: _is_int(v, 0), "an integer >= 0"),
    "lr": (is_rate, "a finite number >= 0"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v),
                "a list of per-epoch records"),
    "optimizer": (lambda v: isinstance(v, str), "a string"),
    "batch_size": (lambda v: v is None or _is_int(v, 1), "null or an integer >= 1"),
    "dropout_seed": (lambda v: _is_int(v, 0) and v < 2**64, "an integer in [0, 2**64)"),
    "in_epoch": (_is_in_epoch, "fit's position within an epoch (steps, batch, losses, sizes, "
                               "lr)"),
    "optimizer_hyperparameters": (lambda v: isinstance(v, dict), "a JSON object"),
}
_OPTIONAL_META = {"batch_size", "dropout_seed", "in_epoch", "optimizer_hyperparameters"}


def _check_meta(path, meta):
    """CheckpointError naming the first metadata field (of a dict) load_checkpoint would
    fail on."""
    for key, (check, what) in _META.items():
        if key not in meta:
            if key in _OPTIONAL_META:
                continue
            raise CheckpointError(f"{path}: the checkpoint metadata lacks '{key}'")
        if not check(meta[key]):
            raise CheckpointError(f"{path}: checkpoint metadata '{key}' must be {what}, got "
                                  f"{meta[key]!r:.80}")


def _specs(arrays):
    return {n: {"shape": list(a.shape), "dtype": str(a.dtype)} for n, a in arrays.items()}


def encode(params, optim, meta):
    """Checkpoint bytes from {name: array} parameters and optimizer state and a JSON-able
    meta dict."""
    tensors = {_PARAM + n: np.require(a, requirements="C") for n, a in params.items()}
    tensors.update({_OPTIM + n: np.require(a, requirements="C") for n, a in optim.items()})
    meta = dict(meta, parameters=_specs(params), optimizer_state=_specs(optim))
    meta["sha256"] = _digest(tensors, meta)
    return st_save(tensors, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION),
                                      "meta": json.dumps(meta, sort_keys=True)})


def write_atomic(path, data):
    """Write `data` to `path` so that a crash at any moment leaves the old file or the new;
    the temporaries of saves killed earlier are removed first."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):  # os.replace's IsADirectoryError had named the temporary
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name, e.g. "
                                f"{os.path.join(path, 'checkpoint.safetensors')}")
    if os.path.isdir(os.path.dirname(path)):
        _files.remove_stale_temporaries(os.path.dirname(path), os.path.basename(path))
    return _files.write_atomic(path, data)


def _header_metadata(path, data):
    """The safetensors header's __metadata__, checked before trusting any of the file."""
    if len(data) < 8:
        raise CheckpointError(f"{path}: {len(data)} bytes, too short for a checkpoint")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise CheckpointError(f"{path}: truncated (header of {n} bytes, file of {len(data)})")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        meta = header.get("__metadata__") or {}
    except (UnicodeDecodeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tvmfront checkpoint (format "
                              f"{meta.get('format')!r})")
    if meta.get("format_version") not in _READS:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('format_version')}, "
                              f"this tvmfront reads versions {', '.join(_READS)}")
    try:
        return meta["format_version"], json.loads(meta["meta"])
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata ({e})") from None


def read(path):
    """(params, optimizer state, meta) of the checkpoint at `path`, after checking its
    format, that its tensors match the specs it records and the SHA-256 of their bytes."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    version, meta = _header_metadata(path, data)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (not a JSON object)")
    try:
        tensors = st_load(data)
    except Exception as e:  # safetensors raises its own error type for every malformation
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({e})") from None
    if _digest(tensors, meta if version != "1" else None) != meta.get("sha256"):
        what = "the tensor data" if version == "1" else "the data (tensors and metadata)"
        raise CheckpointError(f"{path}: {what} does not match the SHA-256 it records (the "
                              f"file is corrupt)")
    _check_meta(path, meta)
    params = {n[len(_PARAM):]: a for n, a in tensors.items() if n.startswith(_PARAM)}
    optim = {n[len(_OPTIM):]: a for n, a in tensors.items() if n.startswith(_OPTIM)}
    if _specs(params) != meta.get("parameters") or _specs(optim) != meta.get("optimizer_state"):
        raise CheckpointError(f"{path}: tensors do not match the specs the checkpoint records")
    return params, optim, meta


def check_fits(path, what, arrays, specs):
    """Raise CheckpointError unless {name: array} matches [{'name', 'shape', 'dtype'}];
    `what` names one entry ("parameter")."""
    want = {s["name"]: {"shape": list(s["shape"]), "dtype": s["dtype"]} for s in specs}
    got = _specs(arrays)
    if set(got) != set(want):
        raise CheckpointError(f"{path}: the {what}s do not match this module: missing "
                              f"{sorted(set(want) - set(got))}, unexpected "
                              f"{sorted(set(got) - set(want))}")
    for n, spec in want.items():
        if got[n] != spec:
            raise CheckpointError(f"{path}: {what} '{n}' is shape {tuple(got[n]['shape'])} "
                                  f"{got[n]['dtype']} in the checkpoint, shape "
                                  f"{tuple(spec['shape'])} {spec['dtype']} in this module")
