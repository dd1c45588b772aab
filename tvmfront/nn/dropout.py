"""nn.Dropout, and where it gets its random inputs: `rng_inputs`, set by graph building.

A compiled train step takes the seed (`key`) and the step (`counter`) as runtime inputs;
graph building puts them here for the duration of the trace, and every Dropout called in
the trace reads them and takes the next `stream` number, so two Dropout layers (or one
layer called twice) draw independent masks from the same key and counter:

    with rng_inputs(key=Tensor(key_var), counter=Tensor(step_var)):   # training trace
        out = model(x)
    with rng_inputs(training=False):                                    # eval trace
        out = model(x)

Run eagerly on numpy arrays with no rng_inputs active, a training-mode Dropout draws from
a process-wide default: key = the seed of the last `tvf.manual_seed` (0 before any), counter
= the number of eager Dropout calls since then. So `tvf.manual_seed(s)` replays them.
"""

import contextlib
import contextvars

import numpy as np

from .. import ops
from ..ops import random
from ..tensor import Tensor, resolve
from . import init
from .module import Module


class RngInputs:
    """The random inputs of the function being traced: key and counter (Tensors, or arrays),
    whether it runs in training mode, and the stream numbers handed out so far."""

    def __init__(self, key=None, counter=None, training=True):
        if training and (key is None or counter is None):
            raise TypeError("rng_inputs: a training trace needs both key= and counter=")
        self.key, self.counter, self.training = key, counter, bool(training)
        self.used = 0  # streams handed out: 0 after a trace means the model draws nothing

    def next_stream(self):
        """A stream number no other draw in this trace has taken (0, 1, 2, ... in call
        order: a trace of the same model hands out the same numbers)."""
        self.used += 1
        return self.used - 1


_active = contextvars.ContextVar("tvmfront_rng_inputs", default=None)


@contextlib.contextmanager
def rng_inputs(key=None, counter=None, training=True):
    """Within this block Dropout draws its masks from (key, counter) (training=True), or is
    the identity (training=False). Graph building sets it around a trace; key is the step's
    seed input, counter its step input (see tvmfront.ops.random for their dtypes)."""
    inputs = RngInputs(key, counter, training)
    token = _active.set(inputs)
    try:
        yield inputs
    finally:
        _active.reset(token)


def current_rng_inputs():
    """The active RngInputs, or None."""
    return _active.get()


# Eager draws: (the generator manual_seed last made, calls since). manual_seed replaces
# init's generator object, which is how a new seed (or the same seed again) restarts the count.
_eager = {"rng": None, "calls": 0}


def _eager_key_and_counter():
    if _eager["rng"] is not init._rng:
        _eager.update(rng=init._rng, calls=0)
    counter = _eager["calls"]
    _eager["calls"] += 1
    return random.key(init.seed()), np.array(counter, dtype="uint64")


class Dropout(Module):
    """torch.nn.Dropout(p): in training mode zeroes each element with probability p and
    scales the others by 1 / (1 - p); in eval mode (`self.training` False, or a trace under
    rng_inputs(training=False)) the identity. Masks come from ops.dropout: a pure function
    of the step's seed and counter, new every step, the same on replay."""

    def __init__(self, p=0.5, inplace=False):
        super().__init__()
        # PyTorch's inplace overwrites the input; tvmfront's ops never write their inputs, so
        # it changes nothing here (the output is the same)
        self.inplace = bool(inplace)
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
        self.p = float(p)

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        inputs = _active.get()
        if not getattr(self, "training", True) or (inputs is not None and not inputs.training):
            return x
        if self.p == 0.0:
            return x
        if inputs is not None:
            return ops.dropout(x, self.p, inputs.key, inputs.counter, stream=inputs.next_stream())
        if isinstance(resolve(x), Tensor):
            raise RuntimeError(
                "nn.Dropout in training mode was traced without random inputs: the graph "
                "being built does not wrap its trace in tvmfront.nn.dropout.rng_inputs(key=, "
                "counter=) (or rng_inputs(training=False) for an eval-mode trace); call "
                "model.eval() / set dropout.training = False to trace it as the identity")
        key, counter = _eager_key_and_counter()
        return ops.dropout(x, self.p, key, counter)
