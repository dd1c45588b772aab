"""Counter-based random numbers written in TE: Philox-4x32-10 (Salmon et al., "Parallel random
numbers: as easy as 1, 2, 3", SC'11; the generator of PyTorch's CUDA backend and of JAX's
`jax.random.PRNGKey(..., impl="rbg")` family's peers).

Why counter-based: the numbers are a pure function of (key, counter, element index), so the
key (the seed) and the counter (the training step) are ordinary runtime *inputs* of a compiled
kernel. One kernel draws new numbers every step, the same numbers for the same (key, counter)
in any process, and a gradient kernel regenerates the forward's dropout mask instead of
storing it.

Layout (fixed: it is what makes masks replayable across versions). Element j of the row-major
output is word j % 4 of

    philox4x32_10(counter=(j // 4, stream, counter_lo, counter_hi), key=(key_lo, key_hi))

where `stream` is a static integer telling apart several draws that share a key and counter
(e.g. the dropout layers of one model), and counter_lo/hi are the low and high 32 bits of the
64-bit counter. The Philox rounds need the high half of 32x32-bit products: they are computed
in uint64, which LLVM lowers to one widening multiply.

key: a 0-d integer array (a 64-bit seed, split into low and high words) or a uint32/int32
array of shape (2,) ([lo, hi]). counter: a 0-d integer array, a 0-d float array holding a
non-negative integer (a compiled step's float `step`; float32 is exact up to 2**24), or a
uint32/int32 array of shape (2,) ([lo, hi]). Python ints are accepted for both.
"""

import numpy as np

from .._checks import is_whole
from .._tvm import te, tirx
from ..op import Op
from ._dims import dims, size

# Philox-4x32 constants (Random123): round multipliers and the Weyl key increments.
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_ROUNDS = 10
_MASK32 = 0xFFFFFFFF


def _u32(value):
    return tirx.const(value & _MASK32, "uint32")


def _mulhilo(multiplier, x):
    """(high, low) 32-bit halves of multiplier * x, x uint32."""
    product = tirx.const(multiplier, "uint64") * x.astype("uint64")
    return _halves(product)


def _halves(wide):
    """(high, low) uint32 words of a uint64 expression. The low word is masked before the
    cast: TVM's bound analysis folds a bare narrowing cast of a wide bound into a uint32
    literal and fails ("exceeds maximum of uint32")."""
    return ((wide >> tirx.const(32, "uint64")).astype("uint32"),
            (wide & tirx.const(_MASK32, "uint64")).astype("uint32"))


def philox4x32(counter, key, rounds=_ROUNDS):
    """Philox-4x32 on TE expressions: counter (4 uint32), key (2 uint32) -> 4 uint32.

    The round keys are key + r * W (mod 2**32), each added to the key in one step: a chain
    of additions would let the simplifier fold constants past 2**32."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        rk0 = k0 + _u32(r * _W0) if r else k0
        rk1 = k1 + _u32(r * _W1) if r else k1
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ rk0, lo1, hi0 ^ c3 ^ rk1, lo0
    return c0, c1, c2, c3


# ---- key and counter inputs ------------------------------------------------------------------
def _words(t, what):
    """(lo, hi) uint32 expressions of a key or counter tensor (see the module docstring)."""
    shape = dims(t.shape)
    dtype = str(t.dtype)
    if shape == (2,) and dtype in ("uint32", "int32"):
        return t[0].astype("uint32"), t[1].astype("uint32")
    if shape == ():
        if "int" in dtype or (what == "counter" and "float" in dtype):
            hi, lo = _halves(t().astype("uint64"))  # a float counter holds an integer >= 0
            return lo, hi
    takes = "a 0-d integer or float array" if what == "counter" else "a 0-d integer array"
    raise TypeError(f"random: {what} must be {takes}, or a uint32/int32 array of shape (2,) "
                    f"([lo, hi]); got shape {list(shape)} dtype {dtype}")


def _as_input(value, what):
    """Python ints become 0-d uint64 arrays (a seed may exceed int64); the rest is as given."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"random: {what} must be an integer or an array, got a bool")
    if isinstance(value, (int, np.integer)):
        value = int(value)
        if not 0 <= value < 2 ** 64:
            raise ValueError(f"random: {what} {value} is outside 0 .. 2**64 - 1")
        return np.array(value, dtype="uint64")
    if isinstance(value, float):
        raise TypeError(f"random: {what} must be an integer (or an array), got the float "
                        f"{value}")
    return value


