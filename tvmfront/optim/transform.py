"""Optimizers as pure (init, update) rules that compose, in the style of optax.

A GradientTransformation turns gradients into updates:
- ``init(params)``: ``{name: (shape, dtype)}`` -> ``{state name: (shape, dtype, fill value)}``
- ``update(grads, state, params, hyper)`` -> ``(updates, new_state)``, all dicts of Tensors,
  where ``hyper`` holds the runtime scalars (0-d Tensors): always ``lr`` and ``step`` (step
  counts from 1), plus those the rule declares.
- ``hyper``: the extra runtime scalars the rule reads, ``((name, default), ...)``; e.g.
  clip_by_global_norm declares ``("max_norm", 1.0)``. They become inputs of the compiled
  step (never baked-in constants), so ``module.step(x, y, max_norm=0.5)`` changes them.
They are written with tvmfront ops, so the same code traces into the compiled train step
(and runs eagerly on numpy arrays). The step then applies ``params + updates``.

Per-parameter settings (weight decay, lr scale: parameter groups) are functions of the
parameter name, resolved when the rule is traced, so a parameter with no decay costs no kernel.
"""

from typing import Callable, NamedTuple

from .. import ops


class GradientTransformation(NamedTuple):
    init: Callable
    update: Callable
    hyper: tuple = ()  # ((runtime scalar name, default or None), ...) beyond lr and step


def chain(*transforms):
    """Apply transforms in order; each one's state is kept under its index ('0/', '1/', ...).
    The chain reads every runtime scalar its rules declare (a name declared twice is one
    input, with the first default given)."""

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

    declared = {}
    for t in transforms:
        for name, default in getattr(t, "hyper", ()):
            if declared.get(name) is None:
                declared[name] = default
    return GradientTransformation(init, update, tuple(declared.items()))


def _no_state(params):
    return {}


def per_parameter(value):
    """`value` as a function of the parameter name (a number is the same for every one)."""
    return value if callable(value) else (lambda name: value)


def add_decayed_weights(weight_decay):
    """g + weight_decay * p: L2 regularisation as torch's SGD/Adam/RMSprop/Adagrad
    weight_decay, or, placed after the adaptive scaling (AdamW), decoupled weight decay.
    weight_decay: a number, or a function of the parameter name (parameter groups)."""
    decay = per_parameter(weight_decay)

    def update(grads, state, params, hyper):
        return {n: g + params[n] * decay(n) if decay(n) else g for n, g in grads.items()}, state

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
        # 1 - b ** t, computed at run time from the step input (in float64: see one_minus_pow)
        # Their reciprocals are scalars formed once per step: per element, one sqrt and one
        # division remain (the update kernel was bound by four divider ops per element).
        # torch.optim.Adam's form: sqrt(nu) / sqrt(1 - b2^t) + eps.
        # A beta of 0 (GANs' Adam(betas=(0, 0.99))) has no bias to correct: 1 - 0 ** t = 1.
        inv_correct1 = ops.rdiv_scalar(ops.one_minus_pow(step, base=b1), value=1.0) \
            if b1 else 1.0
        inv_sqrt_correct2 = ops.rdiv_scalar(ops.sqrt(ops.one_minus_pow(step, base=b2)),
                                            value=1.0) if b2 else 1.0
        out, new_state = {}, {}
        for n, g in grads.items():
            mu = state[f"mu.{n}"] * b1 + g * (1.0 - b1)
            # one rounding of (1 - b2) g^2 (addcmul, PyTorch's): in float16, g * g alone
            # overflowed at |g| > 256 and froze the parameter
            nu = ops.addcmul(state[f"nu.{n}"] * b2, g, g, value=1.0 - b2)
            new_state[f"mu.{n}"], new_state[f"nu.{n}"] = mu, nu
            out[n] = (mu * inv_correct1) / (ops.sqrt(nu) * inv_sqrt_correct2 + eps)
        return out, new_state

    return GradientTransformation(init, update)


def scale_by_rms(alpha=0.99, eps=1e-8, centered=False):
    """RMSprop's g / (sqrt(v) + eps), v = alpha * v + (1 - alpha) * g^2; centered subtracts
    the squared running mean of g from v first (torch.optim.RMSprop)."""

    def init(params):
        state = {f"nu.{n}": (shape, dtype, 0.0) for n, (shape, dtype) in params.items()}
        if centered:
            state.update({f"mu.{n}": (shape, dtype, 0.0) for n, (shape, dtype) in params.items()})
        return state

    def update(grads, state, params, hyper):
        out, new_state = {}, {}
        for n, g in grads.items():
            nu = ops.addcmul(state[f"nu.{n}"] * alpha, g, g, value=1.0 - alpha)  # as Adam's
            new_state[f"nu.{n}"] = nu
            if centered:
                mu = state[f"mu.{n}"] * alpha + g * (1.0 - alpha)
                new_state[f"mu.{n}"] = mu
                nu = nu - mu * mu
            out[n] = g / (ops.sqrt(nu) + eps)
        return out, new_state

    return GradientTransformation(init, update)


def scale_by_rss(initial_accumulator_value=0.0, eps=1e-10, lr_decay=0.0):
    """Adagrad's g / (sqrt(sum of g^2 so far) + eps), divided by 1 + (step - 1) * lr_decay
    (torch.optim.Adagrad)."""

    def init(params):
        return {f"sum.{n}": (shape, dtype, initial_accumulator_value)
                for n, (shape, dtype) in params.items()}

    def update(grads, state, params, hyper):
        decay = (ops.rdiv_scalar((hyper["step"] - 1.0) * lr_decay + 1.0, value=1.0)
                 if lr_decay else None)
        out, new_state = {}, {}
        for n, g in grads.items():
            total = ops.addcmul(state[f"sum.{n}"], g, g)
            new_state[f"sum.{n}"] = total
            u = g / (ops.sqrt(total) + eps)
            out[n] = u * decay if decay is not None else u
        return out, new_state

    return GradientTransformation(init, update)


def scale_by_learning_rate(scale=1.0):
    """-lr * scale * u, with lr the runtime learning-rate input of the step. scale: a number
    or a function of the parameter name (a parameter group's lr_scale)."""
    factor = per_parameter(scale)

    def update(grads, state, params, hyper):
        lr = hyper["lr"]
        return {n: -(u * (lr * factor(n) if factor(n) != 1 else lr))
                for n, u in grads.items()}, state

    return GradientTransformation(_no_state, update)
