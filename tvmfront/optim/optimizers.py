"""Named optimizers: compositions of the rules in transform.py, plus their hyperparameters.

Every named optimizer takes (PyTorch's names and defaults where PyTorch has the optimizer):
- ``groups``: parameter groups, ``[{"params": [names or patterns], "weight_decay": ...,
  "lr_scale": ...}, ...]`` (see groups.py): per-group weight decay and learning-rate scale;
- ``max_norm``: clip the gradients to this global norm first (torch.nn.utils.clip_grad_norm_);
  it is the runtime scalar ``max_norm`` of the step, so ``module.step(x, y, max_norm=...)``
  overrides it per step.
"""

from .clip import clip_by_global_norm
from .groups import ParamGroups, check_setting
from .transform import (add_decayed_weights, chain, scale_by_adam, scale_by_learning_rate,
                        scale_by_rms, scale_by_rss, trace)

# The runtime scalars every compiled step takes first, in this order; an optimizer's own
# (e.g. max_norm) follow in the order its rules declare them.
BASE_SCALARS = ("lr", "step")


class Optimizer:
    """A GradientTransformation with a name, a default learning rate and its hyperparameters
    (recorded in exported bundles). The learning rate is a runtime input of the compiled step;
    ``lr`` here is only the value used when the caller gives none.

    ``scalar_inputs``: the runtime scalars of the compiled step, in the order train_step takes
    them: ``lr``, ``step``, then those the transform declares (e.g. ``max_norm``), whose
    defaults are recorded in ``hyperparameters`` under their names."""

    def __init__(self, name, transform, lr, groups=None, **hyperparameters):
        _check(name, lr=lr)  # 0 as in PyTorch (and as module.step(lr=0) takes it)
        self.name, self.transform, self.lr = name, transform, float(lr)
        self.groups = groups
        declared = dict(getattr(transform, "hyper", ()))
        clash = sorted(set(declared) & set(BASE_SCALARS))
        if clash:
            raise ValueError(f"{name}: a rule declares the runtime scalars {clash}, which every "
                             f"step already takes")
        self.scalar_inputs = (*BASE_SCALARS, *declared)
        self.hyperparameters = dict(hyperparameters)
        for n, default in declared.items():
            self.hyperparameters.setdefault(n, default)
        if groups is not None and groups.groups:
            self.hyperparameters["groups"] = groups.to_json()
        if declared:
            self.hyperparameters["scalar_inputs"] = list(self.scalar_inputs)

    def init(self, params):
        if self.groups is not None:
            self.groups.check(list(params))
        return self.transform.init(params)

    def update(self, grads, state, params, hyper):
        return self.transform.update(grads, state, params, hyper)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items()
                         if k != "scalar_inputs")
        return f"{self.name}(lr={self.lr}{', ' + args if args else ''})"


def _check(name, **values):
    """ValueError naming the first of `values` that is not a finite number >= 0 (PyTorch's
    checks of learning rates, eps, momentum, weight decay, alpha, lr_decay and initial
    accumulator values: a negative eps or decay otherwise trains into NaN or divergence)."""
    for key, value in values.items():
        check_setting(name, key, value)


def _check_betas(name, betas):
    """Adam's betas: two numbers in [0, 1) (at 1 the bias correction 1 - beta ** t is 0)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{name}: betas must be two numbers in [0, 1), got {betas!r}")
    for i, b in enumerate(betas):
        _check(name, **{f"betas[{i}]": b})
        if not b < 1:
            raise ValueError(f"{name}: betas[{i}] must be in [0, 1), got {b!r}")


def _named(name, rules, lr, groups, max_norm, **hyperparameters):
    """The Optimizer `name`: clipping (when max_norm is given), `rules`, then -lr * lr_scale."""
    if max_norm is not None:
        rules = [clip_by_global_norm(max_norm), *rules]
    rules = [*rules, scale_by_learning_rate(groups.setting("lr_scale"))]
    return Optimizer(name, chain(*rules), lr, groups=groups, **hyperparameters,
                     **({} if max_norm is None else {"max_norm": float(max_norm)}))


def _groups(name, groups, weight_decay):
    return ParamGroups(name, groups, weight_decay=weight_decay, lr_scale=1.0)


def _l2(groups):
    """torch's coupled weight decay (g + wd * p before the rule), when any group has one."""
    return [add_decayed_weights(groups.setting("weight_decay"))] if groups.uses("weight_decay") \
        else []


def SGD(lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0, groups=None,
        max_norm=None):
    """torch.optim.SGD's update rule."""
    _check("SGD", lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=dampening)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("SGD: nesterov needs momentum > 0 and dampening == 0")
    g = _groups("SGD", groups, weight_decay)
    rules = _l2(g) + ([trace(momentum, nesterov, dampening)] if momentum else [])
    return _named("SGD", rules, lr, g, max_norm, momentum=momentum, nesterov=nesterov,
                  weight_decay=weight_decay, dampening=dampening)


def Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, groups=None, max_norm=None):
    """torch.optim.Adam's update rule (L2 weight decay added to the gradient)."""
    _check("Adam", lr=lr, eps=eps, weight_decay=weight_decay)
    _check_betas("Adam", betas)
    g = _groups("Adam", groups, weight_decay)
    return _named("Adam", _l2(g) + [scale_by_adam(betas[0], betas[1], eps)], lr, g, max_norm,
                  betas=list(betas), eps=eps, weight_decay=weight_decay)


def AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, groups=None,
          max_norm=None):
    """torch.optim.AdamW: Adam with decoupled weight decay, p -= lr * (adam + wd * p)
    (torch writes it p *= 1 - lr * wd, then the Adam step: the same update)."""
    _check("AdamW", lr=lr, eps=eps, weight_decay=weight_decay)
    _check_betas("AdamW", betas)
    g = _groups("AdamW", groups, weight_decay)
    rules = [scale_by_adam(betas[0], betas[1], eps)]
    if g.uses("weight_decay"):
        rules.append(add_decayed_weights(g.setting("weight_decay")))
    return _named("AdamW", rules, lr, g, max_norm, betas=list(betas), eps=eps,
                  weight_decay=weight_decay)


def RMSprop(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
            groups=None, max_norm=None):
    """torch.optim.RMSprop: g / (sqrt(v) + eps), optionally centered and with momentum
    (b = momentum * b + g / (sqrt(v) + eps))."""
    _check("RMSprop", lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum)
    g = _groups("RMSprop", groups, weight_decay)
    rules = _l2(g) + [scale_by_rms(alpha, eps, centered)] + ([trace(momentum)] if momentum else [])
    return _named("RMSprop", rules, lr, g, max_norm, alpha=alpha, eps=eps,
                  weight_decay=weight_decay, momentum=momentum, centered=centered)


def Adagrad(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0, eps=1e-10,
            groups=None, max_norm=None):
    """torch.optim.Adagrad: g / (sqrt(sum of g^2) + eps), lr / (1 + (step - 1) * lr_decay)."""
    _check("Adagrad", lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
           initial_accumulator_value=initial_accumulator_value, eps=eps)
    g = _groups("Adagrad", groups, weight_decay)
    rules = _l2(g) + [scale_by_rss(initial_accumulator_value, eps, lr_decay)]
    return _named("Adagrad", rules, lr, g, max_norm, lr_decay=lr_decay,
                  weight_decay=weight_decay, initial_accumulator_value=initial_accumulator_value,
                  eps=eps)
