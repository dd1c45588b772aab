"""Optimizers as pure (init, update) rules that compose, in the style of optax.

A GradientTransformation turns gradients into updates:
- ``init(params)``: ``{name: (shape, dtype)}`` -> ``{state name: (shape, dtype, fill value)}``
- ``update(grads, state, params, hyper)`` -> ``(updates, new_state)``, all dicts of Tensors,
  where ``hyper`` holds the runtime scalars ``lr`` and ``step`` (0-d Tensors; step counts
  from 1). They are written with tvmfront ops, so the same code traces into the compiled
  train step (and runs eagerly on numpy arrays).
The step then applies ``params + updates``.
"""

from typing import Callable, NamedTuple

from .. import ops


class GradientTransformation(NamedTuple):
    init: Callable
    update: Callable


def chain(*transforms):
    """Apply transforms in order; each one's state is kept under its index ('0/', '1/', ...)."""

    def init(params):
        state = {}
        for i, t in enumerate(transforms):
            state.update({f"{i}/{k}": v for k, v in t.init(params).items()})
        return state

    def update(grads, state, params, hyper):
        new_state = {}
        for i, t in enumerate(transforms):
            prefix = f"{i}/"
            own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            grads, own = t.update(grads, own, params, hyper)
            new_state.update({prefix + k: v for k, v in own.items()})
        return grads, new_state

    return GradientTransformation(init, update)


def _no_state(params):
    return {}


def add_decayed_weights(weight_decay):
    """g + weight_decay * p  (L2 regularisation, as torch's SGD/Adam weight_decay)."""

    def update(grads, state, params, hyper):
        return {n: g + params[n] * weight_decay for n, g in grads.items()}, state

    return GradientTransformation(_no_state, update)


def trace(momentum, nesterov=False, dampening=0.0):
    """Momentum buffer b = momentum * b + (1 - dampening) * g, as torch.optim.SGD."""

    def init(params):
        return {f"momentum.{n}": (shape, dtype, 0.0) for n, (shape, dtype) in params.items()}

    def update(grads, state, params, hyper):
        # torch starts the buffer at g itself: no dampening on step 1 (the buffer is still 0).
        undamped = ops.rsub_scalar(ops.clip(hyper["step"] - 1.0, lo=0.0, hi=1.0) * dampening,
                                   value=1.0)  # 1 on step 1, then 1 - dampening
        out, new_state = {}, {}
        for n, g in grads.items():
            buf = state[f"momentum.{n}"] * momentum + g * undamped
            new_state[f"momentum.{n}"] = buf
            out[n] = g + buf * momentum if nesterov else buf
        return out, new_state

    return GradientTransformation(init, update)


def scale_by_adam(b1=0.9, b2=0.999, eps=1e-8):
    """Adam's bias-corrected first / second moment ratio m_hat / (sqrt(v_hat) + eps)."""

    def init(params):
        state = {}
        for n, (shape, dtype) in params.items():
            state[f"mu.{n}"] = (shape, dtype, 0.0)
            state[f"nu.{n}"] = (shape, dtype, 0.0)
        return state

    def update(grads, state, params, hyper):
        step = hyper["step"]
        # 1 - b ** t, computed at run time from the step input
        correct1 = ops.rsub_scalar(ops.rpow_scalar(step, base=b1), value=1.0)
        correct2 = ops.rsub_scalar(ops.rpow_scalar(step, base=b2), value=1.0)
        out, new_state = {}, {}
        for n, g in grads.items():
            mu = state[f"mu.{n}"] * b1 + g * (1.0 - b1)
            nu = state[f"nu.{n}"] * b2 + (g * g) * (1.0 - b2)
            new_state[f"mu.{n}"], new_state[f"nu.{n}"] = mu, nu
            out[n] = (mu / correct1) / (ops.sqrt(nu / correct2) + eps)
        return out, new_state

    return GradientTransformation(init, update)


def scale_by_learning_rate():
    """-lr * u, with lr the runtime learning-rate input of the step."""

    def update(grads, state, params, hyper):
        return {n: -(u * hyper["lr"]) for n, u in grads.items()}, state

    return GradientTransformation(_no_state, update)
