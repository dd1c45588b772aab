"""A user-written optimizer (the README's RMSprop) compiles into the step like the built-ins."""

import numpy as np

import tvmfront as tvf
from tvmfront import ops
from tvmfront.optim import GradientTransformation, Optimizer, chain, scale_by_learning_rate

nn = tvf.nn


def scale_by_rms(decay=0.9, eps=1e-8):
    def init(params):
        return {f"nu.{n}": (shape, dtype, 0.0) for n, (shape, dtype) in params.items()}

    def update(grads, state, params, hyper):
        new_state = {f"nu.{n}": state[f"nu.{n}"] * decay + (g * g) * (1 - decay)
                     for n, g in grads.items()}
        updates = {n: g / (ops.sqrt(new_state[f"nu.{n}"]) + eps) for n, g in grads.items()}
        return updates, new_state

    return GradientTransformation(init, update)


def test_rmsprop_written_by_a_user_matches_numpy():
    tvf.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
    rmsprop = Optimizer("RMSprop", chain(scale_by_rms(0.9), scale_by_learning_rate()), lr=1e-2)
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), rmsprop, inputs=(6, 5),
                                  labels=(6,))
    rng = np.random.default_rng(0)
    params = module.state_dict()
    nu = {n: np.zeros_like(p) for n, p in params.items()}
    for step, lr in enumerate([1e-2, 3e-2, 5e-3], 1):
        x = rng.standard_normal((6, 5)).astype("float32")
        y = rng.integers(0, 3, 6)
        _, grads = module.loss_and_grads(x, y)
        module.step(x, y, lr=lr)
        for n, g in grads.items():
            nu[n] = 0.9 * nu[n] + 0.1 * g * g
            params[n] = params[n] - lr * g / (np.sqrt(nu[n]) + 1e-8)
        for n, p in module.state_dict().items():
            np.testing.assert_allclose(p, params[n], rtol=1e-5, atol=1e-6, err_msg=f"{n} @ {step}")
    state = module.optimizer_state()
    assert sorted(state) == sorted(f"0/nu.{n}" for n in params)
    for n in params:
        np.testing.assert_allclose(state[f"0/nu.{n}"], nu[n], rtol=1e-5, atol=1e-7)
