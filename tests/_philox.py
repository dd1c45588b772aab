"""Philox-4x32-10 in numpy, written from the Random123 paper (Salmon et al., SC'11), and the
element layout tvmfront.ops.random documents: an independent reference for its TE kernels."""

import numpy as np

M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
LO = np.uint64(0xFFFFFFFF)
SHIFT = np.uint64(32)


def philox4x32(ctr, key, rounds=10):
    """ctr: 4 arrays (or ints) of uint32 words, key: 2 -> 4 uint32 arrays (broadcast)."""
    c = [np.asarray(v, dtype=np.uint64) for v in ctr]
    k = [np.asarray(v, dtype=np.uint64) for v in key]
    for r in range(rounds):
        if r:  # bump the key by the Weyl constants, mod 2**32
            k = [(k[0] + W0) & LO, (k[1] + W1) & LO]
        p0, p1 = M0 * c[0], M1 * c[2]  # 32 x 32 -> 64 bits, exact in uint64
        c = [(p1 >> SHIFT) ^ c[1] ^ k[0], p1 & LO, (p0 >> SHIFT) ^ c[3] ^ k[1], p0 & LO]
    return [np.asarray(v, dtype=np.uint32) for v in c]


def words(value):
    """(lo, hi) of a key or counter given as an int, a 0-d array or a [lo, hi] array."""
    a = np.asarray(value)
    if a.shape == (2,):
        return int(a[0]) & 0xFFFFFFFF, int(a[1]) & 0xFFFFFFFF
    v = int(a) % 2 ** 64
    return v & 0xFFFFFFFF, v >> 32


def bits(key, counter, shape, stream=0):
    """Element j (row-major) = word j % 4 of philox(counter=(j // 4, stream, counter lo, hi))."""
    n = int(np.prod(shape, dtype=np.int64))
    blocks = np.arange((n + 3) // 4, dtype=np.uint64)
    c_lo, c_hi = words(counter)
    out = np.stack(philox4x32((blocks, stream, c_lo, c_hi), words(key)), axis=1)
    return out.reshape(-1)[:n].reshape(shape)


def dropout(x, key, counter, p=0.5, stream=0):
    """Inverted dropout with the mask drawn as tvmfront documents (drop where bits < p 2**32)."""
    x = np.asarray(x)
    t = round(p * 2 ** 32)
    keep = bits(key, counter, x.shape, stream).astype(np.uint64) >= t
    scale = x.dtype.type(1.0 / (1.0 - p)) if p < 1 else x.dtype.type(0)
    return x * np.where(keep, scale, x.dtype.type(0))
