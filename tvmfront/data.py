"""Small datasets and data utilities for examples and tests.

Only numpy and the standard library are imported at module import time;
scikit-learn is imported lazily by :func:`load_digits`, so the rest of the
module works without it.
"""

import gzip
import hashlib
import math
import os

import numpy as np

from ._checks import is_whole
from ._files import write_atomic

# The text helpers below (load_pydoc_text, char_vocab, encode, decode, lm_windows) are public
# too; tests/test_data.py pins this list, so they join it with that test's update.
__all__ = ["load_digits", "upsample", "read_idx", "write_idx", "load_mnist", "batches",
           "load_pydoc_text", "char_vocab", "encode", "decode", "lm_windows"]

# IDX dtype code -> on-disk (big-endian) dtype.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Keyed by (kind, itemsize) so that either byte order of an array maps to its code.
_IDX_CODES = {(dt.kind, dt.itemsize): code for code, dt in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def load_digits(test_fraction=0.2, seed=0, dtype="float32"):
    """Load scikit-learn's bundled 8x8 digits (1797 images) with a seeded split.

    Pixels are scaled to [0, 1]; images are NCHW ``[N, 1, 8, 8]`` and labels
    int64. The split depends only on ``seed`` and ``test_fraction``, so the same
    arguments always give the same split::

        >>> x_train, y_train, x_test, y_test = load_digits(seed=0)
        >>> x_train.shape, x_test.shape
        ((1438, 1, 8, 8), (359, 1, 8, 8))
    """
    if isinstance(test_fraction, bool) or \
            not isinstance(test_fraction, (int, float, np.integer, np.floating)) or \
            not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    if np.dtype(dtype).kind != "f":  # int8 truncated the [0, 1] pixels to {0, 1}
        raise ValueError(f"load_digits: dtype must be a float dtype (pixels lie in [0, 1]), "
                         f"got {dtype!r}")
    from sklearn.datasets import load_digits as _sk_load_digits

    digits = _sk_load_digits()
    # The raw pixel intensities are integers in 0..16.
    x = (digits.data / 16.0).astype(dtype).reshape(-1, 1, 8, 8)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    if not 0 < n_test < len(y):  # as scikit-learn's train_test_split: no empty side
        raise ValueError(f"load_digits: test_fraction={test_fraction} leaves "
                         f"{'no test' if n_test == 0 else 'no training'} sample of {len(y)}")
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def upsample(x, factor):
    """Nearest-neighbour upsampling of the last two (H, W) axes by an integer factor."""
    if not is_whole(factor, least=1):
        raise ValueError(f"upsample factor must be a positive int, got {factor!r}")
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"upsample needs an array with spatial axes, got shape {x.shape}")
    return np.repeat(np.repeat(x, factor, axis=-2), factor, axis=-1)


def _read_bytes(path):
    with open(path, "rb") as f:
        raw = f.read()
    # Sniff the gzip magic rather than trusting the file name.
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: corrupt gzip data ({e})") from e


def read_idx(path):
    """Read an IDX file (as used by MNIST), optionally gzip-compressed.

    Returns an array in native byte order. Raises ``ValueError`` naming the
    file for a bad magic number, unknown dtype code, truncated data or
    trailing bytes.
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: bad IDX magic {data[:4].hex()} (must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX dtype code 0x{code:02x}")
    dtype = _IDX_DTYPES[code]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{path}: truncated IDX header (need {header_len} bytes, got {len(data)})")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise ValueError(f"{path}: truncated IDX data (shape {shape} needs {expected} bytes, got {actual})")
    if actual > expected:
        raise ValueError(f"{path}: {actual - expected} bytes of trailing data after IDX payload")
    arr = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=header_len)
    # astype copies, so the result is writable and not tied to the bytes buffer.
    return arr.astype(dtype.newbyteorder("=")).reshape(shape)


def write_idx(path, array):
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``).

    The file is written to a temporary file in the same directory, fsynced and
    renamed into place, so readers never see a partial file.
    """
    arr = np.asarray(array)
    code = _IDX_CODES.get((arr.dtype.kind, arr.dtype.itemsize))
    if code is None:
        raise ValueError(f"{path}: dtype {arr.dtype} cannot be stored in IDX "
                         "(supported: uint8, int8, int16, int32, float32, float64)")
    if arr.ndim > 255:
        raise ValueError(f"{path}: IDX supports at most 255 dimensions, got {arr.ndim}")
    if any(d >= 2**32 for d in arr.shape):
        raise ValueError(f"{path}: dimension too large for IDX: {arr.shape}")
    payload = (bytes([0, 0, code, arr.ndim])
               + np.asarray(arr.shape, dtype=">u4").tobytes()
               + np.ascontiguousarray(arr, dtype=_IDX_DTYPES[code]).tobytes())
    if os.fspath(path).endswith(".gz"):
        # mtime=0 keeps the output byte-for-byte reproducible.
        payload = gzip.compress(payload, mtime=0)

    write_atomic(path, payload)


