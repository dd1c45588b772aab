"""PyTorch parity: a residual block with BatchNorm2d trained 3 SGD steps then evaluated
(losses, gradients, parameters, running statistics, eval outputs), and CrossEntropyLoss over
[B, T, V] with ignore_index and label_smoothing (loss and gradient). PyTorch runs in its own
environment and process (tests/_torch.py)."""

import numpy as np
import pytest

import tvmfront as tvf
from tvmfront import ops

from _torch import run_torch

nn = tvf.nn
RTOL = 1e-4


def _torch(request, case, tmp_path, **arrays):
    folder = tmp_path / case
    folder.mkdir()
    return run_torch(request, f"PyTorch parity of {case}", "_torch_batchnorm_ce.py", folder,
                     case, **arrays)


def _close(got, want, what):
    scale = max(float(np.abs(want).max()), 1e-3)  # relative to the tensor's magnitude
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


class Block(nn.Module):
    """tests/_torch_batchnorm_ce.py's Net (also used by test_parity_adamw.py)."""

    def __init__(self, c, dtype="float32"):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(c, dtype=dtype)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False, dtype=dtype)
        self.bn2 = nn.BatchNorm2d(c, momentum=None, dtype=dtype)
        self.fc = nn.Linear(c * 16, 3, dtype=dtype)

    def forward(self, x):
        h = ops.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.fc(ops.flatten(ops.relu(h + x)))


@pytest.mark.slow
def test_residual_block_with_batchnorm_matches_pytorch(request, tmp_path):
    c, b = 2, 6
    tvf.manual_seed(0)
    model = Block(c)
    rng = np.random.default_rng(0)
    params = {n: p.data for n, p in model.named_parameters()}
    # gamma/beta away from 1/0 so a mixed-up scale or shift shows
    params["bn1.weight"][:] = rng.uniform(0.5, 1.5, c)
    params["bn2.bias"][:] = rng.normal(0, 0.3, c)
    batches = [(rng.normal(0.5, 2.0, (b, c, 4, 4)).astype("float32"), rng.integers(0, 3, b))
               for _ in range(3)]
    xe = rng.normal(0.5, 2.0, (5, c, 4, 4)).astype("float32")
    want = _torch(request, "resblock", tmp_path, c=np.array(c), xe=xe,
                  **{f"p.{n}": v for n, v in params.items()},
                  **{f"x{i}": x for i, (x, _) in enumerate(batches)},
                  **{f"y{i}": y for i, (_, y) in enumerate(batches)})
    m = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.SGD(0.1, momentum=0.9),
                             inputs=(b, c, 4, 4), labels=(b,))
    loss0, grads = m.loss_and_grads(*batches[0])
    for name, g in grads.items():
        _close(g, want["g." + name], f"gradient of {name}")
    losses = [m.step(x, y) for x, y in batches]
    _close(np.array(losses), want["losses"], "losses")
    assert loss0 == losses[0]
    state = m.state_dict()
    assert sorted(state) == sorted(k[2:] for k in want if k.startswith("s."))
    for name, value in state.items():
        assert value.dtype == want["s." + name].dtype, name
        _close(value, want["s." + name], name)
    assert int(state["bn1.num_batches_tracked"]) == 3
    _close(m.predict(xe), want["eval"], "eval outputs")


class SeqLogits(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        b, t, d = x.shape
        return ops.reshape(ops.matmul(ops.reshape(x, shape=(b * t, d)), self.w), shape=(b, t, -1))


@pytest.mark.slow
def test_sequence_cross_entropy_matches_pytorch(request, tmp_path):
    rng = np.random.default_rng(1)
    b, t, d, v = 3, 5, 4, 7
    x = rng.normal(size=(b, t, d)).astype("float32")
    w = rng.normal(size=(d, v)).astype("float32")
    y = rng.integers(0, v, (b, t))
    y[rng.random((b, t)) < 0.3] = 0
    y[0, 0] = y[2, 4] = 0  # make sure some are ignored
    want = _torch(request, "seq_ce", tmp_path, x=x, w=w, y=y, ignore_index=np.array(0),
                  label_smoothing=np.array(0.15))
    m = tvf.compile_training(SeqLogits(w), nn.CrossEntropyLoss(ignore_index=0,
                                                               label_smoothing=0.15),
                             tvf.optim.SGD(0.1), inputs=x, labels=y)
    loss, grads = m.loss_and_grads(x, y)
    _close(np.array(loss), want["loss"], "loss")
    _close(grads["w"], want["g.w"], "gradient of w")
