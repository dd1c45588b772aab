"""PyTorch parity of small CNNs drawn at random (seeded): convolutions of any kernel, stride
and padding, batch norm, relu, max and average pooling, a linear head; each compiled as a
train step (fixed or symbolic batch, for this host or AVX2 code), its loss and every
gradient against PyTorch's in float64 (tests/_torch_random_cnns.py, in its own process).

The layers' own parity tests use fixed shapes; the default schedules pick their tiles,
paddings and border parts from the shapes, so a sample of other shapes runs here (the
sweeps of tests/test_conv_sweep.py, at the model level)."""

import json
import random

import numpy as np
import pytest

import tvmfront as tvf

from _cnn_layers import layer
from _torch import run_torch

nn = tvf.nn


def _size(n, kernel, stride, padding):
    return (n + 2 * padding - kernel) // stride + 1


def _model_spec(rng):
    """(batch, input shape [c, h, w], layer list: tests/_cnn_layers.py), or
    None where a drawn layer leaves no pixel."""
    batch, c = rng.choice([1, 2, 3, 4, 8]), rng.choice([1, 3, 4, 8])
    h = rng.randint(6, 20)
    w = rng.choice([h, rng.randint(6, 20)])
    shape, layers = (c, h, w), []
    for _ in range(rng.randint(1, 3)):
        kernel = rng.choice([(1, 1), (3, 3), (3, 3), (5, 5), (3, 5), (2, 2)])
        stride = rng.choice([(1, 1), (1, 1), (2, 2)])
        padding = rng.choice([(0, 0), (1, 1), (kernel[0] // 2, kernel[1] // 2)])
        c_out = rng.choice([4, 8, 16, 32])
        h, w = (_size(s, k, st, p) for s, k, st, p in zip((h, w), kernel, stride, padding))
        if min(h, w) < 1:
            return None
        layers.append(["conv", c, c_out, list(kernel), list(stride), list(padding),
                       rng.random() < 0.5])
        c = c_out
        if rng.random() < 0.6:
            layers.append(["bn", c])
        layers.append(["relu"])
        if rng.random() < 0.5:
            pool, kernel = rng.choice(["maxpool", "avgpool"]), rng.choice([2, 3])
            stride, padding = rng.choice([None, 1, 2]), rng.choice([0, 1])
            ph, pw = (_size(s, kernel, stride or kernel, padding) for s in (h, w))
            if min(ph, pw) >= 1:
                layers.append([pool, kernel, stride, padding])
                h, w = ph, pw
    return batch, shape, layers + [["flatten"], ["linear", c * h * w, 5]]


def _cases(seed, count):
    rng, out = random.Random(seed), []
    while len(out) < count:
        spec = _model_spec(rng)
        if spec is not None:
            out.append((*spec, rng.choice(["x86", "x86:avx2"]),
                        rng.choice(["fixed", "symbolic"])))
    return out


@pytest.mark.slow
def test_random_cnns_match_pytorch(request, tmp_path):
    cases, arrays, got = [], {}, []
    for i, (batch, shape, layers, target, size) in enumerate(_cases(0, 6)):
        tvf.manual_seed(i)
        model = nn.Sequential(*(layer(nn, spec) for spec in layers))
        b = batch if size == "fixed" else "batch"
        module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(lr=0.1),
                                      inputs=(b, *shape), labels=(b,), target=target,
                                      records=False)
        rng = np.random.default_rng(i)
        x, y = rng.standard_normal((batch, *shape)).astype("float32"), rng.integers(0, 5, batch)
        got.append((f"{target} {size} batch {batch} {shape} {json.dumps(layers)}",
                    *module.loss_and_grads(x, y)))
        cases.append(layers)
        arrays.update({f"{i}.s.{k}": v for k, v in module.state_dict().items()})
        arrays.update({f"{i}.x": x, f"{i}.y": y})
    want = run_torch(request, "PyTorch parity of random CNNs", "_torch_random_cnns.py",
                     tmp_path, cases=np.array(json.dumps(cases)), **arrays)
    for i, (what, loss, grads) in enumerate(got):
        assert abs(loss - want[f"{i}.loss"]) <= 1e-4 * max(1.0, abs(want[f"{i}.loss"])), what
        # float32 against float64 through batch norms over a few values: 5e-3 of each
        # gradient's magnitude, or of 1e-3 of the largest (a conv bias before a batch norm
        # has a zero gradient, up to rounding)
        scale = max(float(np.abs(want[f"{i}.g.{name}"]).max()) for name in grads)
        for name, grad in grads.items():
            ref = want[f"{i}.g.{name}"]
            tol = 5e-3 * (float(np.abs(ref).max()) + 1e-3 * scale)
            np.testing.assert_allclose(grad, ref, rtol=0, atol=tol, err_msg=f"{name}: {what}")
