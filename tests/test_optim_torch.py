"""PyTorch parity of the optimizers: AdamW (weight decay, a no-decay group), RMSprop (centered,
momentum), Adagrad (lr_decay), Adam with beta1 = 0 and global-norm clipping
(torch.nn.utils.clip_grad_norm_, max norm changed per step at run time) for 5 steps on a
small MLP from the same weights and batches: losses and parameters within 1e-4 relative in
float32."""

import json

import numpy as np
import pytest

import tvmfront as tvf
from _torch import run_torch

nn = tvf.nn
STEPS = 5
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias"]
NO_DECAY = ["0.bias", "2.bias"]
NORMS = [0.5, 0.2, 100.0, 0.3, 0.05]  # the clipping case's max norm, per step

# name -> (tvmfront optimizer, torch class, torch kwargs, no-decay names, clipped)
CASES = {
    "adamw": (tvf.optim.AdamW(0.05, betas=(0.9, 0.99), weight_decay=0.1,
                              groups=[{"params": "*.bias", "weight_decay": 0.0}]),
              "AdamW", {"lr": 0.05, "betas": [0.9, 0.99], "weight_decay": 0.1}, NO_DECAY, False),
    "rmsprop": (tvf.optim.RMSprop(0.01, momentum=0.9, centered=True, weight_decay=0.01),
                "RMSprop", {"lr": 0.01, "momentum": 0.9, "centered": True,
                            "weight_decay": 0.01}, [], False),
    "adagrad": (tvf.optim.Adagrad(0.1, lr_decay=0.01, weight_decay=0.01,
                                  initial_accumulator_value=0.1),
                "Adagrad", {"lr": 0.1, "lr_decay": 0.01, "weight_decay": 0.01,
                            "initial_accumulator_value": 0.1}, [], False),
    "sgd-clipped": (tvf.optim.SGD(0.5, momentum=0.9, max_norm=1.0), "SGD",
                    {"lr": 0.5, "momentum": 0.9}, [], True),
    # a beta of 0 (GANs' Adam) failed to compile: no bias correction to make
    "adam-beta1-0": (tvf.optim.Adam(0.02, betas=(0.0, 0.99), weight_decay=0.01), "Adam",
                     {"lr": 0.02, "betas": [0.0, 0.99], "weight_decay": 0.01}, [], False),
}


def _data():
    rng = np.random.default_rng(7)
    return (rng.standard_normal((STEPS, 16, 5)).astype("float32") * 2,
            rng.integers(0, 3, (STEPS, 16)).astype("int64"))


def _model():
    tvf.manual_seed(11)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.fixture(scope="module")
def torch_runs(request, tmp_path_factory):
    x, y = _data()
    cases = [{"name": n, "optimizer": c[1], "kwargs": c[2], "no_decay": c[3],
              "max_norm": NORMS if c[4] else None} for n, c in CASES.items()]
    return run_torch(request, "PyTorch parity of AdamW, RMSprop, Adagrad and clipping",
                     "_torch_optim.py", tmp_path_factory.mktemp("optim_torch"), x=x, y=y,
                     cases=np.array(json.dumps(cases)),
                     **{"p." + n: v for n, v in _model().state_dict().items()})


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_optimizer_matches_pytorch(torch_runs, case):
    optimizer, _, _, _, clipped = CASES[case]
    x, y = _data()
    module = tvf.compile_training(_model(), nn.CrossEntropyLoss(), optimizer, inputs=x[0],
                                  labels=y[0])
    losses, norms = [], []
    for t in range(STEPS):
        if clipped:
            _, grads = module.loss_and_grads(x[t], y[t])
            norms.append(np.sqrt(sum(float((g.astype("float64") ** 2).sum())
                                     for g in grads.values())))
            losses.append(module.step(x[t], y[t], max_norm=NORMS[t]))
        else:
            losses.append(module.step(x[t], y[t]))
    np.testing.assert_allclose(losses, torch_runs[f"{case}.losses"], rtol=1e-4)
    if clipped:  # the norms are well above most max norms: clipping really acted
        np.testing.assert_allclose(norms, torch_runs[f"{case}.norms"], rtol=1e-4)
        assert sum(n > m for n, m in zip(norms, NORMS)) >= 3
    for n in NAMES:
        np.testing.assert_allclose(module.state_dict()[n], torch_runs[f"{case}.p.{n}"],
                                   rtol=1e-4, atol=1e-6, err_msg=f"{case}: {n}")