def _find_idx(directory, name):
    for candidate in (name, name + ".gz"):
        p = os.path.join(directory, candidate)
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"MNIST file {name}[.gz] not found in {directory}")


def load_mnist(directory, kind="train"):
    """Load MNIST-format IDX files from ``directory``.

    ``kind`` is ``"train"`` (``train-*-idx?-ubyte[.gz]``) or ``"test"``
    (``t10k-*``). Returns ``(x, y)``: x float32 ``[N, 1, 28, 28]`` in [0, 1],
    y int64 ``[N]``.
    """
    prefixes = {"train": "train", "test": "t10k"}
    if kind not in prefixes:
        raise ValueError(f"kind must be 'train' or 'test', got {kind!r}")
    prefix = prefixes[kind]
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path), read_idx(labels_path)
    # Scaling by 255 is only right for uint8 pixels, so reject anything else.
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{images_path}: expected uint8 images [N, H, W], "
                         f"got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{labels_path}: expected integer labels [N], "
                         f"got {labels.dtype} {labels.shape}")
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images in {os.path.basename(images_path)} "
                         f"but {len(labels)} labels in {os.path.basename(labels_path)}")
    x = (images.astype(np.float32) / 255.0)[:, None, :, :]
    return x, labels.astype(np.int64)


def _arrays(value, what):
    """([(label, array)], rebuild) of one array, a tuple/list of arrays (a model of several
    inputs, in forward's order) or a dict {name: array}: the labels name each array in errors
    (``x[1]``, ``x['mask']``) and ``rebuild(arrays)`` gives back the caller's structure. A
    tuple/list counts as several arrays only when every item is a numpy array (a nested list
    of numbers is one array)."""
    if isinstance(value, dict):
        keys = list(value)
        return ([(f"{what}[{k!r}]", np.asarray(value[k])) for k in keys],
                lambda arrays: dict(zip(keys, arrays)))
    if isinstance(value, (tuple, list)) and value and \
            all(isinstance(a, np.ndarray) for a in value):
        kind = type(value)
        return [(f"{what}[{i}]", a) for i, a in enumerate(value)], lambda arrays: kind(arrays)
    return [(what, np.asarray(value))], lambda arrays: arrays[0]


def _num_samples(named):
    """The number of samples of every array in [(label, array)], checked to be one number:
    ValueError naming each array whose first axis differs from the first array's."""
    counts = []
    for label, a in named:
        if a.ndim == 0:
            raise ValueError(f"{label} is a scalar; every array needs a first axis of one "
                             f"entry per sample")
        counts.append(len(a))
    odd = [f"{label} holds {n}" for (label, _), n in zip(named, counts) if n != counts[0]]
    if odd:
        raise ValueError(f"every array needs one entry per sample: {named[0][0]} holds "
                         f"{counts[0]} samples but {', '.join(odd)}")
    return counts[0]


