"""Compiled CPU kernels flush denormal floats to zero (tvmfront.denormals), as XLA's do, and
leave the calling thread's floating-point mode as they found it.

Why: on x86 every operation on a denormal takes a microcode assist, and training makes them
(momentum decaying under a zero gradient). The MLP of bench/ at batch 1 with SGD momentum:
65 -> 160-180 us a step once 7195 of its parameters and momenta were denormal; flushed, 78
us throughout, with the same losses."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

nn = tvf.nn
TINY = np.float32(1e-30)
SCALE = np.float32(1e-9)  # TINY * SCALE = 1e-39: denormal (float32's smallest normal 1.18e-38)


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.s = nn.Parameter(np.full((n,), SCALE, "float32"))

    def forward(self, x):
        return ops.mul(x, self.s)


def _products(shape, monkeypatch, flush):
    monkeypatch.setenv("TVMFRONT_FLUSH_DENORMALS", "1" if flush else "0")
    module = tvf.compile_inference(Scale(shape[-1]), inputs=shape)
    out = module(np.full(shape, TINY, "float32"))
    # the caller's thread keeps IEEE denormals: numpy's product after the call is not flushed
    assert np.multiply(TINY, SCALE) > 0
    return out


@pytest.mark.parametrize("shape", [(4, 8), (512, 1024)], ids=["serial", "parallel"])
def test_denormal_products_are_flushed_and_the_caller_keeps_its_mode(shape, monkeypatch):
    # An unflushed parallel kernel first: TVM's thread pool starts on the first parallel
    # loop, and its threads inherit the mode of the thread that starts them (a flushing
    # kernel's, had it started them). Their tasks must set it themselves.
    _products((512, 1024), monkeypatch, flush=False)
    out = _products(shape, monkeypatch, flush=True)
    assert (out == 0).all(), out[:2, :4]


def test_flushing_switched_off_keeps_denormals_and_is_part_of_the_cache_key(monkeypatch):
    # the same model and shapes as a flushing build of the test above: a cache hit would
    # return its library, whose products are zero
    on = _products((4, 8), monkeypatch, flush=True)
    off = _products((4, 8), monkeypatch, flush=False)
    assert (on == 0).all()
    np.testing.assert_array_equal(off, np.full((4, 8), np.multiply(TINY, SCALE)))
    assert (off > 0).all()


def test_training_with_flushing_takes_the_same_steps(monkeypatch):
    """Flushing changes nothing above float32's smallest normal: three train steps of a small
    model give the losses and parameters of the unflushed build (here no value is denormal)."""
    def run(flush):
        monkeypatch.setenv("TVMFRONT_FLUSH_DENORMALS", flush)
        tvf.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        module = tvf.compile_training(model, nn.CrossEntropyLoss(),
                                      tvf.optim.SGD(lr=0.1, momentum=0.9),
                                      inputs=(32, 8), labels=(32,))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((32, 8)).astype("float32")
        y = rng.integers(0, 4, 32).astype("int64")
        losses = [module.step(x, y) for _ in range(3)]
        return losses, [p.copy() for p in module.state_dict().values()]

    (l1, p1), (l0, p0) = run("1"), run("0")
    assert l1 == l0
    for a, b in zip(p1, p0):
        np.testing.assert_array_equal(a, b)
