import gzip
import os

import numpy as np
import pytest

from tvmfront import data
from tvmfront.data import batches, load_digits, load_mnist, read_idx, upsample, write_idx

IDX_DTYPES = ["uint8", "int8", "int16", "int32", "float32", "float64"]


# --- digits -----------------------------------------------------------------

def test_digits_shapes_dtypes_range():
    x_tr, y_tr, x_te, y_te = load_digits()
    assert x_tr.shape == (1438, 1, 8, 8) and x_te.shape == (359, 1, 8, 8)
    assert y_tr.shape == (1438,) and y_te.shape == (359,)
    assert x_tr.dtype == np.float32 and x_te.dtype == np.float32
    assert y_tr.dtype == np.int64 and y_te.dtype == np.int64
    for x in (x_tr, x_te):
        assert x.min() == 0.0 and x.max() == 1.0
    assert set(np.unique(np.concatenate([y_tr, y_te]))) == set(range(10))
    assert load_digits(dtype="float64")[0].dtype == np.float64


def _row_keys(x, y):
    return {(lbl, img.tobytes()) for img, lbl in zip(x.astype(np.float64), y.tolist())}


def test_digits_split_reproducible_disjoint_and_complete():
    a = load_digits(seed=3)
    b = load_digits(seed=3)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    x_tr, y_tr, x_te, y_te = a
    assert len(y_tr) + len(y_te) == 1797
    # The split must be a partition of the original dataset, in some order.
    from sklearn.datasets import load_digits as sk_load

    d = sk_load()
    x_all = np.concatenate([x_tr, x_te]).reshape(1797, 64) * 16.0
    y_all = np.concatenate([y_tr, y_te])
    order_all = np.lexsort(np.c_[x_all, y_all].T)
    order_ref = np.lexsort(np.c_[d.data, d.target].T)
    np.testing.assert_array_equal(x_all[order_all], d.data[order_ref])
    np.testing.assert_array_equal(y_all[order_all], d.target[order_ref])
    # The digits set contains no duplicate (image, label) pairs, so disjoint
    # train/test means the key sets do not intersect.
    assert len(_row_keys(x_tr, y_tr) & _row_keys(x_te, y_te)) == 0


def test_digits_different_seeds_differ():
    y0 = load_digits(seed=0)[1]
    y1 = load_digits(seed=1)[1]
    assert not np.array_equal(y0, y1)


def test_digits_test_fraction():
    x_tr, _, x_te, _ = load_digits(test_fraction=0.5)
    assert len(x_te) == round(1797 * 0.5) and len(x_tr) + len(x_te) == 1797
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


# --- upsample ---------------------------------------------------------------

def test_upsample_nearest():
    x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    up = upsample(x, 3)
    assert up.shape == (2, 3, 6, 6) and up.dtype == x.dtype
    np.testing.assert_array_equal(up[:, :, ::3, ::3], x)
    np.testing.assert_array_equal(up[1, 2, 3:6, 0:3], np.full((3, 3), x[1, 2, 1, 0]))
    np.testing.assert_array_equal(upsample(x, 1), x)


@pytest.mark.parametrize("factor", [0, -2, 1.5, 2.0, "2", True])
def test_upsample_bad_factor(factor):
    with pytest.raises(ValueError, match="positive int"):
        upsample(np.zeros((1, 1, 2, 2)), factor)


# --- IDX --------------------------------------------------------------------

def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


@pytest.mark.parametrize("dtype", IDX_DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 4, 5), (2, 1, 3, 2)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, shape, suffix):
    arr = _sample(dtype, shape)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, arr)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == shape
    np.testing.assert_array_equal(out, arr)
    out[...] = 0  # must be a writable copy
    raw = path.read_bytes()
    assert raw[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")


def test_idx_on_disk_format_is_big_endian(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.array([[1, 2, 3], [4, 5, 256]], dtype=np.int16))
    assert path.read_bytes() == (
        b"\x00\x00\x0b\x02" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03"
        + b"\x00\x01\x00\x02\x00\x03\x00\x04\x00\x05\x01\x00"
    )


def test_idx_accepts_non_native_input_order(tmp_path):
    arr = np.arange(6, dtype=">f4").reshape(2, 3)
    write_idx(tmp_path / "be.idx", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "be.idx"), arr)


def test_idx_gzip_detected_by_magic_not_extension(tmp_path):
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    write_idx(tmp_path / "a.idx.gz", arr)
    disguised = tmp_path / "plain-name"
    os.replace(tmp_path / "a.idx.gz", disguised)
    np.testing.assert_array_equal(read_idx(disguised), arr)
    # ...and an uncompressed file named .gz still reads.
    write_idx(tmp_path / "b.idx", arr)
    os.replace(tmp_path / "b.idx", tmp_path / "b.gz")
    np.testing.assert_array_equal(read_idx(tmp_path / "b.gz"), arr)