def batches(x, y, batch_size, shuffle, seed, drop_last=True, extras=None):
    """Iterate over ``(xb, yb)`` minibatches along the first axis (``(xb, yb, eb)`` when
    ``extras`` is given).

    ``x`` is one array, or for a model of several inputs a tuple/list of arrays (forward's
    order) or a dict {argument name: array}; ``extras`` (a loss's extra inputs: sample
    weights, masks) likewise. Every array is sliced with the same sample indices, and each
    batch comes back in the structure it was passed in. With ``shuffle`` the order comes from
    ``np.random.default_rng(seed)``, so a given seed always yields the same batches.
    ``drop_last`` drops a final batch smaller than ``batch_size``.

        >>> for (tokens, mask), labels in batches((tokens, mask), labels, 32, True, seed=0):
        ...     module.step((tokens, mask), labels)
    """
    # Validate here, not inside the generator, so mistakes surface at the call site.
    if not is_whole(batch_size, least=1):
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    xs, x_back = _arrays(x, "x")
    es, e_back = _arrays(extras, "extras") if extras is not None else ([], None)
    y = np.asarray(y)
    if len(xs) == 1 and not es and y.ndim and len(xs[0][1]) != len(y):
        raise ValueError(f"x and y lengths differ: {len(xs[0][1])} vs {len(y)}")
    n = _num_samples(xs + [("y", y)] + es)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_last else n

    def _gen():
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            xb = x_back([a[idx] for _, a in xs])
            if e_back is None:
                yield xb, y[idx]
            else:
                yield xb, y[idx], e_back([a[idx] for _, a in es])

    return _gen()


# --- text for character-level language models --------------------------------

def load_pydoc_text():
    """The Python reference documentation that ships with every CPython, as one string:
    ``(text, sha256, nbytes)``.

    The text is ``pydoc_data.topics.topics`` (help() topic -> its text), the values joined in
    sorted key order with nothing between them, so it depends only on the Python version (about
    465 KB on 3.11). ``sha256`` is the hex digest of its UTF-8 bytes and ``nbytes`` their count,
    for printing which text a run trained on::

        >>> text, sha, nbytes = load_pydoc_text()
        >>> vocab = char_vocab(text); ids = encode(text, vocab)
    """
    from pydoc_data.topics import topics

    text = "".join(topics[k] for k in sorted(topics))
    raw = text.encode("utf-8")
    return text, hashlib.sha256(raw).hexdigest(), len(raw)


def char_vocab(text):
    """The sorted list of the distinct characters of `text`: id i is ``vocab[i]``."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"char_vocab needs a non-empty str, got {type(text).__name__} "
                         f"{text!r:.40}")
    return sorted(set(text))


def encode(text, vocab):
    """Character ids (int64 [len(text)]) of `text` under `vocab` (char_vocab's list);
    ValueError naming the first character `vocab` lacks."""
    index = {c: i for i, c in enumerate(vocab)}
    try:
        return np.fromiter((index[c] for c in text), dtype=np.int64, count=len(text))
    except KeyError as e:
        raise ValueError(f"encode: character {e.args[0]!r} (at index "
                         f"{text.index(e.args[0])}) is not in the vocabulary of "
                         f"{len(vocab)} characters") from None


def decode(ids, vocab):
    """The text of character ids under `vocab`; ValueError for an id outside it."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= len(vocab)):
        raise ValueError(f"decode: ids must be integers in [0, {len(vocab)}), got {ids.dtype} "
                         f"in [{ids.min()}, {ids.max()}]")
    return "".join(vocab[i] for i in ids.tolist())


def lm_windows(ids, batch, length, rng):
    """A language-model batch: `batch` windows of `length` ids starting at random positions
    of `ids` (drawn by numpy Generator `rng`), and the same windows shifted by one, the next
    character to predict: ``(x, y)``, both int64 [batch, length]."""
    ids = np.asarray(ids)
    for name, value in (("batch", batch), ("length", length)):
        if not is_whole(value, least=1):
            raise ValueError(f"lm_windows: {name} must be an int >= 1, got {value!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"lm_windows: rng must be a numpy Generator "
                        f"(np.random.default_rng(seed)), got {rng!r}")
    if ids.ndim != 1 or len(ids) <= length:
        raise ValueError(f"lm_windows: need a 1-d array of more than length={length} ids, got "
                         f"shape {ids.shape}")
    starts = rng.integers(0, len(ids) - length, batch)
    at = starts[:, None] + np.arange(length)
    return ids[at].astype(np.int64), ids[at + 1].astype(np.int64)
