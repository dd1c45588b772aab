"""A compiled train step's parameter gradients against central differences of its own loss."""

import numpy as np


def check_directional_grads(module, x, y, names, rng, eps=1e-2, rtol=5e-3, atol=1e-5,
                            masks=None):
    """For each parameter name: <grad, d> against (loss(p + eps d) - loss(p - eps d)) / 2eps
    along a random direction d (times masks[name] if given: to leave out elements whose
    gradient is deliberately not the derivative). Leaves the parameters as they were."""
    _, grads = module.loss_and_grads(x, y)
    state = module.state_dict()
    try:
        for name in names:
            d = rng.standard_normal(state[name].shape).astype(state[name].dtype)
            d = d * (masks or {}).get(name, 1)

            def loss_at(w, name=name):
                module.load_state_dict(dict(state, **{name: w}))
                return float(module.loss(x, y))

            numeric = (loss_at(state[name] + eps * d) - loss_at(state[name] - eps * d)) / (2 * eps)
            analytic = float((grads[name] * d).sum())
            assert np.isclose(analytic, numeric, rtol=rtol, atol=atol), (name, analytic, numeric)
    finally:
        module.load_state_dict(state)
    return grads


def finite_difference_grads(tm, x, y, eps=1e-6):
    """{parameter name: its gradient by central differences of tm.loss, element by element}
    (float64 models). Leaves the parameters as they were."""
    base = tm.state_dict()
    grads = {}
    for name in tm.param_names:  # not the buffers (running statistics)
        p = base[name]
        grad = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            losses = []
            for sign in (1.0, -1.0):
                moved = {k: v.copy() for k, v in base.items()}
                moved[name][idx] += sign * eps
                tm.load_state_dict(moved)
                losses.append(tm.loss(x, y))
            grad[idx] = (losses[0] - losses[1]) / (2 * eps)
        grads[name] = grad
    tm.load_state_dict(base)
    return grads