def _header(code, dims):
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, dtype=">u4").tobytes()


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
        (b"\x00\x07\x08\x01\x00\x00\x00\x01\x05", "bad IDX magic"),
        (_header(0x0A, [2]) + b"\x00\x00", "unknown IDX dtype code 0x0a"),
        (b"\x00\x00", "truncated IDX header"),
        (_header(0x08, [2, 3])[:7], "truncated IDX header"),
        (_header(0x08, [2, 3]) + b"\x00" * 5, "truncated IDX data"),
        (_header(0x0C, [2]) + b"\x00" * 7, "truncated IDX data"),
        (_header(0x08, [2, 3]) + b"\x00" * 7, "1 bytes of trailing data"),
    ],
)
def test_idx_bad_input(tmp_path, content, match, gz):
    path = tmp_path / ("bad.idx.gz" if gz else "bad.idx")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(ValueError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "broken.gz"
    path.write_bytes(gzip.compress(_header(0x08, [100]) + bytes(100))[:-10])
    with pytest.raises(ValueError, match="corrupt gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dtype", ["int64", "uint16", "float16", "bool", "complex64"])
def test_write_idx_unsupported_dtype(tmp_path, dtype):
    path = tmp_path / "x.idx"
    with pytest.raises(ValueError, match=f"dtype {dtype} cannot be stored"):
        write_idx(path, np.zeros(3, dtype=dtype))
    assert list(tmp_path.iterdir()) == []


def test_write_idx_is_atomic_replace(tmp_path):
    path = tmp_path / "x.idx"
    write_idx(path, np.zeros(4, dtype=np.uint8))
    write_idx(path, np.ones((2, 2), dtype=np.float64))
    np.testing.assert_array_equal(read_idx(path), np.ones((2, 2)))
    assert [p.name for p in tmp_path.iterdir()] == ["x.idx"]  # no temp files left behind


# --- MNIST ------------------------------------------------------------------

def _write_mnist(directory, prefix, n=5, gz=False, n_labels=None):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = rng.integers(0, 10, size=n if n_labels is None else n_labels, dtype=np.uint8)
    ext = ".gz" if gz else ""
    write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels)
    return images, labels


@pytest.mark.parametrize("kind, prefix", [("train", "train"), ("test", "t10k")])
@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist(tmp_path, kind, prefix, gz):
    images, labels = _write_mnist(tmp_path, prefix, gz=gz)
    x, y = load_mnist(tmp_path, kind=kind)
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (5,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    np.testing.assert_allclose(x[:, 0] * 255.0, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)


def test_load_mnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path)
    _write_mnist(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path, kind="test")
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_load_mnist_count_mismatch(tmp_path):
    _write_mnist(tmp_path, "train", n=5, n_labels=4)
    with pytest.raises(ValueError, match="5 images .* but 4 labels"):
        load_mnist(tmp_path)


def test_load_mnist_bad_kind(tmp_path):
    with pytest.raises(ValueError, match="kind must be"):
        load_mnist(tmp_path, kind="validation")


# --- batches ----------------------------------------------------------------

def _xy(n=10):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return x, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_covers_all_without_drop_last(shuffle):
    x, y = _xy(10)
    got = list(batches(x, y, 3, shuffle=shuffle, seed=0, drop_last=False))
    assert [len(yb) for _, yb in got] == [3, 3, 3, 1]
    seen = np.concatenate([yb for _, yb in got])
    np.testing.assert_array_equal(np.sort(seen), y)
    for xb, yb in got:
        np.testing.assert_array_equal(xb, x[yb])  # pairs stay aligned
    if not shuffle:
        np.testing.assert_array_equal(seen, y)


def test_batches_drop_last():
    x, y = _xy(10)
    got = list(batches(x, y, 3, shuffle=True, seed=0))
    assert [len(yb) for _, yb in got] == [3, 3, 3]
    assert len(set(np.concatenate([yb for _, yb in got]).tolist())) == 9
    assert list(batches(x, y, 5, shuffle=False, seed=0, drop_last=True))[-1][1].tolist() == [5, 6, 7, 8, 9]
    assert list(batches(x, y, 11, shuffle=False, seed=0)) == []


def test_batches_reproducible_by_seed():
    x, y = _xy(50)
    def order(seed):
        return np.concatenate([yb for _, yb in batches(x, y, 7, shuffle=True, seed=seed)])
    np.testing.assert_array_equal(order(4), order(4))
    assert not np.array_equal(order(4), order(5))
    assert not np.array_equal(order(4), y[: len(order(4))])


def test_batches_bad_arguments():
    x, y = _xy(4)
    with pytest.raises(ValueError, match="batch_size"):
        batches(x, y, 0, shuffle=False, seed=0)  # raised eagerly, before iteration
    with pytest.raises(ValueError, match="lengths differ"):
        batches(x, y[:3], 2, shuffle=False, seed=0)


def test_module_all():
    assert set(data.__all__) == {"load_digits", "upsample", "read_idx", "write_idx", "load_mnist",
                                 "batches", "load_pydoc_text", "char_vocab", "encode", "decode",
                                 "lm_windows"}


def test_import_does_not_pull_in_sklearn():
    import subprocess
    import sys

    code = "import sys, tvmfront.data; assert 'sklearn' not in sys.modules, 'sklearn imported eagerly'"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
