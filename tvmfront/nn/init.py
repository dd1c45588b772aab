"""Seeded parameter initialisation, with PyTorch's default schemes."""

import math

import numpy as np

from .._checks import is_whole

_rng = np.random.default_rng(0)


def manual_seed(seed):
    """Reseed the generator every layer draws its initial values from. An int of any sign,
    as torch.manual_seed (a negative one is taken modulo 2**64, numpy refusing it)."""
    global _rng
    if is_whole(seed):
        seed = int(seed) % 2 ** 64
    _rng = np.random.default_rng(seed)


def seed():
    """The seed of the last manual_seed (0 before any): also the default key of random draws
    (nn.Dropout's masks). Read back from the generator manual_seed made, which keeps it."""
    entropy = _rng.bit_generator.seed_seq.entropy
    if not isinstance(entropy, int):  # manual_seed was given a sequence or a SeedSequence
        entropy = int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0])
    return entropy % 2 ** 64


PARAMETER_DTYPES = ("float16", "float32", "float64")


def float_dtype(dtype, layer):
    """`dtype` as a numpy dtype where a layer's parameters may have it (a float; numpy has no
    bfloat16), else TypeError naming the layer: int32 weights were drawn from a uniform
    (-0.5, 0.5) and truncated to zeros, a layer that learns nothing (PyTorch refuses them)."""
    try:
        found = np.dtype(dtype)
    except TypeError:
        found = None
    if found is None or found.name not in PARAMETER_DTYPES:
        raise TypeError(f"{layer}: dtype must be one of {', '.join(PARAMETER_DTYPES)} (its "
                        f"parameters are trained floats), got {dtype!r}")
    return found.name


def torch_only(layer, **arguments):
    """ValueError naming the first of a layer's PyTorch arguments given a value tvmfront does
    not implement: {name: (value, the values implemented)}. The layers keep PyTorch's
    argument order, those arguments included, so that a positional call written for PyTorch
    means the same or is refused: Conv2d's sixth argument had been bias (PyTorch's is
    dilation: Conv2d(4, 3, 3, 1, 2, 2) built an undilated conv with a bias), and
    MultiheadAttention's fifth batch_first (PyTorch's add_bias_kv)."""
    for name, (value, implemented) in arguments.items():
        given = tuple(value) if isinstance(value, list) else value
        if not any(given is v if isinstance(v, (bool, type(None))) or isinstance(given, bool)
                   else given == v for v in implemented):
            raise ValueError(f"{layer}: {name}={value!r} is not supported (only "
                             f"{' or '.join(repr(v) for v in implemented)})")


def _fans(shape):
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def uniform(shape, bound, dtype="float32"):
    return _rng.uniform(-bound, bound, size=shape).astype(dtype)


def normal(shape, std=1.0, dtype="float32"):
    """N(0, std^2): torch.nn.Embedding's default (std 1)."""
    return (_rng.standard_normal(size=shape) * std).astype(dtype)


def kaiming_uniform(shape, a=math.sqrt(5), dtype="float32"):
    """PyTorch's default for Linear/Conv weights: bound = gain * sqrt(3 / fan_in)."""
    fan_in, _ = _fans(shape)
    gain = math.sqrt(2.0 / (1 + a * a))
    return uniform(shape, gain * math.sqrt(3.0 / fan_in), dtype)


def xavier_uniform(shape, gain=1.0, dtype="float32"):
    fan_in, fan_out = _fans(shape)
    return uniform(shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def bias_uniform(shape, fan_in, dtype="float32"):
    """PyTorch's default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return uniform(shape, 1.0 / math.sqrt(fan_in) if fan_in else 0.0, dtype)