def key(seed):
    """The uint32 [lo, hi] key array of a 64-bit integer seed (what a compiled step takes)."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"random.key: seed {seed} is outside 0 .. 2**64 - 1")
    return np.array([seed & _MASK32, seed >> 32], dtype="uint32")


def check_stream(stream):
    if not is_whole(stream, 0, _MASK32):
        raise ValueError(f"random: stream must be an integer in 0 .. 2**32 - 1, got {stream!r}")
    return int(stream)


def _shape(shape):
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise TypeError(f"random: shape must be a tuple of ints, got {shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"random: shape {shape} has a negative extent")
    return shape


def _flat_index(index, shape):
    """Row-major flat index (int32) of the loop variables `index` over `shape` (a symbolic
    extent taken as int32 too: the same index, so the same mask, as a fixed-size kernel)."""
    flat = tirx.const(0, "int32")
    for v, d in zip(index, shape):
        flat = flat * (d if isinstance(d, int) else d.astype("int32")) + v.astype("int32")
    return flat


def bits_of(key_t, counter_t, shape, stream, name="random_bits"):
    """A function of an output position (loop variables over `shape`) giving its uint32 word.
    The four words of a Philox block come from one TE stage with four outputs, so each block
    is computed once, not once per word; the caller's stage picks the word. A symbolic
    `shape` (a batch) cannot be checked against the int32 index when the kernel is built:
    a call with 2**31 elements or more is not supported (its indices would wrap)."""
    n = size(shape)
    if isinstance(n, int) and n >= 2 ** 31:
        raise ValueError(f"random: {n} elements do not fit the int32 element index")
    k = _words(key_t, "key")
    c_lo, c_hi = _words(counter_t, "counter")
    s = _u32(stream)
    blocks = te.compute(((n + 3) // 4,),
                        lambda b: list(philox4x32((b.astype("uint32"), s, c_lo, c_hi), k)),
                        name=f"{name}_philox")

    def word(*i):
        j = _flat_index(i, shape)
        b, lane = j // 4, j % 4
        return tirx.Select(lane == 0, blocks[0][b], tirx.Select(
            lane == 1, blocks[1][b], tirx.Select(lane == 2, blocks[2][b], blocks[3][b])))

    return word


class _Signature(Op):
    """An op whose Python call takes its own signature: `arrange(*args, **kwargs)` returns the
    tensor inputs and attributes (Python ints become arrays, positional shapes and
    probabilities become attributes). `eager`, `vjp` and tracing see the plain op."""

    def __init__(self, fn, arrange, name):
        super().__init__(fn, name=name)
        self._arrange = arrange

    def __call__(self, *args, **kwargs):
        arranged = self._arrange(*args, **kwargs)
        if not isinstance(arranged, tuple):
            return arranged  # decided without a kernel (dropout with p = 0)
        inputs, attrs = arranged
        return super().__call__(*inputs, **attrs)


def signature(arrange, name):
    """Decorator: `@signature(arrange, "name")` over a TE forward (see _Signature)."""
    return lambda fn: _Signature(fn, arrange, name)


def runtime_inputs(key, counter):
    """key and counter as the op takes them: Python ints become 0-d uint64 arrays; a float
    counter given as an array must hold a non-negative integer."""
    counter = _as_input(counter, "counter")
    if isinstance(counter, np.ndarray) and counter.dtype.kind == "f":
        value = float(counter.max()) if counter.size else 0.0
        if counter.shape != () or not (value >= 0 and value == int(value)):
            raise ValueError(f"random: a float counter must be one non-negative integer "
                             f"value, got {counter!r}")
    return _as_input(key, "key"), counter


@signature(lambda key, counter, shape, stream=0: (
    runtime_inputs(key, counter), {"shape": _shape(shape), "stream": check_stream(stream)}),
    "random_bits")
def random_bits(key, counter, shape=(), stream=0):
    """uint32 array of `shape`, uniformly distributed bits, a pure function of (key, counter,
    stream): see the module docstring for the layout. key and counter are runtime inputs
    (numpy arrays or Python ints eagerly, Tensors inside a traced model); called as
    random_bits(key, counter, shape, stream=0).

    >>> bits = random_bits(7, 0, (2, 3))           # the same six words in every process
    """
    shape = _shape(shape)
    return te.compute(shape, bits_of(key, counter, shape, check_stream(stream)),
                      name="random_bits")


@signature(lambda key, counter, shape, dtype="float32", stream=0: (
    runtime_inputs(key, counter),
    {"shape": _shape(shape), "dtype": str(np.dtype(dtype)), "stream": check_stream(stream)}),
    "uniform")
def uniform(key, counter, shape=(), dtype="float32", stream=0):
    """Floats in [0, 1) of `shape` from random_bits' words (float32: the top 24 bits, each
    value k * 2**-24; float64: all 32 bits, k * 2**-32); uniform(key, counter, shape,
    dtype="float32", stream=0)."""
    shape = _shape(shape)
    word = bits_of(key, counter, shape, check_stream(stream), name="uniform")
    if dtype == "float32":
        return te.compute(shape, lambda *i: (word(*i) >> _u32(8)).astype("float32")
                          * tirx.const(2.0 ** -24, "float32"), name="uniform")
    if dtype == "float64":
        return te.compute(shape, lambda *i: word(*i).astype("float64")
                          * tirx.const(2.0 ** -32, "float64"), name="uniform")
    raise TypeError(f"uniform: dtype must be float32 or float64, got {dtype}")
